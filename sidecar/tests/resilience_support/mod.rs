//! The resilience bench's harness: the outbound resilience stack composed by
//! hand over a real-HTTP "attempt" service — the balancer's [`EndpointSet`]
//! (P2C, skipping ejected endpoints and those already tried) and a pooled
//! hyper client, reporting every attempt's outcome to the endpoint set like
//! the core's `outbound::attempt` does — in front of [`FaultServer`]s.
//!
//! Only `bench/resilience` uses this file (it includes it by path). The
//! process tests (`tests/resilience_process.rs`) go through the real proxy
//! instead and include `fault.rs` and `mesh.rs` directly.

#![allow(dead_code)]

mod fault;

pub use fault::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tower::{Service, ServiceExt};
use trellis_api::proxy::{Discovery, EffectivePolicy, Route, Upstream};
use trellis_proxy::balance::{Endpoint, EndpointSet, Outcome, TriedEndpoints};
use trellis_proxy::body::{Body, BoxError};
use trellis_proxy::error::{ERROR_HEADER, ProxyError};
use trellis_proxy::metrics::Metrics;
use trellis_proxy::resilience::{self, ResilientService, UpstreamResilience};

/// The innermost service: pick (P2C, skipping ejected and tried endpoints),
/// send over a pooled connection, report the outcome to the endpoint set.
#[derive(Clone)]
pub struct RealAttempt {
    set: Arc<EndpointSet>,
    client: Client<HttpConnector, Body>,
    /// Attempts sent to an endpoint (refused connections included).
    pub sent: Arc<AtomicU64>,
}

impl RealAttempt {
    pub fn new(set: Arc<EndpointSet>, http2: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        RealAttempt {
            set,
            client,
            sent: Arc::default(),
        }
    }
}

struct Report {
    set: Arc<EndpointSet>,
    endpoint: Arc<Endpoint>,
    start: Instant,
    done: bool,
}

impl Report {
    fn finish(mut self, outcome: impl FnOnce(Duration) -> Outcome) {
        self.done = true;
        let latency = self.start.elapsed();
        self.set.record(&self.endpoint, outcome(latency));
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.done {
            let latency = self.start.elapsed();
            self.set
                .record(&self.endpoint, Outcome::Cancelled { latency });
        }
    }
}

impl Service<Request<Body>> for RealAttempt {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let tried = req.extensions().get::<TriedEndpoints>().cloned();
        let avoid = tried.as_ref().map(TriedEndpoints::list).unwrap_or_default();
        let Some(endpoint) = self.set.pick(&avoid) else {
            return Box::pin(async { Err(ProxyError::NoEndpoints.into()) });
        };
        if let Some(t) = &tried {
            t.push(endpoint.addr());
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *req.uri_mut() = format!("http://{}{}", endpoint.addr(), pq).parse().unwrap();
        let client = self.client.clone();
        let report = Report {
            set: self.set.clone(),
            endpoint: endpoint.clone(),
            start: Instant::now(),
            done: false,
        };
        Box::pin(async move {
            let in_flight = endpoint.start();
            let result = client.request(req).await;
            drop(in_flight);
            match result {
                Ok(rsp) => {
                    endpoint.observe(report.start.elapsed());
                    let status = rsp.status();
                    let grpc_status = resilience::classify::grpc_status(rsp.headers());
                    report.finish(|latency| Outcome::Response {
                        status,
                        grpc_status,
                        latency,
                    });
                    Ok(rsp.map(trellis_proxy::body::boxed))
                }
                Err(e) => {
                    endpoint.observe_failure();
                    let error = ProxyError::from_error(&e);
                    report.finish(|latency| Outcome::Failed { error, latency });
                    Err(e.into())
                }
            }
        })
    }
}

/// A policy from YAML (the proxy config's `EffectivePolicy` form).
pub fn policy(yaml: &str) -> EffectivePolicy {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("policy: {e}\n{yaml}"))
}

/// An upstream config with static endpoints and `(pathPrefix, policy)` routes.
pub fn upstream(
    name: &str,
    addrs: &[SocketAddr],
    policy: EffectivePolicy,
    routes: Vec<(&str, EffectivePolicy)>,
) -> Upstream {
    Upstream {
        name: name.into(),
        authorities: vec![name.into()],
        discovery: Discovery::Static {
            addresses: addrs.iter().map(|a| a.to_string()).collect(),
        },
        policy,
        routes: routes
            .into_iter()
            .map(|(prefix, policy)| Route {
                route_match: trellis_api::crd::RouteMatch {
                    path_prefix: Some(prefix.into()),
                    path: None,
                    methods: vec![],
                },
                policy,
            })
            .collect(),
        sources: vec![],
    }
}

