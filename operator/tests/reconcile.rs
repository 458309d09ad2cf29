//! Reconciler tests against an in-memory API server (controller-rs style:
//! a real `kube::Client` over `tower_test::mock`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FakeApi, msvc_collection, paths, rpol_collection};
use http::Method;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher;
use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::render::{CONFIG_HASH_ANNOTATION, Settings};
use trellis_operator::apply::APPLIED_HASH_ANNOTATION;
use trellis_operator::controller::{Context, mesh_service, resilience_policy};
use trellis_operator::metrics::Metrics;

const NS: &str = "shop";

fn service(name: &str, replicas: i32, upstreams: &[&str], image: &str) -> Value {
    json!({
        "apiVersion": "mesh.trellis.dev/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"image": image, "replicas": replicas, "port": 8080, "upstreams": upstreams},
    })
}

fn policy(name: &str, target: &str, created: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["targetRef"] = json!({"kind": "MeshService", "name": target});
    json!({
        "apiVersion": "mesh.trellis.dev/v1alpha1",
        "kind": "ResiliencePolicy",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1,
                     "creationTimestamp": created},
        "spec": spec,
    })
}

fn setup() -> (FakeApi, Arc<Context>) {
    let (client, fake) = FakeApi::new();
    let ctx = Arc::new(Context::new(
        client,
        Settings::default(),
        Metrics::new(),
        Some("test".into()),
    ));
    (fake, ctx)
}

fn svc_path(name: &str) -> String {
    format!("{}/{name}", msvc_collection(NS))
}

fn load_svc(fake: &FakeApi, name: &str) -> Arc<MeshService> {
    Arc::new(
        serde_json::from_value(fake.get(&svc_path(name)).expect("meshservice")).expect("parses"),
    )
}

fn load_policy(fake: &FakeApi, name: &str) -> Arc<ResiliencePolicy> {
    let path = format!("{}/{name}", rpol_collection(NS));
    Arc::new(serde_json::from_value(fake.get(&path).expect("policy")).expect("parses"))
}

async fn reconcile(
    fake: &FakeApi,
    ctx: &Arc<Context>,
    name: &str,
) -> Result<Action, trellis_operator::Error> {
    fake.clear_requests();
    let started = Instant::now();
    let result = mesh_service::reconcile(load_svc(fake, name), ctx.clone()).await;
    eprintln!(
        "reconcile {name}: {:?} in {:?}, {} requests ({} writes)",
        result.as_ref().map(|_| "ok"),
        started.elapsed(),
        fake.requests().len(),
        fake.writes().len()
    );
    result
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} missing in {status:#}"))
}

fn write_targets(fake: &FakeApi) -> Vec<String> {
    fake.writes()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target()))
        .collect()
}

fn seed_shop(fake: &FakeApi) {
    fake.insert(
        &msvc_collection(NS),
        service("orders", 2, &["payments"], "reg/orders:1"),
    );
    fake.insert(
        &msvc_collection(NS),
        service("payments", 1, &[], "reg/payments:1"),
    );
}

#[tokio::test]
async fn create_path_applies_every_child_with_ssa_and_reports_status() {
    let (fake, ctx) = setup();
    seed_shop(&fake);

    let action = reconcile(&fake, &ctx, "orders").await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));

    let applies: Vec<_> = fake
        .writes()
        .into_iter()
        .filter(|r| r.method == Method::PATCH && !r.path.ends_with("/status"))
        .collect();
    assert_eq!(applies.len(), 7, "{:?}", write_targets(&fake));
    for r in &applies {
        assert!(r.content_type.contains("apply-patch"), "{r:?}");
        assert!(
            r.query.contains("fieldManager=trellis-operator") && r.query.contains("force=true"),
            "{r:?}"
        );
    }
    for (kind, path) in paths(NS, "orders") {
        let obj = fake
            .get(&path)
            .unwrap_or_else(|| panic!("{kind} not created"));
        let meta = &obj["metadata"];
        assert_eq!(meta["ownerReferences"][0]["uid"], "uid-orders", "{kind}");
        assert_eq!(meta["ownerReferences"][0]["controller"], true, "{kind}");
        assert!(
            meta["annotations"][APPLIED_HASH_ANNOTATION].is_string(),
            "{kind}"
        );
        assert_eq!(
            meta["labels"]["app.kubernetes.io/managed-by"], "trellis-operator",
            "{kind}"
        );
    }
    let deployment = fake.get(&paths(NS, "orders")["Deployment"]).unwrap();
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
            .is_string()
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "trellis-proxy"
    );

    let status = &fake.get(&svc_path("orders")).unwrap()["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Ready")["reason"], "ReplicasNotReady");
    assert_eq!(condition(status, "Progressing")["status"], "True");
    assert_eq!(condition(status, "Degraded")["status"], "False");
    assert_eq!(condition(status, "PoliciesResolved")["status"], "True");

    let events = fake.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["reason"], "Created");
    assert!(
        events[0]["note"]
            .as_str()
            .unwrap()
            .contains("Deployment orders")
    );
    assert_eq!(events[0]["regarding"]["name"], "orders");
}

