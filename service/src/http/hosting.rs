//! Production hosting around the vgi-rpc routes: liveness and readiness with a
//! drain latch, CORS, and the settings auth and rate limiting read.
//!
//! Probes live at the root (`/healthz`, `/livez`, `/readyz`, `/metrics`)
//! whatever the vgi-rpc prefix is, because platforms configure probe paths
//! separately from the application's routes, and they are exempt from auth.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use super::auth::{ApiKeys, Authenticator};
use super::ratelimit::{Cidr, RateLimiter};
use crate::metrics::Metrics;

/// Ready once listening; draining from SIGTERM until exit. Shared with `serve`.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Latches: once draining, never ready again.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Hosting settings and shared state of one server.
pub struct Hosting {
    pub api_keys: ApiKeys,
    /// Replaces API-key authentication when set (upstream's `authenticate` hook).
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// `VGI-Proxy-Proof` verification, checked before the API key (`KIT_PROXY_PROOF`).
    pub proxy_proof: Option<Arc<super::proxy_proof::ProxyProof>>,
    pub require_auth: bool,
    pub rate_limiter: Option<RateLimiter>,
    /// Failed API keys per client IP, checked before the key comparison.
    pub auth_throttle: Option<RateLimiter>,
    pub trusted_proxies: Vec<Cidr>,
    pub cors_origins: Vec<String>,
    pub request_timeout: Duration,
    pub read_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Fingerprint of the primary signing key, and whether it is per-process.
    pub key_fingerprint: String,
    pub key_ephemeral: bool,
    /// The in-flight memory budget and the pool for CPU-heavy work.
    pub limits: crate::limits::Limits,
    /// Upstream-shaped access records (`KIT_ACCESS_LOG`).
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
}

impl Hosting {
    /// Open hosting: no auth, no limits, ready at once (tests and embedding).
    pub fn open(keys: &crate::token::KeyRing) -> Hosting {
        let readiness = Arc::new(Readiness::default());
        readiness.set_ready();
        Hosting {
            api_keys: ApiKeys::default(),
            authenticator: None,
            proxy_proof: None,
            require_auth: false,
            rate_limiter: None,
            auth_throttle: None,
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            request_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(30),
            metrics: Arc::new(Metrics::new()),
            readiness,
            key_fingerprint: keys.primary().fingerprint(),
            key_ephemeral: keys.is_ephemeral(),
            limits: crate::limits::Limits::default(),
            access_log: None,
        }
    }

    /// Whether requests must carry a valid proxy proof (`require` mode),
    /// which every 401 then says.
    pub fn proxy_proof_required(&self) -> bool {
        self.proxy_proof
            .as_ref()
            .is_some_and(|p| p.mode() == super::proxy_proof::ProofMode::Require)
    }

    /// The allowed origin to echo for `origin`, if CORS allows it.
    pub fn cors_origin(&self, origin: Option<&str>) -> Option<String> {
        let origin = origin?;
        if self.cors_origins.iter().any(|o| o == "*") {
            return Some("*".into());
        }
        self.cors_origins
            .iter()
            .find(|o| o.eq_ignore_ascii_case(origin))
            .cloned()
    }
}

/// `sha256:<hex>` of the running executable, read once (the first
/// `/healthz`): what tells two builds of one version apart, so a caller can
/// see which release answers (`deploy-kit rollback` is checked this way).
/// `None` when the executable cannot be read.
pub fn binary_digest() -> Option<&'static str> {
    use sha2::{Digest, Sha256};
    static DIGEST: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    DIGEST
        .get_or_init(|| {
            let mut file = std::fs::File::open(std::env::current_exe().ok()?).ok()?;
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher).ok()?;
            let hex: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Some(format!("sha256:{hex}"))
        })
        .as_deref()
}

