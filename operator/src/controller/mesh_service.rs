//! The MeshService reconciler: render, apply what changed, report status.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use trellis_api::crd::{MeshService, MeshServiceStatus, ResiliencePolicy};
use trellis_api::render::{RenderError, Rendered, render};
use trellis_api::resolve::{Conflict, resolve};

use super::{Context, RESYNC, key, retry_after};
use crate::apply::{Outcome, ensure, kind_of};
use crate::conditions::condition;
use crate::error::{Error, Result, is_not_found};

pub const CONTROLLER: &str = "meshservice";

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const POLICIES_RESOLVED: &str = "PoliciesResolved";

/// Reconciles one MeshService: its children, then its status.
#[tracing::instrument(skip(svc, ctx), fields(namespace = svc.metadata.namespace.as_deref().unwrap_or(""), name = svc.metadata.name.as_deref().unwrap_or("")))]
pub async fn reconcile(svc: Arc<MeshService>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let ns = svc.namespace().ok_or(Error::MissingField {
        kind: "MeshService",
        field: "metadata.namespace",
    })?;
    let name = svc.name_any();
    let result = reconcile_service(&svc, &ctx, &ns, &name).await;
    match &result {
        Ok(_) => ctx.succeeded(CONTROLLER, &key(&ns, &name)),
        Err(e) => {
            ctx.publish(
                &svc.object_ref(&()),
                EventType::Warning,
                "ReconcileFailed",
                "Reconcile",
                e.to_string(),
            )
            .await
        }
    }
    result
}

/// Requeues a failed MeshService with backoff.
pub fn error_policy(svc: Arc<MeshService>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key(
        svc.metadata.namespace.as_deref().unwrap_or(""),
        &svc.name_any(),
    );
    retry_after(&ctx, CONTROLLER, key, error)
}

async fn reconcile_service(
    svc: &MeshService,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Action> {
    let client = &ctx.client;
    let (policies, services) = ctx.mesh_objects(ns).await?;
    let existing: BTreeSet<String> = services.iter().map(|s| s.name_any()).collect();
    let missing: Vec<String> = svc
        .spec
        .upstreams
        .iter()
        .filter(|u| !existing.contains(*u))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let rendered = match render(svc, &policies, &ctx.settings) {
        Ok(r) => r,
        Err(invalid) => {
            let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(|e| Error::kube(format!("reading Deployment {name}"), e))?;
            let resolution = resolve(&policies);
            let conflicts: Vec<Conflict> = resolution
                .conflicts()
                .iter()
                .filter(|c| {
                    c.namespace == ns
                        && (c.target == name || svc.spec.upstreams.contains(&c.target))
                })
                .cloned()
                .collect();
            let status = compute_status(
                svc,
                deployment.as_ref(),
                Some(&invalid),
                &missing,
                &conflicts,
                resolution.policies_for(ns, name),
            );
            let changed = patch_status(svc, ctx, ns, name, status).await?;
            if changed {
                ctx.publish(
                    &svc.object_ref(&()),
                    EventType::Warning,
                    "InvalidSpec",
                    "Render",
                    invalid.to_string(),
                )
                .await;
            }
            // Nothing will change until the spec does.
            return Ok(Action::await_change());
        }
    };

    let (deployment, changes) = apply_children(svc, ctx, ns, name, &rendered).await?;
    announce(svc, ctx, &changes, &rendered.config_hash).await;

    let status = compute_status(
        svc,
        Some(&deployment),
        None,
        &missing,
        &rendered.conflicts,
        rendered.policies.clone(),
    );
    patch_status(svc, ctx, ns, name, status).await?;
    Ok(Action::requeue(RESYNC))
}

/// One write the reconcile made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: String,
    pub name: String,
    pub outcome: Outcome,
}

async fn apply_one<K>(ctx: &Context, ns: &str, obj: K, changes: &mut Vec<Change>) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(ctx.client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    let (live, outcome) = ensure(&api, obj, &ctx.field_manager).await?;
    if outcome != Outcome::Unchanged {
        let kind = kind_of::<K>();
        ctx.metrics.wrote(CONTROLLER, &kind, outcome.as_str());
        changes.push(Change {
            kind,
            name,
            outcome,
        });
    }
    Ok(live)
}

