//! The workload of the cluster tests (`e2e/tests/cluster.rs`), one binary in
//! two roles, each behind its own sidecar in its own pod:
//!
//! - [`echo`]: an HTTP echo (and a gRPC [`grpc`] service on the same port)
//!   that tells which pod answered, counts the requests it saw, and fails or
//!   slows down on command, so a test can break an upstream and heal it.
//! - [`driver`]: a client whose control API a test reaches through the API
//!   server; it calls other services through its pod's outbound sidecar, one
//!   call at a time or as steady [`load`].
//!
//! [`api`] holds the JSON both sides speak, so the tests read exactly what
//! the app writes.

pub mod api;
pub mod driver;
pub mod echo;
pub mod grpc;
pub mod load;

/// This pod's name (from the downward API), for answers that say who served them.
pub fn pod_name() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| "local".into())
}

/// Resolves on SIGTERM (the kubelet) or Ctrl-C.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
