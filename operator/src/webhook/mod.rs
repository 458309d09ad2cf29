//! The admission webhooks, served over HTTPS by every replica:
//! `/inject` (mutating, pods) and `/validate` (validating, ResiliencePolicies).
//!
//! Neither ever blocks a request because of its own trouble: a review it
//! cannot read, or an API error, is allowed with a message (and counted).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Status};
use kube::{Api, Client};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use trellis_api::crd::ResiliencePolicy;
use trellis_api::inject::{
    INJECT_ANNOTATION, ProxySettings, SERVICE_ANNOTATION, config_map_name, inject, is_injected,
};

use crate::certs::CertStore;
use crate::metrics::Metrics;

pub const INJECT_PATH: &str = "/inject";
pub const VALIDATE_PATH: &str = "/validate";

/// What the handlers need.
#[derive(Clone)]
pub struct WebhookState {
    /// Reads namespace labels; `None` treats every namespace as unlabelled.
    pub client: Option<Client>,
    pub proxy: ProxySettings,
    pub metrics: Metrics,
}

/// What became of one admission request (the `outcome` metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    AlreadyInjected,
    Skipped,
    Allowed,
    Denied,
    Malformed,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::AlreadyInjected => "already_injected",
            Outcome::Skipped => "skipped",
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Malformed => "malformed",
            Outcome::Error => "error",
        }
    }
}

/// The webhook routes (plain axum; TLS is added by [`Webhook::serve`]).
pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route(INJECT_PATH, post(inject_handler))
        .route(VALIDATE_PATH, post(validate_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn inject_handler(State(state): State<Arc<WebhookState>>, body: Bytes) -> axum::Json<Value> {
    let started = Instant::now();
    let (review, outcome) = review_inject(&state, &body).await;
    state.metrics.webhook("inject", outcome.as_str(), started);
    axum::Json(review)
}

async fn validate_handler(
    State(state): State<Arc<WebhookState>>,
    body: Bytes,
) -> axum::Json<Value> {
    let started = Instant::now();
    let (review, outcome) = review_validate(&body);
    state.metrics.webhook("validate", outcome.as_str(), started);
    axum::Json(review)
}

/// An AdmissionReview response as JSON.
fn respond(response: AdmissionResponse) -> Value {
    serde_json::to_value(response.into_review()).unwrap_or_else(|e| {
        // Cannot happen (plain data); still never panic on the admission path.
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": "", "allowed": true, "status": {"message": format!("trellis: {e}")}}
        })
    })
}

/// Allows a request, with a message and a warning that explain what was not done.
fn allow_with_message(uid: String, message: String) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid(&message);
    response.uid = uid;
    response.allowed = true;
    response.result = Status {
        message: message.clone(),
        ..Default::default()
    };
    response.warnings = Some(vec![message]);
    response
}

/// Parses a review; on failure, the response to send (allowed, naming the problem).
fn parse_review(
    body: &[u8],
    webhook: &str,
) -> Result<AdmissionRequest<DynamicObject>, Box<AdmissionResponse>> {
    let malformed = |reason: String| {
        // Echo the uid if the body has one, so the API server can match the answer.
        let uid = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v.pointer("/request/uid")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_default();
        tracing::warn!(webhook, %reason, "malformed admission review; allowing");
        Box::new(allow_with_message(
            uid,
            format!(
                "trellis {webhook} webhook could not read the AdmissionReview ({reason}); the object was admitted unchanged"
            ),
        ))
    };
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    review
        .try_into()
        .map_err(|_| malformed("it has no request".into()))
}

/// Handles one `/inject` review. Never fails: trouble is an allowed response.
pub async fn review_inject(state: &WebhookState, body: &[u8]) -> (Value, Outcome) {
    let req = match parse_review(body, "inject") {
        Ok(r) => r,
        Err(resp) => return (respond(*resp), Outcome::Malformed),
    };
    let (response, outcome) = inject_request(state, &req).await;
    (respond(response), outcome)
}

