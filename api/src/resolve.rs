//! Which ResiliencePolicies apply to calls into which service, and the
//! effective policy each upstream and route gets.
//!
//! A policy claims *slots* of its target: the service-level policy, each
//! route match, and the inbound limits. For each slot the oldest policy
//! (creationTimestamp, then name) wins; every loser is reported as a
//! [`Conflict`] naming the winner — data, not a log line, so the operator can
//! put it in status.

use std::collections::BTreeMap;

use crate::bounded::{Attempts, Percent, Positive, Ratio};
use crate::crd::*;
use crate::duration::Duration;
use crate::proxy::{self, EffectivePolicy, InboundPolicy};

/// A policy that lost a slot to an older one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub namespace: String,
    pub policy: String,
    pub winner: String,
    pub target: String,
    /// `None`: the service-level policy; else the route whose match both define.
    pub route: Option<RouteMatch>,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = match &self.route {
            None => "the service-level policy".to_string(),
            Some(m) => format!("route {}", m.describe()),
        };
        write!(
            f,
            "{} of {} is already set by the older policy {}",
            slot, self.target, self.winner
        )
    }
}

/// The winners for one target service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetPolicies {
    /// The service-level blocks and the policy that set them.
    pub service: Option<(String, ServiceBlocks)>,
    /// Route overrides in the order they are matched (most specific first).
    pub routes: Vec<(String, RouteSpec)>,
    pub inbound: Option<(String, InboundSpec)>,
}

/// The service-level blocks of a policy (everything but target, inbound and routes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceBlocks {
    pub timeout: Option<TimeoutSpec>,
    pub retry: Option<RetrySpec>,
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    pub outlier_detection: Option<OutlierDetectionSpec>,
    pub bulkhead: Option<BulkheadSpec>,
    pub fallback: Option<FallbackSpec>,
}

impl ServiceBlocks {
    fn of(spec: &ResiliencePolicySpec) -> Option<Self> {
        let blocks = ServiceBlocks {
            timeout: spec.timeout.clone(),
            retry: spec.retry.clone(),
            circuit_breaker: spec.circuit_breaker.clone(),
            outlier_detection: spec.outlier_detection.clone(),
            bulkhead: spec.bulkhead.clone(),
            fallback: spec.fallback.clone(),
        };
        (blocks != ServiceBlocks::default()).then_some(blocks)
    }
}

/// The outcome of [`resolve`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolution {
    targets: BTreeMap<(String, String), TargetPolicies>,
    conflicts: Vec<Conflict>,
}

/// Resolves every policy at once. Pure: the same policies in any order give the same result.
pub fn resolve(policies: &[ResiliencePolicy]) -> Resolution {
    let mut ordered: Vec<&ResiliencePolicy> = policies.iter().collect();
    ordered.sort_by_key(|p| age_key(p));

    let mut res = Resolution::default();
    for policy in ordered {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let namespace = policy.metadata.namespace.clone().unwrap_or_default();
        let target = policy.spec.target_ref.name.clone();
        let slots = res
            .targets
            .entry((namespace.clone(), target.clone()))
            .or_default();
        let mut lost = |winner: &str, route: Option<RouteMatch>| {
            res.conflicts.push(Conflict {
                namespace: namespace.clone(),
                policy: name.clone(),
                winner: winner.to_string(),
                target: target.clone(),
                route,
            })
        };

        if let Some(blocks) = ServiceBlocks::of(&policy.spec) {
            match &slots.service {
                Some((winner, _)) => lost(winner, None),
                None => slots.service = Some((name.clone(), blocks)),
            }
        }
        if let Some(inbound) = &policy.spec.inbound {
            match &slots.inbound {
                Some((winner, _)) => lost(winner, None),
                None => slots.inbound = Some((name.clone(), inbound.clone())),
            }
        }
        for route in &policy.spec.routes {
            match slots
                .routes
                .iter()
                .find(|(_, r)| r.route_match == route.route_match)
            {
                Some((winner, _)) => lost(winner, Some(route.route_match.clone())),
                None => slots.routes.push((name.clone(), route.clone())),
            }
        }
        slots.routes.sort_by(|(_, a), (_, b)| {
            b.route_match
                .specificity()
                .cmp(&a.route_match.specificity())
        });
    }
    res.conflicts.dedup();
    res
}

