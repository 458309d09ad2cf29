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
/// answers NOT_FOUND.
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
