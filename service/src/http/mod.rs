//! The vgi-rpc HTTP transport: routing, status codes, capability headers,
//! content coding and the response budget, on axum.
//!
//! `app()` returns a plain `Router`, so tests drive it with `oneshot` and every
//! platform (a TCP listener, Lambda, Azure Functions) serves the same router.
//!
//! Invariants:
//! - every response carries exactly one `VGI-Accept-Max-Response-Bytes-Support: true`;
//! - client mistakes are 4xx with an Arrow error stream, method failures are
//!   200 + `X-VGI-RPC-Error: true`, internal details never reach the client.

pub mod auth;
pub mod codec;
mod dispatch;
pub mod hosting;
pub mod proxy_proof;
pub mod ratelimit;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use crate::metrics::CallSeries;
use crate::rpc::Protocol;
use crate::storage::{External, local};
use crate::token::KeyRing;
use crate::wire::ipc::Chunks;
use crate::wire::{self, ErrorCode, RpcError, StreamWriter};

use codec::Codec;
use hosting::Hosting;
use ratelimit::Caller;

/// Resolved settings of the transport.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Path prefix, `""` or `/something` (no trailing slash).
    pub prefix: String,
    pub server_id: String,
    pub max_request_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub zstd_level: i32,
    pub enable_reflection: bool,
    /// Host `kit.Probe.v1` (the doctor's OPS003 end-to-end probe; `KIT_PROBE`).
    pub enable_probe: bool,
    /// Compress responses when the client accepts it; off advertises no codecs.
    pub response_compression: bool,
    /// Bodies below this size are framed in the negotiated coding but stored,
    /// not compressed (`KIT_COMPRESS_MIN_BYTES`).
    pub compress_min_bytes: usize,
    /// What the platform adds to a request or response size error (how to
    /// get past the cap there); `None` adds nothing.
    pub limit_hint: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            prefix: String::new(),
            server_id: random_hex(6),
            max_request_bytes: None,
            max_response_bytes: None,
            zstd_level: 1,
            enable_reflection: true,
            enable_probe: true,
            response_compression: true,
            compress_min_bytes: 1024,
            limit_hint: None,
        }
    }
}

/// Hosted protocols plus transport settings: what the router serves.
pub struct Server {
    pub(crate) protocols: BTreeMap<String, Arc<Protocol>>,
    pub(crate) primary: String,
    pub(crate) config: HttpConfig,
    pub(crate) keys: KeyRing,
    pub(crate) hosting: Hosting,
    pub(crate) external: Option<Arc<External>>,
    /// `protocol_hash` of each hosted protocol, for access records and
    /// reflection, each computed on first use: see [`Server::protocol_hash`].
    protocol_hashes: BTreeMap<String, std::sync::OnceLock<String>>,
    /// The capability headers every response carries (all but the request
    /// id): fixed for the server's life, so named and valued once.
    capabilities: Vec<(HeaderName, HeaderValue)>,
}

impl Server {
    /// `protocols[0]` is the primary protocol (named by `/health`).
    pub fn new(protocols: Vec<Protocol>, config: HttpConfig, keys: KeyRing) -> Arc<Server> {
        let hosting = Hosting::open(&keys);
        Server::with_hosting(protocols, config, keys, hosting)
    }

    /// A server with auth, limits, CORS and probes configured by `hosting`.
    pub fn with_hosting(
        protocols: Vec<Protocol>,
        config: HttpConfig,
        keys: KeyRing,
        hosting: Hosting,
    ) -> Arc<Server> {
        Server::build(protocols, config, keys, hosting, None)
    }

    /// A server that also moves large batches to external storage.
    pub fn build(
        protocols: Vec<Protocol>,
        config: HttpConfig,
        keys: KeyRing,
        hosting: Hosting,
        external: Option<External>,
    ) -> Arc<Server> {
        let primary = protocols
            .first()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let mut hosted: BTreeMap<String, Arc<Protocol>> = protocols
            .into_iter()
            .map(|p| (p.name.clone(), Arc::new(p)))
            .collect();
        if config.enable_reflection {
            let reflection = crate::reflection::protocol();
            hosted.insert(reflection.name.clone(), Arc::new(reflection));
        }
        if config.enable_probe {
            let probe = crate::probe::protocol();
            hosted.insert(probe.name.clone(), Arc::new(probe));
        }
        let external = external.map(Arc::new);
        let capabilities = capability_headers(&config, &hosting, external.as_deref());
        let protocol_hashes = hosted
            .keys()
            .map(|name| (name.clone(), std::sync::OnceLock::new()))
            .collect();
        Arc::new(Server {
            protocols: hosted,
            primary,
            config,
            keys,
            hosting,
            external,
            protocol_hashes,
            capabilities,
        })
    }

    /// The `protocol_hash` of a hosted protocol (`""` for another name),
    /// computed on the first request that needs it, not while building the
    /// server: that kept process start to ready short while the hash was
    /// expensive, and now that it is cheap (tens of microseconds for the
    /// conformance service) no request pays for protocols it did not call.
    pub(crate) fn protocol_hash(&self, protocol: &str) -> &str {
        match (
            self.protocol_hashes.get(protocol),
            self.protocols.get(protocol),
        ) {
            (Some(hash), Some(hosted)) => {
                hash.get_or_init(|| crate::reflection::protocol_hash(hosted))
            }
            _ => "",
        }
    }

    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The same server with external storage; call before serving (needs sole ownership).
    pub fn with_external(self: Arc<Self>, external: External) -> Arc<Server> {
        match Arc::try_unwrap(self) {
            Ok(mut server) => {
                server.external = Some(Arc::new(external));
                server.capabilities =
                    capability_headers(&server.config, &server.hosting, server.external.as_deref());
                Arc::new(server)
            }
            Err(_) => panic!("with_external must be called before the server is shared"),
        }
    }

    /// The same server writing access records to `log`; call before serving
    /// (needs sole ownership).
    pub fn with_access_log(self: Arc<Self>, log: crate::access_log::AccessLog) -> Arc<Server> {
        match Arc::try_unwrap(self) {
            Ok(mut server) => {
                server.hosting.access_log = Some(Arc::new(log));
                Arc::new(server)
            }
            Err(_) => panic!("with_access_log must be called before the server is shared"),
        }
    }

    /// The same server authenticating callers with `authenticator` instead
    /// of its API keys; call before serving (needs sole ownership).
    pub fn with_authenticator(
        self: Arc<Self>,
        authenticator: Arc<dyn auth::Authenticator>,
    ) -> Arc<Server> {
        match Arc::try_unwrap(self) {
            Ok(mut server) => {
                server.hosting.authenticator = Some(authenticator);
                Arc::new(server)
            }
            Err(_) => panic!("with_authenticator must be called before the server is shared"),
        }
    }

    pub fn external(&self) -> Option<&External> {
        self.external.as_deref()
    }

    pub fn hosting(&self) -> &Hosting {
        &self.hosting
    }

    /// Whether `protocol` is served (listed or not) and, when `method` is
    /// given, has that method.
    pub fn hosts(&self, protocol: &str, method: Option<&str>) -> bool {
        self.protocols
            .get(protocol)
            .is_some_and(|p| method.is_none_or(|m| p.method(m).is_some()))
    }

