//! The driver: a control API (reached by tests through the API server's pod
//! proxy) that makes this pod call other services through its sidecar.
//!
//! | route | what |
//! |---|---|
//! | `POST /call` | [`CallSpec`] → `[CallResult]` |
//! | `POST /load` | [`LoadSpec`] → [`LoadStarted`], runs in the background |
//! | `GET /load/{id}` | [`LoadReport`] so far |
//! | `POST /grpc` | [`GrpcSpec`] → [`GrpcResult`] |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::api::{CallResult, CallSpec, GrpcResult, GrpcSpec, LoadReport, LoadSpec, LoadStarted};
use crate::load::Outbound;

struct Driver {
    outbound: Outbound,
    outbound_uri: String,
    runs: Mutex<HashMap<u64, Arc<Mutex<LoadReport>>>>,
    next: AtomicU64,
}

pub fn router(outbound: Outbound, outbound_address: &str) -> Router {
    let driver = Arc::new(Driver {
        outbound,
        outbound_uri: format!("http://{outbound_address}"),
        runs: Mutex::default(),
        next: AtomicU64::new(1),
    });
    Router::new()
        .route("/health/ready", get(|| async { "ready" }))
        .route("/health/live", get(|| async { "live" }))
        .route("/call", post(call))
        .route("/load", post(start_load))
        .route("/load/{id}", get(load_report))
        .route("/grpc", post(grpc))
        .with_state(driver)
}

async fn call(State(d): State<Arc<Driver>>, Json(spec): Json<CallSpec>) -> Json<Vec<CallResult>> {
    Json(d.outbound.calls(&spec).await)
}

async fn start_load(State(d): State<Arc<Driver>>, Json(spec): Json<LoadSpec>) -> Json<LoadStarted> {
    let id = d.next.fetch_add(1, Ordering::Relaxed);
    let report = Arc::new(Mutex::new(LoadReport::default()));
    if let Ok(mut runs) = d.runs.lock() {
        runs.insert(id, report.clone());
    }
    tracing::info!(id, ?spec, "load started");
    tokio::spawn(crate::load::run(d.outbound.clone(), spec, report));
    Json(LoadStarted { id })
}

async fn load_report(
    State(d): State<Arc<Driver>>,
    Path(id): Path<u64>,
) -> Result<Json<LoadReport>, StatusCode> {
    let report = d
        .runs
        .lock()
        .ok()
        .and_then(|runs| runs.get(&id).cloned())
        .ok_or(StatusCode::NOT_FOUND)?;
    let snapshot = report
        .lock()
        .map(|r| r.clone())
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(snapshot))
}

async fn grpc(State(d): State<Arc<Driver>>, Json(spec): Json<GrpcSpec>) -> Json<GrpcResult> {
    let failed = |e: String| GrpcResult {
        replies: vec![],
        error: Some(e),
    };
    // The sidecar routes by :authority, so the origin names the service.
    let origin = match format!("http://{}", spec.authority).parse::<http::Uri>() {
        Ok(o) => o,
        Err(e) => return Json(failed(format!("bad authority: {e}"))),
    };
    let endpoint = match tonic::transport::Endpoint::from_shared(d.outbound_uri.clone()) {
        Ok(e) => e
            .origin(origin)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10)),
        Err(e) => return Json(failed(format!("bad outbound address: {e}"))),
    };
    match endpoint.connect().await {
        Ok(channel) => Json(crate::grpc::call(channel, &spec).await),
        Err(e) => Json(failed(format!("connect: {e}"))),
    }
}

/// Serves the control API until SIGTERM.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let outbound_address =
        std::env::var("TRELLIS_OUTBOUND").unwrap_or_else(|_| "127.0.0.1:4140".into());
    let app = router(Outbound::new(outbound_address.clone()), &outbound_address);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, outbound = %outbound_address, "driver listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::terminated())
        .await?;
    Ok(())
}
