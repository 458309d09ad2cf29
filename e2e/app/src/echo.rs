//! The echo: answers every request with who served it, unless told to fail
//! or to be slow. Serves HTTP/1.1 and h2c on one port, gRPC included.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceExt as _;

use crate::api::{Echo, FAULT_PATH, Fault, HITS_PATH, Hits, READY_PATH, Readiness, SLEEP_PARAM};
use crate::grpc::EchoService;

/// The echo's mutable state: the fault in effect, readiness and the hit count.
pub struct EchoState {
    pub pod: String,
    pub version: String,
    fault: RwLock<Fault>,
    ready: AtomicBool,
    hits: AtomicU64,
}

impl EchoState {
    pub fn new(pod: String, version: String) -> Arc<Self> {
        Arc::new(EchoState {
            pod,
            version,
            fault: RwLock::default(),
            ready: AtomicBool::new(true),
            hits: AtomicU64::new(0),
        })
    }

    fn fault(&self) -> Fault {
        self.fault.read().map(|f| f.clone()).unwrap_or_default()
    }

    /// Counts one served request and applies the fault: `Some` is the answer to give instead.
    pub async fn serve_one(&self) -> Option<StatusCode> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let fault = self.fault();
        if fault.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
        }
        fault.status.and_then(|s| StatusCode::from_u16(s).ok())
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// The HTTP routes and the gRPC service, on one router.
pub fn router(state: Arc<EchoState>) -> Router {
    let grpc = EchoService::new(state.clone())
        .map_request(|req: Request| req.map(tonic::body::Body::new))
        .map_response(|rsp: http::Response<tonic::body::Body>| rsp.map(Body::new));
    Router::new()
        .route("/health/ready", get(readiness))
        .route(READY_PATH, post(set_ready))
        .route("/health/live", get(|| async { "live" }))
        .route(FAULT_PATH, post(set_fault).get(get_fault))
        .route(HITS_PATH, get(hits))
        .route_service(&format!("/{}/{{method}}", crate::grpc::SERVICE), grpc)
        .fallback(echo)
        .with_state(state)
}

async fn set_fault(State(s): State<Arc<EchoState>>, Json(fault): Json<Fault>) -> Json<Fault> {
    tracing::info!(?fault, "fault set");
    if let Ok(mut f) = s.fault.write() {
        *f = fault.clone();
    }
    Json(fault)
}

async fn readiness(State(s): State<Arc<EchoState>>) -> StatusCode {
    if s.ready.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn set_ready(State(s): State<Arc<EchoState>>, Json(r): Json<Readiness>) -> Json<Readiness> {
    tracing::info!(ready = r.ready, "readiness set");
    s.ready.store(r.ready, Ordering::Relaxed);
    Json(r)
}

async fn get_fault(State(s): State<Arc<EchoState>>) -> Json<Fault> {
    Json(s.fault())
}

async fn hits(State(s): State<Arc<EchoState>>) -> Json<Hits> {
    Json(Hits {
        pod: s.pod.clone(),
        total: s.hits(),
    })
}

async fn echo(State(s): State<Arc<EchoState>>, req: Request) -> Response {
    if let Some(status) = s.serve_one().await {
        return (status, format!("fault injected by {}\n", s.pod)).into_response();
    }
    if let Some(ms) = sleep_ms(req.uri().query()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Json(Echo {
        pod: s.pod.clone(),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        version: s.version.clone(),
    })
    .into_response()
}

/// `sleepMs=N` from a query string.
fn sleep_ms(query: Option<&str>) -> Option<u64> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == SLEEP_PARAM).then(|| v.parse().ok()).flatten()
    })
}

/// Serves until SIGTERM, then stops accepting and lets in-flight requests
/// finish (the sidecar in front of it stops only after this exits).
pub async fn serve(addr: SocketAddr, state: Arc<EchoState>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, pod = %state.pod, "echo listening");
    let app = router(state).into_make_service();
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            crate::terminated().await;
            tracing::info!("SIGTERM: draining in-flight requests");
        })
        .await?;
    tracing::info!("drained; exiting");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn call(app: &Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let rsp = app.clone().oneshot(req).await.unwrap();
        let status = rsp.status();
        let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn echoes_counts_fails_on_command_and_heals() {
        let state = EchoState::new("pod-a".into(), "v1".into());
        let app = router(state.clone());
        let (status, body) = call(&app, "GET", "/orders/1", "").await;
        assert_eq!(status, StatusCode::OK);
        let echo: Echo = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (echo.pod.as_str(), echo.path.as_str(), echo.version.as_str()),
            ("pod-a", "/orders/1", "v1")
        );

        call(&app, "POST", FAULT_PATH, r#"{"status": 503}"#).await;
        assert_eq!(
            call(&app, "GET", "/x", "").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Health and control paths are never faulted or counted.
        assert_eq!(
            call(&app, "GET", "/health/ready", "").await.0,
            StatusCode::OK
        );
        let (_, hits) = call(&app, "GET", HITS_PATH, "").await;
        assert_eq!(serde_json::from_str::<Hits>(&hits).unwrap().total, 2);

        call(&app, "POST", FAULT_PATH, "{}").await;
        assert_eq!(call(&app, "GET", "/x", "").await.0, StatusCode::OK);
        assert_eq!(state.hits(), 3);

        call(&app, "POST", READY_PATH, r#"{"ready": false}"#).await;
        assert_eq!(
            call(&app, "GET", "/health/ready", "").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            call(&app, "GET", "/x", "").await.0,
            StatusCode::OK,
            "still serves"
        );
    }

    #[test]
    fn sleep_parameter() {
        assert_eq!(sleep_ms(Some("a=1&sleepMs=250")), Some(250));
        assert_eq!(sleep_ms(Some("sleepMs=x")), None);
        assert_eq!(sleep_ms(None), None);
    }
}
