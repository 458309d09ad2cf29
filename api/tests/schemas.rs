//! `crds/` and the proxy config schema are generated; these tests fail when
//! they drift from the types, and check what the API server would check of a
//! structural schema without needing one.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use trellis_api::crd::crd_documents;
use trellis_api::proxy::ProxyConfig;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn crds_folder_matches_the_types() {
    for (file, generated) in crd_documents() {
        let path = repo().join("crds").join(file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{} drifted from api/: run `cargo run -p trellis-api --bin crdgen -- crds`",
            path.display()
        );
    }
}

#[test]
fn proxy_config_schema_matches_the_types() {
    let path = repo().join("api/schema/proxy-config.v1.json");
    let generated = serde_json::to_string_pretty(&ProxyConfig::json_schema()).unwrap() + "\n";
    if std::env::var_os("TRELLIS_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} drifted: rerun this test with TRELLIS_BLESS=1",
        path.display()
    );
}

fn crds() -> Vec<CustomResourceDefinition> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("crds")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        out.push(serde_yaml::from_str(&text).expect("a CustomResourceDefinition"));
    }
    assert_eq!(out.len(), 2);
    out
}

/// The structural-schema rules of apiextensions that can be checked offline.
fn check_structural(path: &str, s: &JSONSchemaProps, problems: &mut Vec<String>) {
    let int_or_string = s.x_kubernetes_int_or_string == Some(true);
    let preserve = s.x_kubernetes_preserve_unknown_fields == Some(true);
    if s.type_.is_none() && !int_or_string && !preserve {
        problems.push(format!("{path}: no type"));
    }
    if s.additional_properties.is_some() && s.properties.is_some() {
        problems.push(format!("{path}: additionalProperties beside properties"));
    }
    // The API server warns about (and ignores) formats it does not know.
    const KNOWN_FORMATS: [&str; 9] = [
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "date",
        "date-time",
        "duration",
        "uuid",
    ];
    if let Some(format) = s.format.as_deref().filter(|f| !KNOWN_FORMATS.contains(f)) {
        problems.push(format!(
            "{path}: format {format:?} is unknown to Kubernetes"
        ));
    }
    if preserve {
        problems.push(format!(
            "{path}: x-kubernetes-preserve-unknown-fields is not meant anywhere"
        ));
    }
    for (name, list) in [
        ("allOf", &s.all_of),
        ("anyOf", &s.any_of),
        ("oneOf", &s.one_of),
    ] {
        // Allowed only for int-or-string, where no types may be set inside.
        if list.as_ref().is_some_and(|l| !l.is_empty()) && !int_or_string {
            problems.push(format!("{path}: {name} outside int-or-string"));
        }
    }
    for (name, child) in s.properties.iter().flatten() {
        check_structural(&format!("{path}.{name}"), child, problems);
    }
    if let Some(items) = &s.items {
        match serde_json::to_value(items)
            .ok()
            .and_then(|v| serde_json::from_value::<JSONSchemaProps>(v).ok())
        {
            Some(items) => check_structural(&format!("{path}[]"), &items, problems),
            None => problems.push(format!("{path}: items is not a single schema")),
        }
    }
    let additional = s
        .additional_properties
        .as_ref()
        .map(|ap| serde_json::to_value(ap).unwrap());
    if let Some(Ok(child)) = additional.map(serde_json::from_value::<JSONSchemaProps>) {
        check_structural(&format!("{path}{{}}"), &child, problems);
    }
}

#[test]
fn crds_are_structural() {
    for crd in crds() {
        assert_eq!(crd.spec.group, "mesh.trellis.dev");
        for version in &crd.spec.versions {
            assert_eq!(version.name, "v1alpha1");
            assert!(version.served && version.storage);
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "status subresource"
            );
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap();
            let mut problems = Vec::new();
            check_structural(&crd.spec.names.kind, schema, &mut problems);
            assert!(
                problems.is_empty(),
                "{} is not structural:\n{}",
                crd.spec.names.kind,
                problems.join("\n")
            );
        }
    }
}

#[test]
fn crds_carry_the_cel_rules_and_printer_columns() {
    let crds = crds();
    let rpol = crds
        .iter()
        .find(|c| c.spec.names.kind == "ResiliencePolicy")
        .unwrap();
    let v = &rpol.spec.versions[0];
    let text = serde_json::to_string(v).unwrap();
    for rule in [
        "duration(self.retry.perTryTimeout) <= duration(self.timeout.request)",
        "duration(self.base) <= duration(self.max)",
        "duration(self.openDuration) <= duration(self.maxOpenDuration)",
        "has(self.pathPrefix) || has(self.path)",
    ] {
        assert!(text.contains(rule), "missing CEL rule {rule}");
    }
    let columns: Vec<&str> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Target", "Accepted", "Conflicted", "Age"]);
    assert_eq!(
        rpol.spec.names.short_names.as_deref(),
        Some(&["rpol".to_string()][..])
    );

    let msvc = crds
        .iter()
        .find(|c| c.spec.names.kind == "MeshService")
        .unwrap();
    let columns: Vec<&str> = msvc.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Ready", "Progressing", "Replicas", "Available", "Age"]
    );
    assert_eq!(
        msvc.spec.names.short_names.as_deref(),
        Some(&["msvc".to_string()][..])
    );
}
