//! Prometheus metrics of the operator, in a registry of its own (so two
//! operators in one test process do not collide).

use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the operator exports at `/metrics`.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// `trellis_operator_reconcile_total{controller}`
    pub reconciles: IntCounterVec,
    /// `trellis_operator_reconcile_errors_total{controller,reason}`
    pub reconcile_errors: IntCounterVec,
    /// `trellis_operator_reconcile_duration_seconds{controller}`
    pub reconcile_duration: HistogramVec,
    /// `trellis_operator_reconciles_in_flight{controller}`
    pub in_flight: IntGaugeVec,
    /// `trellis_operator_requeues_pending{controller}`: objects waiting for an error-backoff retry.
    pub backlog: IntGaugeVec,
    /// `trellis_operator_writes_total{controller,kind,action}`: created/updated/deleted/status.
    pub writes: IntCounterVec,
    /// `trellis_operator_webhook_requests_total{webhook,outcome}`
    pub webhook_requests: IntCounterVec,
    /// `trellis_operator_webhook_duration_seconds{webhook}`
    pub webhook_duration: HistogramVec,
    /// `trellis_operator_leader`: 1 while this replica runs the controllers.
    pub leader: IntGauge,
    /// `trellis_operator_webhook_cert_expiry_timestamp_seconds`
    pub cert_expiry: IntGauge,
    /// `trellis_operator_webhook_cert_rotations_total`
    pub cert_rotations: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            g
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(h.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            h
        };
        let buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];

        let reconciles = counter_vec(
            "trellis_operator_reconcile_total",
            "Reconciles started, by controller",
            &["controller"],
        );
        let reconcile_errors = counter_vec(
            "trellis_operator_reconcile_errors_total",
            "Reconciles that failed, by controller and reason",
            &["controller", "reason"],
        );
        let reconcile_duration = histogram_vec(
            "trellis_operator_reconcile_duration_seconds",
            "Time a reconcile took, by controller",
            &["controller"],
            buckets.clone(),
        );
        let in_flight = gauge_vec(
            "trellis_operator_reconciles_in_flight",
            "Reconciles running now, by controller",
            &["controller"],
        );
        let backlog = gauge_vec(
            "trellis_operator_requeues_pending",
            "Objects whose last reconcile failed and that wait for a retry, by controller",
            &["controller"],
        );
        let writes = counter_vec(
            "trellis_operator_writes_total",
            "Writes to the API server, by controller, kind and action",
            &["controller", "kind", "action"],
        );
        let webhook_requests = counter_vec(
            "trellis_operator_webhook_requests_total",
            "Admission requests, by webhook and outcome",
            &["webhook", "outcome"],
        );
        let webhook_duration = histogram_vec(
            "trellis_operator_webhook_duration_seconds",
            "Time an admission request took, by webhook",
            &["webhook"],
            buckets,
        );
        let leader = IntGauge::new(
            "trellis_operator_leader",
            "1 while this replica holds the lease and runs the controllers",
        )
        .unwrap_or_else(|e| panic!("metric leader: {e}"));
        let cert_expiry = IntGauge::new(
            "trellis_operator_webhook_cert_expiry_timestamp_seconds",
            "When the webhook serving certificate expires (unix seconds)",
        )
        .unwrap_or_else(|e| panic!("metric cert expiry: {e}"));
        let cert_rotations = IntCounter::new(
            "trellis_operator_webhook_cert_rotations_total",
            "Serving certificates issued (the first one included)",
        )
        .unwrap_or_else(|e| panic!("metric cert rotations: {e}"));
        for m in [
            Box::new(leader.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(cert_expiry.clone()),
            Box::new(cert_rotations.clone()),
        ] {
            registry
                .register(m)
                .unwrap_or_else(|e| panic!("register: {e}"));
        }

        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            in_flight,
            backlog,
            writes,
            webhook_requests,
            webhook_duration,
            leader,
            cert_expiry,
            cert_rotations,
        }
    }

    /// Counts a reconcile and times it until the guard is dropped.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer {
        self.reconciles.with_label_values(&[controller]).inc();
        self.in_flight.with_label_values(&[controller]).inc();
        ReconcileTimer {
            metrics: self.clone(),
            controller,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, controller: &'static str, reason: &'static str) {
        self.reconcile_errors
            .with_label_values(&[controller, reason])
            .inc();
    }

    pub fn wrote(&self, controller: &'static str, kind: &str, action: &'static str) {
        self.writes
            .with_label_values(&[controller, kind, action])
            .inc();
    }

    /// Total writes so far, all labels together (tests use it to prove a no-op).
    pub fn total_writes(&self) -> u64 {
        sum_counter(&self.writes)
    }

    pub fn total_reconciles(&self) -> u64 {
        sum_counter(&self.reconciles)
    }

    pub fn webhook(&self, webhook: &'static str, outcome: &'static str, started: Instant) {
        self.webhook_requests
            .with_label_values(&[webhook, outcome])
            .inc();
        self.webhook_duration
            .with_label_values(&[webhook])
            .observe(started.elapsed().as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

fn sum_counter(c: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    c.collect()
        .iter()
        .flat_map(|mf| mf.get_metric().iter())
        .map(|m| m.get_counter().value() as u64)
        .sum()
}

/// Observes the duration of one reconcile when dropped.
pub struct ReconcileTimer {
    metrics: Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .with_label_values(&[self.controller])
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics
            .in_flight
            .with_label_values(&[self.controller])
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        drop(m.reconcile_started("meshservice"));
        m.reconcile_failed("meshservice", "conflict");
        m.wrote("meshservice", "Deployment", "created");
        m.webhook("inject", "injected", Instant::now());
        let text = m.render();
        for name in [
            "trellis_operator_reconcile_total{controller=\"meshservice\"} 1",
            "trellis_operator_reconcile_errors_total{controller=\"meshservice\",reason=\"conflict\"} 1",
            "trellis_operator_reconcile_duration_seconds_count{controller=\"meshservice\"} 1",
            "trellis_operator_webhook_requests_total{outcome=\"injected\",webhook=\"inject\"} 1",
            "trellis_operator_leader 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert_eq!(m.total_writes(), 1);
        assert_eq!(m.total_reconciles(), 1);
    }
}
