//! The operator against a real API server, etcd and controller manager.
//!
//! Every test runs its own operator instance scoped to its own namespace, and
//! that operator authenticates as the ServiceAccount of `operator/rbac.yaml`
//! (impersonated), so every behaviour here also proves the RBAC file is enough.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::inject::PROXY_CONTAINER;
use trellis_api::parse::from_yaml;
use trellis_api::render::CONFIG_HASH_ANNOTATION;
use trellis_e2e::{ControlPlane, eventually, install_crds, operator_client, test_namespace};
use trellis_operator::{Operator, OperatorConfig};

const WAIT: Duration = Duration::from_secs(30);

struct Env {
    cp: ControlPlane,
    admin: Client,
    ns: String,
}

async fn setup(test: &str) -> Option<Env> {
    let cp = ControlPlane::attach(test)?;
    let admin = cp.client().await.unwrap();
    install_crds(&admin).await.unwrap();
    let ns = test_namespace(&admin, test.split('_').next().unwrap_or("op"))
        .await
        .unwrap();
    Some(Env { cp, admin, ns })
}

async fn start_operator(env: &Env, config: OperatorConfig) -> Operator {
    let client = operator_client(&env.cp).await.unwrap();
    let config = OperatorConfig {
        namespace: Some(env.ns.clone()),
        ..config
    };
    Operator::start(client, config).await.unwrap()
}

/// An operator serving the webhooks on 127.0.0.1 with its self-managed
/// certificate: (operator, webhook address, base64 CA bundle for a `caBundle`).
async fn start_webhook_operator(env: &Env) -> (Operator, std::net::SocketAddr, String) {
    use base64::Engine as _;
    let certs = trellis_operator::CertConfig {
        // The operator may touch Secrets in its own namespace only (operator/rbac.yaml).
        secret_name: format!("trellis-webhook-ca-{}", env.ns),
        secret_namespace: trellis_e2e::operator_service_account().unwrap().0,
        hosts: vec!["127.0.0.1".into()],
        mutating_webhook: None,
        validating_webhook: None,
        ca_validity: Duration::from_secs(3600 * 24),
        cert_validity: Duration::from_secs(3600),
        check_interval: Duration::from_secs(60),
    };
    let webhook = trellis_operator::WebhookConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        certs,
    };
    let op = start_operator(
        env,
        OperatorConfig {
            webhook: Some(webhook),
            ..Default::default()
        },
    )
    .await;
    let addr = op.webhook_addr().unwrap();
    let bundle = eventually(WAIT, || async { op.ca_bundle().filter(|b| !b.is_empty()) })
        .await
        .unwrap();
    (
        op,
        addr,
        base64::engine::general_purpose::STANDARD.encode(bundle),
    )
}

fn mesh_service(name: &str, upstreams: &[&str], replicas: i32) -> MeshService {
    from_yaml(&format!(
        "apiVersion: mesh.trellis.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: {name}}}\nspec: {{image: trellis/{name}:dev, port: 8080, replicas: {replicas}, upstreams: {upstreams:?}}}\n"
    ))
    .unwrap()
}

fn policy(name: &str, target: &str, attempts: u32) -> ResiliencePolicy {
    from_yaml(&format!(
        "apiVersion: mesh.trellis.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: {name}}}\nspec: {{targetRef: {{kind: MeshService, name: {target}}}, retry: {{attempts: {attempts}}}}}\n"
    ))
    .unwrap()
}

async fn create<K>(client: &Client, ns: &str, obj: &K) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), obj)
        .await
        .unwrap()
}

async fn config_hash(client: &Client, ns: &str, name: &str) -> Option<String> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    d.spec?
        .template
        .metadata?
        .annotations?
        .get(CONFIG_HASH_ANNOTATION)
        .cloned()
}

