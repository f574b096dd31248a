//! Logs and traces: the global `tracing` subscriber, and with the `otel` cargo
//! feature one OpenTelemetry server span per RPC request, exported over OTLP/HTTP.
//!
//! The transport calls the same functions with or without the feature; without
//! it they are no-op stubs and the default build compiles none of the exporter
//! stack. Export is on only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, so a build with the feature
//! behaves like one without until an operator points it at a collector.
//!
//! A span continues the caller's W3C trace context: the `traceparent` and
//! `tracestate` HTTP headers first, else the same keys in the request batch's
//! custom metadata, where the Python client also puts them (a proxy that
//! rewrites the header is the closer parent, so the header wins). The batch is
//! only parsed inside dispatch, so the OpenTelemetry layer runs with context
//! activation off: entering the span does not start it, and its parent can
//! still be set once the body has been read.

use http::HeaderMap;
use tracing::Span;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Env;
use crate::wire::Metadata;

/// W3C trace-context keys, the same in HTTP headers and in batch metadata.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Base URL of an OTLP/HTTP collector; `/v1/traces` is appended.
pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Full URL for traces; used as given and wins over [`OTLP_ENDPOINT`].
pub const OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `service.name` of the exported spans.
pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// Milliseconds an export request may take, connect to last byte (OTLP default 10000).
pub const OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// The same for traces only; wins over [`OTLP_TIMEOUT`].
pub const OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";

/// Why the subscriber or the trace exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("failed to set up the OTLP trace exporter for `{endpoint}`: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("`{name}` is `{value}`, not a positive number of milliseconds")]
    Timeout { name: &'static str, value: String },
    #[error("failed to install the `tracing` subscriber: {0}")]
    Subscriber(String),
}

impl TelemetryError {
    /// What to change, for the operator.
    pub fn hint(&self) -> String {
        match self {
            TelemetryError::Exporter { .. } => format!(
                "set `{OTLP_ENDPOINT}` to the collector's base URL, e.g. `http://localhost:4318`"
            ),
            TelemetryError::Timeout { name, .. } => {
                format!("set `{name}` to a number of milliseconds, e.g. `10000`, or unset it")
            }
            TelemetryError::Subscriber(_) => {
                "another `tracing` subscriber is already installed in this process".to_string()
            }
        }
    }
}

/// Keeps trace export running; [`Telemetry::shutdown`] (or dropping it)
/// flushes the spans still buffered and stops the exporter.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter. Blocks on the export, so call it
    /// outside the async runtime (or through `spawn_blocking`).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: failed to flush traces at shutdown: {error}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
        log_buffer::flush();
    }
}

