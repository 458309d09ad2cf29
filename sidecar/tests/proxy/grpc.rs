//! gRPC through the mesh: a real tonic server behind a sidecar pair, called by
//! a real tonic client. Messages are hand-written prost types (no protoc).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use http::uri::PathAndQuery;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::support::*;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `test.Echo`: `Unary` echoes; `Stream` sends `count` replies, then fails
/// with DATA_LOSS (a status in trailers) when the message is "fail"; `Fail`
/// answers NOT_FOUND; `Slow` echoes after `count` milliseconds.
#[derive(Clone)]
struct EchoServer;

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            Ok(match path.as_str() {
                "/test.Echo/Unary" => {
                    let svc = tower::service_fn(|r: tonic::Request<EchoRequest>| async move {
                        Ok::<_, Status>(tonic::Response::new(EchoReply {
                            message: format!("echo: {}", r.into_inner().message),
                        }))
                    });
                    grpc.unary(svc, req).await
                }
                "/test.Echo/Slow" => {
                    let svc = tower::service_fn(|r: tonic::Request<EchoRequest>| async move {
                        let r = r.into_inner();
                        tokio::time::sleep(Duration::from_millis(u64::from(r.count))).await;
                        Ok::<_, Status>(tonic::Response::new(EchoReply {
                            message: format!("slow: {}", r.message),
                        }))
                    });
                    grpc.unary(svc, req).await
                }
                "/test.Echo/Fail" => {
                    let svc = tower::service_fn(|_: tonic::Request<EchoRequest>| async move {
                        Err::<tonic::Response<EchoReply>, _>(Status::not_found("no such order"))
                    });
                    grpc.unary(svc, req).await
                }
                "/test.Echo/Stream" => {
                    let svc = tower::service_fn(|r: tonic::Request<EchoRequest>| async move {
                        let r = r.into_inner();
                        let fail = r.message == "fail";
                        let items = (0..r.count)
                            .map(move |i| {
                                Ok(EchoReply {
                                    message: format!("{} #{i}", r.message),
                                })
                            })
                            .chain(fail.then(|| Err(Status::data_loss("stream broke"))));
                        let s: ReplyStream = Box::pin(futures::stream::iter(items));
                        Ok::<_, Status>(tonic::Response::new(s))
                    });
                    grpc.server_streaming(svc, req).await
                }
                _ => http::Response::builder()
                    .status(200)
                    .header("grpc-status", "12")
                    .body(tonic::body::Body::empty())
                    .unwrap(),
            })
        })
    }
}

async fn start_grpc_app() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        serve_grpc(listener, EchoServer).await;
    });
    (addr, task)
}

struct Setup {
    _pair: Pair,
    _app: tokio::task::JoinHandle<()>,
    client: tonic::client::Grpc<tonic::transport::Channel>,
}

async fn setup() -> Setup {
    let (addr, task) = start_grpc_app().await;
    // `start_pair` wants an `App`; build the pair by hand for a gRPC app.
    let server = start_proxy(&config_yaml(addr, "grpc", "[]", "")).await;
    let up = upstream("orders", &["orders", "orders.shop"], &[server.inbound_addr]);
    let client = start_proxy(&config_yaml(addr, "http", &up, "")).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", client.outbound_addr))
            .unwrap()
            .origin("http://orders.shop:8080".parse().unwrap())
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
    Setup {
        _pair: Pair { client, server },
        _app: task,
        client: tonic::client::Grpc::new(channel),
    }
}

fn req(message: &str, count: u32) -> tonic::Request<EchoRequest> {
    tonic::Request::new(EchoRequest {
        message: message.into(),
        count,
    })
}

#[tokio::test]
async fn grpc_unary() {
    let mut s = setup().await;
    s.client.ready().await.unwrap();
    let rsp = s
        .client
        .unary(
            req("hi", 0),
            PathAndQuery::from_static("/test.Echo/Unary"),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.into_inner().message, "echo: hi");
}

#[tokio::test]
async fn grpc_error_status_reaches_the_client() {
    let mut s = setup().await;
    s.client.ready().await.unwrap();
    let err = s
        .client
        .unary(
            req("x", 0),
            PathAndQuery::from_static("/test.Echo/Fail"),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such order");
}

#[tokio::test]
async fn grpc_server_streaming_with_status_in_trailers() {
    let mut s = setup().await;
    s.client.ready().await.unwrap();
    let rsp = s
        .client
        .server_streaming(
            req("ok", 5),
            PathAndQuery::from_static("/test.Echo/Stream"),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .unwrap();
    let items: Vec<_> = rsp.into_inner().collect().await;
    let messages: Vec<String> = items.into_iter().map(|r| r.unwrap().message).collect();
    assert_eq!(
        messages,
        (0..5).map(|i| format!("ok #{i}")).collect::<Vec<_>>()
    );

    // Two messages, then DATA_LOSS in the trailers.
    s.client.ready().await.unwrap();
    let rsp = s
        .client
        .server_streaming(
            req("fail", 2),
            PathAndQuery::from_static("/test.Echo/Stream"),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .unwrap();
    let mut stream = rsp.into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "fail #0");
    assert_eq!(stream.message().await.unwrap().unwrap().message, "fail #1");
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert_eq!(err.message(), "stream broke");
}

/// A tonic client on `proxy`'s outbound listener naming `authority`.
async fn client_via(
    proxy: &trellis_proxy::ProxyHandle,
    authority: &str,
) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.outbound_addr))
            .unwrap()
            .origin(format!("http://{authority}").parse().unwrap())
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
    tonic::client::Grpc::new(channel)
}

