//! What several tests set up: an echo service and a driver that calls it.

use std::time::Duration;

use serde_json::{Value, json};
use trellis_e2e::cluster::{Mesh, app_service, name};

/// How long a MeshService may take to be Ready (image already on the node).
pub const READY: Duration = Duration::from_secs(120);

/// The echo (`replicas`) and a driver calling `upstreams`, both Ready.
/// Returns the driver pod's name.
pub async fn echo_and_driver(
    mesh: &Mesh,
    echo: &str,
    replicas: usize,
    upstreams: &[&str],
) -> anyhow::Result<String> {
    mesh.apply_service(echo, app_service("echo", replicas as i32, &[], json!([])))
        .await?;
    mesh.apply_service("driver", app_service("driver", 1, upstreams, json!([])))
        .await?;
    mesh.wait_ready(echo, replicas, READY).await?;
    let driver = mesh.wait_ready("driver", 1, READY).await?;
    Ok(name(&driver[0]))
}

/// A retry policy for idempotent calls: what users set for a service that may lose a pod.
pub fn retrying_policy() -> Value {
    json!({
        "timeout": {"request": "5s", "connect": "500ms"},
        "retry": {
            "attempts": 3,
            "perTryTimeout": "2s",
            "retryOn": ["connect-failure", "reset", "502", "503", "504"],
            "backoff": {"base": "25ms", "max": "250ms", "jitter": "full"},
            "budget": {"ratio": 0.2, "minPerSecond": 20, "window": "10s"}
        },
        "outlierDetection": {"consecutiveFailures": 3, "baseEjection": "10s", "maxEjectionPercent": 50}
    })
}
