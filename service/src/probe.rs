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
/// `kit-service doctor`: plain HTTP, no Python, no storage credentials (the
/// presigned URL is all a client gets).
pub mod client {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    use bytes::Bytes;
    use sha2::Digest;

    use crate::wire::ipc::{StreamWriter, read_streams};
    use crate::wire::{self, Metadata};

    /// Why a probe call did not prove what it set out to: the replica could not
    /// be reached (the check could not run), or it answered wrongly (a finding).
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum ProbeError {
        #[error("{0}")]
        Unreachable(String),
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
        /// `server_id` that served the first turn, and the continuations.
        pub first_server: Option<String>,
        pub continued_by: Vec<String>,
        pub ticks: Vec<i64>,
    }

    /// An open `ticks` stream on the client side: the tokens of the next
    /// turn, and what the turns so far carried.
    #[derive(Debug, Clone)]
    pub struct TickStream {
        state: Option<String>,
        call: Option<String>,
        /// Every tick received so far, in order.
        pub ticks: Vec<i64>,
        /// `server_id` that served the latest turn.
        pub served_by: Option<String>,
    }

    impl TickStream {
        /// True once the server sent a turn without a next state token.
        pub fn finished(&self) -> bool {
            self.state.is_none()
        }

        fn absorb(&mut self, response: &Bytes) -> Result<(), String> {
            self.served_by = None;
            for batch in batches(response)? {
                if let Some(token) = batch.get(wire::STATE_KEY) {
                    self.state = Some(token.to_string());
                }
                if let Some(token) = batch.get(wire::CALL_STATE_KEY) {
                    self.call = Some(token.to_string());
                }
                if batch.get(wire::LOG_LEVEL_KEY).is_some()
                    && let Some(server) = batch.get(wire::SERVER_ID_KEY)
                {
                    self.served_by = Some(server.to_string());
                }
                if batch.batch.num_rows() > 0
                    && let Some(ticks) = batch.batch.column(0).as_any().downcast_ref::<Int64Array>()
                {
                    self.ticks.extend(ticks.values().iter().copied());
                }
            }
            Ok(())
        }
    }

    /// Calls `kit.Probe.v1` on replicas given by base URL (`http://host:port`
    /// plus the service's path prefix, if any).
    #[derive(Debug, Clone)]
    pub struct ProbeCaller {
        http: reqwest::Client,
        api_key: Option<String>,
    }

    impl ProbeCaller {
        /// `api_key` is sent as `Authorization: Bearer` when the service requires auth.
        pub fn new(timeout: Duration, api_key: Option<String>) -> Result<ProbeCaller, String> {
            let http = reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| format!("failed to build the HTTP client: {e}"))?;
            Ok(ProbeCaller { http, api_key })
        }