/// Applies every child in dependency order; returns the live Deployment and what changed.
async fn apply_children(
    svc: &MeshService,
    ctx: &Context,
    ns: &str,
    name: &str,
    r: &Rendered,
) -> Result<(Deployment, Vec<Change>)> {
    let mut changes = Vec::new();
    apply_one(ctx, ns, r.service_account.clone(), &mut changes).await?;
    apply_one(ctx, ns, r.role.clone(), &mut changes).await?;
    apply_one(ctx, ns, r.role_binding.clone(), &mut changes).await?;
    // The config before the Deployment: new pods must find the config they hash.
    apply_one(ctx, ns, r.config_map.clone(), &mut changes).await?;
    apply_one(ctx, ns, r.service.clone(), &mut changes).await?;
    let deployment = apply_one(ctx, ns, r.deployment.clone(), &mut changes).await?;
    match &r.pdb {
        Some(pdb) => {
            apply_one(ctx, ns, pdb.clone(), &mut changes).await?;
        }
        None => {
            if delete_owned_pdb(svc, ctx, ns, name).await? {
                changes.push(Change {
                    kind: "PodDisruptionBudget".into(),
                    name: name.into(),
                    outcome: Outcome::Deleted,
                });
            }
        }
    }
    Ok((deployment, changes))
}

/// Deletes the PodDisruptionBudget this MeshService owns, if any (replicas <= 1).
async fn delete_owned_pdb(svc: &MeshService, ctx: &Context, ns: &str, name: &str) -> Result<bool> {
    let api = Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), ns);
    let Some(pdb) = api
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading PodDisruptionBudget {name}"), e))?
    else {
        return Ok(false);
    };
    let uid = svc.metadata.uid.as_deref();
    let owned = pdb
        .owner_references()
        .iter()
        .any(|o| Some(o.uid.as_str()) == uid && o.controller == Some(true));
    if !owned {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => return Ok(false),
        Err(e) => {
            return Err(Error::kube(
                format!("deleting PodDisruptionBudget {name}"),
                e,
            ));
        }
    }
    ctx.metrics
        .wrote(CONTROLLER, "PodDisruptionBudget", "deleted");
    Ok(true)
}

/// One event per kind of change, naming the objects.
async fn announce(svc: &MeshService, ctx: &Context, changes: &[Change], config_hash: &str) {
    let list = |outcome: Outcome| -> Vec<String> {
        changes
            .iter()
            .filter(|c| c.outcome == outcome)
            .map(|c| format!("{} {}", c.kind, c.name))
            .collect()
    };
    let reference = svc.object_ref(&());
    let created = list(Outcome::Created);
    if !created.is_empty() {
        let note = format!("Created {}", created.join(", "));
        ctx.publish(&reference, EventType::Normal, "Created", "Apply", note)
            .await;
    }
    let updated = list(Outcome::Updated);
    if !updated.is_empty() {
        let note = format!(
            "Updated {} (proxy config hash {config_hash})",
            updated.join(", ")
        );
        ctx.publish(&reference, EventType::Normal, "Updated", "Apply", note)
            .await;
    }
    let deleted = list(Outcome::Deleted);
    if !deleted.is_empty() {
        let note = format!(
            "Deleted {} (replicas <= 1 need no disruption budget)",
            deleted.join(", ")
        );
        ctx.publish(&reference, EventType::Normal, "Deleted", "Apply", note)
            .await;
    }
}

/// Writes the status (server-side apply on the status subresource) when it differs.
/// Returns whether it wrote.
async fn patch_status(
    svc: &MeshService,
    ctx: &Context,
    ns: &str,
    name: &str,
    status: MeshServiceStatus,
) -> Result<bool> {
    if svc.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let api = Api::<MeshService>::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": MeshService::api_version(&()),
        "kind": MeshService::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(&ctx.field_manager).force();
    api.patch_status(name, &params, &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::kube(format!("writing status of MeshService {name}"), e))?;
    ctx.metrics.wrote(CONTROLLER, "MeshService", "status");
    Ok(true)
}