    /// The protocols reflection lists (operational ones like `kit.Probe.v1` are served, not listed).
    pub fn protocols(&self) -> impl Iterator<Item = &Arc<Protocol>> {
        self.protocols.values().filter(|p| !p.unlisted)
    }
}

/// The router for `server`. Every path goes through one handler, because the
/// prefix is runtime configuration and protocol names contain dots.
pub fn app(server: Arc<Server>) -> Router {
    Router::new().fallback(handle).with_state(server)
}

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
// Names looked up or set on every request, parsed once (a `&str` name is
// parsed and checked at each use).
const RPC_ERROR: HeaderName = HeaderName::from_static("x-vgi-rpc-error");
const X_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("x-vgi-accept-encoding");
const ACCEPT_MAX_RESPONSE_BYTES: HeaderName =
    HeaderName::from_static("vgi-accept-max-response-bytes");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Per-request facts gathered before dispatch.
pub(crate) struct RequestInfo {
    pub request_id: String,
    pub response_codec: Option<(Codec, bool)>,
    pub accept_max_response: Option<u64>,
    /// `protocol/method` once the path resolved, for error tracebacks.
    pub origin: Option<String>,
    /// The authenticated caller (`""` anonymous), bound into stream tokens.
    pub identity: String,
    /// Everything authentication decided (claims, domain), for handlers.
    pub auth: Arc<crate::rpc::AuthContext>,
    /// Request body bytes as received, for metrics and the access log.
    pub request_bytes: u64,
    pub stream_turn: bool,
    /// In-flight budget held by this request's body; released when the
    /// request ends, however it ends.
    pub reservation: crate::limits::Reservation,
    /// Budget held by pointer fetches made while preparing the call.
    pub fetched: std::sync::Mutex<Vec<crate::limits::Reservation>>,
    /// The error the caller was sent, for the access log: type, message, code.
    pub error: std::sync::Mutex<Option<(String, String, &'static str)>>,
    /// The stream this turn belongs to (32 hex digits of its call id).
    pub stream_id: std::sync::OnceLock<String>,
    /// The peer address, when the listener knows it.
    pub remote: Option<SocketAddr>,
}

impl RequestInfo {
    /// Notes the error the response carries, for the access record.
    pub(crate) fn note_error(&self, error: &RpcError) {
        *self
            .error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((
            error.error_type.clone(),
            error.message.clone(),
            error.code.as_str(),
        ));
    }

    /// Keeps `reservation` until this request ends.
    pub(crate) fn hold(&self, reservation: crate::limits::Reservation) {
        self.fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(reservation);
    }
}

async fn handle(State(server): State<Arc<Server>>, request: Request) -> Response {
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    respond(server, request, remote).await
}

/// Answers one request from `remote` (the client's address, when known):
/// everything [`app`]'s router does, called without it. The accept loop
/// calls this directly (`crate::connections::App::Host`), which spares each
/// request the router's path matching, its layers and a map of extensions
/// made to carry the address.
pub(crate) async fn respond(
    server: Arc<Server>,
    request: Request,
    remote: Option<SocketAddr>,
) -> Response {
    let started = Instant::now();
    let request_id = request_id_of(request.headers());
    let method = request.method().clone();
    // The URI's bytes are shared with the request head: a clone copies no path.
    let uri = request.uri().clone();
    let path = uri.path();
    let origin_header = header_str(request.headers(), header::ORIGIN).map(str::to_string);
    let hosting = &server.hosting;
    let mut info = RequestInfo {
        request_id: request_id.clone(),
        response_codec: if server.config.response_compression {
            codec::negotiate(
                header_str(request.headers(), X_ACCEPT_ENCODING),
                header_str(request.headers(), header::ACCEPT_ENCODING),
            )
        } else {
            None
        },
        accept_max_response: None,
        origin: None,
        identity: String::new(),
        auth: crate::rpc::AuthContext::shared(crate::rpc::AuthContext::anonymous()),
        request_bytes: 0,
        stream_turn: false,
        reservation: hosting.limits.budget.reservation(),
        fetched: Default::default(),
        error: Default::default(),
        stream_id: Default::default(),
        remote,
    };
    let under_prefix = path.strip_prefix(server.config.prefix.as_str());
    if let Some(key) = under_prefix
        .and_then(|p| p.strip_prefix('/'))
        .and_then(|p| p.strip_prefix(local::OBJECTS_SEGMENT))
        .and_then(|p| p.strip_prefix('/'))
        && let Some(local) = server.external.as_ref().and_then(|e| e.local.clone())
    {
        // Signed object URLs carry their own authorization.
        let (key, query) = (
            key.to_string(),
            request.uri().query().unwrap_or("").to_string(),
        );
        let headers = request.headers().clone();
        let mut response = local
            .serve(&method, &key, &query, &headers, request.into_body())
            .await;
        stamp_capabilities(&server, response.headers_mut(), &request_id);
        return response;
    }
    if let Some(mut response) = hosting::probe(hosting, &server.config.server_id, path, &method) {
        stamp_capabilities(&server, response.headers_mut(), &request_id);
        return response;
    }
    if let Some(mut response) = hosting::preflight(hosting, &method, request.headers()) {
        stamp_capabilities(&server, response.headers_mut(), &request_id);
        return response;
    }
    let exempt = method == Method::OPTIONS || under_prefix == Some("/health");
    let mut rate_headers = None;
    if !exempt {
        let peer = remote.map(|address| address.ip());
        match admit(&server, request.headers(), path, peer, &mut info).await {
            Ok(decision) => rate_headers = decision,
            Err((mut response, decision)) => {
                finish(
                    &server,
                    &mut response,
                    &info,
                    decision,
                    origin_header.as_deref(),
                );
                // Counted like every other answer (under protocol and method
                // `-`: an unauthenticated path names no series).
                record(&server, &info, &response, started);
                return response;
            }
        }
    }
    let span = crate::telemetry::server_span(request.headers(), &request_id);
    // Released on every path, including the client going away mid-call
    // (hyper drops this future) and a panic, which is then still counted.
    let mut in_flight = InFlight::start(&server, path, &request_id, started);
    let routed = tokio::time::timeout(
        hosting.request_timeout,
        tracing::Instrument::instrument(
            crate::reflection::CURRENT_SERVER.scope(
                server.clone(),
                CatchPanic(Box::pin(route(&server, request, path, &mut info))),
            ),
            span.clone(),
        ),
    )
    .await;
    in_flight.finished();
    let mut response = match routed {
        Ok(Ok(response)) => response,
        Ok(Err(panic)) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            tracing::error!(request_id = %request_id, path = %path, panic = %text, "a handler panicked");
            // The panic text names internals: it stays in the log.
            let error = RpcError::new(
                "InternalError",
                format!("the method failed unexpectedly; the server logged it under request id {request_id}"),
            )
            .with_code(ErrorCode::Internal)
            .with_status(StatusCode::OK);
            error_response(&server, &info, &error, &wire::empty_schema())
        }
        Err(_) => {
            let error = RpcError::new(
                "TimeoutError",
                format!(
                    "the request did not complete within {} s",
                    hosting.request_timeout.as_secs()
                ),
            )
            .with_code(ErrorCode::DeadlineExceeded)
            .with_kind("deadline_exceeded")
            .with_status(StatusCode::GATEWAY_TIMEOUT);
            error_response(&server, &info, &error, &wire::empty_schema())
        }
    };
    finish(
        &server,
        &mut response,
        &info,
        rate_headers,
        origin_header.as_deref(),
    );
    record(&server, &info, &response, started);
    crate::telemetry::finish_server_span(
        &span,
        info.origin.as_deref(),
        response.status().as_u16(),
        response.headers().contains_key(RPC_ERROR),
    );
    response
}

