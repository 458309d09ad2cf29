//! The effective policy of one upstream (or one route of it): every default
//! filled in, so the sidecar never guesses. Produced by [`crate::resolve`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::bounded::{Attempts, Percent, Positive, Ratio};
use crate::crd::{Jitter, RetryOn};
use crate::duration::Duration;
use crate::resolve::defaults;

/// Everything the outbound stack applies to calls to one upstream or route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EffectivePolicy {
    #[serde(default)]
    pub timeout: Timeouts,
    /// `None`: every request is tried once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<Bulkhead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// The whole call, all attempts included; `None`: unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    pub connect: Duration,
    pub idle: Duration,
}

/// What a policy without a `timeout` block gets.
impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: None,
            connect: defaults::CONNECT_TIMEOUT,
            idle: defaults::IDLE_TIMEOUT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    pub attempts: Attempts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    pub backoff: Backoff,
    pub retry_on: Vec<RetryOn>,
    pub budget: RetryBudget,
    /// Retry POST and PATCH too (only when a route says so).
    #[serde(default)]
    pub allow_non_idempotent: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub jitter: Jitter,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    pub ratio: Ratio,
    pub min_per_second: u32,
    pub window: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    pub failure_rate_threshold: Percent,
    pub minimum_requests: Positive,
    pub window: Duration,
    pub consecutive_failures: Positive,
    pub open_duration: Duration,
    pub max_open_duration: Duration,
    pub half_open_requests: Positive,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call: Option<SlowCall>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlowCall {
    pub threshold: Duration,
    pub rate_threshold: Percent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    pub consecutive_failures: Positive,
    pub base_ejection: Duration,
    pub max_ejection_percent: Percent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bulkhead {
    pub max_concurrent: Positive,
    pub max_queued: u32,
    pub queue_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fallback {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

/// Limits the sidecar applies to calls into its own app, from every caller together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<Positive>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: Positive,
    pub burst: Positive,
}
