//! Parsing with errors that name the field: `spec.retry.attempts: 11 is out of range 1..=10`.

use serde::de::DeserializeOwned;

/// A document that failed to parse, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ParseError {
    /// The field path, such as `spec.retry.backoff.base`; `.` for the document itself.
    pub path: String,
    pub reason: String,
}

/// Parses YAML (or JSON, which is YAML) into `T`, naming the failing field.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let mut reason = e.into_inner().to_string();
        // serde_yaml prefixes its own (shorter) path; ours is the full one.
        if let Some((prefix, rest)) = reason.split_once(": ")
            && !prefix.contains(' ')
            && path.starts_with(prefix)
        {
            reason = rest.to_string();
        }
        // It appends " at line L column C"; kept, it helps people find the field.
        ParseError { path, reason }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ResiliencePolicy;

    #[test]
    fn error_names_the_field_path() {
        let doc = r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: p}
spec:
  targetRef: {kind: MeshService, name: payments}
  retry:
    backoff: {base: "25"}
"#;
        let err = from_yaml::<ResiliencePolicy>(doc).unwrap_err();
        assert_eq!(err.path, "spec.retry.backoff.base");
        assert!(
            err.reason.contains("\"25\" is not a duration like 25ms"),
            "{err}"
        );
    }
}
