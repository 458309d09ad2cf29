//! Logs, traces and W3C trace-context propagation.
//!
//! Every request a service serves gets a span whose parent is the caller's
//! `traceparent`, and one access-log line (method, path, status, duration,
//! trace id). Outgoing HTTP, gRPC and AMQP calls carry the current span's
//! context, so one trace crosses the whole shop. Spans are exported over
//! OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; without it they are still
//! created, so trace ids stay connected in logs and headers.

use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{ConfigError, Env};

/// The response header that tells a caller which trace its request joined.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// How logs and traces leave the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// `OTEL_SERVICE_NAME`, default the service's own name.
    pub service_name: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (OTLP/gRPC), e.g. `http://jaeger:4317`.
    pub otlp_endpoint: Option<String>,
    /// `LOG_FORMAT`: `text` (default) or `json`.
    pub json_logs: bool,
}

impl TelemetrySettings {
    pub fn from_env(env: &Env, service: &str) -> Result<Self, ConfigError> {
        let json_logs = match env.get("LOG_FORMAT").unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => {
                return Err(ConfigError::invalid(
                    "LOG_FORMAT",
                    other,
                    "expected text or json",
                ));
            }
        };
        Ok(TelemetrySettings {
            service_name: env.get("OTEL_SERVICE_NAME").unwrap_or(service).to_string(),
            otlp_endpoint: env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(str::to_string),
            json_logs,
        })
    }
}

/// Flushes pending spans when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Installs the process-wide subscriber. `RUST_LOG` filters the logs
/// (default `info`); spans are traced at `info` and above whatever it says,
/// so a quieter log never breaks a trace.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    let provider = tracer_provider(settings)?;
    let tracer = provider.tracer(settings.service_name.clone());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = if settings.json_logs {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(LevelFilter::INFO),
        )
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// For tests that run several services in one process: installs a
/// subscriber once (spans without export, logs to the test's output) and
/// ignores later calls.
pub fn init_for_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let provider = SdkTracerProvider::builder().build();
        let tracer = provider.tracer("shop-tests");
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(filter),
            )
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(LevelFilter::INFO),
            )
            .try_init();
        // The provider lives as long as the test process.
        std::mem::forget(provider);
    });
}

fn tracer_provider(settings: &TelemetrySettings) -> anyhow::Result<SdkTracerProvider> {
    let resource = Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &settings.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// The trace context a caller sent in `traceparent`/`tracestate`.
pub fn extract_context(headers: &HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes the current span's context into outgoing headers.
pub fn inject_context(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// The current span's context as `(name, value)` pairs, for carriers that
/// are not HTTP headers (gRPC metadata, AMQP message headers).
pub fn current_context_fields() -> Vec<(String, String)> {
    let mut headers = HeaderMap::new();
    inject_context(&mut headers);
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The trace id of the current span (zero when there is none).
pub fn current_trace_id() -> TraceId {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
}

/// Middleware for every service: a server span parented on the caller's
/// context, the trace id in the response, one access-log line per request.
pub async fn http_server(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let client = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {path}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
    );
    // A malformed traceparent starts a new trace, as W3C says.
    let _ = span.set_parent(extract_context(request.headers()));
    let trace_id = span.context().span().span_context().trace_id();

    let mut response = next.run(request).instrument(span.clone()).await;

    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if let Ok(v) = HeaderValue::from_str(&trace_id.to_string()) {
        response.headers_mut().insert(TRACE_ID_HEADER, v);
    }
    tracing::info!(
        target: "access",
        parent: None,
        %method,
        path,
        status,
        duration_ms = start.elapsed().as_secs_f64() * 1e3,
        %trace_id,
        client,
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_env() {
        let s = TelemetrySettings::from_env(&Env::default(), "users").unwrap();
        assert_eq!(s.service_name, "users");
        assert_eq!(s.otlp_endpoint, None);
        assert!(!s.json_logs);
        let env = Env::from_pairs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_SERVICE_NAME", "users-eu"),
            ("LOG_FORMAT", "json"),
        ]);
        let s = TelemetrySettings::from_env(&env, "users").unwrap();
        assert_eq!(s.otlp_endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(s.service_name, "users-eu");
        assert!(s.json_logs);
        let err = TelemetrySettings::from_env(&Env::from_pairs([("LOG_FORMAT", "xml")]), "u")
            .unwrap_err();
        assert_eq!(err.var(), "LOG_FORMAT");
    }

    #[test]
    fn extracts_a_w3c_parent() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let cx = extract_context(&headers);
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_remote());
    }
}
