//! A small in-memory Kubernetes API server behind `tower_test::mock`, so
//! reconcilers and webhooks run against a real `kube::Client` in unit tests.
//!
//! It stores objects by path, answers GET (object or list), POST, PUT (with
//! resourceVersion preconditions), PATCH (server-side apply, merge, JSON
//! patch; `/status` too) and DELETE, bumps `metadata.generation` when an
//! object changes outside status, records every request, and can fail chosen
//! requests (e.g. a 409).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the fake saw.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Option<Value>,
}

impl Recorded {
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }

    /// `kind/name`-ish label for messages: the last path segments.
    pub fn target(&self) -> String {
        let segs: Vec<&str> = self.path.split('/').collect();
        segs[segs.len().saturating_sub(2)..].join("/")
    }
}

struct Failure {
    method: Method,
    path_contains: String,
    code: u16,
    reason: String,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    /// Owner (field manager) of each `spec` field, per object: enough server-side
    /// apply conflict detection for Lease-based leader election.
    owners: BTreeMap<String, BTreeMap<String, String>>,
    requests: Vec<Recorded>,
    failures: Vec<Failure>,
    version: u64,
}

/// Handle on the fake: seed objects, read them back, inspect requests.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// Where an object lives: its collection path and name.
struct Parsed {
    collection: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Parsed> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let base_len = match segs.first() {
        Some(&"api") => 2,
        Some(&"apis") => 3,
        _ => return None,
    };
    let base = segs.get(..base_len)?.join("/");
    let rest = &segs[base_len..];
    let (prefix, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (format!("/{base}/namespaces/{}", rest[1]), &rest[2..])
    } else {
        (format!("/{base}"), rest)
    };
    let plural = rest.first()?;
    Some(Parsed {
        collection: format!("{prefix}/{plural}"),
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Value::Object(o) = &mut v {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

impl FakeApi {
    /// A client wired to a new fake, and the fake.
    pub fn new() -> (kube::Client, FakeApi) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeApi::default();
        let serving = fake.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = serving.handle(request).await;
                send.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), fake)
    }

    /// Stores an object at its canonical path (namespace and name from its metadata).
    pub fn insert(&self, collection: &str, obj: Value) {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let mut obj = obj;
        let version = s.version.to_string();
        let meta = obj["metadata"].as_object_mut().expect("metadata");
        meta.insert("resourceVersion".into(), json!(version));
        meta.entry("uid").or_insert(json!(format!("uid-{name}")));
        meta.entry("generation").or_insert(json!(1));
        meta.entry("creationTimestamp")
            .or_insert(json!("2024-01-01T00:00:00Z"));
        s.objects.insert(format!("{collection}/{name}"), obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Changes a stored object in place (e.g. a Deployment's status, as its controller would).
    pub fn update(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let version = s.version.to_string();
        let obj = s.objects.get_mut(path).expect("object to update");
        f(obj);
        obj["metadata"]["resourceVersion"] = json!(version);
    }

    pub fn remove(&self, path: &str) {
        self.state.lock().unwrap().objects.remove(path);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Writes other than events (events are not the object's state).
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_write() && !r.path.contains("/events"))
            .collect()
    }

    /// Events posted.
    pub fn events(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == Method::POST && r.path.contains("/events"))
            .filter_map(|r| r.body)
            .collect()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    /// The next request with this method whose path contains `path_contains` fails with `code`.
    pub fn fail_next(&self, method: Method, path_contains: &str, code: u16, reason: &str) {
        self.state.lock().unwrap().failures.push(Failure {
            method,
            path_contains: path_contains.into(),
            code,
            reason: reason.into(),
        });
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes)
                .ok()
                .or_else(|| serde_yaml::from_slice(&bytes).ok())
        };
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or_default().to_string();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (code, value) = {
            let mut s = self.state.lock().unwrap();
            s.requests.push(Recorded {
                method: parts.method.clone(),
                path: path.clone(),
                query: query.clone(),
                content_type: content_type.clone(),
                body: body.clone(),
            });
            let failure = s
                .failures
                .iter()
                .position(|f| f.method == parts.method && path.contains(&f.path_contains));
            if let Some(i) = failure {
                let f = s.failures.remove(i);
                (f.code, status(f.code, &f.reason, "injected failure"))
            } else {
                Self::serve(&mut s, &parts.method, &path, &query, &content_type, body)
            }
        };
        let bytes = serde_json::to_vec(&value).unwrap();
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .unwrap()
    }

    fn serve(
        s: &mut State,
        method: &Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let Some(p) = parse_path(path) else {
            return (404, status(404, "NotFound", "no such path"));
        };
        let Some(name) = p.name.clone() else {
            return match *method {
                Method::GET => {
                    let prefix = format!("{}/", p.collection);
                    let items: Vec<Value> = s
                        .objects
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                        .map(|(_, v)| v.clone())
                        .collect();
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": "List",
                                 "metadata": {"resourceVersion": s.version.to_string()}, "items": items}),
                    )
                }
                Method::POST => {
                    let Some(mut obj) = body else {
                        return (400, status(400, "BadRequest", "no body"));
                    };
                    let name = obj["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let key = format!("{}/{name}", p.collection);
                    if s.objects.contains_key(&key) {
                        return (409, status(409, "AlreadyExists", "already exists"));
                    }
                    s.version += 1;
                    obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
                    obj["metadata"]["uid"] = json!(format!("uid-{name}"));
                    obj["metadata"]["generation"] = json!(1);
                    obj["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
                    s.objects.insert(key, obj.clone());
                    (201, obj)
                }
                _ => (405, status(405, "MethodNotAllowed", "collection")),
            };
        };
        let key = format!("{}/{name}", p.collection);
        let existing = s.objects.get(&key).cloned();
        match (method.clone(), p.subresource.as_deref()) {
            (Method::GET, _) => match existing {
                Some(o) => (200, o),
                None => (404, status(404, "NotFound", &format!("{name} not found"))),
            },
            (Method::DELETE, None) => match s.objects.remove(&key) {
                Some(_) => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
                ),
                None => (404, status(404, "NotFound", &format!("{name} not found"))),
            },
            (Method::PUT, None) => {
                let Some(mut obj) = body else {
                    return (400, status(400, "BadRequest", "no body"));
                };
                let Some(old) = existing else {
                    return (404, status(404, "NotFound", &format!("{name} not found")));
                };
                if obj["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
                    return (409, status(409, "Conflict", "the object has been modified"));
                }
                Self::store(s, &key, Some(&old), &mut obj);
                (200, obj)
            }
            (Method::PATCH, sub) => {
                let Some(patch) = body else {
                    return (400, status(400, "BadRequest", "no body"));
                };
                let apply = content_type.contains("apply-patch");
                let json_patch = content_type.contains("json-patch");
                let mut obj = match (&existing, apply) {
                    (Some(o), _) => o.clone(),
                    (None, true) if sub.is_none() => json!({}),
                    (None, _) => {
                        return (404, status(404, "NotFound", &format!("{name} not found")));
                    }
                };
                if sub == Some("status") {
                    if apply {
                        obj["status"] = patch["status"].clone();
                    } else {
                        merge(&mut obj, &json!({"status": patch["status"].clone()}));
                    }
                } else if p.collection.ends_with("/leases") {
                    // Field ownership of spec: a non-forced apply may not change another manager's field.
                    let manager = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("fieldManager="))
                        .unwrap_or("unknown")
                        .to_string();
                    let force = query.contains("force=true");
                    let owners = s.owners.entry(key.clone()).or_default();
                    if let Some(spec) = patch["spec"].as_object() {
                        for (k, v) in spec {
                            let current = &obj["spec"][k];
                            let other = owners.get(k).is_some_and(|m| *m != manager);
                            if apply && !force && other && !current.is_null() && current != v {
                                return (
                                    409,
                                    status(409, "Conflict", &format!("conflict on spec.{k}")),
                                );
                            }
                        }
                        for (k, v) in spec {
                            if v.is_null() {
                                owners.remove(k);
                            } else {
                                owners.insert(k.clone(), manager.clone());
                            }
                        }
                    }
                    merge(&mut obj, &patch);
                } else if apply {
                    // Server-side apply by one manager: its fields replace ours; status stays.
                    let mut next = without(&patch, &["status"]);
                    if let Some(st) = obj.get("status") {
                        next["status"] = st.clone();
                    }
                    for k in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                        if let Some(v) = obj["metadata"].get(k) {
                            next["metadata"][k] = v.clone();
                        }
                    }
                    obj = next;
                } else if json_patch {
                    let ops: json_patch::Patch = match serde_json::from_value(patch) {
                        Ok(p) => p,
                        Err(e) => return (400, status(400, "BadRequest", &e.to_string())),
                    };
                    if let Err(e) = json_patch::patch(&mut obj, &ops.0) {
                        return (422, status(422, "Invalid", &e.to_string()));
                    }
                } else {
                    merge(&mut obj, &patch);
                }
                let created = existing.is_none();
                Self::store(s, &key, existing.as_ref(), &mut obj);
                if created {
                    obj["metadata"]["generation"] = json!(1);
                    obj["metadata"]["uid"] = json!(format!("uid-{name}"));
                    s.objects.insert(key, obj.clone());
                }
                (200, obj)
            }
            _ => (405, status(405, "MethodNotAllowed", "not supported")),
        }
    }

    fn store(s: &mut State, key: &str, old: Option<&Value>, obj: &mut Value) {
        s.version += 1;
        obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
        if let Some(old) = old {
            let strip = |v: &Value| without(v, &["status", "metadata"]);
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let changed = strip(old) != strip(obj);
            obj["metadata"]["generation"] =
                json!(if changed { generation + 1 } else { generation });
            for k in ["uid", "creationTimestamp"] {
                if let Some(v) = old["metadata"].get(k) {
                    obj["metadata"][k] = v.clone();
                }
            }
        }
        s.objects.insert(key.to_string(), obj.clone());
    }
}

/// Paths of the objects a MeshService renders to.
pub fn paths(ns: &str, name: &str) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        (
            "ServiceAccount",
            format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}"),
        ),
        (
            "Role",
            format!(
                "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{name}-trellis-proxy"
            ),
        ),
        (
            "RoleBinding",
            format!(
                "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{name}-trellis-proxy"
            ),
        ),
        (
            "ConfigMap",
            format!("/api/v1/namespaces/{ns}/configmaps/{name}-proxy"),
        ),
        (
            "Service",
            format!("/api/v1/namespaces/{ns}/services/{name}"),
        ),
        (
            "Deployment",
            format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"),
        ),
        (
            "PodDisruptionBudget",
            format!("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}"),
        ),
    ])
}

pub const MSVC: &str = "/apis/mesh.trellis.dev/v1alpha1/namespaces";

pub fn msvc_collection(ns: &str) -> String {
    format!("{MSVC}/{ns}/meshservices")
}

pub fn rpol_collection(ns: &str) -> String {
    format!("{MSVC}/{ns}/resiliencepolicies")
}
