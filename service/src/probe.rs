//! `kit.Probe.v1`: the operational protocol behind the doctor's end-to-end
//! check (OPS003). Like `/healthz` it is part of hosting, not of the
//! application: it is not listed by reflection (so a client's "describe this
//! server" never sees it), it passes through auth and rate limits like any
//! call, and `KIT_PROBE=false` removes it.
//!
//! - `external(bytes, seed)` returns `bytes` of a pattern derived from `seed`,
//!   always through external storage (a fresh upload, never cached), so the
//!   caller proves put, presigned URL and fetch on the live bucket.
//! - `ticks(n)` streams `n` one-row turns; each turn logs the serving replica's
//!   server id, so a caller that sends turn 2 to another replica can see that
//!   the other replica continued the stream from the token alone.

use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use crate::rpc::{Ctx, Output, Producer, Protocol, StreamInit};
use crate::wire::{LogLevel, RpcError};

pub const NAME: &str = "kit.Probe.v1";
pub const VERSION: &str = "1.0.0";

/// Largest `external` payload: enough to cross any externalization threshold
/// a deployment sets, small enough that a probe is cheap.
pub const MAX_EXTERNAL_BYTES: i64 = 16 << 20;
/// Most turns one `ticks` stream may ask for.
pub const MAX_TICKS: i64 = 1000;

