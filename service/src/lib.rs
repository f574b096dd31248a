//! kit-service: a vgi-rpc HTTP host.
//!
//! Arrow IPC in -> method -> Arrow IPC out. [`rpc`] defines services, [`wire`]
//! speaks the Arrow framing, [`http`] is the transport, [`token`] signs stream
//! state, [`conformance`] and [`demo`] are the protocols the binary serves.
//! [`host`] is a service binary's whole `main`, [`client`] calls any vgi-rpc
//! server over HTTP, and [`testing`] runs a user's protocols in-process for
//! their tests.

// The macros name this crate `::kit_service`, also when used inside it (the demo).
extern crate self as kit_service;

pub mod access_log;
pub mod alloc;
pub mod client;
pub mod config;
pub mod conformance;
pub mod connections;
pub mod demo;
pub mod doctor;
pub mod host;
pub mod http;
pub mod identity;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod limits;
pub mod logline;
pub mod metrics;
pub mod probe;
pub mod reflection;
pub mod rpc;
pub mod self_wake;
pub mod serve;
pub mod storage;
pub mod telemetry;
pub mod testing;
pub mod token;
pub mod wire;

/// The request cap when `KIT_MAX_REQUEST_BYTES` is not set: enforced on the
/// body as received and as decoded (so neither a zstd bomb nor a plain 1 GiB
/// body is held), but not advertised, so clients see the same capability
/// headers as before. Platforms cap requests far lower (Cloud Run 32 MiB,
/// Lambda 6 MB); larger payloads go through upload URLs.
pub const MAX_DECODED_REQUEST_BYTES: usize = 64 << 20;

pub use http::{HttpConfig, Server, app};
pub use kit_service_macros::{ArrowRecord, service};
pub use rpc::{
    Args, ArrowRecord, ArrowValue, Ctx, Exchange, Exchanger, Output, Produce, Producer, Protocol,
    RowExchanger, RowProducer, Rows, StreamInit,
};
pub use wire::{ErrorCode, LogLevel, RpcError};

/// The README's example, compiled as a doctest so the published front page
/// stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
