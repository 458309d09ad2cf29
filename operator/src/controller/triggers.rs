//! Reconcile triggers from a watch that feeds a store, which never run ahead
//! of that store and skip changes nobody reads.
//!
//! kube's reflector buffers a (re-)list: the `InitApply` objects enter the
//! store only at `InitDone`. A trigger fired per `InitApply` (as
//! `touched_objects` does) starts reconciles that read the store as it was
//! *before* the list: after an API server restart or an expired watch, a
//! Deployment's new `readyReplicas` triggered its MeshService, which read the
//! old Deployment and wrote the old status, and nothing triggered it again
//! once the list landed. A MeshService created during the list was not in
//! the controller's store yet, so its reconcile was dropped. Here a list's
//! objects are held back and released at `InitDone`, after the store has
//! them, together with the objects the list no longer has (deleted while the
//! watch was down).
//!
//! Each object also has a [`Fingerprint`] of what the reconcilers read from
//! it; a change that leaves it alone (our own status write on a MeshService,
//! a Deployment's status fields the status does not report, a list that
//! returns an unchanged object) triggers nothing.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};

/// A hash of the parts of an object a reconcile reads.
pub type Fingerprint = fn(&dyn Fingerprinted) -> u64;

/// What a fingerprint can look at: the object's metadata and, for kinds with
/// one, the status fields that matter.
pub trait Fingerprinted {
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    /// The status fields a reconcile reads, hashed; nothing by default.
    fn hash_read_status(&self, _state: &mut DefaultHasher) {}
}

macro_rules! fingerprinted {
    ($($kind:ty),*) => {$(
        impl Fingerprinted for $kind {
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                Resource::meta(self)
            }
        }
    )*};
}

fingerprinted!(
    trellis_api::crd::MeshService,
    trellis_api::crd::ResiliencePolicy,
    k8s_openapi::api::core::v1::Service,
    k8s_openapi::api::core::v1::ServiceAccount,
    k8s_openapi::api::core::v1::ConfigMap,
    k8s_openapi::api::rbac::v1::Role,
    k8s_openapi::api::rbac::v1::RoleBinding,
    k8s_openapi::api::policy::v1::PodDisruptionBudget
);

impl Fingerprinted for Deployment {
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        Resource::meta(self)
    }

    /// What a MeshService's status reports of its Deployment.
    fn hash_read_status(&self, state: &mut DefaultHasher) {
        let Some(s) = &self.status else { return };
        (
            s.observed_generation,
            s.replicas,
            s.ready_replicas,
            s.updated_replicas,
        )
            .hash(state);
        for c in s.conditions.iter().flatten() {
            (&c.type_, &c.status, &c.reason).hash(state);
        }
    }
}

/// Spec changes only: `metadata.generation` moves with the spec, never with
/// the status (MeshService and ResiliencePolicy have a status subresource).
pub fn spec(obj: &dyn Fingerprinted) -> u64 {
    let mut h = DefaultHasher::new();
    let meta = obj.meta();
    (
        &meta.uid,
        meta.generation,
        meta.deletion_timestamp.is_some(),
    )
        .hash(&mut h);
    h.finish()
}

/// Spec, labels, annotations and the status fields a reconcile reads: for a
/// Deployment, whose readiness a MeshService's status reports.
pub fn spec_and_read_status(obj: &dyn Fingerprinted) -> u64 {
    let mut h = DefaultHasher::new();
    let meta = obj.meta();
    (
        &meta.uid,
        meta.generation,
        meta.deletion_timestamp.is_some(),
        &meta.labels,
        &meta.annotations,
    )
        .hash(&mut h);
    obj.hash_read_status(&mut h);
    h.finish()
}

/// Every change (a new `resourceVersion`): for children without a
/// generation, such as a ConfigMap, whose content the operator owns.
pub fn any_change(obj: &dyn Fingerprinted) -> u64 {
    let mut h = DefaultHasher::new();
    let meta = obj.meta();
    (&meta.uid, &meta.resource_version).hash(&mut h);
    h.finish()
}

