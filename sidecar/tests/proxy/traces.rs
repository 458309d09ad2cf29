//! Tracing: spans of both sidecars reach a real OTLP/gRPC receiver, in one
//! trace, with the client span of the caller's sidecar as the parent of the
//! server span of the callee's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Version;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::support::*;

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push((service.clone(), s));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attr(s: &Span, key: &str) -> String {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(|v| format!("{:?}", v.value))
        .unwrap_or_default()
}

#[tokio::test]
async fn spans_of_both_sidecars_share_one_trace() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let server_task = {
        let r = receiver.clone();
        tokio::spawn(async move {
            serve_grpc(listener, TraceServiceServer::new(r)).await;
        })
    };
    let tracing = format!("tracing: {{otlpEndpoint: \"http://{collector}\", samplingRatio: 1.0}}");

    let app = start_app("orders", Duration::ZERO).await;
    let server = start_proxy(&config_yaml(app.addr, "http", "[]", &tracing)).await;
    let up = upstream("orders", &["orders"], &[server.inbound_addr]);
    let client = start_proxy(&config_yaml(app.addr, "http", &up, &tracing)).await;

    // The app's own span is the root; its context goes out with the request.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let root_span = "00f067aa0ba902b7";
    let mut req = http::Request::builder()
        .uri(format!("http://{}/echo", client.outbound_addr))
        .header("host", "orders")
        .header("traceparent", format!("00-{trace_id}-{root_span}-01"))
        .body(body(""))
        .unwrap();
    *req.version_mut() = Version::HTTP_11;
    let rsp = h1_client().request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let b = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let seen_by_app = json(&b)["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();

    // Shutdown flushes the export queues.
    client.shutdown().await;
    server.shutdown().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            receiver.0.lock().unwrap().len() >= 2
        })
        .await,
        "spans never arrived"
    );
    let spans = receiver.0.lock().unwrap().clone();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let client_span = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.kind == 3)
        .expect("a client span");
    let server_span = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.kind == 2)
        .expect("a server span");
    assert_eq!(hex(&client_span.trace_id), trace_id);
    assert_eq!(hex(&server_span.trace_id), trace_id);
    assert_eq!(hex(&client_span.parent_span_id), root_span);
    assert_eq!(server_span.parent_span_id, client_span.span_id);
    assert_eq!(client_span.name, "GET");
    assert!(attr(client_span, "http.response.status_code").contains("200"));
    assert!(attr(client_span, "peer.service").contains("orders"));
    assert!(attr(server_span, "url.path").contains("/echo"));
    // The app sees the server span as its parent.
    assert_eq!(
        seen_by_app,
        format!("00-{trace_id}-{}-01", hex(&server_span.span_id))
    );
    server_task.abort();
}

#[tokio::test]
async fn unsampled_parent_is_respected() {
    let app = start_app("orders", Duration::ZERO).await;
    let ups = upstream("orders", &["orders"], &[app.addr]);
    let proxy = start_proxy(&config_yaml(app.addr, "http", &ups, "")).await;
    let req = http::Request::builder()
        .uri(format!("http://{}/echo", proxy.outbound_addr))
        .header("host", "orders")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .body(body(""))
        .unwrap();
    let rsp = h1_client().request(req).await.unwrap();
    let b = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let tp = json(&b)["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(tp.ends_with("-00"), "not sampled downstream either: {tp}");
}
