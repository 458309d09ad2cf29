//! Names more than one part of Trellis must spell the same way.

/// The operator's name: its server-side apply field manager, its event
/// reporter and the `app.kubernetes.io/managed-by` value of what it renders.
pub const FIELD_MANAGER: &str = "trellis-operator";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = FIELD_MANAGER;

/// The host names a Service `name` in `namespace` answers to inside the
/// cluster, shortest first: what an app may call an upstream by, and what
/// the webhook's serving certificate must name.
pub fn service_hosts(name: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        name.to_string(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.{cluster_domain}"),
    ]
}