/// Installs the global subscriber: log lines to stderr (`json` or text,
/// filtered by `RUST_LOG`, default `info`), plus the OTLP span exporter when
/// built with `otel` and an endpoint is configured in `env`.
pub fn init(env: &dyn Env, log_json: bool) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal, and never with `NO_COLOR` set (no-color.org):
    // redirected logs (files, `up local`, journald) get plain text.
    let colour = {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal() && env.var("NO_COLOR").is_none_or(|v| v.is_empty())
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(log_buffer::writer)
        .with_ansi(colour);
    let logs = if log_json {
        logs.json()
            .event_format(crate::logline::JsonLines::default())
            .boxed()
    } else {
        logs.boxed()
    };
    let subscriber = tracing_subscriber::registry().with(logs.with_filter(filter));
    #[cfg(feature = "otel")]
    {
        let provider = otlp::provider(env)?;
        let traces = provider.as_ref().map(otlp::layer);
        subscriber
            .with(traces)
            .try_init()
            .map_err(|error| TelemetryError::Subscriber(error.to_string()))?;
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otel"))]
    {
        subscriber
            .try_init()
            .map_err(|error| TelemetryError::Subscriber(error.to_string()))?;
        if let Some(name) = [OTLP_TRACES_ENDPOINT, OTLP_ENDPOINT]
            .into_iter()
            .find(|name| env.var(name).is_some_and(|v| !v.trim().is_empty()))
        {
            tracing::warn!(
                "`{name}` is set but this kit-service was built without the `otel` feature: no traces are exported. \
                 Rebuild with `cargo build --release -p kit-service --features otel`"
            );
        }
        Ok(Telemetry {})
    }
}

/// The server span of one RPC request, continuing the trace of the
/// `traceparent` header when there is one. Instrument the request with it and
/// close it with [`finish_server_span`].
pub fn server_span(headers: &HeaderMap, request_id: &str) -> Span {
    #[cfg(feature = "otel")]
    {
        otlp::server_span(headers, request_id)
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (headers, request_id);
        Span::none()
    }
}

/// Records what the request turned out to be: `origin` is `protocol/method`
/// once the path resolved; `rpc_error` marks a method failure (200 +
/// `X-VGI-RPC-Error`).
pub fn finish_server_span(span: &Span, origin: Option<&str>, status: u16, rpc_error: bool) {
    #[cfg(feature = "otel")]
    {
        otlp::finish_server_span(span, origin, status, rpc_error);
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (span, origin, status, rpc_error);
    }
}

/// Hook for dispatch, called with the request batch's custom metadata: when
/// the HTTP request carried no `traceparent` header, the current server span
/// continues the trace named by the batch's `traceparent` key instead.
pub fn continue_trace_from_batch_metadata(metadata: &Metadata) {
    #[cfg(feature = "otel")]
    {
        otlp::continue_trace_from_batch_metadata(metadata);
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = metadata;
    }
}

/// Exports the spans buffered so far, for platforms that freeze the process
/// between requests (AWS Lambda). Blocks; a no-op when nothing is exported.
pub fn flush() {
    log_buffer::flush();
    #[cfg(feature = "otel")]
    otlp::flush();
}

/// Log lines go to stderr in batches, not one `write(2)` per line: a line is
/// appended to a buffer, and one thread writes what gathered every
/// [`log_buffer::BATCH`] (woken once per batch, not per line), or the writer
/// itself once [`log_buffer::MAX_BYTES`] have piled up. At one connection the
/// per-request access line was a third of the service's syscalls per call.
/// The buffer is flushed by [`flush`] (after each Lambda invocation, before
/// the process is frozen), when [`Telemetry`] is dropped at exit, and before
/// a panic message, so lines are late by at most `BATCH`, never reordered
/// against a panic, and lost only if the process is killed outright.
pub mod log_buffer {
    use std::io::Write;
    use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
    use std::time::Duration;

    /// How long lines gather before the writer thread writes them.
    pub const BATCH: Duration = Duration::from_millis(20);
    /// Bytes at which the logging call writes the batch itself.
    pub const MAX_BYTES: usize = 64 * 1024;

    struct Buffer {
        bytes: Mutex<Vec<u8>>,
        pending: Condvar,
    }

    fn buffer() -> &'static Buffer {
        static BUFFER: OnceLock<Buffer> = OnceLock::new();
        BUFFER.get_or_init(|| {
            let started = std::thread::Builder::new()
                .name("kit-log-writer".into())
                .spawn(|| {
                    let buffer = buffer();
                    loop {
                        {
                            let bytes = buffer.bytes.lock().unwrap_or_else(PoisonError::into_inner);
                            let _unused = buffer
                                .pending
                                .wait_while(bytes, |bytes| bytes.is_empty())
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                        std::thread::sleep(BATCH);
                        flush();
                    }
                });
            if started.is_err() {
                eprintln!("warning: no log writer thread; log lines are written as they come");
            }
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                flush();
                previous(info);
            }));
            Buffer {
                bytes: Mutex::new(Vec::with_capacity(MAX_BYTES)),
                pending: Condvar::new(),
            }
        })
    }

    /// Writes every buffered line to stderr now.
    pub fn flush() {
        let Some(buffer) = BUFFER_READY.get() else {
            return;
        };
        let taken = {
            let mut bytes = buffer.bytes.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *bytes, Vec::with_capacity(MAX_BYTES))
        };
        if !taken.is_empty() {
            let _ = std::io::stderr().lock().write_all(&taken);
        }
    }

    static BUFFER_READY: OnceLock<&'static Buffer> = OnceLock::new();

    /// The `MakeWriter` of the log layer: one [`Line`] per event.
    pub fn writer() -> Line {
        Line
    }

    /// Appends what the log layer writes to the batch.
    pub struct Line;

    impl Write for Line {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let buffer = *BUFFER_READY.get_or_init(buffer);
            let full = {
                let mut gathered = buffer.bytes.lock().unwrap_or_else(PoisonError::into_inner);
                let was_empty = gathered.is_empty();
                gathered.extend_from_slice(bytes);
                if was_empty {
                    buffer.pending.notify_one();
                }
                gathered.len() >= MAX_BYTES
            };
            if full {
                flush();
            }
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(feature = "otel")]
mod otlp {
    use std::sync::OnceLock;
    use std::time::Duration;