#[tokio::test]
async fn noop_reconcile_issues_no_writes() {
    let (fake, ctx) = setup();
    seed_shop(&fake);
    reconcile(&fake, &ctx, "orders").await.unwrap();
    assert!(!fake.writes().is_empty());

    let before = ctx.metrics.total_writes();
    reconcile(&fake, &ctx, "orders").await.unwrap();
    assert_eq!(write_targets(&fake), Vec::<String>::new());
    assert!(fake.events().is_empty());
    assert_eq!(ctx.metrics.total_writes(), before);
    // Reads only: two lists, a GET per child.
    assert!(fake.requests().iter().all(|r| r.method == Method::GET));
}

#[tokio::test]
async fn policy_change_updates_the_config_map_and_keeps_the_pods() {
    let (fake, ctx) = setup();
    seed_shop(&fake);
    reconcile(&fake, &ctx, "orders").await.unwrap();
    let paths = paths(NS, "orders");
    let hash = |fake: &FakeApi| {
        fake.get(&paths["Deployment"]).unwrap()["spec"]["template"]["metadata"]["annotations"]
            [CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let old_hash = hash(&fake);

    fake.insert(
        &rpol_collection(NS),
        policy(
            "payments-timeouts",
            "payments",
            "2024-01-01T00:00:00Z",
            json!({"timeout": {"request": "2s"}}),
        ),
    );
    reconcile(&fake, &ctx, "orders").await.unwrap();

    let mut written = write_targets(&fake);
    written.sort();
    // Running sidecars reload the mounted file: the pod template stays.
    assert_eq!(written, vec!["PATCH configmaps/orders-proxy"]);
    assert_eq!(hash(&fake), old_hash);
    let config = fake.get(&paths["ConfigMap"]).unwrap();
    let yaml = config["data"]["proxy.yaml"].as_str().unwrap();
    assert!(yaml.contains("request: 2s"), "{yaml}");
    assert!(yaml.contains("payments-timeouts"), "{yaml}");
    let events = fake.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "Updated");

    // And settles: nothing more to write.
    reconcile(&fake, &ctx, "orders").await.unwrap();
    assert_eq!(write_targets(&fake), Vec::<String>::new());
}

#[tokio::test]
async fn pdb_is_deleted_when_scaled_to_one() {
    let (fake, ctx) = setup();
    seed_shop(&fake);
    reconcile(&fake, &ctx, "orders").await.unwrap();
    let pdb = paths(NS, "orders")["PodDisruptionBudget"].clone();
    assert!(fake.get(&pdb).is_some());

    fake.update(&svc_path("orders"), |o| {
        o["spec"]["replicas"] = json!(1);
        o["metadata"]["generation"] = json!(2);
    });
    reconcile(&fake, &ctx, "orders").await.unwrap();
    assert!(fake.get(&pdb).is_none());
    let written = write_targets(&fake);
    assert!(
        written.contains(&"DELETE poddisruptionbudgets/orders".to_string()),
        "{written:?}"
    );
    assert!(
        written.contains(&"PATCH deployments/orders".to_string()),
        "{written:?}"
    );
}

#[tokio::test]
async fn conflict_fails_the_reconcile_and_requeues_soon() {
    let (fake, ctx) = setup();
    seed_shop(&fake);
    fake.fail_next(Method::PATCH, "/deployments/orders", 409, "Conflict");

    let svc = load_svc(&fake, "orders");
    let err = mesh_service::reconcile(svc.clone(), ctx.clone())
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(err.metric_label(), "conflict");
    let action = mesh_service::error_policy(svc.clone(), &err, ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_millis(200)));
    assert!(ctx.metrics.render().contains(
        "trellis_operator_reconcile_errors_total{controller=\"meshservice\",reason=\"conflict\"} 1"
    ));
    assert!(
        fake.events()
            .iter()
            .any(|e| e["reason"] == "ReconcileFailed" && e["type"] == "Warning")
    );

    // The retry re-reads and succeeds.
    reconcile(&fake, &ctx, "orders").await.unwrap();
    assert!(fake.get(&paths(NS, "orders")["Deployment"]).is_some());
}

