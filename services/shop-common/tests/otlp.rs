//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the span of a served request
//! reaches a real OTLP/gRPC receiver, in the caller's trace, under the
//! service's name. (Its own test binary: the subscriber is process-wide.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use shop_common::health::Health;
use shop_common::server::{self, App};
use shop_common::telemetry::{self, TelemetrySettings};
use shop_testkit::{Running, http};

/// (service.name, trace id as hex, span name) of every span received.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, String, String)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let trace_id: String =
                        span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    spans.push((service.clone(), trace_id, span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_requests_are_exported_over_otlp() {
    let receiver = Receiver::default();
    let collector = Running::router(
        tonic::service::Routes::new(TraceServiceServer::new(receiver.clone())).into_axum_router(),
    )
    .await;
    let guard = telemetry::init(&TelemetrySettings {
        service_name: "otlp-test".into(),
        otlp_endpoint: Some(collector.url("")),
        json_logs: false,
    })
    .unwrap();

    let app = App {
        router: server::router().route("/traced", get(|| async { "ok" })),
        health: Health::new(),
        openapi: Default::default(),
    };
    let service = Running::start(move |listener, shutdown| async move {
        server::serve(listener, app, shutdown, Duration::from_secs(5)).await?;
        Ok(())
    })
    .await;
    let trace_id = "7bf92f3577b34da6a3ce929d0e0e4736";
    let r = http()
        .get(service.url("/traced"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");

    // Dropping the guard flushes the batch (a blocking call: off the runtime).
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    let spans = receiver.0.lock().unwrap().clone();
    assert!(
        spans.contains(&("otlp-test".into(), trace_id.into(), "GET /traced".into())),
        "{spans:?}"
    );
}
