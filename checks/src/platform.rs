//! Platform limits as data, in one place.
//!
//! The numbers come from the hosting seed (request/response body limits and
//! timeouts of each platform) plus Kubernetes and compose, which impose none.
//! Checks never hard-code a platform number; they read [`Platform::limits`]
//! and subtract [`HEADROOM_PERCENT`], because the body limit also has to fit
//! HTTP headers, Arrow IPC framing, log batches and batch metadata.

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;

/// Share of a platform body limit kept free for headers and metadata.
pub const HEADROOM_PERCENT: u64 = 10;

/// A request limit at or below this is "small": large inputs need upload URLs.
pub const SMALL_REQUEST_BYTES: u64 = 8 * MIB;

/// Where the service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    AwsLambdaApiGateway,
    AwsLambdaFunctionUrl,
    CloudRun,
    CloudFunctions,
    CloudflareWorkers,
    AzureFunctions,
    Fly,
    Railway,
    Kubernetes,
    Compose,
}

/// What a platform imposes. `None` means no platform limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    /// Longest a request (or one stream turn) may run.
    pub timeout_seconds: Option<u64>,
    /// How the timeout is meant, for messages ("wall clock", "idle", "CPU").
    pub timeout_kind: &'static str,
    /// Time between SIGTERM and SIGKILL, when the platform fixes a default.
    pub termination_grace_seconds: Option<u64>,
}

impl Platform {
    pub const ALL: &'static [Platform] = &[
        Platform::AwsLambdaApiGateway,
        Platform::AwsLambdaFunctionUrl,
        Platform::CloudRun,
        Platform::CloudFunctions,
        Platform::CloudflareWorkers,
        Platform::AzureFunctions,
        Platform::Fly,
        Platform::Railway,
        Platform::Kubernetes,
        Platform::Compose,
    ];

    /// The name used in `deploy-kit.yaml`.
    pub fn name(self) -> &'static str {
        match self {
            Platform::AwsLambdaApiGateway => "aws-lambda-api-gateway",
            Platform::AwsLambdaFunctionUrl => "aws-lambda-function-url",
            Platform::CloudRun => "cloud-run",
            Platform::CloudFunctions => "cloud-functions",
            Platform::CloudflareWorkers => "cloudflare-workers",
            Platform::AzureFunctions => "azure-functions",
            Platform::Fly => "fly",
            Platform::Railway => "railway",
            Platform::Kubernetes => "kubernetes",
            Platform::Compose => "compose",
        }
    }

    pub fn from_name(name: &str) -> Option<Platform> {
        Platform::ALL.iter().copied().find(|p| p.name() == name)
    }

    /// The platform's limits (see the module docs for sources).
    pub fn limits(self) -> Limits {
        let limits = |request, response, timeout, kind, grace| Limits {
            request_bytes: request,
            response_bytes: response,
            timeout_seconds: timeout,
            timeout_kind: kind,
            termination_grace_seconds: grace,
        };
        match self {
            // API Gateway caps payloads at 10 MB and integrations at 29 s.
            Platform::AwsLambdaApiGateway => limits(
                Some(10 * MIB),
                Some(10 * MIB),
                Some(29),
                "integration",
                None,
            ),
            // Function URLs: 6 MB synchronous payload, 15 min function timeout.
            Platform::AwsLambdaFunctionUrl => {
                limits(Some(6 * MIB), Some(6 * MIB), Some(900), "function", None)
            }
            // 32 MB on HTTP/1 (HTTP/2 is unlimited, but clients rarely use h2c).
            Platform::CloudRun => limits(
                Some(32 * MIB),
                Some(32 * MIB),
                Some(3600),
                "request",
                Some(10),
            ),
            Platform::CloudFunctions => limits(
                Some(32 * MIB),
                Some(32 * MIB),
                Some(3600),
                "request",
                Some(10),
            ),
            // 100-500 MB by plan: judge against the smallest plan.
            Platform::CloudflareWorkers => limits(Some(100 * MIB), None, Some(300), "CPU", None),
            Platform::AzureFunctions => {
                limits(Some(210 * MIB), None, Some(230), "HTTP trigger", None)
            }
            // No body limit; the proxy drops connections idle for 60 s.
            Platform::Fly => limits(None, None, Some(60), "idle", Some(5)),
            Platform::Railway => limits(None, None, Some(900), "request", None),
            Platform::Kubernetes => limits(None, None, None, "", Some(30)),
            Platform::Compose => limits(None, None, None, "", Some(10)),
        }
    }
}

impl Limits {
    /// The largest body a setting may allow under `limit`, after headroom.
    pub fn usable(limit: u64) -> u64 {
        limit - limit * HEADROOM_PERCENT / 100
    }

    pub fn usable_request_bytes(&self) -> Option<u64> {
        self.request_bytes.map(Limits::usable)
    }

    pub fn usable_response_bytes(&self) -> Option<u64> {
        self.response_bytes.map(Limits::usable)
    }

    pub fn size_limited(&self) -> bool {
        self.request_bytes.is_some() || self.response_bytes.is_some()
    }
}

/// Bytes as people read them in messages: `32 MiB`, `5000000 bytes`.
pub fn human_bytes(bytes: u64) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= MIB {
        format!("{:.1} MiB ({bytes} bytes)", bytes as f64 / MIB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for platform in Platform::ALL {
            assert_eq!(Platform::from_name(platform.name()), Some(*platform));
        }
    }

    #[test]
    fn headroom_is_taken_off_body_limits() {
        let limits = Platform::AwsLambdaFunctionUrl.limits();
        assert_eq!(limits.usable_request_bytes(), Some(5_662_311));
        assert!(
            limits.usable_request_bytes().unwrap() > 5_000_000,
            "the seed's 5 MB fits"
        );
        assert_eq!(Platform::Fly.limits().usable_request_bytes(), None);
    }
}
