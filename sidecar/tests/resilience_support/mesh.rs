//! The real proxy for the resilience process tests.
//!
//! A config is rendered the way the operator renders it: ResiliencePolicy
//! YAML (what users write) and the caller's MeshService go through
//! `trellis_api::render::proxy_config` (resolution, overlay of route
//! overrides, defaults), with static discovery pointing at servers on
//! 127.0.0.1 and every listener on 127.0.0.1:0 (`trellis_e2e::local`'s
//! `sidecar_config`, as the delivery tests' sidecars); the result is written to YAML
//! and parsed back as the sidecar reads its ConfigMap, then `Proxy::start`ed.
//!
//! Clients are hyper-util's pooled client over a connector that sends every
//! connection to one proxy listener, as an app configured with the outbound
//! listener as its HTTP proxy would: the URI (`http://payments/pay`) names
//! the upstream in `Host` (HTTP/1.1) or `:authority` (HTTP/2).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use trellis_api::crd::ResiliencePolicy;
use trellis_api::parse::from_yaml;
use trellis_api::proxy::ProxyConfig;
use trellis_proxy::{Proxy, ProxyHandle};

/// The namespace of every object.
#[allow(unused_imports)]
pub use trellis_e2e::local::NAMESPACE;
/// The MeshService whose sidecar is under test (the caller).
pub const CALLER: &str = "web";

pub type TestBody = BoxBody<Bytes, Infallible>;

pub fn body(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

/// ResiliencePolicy documents, separated by `---` lines.
pub fn policies(yaml: &str) -> Vec<ResiliencePolicy> {
    yaml.split("\n---")
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| from_yaml(doc).unwrap_or_else(|e| panic!("policy: {e}\n{doc}")))
        .collect()
}

/// The sidecar config of [`CALLER`] (its app on `app`), calling each of
/// `upstreams` (MeshService name, endpoint addresses), under `policies`.
pub fn render_config(
    app: SocketAddr,
    upstreams: &[(&str, &[SocketAddr])],
    policy_yaml: &str,
) -> ProxyConfig {
    let policies = policies(policy_yaml);
    let conflicts = trellis_api::resolve::resolve(&policies);
    assert!(
        conflicts.conflicts().is_empty(),
        "the test's policies conflict: {:?}",
        conflicts.conflicts()
    );
    let rendered = trellis_e2e::local::sidecar_config(CALLER, app, upstreams, &policies, None);
    assert_eq!(rendered.app.address, app, "the app is on 127.0.0.1");
    // What the sidecar reads: the YAML of its ConfigMap.
    let yaml = rendered.to_yaml();
    ProxyConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("rendered config: {e}\n{yaml}"))
}

/// Where connections go, whatever the URI says.
#[derive(Clone, Copy, Debug)]
pub struct To(pub SocketAddr);

impl tower::Service<http::Uri> for To {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

pub type HttpClient = Client<To, TestBody>;

/// A pooled HTTP/1.1 client whose connections all go to `addr`.
pub fn client(addr: SocketAddr) -> HttpClient {
    Client::builder(TokioExecutor::new()).build(To(addr))
}

/// A pooled HTTP/2 (prior knowledge) client whose connections all go to `addr`.
pub fn h2_client(addr: SocketAddr) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(To(addr))
}

/// `GET http://{host}{path}`.
pub fn get(host: &str, path: &str) -> Request<TestBody> {
    request("GET", host, path, Bytes::new())
}

/// A request with a body (hyper sends its `content-length`).
pub fn request(method: &str, host: &str, path: &str, b: impl Into<Bytes>) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"))
        .body(body(b))
        .unwrap()
}

