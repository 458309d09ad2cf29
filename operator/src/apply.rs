//! Server-side apply that skips writes when the live object already holds
//! what we would write.
//!
//! Each applied object carries [`APPLIED_HASH_ANNOTATION`], the hash of what
//! was rendered. A write is skipped when the live object has the same hash
//! *and* every field we render is present with the same value (so a
//! `kubectl edit` of a field we own is put back, while fields others own or
//! the API server defaulted are left alone).

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use trellis_api::names::{MANAGED_BY, MANAGED_BY_LABEL};

use crate::error::{Error, Result};

/// Hash of the rendered object, on every object the operator applies.
pub const APPLIED_HASH_ANNOTATION: &str = "mesh.trellis.dev/applied-hash";

/// What [`ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    /// Not from [`ensure`]: an object the reconciler removed.
    Deleted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Deleted => "deleted",
        }
    }
}

/// The kind of `K`, for messages and metrics.
pub fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}

/// Hash of an object's JSON form (serde_json sorts nothing, but our types
/// serialize fields in a fixed order and maps are BTreeMaps).
pub fn content_hash<K: Serialize>(obj: &K) -> Result<String> {
    let bytes = serde_json::to_vec(obj).map_err(|source| Error::Serialize {
        what: "object".into(),
        source,
    })?;
    Ok(hex::encode(&Sha256::digest(&bytes)[..12]))
}

/// Applies `desired` with server-side apply (forced, as `field_manager`) unless
/// the live object already matches it. Returns the live object after the call.
pub async fn ensure<K>(api: &Api<K>, desired: K, field_manager: &str) -> Result<(K, Outcome)>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let kind = kind_of::<K>();
    let mut desired = desired;
    let name = desired.meta().name.clone().ok_or(Error::MissingField {
        kind: "rendered object",
        field: "metadata.name",
    })?;
    let hash = content_hash(&desired)?;
    desired
        .labels_mut()
        .insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    desired
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.into(), hash.clone());

    let live = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("reading {kind} {name}"), e))?;
    if let Some(live) = live.as_ref()
        && up_to_date(&desired, live, &hash)?
    {
        return Ok((live.clone(), Outcome::Unchanged));
    }
    let params = PatchParams::apply(field_manager).force();
    let applied = api
        .patch(&name, &params, &Patch::Apply(&desired))
        .await
        .map_err(|e| Error::kube(format!("applying {kind} {name}"), e))?;
    let outcome = if live.is_some() {
        Outcome::Updated
    } else {
        Outcome::Created
    };
    Ok((applied, outcome))
}

/// Whether `live` carries `hash` and every field of `desired`.
pub fn up_to_date<K: Resource + Serialize>(desired: &K, live: &K, hash: &str) -> Result<bool> {
    if live
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_HASH_ANNOTATION))
        != Some(&hash.to_string())
    {
        return Ok(false);
    }
    let to_value = |o: &K| {
        serde_json::to_value(o).map_err(|source| Error::Serialize {
            what: "object".into(),
            source,
        })
    };
    Ok(is_subset(&to_value(desired)?, &to_value(live)?, false))
}

/// Whether every field set in `desired` has the same value in `live`.
///
/// Empty values (null, `[]`, `{}`) match an absent field: the API server drops
/// them. Inside `resources` strings are quantities the server may rewrite
/// (`1000m` -> `1`), so those leaves are not compared.
pub fn is_subset(desired: &Value, live: &Value, in_quantities: bool) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => is_subset(dv, lv, in_quantities || k == "resources"),
            None => is_empty(dv),
        }),
        (Value::Object(d), Value::Null) => d.values().all(is_empty),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len()
                && d.iter()
                    .zip(l)
                    .all(|(dv, lv)| is_subset(dv, lv, in_quantities))
        }
        (Value::Array(d), Value::Null) => d.is_empty(),
        (Value::Null, _) => true,
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        (Value::String(_), Value::String(_)) if in_quantities => true,
        (Value::String(_), Value::Number(_)) if in_quantities => true,
        (d, l) => d == l,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_ignores_server_defaults_and_empties() {
        let desired = json!({"spec": {"replicas": 2, "env": [], "template": {"metadata": {"labels": {"a": "b"}}}}});
        let live = json!({"spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": {"a": "b"}, "creationTimestamp": null}}}});
        assert!(is_subset(&desired, &live, false));
    }

    #[test]
    fn subset_catches_changed_and_missing_fields() {
        let desired = json!({"spec": {"replicas": 2}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 3}}),
            false
        ));
        assert!(!is_subset(&desired, &json!({"spec": {}}), false));
        let list = json!({"ports": [{"port": 80}]});
        assert!(!is_subset(
            &list,
            &json!({"ports": [{"port": 80}, {"port": 81}]}),
            false
        ));
    }

    #[test]
    fn quantities_may_be_normalized_by_the_server() {
        let desired = json!({"resources": {"limits": {"cpu": "1000m"}}});
        let live = json!({"resources": {"limits": {"cpu": "1"}}});
        assert!(is_subset(&desired, &live, false));
    }
}
