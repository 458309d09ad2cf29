//! Distributed tracing: W3C `traceparent`/`tracestate` in and out, a server
//! span per inbound request and a client span per outbound attempt, named and
//! attributed after the OpenTelemetry HTTP semantic conventions.
//!
//! Each proxy owns its tracer provider (no global one), so several proxies in
//! one process keep their spans apart. Spans are created even when nothing is
//! exported: the ids they carry keep the trace connected across the mesh.
//! Sampling is parent-based: a caller's sampled flag wins, and new traces are
//! sampled at the configured ratio.

mod otlp;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use tower::{Layer, Service};

use crate::body::Body;
use crate::metrics::Metrics;
use trellis_api::proxy::{Identity, Tracing};

/// The tracer of one proxy.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    flusher: Option<otlp::Flusher>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("exporting", &self.flusher.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Must run inside a tokio runtime when `config.otlp_endpoint` is set.
    pub fn new(config: &Tracing, identity: &Identity, metrics: &Metrics) -> anyhow::Result<Self> {
        let resource = Resource::builder()
            .with_service_name(identity.service.clone())
            .with_attributes([
                KeyValue::new("service.namespace", identity.namespace.clone()),
                KeyValue::new("trellis.component", "proxy"),
            ])
            .build();
        let ratio = config.sampling_ratio.get();
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(resource.clone());
        let mut flusher = None;
        if let Some(endpoint) = &config.otlp_endpoint {
            let (queue, f) = otlp::start(endpoint, &resource, metrics.spans_dropped_total.clone())?;
            builder = builder.with_span_processor(queue);
            flusher = Some(f);
        }
        let provider = builder.build();
        let tracer = provider.tracer("trellis-proxy");
        Ok(Telemetry {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            flusher,
        })
    }

    /// Exports what is queued; call before exit.
    pub async fn flush(&self, timeout: Duration) {
        if let Some(f) = &self.flusher {
            f.flush(timeout).await;
        }
        let _ = self.provider.shutdown_with_timeout(timeout);
    }

    fn extract(&self, headers: &HeaderMap) -> Context {
        self.propagator.extract(&HeaderExtractor(headers))
    }

    /// Starts the span of one inbound request; its context replaces the
    /// request's trace headers, so the app's spans become its children.
    pub fn server_span<B>(&self, req: &mut Request<B>, remote: Option<SocketAddr>) -> ActiveSpan {
        let parent = self.extract(req.headers());
        let mut attrs = vec![
            KeyValue::new("http.request.method", req.method().as_str().to_string()),
            KeyValue::new("url.path", req.uri().path().to_string()),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("network.protocol.version", protocol(req.version())),
        ];
        if let Some(host) = authority(req) {
            attrs.push(KeyValue::new("server.address", host));
        }
        if let Some(r) = remote {
            attrs.push(KeyValue::new("client.address", r.ip().to_string()));
        }
        let span = self.tracer.build_with_context(
            self.tracer
                .span_builder(req.method().as_str().to_string())
                .with_kind(SpanKind::Server)
                .with_attributes(attrs),
            &parent,
        );
        self.inject(&span, req.headers_mut());
        ActiveSpan {
            span,
            kind: SpanKind::Server,
        }
    }

    /// Starts the span of one outbound attempt to `endpoint`, a child of the
    /// caller's context; the attempt carries the span's context onward.
    pub fn client_span<B>(
        &self,
        req: &mut Request<B>,
        peer: &str,
        endpoint: SocketAddr,
    ) -> ActiveSpan {
        let parent = self.extract(req.headers());
        let host = authority(req).unwrap_or_else(|| peer.to_string());
        let attrs = vec![
            KeyValue::new("http.request.method", req.method().as_str().to_string()),
            KeyValue::new("url.full", format!("http://{host}{}", req.uri().path())),
            KeyValue::new("server.address", endpoint.ip().to_string()),
            KeyValue::new("server.port", i64::from(endpoint.port())),
            KeyValue::new("network.protocol.version", protocol(req.version())),
            KeyValue::new("peer.service", peer.to_string()),
        ];
        let span = self.tracer.build_with_context(
            self.tracer
                .span_builder(req.method().as_str().to_string())
                .with_kind(SpanKind::Client)
                .with_attributes(attrs),
            &parent,
        );
        self.inject(&span, req.headers_mut());
        ActiveSpan {
            span,
            kind: SpanKind::Client,
        }
    }

    fn inject(&self, span: &Span, headers: &mut HeaderMap) {
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        self.propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
    }
}

fn authority<B>(req: &Request<B>) -> Option<String> {
    req.uri().host().map(str::to_string).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).to_string())
    })
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

/// A started span; it ends when dropped (a dropped attempt still reports).
pub struct ActiveSpan {
    span: Span,
    kind: SpanKind,
}

impl ActiveSpan {
    pub fn response(&mut self, status: StatusCode) {
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        // Servers own their 5xx; a client also failed on a 4xx.
        let failed = match self.kind {
            SpanKind::Client => status.is_client_error() || status.is_server_error(),
            _ => status.is_server_error(),
        };
        if failed {
            self.span
                .set_attribute(KeyValue::new("error.type", status.as_u16().to_string()));
            self.span.set_status(Status::error(""));
        }
    }

    /// The attempt failed before a response (a proxy error reason).
    pub fn error(&mut self, reason: &str) {
        self.span
            .set_attribute(KeyValue::new("error.type", reason.to_string()));
        self.span.set_status(Status::error(reason.to_string()));
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A server span around each request of the wrapped (inbound) service.
#[derive(Clone)]
pub struct ServerSpanLayer {
    telemetry: std::sync::Arc<Telemetry>,
}

impl ServerSpanLayer {
    pub fn new(telemetry: std::sync::Arc<Telemetry>) -> Self {
        ServerSpanLayer { telemetry }
    }
}

impl<S> Layer<S> for ServerSpanLayer {
    type Service = ServerSpan<S>;
    fn layer(&self, inner: S) -> ServerSpan<S> {
        ServerSpan {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ServerSpan<S> {
    inner: S,
    telemetry: std::sync::Arc<Telemetry>,
}

/// The caller's address, put in request extensions by the listener.
#[derive(Clone, Copy, Debug)]
pub struct Remote(pub SocketAddr);

impl<S> Service<Request<Body>> for ServerSpan<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let remote = req.extensions().get::<Remote>().map(|r| r.0);
        let mut span = self.telemetry.server_span(&mut req, remote);
        let fut: Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>> =
            Box::pin(self.inner.call(req));
        Box::pin(async move {
            let rsp = fut.await?;
            span.response(rsp.status());
            if let Some(reason) = crate::error::ProxyError::of_response(&rsp) {
                span.error(reason);
            }
            Ok(rsp)
        })
    }
}
