//! AWS Lambda (cargo feature `lambda`): the same router as every other
//! platform, fed by the Lambda Runtime API instead of a TCP listener.
//!
//! `lambda_http` turns Function URL, API Gateway REST (v1) and HTTP API (v2)
//! events into `http::Request`s, decoding base64 bodies, and the router's
//! responses back into the event's response shape. Arrow bodies go out base64
//! encoded (`isBase64Encoded: true`) because their content type is not text.
//!
//! Invariants:
//! - the client address from the event's request context becomes the
//!   `ConnectInfo` the router reads, so per-IP rate limits and
//!   `KIT_TRUSTED_PROXIES` behave as they do behind a socket;
//! - buffered spans are exported before the response is handed back, because
//!   Lambda freezes the process between invocations;
//! - payloads: Lambda caps a synchronous invocation's request and response
//!   at 6 MB ([`PAYLOAD_CAP_BYTES`]) of JSON, in which an Arrow body travels
//!   base64-encoded (4 bytes per 3). [`fit_limits`] therefore caps request and
//!   response bodies at [`MAX_BODY_BYTES`] (4,669,440 raw bytes), so an
//!   oversized body is a vgi-rpc error (413 `PayloadTooLargeError` for a
//!   request, `ResponseTooLargeError` for a result) and never a runtime-level
//!   failure, and moves `KIT_EXTERNALIZE_THRESHOLD_BYTES` to at most half of
//!   that, so with `KIT_STORAGE` set a result that large goes to storage as a
//!   pointer batch and a request that large goes through an upload URL;
//! - storage: attached as `serve` attaches it. Without a socket, the service
//!   URL the `local` backend builds object URLs from is `KIT_PUBLIC_URL` (the
//!   Function URL), which it then requires; the other backends never use it;
//! - API Gateway stages: `lambda_http` keeps a named stage in the path
//!   (`/prod/...`), so serve with `--prefix /prod` or set
//!   `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH=true`. Function URLs have no stage.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::Response;
use lambda_http::request::RequestContext;
use lambda_http::{RequestExt, service_fn};
use tower::ServiceExt;

use crate::config::{Config, Env};
use crate::http::{Server, app};
use crate::storage::StorageSettings;
use crate::storage::settings::Provider;

/// Lambda's cap on a synchronous invocation's request and on its response:
/// 6 MB of JSON, body (base64) and envelope together.
pub const PAYLOAD_CAP_BYTES: u64 = 6 * 1024 * 1024;

/// What is kept of [`PAYLOAD_CAP_BYTES`] for the JSON envelope around a body:
/// status, headers (the response's, or the event's with its request context).
pub const ENVELOPE_BYTES: u64 = 64 * 1024;

/// The largest raw body that fits [`PAYLOAD_CAP_BYTES`] once base64-encoded
/// inside the envelope: 4,669,440 bytes (about 4.45 MiB).
pub const MAX_BODY_BYTES: u64 = (PAYLOAD_CAP_BYTES - ENVELOPE_BYTES) / 4 * 3;

/// Fits `config` to Lambda's payload cap: request and response bodies at most
/// [`MAX_BODY_BYTES`] (a smaller `KIT_MAX_REQUEST_BYTES` or
/// `KIT_MAX_RESPONSE_BYTES` stays), results externalized from half of it on
/// when storage is configured, and a hint on size errors naming the setting.
///
/// ```
/// use kit_service::config::Config;
/// use kit_service::lambda::{MAX_BODY_BYTES, fit_limits};
/// let env = std::collections::HashMap::<String, String>::new();
/// let mut config = Config::from_env(&env, "127.0.0.1:0".parse().unwrap()).unwrap();
/// fit_limits(&mut config);
/// assert_eq!(config.max_response_bytes, Some(MAX_BODY_BYTES));
/// assert!(config.limit_hint.unwrap().contains("`KIT_STORAGE`"));
/// ```
pub fn fit_limits(config: &mut Config) {
    let fit = |limit: Option<u64>| Some(limit.map_or(MAX_BODY_BYTES, |l| l.min(MAX_BODY_BYTES)));
    config.max_request_bytes = fit(config.max_request_bytes);
    config.max_response_bytes = fit(config.max_response_bytes);
    let hint = match &mut config.storage {
        Some(storage) => {
            storage.threshold_bytes = storage.threshold_bytes.min(MAX_BODY_BYTES / 2);
            format!(
                "AWS Lambda carries at most {PAYLOAD_CAP_BYTES} bytes per request or response, base64 included: \
                 larger requests go through upload URLs, larger results to `KIT_STORAGE` one batch at a time \
                 from `KIT_EXTERNALIZE_THRESHOLD_BYTES` ({})",
                storage.threshold_bytes
            )
        }
        None => format!(
            "AWS Lambda carries at most {PAYLOAD_CAP_BYTES} bytes per request or response, base64 included: \
             set `KIT_STORAGE` (and its `KIT_STORAGE_*` settings) so larger results and requests travel through storage"
        ),
    };
    config.limit_hint = Some(hint);
}

