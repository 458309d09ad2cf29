//! The custom resources, group `mesh.trellis.dev`, version `v1alpha1`.

mod mesh_service;
mod policy;
mod resilience_policy;
mod retry_on;

pub use mesh_service::*;
pub use policy::*;
pub use resilience_policy::*;
pub use retry_on::*;

use kube::CustomResourceExt;

pub const GROUP: &str = "mesh.trellis.dev";
pub const VERSION: &str = "v1alpha1";

/// Both CRDs as YAML documents, in file order: what `crdgen` prints and `crds/` holds.
pub fn crd_documents() -> Vec<(&'static str, String)> {
    let to_yaml =
        |crd| serde_yaml::to_string(&crd).unwrap_or_else(|e| panic!("CRD serializes: {e}"));
    vec![
        ("meshservices.yaml", to_yaml(MeshService::crd())),
        ("resiliencepolicies.yaml", to_yaml(ResiliencePolicy::crd())),
    ]
}
