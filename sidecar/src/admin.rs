//! The admin port: `/metrics` (Prometheus text), `/live`, `/ready` (every
//! upstream resolved at least once), `/config` (the effective config as
//! JSON) and `/endpoints` (per upstream: address, state, latency estimate,
//! requests in flight). It only reads: what the applier published, and the
//! metrics registry.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::apply::Views;
use crate::body::{Body, full};
use crate::metrics::Metrics;
use crate::outbound::RouteTable;
use crate::server::Handler;

#[derive(Clone)]
pub struct AdminHandler(Arc<Admin>);

struct Admin {
    metrics: Metrics,
    views: Views,
}

impl AdminHandler {
    pub fn new(metrics: Metrics, views: Views) -> Self {
        AdminHandler(Arc::new(Admin { metrics, views }))
    }
}

impl Handler for AdminHandler {
    fn handle(
        &self,
        req: Request<Incoming>,
        _remote: SocketAddr,
    ) -> BoxFuture<'static, Response<Body>> {
        let admin = &self.0;
        let rsp = if req.method() != Method::GET && req.method() != Method::HEAD {
            text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n")
        } else {
            match req.uri().path() {
                "/metrics" => {
                    let mut r = text(StatusCode::OK, admin.metrics.render());
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
                "/live" => text(StatusCode::OK, "live\n"),
                "/ready" if admin.views.routes.load().is_resolved() => {
                    text(StatusCode::OK, "ready\n")
                }
                "/ready" => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: discovery pending\n",
                ),
                "/config" => {
                    let config = admin.views.config.borrow().clone();
                    json_response(serde_json::to_value(&*config).unwrap_or_default())
                }
                "/endpoints" => json_response(endpoints(&admin.views.routes.load())),
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

fn endpoints(table: &RouteTable) -> serde_json::Value {
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
                        "state": set.state(e).as_str(),
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
