//! The mesh while the cluster changes under it: pods killed and rolled under
//! steady load, a scale-down with requests in flight, the leading operator
//! deleted, the API server restarted. Each test holds the cluster alone.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use trellis_e2e::cluster::{
    Cluster, Mesh, OPERATOR_NAMESPACE, app_service, eventually, exclusive, name, pod_ready, report,
};
use trellis_e2e_app::api::{LoadReport, LoadSpec};

use crate::support::{READY, echo_and_driver, retrying_policy};

/// The success rate the mesh must keep while pods come and go.
const MIN_SUCCESS: f64 = 0.999;

fn load(rps: u32, seconds: u64) -> LoadSpec {
    LoadSpec {
        authority: "echo".into(),
        path: "/load".into(),
        rps,
        total: u64::from(rps) * seconds,
        timeout_ms: 10_000,
    }
}

fn print(what: &str, r: &LoadReport) {
    report(
        &format!("{what}: success rate"),
        r.success_rate() * 100.0,
        "%",
    );
    eprintln!(
        "{what}: {} of {} ok in {:.1} s; failures {:?}; served by {:?}",
        r.ok,
        r.completed,
        r.elapsed_ms as f64 / 1000.0,
        r.failures,
        r.pods
    );
}

#[tokio::test]
async fn pod_kill_and_rolling_update_under_steady_load() {
    let _cluster = exclusive().await;
    let Some(cluster) = Cluster::attach("pod_kill").await else {
        return;
    };
    let mesh = cluster.namespace("podkill").await.unwrap();
    mesh.apply_policy("echo", "echo", retrying_policy())
        .await
        .unwrap();
    let driver = echo_and_driver(&mesh, "echo", 3, &["echo"]).await.unwrap();

    // One of three replicas is deleted while 200 requests a second flow.
    let run = mesh.start_load(&driver, &load(200, 30)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let victim = name(&mesh.pods("echo").await.unwrap()[0]);
    mesh.delete_pod(&victim).await.unwrap();
    let replaced = Instant::now();
    mesh.wait_ready("echo", 3, READY).await.unwrap();
    report(
        "killed pod replaced and Ready",
        replaced.elapsed().as_secs_f64(),
        "s",
    );
    let killed = mesh
        .finish_load(&driver, run, Duration::from_secs(90))
        .await
        .unwrap();
    print("pod kill at 200 req/s", &killed);
    assert!(
        killed.pods.contains_key(&victim),
        "the victim served before it went: {:?}",
        killed.pods
    );
    assert_eq!(killed.completed, killed.spec_total);

    // A rolling update of all three (the MeshService's env changes).
    let run = mesh.start_load(&driver, &load(200, 40)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rolled = Instant::now();
    mesh.apply_service(
        "echo",
        app_service("echo", 3, &[], json!([{"name": "VERSION", "value": "2"}])),
    )
    .await
    .unwrap();
    let rolled_out = eventually(Duration::from_secs(180), || async {
        let pods = mesh.all_pods("echo").await.ok()?;
        let new = pods.iter().filter(|p| version(p) == Some("2")).count();
        (pods.len() == 3 && new == 3 && pods.iter().all(pod_ready)).then_some(())
    })
    .await;
    rolled_out.expect("the rollout finishes");
    report(
        "rolling update of 3 replicas",
        rolled.elapsed().as_secs_f64(),
        "s",
    );
    let rolling = mesh
        .finish_load(&driver, run, Duration::from_secs(120))
        .await
        .unwrap();
    print("rolling update at 200 req/s", &rolling);
    let versions: BTreeSet<&str> = rolling.versions.keys().map(String::as_str).collect();
    assert_eq!(
        versions,
        BTreeSet::from(["1", "2"]),
        "old and new pods both served"
    );

    assert!(
        killed.success_rate() >= MIN_SUCCESS,
        "pod kill: {:.3} % < 99.9 %",
        killed.success_rate() * 100.0
    );
    assert!(
        rolling.success_rate() >= MIN_SUCCESS,
        "rolling update: {:.3} % < 99.9 %",
        rolling.success_rate() * 100.0
    );
    mesh.cleanup().await;
}

/// The pod's `VERSION` env (set by the MeshService).
fn version(pod: &Pod) -> Option<&str> {
    let app = pod.spec.as_ref()?.containers.first()?;
    let env = app.env.as_ref()?;
    Some(
        env.iter()
            .find(|e| e.name == "VERSION")
            .and_then(|e| e.value.as_deref())
            .unwrap_or("1"),
    )
}

#[tokio::test]
async fn a_scale_down_loses_no_request_in_flight() {
    let _cluster = exclusive().await;
    let Some(cluster) = Cluster::attach("drain").await else {
        return;
    };
    let mesh = cluster.namespace("drain").await.unwrap();
    // No retries: every request must be answered by the pod that took it.
    mesh.apply_policy(
        "echo",
        "echo",
        json!({"retry": {"attempts": 1}, "timeout": {"request": "20s"}}),
    )
    .await
    .unwrap();
    let driver = echo_and_driver(&mesh, "echo", 3, &["echo"]).await.unwrap();
    let before: Vec<String> = mesh.pods("echo").await.unwrap().iter().map(name).collect();
    let mut seen = 0;
    for pod in &before {
        seen += mesh.hits(pod).await.unwrap();
    }

    // 30 requests that each take 4 s, all in flight at once ...
    const N: u64 = 30;
    let spec = LoadSpec {
        authority: "echo".into(),
        path: "/slow?sleepMs=4000".into(),
        rps: 100,
        total: N,
        timeout_ms: 20_000,
    };
    let run = mesh.start_load(&driver, &spec).await.unwrap();
    eventually(Duration::from_secs(3), || async {
        let mut hits = 0;
        for pod in &before {
            hits += mesh.hits(pod).await.ok()?;
        }
        (hits - seen == N).then_some(())
    })
    .await
    .expect("every request reached a pod");
    // ... when two of the three pods are told to stop.
    mesh.scale("echo", 1).await.unwrap();
    let at_scale = mesh.load_report(&driver, run).await.unwrap();
    assert_eq!(
        at_scale.completed, 0,
        "all {N} were still in flight at the scale-down"
    );
    let done = mesh
        .finish_load(&driver, run, Duration::from_secs(60))
        .await
        .unwrap();
    print("scale-down 3->1 with 30 requests in flight", &done);
    let left: BTreeSet<String> = mesh
        .wait_ready("echo", 1, READY)
        .await
        .unwrap()
        .iter()
        .map(name)
        .collect();
    let drained: Vec<&String> = done.pods.keys().filter(|p| !left.contains(*p)).collect();
    assert!(
        !drained.is_empty(),
        "removed pods had requests in flight: {:?}",
        done.pods
    );
    assert_eq!((done.ok, done.completed), (N, N), "{:?}", done.failures);
    mesh.cleanup().await;
}

/// The operator replica holding the leader Lease.
async fn leader(cluster: &Cluster) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), OPERATOR_NAMESPACE);
    leases
        .get("trellis-operator")
        .await
        .ok()?
        .spec?
        .holder_identity
}