fn condition(msvc: &MeshService, type_: &str) -> Option<(String, String)> {
    let c = msvc
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn mesh_service_becomes_meshed_workload() {
    let Some(env) = setup("render_mesh_service_becomes_meshed_workload").await else {
        return;
    };
    let op = start_operator(&env, OperatorConfig::default()).await;
    let c = &env.admin;
    let started = Instant::now();
    let msvc = create(c, &env.ns, &mesh_service("orders", &["payments"], 2)).await;
    let uid = msvc.uid().unwrap();

    let deploy = eventually(WAIT, || async {
        Api::<Deployment>::namespaced(c.clone(), &env.ns)
            .get_opt("orders")
            .await
            .ok()?
    })
    .await
    .expect("Deployment rendered");
    eprintln!(
        "Deployment created {:?} after the MeshService",
        started.elapsed()
    );
    let pod = deploy
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let sidecar = &pod.init_containers.as_ref().expect("init containers")[0];
    assert_eq!(sidecar.name, PROXY_CONTAINER);
    assert_eq!(
        sidecar.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );

    let owned_by_msvc =
        |refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
            refs.is_some_and(|r| r.iter().any(|o| o.uid == uid && o.controller == Some(true)))
        };
    assert!(owned_by_msvc(deploy.metadata.owner_references.as_ref()));
    macro_rules! owned {
        ($k:ty, $name:expr) => {{
            let obj = eventually(WAIT, || async {
                Api::<$k>::namespaced(c.clone(), &env.ns)
                    .get_opt($name)
                    .await
                    .ok()?
            })
            .await
            .unwrap_or_else(|_| panic!("{} {} rendered", stringify!($k), $name));
            assert!(
                owned_by_msvc(obj.metadata.owner_references.as_ref()),
                "{} owned",
                stringify!($k)
            );
        }};
    }
    owned!(Service, "orders");
    owned!(ServiceAccount, "orders");
    owned!(ConfigMap, "orders-proxy");
    owned!(PodDisruptionBudget, "orders");
    owned!(Role, "orders-trellis-proxy");
    owned!(RoleBinding, "orders-trellis-proxy");

    // The real controller manager makes the ReplicaSet; with no node, pods stay Pending.
    eventually(WAIT, || async {
        let rs = Api::<ReplicaSet>::namespaced(c.clone(), &env.ns)
            .list(&ListParams::default())
            .await
            .ok()?;
        (!rs.items.is_empty()).then_some(())
    })
    .await
    .expect("a ReplicaSet");

    let msvcs = Api::<MeshService>::namespaced(c.clone(), &env.ns);
    let status = eventually(WAIT, || async {
        let m = msvcs.get("orders").await.ok()?;
        let progressing = condition(&m, "Progressing")?;
        (progressing.0 == "True").then_some(m)
    })
    .await
    .expect("Progressing=True");
    let (ready, reason) = condition(&status, "Ready").expect("a Ready condition");
    assert_eq!(
        ready, "False",
        "pods cannot run without a node: Ready must not lie ({reason})"
    );
    let st = status.status.as_ref().unwrap();
    assert_eq!(st.observed_generation, status.metadata.generation);
    // `payments` does not exist: the status says so instead of failing the reconcile.
    let degraded = st
        .conditions
        .iter()
        .map(|c| format!("{} {} {}", c.type_, c.reason, c.message))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        degraded.contains("payments"),
        "the missing upstream is named in status:\n{degraded}"
    );

    let reconciles = op.metrics().total_reconciles();
    eprintln!(
        "reconciles so far: {reconciles}; status complete after {:?}",
        started.elapsed()
    );
    op.shutdown().await;
}

#[tokio::test]
async fn policy_edit_reaches_exactly_the_callers_configs_without_a_rollout() {
    let Some(env) =
        setup("policy_edit_reaches_exactly_the_callers_configs_without_a_rollout").await
    else {
        return;
    };
    let op = start_operator(&env, OperatorConfig::default()).await;
    let c = &env.admin;
    for (name, ups) in [
        ("caller", vec!["payments"]),
        ("bystander", vec!["users"]),
        ("payments", vec![]),
        ("users", vec![]),
    ] {
        create(c, &env.ns, &mesh_service(name, &ups, 1)).await;
    }
    create(c, &env.ns, &policy("payments", "payments", 2)).await;

    let all = ["caller", "bystander", "payments", "users"];
    let cms = Api::<ConfigMap>::namespaced(c.clone(), &env.ns);
    // Each service's pod template hash and proxy config.
    let snapshot = || async {
        let mut state = BTreeMap::new();
        for name in all {
            let cm = cms.get(&format!("{name}-proxy")).await.ok()?;
            let yaml = cm.data?.get("proxy.yaml")?.clone();
            state.insert(name, (config_hash(c, &env.ns, name).await?, yaml));
        }
        Some(state)
    };
    let has_attempts = |n: u32| {
        let cms = cms.clone();
        async move {
            let cm = cms.get("caller-proxy").await.ok()?;
            cm.data?
                .get("proxy.yaml")?
                .contains(&format!("attempts: {n}"))
                .then_some(())
        }
    };
    eventually(WAIT, || has_attempts(2))
        .await
        .expect("the caller's config has the policy");
    let before = eventually(WAIT, snapshot).await.unwrap();

    let rpol = Api::<ResiliencePolicy>::namespaced(c.clone(), &env.ns);
    rpol.patch(
        "payments",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"retry": {"attempts": 4}}})),
    )
    .await
    .unwrap();
    eventually(WAIT, || has_attempts(4))
        .await
        .expect("the caller's ConfigMap follows the policy");
    let after = eventually(WAIT, snapshot).await.unwrap();
    assert_eq!(
        after["caller"].0, before["caller"].0,
        "the caller's sidecars reload the policy: its pods must not roll"
    );
    for name in ["bystander", "payments", "users"] {
        assert_eq!(
            after[name], before[name],
            "{name} does not call payments: neither its config nor its pods change"
        );
    }
    op.shutdown().await;
}

