//! Prometheus metrics, exposed at `/metrics` in the text format.
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client). Label
//! values are the *resolved* protocol and method, never raw path segments, so
//! a caller cannot blow up cardinality with made-up URLs: unroutable requests
//! are counted under `protocol="-"`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub protocol: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub protocol: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

/// Every metric kit-service exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<StatusLabels, Counter>,
    pub duration: Family<CallLabels, Histogram>,
    pub request_bytes: Family<CallLabels, Counter>,
    pub response_bytes: Family<CallLabels, Counter>,
    pub in_flight: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub stream_turns: Family<CallLabels, Counter>,
    pub externalized_batches: Counter,
    pub externalized_bytes: Counter<u64, AtomicU64>,
    pub rate_limited: Counter,
    pub auth_failures: Counter,
    /// Requests refused with 429 before their key was compared.
    pub auth_throttled: Counter,
    /// Limiter decisions the shared store failed (`KIT_RATE_LIMIT_STORE`).
    pub rate_limit_store_errors: Counter,
    /// Requests refused with 503 because the in-flight byte budget was spent.
    pub budget_refusals: Counter,
    pub open_connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Idle connections closed to make room for a new one.
    pub connections_evicted: Counter,
    /// Connections closed at accept: every open one was busy.
    pub connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kit");
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "requests",
            "RPC requests by protocol, method and HTTP status",
            requests.clone(),
        );
        let duration = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Time from request to response body",
            duration.clone(),
        );
        let request_bytes = Family::<CallLabels, Counter>::default();
        registry.register(
            "request_bytes",
            "Request body bytes as received",
            request_bytes.clone(),
        );
        let response_bytes = Family::<CallLabels, Counter>::default();
        registry.register(
            "response_bytes",
            "Response body bytes as sent",
            response_bytes.clone(),
        );
        let in_flight = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "in_flight_requests",
            "Requests being served now",
            in_flight.clone(),
        );
        let stream_turns = Family::<CallLabels, Counter>::default();
        registry.register(
            "stream_turns",
            "Stream turns served (init and exchange)",
            stream_turns.clone(),
        );
        let externalized_batches = Counter::default();
        registry.register(
            "externalized_batches",
            "Batches moved to external storage",
            externalized_batches.clone(),
        );
        let externalized_bytes = Counter::<u64, AtomicU64>::default();
        registry.register(
            "externalized_bytes",
            "Bytes uploaded to external storage",
            externalized_bytes.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429",
            rate_limited.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Requests refused with 401",
            auth_failures.clone(),
        );
        let auth_throttled = Counter::default();
        registry.register(
            "auth_throttled",
            "Requests refused with 429 before the key comparison: too many failed keys from the client address (KIT_AUTH_FAILURE_LIMIT)",
            auth_throttled.clone(),
        );
        let rate_limit_store_errors = Counter::default();
        registry.register(
            "rate_limit_store_errors",
            "Limiter decisions the shared store (KIT_RATE_LIMIT_STORE) failed to make; KIT_RATE_LIMIT_STORE_FAILURE decided them",
            rate_limit_store_errors.clone(),
        );
        let budget_refusals = Counter::default();
        registry.register(
            "budget_refusals",
            "Requests refused with 503: the in-flight byte budget (KIT_MAX_INFLIGHT_BYTES) was spent",
            budget_refusals.clone(),
        );
        let open_connections = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let connections_evicted = Counter::default();
        registry.register(
            "connections_evicted",
            "Idle connections closed to admit a new one (KIT_MAX_CONNECTIONS, KIT_MAX_CONNECTIONS_PER_IP)",
            connections_evicted.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because every open one had a request in flight",
            connections_refused.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register("build_info", "Build information; always 1", build.clone());
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        Metrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            in_flight,
            stream_turns,
            externalized_batches,
            externalized_bytes,
            rate_limited,
            auth_failures,
            auth_throttled,
            rate_limit_store_errors,
            budget_refusals,
            open_connections,
            connections_evicted,
            connections_refused,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let metrics = Metrics::new();
        metrics
            .requests
            .get_or_create(&StatusLabels {
                protocol: "p".into(),
                method: "m".into(),
                status: 200,
            })
            .inc();
        let text = metrics.render();
        for name in [
            "kit_requests_total{protocol=\"p\",method=\"m\",status=\"200\"} 1",
            "kit_in_flight_requests",
            "kit_build_info{version=",
            "kit_rate_limited_total",
            "kit_auth_failures_total",
            "kit_auth_throttled_total",
            "kit_rate_limit_store_errors_total",
            "kit_budget_refusals_total",
            "kit_externalized_bytes_total",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