/// The status a MeshService should have, from what was observed. Pure.
pub fn compute_status(
    svc: &MeshService,
    deployment: Option<&Deployment>,
    invalid: Option<&RenderError>,
    missing_upstreams: &[String],
    conflicts: &[Conflict],
    policies: Vec<String>,
) -> MeshServiceStatus {
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let generation = svc.metadata.generation;
    let previous: &[Condition] = svc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let cond = |type_: &str, status: bool, reason: &str, message: String| {
        condition(previous, type_, status, reason, message, generation)
    };

    let desired = svc.spec.replicas;
    let dep_status = deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let dep_current = deployment.is_some_and(|d| {
        d.metadata.generation.is_some() && dep_status.observed_generation >= d.metadata.generation
    });
    let total = dep_status.replicas.unwrap_or(0);
    let ready = dep_status.ready_replicas.unwrap_or(0);
    let updated = dep_status.updated_replicas.unwrap_or(0);
    let rolled_out = dep_current && updated >= desired && ready >= desired && total <= desired;
    let stuck = dep_status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let pods = format!("kubectl get pods -n {ns} -l mesh.trellis.dev/service={name}");

    let (ready_c, progressing_c) = if let Some(e) = invalid {
        let msg = format!("{e}; nothing was deployed or changed");
        (
            cond(READY, false, "InvalidSpec", msg.clone()),
            cond(PROGRESSING, false, "InvalidSpec", msg),
        )
    } else if deployment.is_none() {
        let msg = "the Deployment does not exist yet".to_string();
        (
            cond(READY, false, "DeploymentMissing", msg.clone()),
            cond(PROGRESSING, true, "Creating", msg),
        )
    } else if stuck {
        let msg = format!(
            "the rollout made no progress within its deadline ({ready} of {desired} replicas ready); see `kubectl describe deployment -n {ns} {name}` and `{pods}`"
        );
        (
            cond(READY, rolled_out, "RolloutStuck", msg.clone()),
            cond(PROGRESSING, false, "ProgressDeadlineExceeded", msg),
        )
    } else if rolled_out {
        let msg = format!("{ready} of {desired} replicas ready");
        (
            cond(READY, true, "ReplicasReady", msg.clone()),
            cond(PROGRESSING, false, "RolloutComplete", msg),
        )
    } else {
        let msg = format!(
            "{ready} of {desired} replicas ready, {updated} updated; pods may be Pending or starting: `{pods}`"
        );
        (
            cond(READY, false, "ReplicasNotReady", msg.clone()),
            cond(PROGRESSING, true, "RollingOut", msg),
        )
    };

    let degraded_c = if let Some(e) = invalid {
        cond(DEGRADED, true, "InvalidSpec", format!("{e}"))
    } else if !missing_upstreams.is_empty() {
        let quoted: Vec<String> = missing_upstreams.iter().map(|u| format!("{u:?}")).collect();
        cond(
            DEGRADED,
            true,
            "UpstreamNotFound",
            format!(
                "spec.upstreams names {} that {} not a MeshService in namespace {ns}; calls to {} fail until {} created or removed from spec.upstreams",
                quoted.join(", "),
                if quoted.len() == 1 { "is" } else { "are" },
                if quoted.len() == 1 { "it" } else { "them" },
                if quoted.len() == 1 {
                    "it is"
                } else {
                    "they are"
                },
            ),
        )
    } else if stuck {
        cond(
            DEGRADED,
            true,
            "RolloutStuck",
            format!("the Deployment exceeded its progress deadline; see `{pods}`"),
        )
    } else {
        cond(DEGRADED, false, "AsExpected", String::new())
    };

    let resolved_c = if conflicts.is_empty() {
        let msg = match policies.len() {
            0 => format!("no ResiliencePolicy targets {name}"),
            n => format!(
                "{n} ResiliencePolic{} in effect for calls into {name}: {}",
                if n == 1 { "y" } else { "ies" },
                policies.join(", ")
            ),
        };
        cond(POLICIES_RESOLVED, true, "Resolved", msg)
    } else {
        let parts: Vec<String> = conflicts
            .iter()
            .map(|c| {
                let slot = match &c.route {
                    None => "service-level policy".to_string(),
                    Some(m) => format!("route {}", m.describe()),
                };
                format!(
                    "ResiliencePolicy {} is ignored for the {slot} of {} because the older {} sets it",
                    c.policy, c.target, c.winner
                )
            })
            .collect();
        cond(
            POLICIES_RESOLVED,
            false,
            "Conflict",
            format!("{}; merge them or delete the newer one", parts.join("; ")),
        )
    };

    MeshServiceStatus {
        observed_generation: generation,
        replicas: deployment.map(|_| total),
        ready_replicas: deployment.map(|_| ready),
        conditions: vec![ready_c, progressing_c, degraded_c, resolved_c],
        policies,
    }
}

