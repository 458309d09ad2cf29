//! `trellis.e2e.Echo`, a gRPC service with a unary and a server-streaming
//! call, and its client. Messages are hand-written prost types (no protoc):
//!
//! ```proto
//! service Echo {
//!   rpc Unary(EchoRequest) returns (EchoReply);
//!   rpc ServerStream(EchoRequest) returns (stream EchoReply);
//! }
//! message EchoRequest { string message = 1; uint32 count = 2; }
//! message EchoReply { string message = 1; string pod = 2; uint32 index = 3; }
//! ```

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use http::uri::PathAndQuery;
use tonic::Status;
use tonic_prost::ProstCodec;

use crate::api::{GrpcCall, GrpcReply, GrpcResult, GrpcSpec};
use crate::echo::EchoState;

pub const SERVICE: &str = "trellis.e2e.Echo";
const UNARY: &str = "/trellis.e2e.Echo/Unary";
const SERVER_STREAM: &str = "/trellis.e2e.Echo/ServerStream";

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
    #[prost(string, tag = "2")]
    pub pod: String,
    #[prost(uint32, tag = "3")]
    pub index: u32,
}

/// The server side; it shares the echo's faults and hit count.
#[derive(Clone)]
pub struct EchoService {
    state: Arc<EchoState>,
}

impl EchoService {
    pub fn new(state: Arc<EchoState>) -> Self {
        EchoService { state }
    }
}

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            let path = req.uri().path().to_string();
            let rsp = match path.as_str() {
                UNARY => {
                    let svc = tower::service_fn(move |r: tonic::Request<EchoRequest>| {
                        let state = state.clone();
                        async move {
                            fault(&state).await?;
                            Ok::<_, Status>(tonic::Response::new(EchoReply {
                                message: r.into_inner().message,
                                pod: state.pod.clone(),
                                index: 0,
                            }))
                        }
                    });
                    grpc.unary(svc, req).await
                }
                SERVER_STREAM => {
                    let svc = tower::service_fn(move |r: tonic::Request<EchoRequest>| {
                        let state = state.clone();
                        async move {
                            fault(&state).await?;
                            let r = r.into_inner();
                            let pod = state.pod.clone();
                            let replies = (0..r.count).map(move |index| {
                                Ok(EchoReply {
                                    message: r.message.clone(),
                                    pod: pod.clone(),
                                    index,
                                })
                            });
                            let s: Replies = Box::pin(futures::stream::iter(replies));
                            Ok::<_, Status>(tonic::Response::new(s))
                        }
                    });
                    grpc.server_streaming(svc, req).await
                }
                _ => Status::unimplemented(format!("no method {path}")).into_http(),
            };
            Ok(rsp)
        })
    }
}

async fn fault(state: &EchoState) -> Result<(), Status> {
    match state.serve_one().await {
        Some(status) => Err(Status::unavailable(format!(
            "fault injected by {} ({status})",
            state.pod
        ))),
        None => Ok(()),
    }
}

/// Runs one [`GrpcSpec`] over `channel` (whose origin names the service).
pub async fn call(channel: tonic::transport::Channel, spec: &GrpcSpec) -> GrpcResult {
    let mut client = tonic::client::Grpc::new(channel);
    if let Err(e) = client.ready().await {
        return GrpcResult {
            replies: vec![],
            error: Some(format!("not ready: {e}")),
        };
    }
    let request = tonic::Request::new(EchoRequest {
        message: spec.message.clone(),
        count: spec.count,
    });
    let codec = ProstCodec::<EchoRequest, EchoReply>::default();
    let reply = |r: EchoReply| GrpcReply {
        message: r.message,
        pod: r.pod,
        index: r.index,
    };
    match spec.call {
        GrpcCall::Unary => match client
            .unary(request, PathAndQuery::from_static(UNARY), codec)
            .await
        {
            Ok(r) => GrpcResult {
                replies: vec![reply(r.into_inner())],
                error: None,
            },
            Err(s) => GrpcResult {
                replies: vec![],
                error: Some(status_text(&s)),
            },
        },
        GrpcCall::ServerStream => {
            let mut result = GrpcResult::default();
            match client
                .server_streaming(request, PathAndQuery::from_static(SERVER_STREAM), codec)
                .await
            {
                Ok(r) => {
                    let mut stream = r.into_inner();
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(r) => result.replies.push(reply(r)),
                            Err(s) => {
                                result.error = Some(status_text(&s));
                                break;
                            }
                        }
                    }
                }
                Err(s) => result.error = Some(status_text(&s)),
            }
            result
        }
    }
}

fn status_text(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}