#[tokio::test]
async fn deleting_a_mesh_service_collects_its_children() {
    let Some(env) = setup("gc_deleting_a_mesh_service_collects_its_children").await else {
        return;
    };
    let op = start_operator(&env, OperatorConfig::default()).await;
    let c = &env.admin;
    create(c, &env.ns, &mesh_service("doomed", &[], 2)).await;
    let deploys = Api::<Deployment>::namespaced(c.clone(), &env.ns);
    let cms = Api::<ConfigMap>::namespaced(c.clone(), &env.ns);
    eventually(WAIT, || async { cms.get_opt("doomed-proxy").await.ok()? })
        .await
        .unwrap();
    eventually(WAIT, || async { deploys.get_opt("doomed").await.ok()? })
        .await
        .unwrap();

    Api::<MeshService>::namespaced(c.clone(), &env.ns)
        .delete("doomed", &DeleteParams::background())
        .await
        .unwrap();
    // The garbage collector of the real controller manager follows the owner references.
    eventually(Duration::from_secs(60), || async {
        let gone = deploys.get_opt("doomed").await.ok()?.is_none()
            && cms.get_opt("doomed-proxy").await.ok()?.is_none()
            && Api::<Service>::namespaced(c.clone(), &env.ns)
                .get_opt("doomed")
                .await
                .ok()?
                .is_none()
            && Api::<PodDisruptionBudget>::namespaced(c.clone(), &env.ns)
                .get_opt("doomed")
                .await
                .ok()?
                .is_none();
        gone.then_some(())
    })
    .await
    .expect("children garbage-collected");
    op.shutdown().await;
}

#[tokio::test]
async fn conflicting_policies_are_reported_in_status() {
    let Some(env) = setup("conflict_conflicting_policies_are_reported_in_status").await else {
        return;
    };
    let op = start_operator(&env, OperatorConfig::default()).await;
    let c = &env.admin;
    let rpol = Api::<ResiliencePolicy>::namespaced(c.clone(), &env.ns);
    create(c, &env.ns, &policy("first", "payments", 2)).await;
    // A policy whose target does not exist yet is not accepted...
    let accepted = |name: &'static str, want: &'static str| {
        let rpol = rpol.clone();
        async move {
            let p = rpol.get(name).await.ok()?;
            let c = p
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Accepted")?;
            (c.status == want).then_some(c.reason)
        }
    };
    let reason = eventually(WAIT, || accepted("first", "False"))
        .await
        .expect("Accepted=False");
    assert_eq!(reason, "TargetNotFound");
    // ...and becomes accepted by itself when the target appears.
    create(c, &env.ns, &mesh_service("payments", &[], 1)).await;
    eventually(WAIT, || accepted("first", "True"))
        .await
        .expect("accepted once the target exists");

    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has one-second resolution
    create(c, &env.ns, &policy("second", "payments", 5)).await;
    let conflicted = eventually(WAIT, || async {
        let p = rpol.get("second").await.ok()?;
        let c = p
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Conflicted" && c.status == "True")?;
        Some(c.message)
    })
    .await
    .expect("Conflicted=True on the newer policy");
    assert!(
        conflicted.contains("first"),
        "the message names the winner: {conflicted}"
    );
    op.shutdown().await;
}

