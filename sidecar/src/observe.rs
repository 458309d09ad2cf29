//! Request metrics: one count and one latency sample per request a listener
//! answers, labelled by direction, peer, status class and outcome. The edge
//! records every response it sends (retries and fallbacks included, as the
//! client saw them), and never a path or an address as a label.

use std::sync::OnceLock;
use std::time::Instant;

use http::{Response, StatusCode};
use prometheus::{Histogram, IntCounter};

use crate::Direction;
use crate::metrics::Metrics;
use crate::respond::Answered;

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class_index(s: StatusCode) -> usize {
    match s.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The metrics of one (direction, peer). Children are resolved on first use
/// and then reused (`with_label_values` hashes every label on each call);
/// lazily, so a series appears only once a request has been counted in it.
pub struct PeerMetrics {
    metrics: Metrics,
    direction: Direction,
    peer: String,
    duration: OnceLock<Histogram>,
    /// `outcome="success"` by status class; proxy answers are rare and
    /// resolved per request.
    success: [OnceLock<IntCounter>; 5],
}

impl PeerMetrics {
    pub fn new(metrics: &Metrics, direction: Direction, peer: &str) -> Self {
        PeerMetrics {
            metrics: metrics.clone(),
            direction,
            peer: peer.to_string(),
            duration: OnceLock::new(),
            success: Default::default(),
        }
    }

    /// Counts one answered request: its status, whether the proxy answered
    /// (the outcome is then the reason), and the time to its response head.
    pub fn record<B>(&self, rsp: &Response<B>, start: Instant) {
        let class = status_class_index(rsp.status());
        match Answered::of(rsp) {
            None => self.success[class]
                .get_or_init(|| {
                    self.metrics.requests_total.with_label_values(&[
                        self.direction.as_str(),
                        &self.peer,
                        STATUS_CLASSES[class],
                        "success",
                    ])
                })
                .inc(),
            Some(e) => self
                .metrics
                .requests_total
                .with_label_values(&[
                    self.direction.as_str(),
                    &self.peer,
                    STATUS_CLASSES[class],
                    e.reason(),
                ])
                .inc(),
        }
        self.duration
            .get_or_init(|| {
                self.metrics
                    .request_duration_seconds
                    .with_label_values(&[self.direction.as_str(), &self.peer])
            })
            .observe(start.elapsed().as_secs_f64());
    }
}
