//! ResiliencePolicies in a running mesh: the caller's breaker and fallback
//! against an upstream that fails and heals, retries within their budget,
//! and a policy edit that reaches running sidecars without a restart.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;
use trellis_api::render::CONFIG_HASH_ANNOTATION;
use trellis_e2e::cluster::{Cluster, Mesh, eventually, name, report, restarts, shared};
use trellis_e2e_app::api::{CallResult, CallSpec, Fault};

use crate::support::echo_and_driver;

fn calls(path: &str, count: u32) -> CallSpec {
    CallSpec {
        authority: "echo".into(),
        path: path.into(),
        method: "GET".into(),
        count,
        body: String::new(),
    }
}

async fn breaker_state(mesh: &Mesh, driver: &str) -> f64 {
    mesh.metrics(driver)
        .await
        .map(|m| m.sum("trellis_circuit_state", &[("peer", "echo")]))
        .unwrap_or(-1.0)
}

async fn retries(mesh: &Mesh, driver: &str) -> f64 {
    mesh.metrics(driver)
        .await
        .unwrap()
        .sum("trellis_retries_total", &[("peer", "echo")])
}

/// Calls until one is answered by the echo itself again; returns how long that took.
async fn until_healed(mesh: &Mesh, driver: &str) -> Duration {
    let started = Instant::now();
    eventually(Duration::from_secs(60), || async {
        let r = mesh.get(driver, "echo", "/heal").await.ok()?;
        (r.status == 200 && r.echo().is_some()).then_some(())
    })
    .await
    .expect("the caller recovers once the upstream heals");
    started.elapsed()
}

fn fallbacks(results: &[CallResult]) -> usize {
    results
        .iter()
        .filter(|r| r.fallback && r.trellis_error.as_deref() == Some("circuit-open"))
        .count()
}

#[tokio::test]
async fn the_callers_breaker_opens_serves_the_fallback_and_recovers() {
    let _cluster = shared().await;
    let Some(cluster) = Cluster::attach("breaker").await else {
        return;
    };
    let mesh = cluster.namespace("breaker").await.unwrap();
    const FALLBACK: &str = r#"{"fallback":"echo is unavailable"}"#;
    mesh.apply_policy(
        "echo",
        "echo",
        json!({
            "timeout": {"request": "3s"},
            "retry": {
                "attempts": 3,
                "perTryTimeout": "1s",
                "retryOn": ["503"],
                "backoff": {"base": "10ms", "max": "50ms"},
                "budget": {"ratio": 0.2, "minPerSecond": 1, "window": "10s"}
            },
            "circuitBreaker": {
                "consecutiveFailures": 5,
                "failureRateThreshold": 50,
                "minimumRequests": 10,
                "window": "10s",
                "openDuration": "2s",
                "maxOpenDuration": "4s",
                "halfOpenRequests": 1
            },
            "fallback": {"status": 503, "body": FALLBACK, "contentType": "application/json"}
        }),
    )
    .await
    .unwrap();
    let driver = echo_and_driver(&mesh, "echo", 1, &["echo"]).await.unwrap();
    let echo = name(&mesh.pods("echo").await.unwrap()[0]);
    eventually(Duration::from_secs(60), || async {
        let config = mesh.proxy_config(&driver).await.ok()?;
        config
            .upstreams
            .first()?
            .policy
            .circuit_breaker
            .as_ref()
            .map(|_| ())
    })
    .await
    .expect("the driver's sidecar has the policy");

    let healthy = mesh.call(&driver, &calls("/ok", 20)).await.unwrap();
    assert!(healthy.iter().all(|r| r.status == 200), "{healthy:?}");
    assert_eq!(breaker_state(&mesh, &driver).await, 0.0, "closed");

    // The upstream answers 503.
    mesh.set_fault(&echo, &Fault::failing(503)).await.unwrap();
    let hits_before = mesh.hits(&echo).await.unwrap();
    let retries_before = retries(&mesh, &driver).await;
    let faulted = mesh.call(&driver, &calls("/503", 40)).await.unwrap();
    let hits = mesh.hits(&echo).await.unwrap() - hits_before;
    assert!(faulted.iter().all(|r| r.status == 503), "{faulted:?}");
    let open = fallbacks(&faulted);
    assert!(open > 0, "the breaker opened: {faulted:?}");
    assert!(
        faulted
            .iter()
            .filter(|r| r.fallback)
            .all(|r| r.body == FALLBACK),
        "the fallback body is served"
    );
    assert_eq!(breaker_state(&mesh, &driver).await, 1.0, "open");
    // Every call the breaker let through reached the echo once, plus its retries.
    let forwarded = (faulted.len() - open) as u64;
    let retried = hits - forwarded;
    assert_eq!(
        retried as f64,
        retries(&mesh, &driver).await - retries_before,
        "the echo's count and the sidecar's agree"
    );
    // Budget: 20 % of the calls plus 1/s over the 10 s window.
    let allowed = (0.2 * faulted.len() as f64).ceil() as u64 + 10;
    assert!(retried <= allowed, "{retried} retries > budget {allowed}");
    report(
        "breaker (503): calls until open",
        (faulted.len() - open) as f64,
        "calls",
    );
    report(
        "breaker (503): upstream hits per call",
        hits as f64 / faulted.len() as f64,
        "hits",
    );

    // Healed: the half-open probe passes and the breaker closes.
    mesh.set_fault(&echo, &Fault::default()).await.unwrap();
    let recovery = until_healed(&mesh, &driver).await;
    report(
        "breaker (503): recovery after the fault healed",
        recovery.as_secs_f64(),
        "s",
    );
    eventually(Duration::from_secs(10), || async {
        (breaker_state(&mesh, &driver).await == 0.0).then_some(())
    })
    .await
    .expect("closed again");

    // Slow: every try outlasts its 1 s limit, the timeouts trip the breaker.
    mesh.set_fault(&echo, &Fault::slow(1500)).await.unwrap();
    let slow = mesh.call(&driver, &calls("/slow", 12)).await.unwrap();
    assert!(slow.iter().all(|r| r.status != 200), "{slow:?}");
    let timeouts = slow
        .iter()
        .filter(|r| r.trellis_error.as_deref() == Some("timeout"))
        .count();
    assert!(timeouts >= 5, "{slow:?}");
    assert!(
        fallbacks(&slow) > 0,
        "the breaker opened on timeouts: {slow:?}"
    );
    mesh.set_fault(&echo, &Fault::default()).await.unwrap();
    let recovery = until_healed(&mesh, &driver).await;
    report(
        "breaker (slow): recovery after the fault healed",
        recovery.as_secs_f64(),
        "s",
    );
    mesh.cleanup().await;
}