/// A refusal before routing, with the rate decision whose headers it carries.
type Refused = (Response, Option<ratelimit::Decision>);

/// Authentication and rate limits, in this order: the failed-auth throttle
/// for the client address (before any key is compared), the key itself,
/// then the caller's rate limit. `Ok` carries the rate decision for the
/// `X-RateLimit-*` headers.
async fn admit(
    server: &Server,
    headers: &HeaderMap,
    path: &str,
    peer: Option<std::net::IpAddr>,
    info: &mut RequestInfo,
) -> Result<Option<ratelimit::Decision>, Refused> {
    let hosting = &server.hosting;
    let forwarded = header_str(headers, FORWARDED_FOR);
    let address = Caller::ip(ratelimit::client_ip(
        peer,
        forwarded,
        &hosting.trusted_proxies,
    ));
    if let Some(proof) = &hosting.proxy_proof {
        let header = headers
            .get(proxy_proof::PROOF_HEADER)
            .map(HeaderValue::as_bytes);
        if let Err(failure) = proof.verify(header, auth::now_unix_seconds()) {
            let required = proof.mode() == proxy_proof::ProofMode::Require;
            tracing::info!(target: "kit_service::access", request_id = %info.request_id, caller = %address, reason = failure.as_str(), required, "proxy proof failed");
            if required {
                hosting.metrics.auth_failures.inc();
                let refusal = auth::Refusal::ProxyRequired;
                return Err((auth::unauthorized(refusal, &server.primary, true), None));
            }
        }
    }
    let presented = !matches!(auth::credential(headers), auth::Credential::None);
    let throttle = hosting.auth_throttle.as_ref().filter(|_| presented);
    if let Some(throttle) = throttle {
        let verdict = throttle.peek(&address).await;
        match decided(server, info, verdict) {
            Err(response) => return Err((*response, None)),
            Ok(decision) if !decision.allowed => {
                hosting.metrics.auth_throttled.inc();
                tracing::info!(target: "kit_service::access", request_id = %info.request_id, caller = %address, status = 429, "refused: too many failed API keys");
                let message = format!(
                    "too many failed API keys from this address ({} per {} s); retry in {} s",
                    decision.limit,
                    throttle.limit().per.as_secs(),
                    decision.retry_after
                );
                let response =
                    too_many_requests(server, info, message, "auth_throttled", &decision);
                return Err((response, None));
            }
            Ok(_) => {}
        }
    }
    let target = auth::Target::of(&server.config.prefix, path);
    let outcome = match &hosting.authenticator {
        Some(authenticator) => authenticator.authenticate_context(headers, target),
        None => auth::authenticate(
            &hosting.api_keys,
            hosting.require_auth,
            headers,
            target,
            auth::now_unix_seconds(),
        )
        .map(|identity| crate::rpc::AuthContext::of_identity(&identity)),
    };
    match outcome {
        Ok(caller) => {
            info.identity = caller.principal.clone();
            info.auth = crate::rpc::AuthContext::shared(caller);
        }
        Err(auth::Refusal::Unavailable { retry_after }) => {
            tracing::info!(target: "kit_service::access", request_id = %info.request_id, caller = %address, status = 503, "refused: the identity store is unavailable");
            return Err((identity_unavailable(server, info, retry_after), None));
        }
        Err(refusal) => {
            hosting.metrics.auth_failures.inc();
            // Only a key that matches nothing is a guess; an expired or
            // out-of-scope key was a real one.
            if let Some(throttle) = throttle.filter(|_| refusal == auth::Refusal::Invalid) {
                let verdict = throttle.check(&address).await;
                if let ratelimit::Verdict::Fallback(_, _) | ratelimit::Verdict::Unavailable(_) =
                    verdict
                {
                    hosting.metrics.rate_limit_store_errors.inc();
                }
            }
            tracing::info!(target: "kit_service::access", request_id = %info.request_id, caller = %address, status = 401, reason = refusal.reason(), "refused");
            return Err((
                auth::unauthorized(refusal, &server.primary, hosting.proxy_proof_required()),
                None,
            ));
        }
    }
    let Some(limiter) = &hosting.rate_limiter else {
        return Ok(None);
    };
    let caller = if info.identity.is_empty() {
        address
    } else {
        Caller::key(&info.identity)
    };
    let verdict = limiter.check(&caller).await;
    let decision = decided(server, info, verdict).map_err(|response| (*response, None))?;
    if decision.allowed {
        return Ok(Some(decision));
    }
    hosting.metrics.rate_limited.inc();
    let message = format!(
        "rate limit of {} requests exceeded; retry in {} s",
        decision.limit, decision.retry_after
    );
    let response = too_many_requests(server, info, message, "rate_limited", &decision);
    Err((response, Some(decision)))
}

/// A 429 `RateLimitError` of `kind` as an Arrow error stream, with
/// `Retry-After` from `decision`.
fn too_many_requests(
    server: &Server,
    info: &RequestInfo,
    message: String,
    kind: &'static str,
    decision: &ratelimit::Decision,
) -> Response {
    let error = RpcError::new("RateLimitError", message)
        .with_code(ErrorCode::ResourceExhausted)
        .with_kind(kind)
        .with_details(vec![retry_info(decision.retry_after)])
        .with_status(StatusCode::TOO_MANY_REQUESTS);
    let mut response = error_response(server, info, &error, &wire::empty_schema());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(decision.retry_after));
    response
}

/// The decision of a limiter's verdict, counting store failures; a store
/// that failed closed becomes the 503 to send.
fn decided(
    server: &Server,
    info: &RequestInfo,
    verdict: ratelimit::Verdict,
) -> Result<ratelimit::Decision, Box<Response>> {
    match verdict {
        ratelimit::Verdict::Decided(decision) => Ok(decision),
        ratelimit::Verdict::Fallback(decision, _) => {
            server.hosting.metrics.rate_limit_store_errors.inc();
            Ok(decision)
        }
        ratelimit::Verdict::Unavailable(store_error) => {
            server.hosting.metrics.rate_limit_store_errors.inc();
            tracing::warn!(request_id = %info.request_id, error = %store_error, "refused: the rate-limit store failed and KIT_RATE_LIMIT_STORE_FAILURE=closed");
            // The store's address is internal: it stays in the log.
            let error = RpcError::new(
                "ServiceUnavailableError",
                "the rate-limit store is unavailable and this server refuses requests it cannot count (`KIT_RATE_LIMIT_STORE_FAILURE=closed`); retry shortly",
            )
            .with_code(ErrorCode::Unavailable)
            .with_kind("rate_limit_store_unavailable")
            .with_details(vec![retry_info(1)])
            .with_status(StatusCode::SERVICE_UNAVAILABLE);
            Err(Box::new(error_response(
                server,
                info,
                &error,
                &wire::empty_schema(),
            )))
        }
    }
}