#[tokio::test]
async fn other_errors_back_off_exponentially() {
    let (fake, ctx) = setup();
    seed_shop(&fake);
    let svc = load_svc(&fake, "orders");
    let mut delays = Vec::new();
    for _ in 0..4 {
        fake.fail_next(
            Method::GET,
            "/resiliencepolicies",
            503,
            "ServiceUnavailable",
        );
        let err = mesh_service::reconcile(svc.clone(), ctx.clone())
            .await
            .unwrap_err();
        assert_eq!(err.metric_label(), "server_error");
        delays.push(mesh_service::error_policy(svc.clone(), &err, ctx.clone()));
    }
    let secs: Vec<Action> = [1, 2, 4, 8]
        .iter()
        .map(|s| Action::requeue(Duration::from_secs(*s)))
        .collect();
    assert_eq!(delays, secs);
    assert!(
        ctx.metrics
            .render()
            .contains("trellis_operator_requeues_pending{controller=\"meshservice\"} 1")
    );
    // Success forgets the failures.
    mesh_service::reconcile(svc.clone(), ctx.clone())
        .await
        .unwrap();
    assert!(
        ctx.metrics
            .render()
            .contains("trellis_operator_requeues_pending{controller=\"meshservice\"} 0")
    );
}

#[tokio::test]
async fn empty_image_is_degraded_invalid_spec_and_deploys_nothing() {
    let (fake, ctx) = setup();
    fake.insert(&msvc_collection(NS), service("orders", 1, &[], ""));
    let action = reconcile(&fake, &ctx, "orders").await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(write_targets(&fake), vec!["PATCH orders/status"]);
    let status = &fake.get(&svc_path("orders")).unwrap()["status"];
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("spec.image is empty")
    );
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert!(
        fake.events()
            .iter()
            .any(|e| e["reason"] == "InvalidSpec" && e["type"] == "Warning")
    );

    // Stable: a second pass writes nothing and repeats no event.
    reconcile(&fake, &ctx, "orders").await.unwrap();
    assert!(fake.writes().is_empty());
    assert!(fake.events().is_empty());
}

#[tokio::test]
async fn missing_upstream_is_named() {
    let (fake, ctx) = setup();
    fake.insert(
        &msvc_collection(NS),
        service("orders", 1, &["payments", "ghost"], "reg/orders:1"),
    );
    fake.insert(
        &msvc_collection(NS),
        service("payments", 1, &[], "reg/payments:1"),
    );
    reconcile(&fake, &ctx, "orders").await.unwrap();
    let status = &fake.get(&svc_path("orders")).unwrap()["status"];
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "UpstreamNotFound");
    let msg = degraded["message"].as_str().unwrap();
    assert!(
        msg.contains("\"ghost\"") && !msg.contains("\"payments\""),
        "{msg}"
    );
}

#[tokio::test]
async fn policy_conflicts_are_reported_with_both_names() {
    let (fake, ctx) = setup();
    seed_shop(&fake);
    fake.insert(
        &rpol_collection(NS),
        policy(
            "p-old",
            "payments",
            "2024-01-01T00:00:00Z",
            json!({"timeout": {"request": "2s"}}),
        ),
    );
    fake.insert(
        &rpol_collection(NS),
        policy(
            "p-new",
            "payments",
            "2024-02-01T00:00:00Z",
            json!({"timeout": {"request": "5s"}}),
        ),
    );
    reconcile(&fake, &ctx, "orders").await.unwrap();
    let status = &fake.get(&svc_path("orders")).unwrap()["status"];
    let resolved = condition(status, "PoliciesResolved");
    assert_eq!(resolved["status"], "False");
    assert_eq!(resolved["reason"], "Conflict");
    let msg = resolved["message"].as_str().unwrap();
    assert!(msg.contains("p-new") && msg.contains("p-old"), "{msg}");

    // The target lists the winner as the policy in effect for calls into it.
    reconcile(&fake, &ctx, "payments").await.unwrap();
    let status = &fake.get(&svc_path("payments")).unwrap()["status"];
    assert_eq!(status["policies"], json!(["p-old"]));
}