/// Everything a test needs: the stack over real endpoints, and its state.
pub struct Stack {
    pub svc: ResilientService,
    /// Attempts the stack sent to endpoints.
    pub sent: Arc<AtomicU64>,
    pub set: Arc<EndpointSet>,
    pub state: UpstreamResilience,
    pub metrics: Metrics,
}

/// The resilience stack of `up` over a real-HTTP attempt service; requests
/// go to the route whose path prefix matches, like the core's route selection.
pub fn stack(up: &Upstream, http2: bool) -> Stack {
    let metrics = Metrics::new();
    let set = Arc::new(EndpointSet::new(up.name.clone()));
    let state = UpstreamResilience::new(up, &metrics);
    state.install(&set);
    if let Discovery::Static { addresses } = &up.discovery {
        set.update(addresses.iter().map(|a| a.parse::<SocketAddr>().unwrap()));
    }
    let prefixes: Vec<String> = up
        .routes
        .iter()
        .map(|r| r.route_match.path_prefix.clone().unwrap_or_default())
        .collect();
    let select = move |req: &Request<Body>| {
        prefixes
            .iter()
            .position(|p| req.uri().path().starts_with(p.as_str()))
    };
    let attempt = RealAttempt::new(set.clone(), http2);
    let sent = attempt.sent.clone();
    let svc = resilience::outbound_routes(&state, attempt, select);
    Stack {
        svc,
        sent,
        set,
        state,
        metrics,
    }
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(format!("http://upstream{path}"))
        .body(trellis_proxy::body::empty())
        .unwrap()
}

pub fn with_body(method: http::Method, path: &str, body: impl Into<Bytes>) -> Request<Body> {
    let body: Bytes = body.into();
    Request::builder()
        .method(method)
        .uri(format!("http://upstream{path}"))
        .header("content-length", body.len())
        .body(trellis_proxy::body::full(body))
        .unwrap()
}

/// What the client saw of one call.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub error: Option<String>,
    pub fallback: bool,
    pub grpc_status: Option<u16>,
    pub latency: Duration,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success() && self.grpc_status.is_none_or(|c| c == 0)
    }
}

/// Sends one request through the stack and reads the whole response.
pub fn call(svc: &ResilientService, req: Request<Body>) -> BoxFuture<'static, Answer> {
    let start = Instant::now();
    // Boxed outside the async block: rustc's higher-ranked `Send` check
    // chokes on the stack's future type held inside one.
    let rsp: BoxFuture<'static, Result<Response<Body>, Infallible>> =
        Box::pin(svc.clone().oneshot(req));
    Box::pin(read(start, rsp))
}

async fn read(
    start: Instant,
    rsp: BoxFuture<'static, Result<Response<Body>, Infallible>>,
) -> Answer {
    let Ok(rsp) = rsp.await;
    let status = rsp.status();
    let error = rsp
        .headers()
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let fallback = rsp.headers().contains_key("x-trellis-fallback");
    let mut grpc_status = resilience::classify::grpc_status(rsp.headers());
    if let Ok(collected) = rsp.into_body().collect().await
        && let Some(t) = collected.trailers()
    {
        grpc_status = grpc_status.or(resilience::classify::grpc_status(t));
    }
    Answer {
        status,
        error,
        fallback,
        grpc_status,
        latency: start.elapsed(),
    }
}

/// Calls from `workers` concurrent clients, each in a loop, until `total`
/// calls were made or `duration` passed.
pub async fn load(
    svc: &ResilientService,
    workers: usize,
    total: usize,
    duration: Duration,
    make: impl Fn(usize) -> Request<Body> + Send + Sync + 'static,
) -> Vec<Answer> {
    let make = Arc::new(make);
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (svc, make, next) = (svc.clone(), make.clone(), next.clone());
        tasks.spawn(async move {
            let mut answers = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                if i >= total || Instant::now() >= deadline {
                    return answers;
                }
                answers.push(call(&svc, make(i)).await);
            }
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all
}