#[tokio::test]
async fn a_policy_edit_reaches_running_sidecars_without_a_restart() {
    let _cluster = shared().await;
    let Some(cluster) = Cluster::attach("policy_reload").await else {
        return;
    };
    let mesh = cluster.namespace("reload").await.unwrap();
    let policy = |attempts: u32| {
        json!({
            "retry": {
                "attempts": attempts,
                "retryOn": ["503"],
                "backoff": {"base": "10ms", "max": "20ms"},
                "budget": {"ratio": 1.0, "minPerSecond": 100, "window": "10s"}
            }
        })
    };
    mesh.apply_policy("echo", "echo", policy(2)).await.unwrap();
    let driver = echo_and_driver(&mesh, "echo", 1, &["echo"]).await.unwrap();
    let echo = name(&mesh.pods("echo").await.unwrap()[0]);
    let attempts = |mesh: Mesh, driver: String| async move {
        let config = mesh.proxy_config(&driver).await.ok()?;
        Some(
            config
                .upstreams
                .first()?
                .policy
                .retry
                .as_ref()?
                .attempts
                .get(),
        )
    };
    eventually(Duration::from_secs(60), || async {
        (attempts(mesh.clone(), driver.clone()).await? == 2).then_some(())
    })
    .await
    .expect("the first policy is in effect");

    // A failing call is tried twice.
    mesh.set_fault(&echo, &Fault::failing(503)).await.unwrap();
    let tries = |mesh: Mesh, driver: String, echo: String| async move {
        let before = mesh.hits(&echo).await.unwrap();
        let r = mesh.get(&driver, "echo", "/tries").await.unwrap();
        assert_eq!(r.status, 503);
        mesh.hits(&echo).await.unwrap() - before
    };
    assert_eq!(tries(mesh.clone(), driver.clone(), echo.clone()).await, 2);

    let deployments: Api<Deployment> = Api::namespaced(mesh.client.clone(), &mesh.ns);
    let template = |d: Deployment| {
        let annotations = d.spec?.template.metadata?.annotations?;
        annotations.get(CONFIG_HASH_ANNOTATION).cloned()
    };
    let before_template = template(deployments.get("driver").await.unwrap());
    let before_pod = mesh.get_pod(&driver).await.unwrap();

    let edited = Instant::now();
    mesh.apply_policy("echo", "echo", policy(4)).await.unwrap();
    eventually(Duration::from_secs(120), || async {
        (attempts(mesh.clone(), driver.clone()).await? == 4).then_some(())
    })
    .await
    .expect("the running sidecar reloads the edited policy");
    report(
        "policy edit -> running sidecar reloaded",
        edited.elapsed().as_secs_f64(),
        "s",
    );
    assert_eq!(
        tries(mesh.clone(), driver.clone(), echo.clone()).await,
        4,
        "the new policy is in effect"
    );

    // The same pod, not restarted, and no rollout.
    let after_pod = mesh.get_pod(&driver).await.unwrap();
    assert_eq!(after_pod.metadata.uid, before_pod.metadata.uid);
    assert_eq!(restarts(&after_pod), restarts(&before_pod));
    assert_eq!(
        template(deployments.get("driver").await.unwrap()),
        before_template
    );
    assert_eq!(mesh.pods("driver").await.unwrap().len(), 1);
    mesh.cleanup().await;
}