/// MeshServices that call `svc` (their status names it when it is missing).
pub fn callers_of(store: &Store<MeshService>, svc: &MeshService) -> Vec<ObjectRef<MeshService>> {
    let ns = svc.namespace();
    let name = svc.name_any();
    callers(store, ns.as_deref(), &name)
}

fn callers(
    store: &Store<MeshService>,
    ns: Option<&str>,
    target: &str,
) -> Vec<ObjectRef<MeshService>> {
    store
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == ns && s.spec.upstreams.iter().any(|u| u == target))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// MeshServices whose config a policy change can alter: the target (inbound limits),
/// its callers (outbound policy), and the same for a target the policy had before.
pub fn services_for_policy(
    store: &Store<MeshService>,
    policy: &ResiliencePolicy,
) -> Vec<ObjectRef<MeshService>> {
    let ns = policy.namespace();
    let policy_name = policy.name_any();
    let mut targets = BTreeSet::from([policy.spec.target_ref.name.clone()]);
    for s in store.state() {
        if s.namespace() == ns
            && s.status
                .as_ref()
                .is_some_and(|st| st.policies.contains(&policy_name))
        {
            targets.insert(s.name_any());
        }
    }
    let mut refs = Vec::new();
    for t in &targets {
        let mut r = ObjectRef::<MeshService>::new(t);
        if let Some(ns) = &ns {
            r = r.within(ns);
        }
        refs.push(r);
        refs.extend(callers(store, ns.as_deref(), t));
    }
    refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    refs.dedup();
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    fn service(name: &str, upstreams: &[&str], policies: &[&str]) -> MeshService {
        let mut svc: MeshService = serde_yaml::from_str(&format!(
            "apiVersion: mesh.trellis.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{image: app:1, port: 8080, upstreams: {upstreams:?}}}\n"
        ))
        .expect("a valid MeshService");
        if !policies.is_empty() {
            svc.status = Some(MeshServiceStatus {
                policies: policies.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            });
        }
        svc
    }

    fn policy(name: &str, target: &str) -> ResiliencePolicy {
        serde_yaml::from_str(&format!(
            "apiVersion: mesh.trellis.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{targetRef: {{kind: MeshService, name: {target}}}, retry: {{attempts: 2}}}}\n"
        ))
        .expect("a valid ResiliencePolicy")
    }

    fn store(services: Vec<MeshService>) -> Store<MeshService> {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for s in services {
            writer.apply_watcher_event(&Event::InitApply(s));
        }
        writer.apply_watcher_event(&Event::InitDone);
        store
    }

    fn names(refs: Vec<ObjectRef<MeshService>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    /// The chain of the scale benchmark: svc-i calls svc-(i-1), svc-(i-10), svc-(i-100).
    fn chain(n: usize) -> Vec<MeshService> {
        (0..n)
            .map(|i| {
                let ups: Vec<String> = [1, 10, 100]
                    .iter()
                    .filter(|d| i >= **d)
                    .map(|d| format!("svc-{}", i - d))
                    .collect();
                let ups: Vec<&str> = ups.iter().map(String::as_str).collect();
                service(&format!("svc-{i}"), &ups, &[])
            })
            .collect()
    }

    #[test]
    fn a_policy_change_reconciles_only_its_target_and_the_targets_callers() {
        let store = store(chain(300));
        let affected = names(services_for_policy(&store, &policy("pol", "svc-50")));
        // svc-50 (inbound limits) and the three services that call it.
        assert_eq!(affected, ["svc-150", "svc-50", "svc-51", "svc-60"]);
    }

    #[test]
    fn a_retargeted_policy_also_reconciles_its_former_target_and_callers() {
        let store = store(vec![
            service("old", &[], &["pol"]),
            service("new", &[], &[]),
            service("calls-old", &["old"], &[]),
            service("calls-new", &["new"], &[]),
            service("bystander", &["elsewhere"], &[]),
        ]);
        let affected = names(services_for_policy(&store, &policy("pol", "new")));
        assert_eq!(affected, ["calls-new", "calls-old", "new", "old"]);
    }

    #[test]
    fn a_service_change_reconciles_only_its_callers() {
        let store = store(chain(300));
        let svc = service("svc-120", &[], &[]);
        let mut callers = names(callers_of(&store, &svc));
        callers.sort();
        assert_eq!(callers, ["svc-121", "svc-130", "svc-220"]);
    }
}
