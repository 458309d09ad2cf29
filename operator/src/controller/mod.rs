//! The two controllers (MeshService, ResiliencePolicy), their shared context,
//! and the code that starts them.

pub mod cache;
pub mod mesh_service;
pub mod resilience_policy;
pub mod triggers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::render::Settings;
use triggers::{Fingerprint, Fingerprinted, any_change, spec, spec_and_read_status, triggers};

use crate::metrics::Metrics;
use cache::MeshView;
use trellis_api::names::{FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL};

/// Longest wait between retries of a failing object.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often a healthy object is reconciled anyway (drift, missed events).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How long one reconcile may take before it is given up and retried. The
/// controller starts no second reconcile of an object while one is in
/// flight, so a reconcile that never ends would freeze its object.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(120);

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub field_manager: String,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// How long one reconcile (or one event) may take; [`RECONCILE_TIMEOUT`] by default.
    pub reconcile_timeout: Duration,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<(&'static str, String), u32>>,
    /// The mesh each controller reads while [`run_controllers`] runs; empty between runs.
    views: RwLock<HashMap<&'static str, MeshView>>,
}

impl Context {
    fn view(&self, controller: &'static str) -> Option<MeshView> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        views.get(controller).cloned()
    }

    /// The ResiliencePolicies and MeshServices of a namespace: from the
    /// controller's [`MeshView`] while the controllers run, else (a reconcile
    /// called on its own) as the API server lists them now.
    pub async fn mesh_objects(
        &self,
        controller: &'static str,
        ns: &str,
    ) -> crate::error::Result<(Vec<ResiliencePolicy>, Vec<Arc<MeshService>>)> {
        if let Some(view) = self.view(controller)
            && let Some(view) = view.ready().await
        {
            return Ok(view.in_namespace(ns));
        }
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
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        Ok((policies, services))
    }

    fn set_views(&self, views: HashMap<&'static str, MeshView>) {
        *self.views.write().unwrap_or_else(|e| e.into_inner()) = views;
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
            reconcile_timeout: RECONCILE_TIMEOUT,
            failures: Mutex::default(),
            views: RwLock::default(),
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
        match tokio::time::timeout(
            self.reconcile_timeout,
            self.recorder.publish(&event, regarding),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, reason, "cannot publish event"),
            Err(_) => tracing::warn!(reason, "cannot publish event: timed out"),
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

/// A watch kept in a store, and the reconcile triggers it gives: an object
/// whose `fingerprint` changed, once the store has it ([`triggers`]). Its
/// errors are retried with its own backoff (client-go's: 0.8s doubling to
/// 30s) and logged, never passed on. The Controller's shared
/// trigger backoff would otherwise pause *every* watch after any one error,
/// and after an API server restart (a 410 per watch) recovery would take minutes.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    fingerprint: Fingerprint,
    what: &'static str,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Fingerprinted
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let events = watcher(api, config)
        .default_backoff()
        .modify(forget_managed_fields)
        .reflect(writer);
    let stream = quiet(triggers(events, store.clone(), fingerprint), what);
    (store, stream)
}

/// Drops `metadata.managedFields` before an object is cached: no reconcile
/// reads it, and it is often the larger part of a small object.
fn forget_managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
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
    watch_timeout: Option<u32>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let all = move || match watch_timeout {
        Some(t) => watcher::Config::default().timeout(t),
        None => watcher::Config::default(),
    };
    let owned = all().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let config = ControllerConfig::default().concurrency(concurrency);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    // Our own status writes change no generation, so they trigger nothing.
    let (service_store, services_main) =
        watch(api::<MeshService>(&client, ns), all(), spec, "meshservices");
    let (store_a, store_b) = (service_store.clone(), service_store.clone());
    let (upstream_view, upstream_changes) = watch(
        api::<MeshService>(&client, ns),
        all(),
        spec,
        "meshservices (upstreams)",
    );
    let (policy_view, policy_changes) = watch(
        api::<ResiliencePolicy>(&client, ns),
        all(),
        spec,
        "resiliencepolicies",
    );
    let services_view = MeshView {
        services: upstream_view,
        policies: policy_view,
    };
    let (_, deployment_changes) = watch(
        api::<Deployment>(&client, ns),
        owned.clone(),
        spec_and_read_status,
        "deployments",
    );
    let (_, service_changes) = watch(
        api::<Service>(&client, ns),
        owned.clone(),
        any_change,
        "services",
    );
    let (_, service_account_changes) = watch(
        api::<ServiceAccount>(&client, ns),
        owned.clone(),
        any_change,
        "serviceaccounts",
    );
    let (_, config_map_changes) = watch(
        api::<ConfigMap>(&client, ns),
        owned.clone(),
        any_change,
        "configmaps",
    );
    let (_, role_changes) = watch(api::<Role>(&client, ns), owned.clone(), any_change, "roles");
    let (_, role_binding_changes) = watch(
        api::<RoleBinding>(&client, ns),
        owned.clone(),
        any_change,
        "rolebindings",
    );
    let (_, budget_changes) = watch(
        api::<PodDisruptionBudget>(&client, ns),
        owned,
        any_change,
        "poddisruptionbudgets",
    );
    let services = Controller::for_stream(services_main, service_store)
        .with_config(config.clone())
        .owns_stream(deployment_changes)
        .owns_stream(service_changes)
        .owns_stream(service_account_changes)
        .owns_stream(config_map_changes)
        .owns_stream(role_changes)
        .owns_stream(role_binding_changes)
        .owns_stream(budget_changes)
        .watches_stream(policy_changes, move |policy| {
            mesh_service::services_for_policy(&store_a, &policy)
        })
        .watches_stream(upstream_changes, move |svc| {
            mesh_service::callers_of(&store_b, &svc)
        })
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

    let (policy_store, policies_main) = watch(
        api::<ResiliencePolicy>(&client, ns),
        all(),
        spec,
        "resiliencepolicies",
    );
    let views_owner = ctx.clone();
    let sibling_store = policy_store.clone();
    let mapper_store = policy_store.clone();
    let (target_view, target_changes) = watch(
        api::<MeshService>(&client, ns),
        all(),
        spec,
        "meshservices (targets)",
    );
    let (sibling_view, sibling_changes) = watch(
        api::<ResiliencePolicy>(&client, ns),
        all(),
        spec,
        "resiliencepolicies (siblings)",
    );
    ctx.set_views(HashMap::from([
        (mesh_service::CONTROLLER, services_view),
        (
            resilience_policy::CONTROLLER,
            MeshView {
                services: target_view,
                policies: sibling_view,
            },
        ),
    ]));
    let policies = Controller::for_stream(policies_main, policy_store)
        .with_config(config)
        .watches_stream(target_changes, move |svc| {
            resilience_policy::policies_for_service(&mapper_store, &svc)
        })
        .watches_stream(sibling_changes, move |policy| {
            resilience_policy::siblings_of(&sibling_store, &policy)
        })
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
    views_owner.set_views(HashMap::new());
}

/// Runs one reconcile, ending it with [`Error::Timeout`](crate::Error::Timeout) after `ctx.reconcile_timeout`.
pub(crate) async fn within_deadline<T>(
    ctx: &Context,
    reconcile: impl std::future::Future<Output = crate::error::Result<T>>,
) -> crate::error::Result<T> {
    tokio::time::timeout(ctx.reconcile_timeout, reconcile)
        .await
        .unwrap_or(Err(crate::Error::Timeout(ctx.reconcile_timeout)))
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
