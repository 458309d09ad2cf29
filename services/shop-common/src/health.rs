//! `/health/live` (the process answers) and `/health/ready` (its
//! dependencies answer, and it is not shutting down), as the MeshService's
//! probes expect.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde_json::json;

/// One dependency readiness depends on.
pub trait Check: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// `Err` says why the dependency is not usable.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// How long one check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The checks of one service, and whether it is draining.
#[derive(Clone, Default)]
pub struct Health {
    checks: Vec<Arc<dyn Check>>,
    draining: Arc<AtomicBool>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_check(mut self, check: impl Check) -> Self {
        self.checks.push(Arc::new(check));
        self
    }

    /// From now on readiness fails, so no new traffic is routed here.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The status of every check, run concurrently.
    pub async fn report(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let results = futures::future::join_all(self.checks.iter().map(|c| async move {
            let result = match tokio::time::timeout(CHECK_TIMEOUT, c.check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            (c.name().to_string(), result)
        }))
        .await;
        let mut ready = !self.draining.load(Ordering::SeqCst);
        let mut checks = serde_json::Map::new();
        for (name, result) in results {
            let value = match result {
                Ok(()) => json!({"status": "UP"}),
                Err(reason) => {
                    ready = false;
                    json!({"status": "DOWN", "reason": reason})
                }
            };
            checks.insert(name, value);
        }
        (ready, checks)
    }

    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .with_state(self.clone())
    }
}

async fn live() -> Response {
    Json(json!({"status": "UP"})).into_response()
}

async fn ready(State(health): State<Health>) -> Response {
    let (ready, checks) = health.report().await;
    let draining = health.draining.load(Ordering::SeqCst);
    let body = json!({
        "status": if ready { "UP" } else { "DOWN" },
        "draining": draining,
        "checks": checks,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