/// Turns watch events that already went through `.reflect()` into `store`
/// into the objects whose change should trigger a reconcile.
pub fn triggers<K, S>(
    events: S,
    store: Store<K>,
    fingerprint: Fingerprint,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Fingerprinted + Clone + Send + Sync + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    let state = Triggers::new(store, fingerprint);
    events
        .scan(state, |state, event| {
            let out: Vec<Result<K, watcher::Error>> = match event {
                Ok(event) => state.on(event).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            future::ready(Some(out))
        })
        .flat_map(futures::stream::iter)
}

/// The state behind [`triggers`]: what each object's fingerprint was when it
/// last triggered, and the list in progress.
pub struct Triggers<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    fingerprint: Fingerprint,
    seen: HashMap<ObjectRef<K>, u64>,
    listing: Option<Listing<K>>,
}

struct Listing<K: Resource<DynamicType = ()> + 'static> {
    /// The store's objects when the list began.
    before: Vec<Arc<K>>,
    listed: Vec<K>,
}

impl<K> Triggers<K>
where
    K: Resource<DynamicType = ()> + Fingerprinted + Clone + 'static,
{
    pub fn new(store: Store<K>, fingerprint: Fingerprint) -> Self {
        Triggers {
            store,
            fingerprint,
            seen: HashMap::new(),
            listing: None,
        }
    }

    /// The objects to trigger for `event`. Call it after the store applied it.
    pub fn on(&mut self, event: Event<K>) -> Vec<K> {
        match event {
            Event::Apply(obj) => self.changed(obj).into_iter().collect(),
            Event::Delete(obj) => {
                self.seen.remove(&ObjectRef::from_obj(&obj));
                vec![obj]
            }
            Event::Init => {
                // The store still holds the previous list until InitDone.
                self.listing = Some(Listing {
                    before: self.store.state(),
                    listed: Vec::new(),
                });
                Vec::new()
            }
            Event::InitApply(obj) => {
                match &mut self.listing {
                    Some(listing) => listing.listed.push(obj),
                    // The watcher always sends Init first; be safe anyway.
                    None => return self.changed(obj).into_iter().collect(),
                }
                Vec::new()
            }
            Event::InitDone => {
                let Some(listing) = self.listing.take() else {
                    return Vec::new();
                };
                let still: HashSet<ObjectRef<K>> =
                    listing.listed.iter().map(ObjectRef::from_obj).collect();
                let mut out: Vec<K> = listing
                    .before
                    .iter()
                    .filter(|o| !still.contains(&ObjectRef::from_obj(o.as_ref())))
                    .map(|o| o.as_ref().clone())
                    .collect();
                for gone in &out {
                    self.seen.remove(&ObjectRef::from_obj(gone));
                }
                out.extend(listing.listed.into_iter().filter_map(|o| self.changed(o)));
                out
            }
        }
    }

    fn changed(&mut self, obj: K) -> Option<K> {
        let fp = (self.fingerprint)(&obj);
        let previous = self.seen.insert(ObjectRef::from_obj(&obj), fp);
        (previous != Some(fp)).then_some(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::{self, store::Writer};

    fn deployment(name: &str, generation: i64, ready: i32, available: i32) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.name = Some(name.into());
        d.metadata.namespace = Some("ns".into());
        d.metadata.uid = Some(format!("uid-{name}"));
        d.metadata.generation = Some(generation);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(generation),
            replicas: Some(1),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            ..Default::default()
        });
        d
    }

    fn names(objs: &[Deployment]) -> Vec<String> {
        objs.iter()
            .map(|o| o.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    /// The store and the triggers, fed one event at a time in watch order.
    struct Watch {
        writer: Writer<Deployment>,
        store: Store<Deployment>,
        triggers: Triggers<Deployment>,
    }

    impl Watch {
        fn new() -> Self {
            let (store, writer) = reflector::store();
            let triggers = Triggers::new(store.clone(), spec_and_read_status);
            Watch {
                writer,
                store,
                triggers,
            }
        }

        fn send(&mut self, event: Event<Deployment>) -> Vec<Deployment> {
            self.writer.apply_watcher_event(&event);
            self.triggers.on(event)
        }

        fn ready_in_store(&self, name: &str) -> Option<i32> {
            let d = self.store.get(&ObjectRef::new(name).within("ns"))?;
            d.status.as_ref()?.ready_replicas
        }

        fn list(&mut self, objs: Vec<Deployment>) -> Vec<Deployment> {
            assert!(self.send(Event::Init).is_empty());
            for o in objs {
                assert!(
                    self.send(Event::InitApply(o)).is_empty(),
                    "a listed object triggered before the store had the list"
                );
            }
            self.send(Event::InitDone)
        }
    }

    #[test]
    fn a_relist_triggers_after_the_store_has_it_and_only_for_what_changed() {
        let mut w = Watch::new();
        assert_eq!(
            names(&w.list(vec![deployment("a", 1, 0, 0), deployment("b", 1, 0, 0)])),
            ["a", "b"]
        );
        // While the watch was down, a became ready and b did not change.
        let out = w.list(vec![deployment("a", 1, 1, 1), deployment("b", 1, 0, 0)]);
        assert_eq!(names(&out), ["a"]);
        // Whoever reconciles on that trigger reads the new readiness.
        assert_eq!(w.ready_in_store("a"), Some(1));
    }

    #[test]
    fn a_relist_triggers_for_what_disappeared_with_its_last_state() {
        let mut w = Watch::new();
        w.list(vec![deployment("a", 1, 0, 0), deployment("b", 3, 1, 1)]);
        let out = w.list(vec![deployment("a", 1, 0, 0)]);
        assert_eq!(names(&out), ["b"]);
        assert_eq!(out[0].metadata.generation, Some(3));
        assert_eq!(w.ready_in_store("b"), None);
        // Back again later: a trigger, not "unchanged".
        assert_eq!(
            names(&w.send(Event::Apply(deployment("b", 3, 1, 1)))),
            ["b"]
        );
    }

    #[test]
    fn status_changes_nobody_reads_trigger_nothing() {
        let mut w = Watch::new();
        w.list(vec![deployment("a", 1, 0, 0)]);
        // availableReplicas is not in a MeshService's status.
        assert!(w.send(Event::Apply(deployment("a", 1, 0, 1))).is_empty());
        assert_eq!(
            names(&w.send(Event::Apply(deployment("a", 1, 1, 1)))),
            ["a"]
        );
        assert_eq!(
            names(&w.send(Event::Apply(deployment("a", 2, 1, 1)))),
            ["a"]
        );
        assert_eq!(
            names(&w.send(Event::Delete(deployment("a", 2, 1, 1)))),
            ["a"]
        );
    }

    #[test]
    fn a_status_write_does_not_move_the_spec_fingerprint() {
        let mut d = deployment("a", 4, 0, 0);
        let before = spec(&d);
        d.status = None;
        d.metadata.resource_version = Some("99".into());
        assert_eq!(spec(&d), before);
        d.metadata.generation = Some(5);
        assert_ne!(spec(&d), before);
        // Same name, new object: a new uid is a change.
        let mut again = deployment("a", 4, 0, 0);
        again.metadata.uid = Some("other".into());
        assert_ne!(spec(&again), before);
    }

    #[test]
    fn any_change_follows_the_resource_version() {
        let mut cm = ConfigMap::default();
        cm.metadata.uid = Some("u".into());
        cm.metadata.resource_version = Some("1".into());
        let first = any_change(&cm);
        cm.metadata.resource_version = Some("2".into());
        assert_ne!(any_change(&cm), first);
    }
}
