//! What the reconcilers read from watches instead of the API server.
//!
//! Every store here is fed by the same watch that triggers the controller
//! reading it (the object is stored before the trigger fires), so a reconcile
//! never starts from data older than its trigger (except during a re-list:
//! a store keeps its old contents until the list ends, and the periodic
//! resync covers that). With 1,000 MeshServices a
//! LIST of the mesh per reconcile, and a GET per child, cost the API server
//! more than everything else the operator does.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Serialize;
use serde::de::DeserializeOwned;
use trellis_api::crd::{MeshService, ResiliencePolicy};

/// The MeshServices and ResiliencePolicies one controller reads.
#[derive(Clone)]
pub struct MeshView {
    pub services: Store<MeshService>,
    pub policies: Store<ResiliencePolicy>,
}

impl MeshView {
    /// Both stores after their first LIST; `None` once their watches stopped.
    pub async fn ready(&self) -> Option<&Self> {
        let (a, b) = tokio::join!(
            self.services.wait_until_ready(),
            self.policies.wait_until_ready()
        );
        (a.is_ok() && b.is_ok()).then_some(self)
    }

    /// The objects of namespace `ns`.
    pub fn in_namespace(&self, ns: &str) -> (Vec<ResiliencePolicy>, Vec<Arc<MeshService>>) {
        let policies = self
            .policies
            .state()
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .map(|p| p.as_ref().clone())
            .collect();
        let services = self
            .services
            .state()
            .into_iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
            .collect();
        (policies, services)
    }
}

/// The objects the operator owns (labelled as managed by it), as its
/// `owns` watches last saw them.
#[derive(Clone)]
pub struct Children {
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub service_accounts: Store<ServiceAccount>,
    pub config_maps: Store<ConfigMap>,
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    pub budgets: Store<PodDisruptionBudget>,
}

/// A kind of child object, and where [`Children`] keeps it.
pub trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    fn store(children: &Children) -> &Store<Self>;
}

macro_rules! child {
    ($kind:ty, $field:ident) => {
        impl Child for $kind {
            fn store(children: &Children) -> &Store<Self> {
                &children.$field
            }
        }
    };
}

child!(Deployment, deployments);
child!(Service, services);
child!(ServiceAccount, service_accounts);
child!(ConfigMap, config_maps);
child!(Role, roles);
child!(RoleBinding, role_bindings);
child!(PodDisruptionBudget, budgets);

impl Children {
    /// The cached `ns/name` of kind `K`: `Some(None)` when the watch has
    /// none, `None` when the store is not usable (its watch stopped).
    pub async fn get<K: Child>(&self, ns: &str, name: &str) -> Option<Option<Arc<K>>> {
        let store = K::store(self);
        store.wait_until_ready().await.ok()?;
        Some(store.get(&ObjectRef::new(name).within(ns)))
    }
}