async fn call(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    method: &'static str,
    count: u32,
) -> Result<EchoReply, Status> {
    client.ready().await.unwrap();
    client
        .unary(
            req("x", count),
            PathAndQuery::from_static(method),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

/// What a gRPC client must see when the proxy answers: a status it
/// understands, the proxy's message, and the reason beside them.
fn assert_answered(status: &Status, code: Code, reason: &str, message: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("x-trellis-error")
            .map(|v| v.to_str().unwrap()),
        Some(reason),
        "{status:?}"
    );
}

/// One upstream `orders` on `addrs` with `policy` (the proxy config's effective form).
fn upstream_with(addrs: &[std::net::SocketAddr], policy: &str) -> String {
    let addrs: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "- name: orders\n  authorities: [orders]\n  discovery: {{static: {{addresses: [{}]}}}}\n  policy: {policy}\n",
        addrs.join(", ")
    )
}

#[tokio::test]
async fn grpc_callers_get_unimplemented_for_an_unknown_upstream_and_unavailable_without_endpoints()
{
    let (addr, _app) = start_grpc_app().await;
    let proxy = start_proxy(&config_yaml(addr, "http", &upstream_with(&[], "{}"), "")).await;
    let mut nowhere = client_via(&proxy, "nowhere").await;
    let err = call(&mut nowhere, "/test.Echo/Unary", 0).await.unwrap_err();
    assert_answered(
        &err,
        Code::Unimplemented,
        "unknown-upstream",
        "unknown upstream",
    );
    let mut orders = client_via(&proxy, "orders").await;
    let err = call(&mut orders, "/test.Echo/Unary", 0).await.unwrap_err();
    assert_answered(
        &err,
        Code::Unavailable,
        "no-endpoints",
        "no endpoints available",
    );
}

#[tokio::test]
async fn grpc_callers_get_unavailable_for_a_connect_failure_then_an_open_circuit() {
    let (addr, _app) = start_grpc_app().await;
    // A port nothing listens on.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let breaker = "{circuitBreaker: {failureRateThreshold: 50, minimumRequests: 100, window: 10s, consecutiveFailures: 2, openDuration: 30s, maxOpenDuration: 60s, halfOpenRequests: 1}}";
    let proxy = start_proxy(&config_yaml(
        addr,
        "http",
        &upstream_with(&[closed], breaker),
        "",
    ))
    .await;
    let mut orders = client_via(&proxy, "orders").await;
    for _ in 0..2 {
        let err = call(&mut orders, "/test.Echo/Unary", 0).await.unwrap_err();
        assert_answered(
            &err,
            Code::Unavailable,
            "connect-failure",
            "connection to upstream failed",
        );
    }
    let err = call(&mut orders, "/test.Echo/Unary", 0).await.unwrap_err();
    assert_answered(
        &err,
        Code::Unavailable,
        "circuit-open",
        "circuit breaker is open",
    );
}

#[tokio::test]
async fn grpc_callers_get_deadline_exceeded_for_a_timeout() {
    let (addr, _app) = start_grpc_app().await;
    let timeout = "{timeout: {request: 200ms, connect: 1s, idle: 60s}}";
    let proxy = start_proxy(&config_yaml(
        addr,
        "http",
        &upstream_with(&[addr], timeout),
        "",
    ))
    .await;
    let mut orders = client_via(&proxy, "orders").await;
    let err = call(&mut orders, "/test.Echo/Slow", 5000)
        .await
        .unwrap_err();
    assert_answered(&err, Code::DeadlineExceeded, "timeout", "request timed out");
    // In time, the reply passes.
    let ok = call(&mut orders, "/test.Echo/Slow", 0).await.unwrap();
    assert_eq!(ok.message, "slow: x");
}

#[tokio::test]
async fn grpc_callers_get_unavailable_for_a_full_bulkhead() {
    let (addr, _app) = start_grpc_app().await;
    let bulkhead = "{bulkhead: {maxConcurrent: 1, maxQueued: 0, queueTimeout: 10ms}}";
    let proxy = start_proxy(&config_yaml(
        addr,
        "http",
        &upstream_with(&[addr], bulkhead),
        "",
    ))
    .await;
    let mut holder = client_via(&proxy, "orders").await;
    let held = tokio::spawn(async move { call(&mut holder, "/test.Echo/Slow", 3000).await });
    let mut orders = client_via(&proxy, "orders").await;
    let mut refused = None;
    for _ in 0..50 {
        match call(&mut orders, "/test.Echo/Unary", 0).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            // The slow call has not taken its slot yet.
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let err = refused.expect("the bulkhead never filled");
    assert_answered(&err, Code::Unavailable, "bulkhead-full", "bulkhead is full");
    assert_eq!(held.await.unwrap().unwrap().message, "slow: x");
}

#[tokio::test]
async fn grpc_callers_get_resource_exhausted_over_the_inbound_rate() {
    let (addr, _app) = start_grpc_app().await;
    let limited = "inbound: {rateLimit: {requestsPerSecond: 1, burst: 1}}";
    let server = start_proxy(&config_yaml(addr, "grpc", "[]", limited)).await;
    let up = upstream("orders", &["orders"], &[server.inbound_addr]);
    let client = start_proxy(&config_yaml(addr, "http", &up, "")).await;
    let mut orders = client_via(&client, "orders").await;
    call(&mut orders, "/test.Echo/Unary", 0).await.unwrap();
    let err = call(&mut orders, "/test.Echo/Unary", 0).await.unwrap_err();
    assert_answered(
        &err,
        Code::ResourceExhausted,
        "rate-limited",
        "rate limited",
    );
}