/// `KIT_PUBLIC_URL` is required with `KIT_STORAGE=local` on Lambda.
#[derive(Debug, thiserror::Error)]
#[error(
    "`KIT_STORAGE=local` on AWS Lambda needs `KIT_PUBLIC_URL`: there is no socket to build object URLs from"
)]
pub struct NoPublicUrl;

/// The service URL [`crate::storage::open`] gets on Lambda: `KIT_PUBLIC_URL`
/// (the Function URL or API stage URL clients call). Only the `local` backend
/// uses it, so it is required there and may be empty for the others.
///
/// ```
/// use kit_service::lambda::service_url;
/// use kit_service::storage::StorageSettings;
/// use kit_service::storage::settings::Provider;
/// let mut settings = StorageSettings::local("/tmp/objects", "https://abc.lambda-url.eu-west-1.on.aws");
/// assert_eq!(service_url(&settings).unwrap(), "https://abc.lambda-url.eu-west-1.on.aws");
/// settings.public_url = None;
/// assert!(service_url(&settings).is_err());
/// settings.provider = Provider::S3;
/// assert_eq!(service_url(&settings).unwrap(), "");
/// ```
pub fn service_url(settings: &StorageSettings) -> Result<String, NoPublicUrl> {
    match (&settings.public_url, settings.provider) {
        (Some(url), _) => Ok(url.clone()),
        (None, Provider::Local) => Err(NoPublicUrl),
        (None, _) => Ok(String::new()),
    }
}

/// Variables the Lambda environment sets and the runtime client needs.
pub const RUNTIME_VARIABLES: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// The [`RUNTIME_VARIABLES`] that are unset: outside Lambda the runtime
/// client would panic on the first one, so the binary checks first.
pub fn missing_environment(env: &dyn Env) -> Vec<&'static str> {
    RUNTIME_VARIABLES
        .into_iter()
        .filter(|name| env.var(name).is_none_or(|value| value.is_empty()))
        .collect()
}

/// Answers invocations until the Lambda environment ends the process.
pub async fn run(server: Arc<Server>) -> Result<(), lambda_http::Error> {
    // Read through `black_box`, so the linker keeps the marker's bytes.
    std::hint::black_box(crate::host::LAMBDA_FEATURE_MARKER);
    // No drain on Lambda: the platform stops routing before it stops us.
    server.hosting().readiness.set_ready();
    let router = app(server);
    lambda_http::run(service_fn(move |request| invoke(router.clone(), request))).await
}

async fn invoke(router: Router, mut request: lambda_http::Request) -> Result<Response, Infallible> {
    if let Some(ip) = source_ip(&request) {
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(ip, 0)));
    }
    let response = router.oneshot(request).await?;
    let _ = tokio::task::spawn_blocking(crate::telemetry::flush).await;
    Ok(response)
}

/// The caller's address as API Gateway or the Function URL saw it.
fn source_ip(request: &lambda_http::Request) -> Option<IpAddr> {
    let text = match request.request_context_ref()? {
        RequestContext::ApiGatewayV1(context) => context.identity.source_ip.as_deref(),
        RequestContext::ApiGatewayV2(context) => context.http.source_ip.as_deref(),
        _ => None,
    };
    text?.parse().ok()
}
