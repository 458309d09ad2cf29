//! The fault knob: a failure rate and an added latency for the payments
//! API, so that the mesh's retries, breakers and fallbacks have something
//! to do. Set by `PAYMENTS_FAILURE_RATE` and `PAYMENTS_ADDED_LATENCY`,
//! changed at run time on `PUT /admin/faults`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use shop_common::Problem;
use shop_common::config::{ConfigError, Env};
use shop_common::extract;
use utoipa::ToSchema;

/// What the knob is set to.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultSettings {
    /// 0 to 1: the share of requests answered 503 (after the latency).
    pub failure_rate: f64,
    pub added_latency: Duration,
}

/// A rate as `0.25` or `25%`, between 0 and 1.
pub fn parse_rate(raw: &str) -> Result<f64, String> {
    let raw = raw.trim();
    let rate = match raw.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => raw.parse::<f64>(),
    }
    .map_err(|_| "expected a number like 0.25 or 25%".to_string())?;
    if !(0.0..=1.0).contains(&rate) {
        return Err("must be between 0 and 1 (0% and 100%)".into());
    }
    Ok(rate)
}

impl FaultSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let failure_rate = match env.get("PAYMENTS_FAILURE_RATE") {
            None => 0.0,
            Some(raw) => parse_rate(raw)
                .map_err(|e| ConfigError::invalid("PAYMENTS_FAILURE_RATE", raw, e))?,
        };
        Ok(FaultSettings {
            failure_rate,
            added_latency: env.duration_or("PAYMENTS_ADDED_LATENCY", Duration::ZERO)?,
        })
    }
}

/// The knob, shared by the middleware and the admin endpoint.
#[derive(Clone, Default)]
pub struct Faults(Arc<RwLock<FaultSettings>>);

impl Faults {
    pub fn new(settings: FaultSettings) -> Self {
        Faults(Arc::new(RwLock::new(settings)))
    }

    pub fn get(&self) -> FaultSettings {
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set(&self, settings: FaultSettings) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }
}

/// Middleware for the payments API: waits the added latency, then fails
/// the configured share of requests with a 503 before they do anything.
pub async fn inject(State(faults): State<Faults>, request: Request, next: Next) -> Response {
    let settings = faults.get();
    if !settings.added_latency.is_zero() {
        tokio::time::sleep(settings.added_latency).await;
    }
    if settings.failure_rate > 0.0 && rand::random::<f64>() < settings.failure_rate {
        return Problem::unavailable("injected failure (the payments fault knob)")
            .with_type("urn:shop:problem:injected-fault")
            .into_response();
    }
    next.run(request).await
}

/// The knob as `/admin/faults` shows and takes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultView {
    /// 0 to 1.
    pub failure_rate: f64,
    /// A duration such as `250ms`.
    pub added_latency: String,
}

impl FaultView {
    fn of(s: FaultSettings) -> Self {
        FaultView {
            failure_rate: s.failure_rate,
            added_latency: humantime::format_duration(s.added_latency).to_string(),
        }
    }
}

/// `GET` and `PUT /admin/faults` (not routed by the gateway: only the
/// operator of the pod, or `trellis dev`, reaches it).
pub fn admin(faults: Faults) -> axum::Router {
    axum::Router::new()
        .route("/admin/faults", get(show).put(change))
        .with_state(faults)
}

/// The fault knob's settings.
#[utoipa::path(get, path = "/admin/faults", responses((status = 200, body = FaultView)))]
pub async fn show(State(faults): State<Faults>) -> Json<FaultView> {
    Json(FaultView::of(faults.get()))
}

/// Change the fault knob at run time.
#[utoipa::path(put, path = "/admin/faults", request_body = FaultView,
    responses((status = 200, body = FaultView), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn change(
    State(faults): State<Faults>,
    extract::Json(view): extract::Json<FaultView>,
) -> Result<Json<FaultView>, Problem> {
    let mut v = shop_common::validate::Violations::new();
    v.check(
        (0.0..=1.0).contains(&view.failure_rate),
        "failureRate",
        "must be between 0 and 1",
    );
    let latency = humantime::parse_duration(view.added_latency.trim());
    v.check(
        latency.is_ok(),
        "addedLatency",
        "must be a duration such as 250ms",
    );
    v.finish()?;
    let settings = FaultSettings {
        failure_rate: view.failure_rate,
        added_latency: latency.unwrap_or_default(),
    };
    faults.set(settings);
    tracing::info!(failure_rate = settings.failure_rate, added_latency = ?settings.added_latency, "fault knob changed");
    Ok(Json(FaultView::of(settings)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_as_fractions_or_percentages() {
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert_eq!(parse_rate("50%"), Ok(0.5));
        assert!(parse_rate("150%").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("often").is_err());
    }

    #[test]
    fn settings_from_env() {
        let env = Env::from_pairs([
            ("PAYMENTS_FAILURE_RATE", "20%"),
            ("PAYMENTS_ADDED_LATENCY", "150ms"),
        ]);
        let s = FaultSettings::from_env(&env).unwrap();
        assert_eq!(
            (s.failure_rate, s.added_latency),
            (0.2, Duration::from_millis(150))
        );
        assert_eq!(
            FaultSettings::from_env(&Env::default()).unwrap(),
            FaultSettings::default()
        );
        let err = FaultSettings::from_env(&Env::from_pairs([("PAYMENTS_FAILURE_RATE", "2")]))
            .unwrap_err();
        assert_eq!(err.var(), "PAYMENTS_FAILURE_RATE");
    }
}