async fn inject_request(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> (AdmissionResponse, Outcome) {
    let allowed = AdmissionResponse::from(req);
    if req.kind.kind != "Pod" || req.operation != Operation::Create {
        return (allowed, Outcome::Skipped);
    }
    let Some(object) = req.object.as_ref() else {
        return (allowed, Outcome::Skipped);
    };
    let original = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => return error_response(req, format!("cannot read the pod: {e}")),
    };
    let pod: Pod = match serde_json::from_value(original.clone()) {
        Ok(p) => p,
        Err(e) => return error_response(req, format!("cannot read the pod: {e}")),
    };
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .map(String::as_str);
    let wanted = match annotation {
        Some("enabled") => true,
        Some("disabled") => false,
        _ => {
            let ns = req.namespace.clone().or(pod.metadata.namespace.clone());
            match namespace_enabled(state, ns.as_deref()).await {
                Ok(enabled) => enabled,
                Err(e) => return error_response(req, e),
            }
        }
    };
    if !wanted {
        return (allowed, Outcome::Skipped);
    }
    let Some(spec) = pod.spec else {
        return (allowed, Outcome::Skipped);
    };
    if is_injected(&spec) {
        return (allowed, Outcome::AlreadyInjected);
    }
    // A pod that names its MeshService shares that service's rendered config.
    let mut settings = state.proxy.clone();
    if let Some(service) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_ANNOTATION))
        .filter(|s| !s.is_empty())
    {
        settings.config_map = config_map_name(service);
    }
    let injected = match inject(spec, &settings) {
        Ok(s) => s,
        Err(e) => return error_response(req, format!("cannot add the sidecar: {e}")),
    };
    let mut patched = original.clone();
    match serde_json::to_value(&injected) {
        Ok(spec) => patched["spec"] = spec,
        Err(e) => return error_response(req, format!("cannot write the pod: {e}")),
    }
    let patch = json_patch::diff(&original, &patched);
    if patch.0.is_empty() {
        return (allowed, Outcome::AlreadyInjected);
    }
    match allowed.clone().with_patch(patch) {
        Ok(r) => (r, Outcome::Injected),
        Err(e) => error_response(req, format!("cannot encode the patch: {e}")),
    }
}

fn error_response(
    req: &AdmissionRequest<DynamicObject>,
    reason: String,
) -> (AdmissionResponse, Outcome) {
    tracing::warn!(pod = %req.name, namespace = ?req.namespace, %reason, "sidecar not injected; pod admitted");
    let message = format!("trellis: sidecar not injected: {reason}");
    (allow_with_message(req.uid.clone(), message), Outcome::Error)
}

/// Whether the namespace carries `mesh.trellis.dev/inject: enabled`.
async fn namespace_enabled(state: &WebhookState, ns: Option<&str>) -> Result<bool, String> {
    let (Some(client), Some(ns)) = (&state.client, ns) else {
        return Ok(false);
    };
    let api = Api::<Namespace>::all(client.clone());
    match api.get_opt(ns).await {
        Ok(Some(n)) => Ok(n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(INJECT_ANNOTATION))
            .is_some_and(|v| v == "enabled")),
        Ok(None) => Ok(false),
        Err(e) => Err(format!("cannot read namespace {ns}: {e}")),
    }
}

/// Handles one `/validate` review of a ResiliencePolicy.
pub fn review_validate(body: &[u8]) -> (Value, Outcome) {
    let req = match parse_review(body, "validate") {
        Ok(r) => r,
        Err(resp) => return (respond(*resp), Outcome::Malformed),
    };
    let mut response = AdmissionResponse::from(&req);
    let Some(object) = req.object.as_ref() else {
        return (respond(response), Outcome::Allowed); // DELETE
    };
    let policy: ResiliencePolicy = match serde_json::to_value(object)
        .and_then(serde_json::from_value)
    {
        Ok(p) => p,
        Err(e) => {
            // The API server checked the schema already; this is our bug, not the user's.
            let message =
                format!("trellis could not read the ResiliencePolicy ({e}); it was not checked");
            tracing::warn!(policy = %req.name, %message);
            return (
                respond(allow_with_message(req.uid.clone(), message)),
                Outcome::Error,
            );
        }
    };
    let findings = trellis_api::validate::validate_policy(&policy.spec);
    if !findings.warnings.is_empty() {
        response.warnings = Some(findings.warnings);
    }
    if findings.errors.is_empty() {
        (respond(response), Outcome::Allowed)
    } else {
        let message = findings.errors.join("; ");
        let mut denied = response.deny(message);
        denied.result.code = 422;
        denied.result.reason = "Invalid".into();
        (respond(denied), Outcome::Denied)
    }
}

/// The HTTPS server of the webhooks.
pub struct Webhook;

impl Webhook {
    /// Binds `addr` and serves [`router`] over TLS with the certificate in `certs`
    /// (swapped there, picked up by the next handshake) until `shutdown` resolves;
    /// open connections are then given time to finish.
    /// Returns the bound address (port 0 picks a free one) and the server task.
    pub async fn serve(
        addr: SocketAddr,
        state: Arc<WebhookState>,
        certs: Arc<CertStore>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(certs.server_config());
        let app = router(state);
        let task = tokio::spawn(async move {
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            tokio::pin!(shutdown);
            loop {
                let (stream, peer) = tokio::select! {
                    _ = &mut shutdown => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "webhook accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let service = TowerToHyperService::new(app.clone());
                // The handshake runs in its own task; the connection joins the graceful set after it.
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    let conn = watcher.watch(conn.into_owned());
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
                    }
                });
            }
            drop(listener);
            if tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("webhook connections still open after 10s; closing");
            }
        });
        Ok((local, task))
    }
}