/// 503 for a bearer whose resolver could not answer: transient, so the
/// caller retries after the hook's hint instead of logging in again.
fn identity_unavailable(server: &Server, info: &RequestInfo, retry_after: u32) -> Response {
    let error = RpcError::new(
        "AuthUnavailableError",
        "the identity store could not answer whether this credential is valid; retry shortly",
    )
    .with_code(ErrorCode::Unavailable)
    .with_kind("identity_unavailable")
    .with_details(vec![retry_info(u64::from(retry_after))])
    .with_status(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = error_response(server, info, &error, &wire::empty_schema());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

fn retry_info(seconds: u64) -> serde_json::Value {
    serde_json::json!({"@type": "vgi_rpc.RetryInfo", "retry_delay_seconds": seconds})
}

/// Runs a future, turning a panic while polling it into an `Err`, so a
/// panicking handler costs its request, not the connection or the worker.
struct CatchPanic<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchPanic<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// One request in `kit_in_flight_requests`, released on drop. A request
/// dropped before it finished (the client disconnected) is still counted in
/// `kit_requests_total`, with nginx's status 499 (client closed request).
struct InFlight<'a> {
    server: &'a Server,
    /// The request's path, read for its metric labels only if it is dropped.
    path: &'a str,
    request_id: &'a str,
    started: Instant,
    finished: bool,
}

impl<'a> InFlight<'a> {
    fn start(server: &'a Server, path: &'a str, request_id: &'a str, started: Instant) -> Self {
        server.hosting.metrics.in_flight.inc();
        InFlight {
            server,
            path,
            request_id,
            started,
            finished: false,
        }
    }

    /// The request produced a response; `record` counts it.
    fn finished(&mut self) {
        if !self.finished {
            self.finished = true;
            self.server.hosting.metrics.in_flight.dec();
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let metrics = &self.server.hosting.metrics;
        metrics.in_flight.dec();
        let call = call_series(self.server, self.path);
        call.count(CLIENT_CLOSED_REQUEST);
        call.duration.observe(self.started.elapsed().as_secs_f64());
        tracing::info!(
            target: "kit_service::access",
            request_id = %self.request_id,
            protocol = %call.labels.protocol,
            method = %call.labels.method,
            status = CLIENT_CLOSED_REQUEST,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "client closed the connection before the response"
        );
    }
}

/// nginx's status for a request whose client went away first.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Metric series of a path: hosted protocol and method names only, so
/// arbitrary paths cannot grow the label set.
fn call_series(server: &Server, path: &str) -> Arc<CallSeries> {
    let rest = path
        .strip_prefix(server.config.prefix.as_str())
        .unwrap_or("");
    let mut segments = rest.trim_start_matches('/').split('/');
    let (protocol, method) = match (segments.next(), segments.next()) {
        (Some(protocol), Some(method))
            if server
                .protocols
                .get(protocol)
                .is_some_and(|p| p.method(method).is_some()) =>
        {
            (protocol, method)
        }
        _ => ("-", "-"),
    };
    server.hosting.metrics.call(protocol, method)
}

/// Headers every routed response carries.
fn finish(
    server: &Server,
    response: &mut Response,
    info: &RequestInfo,
    rate: Option<ratelimit::Decision>,
    origin: Option<&str>,
) {
    let busy = status_is_busy(response.status());
    let headers = response.headers_mut();
    stamp_capabilities(server, headers, &info.request_id);
    if busy && !headers.contains_key(header::RETRY_AFTER) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let Some(rate) = rate {
        headers.insert("x-ratelimit-limit", HeaderValue::from(rate.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(rate.remaining));
    }
    hosting::stamp_cors(&server.hosting, origin, headers);
}

fn status_is_busy(status: StatusCode) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE
}

/// Metrics and the access log line for one routed request.
fn record(server: &Server, info: &RequestInfo, response: &Response, started: Instant) {
    use axum::body::HttpBody;
    let elapsed = started.elapsed();
    let (protocol, method) = info
        .origin
        .as_deref()
        .and_then(|o| o.split_once('/'))
        .unwrap_or(("-", "-"));
    let status = response.status().as_u16();
    // Unknown until sent for a body compressed off the workers: that body
    // counts its pieces as it hands them out.
    let response_bytes = response.body().size_hint().exact();
    let series = server.hosting.metrics.call(protocol, method);
    series.count(status);
    series.duration.observe(elapsed.as_secs_f64());
    series.request_bytes.inc_by(info.request_bytes);
    match (response_bytes, response.extensions().get::<SentBytes>()) {
        (Some(bytes), _) => {
            series.response_bytes.inc_by(bytes);
        }
        (None, Some(sent)) => {
            let _ = sent.0.set(series.response_bytes.clone());
        }
        (None, None) => {}
    }
    if info.stream_turn {
        series.count_stream_turn();
    }
    tracing::info!(
        target: "kit_service::access",
        request_id = info.request_id.as_str(),
        protocol,
        method,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        request_bytes = info.request_bytes,
        response_bytes,
        caller = info.identity.as_str(),
        error = response.headers().contains_key(RPC_ERROR),
        "rpc"
    );
    if let Some(log) = &server.hosting.access_log
        && let Some(hosted) = server.protocols.get(protocol)
        && let Some(called) = hosted.method(method)
    {
        let mut error = info
            .error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if error.is_none() && (status >= 400 || response.headers().contains_key(RPC_ERROR)) {
            // Refused by the transport before any error batch was written.
            error = Some(("HTTPError".into(), format!("HTTP {status}"), "UNKNOWN"));
        }
        // A turn refused before its tokens opened still belongs to some stream.
        let stream_id = info
            .stream_id
            .get()
            .cloned()
            .or_else(|| called.is_stream().then(|| random_hex(16)));
        log.write(&crate::access_log::AccessRecord {
            server_id: &server.config.server_id,
            protocol,
            protocol_hash: server.protocol_hash(protocol),
            method,
            stream: called.is_stream(),
            stream_id: stream_id.as_deref(),
            principal: &info.identity,
            remote_addr: info.remote,
            duration: elapsed,
            request_id: &info.request_id,
            http_status: status,
            error: error
                .as_ref()
                .map(|(kind, message, code)| (kind.as_str(), message.as_str(), *code)),
            request_bytes: info.request_bytes,
            response_bytes,
        });
    }
}

/// Routes `request`, whose URI's path is `path` (borrowed from the caller's
/// clone of the URI, since `request` is consumed on the way).
async fn route(
    server: &Arc<Server>,
    request: Request,
    path: &str,
    info: &mut RequestInfo,
) -> Response {
    let prefix = server.config.prefix.as_str();
    let Some(rest) = path
        .strip_prefix(prefix)
        .filter(|r| r.starts_with('/') || r.is_empty())
    else {
        return not_found(server, info, path);
    };
    // No route has more than three segments: a fourth is kept only so that
    // such a path matches none of them.
    let mut kept = [""; 4];
    let mut count = 0;
    for segment in rest.trim_start_matches('/').split('/').take(kept.len()) {
        kept[count] = segment;
        count += 1;
    }
    let segments = &kept[..count];
    let method = request.method().clone();

    if segments == ["health"] {
        return health(server, info, &method);
    }
    if segments == ["__upload_url__", "init"] && server.external.is_some() && method == Method::POST
    {
        info.origin = Some("__upload_url__/init".into());
        let body = match read_body(server, request, info).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        return dispatch::upload_urls(server, info, body).await;
    }
    if segments.len() == 1
        && segments[0].starts_with("__")
        && segments[0].ends_with("__")
        && segments[0].len() > 4
    {
        if method != Method::POST {
            return method_not_allowed(server, info, &method, "POST");
        }
        let error = RpcError::new(
            "MethodNotImplementedError",
            format!(
                "This server does not implement the reserved method '{}'.",
                segments[0]
            ),
        )
        .with_code(ErrorCode::Unimplemented)
        .with_kind("method_not_implemented")
        .with_status(StatusCode::NOT_FOUND);
        return error_response(server, info, &error, &wire::empty_schema());
    }
    let (protocol, method_name, endpoint) = match segments {
        [protocol, method_name] => (*protocol, *method_name, Endpoint::Unary),
        [protocol, method_name, "init"] => (*protocol, *method_name, Endpoint::Init),
        [protocol, method_name, "exchange"] => (*protocol, *method_name, Endpoint::Exchange),
        _ => return not_found(server, info, path),
    };
    if method == Method::OPTIONS {
        return options_response();
    }
    if method != Method::POST {
        return if server.protocols.contains_key(protocol) {
            method_not_allowed(server, info, &method, "POST")
        } else {
            not_found(server, info, path)
        };
    }
    match header_str(request.headers(), ACCEPT_MAX_RESPONSE_BYTES).map(parse_accept_max) {
        None => {}
        Some(Ok(value)) => info.accept_max_response = Some(value),
        Some(Err(text)) => {
            let error = RpcError::bad_request(
                "ValueError",
                format!(
                    "Invalid VGI-Accept-Max-Response-Bytes header {text:?}: expected a canonical decimal between 65536 and 2^53-1"
                ),
            );
            return error_response(server, info, &error, &wire::empty_schema());
        }
    }
    let resolved = match resolve(server, protocol, method_name) {
        Ok(resolved) => resolved,
        Err(error) => return error_response(server, info, &error, &wire::empty_schema()),
    };
    let (protocol_name, method_name) = (&resolved.protocol.name, &resolved.method);
    let mut origin = String::with_capacity(protocol_name.len() + 1 + method_name.len());
    origin.push_str(protocol_name);
    origin.push('/');
    origin.push_str(method_name);
    info.origin = Some(origin);
    info.stream_turn = endpoint != Endpoint::Unary;
    let content_type = header_str(request.headers(), header::CONTENT_TYPE).unwrap_or("");
    if content_type.split(';').next().unwrap_or("").trim() != wire::CONTENT_TYPE {
        let error = RpcError::new(
            "TypeError",
            format!(
                "Expected Content-Type: '{}', got '{content_type}'. All vgi-rpc HTTP requests must use Content-Type: {}",
                wire::CONTENT_TYPE,
                wire::CONTENT_TYPE
            ),
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        return error_response(server, info, &error, &wire::empty_schema());
    }
    let body = match read_body(server, request, info).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    dispatch::call(server, info, resolved, endpoint, body).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Unary,
    Init,
    Exchange,
}

pub(crate) struct Resolved {
    pub protocol: Arc<Protocol>,
    pub method: String,
}

impl Resolved {
    /// The resolved method; `resolve()` only builds a `Resolved` for one that exists.
    pub fn method(&self) -> &crate::rpc::Method {
        self.protocol
            .method(&self.method)
            .expect("resolve() checked the method exists")
    }
}

fn resolve(server: &Server, protocol: &str, method: &str) -> Result<Resolved, RpcError> {
    let not_found = |error: RpcError| {
        error
            .with_status(StatusCode::NOT_FOUND)
            .with_code(ErrorCode::Unimplemented)
    };
    if protocol.contains('%') {
        return Err(not_found(
            RpcError::new(
                "ProtocolNotSpecifiedError",
                format!("Protocol path segment '{protocol}' contains a percent sign. The protocol charset never requires encoding, so this is rejected rather than decoded."),
            )
            .with_kind("protocol_not_supported"),
        ));
    }
    let Some(hosted) = server.protocols.get(protocol) else {
        let names: Vec<String> = server
            .protocols()
            .map(|p| format!("'{}'", p.name))
            .collect();
        let message = if crate::rpc::valid_protocol_name(protocol) {
            format!(
                "This server does not host protocol '{protocol}'. Hosted: [{}].",
                names.join(", ")
            )
        } else {
            "Not a protocol name: the protocol path segment must match ^[A-Za-z_][A-Za-z0-9_.]*$"
                .to_string()
        };
        return Err(not_found(
            RpcError::new("ProtocolNotSupportedError", message).with_kind("protocol_not_supported"),
        ));
    };
    if hosted.method(method).is_none() {
        let names: Vec<String> = hosted.methods.keys().map(|k| format!("'{k}'")).collect();
        return Err(not_found(
            RpcError::new(
                "MethodNotImplementedError",
                format!(
                    "Protocol '{protocol}' has no method '{method}'. Available: [{}].",
                    names.join(", ")
                ),
            )
            .with_kind("method_not_implemented"),
        ));
    }
    Ok(Resolved {
        protocol: hosted.clone(),
        method: method.to_string(),
    })
}

/// `"; {hint}"` for a platform's [`HttpConfig::limit_hint`], else `""`.
pub(crate) fn limit_hint(server: &Server) -> String {
    server
        .config
        .limit_hint
        .as_deref()
        .map(|hint| format!("; {hint}"))
        .unwrap_or_default()
}

/// The request cap in force: `max_request_bytes`, else
/// [`crate::MAX_DECODED_REQUEST_BYTES`] (enforced, not advertised).
pub(crate) fn request_limit(server: &Server) -> usize {
    server
        .config
        .max_request_bytes
        .map(|l| l.min(usize::MAX as u64) as usize)
        .unwrap_or(crate::MAX_DECODED_REQUEST_BYTES)
}

/// zstd bodies that declare at most this much decode on the async worker:
/// a blocking-pool hop costs more than they do.
const INLINE_DECODE_BYTES: usize = 256 * 1024;

/// Reads and decodes the request body, enforcing the request cap before and
/// after decoding and holding every byte against the in-flight budget.
async fn read_body(
    server: &Server,
    request: Request,
    info: &mut RequestInfo,
) -> Result<Bytes, Response> {
    let limit = request_limit(server);
    let encoding = header_str(request.headers(), header::CONTENT_ENCODING).map(str::to_string);
    let declared =
        header_str(request.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared
        && length <= limit as u64
        && !info.reservation.grow_to(length)
    {
        return Err(over_budget(server, info));
    }
    let mut reservation = std::mem::take(&mut info.reservation);
    // A declared length within the cap is already reserved: allocate it once
    // instead of doubling (each doubling copies the body on an async worker).
    let capacity = declared.filter(|l| *l <= limit as u64).unwrap_or(0) as usize;
    let read = read_limited_body(request.into_body(), limit, capacity, &mut reservation);
    let outcome = tokio::time::timeout(server.hosting.read_timeout, read).await;
    info.reservation = reservation;
    let raw = match outcome {
        Ok(Ok(BodyRead::Complete(raw))) => raw,
        Ok(Ok(BodyRead::TooLarge)) => return Err(payload_too_large(server, info)),
        Ok(Ok(BodyRead::OverBudget)) => return Err(over_budget(server, info)),
        Ok(Err(_)) => {
            let error =
                RpcError::bad_request("ProtocolError", "the request body could not be read");
            return Err(error_response(server, info, &error, &wire::empty_schema()));
        }
        Err(_) => {
            let error = RpcError::new(
                "TimeoutError",
                format!(
                    "the request body did not arrive within {} s",
                    server.hosting.read_timeout.as_secs()
                ),
            )
            .with_code(ErrorCode::DeadlineExceeded)
            .with_status(StatusCode::REQUEST_TIMEOUT);
            return Err(error_response(server, info, &error, &wire::empty_schema()));
        }
    };
    info.request_bytes = raw.len() as u64;
    let Some(encoding) =
        encoding.filter(|e| !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity"))
    else {
        return Ok(raw);
    };
    let Some(codec) = Codec::parse(&encoding) else {
        let error = RpcError::new(
            "UnsupportedEncodingError",
            format!(
                "Unsupported Content-Encoding '{encoding}'. Supported: {}",
                codec::SUPPORTED
            ),
        )
        .with_code(ErrorCode::InvalidArgument)
        .with_kind("unsupported_encoding")
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        return Err(error_response(server, info, &error, &wire::empty_schema()));
    };
    let held = raw.len() as u64;
    let decoded = if codec == Codec::Zstd && codec::is_small_zstd(&raw, INLINE_DECODE_BYTES) {
        let reservation = &mut info.reservation;
        Ok(codec::decode_bounded(codec, &raw, limit, &mut |bytes| {
            reservation.grow_to(held + bytes as u64)
        }))
    } else {
        // Any other body may be a bomb: decode it off the async workers,
        // a bounded number at a time, growing the reservation as it decodes.
        let mut reservation = std::mem::take(&mut info.reservation);
        let job = server.hosting.limits.heavy.run(move || {
            let result = codec::decode_bounded(codec, &raw, limit, &mut |bytes| {
                reservation.grow_to(held + bytes as u64)
            });
            (result, reservation)
        });
        match job.await {
            Ok((result, reservation)) => {
                info.reservation = reservation;
                Ok(result)
            }
            Err(error) => Err(error),
        }
    };
    match decoded {
        Ok(Ok(body)) => Ok(Bytes::from(body)),
        Ok(Err(codec::DecodeError::TooLarge { .. })) => Err(payload_too_large(server, info)),
        Ok(Err(codec::DecodeError::OverBudget)) => Err(over_budget(server, info)),
        Ok(Err(error @ codec::DecodeError::Corrupt { .. })) => {
            let error = RpcError::bad_request("ProtocolError", error.to_string())
                .with_code(ErrorCode::InvalidArgument)
                .with_kind("invalid_content_encoding");
            Err(error_response(server, info, &error, &wire::empty_schema()))
        }
        Err(join) => {
            tracing::error!(request_id = %info.request_id, error = %join, "decoding a request body failed on the codec pool");
            let error = RpcError::new(
                "InternalError",
                format!(
                    "the request body could not be decoded; the server logged it under request id {}",
                    info.request_id
                ),
            )
            .with_code(ErrorCode::Internal)
            .with_status(StatusCode::INTERNAL_SERVER_ERROR);
            Err(error_response(server, info, &error, &wire::empty_schema()))
        }
    }
}

/// How much of an over-limit body is read and thrown away before the 413.
const MAX_DRAIN_BYTES: usize = 512 * 1024 * 1024;

/// What reading a body came to.
enum BodyRead {
    Complete(Bytes),
    /// Larger than the request cap (drained, not held).
    TooLarge,
    /// The in-flight budget could not hold it (drained, not held).
    OverBudget,
}

/// Reads a body up to `limit` bytes, each byte reserved in `reservation`
/// before it is kept.
///
/// An over-limit body is drained (up to [`MAX_DRAIN_BYTES`], within the read
/// timeout) before the 413 goes out: a client still sending when the server
/// answers and closes sees a broken connection instead of the 413 that tells
/// the vgi-rpc client to retry through an upload URL. Drained bytes are
/// dropped as they arrive, so they cost no memory.
async fn read_limited_body(
    body: Body,
    limit: usize,
    capacity: usize,
    reservation: &mut crate::limits::Reservation,
) -> Result<BodyRead, axum::Error> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut collected = bytes::BytesMut::with_capacity(capacity);
    let mut refused = None;
    let mut drained = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if refused.is_some() {
            drained += data.len();
            if drained > MAX_DRAIN_BYTES {
                break;
            }
        } else if collected.len() + data.len() > limit {
            refused = Some(BodyRead::TooLarge);
            drained = collected.len() + data.len();
            collected = bytes::BytesMut::new();
        } else if !reservation.grow_to((collected.len() + data.len()) as u64) {
            refused = Some(BodyRead::OverBudget);
            drained = collected.len() + data.len();
            collected = bytes::BytesMut::new();
        } else {
            collected.extend_from_slice(&data);
        }
    }
    Ok(refused.unwrap_or_else(|| BodyRead::Complete(collected.freeze())))
}

/// 413: the body is over the request cap, as received or as decoded. The
/// vgi-rpc client retries through an upload URL on the status alone.
fn payload_too_large(server: &Server, info: &RequestInfo) -> Response {
    let limit = request_limit(server);
    let error = RpcError::new(
        "PayloadTooLargeError",
        format!(
            "Request body exceeds max_request_bytes ({limit}); send larger requests through an upload URL{}",
            limit_hint(server)
        ),
    )
    .with_code(ErrorCode::ResourceExhausted)
    .with_kind("payload_too_large")
    .with_status(StatusCode::PAYLOAD_TOO_LARGE);
    error_response(server, info, &error, &wire::empty_schema())
}

/// 503 + `Retry-After`: the server-wide in-flight budget is spent; retrying
/// later (or elsewhere) will work.
pub(crate) fn over_budget(server: &Server, info: &RequestInfo) -> Response {
    server.hosting.metrics.budget_refusals.inc();
    let error = RpcError::new(
        "ServerBusyError",
        "the server is holding as many request bytes as its in-flight budget (`KIT_MAX_INFLIGHT_BYTES`) allows; retry shortly",
    )
    .with_code(ErrorCode::Unavailable)
    .with_kind("server_busy")
    .with_details(vec![serde_json::json!({"@type": "vgi_rpc.RetryInfo", "retry_delay_seconds": 1})])
    .with_status(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = error_response(server, info, &error, &wire::empty_schema());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Canonical positive decimal between 65536 and 2^53-1.
fn parse_accept_max(text: &str) -> Result<u64, String> {
    let valid =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    match text.parse::<u64>() {
        Ok(value) if valid && (65536..=(1u64 << 53) - 1).contains(&value) => Ok(value),
        _ => Err(text.to_string()),
    }
}

fn health(server: &Server, info: &RequestInfo, method: &Method) -> Response {
    match *method {
        Method::OPTIONS => {
            let mut response = Response::new(Body::empty());
            let headers = response.headers_mut();
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Method::GET | Method::HEAD => {
            let body = serde_json::json!({"status": "ok", "server_id": server.config.server_id, "protocol": server.primary});
            // For HEAD hyper sends the head alone, with the length GET's
            // body would have (RFC 9110 9.3.2).
            json_response(StatusCode::OK, body)
        }
        _ => method_not_allowed(server, info, method, "GET, HEAD, OPTIONS"),
    }
}

fn options_response() -> Response {
    let mut response = Response::new(Body::empty());
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// 405 with `Allow`: a route that exists, asked with the wrong HTTP method.
fn method_not_allowed(
    server: &Server,
    info: &RequestInfo,
    method: &Method,
    allow: &'static str,
) -> Response {
    let error = RpcError::new(
        "MethodNotAllowedError",
        format!("HTTP {method} is not allowed here; allowed: {allow}"),
    )
    .with_code(ErrorCode::Unimplemented)
    .with_kind("method_not_allowed")
    .with_status(StatusCode::METHOD_NOT_ALLOWED);
    let mut response = error_response(server, info, &error, &wire::empty_schema());
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// 404 for a path that is no route at all (wrong prefix or shape).
fn not_found(server: &Server, info: &RequestInfo, path: &str) -> Response {
    let shown: String = path.chars().take(200).collect();
    let error = RpcError::new(
        "NotFoundError",
        format!(
            "No route for '{shown}': vgi-rpc calls are POST {}/{{protocol}}/{{method}}[/init|/exchange]",
            server.config.prefix
        ),
    )
    .with_code(ErrorCode::NotFound)
    .with_kind("not_found")
    .with_status(StatusCode::NOT_FOUND);
    error_response(server, info, &error, &wire::empty_schema())
}

pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An Arrow error stream (empty or the given schema) as a complete response.
pub(crate) fn error_response(
    server: &Server,
    info: &RequestInfo,
    error: &RpcError,
    schema: &arrow_schema::SchemaRef,
) -> Response {
    let mut body = Vec::new();
    write_error_stream(&mut body, schema, error, &server.config.server_id, info);
    arrow_response(
        server,
        info,
        error.status,
        body,
        error.status == StatusCode::OK,
    )
}

pub(crate) fn write_error_stream(
    out: &mut Vec<u8>,
    schema: &arrow_schema::SchemaRef,
    error: &RpcError,
    server_id: &str,
    info: &RequestInfo,
) {
    let mut writer = StreamWriter::new(out, schema).expect("schemas of error streams are valid");
    info.note_error(error);
    let metadata = error.to_metadata_from(server_id, &info.request_id, info.origin.as_deref());
    writer
        .write_metadata_only(&metadata)
        .expect("zero-row batches always encode");
    writer.finish();
}

/// A response with an Arrow body, compressed as negotiated.
pub(crate) fn arrow_response(
    server: &Server,
    info: &RequestInfo,
    status: StatusCode,
    body: impl Into<Chunks>,
    rpc_error: bool,
) -> Response {
    let body: Chunks = body.into();
    // Room for these, the content coding and the capability headers.
    let mut headers = HeaderMap::with_capacity(16);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(wire::CONTENT_TYPE),
    );
    if rpc_error {
        headers.insert(RPC_ERROR, HeaderValue::from_static("true"));
    }
    let body = match info.response_codec {
        Some((codec, only_x)) if !body.is_empty() => {
            let name = if only_x {
                "x-vgi-content-encoding"
            } else {
                "content-encoding"
            };
            headers.insert(name, HeaderValue::from_static(codec.as_str()));
            let chunks = body.into_chunks();
            let level = server.config.zstd_level;
            let total: usize = chunks.iter().map(Bytes::len).sum();
            if total >= INLINE_COMPRESS_BYTES {
                // O(size) work: on the bounded pool, so the async workers
                // (and `/readyz`) never wait behind a 100 MB response. A
                // large body takes every free slot of the pool as zstd worker
                // threads (one frame either way).
                let want = if total >= codec::PARALLEL_MIN_BYTES {
                    usize::MAX
                } else {
                    1
                };
                let (pieces, received) = tokio::sync::mpsc::unbounded_channel();
                let pool = server.hosting.limits.heavy.clone();
                let job = async move {
                    pool.run_wide(want, move |threads| {
                        let writer = PieceWriter::new(pieces);
                        codec::encode_chunks_to(codec, &chunks, level, threads, writer)?.send()
                    })
                    .await
                };
                let sent = SentBytes::default();
                let body = CompressingBody {
                    job: Some(Box::pin(job)),
                    pieces: received,
                    sent: sent.0.clone(),
                };
                let mut response = Response::new(Body::new(body));
                response.extensions_mut().insert(sent);
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                return response;
            }
            Body::from(match chunks.as_slice() {
                [one] if one.len() < server.config.compress_min_bytes => codec::store(codec, one),
                [one] => codec::encode(codec, one, level),
                _ => codec::encode_chunks(codec, &chunks, level, 1),
            })
        }
        _ => chunk_body(body),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Responses at least this large are compressed on the bounded pool; below
/// it the hop costs more than the compression.
const INLINE_COMPRESS_BYTES: usize = 256 * 1024;

/// Where a body compressed off the async workers, whose size is known only
/// once it is sent, counts the bytes it hands out: the call's
/// `response_bytes` series, set by `record` before the body is polled.
#[derive(Debug, Clone, Default)]
pub(crate) struct SentBytes(
    pub Arc<std::sync::OnceLock<prometheus_client::metrics::counter::Counter>>,
);

type Compression = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<std::io::Result<()>, tokio::task::JoinError>>
            + Send,
    >,
>;

/// Compressed output is handed to the response in pieces of at least this
/// size, as the pool's job produces them.
const PIECE_BYTES: usize = 256 * 1024;

/// The writer a compression job writes into: it sends each [`PIECE_BYTES`]
/// of output to the response body without waiting for it to be sent, so the
/// client decodes the first pieces while the job compresses the rest, and a
/// slow client never holds a pool slot (the pieces wait in memory instead,
/// at most the whole compressed body, as before the body was streamed).
struct PieceWriter {
    pending: Vec<u8>,
    pieces: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

impl PieceWriter {
    fn new(pieces: tokio::sync::mpsc::UnboundedSender<Bytes>) -> PieceWriter {
        PieceWriter {
            pending: Vec::with_capacity(PIECE_BYTES),
            pieces,
        }
    }

    /// Sends what is pending; fails once the response has been dropped.
    fn send(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.pending, Vec::with_capacity(PIECE_BYTES));
        self.pieces.send(Bytes::from(piece)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the response was dropped while compressing",
            )
        })
    }
}

impl std::io::Write for PieceWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= PIECE_BYTES {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A body whose bytes come from a compression job on the bounded pool, piece
/// by piece as it produces them (chunked transfer coding: the compressed size
/// is known only at the end). It ends only once the job has succeeded; a
/// failed job ends the response with an error, so a client never takes a
/// truncated body for a whole one.
struct CompressingBody {
    job: Option<Compression>,
    pieces: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    sent: Arc<std::sync::OnceLock<prometheus_client::metrics::counter::Counter>>,
}

impl http_body::Body for CompressingBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Some(job) = self.job.as_mut()
            && let Poll::Ready(outcome) = job.as_mut().poll(cx)
        {
            self.job = None;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Poll::Ready(Some(Err(error))),
                Err(error) => return Poll::Ready(Some(Err(std::io::Error::other(error)))),
            }
        }
        match self.pieces.poll_recv(cx) {
            Poll::Ready(Some(piece)) => {
                if let Some(sent) = self.sent.get() {
                    sent.inc_by(piece.len() as u64);
                }
                Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
            }
            // Every piece is out; the end waits for the job's outcome (its
            // waker is registered above).
            Poll::Ready(None) if self.job.is_some() => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A response body that hands hyper each chunk as it is (no concatenation),
/// with an exact size so the response carries `Content-Length`.
fn chunk_body(body: Chunks) -> Body {
    let mut chunks = body.into_chunks();
    match chunks.len() {
        0 => Body::empty(),
        1 => Body::from(chunks.pop().expect("one chunk")),
        _ => Body::new(ChunkBody {
            remaining: chunks.iter().map(|c| c.len() as u64).sum(),
            chunks: chunks.into(),
        }),
    }
}

struct ChunkBody {
    chunks: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl http_body::Body for ChunkBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.remaining -= chunk.len() as u64;
        }
        std::task::Poll::Ready(next.map(|chunk| Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

fn stamp_capabilities(server: &Server, headers: &mut HeaderMap, request_id: &str) {
    headers.reserve(server.capabilities.len() + 1);
    for (name, value) in &server.capabilities {
        headers.insert(name.clone(), value.clone());
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
}

/// What [`stamp_capabilities`] adds besides the request id, in that order.
fn capability_headers(
    config: &HttpConfig,
    hosting: &Hosting,
    external: Option<&External>,
) -> Vec<(HeaderName, HeaderValue)> {
    let flag = |on: bool| HeaderValue::from_static(if on { "true" } else { "false" });
    // A configured byte limit, as its header; none when unset.
    let limit = |name: &'static str, bytes: Option<u64>| {
        bytes.map(|n| (HeaderName::from_static(name), HeaderValue::from(n)))
    };
    let mut headers = vec![
        (
            HeaderName::from_static("vgi-accept-max-response-bytes-support"),
            flag(true),
        ),
        (
            HeaderName::from_static("vgi-externalization-enabled"),
            flag(external.is_some()),
        ),
    ];
    if let Some(external) = external {
        headers.push((
            HeaderName::from_static("vgi-upload-url-support"),
            flag(true),
        ));
        headers.extend(limit("vgi-max-upload-bytes", external.max_upload_bytes));
        headers.extend(limit(
            "vgi-max-externalized-response-bytes",
            external.max_externalized_response_bytes,
        ));
    }
    let encodings = if config.response_compression {
        codec::SUPPORTED
    } else {
        ""
    };
    headers.push((
        HeaderName::from_static("vgi-supported-encodings"),
        HeaderValue::from_static(encodings),
    ));
    headers.extend(limit("vgi-max-request-bytes", config.max_request_bytes));
    headers.extend(limit("vgi-max-response-bytes", config.max_response_bytes));
    if hosting.proxy_proof_required() {
        headers.push((
            HeaderName::from_static(proxy_proof::PROOF_REQUIRED_HEADER),
            flag(true),
        ));
    }
    headers
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Echoes a sane caller id, otherwise mints 16 hex characters.
fn request_id_of(headers: &HeaderMap) -> String {
    match header_str(headers, REQUEST_ID) {
        Some(id)
            if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id.to_string()
        }
        _ => random_hex(8),
    }
}

/// `bytes` bytes from the operating system's random source, hex-encoded.
/// Each thread draws from a 4 KiB buffer refilled by one `getrandom` call, so a
/// request id costs no system call; the bytes are still the kernel's CSPRNG
/// output, each used once.
pub fn random_hex(bytes: usize) -> String {
    const POOL: usize = 4096;
    thread_local! {
        static POOL_BYTES: std::cell::RefCell<(Box<[u8; POOL]>, usize)> =
            std::cell::RefCell::new((Box::new([0; POOL]), POOL));
    }
    if bytes > POOL / 4 {
        let mut raw = vec![0u8; bytes];
        getrandom::fill(&mut raw).expect("the operating system's random source failed");
        return hex::encode(raw);
    }
    POOL_BYTES.with(|cell| {
        let (pool, used) = &mut *cell.borrow_mut();
        if *used + bytes > POOL {
            getrandom::fill(&mut pool[..]).expect("the operating system's random source failed");
            *used = 0;
        }
        let taken = &mut pool[*used..*used + bytes];
        let mut text = String::with_capacity(2 * bytes);
        for byte in taken.iter() {
            text.push(HEX_DIGITS[usize::from(byte >> 4)] as char);
            text.push(HEX_DIGITS[usize::from(byte & 0xf)] as char);
        }
        // Wipe what was handed out so the pool never holds a used value.
        taken.fill(0);
        *used += bytes;
        text
    })
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::random_hex;

    #[test]
    fn protocol_hashes_are_computed_per_protocol_on_first_use() {
        let keys =
            crate::token::KeyRing::new(crate::token::SigningKey::new(vec![9u8; 32]), vec![], 3600);
        let demo = crate::demo::protocol();
        let server = super::Server::new(
            vec![crate::demo::protocol()],
            super::HttpConfig::default(),
            keys,
        );
        let reflection = crate::reflection::NAME;
        assert!(server.protocols.contains_key(reflection));
        let computed = |name: &str| server.protocol_hashes[name].get().is_some();
        assert!(!computed(&demo.name) && !computed(reflection));

        let hash = crate::reflection::protocol_hash(&demo);
        assert_eq!(server.protocol_hash(&demo.name), hash);
        assert!(
            computed(&demo.name) && !computed(reflection),
            "only the protocol asked for"
        );
        assert_eq!(server.protocol_hash(&demo.name), hash);
        assert_eq!(
            server.protocol_hash(reflection),
            crate::reflection::protocol_hash(&crate::reflection::protocol())
        );
        assert_eq!(server.protocol_hash("acme.Nope.v1"), "");
    }

    #[test]
    fn random_ids_are_distinct_across_pool_refills() {
        // 8-byte ids: 512 per pool, so 5,000 ids cross nine refills.
        let ids: std::collections::HashSet<String> = (0..5_000).map(|_| random_hex(8)).collect();
        assert_eq!(ids.len(), 5_000);
        assert!(ids.iter().all(|id| {
            id.len() == 16
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }));
        // Sizes that do not divide the pool, and a request larger than the pool allows.
        let mixed: Vec<String> = (0..2_000).map(|i| random_hex(1 + i % 13)).collect();
        assert!(
            mixed
                .iter()
                .enumerate()
                .all(|(i, id)| id.len() == 2 * (1 + i % 13))
        );
        assert_eq!(random_hex(2_000).len(), 4_000);
        assert_ne!(random_hex(16), random_hex(16));
    }
}
