//! [`ReplicaProbe`] over plain HTTP, for `doctor --online`.
//!
//! Replicas are probed on their internal address (loopback in CI, a pod or
//! private address in a cluster), so the client carries no TLS stack.

use std::time::Duration;

use kit_checks::probe::ReplicaProbe;

/// Fetches `/healthz` with a short timeout; one slow replica must not hang CI.
pub struct HttpReplicaProbe {
    agent: ureq::Agent,
}

impl HttpReplicaProbe {
    pub fn new(timeout: Duration) -> HttpReplicaProbe {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build()
            .into();
        HttpReplicaProbe { agent }
    }
}

impl ReplicaProbe for HttpReplicaProbe {
    fn healthz(&self, base_url: &str) -> Result<String, String> {
        if !base_url.starts_with("http://") {
            return Err(format!(
                "only http:// replica URLs are probed (internal addresses), got `{base_url}`"
            ));
        }
        let url = format!("{}/healthz", base_url.trim_end_matches('/'));
        let mut response = self.agent.get(&url).call().map_err(|e| e.to_string())?;
        response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())
    }
}
