//! The admin port: `/metrics` (Prometheus text), `/live`, `/ready` (every
//! upstream resolved at least once), `/config` (the effective config as
//! JSON) and `/endpoints` (per upstream: address, state, latency estimate,
//! requests in flight).

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode, header};
use serde_json::json;

use crate::body::{Body, full};
use crate::proxy::Shared;
use crate::server::Handler;

#[derive(Clone)]
pub struct AdminHandler(pub Arc<Shared>);

impl Handler for AdminHandler {
    fn handle(
        &self,
        req: Request<Body>,
        _remote: SocketAddr,
    ) -> BoxFuture<'static, Response<Body>> {
        let rsp = if req.method() != Method::GET && req.method() != Method::HEAD {
            text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n")
        } else {
            match req.uri().path() {
                "/metrics" => {
                    refresh_gauges(&self.0);
                    let mut r = text(StatusCode::OK, self.0.metrics.render());
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
                "/live" => text(StatusCode::OK, "live\n"),
                "/ready" if self.0.is_ready() => text(StatusCode::OK, "ready\n"),
                "/ready" => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: discovery pending\n",
                ),
                "/config" => json_response(
                    serde_json::to_value(&*self.0.config.load_full()).unwrap_or_default(),
                ),
                "/endpoints" => json_response(endpoints(&self.0)),
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            }
        };
        Box::pin(std::future::ready(rsp))
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

fn json_response(v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn endpoints(shared: &Shared) -> serde_json::Value {
    let table = shared.outbound.table.load();
    let upstreams: Vec<_> = table
        .upstreams()
        .map(|u| {
            let set = &u.endpoints;
            let eps: Vec<_> = set
                .snapshot()
                .iter()
                .map(|e| {
                    json!({
                        "address": e.addr().to_string(),
                        "state": state(set, e),
                        "ewmaLatencyMs": e.ewma_latency().as_secs_f64() * 1000.0,
                        "inFlight": e.in_flight(),
                    })
                })
                .collect();
            json!({
                "name": u.config.name,
                "resolved": set.is_resolved(),
                "stale": set.is_stale(),
                "endpoints": eps,
            })
        })
        .collect();
    json!({ "upstreams": upstreams })
}

fn state(set: &crate::balance::EndpointSet, e: &crate::balance::Endpoint) -> &'static str {
    if !set.is_available(e) {
        "ejected"
    } else if set.is_stale() {
        "stale"
    } else {
        "ready"
    }
}

/// Endpoint gauges are computed when scraped: ejections end by themselves
/// and upstreams come and go with reloads.
fn refresh_gauges(shared: &Shared) {
    let m = &shared.metrics;
    m.endpoints.reset();
    m.discovery_stale.reset();
    for u in shared.outbound.table.load().upstreams() {
        let peer = u.config.name.as_str();
        let (mut ready, mut ejected, mut stale) = (0, 0, 0);
        for e in u.endpoints.snapshot().iter() {
            match state(&u.endpoints, e) {
                "ejected" => ejected += 1,
                "stale" => stale += 1,
                _ => ready += 1,
            }
        }
        m.endpoints.with_label_values(&[peer, "ready"]).set(ready);
        m.endpoints
            .with_label_values(&[peer, "ejected"])
            .set(ejected);
        m.endpoints.with_label_values(&[peer, "stale"]).set(stale);
        m.discovery_stale
            .with_label_values(&[peer])
            .set(i64::from(u.endpoints.is_stale()));
    }
}
