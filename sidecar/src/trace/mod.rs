//! Distributed tracing: W3C `traceparent`/`tracestate` in and out, a server
//! span per inbound request and a client span per outbound attempt, named and
//! attributed after the OpenTelemetry HTTP semantic conventions.
//!
//! Each proxy owns its tracer provider (no global one), so several proxies in
//! one process keep their spans apart. Span contexts are created even when
//! nothing is exported: the ids they carry keep the trace connected across
//! the mesh. Without an exporter only the context is made (ids and the
//! sampling decision, exactly as the SDK would), not a recording span whose
//! attributes nobody would read. Sampling is parent-based: a caller's sampled
//! flag wins, and new traces are sampled at the configured ratio.

mod otlp;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SdkTracer, SdkTracerProvider,
    ShouldSample, Span,
};
use tower::{Layer, Service};

use crate::body::Body;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use trellis_api::proxy::{Identity, Tracing};

/// The tracer of one proxy.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    flusher: Option<otlp::Flusher>,
    /// The provider's sampler and id generator, for contexts of spans that
    /// are not exported.
    sampler: Sampler,
    ids: RandomIdGenerator,
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
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)));
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(sampler.clone())
            .with_id_generator(RandomIdGenerator::default())
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
            sampler,
            ids: RandomIdGenerator::default(),
        })
    }

    /// Exports what is queued; call before exit.
    pub async fn flush(&self, timeout: Duration) {
        if let Some(f) = &self.flusher {
            f.flush(timeout).await;
        }
        let _ = self.provider.shutdown_with_timeout(timeout);
    }

    /// The caller's context. A canonical `traceparent` (what every W3C
    /// tracer, and every trellis-proxy, writes) with no or an empty
    /// `tracestate` is read here directly; anything else goes through the
    /// SDK's propagator. Both give the same context (a test checks).
    fn extract(&self, headers: &HeaderMap) -> Context {
        match canonical_parent(headers) {
            Some(Some(sc)) => Context::new().with_remote_span_context(sc),
            Some(None) => Context::new(),
            None => self.propagator.extract(&HeaderExtractor(headers)),
        }
    }

    /// Starts the span of one inbound request; its context replaces the
    /// request's trace headers, so the app's spans become its children.
    pub fn server_span<B>(&self, req: &mut Request<B>, remote: Option<SocketAddr>) -> ActiveSpan {
        let parent = self.extract(req.headers());
        if self.flusher.is_none() {
            return self.unexported(&parent, req, SpanKind::Server);
        }
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
        inject(span.span_context(), req.headers_mut());
        ActiveSpan {
            span: Some(span),
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
        if self.flusher.is_none() {
            return self.unexported(&parent, req, SpanKind::Client);
        }
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
        inject(span.span_context(), req.headers_mut());
        ActiveSpan {
            span: Some(span),
            kind: SpanKind::Client,
        }
    }

    /// A span nobody will export: only its context is made, with the ids and
    /// the sampling decision `SdkTracer::build_with_context` would give it,
    /// and carried onward.
    fn unexported<B>(
        &self,
        parent_cx: &Context,
        req: &mut Request<B>,
        kind: SpanKind,
    ) -> ActiveSpan {
        let span_id = self.ids.new_span_id();
        let parent = parent_cx.span();
        let psc = parent.span_context();
        let (trace_id, parent_flags) = if psc.is_valid() {
            (psc.trace_id(), psc.trace_flags())
        } else {
            (self.ids.new_trace_id(), TraceFlags::default())
        };
        let sampling = self.sampler.should_sample(
            Some(parent_cx),
            trace_id,
            req.method().as_str(),
            &kind,
            &[],
            &[],
        );
        let flags = match sampling.decision {
            SamplingDecision::RecordAndSample => parent_flags.with_sampled(true),
            SamplingDecision::RecordOnly => parent_flags.with_sampled(false),
            SamplingDecision::Drop => TraceFlags::default(),
        };
        let cx = SpanContext::new(trace_id, span_id, flags, false, sampling.trace_state);
        inject(&cx, req.headers_mut());
        ActiveSpan { span: None, kind }
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// What `TraceContextPropagator::inject_context` writes, without its
/// intermediate `Context` and `String`s: `traceparent` and `tracestate`
/// (empty when there is none), replacing what the request carried.
fn inject(cx: &SpanContext, headers: &mut HeaderMap) {
    if !cx.is_valid() {
        return;
    }
    // 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let put = |buf: &mut [u8], mut v: u128| {
        for d in buf.iter_mut().rev() {
            *d = HEX[(v & 0xf) as usize];
            v >>= 4;
        }
    };
    put(
        &mut buf[3..35],
        u128::from_be_bytes(cx.trace_id().to_bytes()),
    );
    put(
        &mut buf[36..52],
        u128::from(u64::from_be_bytes(cx.span_id().to_bytes())),
    );
    put(
        &mut buf[53..55],
        u128::from((cx.trace_flags() & TraceFlags::SAMPLED).to_u8()),
    );
    if let Ok(mut v) = HeaderValue::from_bytes(&buf) {
        // Unique per hop: indexing it in HPACK would only evict what repeats.
        v.set_sensitive(true);
        headers.insert(TRACEPARENT, v);
    }
    let state = cx.trace_state().header();
    let state = if state.is_empty() {
        Ok(HeaderValue::from_static(""))
    } else {
        HeaderValue::from_str(&state)
    };
    if let Ok(v) = state {
        headers.insert(TRACESTATE, v);
    }
}

/// `Some(parent)` when the trace headers are in the form the propagator
/// needs no general parsing for: no `traceparent` at all (`Some(None)`), or
/// `00-<32 lowercase hex>-<16 lowercase hex>-<2 lowercase hex>` with no or
/// an empty `tracestate` (`Some(Some(_))`, or `Some(None)` for all-zero ids,
/// which the propagator rejects). `None`: ask the propagator.
fn canonical_parent(headers: &HeaderMap) -> Option<Option<SpanContext>> {
    let Some(parent) = headers.get(TRACEPARENT) else {
        return Some(None);
    };
    if headers
        .get(TRACESTATE)
        .is_some_and(|state| !state.is_empty())
    {
        return None;
    }
    let b = parent.as_bytes();
    if b.len() != 55 || !b.starts_with(b"00-") || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    fn hex(digits: &[u8]) -> Option<u128> {
        digits.iter().try_fold(0u128, |acc, d| {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                _ => return None,
            };
            Some(acc << 4 | u128::from(v))
        })
    }
    let trace_id = TraceId::from(hex(&b[3..35])?);
    let span_id = SpanId::from(hex(&b[36..52])? as u64);
    let flags = TraceFlags::new(hex(&b[53..55])? as u8) & TraceFlags::SAMPLED;
    let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    Some(sc.is_valid().then_some(sc))
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
/// Without an exporter there is no span to record into, only its context.
pub struct ActiveSpan {
    span: Option<Span>,
    kind: SpanKind,
}

impl ActiveSpan {
    pub fn response(&mut self, status: StatusCode) {
        let Some(span) = &mut self.span else { return };
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        // Servers own their 5xx; a client also failed on a 4xx.
        let failed = match self.kind {
            SpanKind::Client => status.is_client_error() || status.is_server_error(),
            _ => status.is_server_error(),
        };
        if failed {
            span.set_attribute(KeyValue::new("error.type", status.as_u16().to_string()));
            span.set_status(Status::error(""));
        }
    }

    /// The attempt failed before a response (a proxy error reason).
    pub fn error(&mut self, reason: &str) {
        let Some(span) = &mut self.span else { return };
        span.set_attribute(KeyValue::new("error.type", reason.to_string()));
        span.set_status(Status::error(reason.to_string()));
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
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let remote = req.extensions().get::<Remote>().map(|r| r.0);
        let mut span = self.telemetry.server_span(&mut req, remote);
        let fut: Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>> =
            Box::pin(self.inner.call(req));
        Box::pin(async move {
            let result = fut.await;
            match &result {
                Ok(rsp) => span.response(rsp.status()),
                Err(e) => span.error(e.reason()),
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_writes_what_the_propagator_writes() {
        let propagator = TraceContextPropagator::new();
        for (flags, state) in [
            (TraceFlags::SAMPLED, ""),
            (TraceFlags::default(), "a=b,c=d"),
        ] {
            let sc = SpanContext::new(
                TraceId::from(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
                SpanId::from(0x00f0_67aa_0ba9_02b7),
                flags,
                false,
                state.parse::<TraceState>().unwrap(),
            );
            let mut ours = HeaderMap::new();
            inject(&sc, &mut ours);
            let mut theirs = std::collections::HashMap::new();
            propagator.inject_context(&Context::new().with_remote_span_context(sc), &mut theirs);
            assert_eq!(ours.len(), theirs.len());
            for (k, v) in &theirs {
                assert_eq!(ours[k.as_str()], v.as_str(), "{k}");
            }
        }
    }

    #[test]
    fn canonical_parents_read_as_the_propagator_reads_them() {
        let propagator = TraceContextPropagator::new();
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cases: &[(&str, Option<&str>)] = &[
            (parent, None),
            (parent, Some("")),
            (parent, Some("a=b")),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                None,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff",
                None,
            ),
            (
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                None,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
                None,
            ),
            (
                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
                None,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
                None,
            ),
            (
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                None,
            ),
            (
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
                None,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
                None,
            ),
            (
                "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                None,
            ),
            (
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                None,
            ),
            ("garbage", None),
            ("", None),
        ];
        let telemetry = Telemetry::new(
            &Tracing::default(),
            &Identity {
                service: "t".into(),
                namespace: "t".into(),
            },
            &Metrics::new(),
        )
        .unwrap();
        let mut fast = 0;
        for (parent, state) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, HeaderValue::from_str(parent).unwrap());
            if let Some(s) = state {
                headers.insert(TRACESTATE, HeaderValue::from_str(s).unwrap());
            }
            if canonical_parent(&headers).is_some() {
                fast += 1;
            }
            let ours = telemetry.extract(&headers);
            let theirs = propagator.extract(&HeaderExtractor(&headers));
            assert_eq!(
                ours.span().span_context(),
                theirs.span().span_context(),
                "{parent} / {state:?}"
            );
        }
        // The cases above do exercise both paths.
        assert!(fast >= 5 && fast < cases.len(), "{fast}");
        let none = telemetry.extract(&HeaderMap::new());
        assert!(!none.span().span_context().is_valid());
    }
}
