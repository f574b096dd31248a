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

use crate::config::Env;
use crate::http::{Server, app};

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