/// The probe endpoints; `None` when `path` is not one of them.
pub fn probe(hosting: &Hosting, server_id: &str, path: &str, method: &Method) -> Option<Response> {
    if *method != Method::GET && *method != Method::HEAD {
        return None;
    }
    let response = match path {
        "/healthz" => json(
            StatusCode::OK,
            serde_json::json!({
                "status": "ok",
                "server_id": server_id,
                "version": env!("CARGO_PKG_VERSION"),
                "binary": {"sha256": binary_digest()},
                "ready": hosting.readiness.is_ready(),
                "draining": hosting.readiness.is_draining(),
                "signing_key": {"fingerprint": hosting.key_fingerprint, "ephemeral": hosting.key_ephemeral},
            }),
        ),
        "/livez" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" => {
            if hosting.readiness.is_ready() {
                json(StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                let status = if hosting.readiness.is_draining() {
                    "draining"
                } else {
                    "starting"
                };
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": status}),
                )
            }
        }
        "/metrics" => {
            let mut response = Response::new(Body::from(hosting.metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => return None,
    };
    Some(response)
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    super::json_response(status, body)
}

/// Headers the browser may read: upstream's list.
const EXPOSE: &str = "WWW-Authenticate, X-Request-ID, X-VGI-Content-Encoding, X-VGI-RPC-Error, VGI-Max-Request-Bytes, VGI-Max-Response-Bytes, VGI-Accept-Max-Response-Bytes-Support, VGI-Externalization-Enabled, VGI-Supported-Encodings, VGI-Max-Externalized-Response-Bytes, VGI-Upload-URL-Support, VGI-Max-Upload-Bytes, VGI-Auth-Reason, X-RateLimit-Limit, X-RateLimit-Remaining, Retry-After";
/// [`EXPOSE`] on a worker that requires a proxy proof: upstream adds the
/// capability header and the 401 note's header.
const EXPOSE_WITH_PROOF: &str = "WWW-Authenticate, X-Request-ID, X-VGI-Content-Encoding, X-VGI-RPC-Error, VGI-Max-Request-Bytes, VGI-Max-Response-Bytes, VGI-Accept-Max-Response-Bytes-Support, VGI-Externalization-Enabled, VGI-Supported-Encodings, VGI-Max-Externalized-Response-Bytes, VGI-Upload-URL-Support, VGI-Max-Upload-Bytes, VGI-Auth-Reason, X-RateLimit-Limit, X-RateLimit-Remaining, Retry-After, VGI-Proxy-Proof-Required, VGI-Auth-Proxy-Required";

fn expose(hosting: &Hosting) -> HeaderValue {
    HeaderValue::from_static(if hosting.proxy_proof_required() {
        EXPOSE_WITH_PROOF
    } else {
        EXPOSE
    })
}

/// A CORS preflight answer, when the request is one and the origin is allowed.
pub fn preflight(hosting: &Hosting, method: &Method, headers: &HeaderMap) -> Option<Response> {
    if *method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let origin = hosting.cors_origin(headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()))?;
    let mut response = Response::new(Body::empty());
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_str(&origin).ok()?,
    );
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("7200"),
    );
    out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose(hosting));
    out.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
    Some(response)
}

/// CORS headers on an ordinary response.
pub fn stamp_cors(hosting: &Hosting, request_origin: Option<&str>, headers: &mut HeaderMap) {
    if hosting.cors_origins.is_empty() {
        return;
    }
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    if let Some(origin) = hosting.cors_origin(request_origin)
        && let Ok(value) = HeaderValue::from_str(&origin)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose(hosting));
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::KeyRing;

    #[test]
    fn readiness_latches_draining() {
        let readiness = Readiness::default();
        assert!(!readiness.is_ready());
        readiness.set_ready();
        assert!(readiness.is_ready());
        readiness.start_draining();
        readiness.set_ready();
        assert!(!readiness.is_ready());
    }

    #[test]
    fn cors_echoes_only_listed_origins() {
        let mut hosting = Hosting::open(&KeyRing::ephemeral(60));
        hosting.cors_origins = vec!["https://app.example".into()];
        assert_eq!(
            hosting.cors_origin(Some("https://app.example")).as_deref(),
            Some("https://app.example")
        );
        assert_eq!(hosting.cors_origin(Some("https://evil.example")), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        assert!(preflight(&hosting, &Method::OPTIONS, &headers).is_none());
    }
}