        /// `external(bytes, seed)`: the result must come back as a pointer whose
        /// object has the promised sha256 and exactly the seeded bytes.
        pub async fn external(
            &self,
            base_url: &str,
            bytes: i64,
            seed: i64,
        ) -> Result<(), ProbeError> {
            let body = request(
                "external",
                vec![
                    Field::new("bytes", DataType::Int64, false),
                    Field::new("seed", DataType::Int64, false),
                ],
                vec![
                    Arc::new(Int64Array::from(vec![bytes])),
                    Arc::new(Int64Array::from(vec![seed])),
                ],
            )?;
            let response = self.post(base_url, "external", body).await?;
            let mut pointer = None;
            for batch in batches(&response)? {
                if let Some(location) = batch.get(wire::LOCATION_KEY) {
                    pointer = Some((
                        location.to_string(),
                        batch.get(wire::LOCATION_SHA256_KEY).map(str::to_string),
                    ));
                }
            }
            let Some((location, sha256)) = pointer else {
                return Err(
                    "the result came back inline, not as a pointer to external storage".into(),
                );
            };
            let object = self
                .http
                .get(&location)
                .send()
                .await
                .map_err(|e| format!("GET of the presigned URL failed: {e}"))?;
            let status = object.status();
            if !status.is_success() {
                return Err(format!("GET of the presigned URL answered {status}").into());
            }
            let raw = object
                .bytes()
                .await
                .map_err(|e| format!("reading the stored object failed: {e}"))?;
            let ipc = decompress(&raw)?;
            if let Some(expected) = sha256 {
                let actual = hex::encode(sha2::Sha256::digest(&ipc));
                if actual != expected {
                    return Err(format!(
                        "the stored object's sha256 is {actual}, the pointer promised {expected}"
                    )
                    .into());
                }
            }
            let streams = read_streams(&Bytes::from(ipc))
                .map_err(|e| format!("the stored object is not Arrow IPC: {e}"))?;
            let result = streams
                .iter()
                .flat_map(|s| &s.batches)
                .find(|b| b.batch.num_rows() == 1)
                .ok_or("the stored object holds no result row")?;
            let column = result
                .batch
                .column(0)
                .as_any()
                .downcast_ref::<BinaryArray>()
                .ok_or("the stored result is not binary")?;
            if column.value(0) != super::pattern(bytes as usize, seed as u64).as_slice() {
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

        /// Opens a `ticks(turns)` stream on `base_url` and reads its first turn.
        /// The stream is held by the caller: [`ProbeCaller::next_turn`] sends
        /// each continuation to any replica, at any later time.
        pub async fn open_ticks(
            &self,
            base_url: &str,
            turns: i64,
        ) -> Result<TickStream, ProbeError> {
            let body = request(
                "ticks",
                vec![Field::new("n", DataType::Int64, false)],
                vec![Arc::new(Int64Array::from(vec![turns]))],
            )?;
            let response = self.post(base_url, "ticks/init", body).await?;
            let mut stream = TickStream {
                state: None,
                call: None,
                ticks: Vec::new(),
                served_by: None,
            };
            stream.absorb(&response)?;
            Ok(stream)
        }

        /// Sends the next turn of `stream` to `base_url`; returns the ticks it
        /// carried. A finished stream is an error.
        pub async fn next_turn(
            &self,
            stream: &mut TickStream,
            base_url: &str,
        ) -> Result<Vec<i64>, ProbeError> {
            let Some(state) = stream.state.take() else {
                return Err("the stream has already ended".into());
            };
            // The call token comes once (with the first state) and rides along
            // on every later turn; the state token changes every turn.
            let mut metadata: Metadata = vec![(wire::STATE_KEY.into(), state)];
            if let Some(call) = &stream.call {
                metadata.push((wire::CALL_STATE_KEY.into(), call.clone()));
            }
            let mut next = Vec::new();
            let schema = Arc::new(Schema::empty());
            let mut writer = StreamWriter::new(&mut next, &schema).map_err(|e| e.to_string())?;
            writer
                .write_metadata_only(&metadata)
                .map_err(|e| e.to_string())?;
            writer.finish();
            let response = self.post(base_url, "ticks/exchange", next).await?;
            let before = stream.ticks.len();
            stream.absorb(&response)?;
            Ok(stream.ticks[before..].to_vec())
        }

        async fn post(
            &self,
            base_url: &str,
            path: &str,
            body: Vec<u8>,
        ) -> Result<Bytes, ProbeError> {
            let url = format!("{}/{}/{path}", base_url.trim_end_matches('/'), super::NAME);
            let mut request = self
                .http
                .post(&url)
                .header("content-type", wire::CONTENT_TYPE)
                .body(body);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.map_err(|e| {
                let message = format!("POST {url} failed: {e}");
                if e.is_connect() || e.is_timeout() {
                    ProbeError::Unreachable(message)
                } else {
                    ProbeError::Failed(message)
                }
            })?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| format!("reading the answer of POST {url} failed: {e}"))?;
            if !status.is_success() {
                let reason = error_message(&body).unwrap_or_else(|| {
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
                });
                let hint = if status == reqwest::StatusCode::NOT_FOUND {
                    " (is `KIT_PROBE=false` set on this replica?)"
                } else {
                    ""
                };
                return Err(format!("POST {url} answered {status}: {reason}{hint}").into());
            }
            if let Some(reason) = error_message(&body) {
                return Err(format!("POST {url}: {reason}").into());
            }
            Ok(body)
        }
    }

    fn request(
        method: &str,
        fields: Vec<Field>,
        columns: Vec<arrow_array::ArrayRef>,
    ) -> Result<Vec<u8>, String> {
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
        let metadata: Metadata = vec![
            (wire::METHOD_KEY.into(), method.into()),
            (
                wire::REQUEST_VERSION_KEY.into(),
                wire::REQUEST_VERSION.into(),
            ),
            (wire::PROTOCOL_KEY.into(), super::NAME.into()),
            (wire::PROTOCOL_VERSION_KEY.into(), super::VERSION.into()),
        ];
        let mut out = Vec::new();
        let mut writer = StreamWriter::new(&mut out, &schema).map_err(|e| e.to_string())?;
        writer.write(&batch, &metadata).map_err(|e| e.to_string())?;
        writer.finish();
        Ok(out)
    }

    fn batches(body: &Bytes) -> Result<Vec<crate::wire::ipc::Batch>, String> {
        Ok(read_streams(body)
            .map_err(|e| format!("the answer is not Arrow IPC: {e}"))?
            .into_iter()
            .flat_map(|s| s.batches)
            .collect())
    }

    /// The message of the first EXCEPTION batch, if the body carries one.
    fn error_message(body: &Bytes) -> Option<String> {
        let streams = read_streams(body).ok()?;
        streams
            .iter()
            .flat_map(|s| &s.batches)
            .find(|b| b.get(wire::LOG_LEVEL_KEY) == Some("EXCEPTION"))
            .map(|b| b.get(wire::LOG_MESSAGE_KEY).unwrap_or("error").to_string())
    }

    /// Stored objects may be zstd or gzip compressed (`KIT_EXTERNALIZE_COMPRESSION`).
    fn decompress(raw: &[u8]) -> Result<Vec<u8>, String> {
        const LIMIT: usize = (super::MAX_EXTERNAL_BYTES as usize) * 2;
        if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return zstd::bulk::decompress(raw, LIMIT)
                .map_err(|e| format!("the stored object is corrupt zstd: {e}"));
        }
        if raw.starts_with(&[0x1f, 0x8b]) {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(raw)
                .take(LIMIT as u64)
                .read_to_end(&mut out)
                .map_err(|e| format!("the stored object is corrupt gzip: {e}"))?;
            return Ok(out);
        }
        Ok(raw.to_vec())
    }
}
