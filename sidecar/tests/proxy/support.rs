//! Real servers on 127.0.0.1 for the proxy tests: an HTTP app (HTTP/1.1 and
//! h2c), clients, raw sockets and config builders.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_api::proxy::ProxyConfig;
use trellis_proxy::{Proxy, ProxyHandle};

pub type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub fn body(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

/// A test app: answers `/echo` with a JSON description of the request, `/slow/<ms>` after
/// a delay, `/trailers` with a streamed body and trailers, `/stall` with one chunk and
/// then nothing, anything else with its name.
pub struct App {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Request bodies that ended in an error (cut) instead of their end.
    pub cut_bodies: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self._task.abort();
    }
}

pub async fn start_app(name: &'static str, delay: Duration) -> App {
    start_app_at("127.0.0.1:0", name, delay).await
}

/// An app named `k8s` on a given address.
pub async fn start_app_on(addr: String) -> App {
    start_app_at(&addr, "k8s", Duration::ZERO).await
}

pub async fn start_app_at(bind: &str, name: &'static str, delay: Duration) -> App {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let cut_bodies = Arc::new(AtomicUsize::new(0));
    let (h, cut) = (hits.clone(), cut_bodies.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (h, cut) = (h.clone(), cut.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    app_handle(name, delay, req, cut.clone())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    App {
        addr,
        hits,
        cut_bodies,
        _task: task,
    }
}

async fn app_handle(
    name: &'static str,
    delay: Duration,
    req: Request<Incoming>,
    cut: Arc<AtomicUsize>,
) -> Result<Response<TestBody>, Infallible> {
    tokio::time::sleep(delay).await;
    let path = req.uri().path().to_string();
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(body(format!("slow {name}"))));
    }
    if path == "/stall" {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"first"))));
        // The sender stays: the body neither goes on nor ends.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        return Ok(Response::new(StreamBody::new(rx).boxed()));
    }
    if path == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"part1-"))),
            Ok(Frame::data(Bytes::from_static(b"part2"))),
            Ok(Frame::trailers(trailers)),
        ];
        let b = StreamBody::new(futures::stream::iter(frames)).boxed();
        return Ok(Response::new(b));
    }
    if path == "/echo" || path.starts_with("/echo/") {
        let method = req.method().to_string();
        let version = format!("{:?}", req.version());
        let uri = req.uri().to_string();
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        let Ok(collected) = req.into_body().collect().await else {
            cut.fetch_add(1, Ordering::SeqCst);
            let mut rsp = Response::new(body("body cut"));
            *rsp.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(rsp);
        };
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        let json = serde_json::json!({
            "app": name,
            "method": method,
            "version": version,
            "uri": uri,
            "headers": headers,
            "body": String::from_utf8_lossy(&bytes),
            "trailers": trailers.map(|t| t.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or(""))).collect::<Vec<_>>()),
        });
        let mut rsp = Response::new(body(json.to_string()));
        rsp.headers_mut().insert("x-app", name.parse().unwrap());
        return Ok(rsp);
    }
    let mut rsp = Response::new(body(name));
    rsp.headers_mut().insert("x-app", name.parse().unwrap());
    Ok(rsp)
}

/// Config YAML with every listener on a free loopback port.
pub fn config_yaml(app: SocketAddr, protocol: &str, upstreams: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: proxy.trellis.dev/v1
kind: ProxyConfig
identity: {{service: test, namespace: shop}}
listeners: {{inbound: "127.0.0.1:0", outbound: "127.0.0.1:0", admin: "127.0.0.1:0"}}
app: {{address: "{app}", protocol: {protocol}}}
http: {{headerReadTimeout: 1s, maxHeaders: 50, maxHeaderBytes: 16384, shutdownGrace: 5s}}
{upstreams}
{extra}
"#,
        upstreams = if upstreams.trim() == "[]" {
            "upstreams: []".to_string()
        } else {
            format!("upstreams:\n{upstreams}")
        }
    )
}

/// One static upstream entry for [`config_yaml`].
pub fn upstream(name: &str, authorities: &[&str], addrs: &[SocketAddr]) -> String {
    let auth = authorities
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let addrs = addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "- name: {name}\n  authorities: [{auth}]\n  discovery: !static {{addresses: [{addrs}]}}\n  policy: {{}}\n"
    )
}

pub fn parse(yaml: &str) -> ProxyConfig {
    ProxyConfig::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

pub async fn start_proxy(yaml: &str) -> ProxyHandle {
    Proxy::start(parse(yaml)).await.unwrap()
}

/// A server-side sidecar (inbound → app) and a client-side sidecar whose
/// outbound routes `orders` to it.
pub struct Pair {
    pub client: ProxyHandle,
    pub server: ProxyHandle,
}

pub async fn start_pair(app: &App, protocol: &str) -> Pair {
    let server = start_proxy(&config_yaml(app.addr, protocol, "[]", "")).await;
    let up = upstream(
        "orders",
        &["orders", "orders.shop", "orders.shop.svc.cluster.local"],
        &[server.inbound_addr],
    );
    // The client-side sidecar's own app is irrelevant here.
    let client = start_proxy(&config_yaml(app.addr, "http", &up, "")).await;
    Pair { client, server }
}

pub fn h1_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// Sends through a proxy listener: the URI names the listener, `Host` the target.
pub async fn send(
    client: &Client<HttpConnector, TestBody>,
    via: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    b: TestBody,
    version: Version,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{via}{path}"))
        .version(version)
        .body(b)
        .unwrap();
    if version == Version::HTTP_2 {
        // h2 carries the target in :authority.
        *req.uri_mut() = format!("http://{host}{path}").parse().unwrap();
        return send_h2_to(via, req).await;
    }
    req.headers_mut().insert("host", host.parse().unwrap());
    let rsp = client.request(req).await.unwrap();
    let (parts, b) = rsp.into_parts();
    (
        parts.status,
        parts.headers,
        b.collect().await.unwrap().to_bytes(),
    )
}

/// An h2c request whose `:authority` differs from the address connected to.
pub async fn send_h2_to(via: SocketAddr, req: Request<TestBody>) -> (StatusCode, HeaderMap, Bytes) {
    let stream = TcpStream::connect(via).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let rsp = tx.send_request(req).await.unwrap();
    let (parts, b) = rsp.into_parts();
    (
        parts.status,
        parts.headers,
        b.collect().await.unwrap().to_bytes(),
    )
}

/// Writes `bytes` on a fresh connection and reads until the server closes
/// it (or `wait` passes). Returns what was read and whether it closed.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_close(&mut s, wait).await
}

pub async fn read_until_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

pub fn json(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

/// GET on the admin port.
pub async fn admin_get(proxy: &ProxyHandle, path: &str) -> (StatusCode, String) {
    let rsp = h1_client()
        .get(
            format!("http://{}{path}", proxy.admin_addr)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let status = rsp.status();
    let b = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&b).into_owned())
}

/// Polls `f` every 20 ms until it holds, for at most `max`.
pub async fn eventually<F, Fut>(max: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + max;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Serves a tonic service (h2c) on `listener` without tonic's router.
pub async fn serve_grpc<S>(listener: TcpListener, svc: S)
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let mut svc = svc.clone();
                svc.call(req.map(tonic::body::Body::new))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http2_only()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
