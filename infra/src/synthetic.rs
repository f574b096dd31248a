//! The [`SyntheticProbe`] behind OPS003 and OPS004: real vgi-rpc calls to
//! the replicas (or the deployed URL) through `kit.Probe.v1` (kit-service's
//! operational protocol, hosted unless `KIT_PROBE=false`). One result is
//! forced through external storage and checked byte for byte from its
//! presigned URL; one stream is opened on the first replica and continued on
//! the second, which only works when both hold the same signing key.
//!
//! The calls are async (reqwest); the doctor is sync, so the probe owns a
//! small current-thread runtime.

use std::time::Duration;

use kit_checks::probe::{SyntheticError, SyntheticProbe};
use kit_service::probe::client::{ProbeCaller, ProbeError};

/// Bytes of the result forced through storage: small, and above no threshold
/// on purpose (the probe method externalizes whatever the size).
const EXTERNAL_BYTES: i64 = 256 * 1024;
/// Turns of the probe stream: one on the first replica, the rest on the second.
const STREAM_TURNS: i64 = 3;

pub struct HttpSyntheticProbe {
    caller: ProbeCaller,
    /// The same caller without a key, for the refusal OPS004 expects.
    anonymous: ProbeCaller,
    runtime: tokio::runtime::Runtime,
    has_key: bool,
}

impl HttpSyntheticProbe {
    /// `api_key` (`DEPLOY_KIT_API_KEY`) is sent when the service requires auth.
    pub fn new(timeout: Duration, api_key: Option<String>) -> Result<HttpSyntheticProbe, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("failed to start an async runtime for the probe: {e}"))?;
        let has_key = api_key.is_some();
        Ok(HttpSyntheticProbe {
            caller: ProbeCaller::new(timeout, api_key)?,
            anonymous: ProbeCaller::new(timeout, None)?,
            runtime,
            has_key,
        })
    }
}

impl SyntheticProbe for HttpSyntheticProbe {
    fn call_through_storage(&self, base_url: &str) -> Result<(), SyntheticError> {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| {
            SyntheticError::Unreachable(format!("no randomness for the probe: {e}"))
        })?;
        self.runtime
            .block_on(
                self.caller
                    .external(base_url, EXTERNAL_BYTES, i64::from_le_bytes(seed)),
            )
            .map_err(convert)
    }

    fn stream_across(&self, first: &str, second: &str) -> Result<(), SyntheticError> {
        self.runtime
            .block_on(self.caller.stream_across(first, second, STREAM_TURNS))
            .map(|_| ())
            .map_err(convert)
    }

    fn call(&self, base_url: &str) -> Result<(), SyntheticError> {
        self.runtime
            .block_on(self.caller.call(base_url))
            .map_err(convert)
    }

    fn has_key(&self) -> bool {
        self.has_key
    }

    fn refused_without_key(&self, base_url: &str) -> Result<(), SyntheticError> {
        self.runtime
            .block_on(self.anonymous.refused(base_url))
            .map_err(convert)
    }
}

fn convert(error: ProbeError) -> SyntheticError {
    match error {
        ProbeError::Unreachable(reason) => SyntheticError::Unreachable(reason),
        ProbeError::Failed(reason) => SyntheticError::Failed(reason),
    }
}
