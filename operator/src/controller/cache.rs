//! The mesh (MeshServices and ResiliencePolicies) as the reconcilers read it:
//! from watches instead of a LIST per reconcile.
//!
//! Every store here is fed by the same watch that triggers the controller
//! reading it, and a trigger fires only once the store has the object
//! (`triggers.rs`, re-lists included), so a reconcile never starts from
//! data older than its trigger. With 1,000 MeshServices a LIST of the
//! whole mesh per reconcile made the work grow with the square of the mesh.

use std::sync::Arc;

use kube::runtime::reflector::Store;
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