/// A unary gRPC call (HTTP/2 POST, one empty message).
pub fn grpc(host: &str, path: &str) -> Request<TestBody> {
    Request::builder()
        .method("POST")
        .uri(format!("http://{host}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap()
}

/// What the client got: the whole response.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    /// `x-trellis-error`: why the proxy, not the upstream, answered.
    pub fn error(&self) -> Option<&str> {
        self.headers
            .get("x-trellis-error")
            .and_then(|v| v.to_str().ok())
    }

    /// `x-trellis-fallback: true`.
    pub fn fallback(&self) -> bool {
        self.headers
            .get("x-trellis-fallback")
            .is_some_and(|v| v == "true")
    }

    /// `grpc-status` from the headers, else the trailers.
    pub fn grpc_status(&self) -> Option<u16> {
        let parse = |h: &HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        parse(&self.headers).or_else(|| self.trailers.as_ref().and_then(parse))
    }

    pub fn ok(&self) -> bool {
        self.status.is_success() && self.grpc_status().is_none_or(|c| c == 0)
    }
}

/// Sends `req` and reads the whole response. The proxy always answers: a
/// client error fails the test.
pub async fn call(client: &HttpClient, req: Request<TestBody>) -> Answer {
    let what = format!("{} {}", req.method(), req.uri());
    let rsp = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer: {e:?}"));
    let (parts, b) = rsp.into_parts();
    let collected = b
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{what}: body: {e:?}"));
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// Calls from `workers` concurrent clients, each in a closed loop, until
/// `total` calls were made or `duration` passed.
pub async fn load(
    client: &HttpClient,
    workers: usize,
    total: usize,
    duration: Duration,
    make: impl Fn(usize) -> Request<TestBody> + Send + Sync + 'static,
) -> Vec<Answer> {
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (client, make, next) = (client.clone(), make.clone(), next.clone());
        tasks.spawn(async move {
            let mut answers = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total || Instant::now() >= deadline {
                    return answers;
                }
                answers.push(call(&client, make(i)).await);
            }
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all
}

/// Polls `f` every 10 ms until it holds, for at most `max`.
pub async fn eventually<F, Fut>(max: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + max;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running sidecar and clients for its three listeners.
pub struct Mesh {
    pub proxy: ProxyHandle,
    /// The app's side: HTTP/1.1 to the outbound listener.
    pub outbound: HttpClient,
    /// HTTP/2 to the outbound listener (gRPC apps).
    pub outbound_h2: HttpClient,
    /// Other sidecars' side: HTTP/1.1 to the inbound listener.
    pub inbound: HttpClient,
    admin: HttpClient,
}

impl Mesh {
    /// A sidecar whose own app is irrelevant (outbound tests).
    pub async fn start(upstreams: &[(&str, &[SocketAddr])], policy_yaml: &str) -> Mesh {
        // Nothing listens there; only the inbound listener would use it.
        let app = SocketAddr::from(([127, 0, 0, 1], 9));
        Self::start_with_app(app, upstreams, policy_yaml).await
    }

    pub async fn start_with_app(
        app: SocketAddr,
        upstreams: &[(&str, &[SocketAddr])],
        policy_yaml: &str,
    ) -> Mesh {
        let config = render_config(app, upstreams, policy_yaml);
        let proxy = Proxy::start(config).await.unwrap();
        Mesh {
            outbound: client(proxy.outbound_addr),
            outbound_h2: h2_client(proxy.outbound_addr),
            inbound: client(proxy.inbound_addr),
            admin: client(proxy.admin_addr),
            proxy,
        }
    }

    /// One call through the outbound listener (HTTP/1.1).
    pub async fn call(&self, req: Request<TestBody>) -> Answer {
        call(&self.outbound, req).await
    }

    /// `GET http://{host}{path}` through the outbound listener.
    pub async fn get(&self, host: &str, path: &str) -> Answer {
        call(&self.outbound, get(host, path)).await
    }

    /// GET on the admin port; the body as text.
    pub async fn admin(&self, path: &str) -> String {
        let a = call(&self.admin, get("admin", path)).await;
        assert_eq!(a.status, 200, "admin {path}");
        String::from_utf8(a.body.to_vec()).unwrap()
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let text = self.admin(path).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}\n{text}"))
    }

    /// `/metrics`, parsed.
    pub async fn metrics(&self) -> Scrape {
        Scrape::parse(&self.admin("/metrics").await)
    }
}

/// A Prometheus text exposition, parsed into series.
#[derive(Debug)]
pub struct Scrape {
    series: Vec<(String, BTreeMap<String, String>, f64)>,
    text: String,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_line(l).unwrap_or_else(|| panic!("unparsable metric line: {l}")))
            .collect();
        Scrape {
            series,
            text: text.to_string(),
        }
    }

    /// The sum of the series of `name` whose labels include `labels`, if any.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .series
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like [`find`](Self::find), but the series must exist (a misspelt
    /// name or label fails the test instead of reading as zero).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in\n{}", self.text))
    }
}

/// `name{k="v",...} value` or `name value`.
fn parse_line(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let name_end = line.find(['{', ' '])?;
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut s) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = s.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            s = &after[end + 1..];
            s = s.strip_prefix(',').unwrap_or(s);
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((line[..name_end].to_string(), labels, value))
}

#[test]
fn metric_lines_parse() {
    let s = Scrape::parse(
        "# HELP x y\n\
         trellis_circuit_state{peer=\"cart /checkout*\"} 1\n\
         trellis_circuit_state{peer=\"cart\"} 0\n\
         trellis_rate_limited_total 3\n\
         trellis_requests_total{direction=\"outbound\",outcome=\"success\",peer=\"a\",status_class=\"2xx\"} 7\n\
         trellis_requests_total{direction=\"outbound\",outcome=\"timeout\",peer=\"a\",status_class=\"5xx\"} 2\n\
         x{a=\"q\\\"uote\",b=\"\"} 4\n",
    );
    assert_eq!(
        s.value("trellis_circuit_state", &[("peer", "cart /checkout*")]),
        1.0
    );
    assert_eq!(s.value("trellis_circuit_state", &[("peer", "cart")]), 0.0);
    assert_eq!(s.value("trellis_rate_limited_total", &[]), 3.0);
    assert_eq!(s.value("trellis_requests_total", &[("peer", "a")]), 9.0);
    assert_eq!(
        s.value(
            "trellis_requests_total",
            &[("peer", "a"), ("outcome", "timeout")]
        ),
        2.0
    );
    assert_eq!(s.value("x", &[("a", "q\"uote"), ("b", "")]), 4.0);
    assert_eq!(s.find("trellis_circuit_state", &[("peer", "nope")]), None);
}
