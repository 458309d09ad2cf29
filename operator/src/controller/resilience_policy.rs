//! The ResiliencePolicy reconciler: is the policy in effect, for whom, and what beats it.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use trellis_api::crd::{MeshService, ResiliencePolicy, ResiliencePolicyStatus};
use trellis_api::resolve::{Conflict, resolve};

use super::{Context, RESYNC, key, retry_after};
use crate::conditions::{condition, find};
use crate::error::{Error, Result};

pub const CONTROLLER: &str = "resiliencepolicy";

pub const ACCEPTED: &str = "Accepted";
pub const CONFLICTED: &str = "Conflicted";

/// Reconciles the status of one ResiliencePolicy.
#[tracing::instrument(skip(policy, ctx), fields(namespace = policy.metadata.namespace.as_deref().unwrap_or(""), name = policy.metadata.name.as_deref().unwrap_or("")))]
pub async fn reconcile(policy: Arc<ResiliencePolicy>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let ns = policy.namespace().ok_or(Error::MissingField {
        kind: "ResiliencePolicy",
        field: "metadata.namespace",
    })?;
    let name = policy.name_any();
    let result = reconcile_policy(&policy, &ctx, &ns, &name).await;
    if result.is_ok() {
        ctx.succeeded(CONTROLLER, &key(&ns, &name));
    }
    result
}

/// Requeues a failed ResiliencePolicy with backoff.
pub fn error_policy(policy: Arc<ResiliencePolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key(
        policy.metadata.namespace.as_deref().unwrap_or(""),
        &policy.name_any(),
    );
    retry_after(&ctx, CONTROLLER, key, error)
}

async fn reconcile_policy(
    policy: &ResiliencePolicy,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Action> {
    let (policies, services) = ctx.mesh_objects(ns).await?;

    // Resolve what the API server has, with this object as the controller saw it.
    let mut all: Vec<ResiliencePolicy> = policies
        .into_iter()
        .filter(|p| p.name_any() != name)
        .collect();
    all.push(policy.clone());
    let resolution = resolve(&all);
    let conflicts: Vec<Conflict> = resolution
        .conflicts()
        .iter()
        .filter(|c| c.namespace == ns && c.policy == name)
        .cloned()
        .collect();
    let in_effect = resolution.is_in_effect(ns, name);
    let status = compute_status(policy, &services, &conflicts, in_effect);

    if policy.status.as_ref() != Some(&status) {
        let was_conflicted = policy
            .status
            .as_ref()
            .is_some_and(|s| crate::conditions::is_true(&s.conditions, CONFLICTED));
        let api = Api::<ResiliencePolicy>::namespaced(ctx.client.clone(), ns);
        let patch = serde_json::json!({
            "apiVersion": ResiliencePolicy::api_version(&()),
            "kind": ResiliencePolicy::kind(&()),
            "status": &status,
        });
        let params = PatchParams::apply(&ctx.field_manager).force();
        api.patch_status(name, &params, &Patch::Apply(&patch))
            .await
            .map_err(|e| Error::kube(format!("writing status of ResiliencePolicy {name}"), e))?;
        ctx.metrics.wrote(CONTROLLER, "ResiliencePolicy", "status");
        if let Some(c) = find(&status.conditions, CONFLICTED).filter(|c| c.status == "True")
            && !was_conflicted
        {
            ctx.publish(
                &policy.object_ref(&()),
                EventType::Warning,
                "Conflict",
                "Resolve",
                c.message.clone(),
            )
            .await;
        }
        if let Some(c) = find(&status.conditions, ACCEPTED).filter(|c| c.status == "False") {
            ctx.publish(
                &policy.object_ref(&()),
                EventType::Warning,
                &c.reason,
                "Resolve",
                c.message.clone(),
            )
            .await;
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// The status a policy should have. Pure.
pub fn compute_status(
    policy: &ResiliencePolicy,
    services: &[MeshService],
    conflicts: &[Conflict],
    in_effect: bool,
) -> ResiliencePolicyStatus {
    let ns = policy.metadata.namespace.as_deref().unwrap_or_default();
    let target = policy.spec.target_ref.name.as_str();
    let generation = policy.metadata.generation;
    let previous: &[Condition] = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let cond = |type_: &str, status: bool, reason: &str, message: String| {
        condition(previous, type_, status, reason, message, generation)
    };

    let target_exists = services.iter().any(|s| s.name_any() == target);
    let applied_to: Vec<String> = services
        .iter()
        .filter(|s| s.spec.upstreams.iter().any(|u| u == target))
        .map(|s| s.name_any())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let winners: Vec<String> = conflicts.iter().map(|c| c.to_string()).collect();
    let accepted = if !target_exists {
        cond(
            ACCEPTED,
            false,
            "TargetNotFound",
            format!(
                "targetRef names MeshService {target:?}, which does not exist in namespace {ns}; the policy takes effect when it is created"
            ),
        )
    } else if !in_effect && !conflicts.is_empty() {
        cond(
            ACCEPTED,
            false,
            "Conflicted",
            format!(
                "no part of this policy is in effect: {}",
                winners.join("; ")
            ),
        )
    } else {
        let callers = if applied_to.is_empty() {
            "no MeshService calls it yet".to_string()
        } else {
            format!("applied by {}", applied_to.join(", "))
        };
        cond(
            ACCEPTED,
            true,
            "Accepted",
            format!("in effect for calls into {target}; {callers}"),
        )
    };
    let conflicted = if conflicts.is_empty() {
        cond(
            CONFLICTED,
            false,
            "NoConflict",
            "no older policy sets the same parts of this target".into(),
        )
    } else {
        cond(
            CONFLICTED,
            true,
            "Conflict",
            format!(
                "{}; the older policy wins: merge this one into it or delete one",
                winners.join("; ")
            ),
        )
    };

    ResiliencePolicyStatus {
        observed_generation: generation,
        conditions: vec![accepted, conflicted],
        applied_to,
    }
}

/// Policies whose status a MeshService change can alter: those targeting it, those
/// targeting what it calls, and those that listed it before.
pub fn policies_for_service(
    store: &Store<ResiliencePolicy>,
    svc: &MeshService,
) -> Vec<ObjectRef<ResiliencePolicy>> {
    let ns = svc.namespace();
    let name = svc.name_any();
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == ns)
        .filter(|p| {
            let target = &p.spec.target_ref.name;
            *target == name
                || svc.spec.upstreams.contains(target)
                || p.status
                    .as_ref()
                    .is_some_and(|s| s.applied_to.contains(&name))
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Other policies whose conflicts a policy change can alter: same target, or beaten by it.
pub fn siblings_of(
    store: &Store<ResiliencePolicy>,
    policy: &ResiliencePolicy,
) -> Vec<ObjectRef<ResiliencePolicy>> {
    let ns = policy.namespace();
    let name = policy.name_any();
    let target = &policy.spec.target_ref.name;
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == ns && p.name_any() != name)
        .filter(|p| {
            p.spec.target_ref.name == *target
                || p.status.as_ref().is_some_and(|s| {
                    find(&s.conditions, CONFLICTED)
                        .is_some_and(|c| c.status == "True" && c.message.contains(&name))
                })
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}