#[tokio::test]
async fn webhook_injects_annotated_pods_through_the_api_server() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let Some(env) = setup("webhook_injects_annotated_pods_through_the_api_server").await else {
        return;
    };
    let (op, addr, ca) = start_webhook_operator(&env).await;

    // Only this test's namespace is sent to the webhook: other tests' pods are not affected.
    let name = format!("trellis-inject-{}", env.ns);
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.mesh.trellis.dev",
            "clientConfig": {"url": format!("https://{addr}/inject"), "caBundle": ca},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded"
        }]
    }))
    .unwrap();
    let configs = Api::<MutatingWebhookConfiguration>::all(env.admin.clone());
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();

    let pod = |name: &str, annotated: bool| -> Pod {
        let annotations = if annotated {
            json!({"mesh.trellis.dev/inject": "enabled"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}
        }))
        .unwrap()
    };
    let pods = Api::<Pod>::namespaced(env.admin.clone(), &env.ns);
    // The API server may take a moment to pick up the new configuration.
    let injected = eventually(WAIT, || async {
        let p = pods
            .create(
                &PostParams::default(),
                &pod(&format!("meshed-{}", rand_suffix()), true),
            )
            .await
            .ok()?;
        let inits = p.spec?.init_containers.unwrap_or_default();
        inits
            .iter()
            .any(|c| c.name == PROXY_CONTAINER && c.restart_policy.as_deref() == Some("Always"))
            .then_some(())
    })
    .await;
    assert!(injected.is_ok(), "the stored pod has the sidecar");
    let plain = pods
        .create(&PostParams::default(), &pod("plain", false))
        .await
        .unwrap();
    assert!(
        plain
            .spec
            .unwrap()
            .init_containers
            .unwrap_or_default()
            .is_empty(),
        "an unannotated pod is untouched"
    );
    configs
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    op.shutdown().await;
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn one_leader_reconciles_and_the_other_takes_over() {
    let Some(env) = setup("leader_one_leader_reconciles_and_the_other_takes_over").await else {
        return;
    };
    let lease = |id: &str| {
        // Leases live in the operator's own namespace (least privilege), one per test.
        let (operator_ns, _) = trellis_e2e::operator_service_account().unwrap();
        let mut le = trellis_operator::LeaderElectionConfig::new(operator_ns, id);
        le.lease_name = format!("trellis-operator-{}", env.ns);
        le.lease_duration = Duration::from_secs(4);
        le.renew_grace = Duration::from_secs(1);
        Some(le)
    };
    let a = start_operator(
        &env,
        OperatorConfig {
            identity: "a".into(),
            leader_election: lease("a"),
            ..Default::default()
        },
    )
    .await;
    let b = start_operator(
        &env,
        OperatorConfig {
            identity: "b".into(),
            leader_election: lease("b"),
            ..Default::default()
        },
    )
    .await;
    let leaders = eventually(WAIT, || async {
        let n = [a.is_leader(), b.is_leader()]
            .iter()
            .filter(|l| **l)
            .count();
        (n == 1).then_some(n)
    })
    .await;
    assert!(leaders.is_ok(), "exactly one leader");
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };

    let c = &env.admin;
    create(c, &env.ns, &mesh_service("first", &[], 1)).await;
    eventually(WAIT, || async { config_hash(c, &env.ns, "first").await })
        .await
        .expect("reconciled by the leader");
    assert!(leader.metrics().total_reconciles() > 0);
    assert_eq!(
        follower.metrics().total_reconciles(),
        0,
        "the follower must not reconcile"
    );
    assert_eq!(
        follower.metrics().total_writes(),
        0,
        "the follower must not write"
    );
    assert!(!follower.is_leader(), "still exactly one leader");

    // The leader stops (crash-like: no graceful release would also work, within the lease duration).
    let stopped = Instant::now();
    leader.shutdown().await;
    eventually(Duration::from_secs(10), || async {
        follower.is_leader().then_some(())
    })
    .await
    .expect("the follower takes over within the lease duration");
    eprintln!("takeover after {:?}", stopped.elapsed());
    create(c, &env.ns, &mesh_service("second", &[], 1)).await;
    eventually(WAIT, || async { config_hash(c, &env.ns, "second").await })
        .await
        .expect("reconciled by the new leader");
    follower.shutdown().await;
}

#[tokio::test]
async fn validating_webhook_denies_what_cel_cannot_see() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let Some(env) = setup("validate_validating_webhook_denies_what_cel_cannot_see").await else {
        return;
    };
    let (op, addr, ca) = start_webhook_operator(&env).await;
    let name = format!("trellis-validate-{}", env.ns);
    let config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "validate.mesh.trellis.dev",
            "clientConfig": {"url": format!("https://{addr}/validate"), "caBundle": ca},
            "rules": [{"apiGroups": ["mesh.trellis.dev"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"], "resources": ["resiliencepolicies"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail"
        }]
    }))
    .unwrap();
    let configs = Api::<ValidatingWebhookConfiguration>::all(env.admin.clone());
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();

    // Two routes with the same match: valid to the schema, but the second could never apply.
    let duplicated: ResiliencePolicy = from_yaml(
        "apiVersion: mesh.trellis.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: dup}\nspec:\n  targetRef: {kind: MeshService, name: payments}\n  routes:\n  - match: {pathPrefix: /pay}\n    retry: {attempts: 1}\n  - match: {pathPrefix: /pay}\n    retry: {attempts: 3}\n",
    )
    .unwrap();
    let rpol = Api::<ResiliencePolicy>::namespaced(env.admin.clone(), &env.ns);
    let denial = eventually(WAIT, || async {
        match rpol.create(&PostParams::default(), &duplicated).await {
            Err(kube::Error::Api(e)) if e.message.contains("duplicates") => Some(e.message),
            Ok(_) => {
                // Created before the API server saw the webhook: remove and try again.
                let _ = rpol.delete("dup", &DeleteParams::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await
    .expect("the API server calls /validate and denies the policy");
    assert!(
        denial.contains("routes[1].match"),
        "the message names the route: {denial}"
    );
    create(&env.admin, &env.ns, &policy("fine", "payments", 2)).await;
    configs
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    op.shutdown().await;
}
