//! `trellis check` without files: a preflight of a real cluster, one ✓/✗
//! line per fact — the cluster answers, our CRDs are installed at this
//! build's version, the operator holds its lease, its injector webhook
//! answers, every MeshService is Ready and every policy Accepted.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::inject::{INJECT_ANNOTATION, PROXY_CONTAINER};

/// Where the operator is expected.
#[derive(clap::Args, Debug)]
pub struct PreflightArgs {
    /// Namespace of the operator's leader-election Lease.
    #[arg(long, default_value = "trellis-system")]
    pub operator_namespace: String,
    #[arg(long, default_value = "trellis-operator")]
    pub lease: String,
    /// Namespace where a dry-run pod asks the injector webhook to inject it.
    #[arg(long, default_value = "default")]
    pub probe_namespace: String,
}

/// The lines printed so far, and whether any was ✗.
#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, ok: bool, what: impl std::fmt::Display) {
        self.failed |= !ok;
        println!("{} {what}", if ok { "✓" } else { "✗" });
    }
}

/// Runs every check; `Ok(false)` when any failed.
pub async fn preflight(args: &PreflightArgs) -> anyhow::Result<bool> {
    let mut report = Report::default();
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            report.line(
                false,
                format!("cluster reachable: no usable kubeconfig: {e}"),
            );
            return Ok(false);
        }
    };
    match client.apiserver_version().await {
        Ok(v) => report.line(
            true,
            format!("cluster reachable: Kubernetes {}", v.git_version),
        ),
        Err(e) => {
            report.line(false, format!("cluster reachable: {e}"));
            return Ok(false);
        }
    }
    crds(&client, &mut report).await;
    operator(&client, args, &mut report).await;
    webhook(&client, args, &mut report).await;
    each_has(&client, &mut report, "Ready", |s: MeshService| {
        s.status.map(|st| st.conditions).unwrap_or_default()
    })
    .await;
    each_has(&client, &mut report, "Accepted", |p: ResiliencePolicy| {
        p.status.map(|st| st.conditions).unwrap_or_default()
    })
    .await;
    Ok(!report.failed)
}

async fn crds(client: &Client, report: &mut Report) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for ours in [MeshService::crd(), ResiliencePolicy::crd()] {
        let name = ours.metadata.name.clone().unwrap_or_default();
        let what = format!("CRD {name}");
        match api.get_opt(&name).await {
            Ok(Some(installed)) => {
                let versions = |c: &CustomResourceDefinition| {
                    serde_json::to_value(&c.spec.versions).unwrap_or_default()
                };
                let same = versions(&installed) == versions(&ours);
                let names: Vec<_> = ours.spec.versions.iter().map(|v| v.name.as_str()).collect();
                if same {
                    report.line(true, format!("{what} installed at {}", names.join(", ")));
                } else {
                    report.line(
                        false,
                        format!("{what} differs from this trellis's {} (apply crds/ again: trellis crds | kubectl apply --server-side -f -)", names.join(", ")),
                    );
                }
            }
            Ok(None) => report.line(
                false,
                format!("{what} not installed (trellis crds | kubectl apply --server-side -f -)"),
            ),
            Err(e) => report.line(false, format!("{what}: {e}")),
        }
    }
}

async fn operator(client: &Client, args: &PreflightArgs, report: &mut Report) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &args.operator_namespace);
    let what = format!(
        "operator running (Lease {}/{})",
        args.operator_namespace, args.lease
    );
    match api.get_opt(&args.lease).await {
        Ok(Some(lease)) => {
            let spec = lease.spec.unwrap_or_default();
            let holder = spec.holder_identity.unwrap_or_default();
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let age = spec.renew_time.map(|t| {
                let now = k8s_openapi::jiff::Timestamp::now();
                now.as_second() - t.0.as_second()
            });
            match age {
                Some(age) if !holder.is_empty() && age <= duration => report.line(
                    true,
                    format!("{what}: held by {holder}, renewed {age}s ago"),
                ),
                Some(age) => report.line(
                    false,
                    format!("{what}: not renewed for {age}s (duration {duration}s)"),
                ),
                None => report.line(false, format!("{what}: never renewed")),
            }
        }
        Ok(None) => report.line(
            false,
            format!("{what}: no such Lease; is the operator installed?"),
        ),
        Err(e) => report.line(false, format!("{what}: {e}")),
    }
}

async fn webhook(client: &Client, args: &PreflightArgs, report: &mut Report) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &args.probe_namespace);
    let probe: Pod = match serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": "trellis-check-", "annotations": {INJECT_ANNOTATION: "enabled"}},
        "spec": {"containers": [{"name": "app", "image": "trellis/check:dry-run"}]}
    })) {
        Ok(p) => p,
        Err(e) => return report.line(false, format!("injector webhook: {e}")),
    };
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let what = "injector webhook reachable (dry-run pod)";
    match api.create(&dry_run, &probe).await {
        Ok(pod) => {
            let injected = pod
                .spec
                .and_then(|s| s.init_containers)
                .into_iter()
                .flatten()
                .any(|c| c.name == PROXY_CONTAINER);
            if injected {
                report.line(true, format!("{what}: sidecar injected"));
            } else {
                report.line(false, format!("{what}: the pod came back without the sidecar; is the MutatingWebhookConfiguration installed?"));
            }
        }
        Err(e) => report.line(false, format!("{what}: {e}")),
    }
}

fn condition<'a>(conditions: &'a [Condition], kind: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == kind)
}

fn condition_line(report: &mut Report, what: String, conditions: &[Condition], kind: &str) {
    match condition(conditions, kind) {
        Some(c) if c.status == "True" => report.line(true, format!("{what} {kind}")),
        Some(c) => report.line(
            false,
            format!("{what} not {kind}: {} ({})", c.reason, c.message),
        ),
        None => report.line(
            false,
            format!("{what} not {kind}: no status yet (is the operator reconciling?)"),
        ),
    }
}

/// One line per object of kind `K`: whether its `kind` condition is True.
async fn each_has<K>(
    client: &Client,
    report: &mut Report,
    kind: &str,
    conditions: impl Fn(K) -> Vec<Condition>,
) where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let name = K::kind(&());
    match api.list(&ListParams::default()).await {
        Ok(list) if list.items.is_empty() => println!("· no {name} in the cluster"),
        Ok(list) => {
            for object in list.items {
                let meta = object.meta();
                let what = format!(
                    "{name} {}/{}",
                    meta.namespace.clone().unwrap_or_default(),
                    meta.name.clone().unwrap_or_default()
                );
                condition_line(report, what, &conditions(object), kind);
            }
        }
        Err(e) => report.line(false, format!("{name}: {e}")),
    }
}
