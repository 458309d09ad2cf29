//! `trellis inject`: the sidecar injector for manifests (GitOps), the third
//! door onto `trellis_api::inject` beside the operator and the webhook.

use k8s_openapi::api::core::v1::PodSpec;
use serde::Deserialize;
use serde_yaml::Value;
use trellis_api::inject::{INJECT_ANNOTATION, InjectError, ProxySettings, inject};

/// Which pods get the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Pods annotated `mesh.trellis.dev/inject: enabled`.
    Annotated,
    /// Every pod not annotated `disabled`.
    All,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("document {index}: not YAML: {source}")]
    Yaml {
        index: usize,
        source: serde_yaml::Error,
    },
    #[error("document {index} ({kind} {name}): {at} is not a pod spec: {source}")]
    PodSpec {
        index: usize,
        kind: String,
        name: String,
        at: &'static str,
        source: serde_yaml::Error,
    },
    #[error("document {index} ({kind} {name}): {source}")]
    Inject {
        index: usize,
        kind: String,
        name: String,
        source: InjectError,
    },
}

/// Where a workload keeps its pod template, by kind.
fn pod_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

fn get_mut<'a>(mut v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    for key in path {
        v = v.get_mut(*key)?;
    }
    Some(v)
}

/// Injects the sidecar into every selected workload of a multi-document YAML
/// stream; other documents pass through unchanged.
pub fn inject_manifests(
    input: &str,
    settings: &ProxySettings,
    selection: Selection,
) -> Result<String, Error> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let mut value = Value::deserialize(doc).map_err(|source| Error::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        inject_document(index, &mut value, settings, selection)?;
        out.push(serde_yaml::to_string(&value).map_err(|source| Error::Yaml { index, source })?);
    }
    Ok(out.join("---\n"))
}

fn inject_document(
    index: usize,
    doc: &mut Value,
    settings: &ProxySettings,
    selection: Selection,
) -> Result<(), Error> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = doc.pointer_name();
    let Some(path) = pod_path(&kind) else {
        return Ok(());
    };
    let Some(template) = get_mut(doc, path) else {
        return Ok(());
    };
    let wanted = template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .and_then(Value::as_str);
    let inject_it = match (wanted, selection) {
        (Some("disabled"), _) => false,
        (Some("enabled"), _) => true,
        (_, Selection::All) => true,
        (_, Selection::Annotated) => false,
    };
    if !inject_it {
        return Ok(());
    }
    let Some(spec) = template.get_mut("spec") else {
        return Ok(());
    };
    let at = if path.is_empty() {
        "spec"
    } else {
        "the pod template's spec"
    };
    let pod: PodSpec = serde_yaml::from_value(spec.clone()).map_err(|source| Error::PodSpec {
        index,
        kind: kind.clone(),
        name: name.clone(),
        at,
        source,
    })?;
    let injected = inject(pod, settings).map_err(|source| Error::Inject {
        index,
        kind,
        name,
        source,
    })?;
    *spec = serde_yaml::to_value(&injected).map_err(|source| Error::Yaml { index, source })?;
    Ok(())
}

trait NameOf {
    fn pointer_name(&self) -> String;
}

impl NameOf for Value {
    fn pointer_name(&self) -> String {
        self.get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>")
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {mesh.trellis.dev/inject: enabled}
    spec:
      containers:
      - {name: web, image: nginx, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: plain}
spec:
  selector: {matchLabels: {app: plain}}
  template:
    metadata: {labels: {app: plain}}
    spec:
      containers: [{name: plain, image: busybox}]
"#;

    fn docs(text: &str) -> Vec<Value> {
        serde_yaml::Deserializer::from_str(text)
            .map(|d| Value::deserialize(d).unwrap())
            .collect()
    }

    fn init_names(doc: &Value) -> Vec<String> {
        let inits = &doc["spec"]["template"]["spec"]["initContainers"];
        inits
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn injects_annotated_workloads_only() {
        let out =
            inject_manifests(MANIFESTS, &ProxySettings::default(), Selection::Annotated).unwrap();
        let out = docs(&out);
        assert_eq!(out.len(), 3);
        assert_eq!(init_names(&out[0]), ["trellis-proxy"]);
        assert_eq!(
            out[1],
            docs(MANIFESTS)[1],
            "a Service passes through unchanged"
        );
        assert_eq!(
            out[2],
            docs(MANIFESTS)[2],
            "an unannotated Deployment is untouched"
        );
        let all =
            docs(&inject_manifests(MANIFESTS, &ProxySettings::default(), Selection::All).unwrap());
        assert_eq!(init_names(&all[2]), ["trellis-proxy"]);
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let once = inject_manifests(MANIFESTS, &ProxySettings::default(), Selection::All).unwrap();
        let twice = inject_manifests(&once, &ProxySettings::default(), Selection::All).unwrap();
        assert_eq!(docs(&once), docs(&twice));
    }

    #[test]
    fn refusals_name_the_document() {
        let bad = MANIFESTS.replace("containerPort: 8080", "containerPort: 4143");
        let err =
            inject_manifests(&bad, &ProxySettings::default(), Selection::Annotated).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("document 0 (Deployment web)") && msg.contains("port 4143"),
            "{msg}"
        );
        let err = inject_manifests(
            "kind: Pod\nspec: {containers: 5}\n",
            &ProxySettings::default(),
            Selection::All,
        )
        .unwrap_err();
        assert!(err.to_string().contains("is not a pod spec"), "{err}");
    }
}
