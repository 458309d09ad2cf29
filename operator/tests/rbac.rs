//! operator/rbac.yaml grants what the operator calls (and parses).

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::Deserialize;

fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn rbac_covers_every_call_and_no_wildcards() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rbac.yaml")).unwrap();
    let mut cluster_role = None;
    let mut role = None;
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        let kind = value["kind"].as_str().unwrap().to_string();
        match kind.as_str() {
            "ClusterRole" => {
                cluster_role = Some(serde_yaml::from_value::<ClusterRole>(value).unwrap())
            }
            "Role" => role = Some(serde_yaml::from_value::<Role>(value).unwrap()),
            "ServiceAccount" => drop(serde_yaml::from_value::<ServiceAccount>(value).unwrap()),
            "ClusterRoleBinding" => {
                drop(serde_yaml::from_value::<ClusterRoleBinding>(value).unwrap())
            }
            "RoleBinding" => drop(serde_yaml::from_value::<RoleBinding>(value).unwrap()),
            other => panic!("unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    assert_eq!(kinds.len(), 5);
    let cluster = cluster_role.unwrap().rules.unwrap();
    let own = role.unwrap().rules.unwrap();

    for (group, resources, verbs) in [
        (
            "mesh.trellis.dev",
            &["meshservices", "resiliencepolicies"][..],
            &["get", "list", "watch"][..],
        ),
        (
            "mesh.trellis.dev",
            &["meshservices/status", "resiliencepolicies/status"],
            &["patch"],
        ),
        (
            "apps",
            &["deployments"],
            &["get", "list", "watch", "create", "patch"],
        ),
        (
            "",
            &["services", "serviceaccounts", "configmaps"],
            &["get", "list", "watch", "create", "patch"],
        ),
        (
            "rbac.authorization.k8s.io",
            &["roles", "rolebindings"],
            &["get", "list", "watch", "create", "patch"],
        ),
        (
            "policy",
            &["poddisruptionbudgets"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        (
            "discovery.k8s.io",
            &["endpointslices"],
            &["get", "list", "watch"],
        ),
        ("events.k8s.io", &["events"], &["create", "patch"]),
        ("", &["namespaces"], &["get"]),
        (
            "admissionregistration.k8s.io",
            &[
                "mutatingwebhookconfigurations",
                "validatingwebhookconfigurations",
            ],
            &["get", "patch"],
        ),
    ] {
        for resource in resources {
            for verb in verbs {
                assert!(
                    allows(&cluster, group, resource, verb),
                    "ClusterRole lacks {verb} {group}/{resource}"
                );
            }
        }
    }
    for (group, resource, verbs) in [
        ("", "secrets", &["get", "create", "update"][..]),
        ("coordination.k8s.io", "leases", &["get", "create", "patch"]),
    ] {
        for verb in verbs {
            assert!(
                allows(&own, group, resource, verb),
                "Role lacks {verb} {group}/{resource}"
            );
        }
        assert!(
            !allows(&cluster, group, resource, "get"),
            "{resource} must stay namespaced"
        );
    }
    for rule in cluster.iter().chain(&own) {
        assert!(!rule.verbs.iter().any(|v| v == "*"), "wildcard verb");
        assert!(
            !rule.resources.iter().flatten().any(|r| r == "*"),
            "wildcard resource"
        );
        assert!(
            !rule.resources.iter().flatten().any(|r| r == "pods"),
            "pods are not needed"
        );
    }
}
