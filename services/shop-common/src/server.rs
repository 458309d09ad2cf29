//! Serving a service: its routes plus health and `/openapi.json`, the
//! tracing/access-log middleware, problem+json fallbacks, a body limit, and
//! a graceful shutdown (stop accepting, let in-flight requests finish within
//! the grace period, then stop). REST and gRPC share the port: HTTP/1.1 and
//! h2c (prior knowledge) are both accepted.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router, middleware};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Env};
use crate::extract;
use crate::health::Health;
use crate::telemetry::{self, TelemetrySettings};

/// What a service serves.
pub struct App {
    /// The service's routes; start from [`router`] unless the service has a
    /// fallback of its own.
    pub router: Router,
    pub health: Health,
    pub openapi: utoipa::openapi::OpenApi,
}

/// An empty router whose unknown paths answer 404 as problem+json.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().fallback(extract::not_found)
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains for
/// at most `grace`.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let health = app.health.clone();
    let openapi = Arc::new(app.openapi);
    let router = app
        .router
        .merge(health.router())
        .route(
            "/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .method_not_allowed_fallback(extract::method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::DEFAULT_BODY_LIMIT))
        .layer(middleware::from_fn(telemetry::http_server));

    tracing::info!(addr = %listener.local_addr()?, "listening");
    let draining = shutdown.clone();
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        draining.cancelled().await;
        health.start_draining();
        tracing::info!("shutting down: no new connections, finishing requests in flight");
    });
    tokio::select! {
        result = server => result,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over: closing the connections still open");
            Ok(())
        }
    }
}

/// Cancels `token` on SIGTERM (Kubernetes) or Ctrl-C.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
        token.cancel();
    });
}

/// A service's `main`: reads its configuration from the environment (exit
/// code 2 and a message naming the variable when that fails), sets up
/// telemetry, binds the address `listen` picks from the configuration and
/// runs until SIGTERM/Ctrl-C (exit code 1 if anything fails).
pub async fn main<C, F, Fut>(
    service: &'static str,
    load: impl FnOnce(&Env) -> Result<C, ConfigError>,
    listen: impl FnOnce(&C) -> SocketAddr,
    run: F,
) -> ExitCode
where
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let env = Env::from_process();
    let (config, telemetry_settings) =
        match load(&env).and_then(|c| Ok((c, TelemetrySettings::from_env(&env, service)?))) {
            Ok(loaded) => loaded,
            Err(e) => {
                eprintln!("{service}: configuration error: {e}");
                return ExitCode::from(2);
            }
        };
    let _telemetry = match telemetry::init(&telemetry_settings) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{service}: telemetry: {e:#}");
            return ExitCode::from(1);
        }
    };
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let addr = listen(&config);
    let result = match TcpListener::bind(addr).await {
        Ok(listener) => run(config, listener, shutdown).await,
        Err(e) => Err(anyhow::anyhow!("listening on {addr}: {e}")),
    };
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "failed");
            eprintln!("{service}: {e:#}");
            ExitCode::from(1)
        }
    }
}
