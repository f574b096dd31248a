//! kit-service: a vgi-rpc HTTP host.
//!
//! Arrow IPC in -> method -> Arrow IPC out. [`rpc`] defines services, [`wire`]
//! speaks the Arrow framing, [`http`] is the transport, [`token`] signs stream
//! state, [`conformance`] and [`demo`] are the protocols the binary serves.

pub mod alloc;
pub mod config;
pub mod conformance;
pub mod connections;
pub mod demo;
pub mod doctor;
pub mod http;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod limits;
pub mod logline;
pub mod metrics;
pub mod probe;
pub mod reflection;
pub mod rpc;
pub mod serve;
pub mod storage;
pub mod telemetry;
pub mod token;
pub mod wire;

/// The request cap when `KIT_MAX_REQUEST_BYTES` is not set: enforced on the
/// body as received and as decoded (so neither a zstd bomb nor a plain 1 GiB
/// body is held), but not advertised, so clients see the same capability
/// headers as before. Platforms cap requests far lower (Cloud Run 32 MiB,
/// Lambda 6 MB); larger payloads go through upload URLs.
pub const MAX_DECODED_REQUEST_BYTES: usize = 64 << 20;

pub use http::{HttpConfig, Server, app};
pub use rpc::{Args, Ctx, Exchanger, Output, Producer, Protocol, StreamInit};
pub use wire::{ErrorCode, LogLevel, RpcError};