fn age_key(p: &ResiliencePolicy) -> (bool, Option<k8s_openapi::jiff::Timestamp>, String) {
    // Policies without a timestamp (local files) sort after those with one, then by name.
    let ts = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        ts.is_none(),
        ts,
        p.metadata.name.clone().unwrap_or_default(),
    )
}

impl Resolution {
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// The winning policies for calls into `target`.
    pub fn target(&self, namespace: &str, target: &str) -> Option<&TargetPolicies> {
        self.targets
            .get(&(namespace.to_string(), target.to_string()))
    }

    /// Names of the policies in effect for calls into `target`, sorted.
    pub fn policies_for(&self, namespace: &str, target: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .target(namespace, target)
            .map(|t| {
                let service = t.service.iter().map(|(n, _)| n.clone());
                let inbound = t.inbound.iter().map(|(n, _)| n.clone());
                let routes = t.routes.iter().map(|(n, _)| n.clone());
                service.chain(inbound).chain(routes).collect()
            })
            .unwrap_or_default();
        names.sort();
        names.dedup();
        names
    }

    /// Whether any slot of the policy is in effect.
    pub fn is_in_effect(&self, namespace: &str, policy: &str) -> bool {
        self.targets
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .any(|(_, t)| {
                t.service.iter().any(|(n, _)| n == policy)
                    || t.inbound.iter().any(|(n, _)| n == policy)
                    || t.routes.iter().any(|(n, _)| n == policy)
            })
    }

    /// The conflicts a policy lost.
    pub fn conflicts_of(&self, namespace: &str, policy: &str) -> Vec<&Conflict> {
        self.conflicts
            .iter()
            .filter(|c| c.namespace == namespace && c.policy == policy)
            .collect()
    }

    /// The effective service-level policy and routes for calls into `target`.
    pub fn effective(&self, namespace: &str, target: &str) -> (EffectivePolicy, Vec<proxy::Route>) {
        let Some(t) = self.target(namespace, target) else {
            return (EffectivePolicy::default(), Vec::new());
        };
        let base = t
            .service
            .as_ref()
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        let routes = t
            .routes
            .iter()
            .map(|(_, r)| proxy::Route {
                route_match: r.route_match.clone(),
                policy: effective(&base.overlaid(r)),
            })
            .collect();
        (effective(&base), routes)
    }

    /// The inbound limits `target`'s own sidecar applies.
    pub fn inbound(&self, namespace: &str, target: &str) -> InboundPolicy {
        let spec = self
            .target(namespace, target)
            .and_then(|t| t.inbound.as_ref())
            .map(|(_, s)| s);
        spec.map(effective_inbound).unwrap_or_default()
    }
}

/// Field-by-field overlay: `Some` in the override wins, recursively.
trait Overlay {
    fn overlay(self, over: Self) -> Self;
}