async fn operator_pods(cluster: &Cluster) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), OPERATOR_NAMESPACE);
    pods.list(&ListParams::default().labels("app.kubernetes.io/name=trellis-operator"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// A new MeshService is reconciled to Ready: the operator works.
async fn reconciles(mesh: &Mesh, service: &str) -> Duration {
    let started = Instant::now();
    mesh.apply_service(service, app_service("echo", 1, &[], json!([])))
        .await
        .unwrap();
    mesh.wait_ready(service, 1, READY).await.unwrap();
    started.elapsed()
}

#[tokio::test]
async fn operator_failover_and_api_server_restart_leave_the_data_plane_serving() {
    let _cluster = exclusive().await;
    let Some(cluster) = Cluster::attach("control_plane_loss").await else {
        return;
    };
    let mesh = cluster.namespace("cploss").await.unwrap();
    mesh.apply_policy("echo", "echo", retrying_policy())
        .await
        .unwrap();
    let driver = echo_and_driver(&mesh, "echo", 2, &["echo"]).await.unwrap();

    // The leading replica is deleted: the other one takes the lease and reconciles.
    let old = eventually(Duration::from_secs(60), || leader(&cluster))
        .await
        .expect("an operator replica leads");
    let others: Vec<String> = operator_pods(&cluster)
        .await
        .iter()
        .map(name)
        .filter(|n| *n != old)
        .collect();
    assert_eq!(
        others.len(),
        1,
        "two operator replicas: {old} and {others:?}"
    );
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), OPERATOR_NAMESPACE);
    let deleted = Instant::now();
    pods.delete(&old, &Default::default()).await.unwrap();
    let new = eventually(Duration::from_secs(60), || async {
        leader(&cluster).await.filter(|l| *l != old)
    })
    .await
    .expect("another replica takes the lease");
    report(
        "operator failover (leader deleted -> new lease holder)",
        deleted.elapsed().as_secs_f64(),
        "s",
    );
    // The standby usually wins; the Deployment's replacement of the deleted
    // pod may win the race too. Either way a live replica other than the old one leads.
    let live: Vec<String> = operator_pods(&cluster)
        .await
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(name)
        .collect();
    assert!(live.contains(&new), "{new} is not a live replica: {live:?}");
    eprintln!(
        "new leader {new} ({})",
        if new == others[0] {
            "the standby"
        } else {
            "the replacement pod"
        }
    );
    let took = reconciles(&mesh, "after-failover").await;
    report(
        "new leader reconciles a MeshService to Ready",
        took.as_secs_f64(),
        "s",
    );

    // The API server is restarted while traffic flows: the sidecars keep
    // their endpoints and serve without it.
    let run = mesh.start_load(&driver, &load(100, 75)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restart = std::env::var("TRELLIS_CLUSTER_RESTART_APISERVER").unwrap_or_else(|_| {
        let script = trellis_e2e::repo_root().join("e2e/kind.sh");
        format!("{} restart-apiserver", script.display())
    });
    let restarted = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(&restart)
        .status()
        .unwrap();
    assert!(status.success(), "{restart}: {status}");
    report(
        "API server restart (stopped -> ready)",
        restarted.elapsed().as_secs_f64(),
        "s",
    );
    let during = mesh
        .finish_load(&driver, run, Duration::from_secs(180))
        .await
        .unwrap();
    print("API server restart at 100 req/s", &during);
    assert_eq!(during.completed, during.spec_total);
    assert_eq!(during.ok, during.completed, "{:?}", during.failures);

    // The operator catches up: it reconciles new and changed objects.
    let took = reconciles(&mesh, "after-restart").await;
    report(
        "after the API server restart: a MeshService to Ready",
        took.as_secs_f64(),
        "s",
    );
    mesh.scale("echo", 3).await.unwrap();
    mesh.wait_ready("echo", 3, READY).await.unwrap();
    mesh.cleanup().await;
}
