//! The policy blocks of a ResiliencePolicy, as a user writes them.
//!
//! Every field is optional: a route override sets only what differs from the
//! service-level policy, and [`crate::resolve`] fills the rest from defaults.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::retry_on::RetryOn;
use crate::bounded::{Attempts, Percent, Positive, Ratio};
use crate::duration::Duration;

/// Timeouts of a call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutSpec {
    /// The whole call, every attempt and backoff included. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// Establishing a TCP connection to an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Duration>,
    /// How long a pooled connection may sit unused before it is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
}

/// How the wait between retries grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Uniform in `0..=backoff` (AWS "full jitter").
    Full,
    /// Uniform in `backoff/2..=backoff`.
    Equal,
    /// Exactly `backoff`.
    None,
}

/// Exponential backoff between retries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.base) || !has(self.max) || duration(self.base) <= duration(self.max)").message("backoff.base must not exceed backoff.max"))]
pub struct BackoffSpec {
    /// The first wait; doubled for every further retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Duration>,
    /// The longest wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Jitter>,
}

/// Limits retries to a share of the requests, so retries cannot multiply an outage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Retries allowed per request over the window (0.2: at most 20 % extra load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Ratio>,
    /// Retries always allowed per second, so low traffic can still retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub min_per_second: Option<u32>,
    /// The sliding window over which requests and retries are counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
}

/// Retries of failed attempts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Total tries, the first included (1 = never retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Attempts>,
    /// The limit of each try; the request timeout still bounds the whole call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// Which failures are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub retry_on: Option<Vec<RetryOn>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudgetSpec>,
    /// Also retry methods that are not idempotent (POST, PATCH). Off unless a route says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_non_idempotent: Option<bool>,
}

/// Trips when calls are slow, not only when they fail.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlowCallSpec {
    /// A call slower than this is slow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Duration>,
    /// Percent of slow calls in the window that opens the breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_threshold: Option<Percent>,
}

/// A circuit breaker for the whole target service (or one route of it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.openDuration) || !has(self.maxOpenDuration) || duration(self.openDuration) <= duration(self.maxOpenDuration)").message("openDuration must not exceed maxOpenDuration"))]
pub struct CircuitBreakerSpec {
    /// Percent of failed calls in the window that opens the breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate_threshold: Option<Percent>,
    /// Calls needed in the window before the rate is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_requests: Option<Positive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// A run of failures that opens the breaker at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<Positive>,
    /// How long the breaker stays open the first time; doubles on each re-open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_duration: Option<Duration>,
    /// Probe calls let through when half-open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_requests: Option<Positive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call: Option<SlowCallSpec>,
}

/// Ejects a failing endpoint (pod) from balancing, not the whole service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<Positive>,
    /// Ejection time, multiplied by the number of times the endpoint was ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<Percent>,
}

/// Caps the calls in flight to the target, so one slow dependency cannot take every worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkheadSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<Positive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub max_queued: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Duration>,
}

/// The answer given instead of an error when the breaker is open, the
/// bulkhead full, or the retry budget spent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FallbackSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 599), extend("format" = "int32"))]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub content_type: Option<String>,
}

/// A token bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    pub requests_per_second: Positive,
    /// Requests that may arrive at once; defaults to `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Positive>,
}

/// Limits applied by the target's own sidecar to every caller together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<Positive>,
}