impl<T: Overlay> Overlay for Option<T> {
    fn overlay(self, over: Self) -> Self {
        match (self, over) {
            (Some(a), Some(b)) => Some(a.overlay(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }
}

macro_rules! overlay_leaf {
    ($($t:ty),*) => {$(
        impl Overlay for $t {
            fn overlay(self, over: Self) -> Self { over }
        }
    )*};
}
overlay_leaf!(
    Duration,
    Jitter,
    Ratio,
    u32,
    u16,
    bool,
    String,
    Vec<RetryOn>,
    Attempts,
    Percent,
    Positive
);

macro_rules! overlay_struct {
    ($t:ident { $($f:ident),* }) => {
        impl Overlay for $t {
            fn overlay(self, over: Self) -> Self {
                $t { $($f: self.$f.overlay(over.$f)),* }
            }
        }
    };
}
overlay_struct!(TimeoutSpec {
    request,
    connect,
    idle
});
overlay_struct!(BackoffSpec { base, max, jitter });
overlay_struct!(RetryBudgetSpec {
    ratio,
    min_per_second,
    window
});
overlay_struct!(RetrySpec {
    attempts,
    per_try_timeout,
    backoff,
    retry_on,
    budget,
    allow_non_idempotent
});
overlay_struct!(SlowCallSpec {
    threshold,
    rate_threshold
});
overlay_struct!(CircuitBreakerSpec {
    failure_rate_threshold,
    minimum_requests,
    window,
    consecutive_failures,
    open_duration,
    max_open_duration,
    half_open_requests,
    slow_call
});
overlay_struct!(BulkheadSpec {
    max_concurrent,
    max_queued,
    queue_timeout
});
overlay_struct!(FallbackSpec {
    status,
    body,
    content_type
});

impl ServiceBlocks {
    /// This service-level policy with a route's overrides merged over it.
    pub fn overlaid(&self, route: &RouteSpec) -> ServiceBlocks {
        ServiceBlocks {
            timeout: self.timeout.clone().overlay(route.timeout.clone()),
            retry: self.retry.clone().overlay(route.retry.clone()),
            circuit_breaker: self
                .circuit_breaker
                .clone()
                .overlay(route.circuit_breaker.clone()),
            outlier_detection: self.outlier_detection.clone(),
            bulkhead: self.bulkhead.clone().overlay(route.bulkhead.clone()),
            fallback: self.fallback.clone().overlay(route.fallback.clone()),
        }
    }
}

/// Defaults for whatever a policy leaves unset.
pub mod defaults {
    use super::*;

    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const ATTEMPTS: Attempts = Attempts::new_const(3);
    pub const BACKOFF_BASE: Duration = Duration::from_millis(25);
    pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
    pub const BUDGET_RATIO: f64 = 0.2;
    pub const BUDGET_MIN_PER_SECOND: u32 = 10;
    pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);
    pub const FAILURE_RATE: Percent = Percent::new_const(50);
    pub const MINIMUM_REQUESTS: Positive = Positive::new_const(20);
    pub const BREAKER_WINDOW: Duration = Duration::from_secs(10);
    pub const CONSECUTIVE_FAILURES: Positive = Positive::new_const(5);
    pub const OPEN_DURATION: Duration = Duration::from_secs(5);
    pub const MAX_OPEN_DURATION: Duration = Duration::from_secs(60);
    pub const HALF_OPEN_REQUESTS: Positive = Positive::new_const(3);
    pub const SLOW_CALL_THRESHOLD: Duration = Duration::from_secs(1);
    pub const SLOW_CALL_RATE: Percent = Percent::new_const(80);
    pub const BASE_EJECTION: Duration = Duration::from_secs(30);
    pub const MAX_EJECTION_PERCENT: Percent = Percent::new_const(50);
    pub const MAX_CONCURRENT: Positive = Positive::new_const(100);
    pub const QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
    pub const FALLBACK_STATUS: u16 = 503;

    /// Retried when a policy has a retry block without `retryOn`.
    pub fn retry_on() -> Vec<RetryOn> {
        vec![
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::Reset,
            RetryOn::Status { from: 502, to: 504 },
            RetryOn::Grpc(14),
        ]
    }
}

/// Fills every default of a (merged) set of blocks.
pub fn effective(b: &ServiceBlocks) -> EffectivePolicy {
    use defaults as d;
    let t = b.timeout.clone().unwrap_or_default();
    let timeout = proxy::Timeouts {
        request: t.request,
        connect: t.connect.unwrap_or(d::CONNECT_TIMEOUT),
        idle: t.idle.unwrap_or(d::IDLE_TIMEOUT),
    };
    let retry = b.retry.as_ref().map(|r| {
        let backoff = r.backoff.clone().unwrap_or_default();
        let base = backoff.base.unwrap_or(d::BACKOFF_BASE);
        let budget = r.budget.clone().unwrap_or_default();
        proxy::RetryPolicy {
            attempts: r.attempts.unwrap_or(d::ATTEMPTS),
            per_try_timeout: r.per_try_timeout,
            backoff: proxy::Backoff {
                base,
                max: backoff.max.unwrap_or(d::BACKOFF_MAX).max(base),
                jitter: backoff.jitter.unwrap_or(Jitter::Full),
            },
            retry_on: r.retry_on.clone().unwrap_or_else(d::retry_on),
            budget: proxy::RetryBudget {
                ratio: budget
                    .ratio
                    .unwrap_or(Ratio::new(d::BUDGET_RATIO).unwrap_or(Ratio::ONE)),
                min_per_second: budget.min_per_second.unwrap_or(d::BUDGET_MIN_PER_SECOND),
                window: budget.window.unwrap_or(d::BUDGET_WINDOW),
            },
            allow_non_idempotent: r.allow_non_idempotent.unwrap_or(false),
        }
    });
    let circuit_breaker = b.circuit_breaker.as_ref().map(|c| {
        let open = c.open_duration.unwrap_or(d::OPEN_DURATION);
        proxy::CircuitBreaker {
            failure_rate_threshold: c.failure_rate_threshold.unwrap_or(d::FAILURE_RATE),
            minimum_requests: c.minimum_requests.unwrap_or(d::MINIMUM_REQUESTS),
            window: c.window.unwrap_or(d::BREAKER_WINDOW),
            consecutive_failures: c.consecutive_failures.unwrap_or(d::CONSECUTIVE_FAILURES),
            open_duration: open,
            max_open_duration: c
                .max_open_duration
                .unwrap_or(d::MAX_OPEN_DURATION)
                .max(open),
            half_open_requests: c.half_open_requests.unwrap_or(d::HALF_OPEN_REQUESTS),
            slow_call: c.slow_call.as_ref().map(|s| proxy::SlowCall {
                threshold: s.threshold.unwrap_or(d::SLOW_CALL_THRESHOLD),
                rate_threshold: s.rate_threshold.unwrap_or(d::SLOW_CALL_RATE),
            }),
        }
    });
    let outlier_detection = b
        .outlier_detection
        .as_ref()
        .map(|o| proxy::OutlierDetection {
            consecutive_failures: o.consecutive_failures.unwrap_or(d::CONSECUTIVE_FAILURES),
            base_ejection: o.base_ejection.unwrap_or(d::BASE_EJECTION),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(d::MAX_EJECTION_PERCENT),
        });
    let bulkhead = b.bulkhead.as_ref().map(|k| proxy::Bulkhead {
        max_concurrent: k.max_concurrent.unwrap_or(d::MAX_CONCURRENT),
        max_queued: k.max_queued.unwrap_or(0),
        queue_timeout: k.queue_timeout.unwrap_or(d::QUEUE_TIMEOUT),
    });
    let fallback = b.fallback.as_ref().map(|f| proxy::Fallback {
        status: f.status.unwrap_or(d::FALLBACK_STATUS),
        body: f.body.clone().unwrap_or_default(),
        content_type: f
            .content_type
            .clone()
            .unwrap_or_else(|| "text/plain".into()),
    });
    EffectivePolicy {
        timeout,
        retry,
        circuit_breaker,
        outlier_detection,
        bulkhead,
        fallback,
    }
}

fn effective_inbound(s: &InboundSpec) -> InboundPolicy {
    InboundPolicy {
        rate_limit: s.rate_limit.as_ref().map(|r| proxy::RateLimit {
            requests_per_second: r.requests_per_second,
            burst: r.burst.unwrap_or(r.requests_per_second),
        }),
        max_concurrent: s.max_concurrent,
    }
}
