//! The plain-HTTP operations port: `/metrics`, `/healthz`, `/readyz`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::certs::CertStore;
use crate::metrics::Metrics;

/// What `/healthz` and `/readyz` report.
#[derive(Debug, Default)]
pub struct Health {
    /// The webhook's certificate, when there is a webhook: ready once it is loaded.
    pub certs: OnceLock<Arc<CertStore>>,
    /// Set when a background task that must not end has ended.
    pub broken: AtomicBool,
}

impl Health {
    /// Ready to serve: the webhook certificate is loaded (or there is no webhook).
    pub fn is_ready(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && self.certs.get().is_none_or(|c| c.is_loaded())
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    health: Arc<Health>,
}

pub fn router(metrics: Metrics, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(OpsState { metrics, health })
}

async fn metrics_handler(State(s): State<OpsState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    )
}

async fn healthz(State(s): State<OpsState>) -> impl IntoResponse {
    if s.health.broken.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "broken")
    } else {
        (StatusCode::OK, "ok")
    }
}

async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serves the ops routes on `addr` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(metrics, health);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "ops server failed");
        }
    });
    Ok((local, task))
}