#[tokio::test]
async fn ready_and_pending_replicas_drive_ready_and_progressing() {
    let (fake, ctx) = setup();
    seed_shop(&fake);
    reconcile(&fake, &ctx, "orders").await.unwrap();
    let dep = paths(NS, "orders")["Deployment"].clone();

    fake.update(&dep, |d| {
        let generation = d["metadata"]["generation"].clone();
        d["status"] = json!({"observedGeneration": generation, "replicas": 2, "readyReplicas": 2,
                             "updatedReplicas": 2, "availableReplicas": 2});
    });
    reconcile(&fake, &ctx, "orders").await.unwrap();
    let status = &fake.get(&svc_path("orders")).unwrap()["status"];
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "Progressing")["status"], "False");
    assert_eq!(status["readyReplicas"], 2);
    assert_eq!(write_targets(&fake), vec!["PATCH orders/status"]);

    // Pods Pending: none ready.
    fake.update(&dep, |d| {
        d["status"]["readyReplicas"] = json!(0);
        d["status"]["availableReplicas"] = json!(0);
    });
    reconcile(&fake, &ctx, "orders").await.unwrap();
    let status = &fake.get(&svc_path("orders")).unwrap()["status"];
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("0 of 2 replicas ready")
    );
    assert_eq!(condition(status, "Progressing")["status"], "True");

    // Stuck rollout: Degraded with a hint.
    fake.update(&dep, |d| {
        d["status"]["conditions"] = json!([{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded", "message": "timed out"}]);
    });
    reconcile(&fake, &ctx, "orders").await.unwrap();
    let status = &fake.get(&svc_path("orders")).unwrap()["status"];
    assert_eq!(condition(status, "Degraded")["reason"], "RolloutStuck");
    assert_eq!(
        condition(status, "Progressing")["reason"],
        "ProgressDeadlineExceeded"
    );
}

#[tokio::test]
async fn policy_status_target_not_found_then_accepted() {
    let (fake, ctx) = setup();
    fake.insert(
        &rpol_collection(NS),
        policy(
            "pay",
            "payments",
            "2024-01-01T00:00:00Z",
            json!({"retry": {"attempts": 2}}),
        ),
    );
    fake.clear_requests();
    resilience_policy::reconcile(load_policy(&fake, "pay"), ctx.clone())
        .await
        .unwrap();
    let status = &fake.get(&format!("{}/pay", rpol_collection(NS))).unwrap()["status"];
    let accepted = condition(status, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "TargetNotFound");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("\"payments\"")
    );
    assert!(
        fake.events()
            .iter()
            .any(|e| e["reason"] == "TargetNotFound")
    );

    seed_shop(&fake);
    fake.clear_requests();
    resilience_policy::reconcile(load_policy(&fake, "pay"), ctx.clone())
        .await
        .unwrap();
    let status = &fake.get(&format!("{}/pay", rpol_collection(NS))).unwrap()["status"];
    assert_eq!(condition(status, "Accepted")["status"], "True");
    assert_eq!(condition(status, "Conflicted")["status"], "False");
    assert_eq!(status["appliedTo"], json!(["orders"]));
    assert_eq!(status["observedGeneration"], 1);

    fake.clear_requests();
    resilience_policy::reconcile(load_policy(&fake, "pay"), ctx.clone())
        .await
        .unwrap();
    assert!(
        fake.writes().is_empty(),
        "no-op policy reconcile wrote {:?}",
        write_targets(&fake)
    );
}

#[tokio::test]
async fn newer_policy_is_conflicted_naming_the_winner() {
    let (fake, ctx) = setup();
    seed_shop(&fake);
    fake.insert(
        &rpol_collection(NS),
        policy(
            "p-old",
            "payments",
            "2024-01-01T00:00:00Z",
            json!({"timeout": {"request": "2s"}}),
        ),
    );
    fake.insert(
        &rpol_collection(NS),
        policy(
            "p-new",
            "payments",
            "2024-02-01T00:00:00Z",
            json!({"timeout": {"request": "5s"}}),
        ),
    );
    for name in ["p-old", "p-new"] {
        resilience_policy::reconcile(load_policy(&fake, name), ctx.clone())
            .await
            .unwrap();
    }
    let new = &fake.get(&format!("{}/p-new", rpol_collection(NS))).unwrap()["status"];
    let conflicted = condition(new, "Conflicted");
    assert_eq!(conflicted["status"], "True");
    assert!(conflicted["message"].as_str().unwrap().contains("p-old"));
    assert_eq!(condition(new, "Accepted")["reason"], "Conflicted");
    let old = &fake.get(&format!("{}/p-old", rpol_collection(NS))).unwrap()["status"];
    assert_eq!(condition(old, "Conflicted")["status"], "False");
    assert_eq!(condition(old, "Accepted")["status"], "True");
}

#[tokio::test]
async fn watch_mappers_find_the_affected_objects() {
    let parse_svc = |v: Value| -> MeshService { serde_json::from_value(v).unwrap() };
    let (services, mut writer) = reflector::store::<MeshService>();
    for s in [
        service("orders", 1, &["payments", "users"], "x"),
        service("gateway", 1, &["orders"], "x"),
        service("payments", 1, &[], "x"),
    ] {
        writer.apply_watcher_event(&watcher::Event::Apply(parse_svc(s)));
    }
    let p: ResiliencePolicy =
        serde_json::from_value(policy("pay", "payments", "2024-01-01T00:00:00Z", json!({})))
            .unwrap();
    let names = |refs: Vec<kube::runtime::reflector::ObjectRef<MeshService>>| -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    };
    // The target (inbound limits) and its callers; not unrelated services.
    assert_eq!(
        names(mesh_service::services_for_policy(&services, &p)),
        vec!["orders", "payments"]
    );
    // A new upstream wakes its callers.
    let orders = parse_svc(service("orders", 1, &[], "x"));
    assert_eq!(
        names(mesh_service::callers_of(&services, &orders)),
        vec!["gateway"]
    );

    let (policies, mut pwriter) = reflector::store::<ResiliencePolicy>();
    pwriter.apply_watcher_event(&watcher::Event::Apply(p.clone()));
    let other: ResiliencePolicy =
        serde_json::from_value(policy("users", "users", "2024-01-01T00:00:00Z", json!({})))
            .unwrap();
    pwriter.apply_watcher_event(&watcher::Event::Apply(other));
    let pnames = |refs: Vec<kube::runtime::reflector::ObjectRef<ResiliencePolicy>>| -> Vec<String> {
        let mut v: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        v.sort();
        v
    };
    let gateway = parse_svc(service("gateway", 1, &["orders"], "x"));
    assert!(pnames(resilience_policy::policies_for_service(&policies, &gateway)).is_empty());
    let orders = parse_svc(service("orders", 1, &["payments", "users"], "x"));
    assert_eq!(
        pnames(resilience_policy::policies_for_service(&policies, &orders)),
        vec!["pay", "users"]
    );
    let payments = parse_svc(service("payments", 1, &[], "x"));
    assert_eq!(
        pnames(resilience_policy::policies_for_service(
            &policies, &payments
        )),
        vec!["pay"]
    );
}

#[tokio::test]
async fn reconcile_latency_and_counts() {
    // Not a benchmark: records what one reconcile costs against the in-memory API.
    let (fake, ctx) = setup();
    seed_shop(&fake);
    let mut timings = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        reconcile(&fake, &ctx, "orders").await.unwrap();
        timings.push(t.elapsed());
    }
    let reconciles = ctx.metrics.total_reconciles();
    assert_eq!(reconciles, 20);
    timings.sort();
    eprintln!(
        "20 reconciles of one MeshService (first creates 7 objects, 19 no-ops): p50 {:?}, max {:?}, writes {}",
        timings[10],
        timings[19],
        ctx.metrics.total_writes()
    );
    assert_eq!(
        ctx.metrics.total_writes(),
        8,
        "7 applies + 1 status, then nothing"
    );
}
