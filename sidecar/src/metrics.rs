//! Every metric family of the proxy (docs/architecture.md, "Metrics"),
//! registered in one registry owned by the proxy instance: no global state,
//! so tests can run several proxies in one process. The endpoint gauges are
//! computed from the route table when scraped
//! ([`crate::outbound::EndpointGauges`]), registered here at start.
//!
//! Labels stay low-cardinality: `peer` is an upstream service name (or
//! `inbound`), never a pod IP or a path.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `direction` (inbound|outbound), `peer`, `status_class` (2xx..5xx), `outcome` (success, or an `x-trellis-error` reason, or `error`).
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    /// `peer`, `reason` (a `retryOn` condition).
    pub retries_total: IntCounterVec,
    pub retry_budget_exhausted_total: IntCounterVec,
    /// 0 closed, 1 open, 2 half-open.
    pub circuit_state: IntGaugeVec,
    /// `peer`, `to` (closed|open|half-open).
    pub circuit_transitions_total: IntCounterVec,
    pub bulkhead_rejected_total: IntCounterVec,
    pub rate_limited_total: IntCounter,
    pub fallback_responses_total: IntCounterVec,
    pub config_reload_errors_total: IntCounter,
    pub spans_dropped_total: IntCounter,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only fails for invalid names or duplicate registration: programming errors.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = must(IntGaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let request_duration_seconds = must(HistogramVec::new(
            HistogramOpts::new(
                "trellis_request_duration_seconds",
                "Request latency as seen by the proxy",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["direction", "peer"],
        ));
        must(registry.register(Box::new(request_duration_seconds.clone())));
        Metrics {
            requests_total: counter_vec(
                "trellis_requests_total",
                "Requests by direction, peer, status class and outcome",
                &["direction", "peer", "status_class", "outcome"],
            ),
            request_duration_seconds,
            retries_total: counter_vec(
                "trellis_retries_total",
                "Retried attempts",
                &["peer", "reason"],
            ),
            retry_budget_exhausted_total: counter_vec(
                "trellis_retry_budget_exhausted_total",
                "Retries not made because the retry budget was spent",
                &["peer"],
            ),
            circuit_state: gauge_vec(
                "trellis_circuit_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open",
                &["peer"],
            ),
            circuit_transitions_total: counter_vec(
                "trellis_circuit_transitions_total",
                "Circuit breaker transitions",
                &["peer", "to"],
            ),
            bulkhead_rejected_total: counter_vec(
                "trellis_bulkhead_rejected_total",
                "Requests rejected because the bulkhead was full",
                &["peer"],
            ),
            rate_limited_total: counter(
                "trellis_rate_limited_total",
                "Inbound requests refused by the rate limit",
            ),
            fallback_responses_total: counter_vec(
                "trellis_fallback_responses_total",
                "Fallback responses served instead of errors",
                &["peer"],
            ),
            config_reload_errors_total: counter(
                "trellis_config_reload_errors_total",
                "Config files that failed to load; the last good config stayed",
            ),
            spans_dropped_total: counter(
                "trellis_spans_dropped_total",
                "Spans dropped because the export queue was full",
            ),
            registry,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