    use http::HeaderMap;
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::{TraceContextExt, TracerProvider};
    use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Span;
    use tracing::field::Empty;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::registry::LookupSpan;

    use super::{
        OTLP_ENDPOINT, OTLP_TIMEOUT, OTLP_TRACES_ENDPOINT, OTLP_TRACES_TIMEOUT, SERVICE_NAME,
        TRACEPARENT, TRACESTATE, TelemetryError,
    };
    use crate::config::Env;
    use crate::wire::{self, Metadata};

    /// The provider [`flush`] reaches; set once by [`provider`].
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// The exporting provider, or `None` when no endpoint is configured.
    pub(super) fn provider(env: &dyn Env) -> Result<Option<SdkTracerProvider>, TelemetryError> {
        let set = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
        let endpoint = match (set(OTLP_TRACES_ENDPOINT), set(OTLP_ENDPOINT)) {
            (Some(traces), _) => traces.trim().to_string(),
            (None, Some(base)) => format!("{}/v1/traces", base.trim().trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let timeout = export_timeout(env)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Exporting::new(timeout))
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(timeout)
            .build()
            .map_err(|error| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                reason: error.to_string(),
            })?;
        let service_name = set(SERVICE_NAME).unwrap_or_else(|| "kit-service".to_string());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name)
                    .with_attribute(opentelemetry::KeyValue::new(
                        "service.version",
                        env!("CARGO_PKG_VERSION"),
                    ))
                    .build(),
            )
            .build();
        let _ = PROVIDER.set(provider.clone());
        Ok(Some(provider))
    }

    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT`,
    /// in milliseconds; 10 s when neither is set.
    fn export_timeout(env: &dyn Env) -> Result<Duration, TelemetryError> {
        for name in [OTLP_TRACES_TIMEOUT, OTLP_TIMEOUT] {
            if let Some(value) = env.var(name).filter(|v| !v.trim().is_empty()) {
                return match value.trim().parse::<u64>() {
                    Ok(millis) if millis > 0 => Ok(Duration::from_millis(millis)),
                    _ => Err(TelemetryError::Timeout { name, value }),
                };
            }
        }
        Ok(Duration::from_secs(10))
    }

    /// The exporter's HTTP client: ureq (blocking) on rustls with ring, the
    /// TLS stack the rest of kit-service uses. The SDK's batch processor runs
    /// exports on its own thread (`block_on`), so a blocking call there holds
    /// no async worker. Non-2xx answers are returned for the exporter to
    /// report; a body over 4 MiB (an export response is a few bytes) is an error.
    #[derive(Debug)]
    struct Exporting {
        agent: ureq::Agent,
    }

    impl Exporting {
        fn new(timeout: Duration) -> Exporting {
            let agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .user_agent(concat!("kit-service/", env!("CARGO_PKG_VERSION")))
                .build()
                .into();
            Exporting { agent }
        }
    }

    #[async_trait::async_trait]
    impl HttpClient for Exporting {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let mut response = self.agent.run(request.map(|body| body.to_vec()))?;
            let body = response
                .body_mut()
                .with_config()
                .limit(4 * 1024 * 1024)
                .read_to_vec()?;
            let (parts, _) = response.into_parts();
            Ok(Response::from_parts(parts, Bytes::from(body)))
        }
    }

    /// The `tracing` layer feeding `provider`. INFO and up, independent of
    /// `RUST_LOG`, so quieting the logs does not drop the traces.
    pub(super) fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("kit-service"))
            // See the module docs: the parent may come from the body.
            .with_context_activation(false)
            .with_location(false)
            .with_threads(false)
            .with_filter(LevelFilter::INFO)
    }

    pub(super) fn flush() {
        if let Some(provider) = PROVIDER.get()
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "failed to export traces");
        }
    }

    /// Marks a span whose parent came from the `traceparent` header.
    struct ParentFromHeader;

    pub(super) fn server_span(headers: &HeaderMap, request_id: &str) -> Span {
        // No exporter, no span: nothing would read it, and the log layer
        // would still format its fields as JSON when it opens and at every
        // `record` (4-5 us of a small call's server CPU, docs/benchmarks.md).
        // Handler log lines then look as in a build without `otel`.
        if PROVIDER.get().is_none() {
            return Span::none();
        }
        let span = tracing::info_span!(
            target: "kit_service::rpc",
            "rpc",
            otel.name = "vgi-rpc",
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "vgi_rpc",
            rpc.service = Empty,
            rpc.method = Empty,
            http.response.status_code = Empty,
            vgi_rpc.error = Empty,
            request_id = %request_id,
        );
        if let Some(parent) = remote_parent(&HeaderExtractor(headers))
            && span.set_parent(parent).is_ok()
        {
            span.with_subscriber(|(id, dispatch)| {
                if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>()
                    && let Some(data) = registry.span(id)
                {
                    data.extensions_mut().insert(ParentFromHeader);
                }
            });
        }
        span
    }

    pub(super) fn finish_server_span(
        span: &Span,
        origin: Option<&str>,
        status: u16,
        rpc_error: bool,
    ) {
        if let Some(origin) = origin {
            span.record("otel.name", origin);
            if let Some((protocol, method)) = origin.split_once('/') {
                span.record("rpc.service", protocol);
                span.record("rpc.method", method);
            }
        }
        span.record("http.response.status_code", status);
        span.record("vgi_rpc.error", rpc_error);
        // Server spans: 5xx is the server's failure, 4xx the client's (unset).
        if status >= 500 {
            span.record("otel.status_code", "error");
        }
    }

    pub(super) fn continue_trace_from_batch_metadata(metadata: &Metadata) {
        if wire::metadata_get(metadata, TRACEPARENT).is_none() {
            return;
        }
        let span = Span::current();
        let from_header = span
            .with_subscriber(|(id, dispatch)| {
                dispatch
                    .downcast_ref::<tracing_subscriber::Registry>()
                    .and_then(|registry| registry.span(id))
                    .is_some_and(|data| data.extensions().get::<ParentFromHeader>().is_some())
            })
            .unwrap_or(true);
        if from_header {
            return;
        }
        if let Some(parent) = remote_parent(&MetadataExtractor(metadata))
            && let Err(error) = span.set_parent(parent)
        {
            tracing::debug!(%error, "could not continue the trace of the batch `traceparent`");
        }
    }

    /// The caller's context, if it names a valid remote span.
    fn remote_parent(carrier: &dyn Extractor) -> Option<opentelemetry::Context> {
        let context = TraceContextPropagator::new().extract(carrier);
        context.span().span_context().is_valid().then_some(context)
    }

    struct HeaderExtractor<'a>(&'a HeaderMap);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT, TRACESTATE]
        }
    }

    struct MetadataExtractor<'a>(&'a Metadata);

    impl Extractor for MetadataExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            wire::metadata_get(self.0, key)
        }

        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT, TRACESTATE]
        }
    }
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use std::collections::HashMap;

    #[test]
    fn no_endpoint_means_no_exporter() {
        let env: HashMap<String, String> = HashMap::new();
        assert!(super::otlp::provider(&env).unwrap().is_none());
    }

    #[test]
    fn without_an_exporter_a_request_opens_no_span() {
        // The registry enables every span (the second assertion shows it),
        // so only the missing exporter can leave the server span out.
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            let span = super::server_span(&super::HeaderMap::new(), "r-1");
            assert!(span.is_none(), "a server span without an exporter");
            let same = tracing::info_span!(target: "kit_service::rpc", "rpc", request_id = "r-1");
            assert!(!same.is_none(), "the subscriber enables spans");
        });
    }

    #[test]
    fn a_bad_endpoint_is_reported_with_its_value() {
        let env: HashMap<String, String> = [(
            super::OTLP_TRACES_ENDPOINT.to_string(),
            "not a url".to_string(),
        )]
        .into();
        let error = super::otlp::provider(&env).map(|_| ()).unwrap_err();
        assert!(error.to_string().contains("`not a url`"), "{error}");
    }

    #[test]
    fn a_bad_timeout_is_reported_with_its_name_and_value() {
        for (name, value) in [
            (super::OTLP_TIMEOUT, "ten"),
            (super::OTLP_TRACES_TIMEOUT, "0"),
        ] {
            let env: HashMap<String, String> = [
                (
                    super::OTLP_ENDPOINT.to_string(),
                    "http://127.0.0.1:4318".to_string(),
                ),
                (name.to_string(), value.to_string()),
            ]
            .into();
            let error = super::otlp::provider(&env).map(|_| ()).unwrap_err();
            let text = error.to_string();
            assert!(text.contains(&format!("`{name}` is `{value}`")), "{text}");
            assert!(
                error.hint().contains(&format!("set `{name}`")),
                "{}",
                error.hint()
            );
        }
    }
}
