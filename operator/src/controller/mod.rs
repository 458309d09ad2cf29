//! The two controllers (MeshService, ResiliencePolicy), their shared context,
//! and the code that starts them.

pub mod mesh_service;
pub mod resilience_policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::render::Settings;

use crate::metrics::Metrics;
use trellis_api::names::{FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL};

/// Longest wait between retries of a failing object.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often a healthy object is reconciled anyway (drift, missed events).
pub const RESYNC: Duration = Duration::from_secs(300);

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub field_manager: String,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<(&'static str, String), u32>>,
}

impl Context {
    /// The ResiliencePolicies and MeshServices of a namespace, as the API server has them now.
    pub async fn mesh_objects(
        &self,
        ns: &str,
    ) -> crate::error::Result<(Vec<ResiliencePolicy>, Vec<MeshService>)> {
        let all = kube::api::ListParams::default();
        let policies = Api::<ResiliencePolicy>::namespaced(self.client.clone(), ns)
            .list(&all)
            .await
            .map_err(|e| crate::error::Error::kube("listing ResiliencePolicies", e))?
            .items;
        let services = Api::<MeshService>::namespaced(self.client.clone(), ns)
            .list(&all)
            .await
            .map_err(|e| crate::error::Error::kube("listing MeshServices", e))?
            .items;
        Ok((policies, services))
    }

    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            field_manager: FIELD_MANAGER.into(),
            metrics,
            failures: Mutex::default(),
        }
    }

    /// Records a failure of `key` and returns how long to wait before retrying it:
    /// 1s, 2s, 4s ... up to 5 minutes; a conflict retries sooner (the next read sees the new version).
    pub fn backoff(&self, controller: &'static str, key: String, conflict: bool) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry((controller, key)).or_insert(0);
        *n = n.saturating_add(1);
        let exp = n.saturating_sub(1).min(16);
        let base = if conflict {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        let delay = base.saturating_mul(1u32 << exp).min(MAX_BACKOFF);
        let pending = failures.keys().filter(|(c, _)| *c == controller).count();
        self.metrics
            .backlog
            .with_label_values(&[controller])
            .set(pending as i64);
        delay
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, controller: &'static str, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.remove(&(controller, key.to_string())).is_some() {
            let pending = failures.keys().filter(|(c, _)| *c == controller).count();
            self.metrics
                .backlog
                .with_label_values(&[controller])
                .set(pending as i64);
        }
    }

    /// Publishes an event; a failure to publish is logged, never fatal.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let mut note = note;
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(error = %e, reason, "cannot publish event");
        }
    }
}

/// `ns/name` of an object, the key of the backoff table.
pub(crate) fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Where the controllers look: one namespace or all.
pub(crate) fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch whose errors are retried with its own backoff (client-go's: 0.8s
/// doubling to 30s) and logged, never passed on. The Controller's shared
/// trigger backoff would otherwise pause *every* watch after any one error,
/// and after an API server restart (a 410 per watch) recovery would take minutes.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    quiet(
        watcher(api, config).default_backoff().touched_objects(),
        what,
    )
}

fn quiet<K>(
    stream: impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    what: &'static str,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
{
    stream.filter_map(move |r| async move {
        match r {
            Ok(obj) => Some(Ok(obj)),
            Err(e) => {
                tracing::debug!(watch = what, error = %e, "watch error; retrying after backoff");
                None
            }
        }
    })
}

/// Runs both controllers until `shutdown` resolves (graceful: in-flight reconciles finish).
pub async fn run_controllers(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let all = watcher::Config::default;
    let config = ControllerConfig::default().concurrency(concurrency);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let (service_store, writer) = reflector::store::<MeshService>();
    let services_main = quiet(
        watcher(api::<MeshService>(&client, ns), all())
            .default_backoff()
            .reflect(writer)
            .applied_objects(),
        "meshservices",
    );
    let (store_a, store_b) = (service_store.clone(), service_store.clone());
    let services = Controller::for_stream(services_main, service_store)
        .with_config(config.clone())
        .owns_stream(watch(
            api::<Deployment>(&client, ns),
            owned.clone(),
            "deployments",
        ))
        .owns_stream(watch(
            api::<Service>(&client, ns),
            owned.clone(),
            "services",
        ))
        .owns_stream(watch(
            api::<ServiceAccount>(&client, ns),
            owned.clone(),
            "serviceaccounts",
        ))
        .owns_stream(watch(
            api::<ConfigMap>(&client, ns),
            owned.clone(),
            "configmaps",
        ))
        .owns_stream(watch(api::<Role>(&client, ns), owned.clone(), "roles"))
        .owns_stream(watch(
            api::<RoleBinding>(&client, ns),
            owned.clone(),
            "rolebindings",
        ))
        .owns_stream(watch(
            api::<PodDisruptionBudget>(&client, ns),
            owned,
            "poddisruptionbudgets",
        ))
        .watches_stream(
            watch(
                api::<ResiliencePolicy>(&client, ns),
                all(),
                "resiliencepolicies",
            ),
            move |policy| mesh_service::services_for_policy(&store_a, &policy),
        )
        .watches_stream(
            watch(
                api::<MeshService>(&client, ns),
                all(),
                "meshservices (upstreams)",
            ),
            move |svc| mesh_service::callers_of(&store_b, &svc),
        )
        .graceful_shutdown_on(stopped())
        .run(
            mesh_service::reconcile,
            mesh_service::error_policy,
            ctx.clone(),
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "meshservice controller");
            }
        });

    let (policy_store, writer) = reflector::store::<ResiliencePolicy>();
    let policies_main = quiet(
        watcher(api::<ResiliencePolicy>(&client, ns), all())
            .default_backoff()
            .reflect(writer)
            .applied_objects(),
        "resiliencepolicies",
    );
    let sibling_store = policy_store.clone();
    let mapper_store = policy_store.clone();
    let policies = Controller::for_stream(policies_main, policy_store)
        .with_config(config)
        .watches_stream(
            watch(
                api::<MeshService>(&client, ns),
                all(),
                "meshservices (targets)",
            ),
            move |svc| resilience_policy::policies_for_service(&mapper_store, &svc),
        )
        .watches_stream(
            watch(
                api::<ResiliencePolicy>(&client, ns),
                all(),
                "resiliencepolicies (siblings)",
            ),
            move |policy| resilience_policy::siblings_of(&sibling_store, &policy),
        )
        .graceful_shutdown_on(stopped())
        .run(
            resilience_policy::reconcile,
            resilience_policy::error_policy,
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "resiliencepolicy controller");
            }
        });

    let trigger = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    tokio::join!(services, policies, trigger);
}

/// The action after a failed reconcile: exponential backoff per object, faster for conflicts.
pub(crate) fn retry_after(
    ctx: &Context,
    controller: &'static str,
    key: String,
    error: &crate::Error,
) -> Action {
    ctx.metrics
        .reconcile_failed(controller, error.metric_label());
    let delay = ctx.backoff(controller, key, error.is_conflict());
    tracing::warn!(controller, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
