//! Prometheus metrics, exposed at `/metrics` in the text format.
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client). Label
//! values are the *resolved* protocol and method, never raw path segments, so
//! a caller cannot blow up cardinality with made-up URLs: unroutable requests
//! are counted under `protocol="-"`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A map hashed by foldhash, seeded per process.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

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
    /// The series of each protocol and method called so far (see [`CallSeries`]).
    /// Keyed by resolved names only, so foldhash's seeded hash rather than SipHash.
    calls: RwLock<FastMap<String, FastMap<String, Arc<CallSeries>>>>,
}

/// The per-call series of one protocol and method, looked up once: a request
/// otherwise built four label sets (eight strings) and hashed each into its
/// family. The handles share their values with the families, and a series
/// appears in `/metrics` when it did before: the first call creates the
/// duration and byte series, the first 200 the status series, the first
/// stream turn the turn series.
pub struct CallSeries {
    pub labels: CallLabels,
    pub duration: Histogram,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
    stream_turns: OnceLock<Counter>,
    /// `requests` with status 200, the status almost every call has.
    ok: OnceLock<Counter>,
    requests: Family<StatusLabels, Counter>,
    stream_turns_family: Family<CallLabels, Counter>,
}

impl CallSeries {
    /// Counts one request answered with `status`.
    pub fn count(&self, status: u16) {
        let labels = |status| StatusLabels {
            protocol: self.labels.protocol.clone(),
            method: self.labels.method.clone(),
            status,
        };
        if status == 200 {
            self.ok
                .get_or_init(|| self.requests.get_or_create(&labels(200)).clone())
                .inc();
        } else {
            self.requests.get_or_create(&labels(status)).inc();
        }
    }

    /// Counts one stream turn (init or exchange).
    pub fn count_stream_turn(&self) {
        self.stream_turns
            .get_or_init(|| self.stream_turns_family.get_or_create(&self.labels).clone())
            .inc();
    }
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
            calls: RwLock::default(),
        }
    }

    /// The series of calls to `protocol`/`method`, created with the first.
    pub fn call(&self, protocol: &str, method: &str) -> Arc<CallSeries> {
        let found = self
            .calls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(protocol)
            .and_then(|methods| methods.get(method))
            .cloned();
        if let Some(series) = found {
            return series;
        }
        let labels = CallLabels {
            protocol: protocol.to_string(),
            method: method.to_string(),
        };
        let series = Arc::new(CallSeries {
            duration: self.duration.get_or_create(&labels).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels).clone(),
            stream_turns: OnceLock::new(),
            ok: OnceLock::new(),
            requests: self.requests.clone(),
            stream_turns_family: self.stream_turns.clone(),
            labels,
        });
        self.calls
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(protocol.to_string())
            .or_default()
            .entry(method.to_string())
            .or_insert(series)
            .clone()
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
    fn call_series_share_the_families_and_appear_when_they_did() {
        let metrics = Metrics::new();
        let series = metrics.call("p", "m");
        assert!(
            Arc::ptr_eq(&series, &metrics.call("p", "m")),
            "looked up once"
        );
        assert!(!Arc::ptr_eq(&series, &metrics.call("p", "other")));
        series.duration.observe(0.001);
        series.request_bytes.inc_by(7);
        let text = metrics.render();
        assert!(
            text.contains("kit_request_bytes_total{protocol=\"p\",method=\"m\"} 7"),
            "{text}"
        );
        assert!(
            !text.contains("kit_requests_total{"),
            "no status counted yet:\n{text}"
        );
        assert!(!text.contains("kit_stream_turns_total{"), "{text}");
        series.count(200);
        series.count(200);
        series.count(499);
        series.count_stream_turn();
        let text = metrics.render();
        for line in [
            "kit_requests_total{protocol=\"p\",method=\"m\",status=\"200\"} 2",
            "kit_requests_total{protocol=\"p\",method=\"m\",status=\"499\"} 1",
            "kit_stream_turns_total{protocol=\"p\",method=\"m\"} 1",
            "kit_request_duration_seconds_count{protocol=\"p\",method=\"m\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

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