/// The bytes `external(bytes, seed)` returns: xorshift64* from `seed`, so the
/// caller can check every byte without the server sending a digest it chose.
pub fn pattern(bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(bytes + 8);
    while out.len() < bytes {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(bytes);
    out
}

/// Counts turns; the state travels in the stream token, nowhere else.
#[derive(Serialize, Deserialize)]
struct Ticks {
    next: i64,
    end: i64,
}

impl Producer for Ticks {
    async fn produce(&mut self, out: &mut Output, ctx: &Ctx) -> Result<(), RpcError> {
        if self.next >= self.end {
            out.finish();
            return Ok(());
        }
        ctx.log(LogLevel::Info, format!("tick {}", self.next));
        let batch = RecordBatch::try_new(
            out.schema().clone(),
            vec![Arc::new(Int64Array::from(vec![self.next])) as ArrayRef],
        )?;
        out.emit(batch)?;
        self.next += 1;
        Ok(())
    }
}

pub fn protocol() -> Protocol {
    Protocol::builder(NAME)
        .version(VERSION)
        .unary(
            "external",
            "bytes: int64, seed: int64",
            "result: binary",
            |ctx, args| async move {
                let (bytes, seed): (i64, i64) = (args.get("bytes")?, args.get("seed")?);
                if !(1..=MAX_EXTERNAL_BYTES).contains(&bytes) {
                    return Err(RpcError::value(format!(
                        "bytes must be within 1..={MAX_EXTERNAL_BYTES}"
                    )));
                }
                let schema = Arc::new(Schema::new(vec![Field::new(
                    "result",
                    DataType::Binary,
                    false,
                )]));
                let payload = pattern(bytes as usize, seed as u64);
                let batch = RecordBatch::try_new(
                    schema,
                    vec![Arc::new(BinaryArray::from_vec(vec![payload.as_slice()])) as ArrayRef],
                )?;
                ctx.publish(batch, true).await
            },
        )
        .producer("ticks", "n: int64", "", |_ctx, args| async move {
            let n: i64 = args.get("n")?;
            if !(1..=MAX_TICKS).contains(&n) {
                return Err(RpcError::value(format!("n must be within 1..={MAX_TICKS}")));
            }
            let schema = Arc::new(Schema::new(vec![Field::new(
                "tick",
                DataType::Int64,
                false,
            )]));
            Ok(StreamInit::new(schema, Ticks { next: 0, end: n }))
        })
        .unlisted()
        .build()
        .expect("the probe protocol is well-formed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_seeded_and_exact_length() {
        assert_eq!(pattern(13, 7).len(), 13);
        assert_eq!(pattern(64, 7), pattern(64, 7));
        assert_ne!(pattern(64, 7), pattern(64, 8));
        assert_eq!(&pattern(64, 7)[..13], &pattern(13, 7)[..]);
    }
}

/// The caller side of `kit.Probe.v1`, for `deploy-kit doctor --online` and
/// the tests that prove streams move between replicas: calls through
/// [`crate::client::Client`], with no storage credentials (the pointer URL
/// is all a client gets).
pub mod client {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow_array::{Array, ArrayRef, BinaryArray, Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};

    use crate::client::{Client, ClientError, ProducerStream};

    /// Why a probe call did not prove what it set out to: the replica could not
    /// be reached (the check could not run), or it answered wrongly (a finding).
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum ProbeError {
        /// Nothing answered: connection refused, timeout.
        #[error("{0}")]
        Unreachable(String),
        /// The replica answered, wrongly.
        #[error("{0}")]
        Failed(String),
    }

    impl From<String> for ProbeError {
        fn from(message: String) -> Self {
            ProbeError::Failed(message)
        }
    }

    impl From<&str> for ProbeError {
        fn from(message: &str) -> Self {
            ProbeError::Failed(message.to_string())
        }
    }

    /// What one probe call saw, for the check's message.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StreamProof {
        /// `server_id` that served the first turn.
        pub first_server: Option<String>,
        /// `server_id`s that served the continuations, in order.
        pub continued_by: Vec<String>,
        /// Every tick received, in order.
        pub ticks: Vec<i64>,
    }

    /// An open `ticks` stream on the client side, and what its turns so far
    /// carried.
    #[derive(Debug)]
    pub struct TickStream {
        stream: ProducerStream,
        /// Every tick received so far, in order.
        pub ticks: Vec<i64>,
        /// `server_id` that served the latest turn.
        pub served_by: Option<String>,
    }

    impl TickStream {
        /// True once the server sent a turn without a next state token.
        pub fn finished(&self) -> bool {
            self.stream.is_finished()
        }

        fn absorb(&mut self, batch: Option<RecordBatch>) -> Result<Vec<i64>, ProbeError> {
            self.served_by = self.stream.server_id().map(str::to_string);
            let Some(batch) = batch else {
                return Ok(Vec::new());
            };
            let ticks = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or("the ticks are not int64")?
                .values()
                .to_vec();
            self.ticks.extend(&ticks);
            Ok(ticks)
        }
    }

    /// Calls `kit.Probe.v1` on replicas given by base URL (`http://host:port`
    /// plus the service's path prefix, if any).
    #[derive(Debug, Clone)]
    pub struct ProbeCaller {
        /// Fetches pointers on https and public addresses only.
        remote: Client,
        /// For replicas on loopback: their store is on loopback too.
        local: Client,
    }

    /// Pointer URL prefixes allowed when the replica itself is on loopback
    /// (`up local`, compose, CI), where the store is too.
    const LOOPBACK: [&str; 3] = ["http://127.0.0.1", "http://localhost", "http://[::1]"];

    impl ProbeCaller {
        /// `api_key` is sent as `Authorization: Bearer` when the service requires auth.
        pub fn new(timeout: Duration, api_key: Option<String>) -> Result<ProbeCaller, String> {
            let build = || -> Result<Client, ClientError> {
                let mut client = Client::new("http://127.0.0.1")?
                    .with_timeout(timeout)?
                    .with_protocol_version(super::NAME, super::VERSION);
                if let Some(key) = &api_key {
                    client = client.with_api_key(key.clone());
                }
                Ok(client)
            };
            let failed = |e: ClientError| format!("failed to build the probe client: {e}");
            let remote = build().map_err(failed)?;
            let local = build()
                .and_then(|c| c.with_fetch_allowlist(LOOPBACK))
                .map_err(failed)?;
            Ok(ProbeCaller { remote, local })
        }

        fn client(&self, base_url: &str) -> Result<Client, ProbeError> {
            let loopback = url::Url::parse(base_url)
                .ok()
                .is_some_and(|url| match url.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                    None => false,
                });
            let client = if loopback { &self.local } else { &self.remote };
            client
                .at(base_url)
                .map_err(|e| ProbeError::Failed(e.to_string()))
        }

        /// `external(bytes, seed)`: the result must come back as a pointer whose
        /// object has the promised sha256 and exactly the seeded bytes.
        pub async fn external(
            &self,
            base_url: &str,
            bytes: i64,
            seed: i64,
        ) -> Result<(), ProbeError> {
            let params = params(&[("bytes", bytes), ("seed", seed)])?;
            let response = self
                .client(base_url)?
                .unary(super::NAME, "external", params)
                .await
                .map_err(|e| failure(base_url, "external", e))?;
            if response.location.is_none() {
                return Err(
                    "the result came back inline, not as a pointer to external storage".into(),
                );
            }
            let column = response
                .batch
                .column(0)
                .as_any()
                .downcast_ref::<BinaryArray>()
                .ok_or("the stored result is not binary")?;
            if column.is_empty()
                || column.value(0) != super::pattern(bytes as usize, seed as u64).as_slice()
            {
                return Err("the stored bytes differ from what was asked for".into());
            }
            Ok(())
        }

        /// `ticks(turns)`: init on `first`, every continuation on `second`; the
        /// ticks must arrive in order, continued from the token alone.
        pub async fn stream_across(
            &self,
            first: &str,
            second: &str,
            turns: i64,
        ) -> Result<StreamProof, ProbeError> {
            let mut stream = self.open_ticks(first, turns).await?;
            let mut proof = StreamProof {
                first_server: stream.served_by.clone(),
                continued_by: Vec::new(),
                ticks: Vec::new(),
            };
            let mut turn = 1;
            while !stream.finished() {
                if turn > turns + 1 {
                    return Err(format!("the stream did not end after {turns} turns").into());
                }
                self.next_turn(&mut stream, second).await?;
                if let Some(server) = &stream.served_by {
                    proof.continued_by.push(server.clone());
                }
                turn += 1;
            }
            proof.ticks = stream.ticks;
            let expected: Vec<i64> = (0..turns).collect();
            if proof.ticks != expected {
                return Err(
                    format!("ticks arrived as {:?}, expected {expected:?}", proof.ticks).into(),
                );
            }
            if proof.continued_by.is_empty() {
                return Err("no turn was served by the second replica".into());
            }
            Ok(proof)
        }

        /// One real vgi-rpc call on `base_url`: a `ticks(2)` stream from
        /// `/init` to its end; the ticks must arrive in order.
        pub async fn call(&self, base_url: &str) -> Result<(), ProbeError> {
            const TURNS: i64 = 2;
            let mut stream = self.open_ticks(base_url, TURNS).await?;
            let mut turn = 1;
            while !stream.finished() {
                if turn > TURNS + 1 {
                    return Err(format!("the stream did not end after {TURNS} turns").into());
                }
                self.next_turn(&mut stream, base_url).await?;
                turn += 1;
            }
            if stream.ticks != [0, 1] {
                return Err(format!("ticks arrived as {:?}, expected [0, 1]", stream.ticks).into());
            }
            Ok(())
        }

        /// The call of [`ProbeCaller::call`] with this caller's credentials
        /// (none, for a caller made without a key): `Ok` when `base_url`
        /// refuses it with 401, a failure when it answers.
        pub async fn refused(&self, base_url: &str) -> Result<(), ProbeError> {
            let attempt = self
                .client(base_url)?
                .producer(super::NAME, "ticks", params(&[("n", 1)])?)
                .await;
            match attempt {
                Err(ClientError::Unauthorized { .. }) => Ok(()),
                Err(ClientError::Rpc(rpc)) if rpc.status == http::StatusCode::UNAUTHORIZED => {
                    Ok(())
                }
                Ok(_) => Err(format!(
                    "`{}` answered a call without credentials although auth is required",
                    base_url.trim_end_matches('/')
                )
                .into()),
                Err(error) if error.is_unreachable() => {
                    Err(ProbeError::Unreachable(error.to_string()))
                }
                Err(error) => Err(format!("expected a 401 refusal, got: {error}").into()),
            }
        }

        /// Opens a `ticks(turns)` stream on `base_url` and reads its first turn.
        /// The stream is held by the caller: [`ProbeCaller::next_turn`] sends
        /// each continuation to any replica, at any later time.
        pub async fn open_ticks(
            &self,
            base_url: &str,
            turns: i64,
        ) -> Result<TickStream, ProbeError> {
            let mut producer = self
                .client(base_url)?
                .producer(super::NAME, "ticks", params(&[("n", turns)])?)
                .await
                .map_err(|e| failure(base_url, "ticks/init", e))?;
            // The first turn came with `/init`: reading it sends nothing.
            let first = producer
                .next_batch()
                .await
                .map_err(|e| failure(base_url, "ticks/init", e))?;
            let mut stream = TickStream {
                stream: producer,
                ticks: Vec::new(),
                served_by: None,
            };
            stream.absorb(first)?;
            Ok(stream)
        }

        /// Sends the next turn of `stream` to `base_url`; returns the ticks it
        /// carried. A finished stream is an error.
        pub async fn next_turn(
            &self,
            stream: &mut TickStream,
            base_url: &str,
        ) -> Result<Vec<i64>, ProbeError> {
            if stream.finished() {
                return Err("the stream has already ended".into());
            }
            stream.stream.move_to(&self.client(base_url)?);
            let batch = stream
                .stream
                .next_batch()
                .await
                .map_err(|e| failure(base_url, "ticks/exchange", e))?;
            stream.absorb(batch)
        }
    }

    /// One row of int64 parameters, non-nullable, in order.
    fn params(values: &[(&str, i64)]) -> Result<RecordBatch, ProbeError> {
        let fields: Vec<Field> = values
            .iter()
            .map(|(name, _)| Field::new(*name, DataType::Int64, false))
            .collect();
        let columns: Vec<ArrayRef> = values
            .iter()
            .map(|(_, value)| Arc::new(Int64Array::from(vec![*value])) as ArrayRef)
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| ProbeError::Failed(e.to_string()))
    }

    /// A client error as the check reports it: the call, the status, the
    /// server's reason, and a hint when the probe protocol is switched off.
    fn failure(base_url: &str, path: &str, error: ClientError) -> ProbeError {
        let url = format!("{}/{}/{path}", base_url.trim_end_matches('/'), super::NAME);
        match &error {
            ClientError::Rpc(rpc) if rpc.status != http::StatusCode::OK => {
                let hint = if rpc.status == http::StatusCode::NOT_FOUND {
                    " (is `KIT_PROBE=false` set on this replica?)"
                } else {
                    ""
                };
                ProbeError::Failed(format!("POST {url} answered {}: {rpc}{hint}", rpc.status))
            }
            ClientError::Rpc(rpc) => ProbeError::Failed(format!("POST {url}: {rpc}")),
            _ if error.is_unreachable() => ProbeError::Unreachable(error.to_string()),
            _ => ProbeError::Failed(error.to_string()),
        }
    }
}
