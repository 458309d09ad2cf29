//! Retries: call the inner "attempt" service again when an attempt failed in
//! a way `retryOn` names, the request can be replayed, and the budget allows.
//!
//! The inner service is re-invoked per attempt — it is "pick an endpoint,
//! connect, send" — so a retry is balanced afresh. Every attempt of a request
//! that may be retried carries the same [`TriedEndpoints`] (inserted once per
//! request, cloned into each attempt), where the balancer records its picks
//! and which it avoids; a request tried once goes down as it came.
//!
//! What is retried, and why not more:
//! * only idempotent methods ([`is_idempotent`]), unless the
//!   route says `allowNonIdempotent`: a POST that reached the app may have
//!   done its work before failing;
//! * only bodies that can be replayed: buffered as they stream, up to
//!   [`MAX_REPLAY_BODY_BYTES`]; a larger body (by `content-length`, or found
//!   out while streaming) is sent once;
//! * never once the response has started streaming to the client: the
//!   decision is made on the response head, or, for gRPC with `retryOn` gRPC
//!   codes, on trailers that have already arrived with the first frame (a
//!   unary reply) — a stream is never waited for;
//! * between attempts, an exponential backoff, at least the `Retry-After` the
//!   upstream asked for; not started at all if it would outlast the request's
//!   [`Deadline`] (the caller gets the real failure instead of a timeout);
//! * each retry is withdrawn from the shared [`RetryBudget`]; when it is spent
//!   a failed response is returned as is, marked [`BudgetExhausted`] for the
//!   fallback, a failed attempt becomes `ProxyError::BudgetExhausted`, and
//!   `trellis_retry_budget_exhausted_total` counts it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderMap, Request, Response, request::Parts};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::IntCounter;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use trellis_api::crd::RetryOn;
use trellis_api::proxy::{self, MAX_REPLAY_BODY_BYTES};
use trellis_api::route::is_idempotent;

use super::backoff::{Backoff, parse_retry_after};
use super::budget::RetryBudget;
use super::classify;
use super::fallback::BudgetExhausted;
use super::replay::ReplayBody;
use super::timeout::Deadline;
use crate::balance::TriedEndpoints;
use crate::body::{Body, BoxError};
use crate::error::ProxyError;
use crate::metrics::Metrics;

#[derive(Debug)]
struct Settings {
    attempts: u32,
    backoff: Backoff,
    /// Each condition with its `trellis_retries_total{reason}` counter.
    retry_on: Vec<(RetryOn, IntCounter)>,
    allow_non_idempotent: bool,
    /// Whether any condition is a gRPC code (then trailers are worth a look).
    grpc: bool,
}

#[derive(Debug)]
struct Shared {
    settings: Option<Settings>,
    budget: Option<Arc<RetryBudget>>,
    exhausted: IntCounter,
    peer: Arc<str>,
}

/// Retries per a [`proxy::RetryPolicy`]; without one, calls once and only
/// converts the attempt's errors.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    pub fn new(
        policy: Option<&proxy::RetryPolicy>,
        budget: Option<Arc<RetryBudget>>,
        peer: &str,
        metrics: &Metrics,
    ) -> Self {
        let settings = policy.map(|p| Settings {
            attempts: p.attempts.get(),
            backoff: Backoff::new(&p.backoff),
            retry_on: p
                .retry_on
                .iter()
                .map(|on| {
                    let reason = on.to_string();
                    (
                        *on,
                        metrics.retries_total.with_label_values(&[peer, &reason]),
                    )
                })
                .collect(),
            allow_non_idempotent: p.allow_non_idempotent,
            grpc: p.retry_on.iter().any(|on| matches!(on, RetryOn::Grpc(_))),
        });
        RetryLayer {
            shared: Arc::new(Shared {
                settings,
                budget,
                exhausted: metrics
                    .retry_budget_exhausted_total
                    .with_label_values(&[peer]),
                peer: peer.into(),
            }),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    /// Always ready: readiness is awaited per attempt, as each attempt may
    /// need the inner again.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if self.shared.max_attempts(&req) > 1 {
            return Box::pin(run(self.inner.clone(), self.shared.clone(), req));
        }
        // Tried once: nothing to replay and no endpoint to avoid, so the
        // request goes down as it is (no copy of its head for a retry).
        if let Some(budget) = &self.shared.budget {
            budget.deposit(Instant::now());
        }
        Box::pin(self.inner.clone().oneshot(req))
    }
}

impl Shared {
    /// How many times `req` may be tried: once unless the policy retries
    /// and the method may be repeated.
    fn max_attempts<B>(&self, req: &Request<B>) -> u32 {
        match &self.settings {
            Some(s) if s.allow_non_idempotent || is_idempotent(req.method().as_str()) => s.attempts,
            _ => 1,
        }
    }
}

/// How each attempt gets its body.
enum Plan {
    /// Sent once; no retry possible.
    Once(Option<Body>),
    /// No body at all: every attempt gets an empty one.
    Empty,
    /// Teed; `None` once the body outgrew the cap.
    Replay(ReplayBody),
}

impl Plan {
    fn new(parts: &Parts, body: Body, may_retry: bool) -> Plan {
        if body.is_end_stream() {
            return Plan::Empty;
        }
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_big = declared.unwrap_or(0) > MAX_REPLAY_BODY_BYTES as u64
            || body.size_hint().lower() > MAX_REPLAY_BODY_BYTES as u64;
        if !may_retry || too_big {
            return Plan::Once(Some(body));
        }
        Plan::Replay(ReplayBody::new(body, MAX_REPLAY_BODY_BYTES))
    }

    fn next(&mut self) -> Option<Body> {
        match self {
            Plan::Once(body) => body.take(),
            Plan::Empty => Some(crate::body::empty()),
            Plan::Replay(template) => template.replay().map(Body::from),
        }
    }

    fn can_replay(&self) -> bool {
        match self {
            Plan::Once(_) => false,
            Plan::Empty => true,
            Plan::Replay(template) => template.is_replayable(),
        }
    }
}

fn clone_parts(p: &Parts) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    *r.extensions_mut() = p.extensions.clone();
    r.into_parts().0
}

async fn run<S>(
    mut svc: S,
    shared: Arc<Shared>,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    let max_attempts = shared.max_attempts(&req);
    let (mut parts, body) = req.into_parts();
    parts.extensions.get_or_insert_with(TriedEndpoints::default);
    let settings = shared.settings.as_ref();
    let mut plan = Plan::new(&parts, body, max_attempts > 1);
    if let Some(budget) = &shared.budget {
        budget.deposit(Instant::now());
    }
    let deadline = parts.extensions.get::<Deadline>().map(|d| d.0);
    let mut attempt = 1u32;
    loop {
        let Some(body) = plan.next() else {
            // Unreachable: a retry is only planned while the body can be replayed.
            return Err(ProxyError::BadRequest);
        };
        let req = Request::from_parts(clone_parts(&parts), body);
        let result = match svc.ready().await {
            Ok(ready) => super::boxed(ready.call(req)).await,
            Err(e) => Err(e),
        };
        let settings = match settings {
            Some(s) if attempt < max_attempts && plan.can_replay() => s,
            _ => return result,
        };
        let (result, condition) = retry_condition(result, settings).await;
        let Some((condition, counter)) = condition else {
            return result;
        };
        let retry_after = match &result {
            Ok(rsp) => rsp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
            Err(_) => None,
        };
        let delay = settings
            .backoff
            .delay_after(attempt, retry_after, &mut rand::rng());
        let now = Instant::now();
        if deadline.is_some_and(|d| now + delay >= d) {
            return result;
        }
        if let Some(budget) = &shared.budget
            && !budget.try_withdraw(now)
        {
            shared.exhausted.inc();
            tracing::debug!(peer = %shared.peer, %condition, "retry budget exhausted");
            return finish_exhausted(result);
        }
        counter.inc();
        tracing::debug!(peer = %shared.peer, attempt, %condition, ?delay, "retrying");
        drop(result);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        attempt += 1;
    }
}

/// The upstream's failed response, marked for the fallback; a failed
/// attempt becomes the refusal to retry it.
fn finish_exhausted(
    result: Result<Response<Body>, ProxyError>,
) -> Result<Response<Body>, ProxyError> {
    let mut rsp = result.map_err(|_| ProxyError::BudgetExhausted)?;
    rsp.extensions_mut().insert(BudgetExhausted);
    Ok(rsp)
}

/// The `retryOn` condition the attempt's outcome matches, if any.
async fn retry_condition(
    result: Result<Response<Body>, ProxyError>,
    s: &Settings,
) -> (
    Result<Response<Body>, ProxyError>,
    Option<(RetryOn, &IntCounter)>,
) {
    let find = |pred: &dyn Fn(RetryOn) -> bool| {
        s.retry_on
            .iter()
            .find(|(on, _)| pred(*on))
            .map(|(on, c)| (*on, c))
    };
    let rsp = match result {
        Err(e) => return (Err(e), find(&|on| classify::retryable(e, on))),
        Ok(rsp) => rsp,
    };
    let status = rsp.status().as_u16();
    if let Some(found) = find(&|on| on.matches_status(status)) {
        return (Ok(rsp), Some(found));
    }
    if let Some(code) = classify::grpc_status(rsp.headers()) {
        return (Ok(rsp), find(&|on| on.matches_grpc(code)));
    }
    if s.grpc && classify::is_grpc(rsp.headers()) {
        let (rsp, code) = peek_trailers(rsp).await;
        let found = code.and_then(|code| find(&|on| on.matches_grpc(code)));
        return (Ok(rsp), found);
    }
    (Ok(rsp), None)
}

/// Reads a gRPC response's first frame, and whatever follows it without
/// waiting, up to the replay cap, looking for the trailers of a unary reply.
/// The response is rebuilt unchanged from what was read and the rest.
async fn peek_trailers(rsp: Response<Body>) -> (Response<Body>, Option<u16>) {
    let (parts, mut body) = rsp.into_parts();
    let mut frames = VecDeque::new();
    let mut size = 0usize;
    let mut code = None;
    let mut error = None;
    let mut ended = false;
    let mut next = body.frame().await;
    loop {
        match next {
            None => ended = true,
            Some(Err(e)) => {
                error = Some(e);
                ended = true;
            }
            Some(Ok(frame)) => {
                if let Some(t) = frame.trailers_ref() {
                    code = classify::grpc_status(t);
                    ended = true;
                }
                size += frame.data_ref().map_or(0, |d| d.len());
                frames.push_back(frame);
            }
        }
        if ended || size > MAX_REPLAY_BODY_BYTES {
            break;
        }
        match body.frame().now_or_never() {
            Some(polled) => next = polled,
            None => break,
        }
    }
    let rest = Prefixed {
        frames,
        error,
        rest: (!ended).then_some(body),
    };
    (Response::from_parts(parts, crate::body::boxed(rest)), code)
}

/// Frames already read, then the rest of the body.
struct Prefixed {
    frames: VecDeque<Frame<Bytes>>,
    error: Option<BoxError>,
    rest: Option<Body>,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(f) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or(SizeHint::with_exact(0), |r| r.size_hint());
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(u) = rest.upper() {
            hint.set_upper(u + buffered);
        }
        hint
    }
}

/// Trailers with a gRPC status, for tests here and in the process tests.
#[doc(hidden)]
pub fn grpc_trailers(code: u16) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from(code));
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::timeout::PerTryTimeoutLayer;
    use http::Method;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Duration;
    use trellis_api::Duration as ApiDuration;
    use trellis_api::bounded::{Bounded, Ratio};
    use trellis_api::crd::Jitter;

    /// What the scripted upstream does on one attempt.
    #[derive(Clone, Debug)]
    enum Step {
        Status(u16),
        StatusRetryAfter(u16, &'static str),
        Error(ProxyError),
        Refused,
        GrpcHeader(u16),
        GrpcTrailer(u16),
        /// A gRPC reply whose trailers come later: a stream.
        GrpcStream,
        Hang,
    }

    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        body: Bytes,
        avoid: Vec<SocketAddr>,
        at: Instant,
    }

    #[derive(Clone, Default)]
    struct Upstream {
        script: Arc<Mutex<VecDeque<Step>>>,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    fn ep(n: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n as u8], 80))
    }

    impl Upstream {
        fn new(steps: &[Step]) -> Self {
            let u = Upstream::default();
            u.script.lock().unwrap().extend(steps.iter().cloned());
            u
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        /// Fails as the attempt service does: with the client's error, classified.
        fn service(
            &self,
        ) -> impl Service<
            Request<Body>,
            Response = Response<Body>,
            Error = ProxyError,
            Future = impl Send + 'static,
        > + Clone
        + Send
        + 'static {
            let u = self.clone();
            let svc = tower::service_fn(move |req: Request<Body>| {
                let u = u.clone();
                async move {
                    let n = u.seen.lock().unwrap().len();
                    // What a balancer does: avoid what was tried, record its pick.
                    // A request tried once carries none.
                    let tried = req
                        .extensions()
                        .get::<TriedEndpoints>()
                        .cloned()
                        .unwrap_or_default();
                    let avoid = tried.list();
                    tried.push(ep(n));
                    let method = req.method().clone();
                    let body = req.into_body().collect().await?.to_bytes();
                    u.seen.lock().unwrap().push(Seen {
                        method,
                        body,
                        avoid,
                        at: Instant::now(),
                    });
                    let step = u
                        .script
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or(Step::Status(200));
                    let mut rsp = Response::new(crate::body::full("reply"));
                    match step {
                        Step::Status(s) => *rsp.status_mut() = http::StatusCode::from_u16(s)?,
                        Step::StatusRetryAfter(s, after) => {
                            *rsp.status_mut() = http::StatusCode::from_u16(s)?;
                            rsp.headers_mut().insert("retry-after", after.parse()?);
                        }
                        Step::Error(e) => return Err(e.into()),
                        Step::Refused => {
                            return Err(h2::Error::from(h2::Reason::REFUSED_STREAM).into());
                        }
                        Step::GrpcHeader(code) => {
                            rsp.headers_mut()
                                .insert("content-type", "application/grpc".parse()?);
                            rsp.headers_mut().insert("grpc-status", code.into());
                            *rsp.body_mut() = crate::body::empty();
                        }
                        Step::GrpcTrailer(code) => {
                            rsp.headers_mut()
                                .insert("content-type", "application/grpc".parse()?);
                            let body =
                                http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\x01x"))
                                    .with_trailers(async move {
                                        Some(Ok::<_, std::convert::Infallible>(grpc_trailers(code)))
                                    });
                            *rsp.body_mut() = crate::body::boxed(body);
                        }
                        Step::GrpcStream => {
                            rsp.headers_mut()
                                .insert("content-type", "application/grpc".parse()?);
                            let (tx, rx) = futures::channel::mpsc::unbounded::<
                                Result<Frame<Bytes>, BoxError>,
                            >();
                            tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"msg1"))))?;
                            // The sender lives on in a task: the stream stays open.
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                drop(tx);
                            });
                            *rsp.body_mut() =
                                crate::body::boxed(http_body_util::StreamBody::new(rx));
                        }
                        Step::Hang => futures::future::pending::<()>().await,
                    }
                    Ok::<_, BoxError>(rsp)
                }
            });
            svc.map_err(|e: BoxError| ProxyError::of_client_error(&*e))
        }
    }

    fn policy(attempts: u32, retry_on: &[&str]) -> proxy::RetryPolicy {
        proxy::RetryPolicy {
            attempts: Bounded::new(attempts).unwrap(),
            per_try_timeout: None,
            backoff: proxy::Backoff {
                base: ApiDuration::from_millis(100),
                max: ApiDuration::from_secs(1),
                jitter: Jitter::None,
            },
            retry_on: retry_on.iter().map(|s| s.parse().unwrap()).collect(),
            budget: proxy::RetryBudget {
                ratio: Ratio::new(0.5).unwrap(),
                min_per_second: 10,
                window: ApiDuration::from_secs(10),
            },
            allow_non_idempotent: false,
        }
    }

    struct Harness {
        metrics: Metrics,
        layer: RetryLayer,
    }

    fn harness(p: &proxy::RetryPolicy) -> Harness {
        let metrics = Metrics::new();
        let budget = Arc::new(RetryBudget::new(&p.budget));
        let layer = RetryLayer::new(Some(p), Some(budget), "products", &metrics);
        Harness { metrics, layer }
    }

    impl Harness {
        async fn call(
            &self,
            up: &Upstream,
            req: Request<Body>,
        ) -> Result<Response<Body>, ProxyError> {
            self.layer.layer(up.service()).oneshot(req).await
        }
        fn retries(&self, reason: &str) -> u64 {
            self.metrics
                .retries_total
                .with_label_values(&["products", reason])
                .get()
        }
    }

    fn get() -> Request<Body> {
        Request::new(crate::body::empty())
    }

    fn with_body(method: Method, body: Body) -> Request<Body> {
        let mut r = Request::new(body);
        *r.method_mut() = method;
        r
    }

    #[tokio::test(start_paused = true)]
    async fn retries_listed_statuses_with_backoff_and_gives_up_after_attempts() {
        let h = harness(&policy(3, &["503"]));
        let up = Upstream::new(&[Step::Status(503), Step::Status(503), Step::Status(503)]);
        let start = Instant::now();
        let rsp = h.call(&up, get()).await.unwrap();
        assert_eq!(rsp.status(), 503);
        let seen = up.seen();
        assert_eq!(seen.len(), 3);
        // 100 ms, then 200 ms.
        assert_eq!(seen[1].at - start, Duration::from_millis(100));
        assert_eq!(seen[2].at - start, Duration::from_millis(300));
        assert_eq!(h.retries("503"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_avoids_the_endpoint_that_failed() {
        let h = harness(&policy(3, &["502", "503"]));
        let up = Upstream::new(&[Step::Status(502), Step::Status(200)]);
        assert_eq!(h.call(&up, get()).await.unwrap().status(), 200);
        let seen = up.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].avoid, vec![]);
        assert_eq!(seen[1].avoid, vec![ep(0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn unlisted_statuses_are_not_retried() {
        let h = harness(&policy(3, &["503"]));
        for s in [404, 500, 502] {
            let up = Upstream::new(&[Step::Status(s)]);
            assert_eq!(h.call(&up, get()).await.unwrap().status(), s);
            assert_eq!(up.seen().len(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connect_failures_resets_and_refused_streams() {
        let h = harness(&policy(2, &["connect-failure", "refused-stream"]));
        let up = Upstream::new(&[Step::Error(ProxyError::ConnectFailure)]);
        assert_eq!(h.call(&up, get()).await.unwrap().status(), 200);
        assert_eq!(h.retries("connect-failure"), 1);
        let up = Upstream::new(&[Step::Refused]);
        assert_eq!(h.call(&up, get()).await.unwrap().status(), 200);
        assert_eq!(h.retries("refused-stream"), 1);
        // `reset` is not listed: a reset ends the call with a 502 reset error.
        let up = Upstream::new(&[Step::Error(ProxyError::UpstreamReset)]);
        assert_eq!(
            h.call(&up, get()).await.unwrap_err(),
            ProxyError::UpstreamReset
        );
        assert_eq!(up.seen().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn post_is_not_retried_put_is_and_the_route_can_allow_post() {
        let h = harness(&policy(3, &["503"]));
        let up = Upstream::new(&[Step::Status(503), Step::Status(503)]);
        let rsp = h
            .call(&up, with_body(Method::POST, crate::body::full("order")))
            .await;
        assert_eq!(rsp.unwrap().status(), 503);
        assert_eq!(up.seen().len(), 1);

        let up = Upstream::new(&[Step::Status(503), Step::Status(503)]);
        let rsp = h
            .call(&up, with_body(Method::PUT, crate::body::full("stock=5")))
            .await;
        assert_eq!(rsp.unwrap().status(), 200);
        let seen = up.seen();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter()
                .all(|s| s.body == "stock=5" && s.method == Method::PUT)
        );

        let h = harness(&proxy::RetryPolicy {
            allow_non_idempotent: true,
            ..policy(2, &["503"])
        });
        let up = Upstream::new(&[Step::Status(503)]);
        let rsp = h
            .call(&up, with_body(Method::POST, crate::body::full("order")))
            .await;
        assert_eq!(rsp.unwrap().status(), 200);
        assert_eq!(up.seen().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_over_the_cap_are_sent_once() {
        let h = harness(&policy(3, &["503"]));
        let big = Bytes::from(vec![b'x'; 100 * 1024]);
        // Known length over the cap.
        let up = Upstream::new(&[Step::Status(503)]);
        let rsp = h
            .call(&up, with_body(Method::PUT, crate::body::full(big.clone())))
            .await;
        assert_eq!(rsp.unwrap().status(), 503);
        assert_eq!(up.seen().len(), 1);
        assert_eq!(up.seen()[0].body.len(), big.len());
        // Unknown length, found out while streaming.
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..10)
            .map(|_| Ok(Frame::data(Bytes::from(vec![b'y'; 10 * 1024]))))
            .collect();
        let streamed = crate::body::boxed(http_body_util::StreamBody::new(futures::stream::iter(
            chunks,
        )));
        let up = Upstream::new(&[Step::Status(503)]);
        let rsp = h.call(&up, with_body(Method::PUT, streamed)).await;
        assert_eq!(rsp.unwrap().status(), 503);
        assert_eq!(up.seen().len(), 1);
        assert_eq!(up.seen()[0].body.len(), 100 * 1024);
        assert_eq!(h.retries("503"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_status_in_headers_and_in_unary_trailers() {
        let h = harness(&policy(3, &["grpc-unavailable"]));
        let up = Upstream::new(&[
            Step::GrpcHeader(14),
            Step::GrpcTrailer(14),
            Step::GrpcTrailer(0),
        ]);
        let rsp = h.call(&up, get()).await.unwrap();
        assert_eq!(up.seen().len(), 3);
        assert_eq!(h.retries("grpc-unavailable"), 2);
        // The peeked reply reaches the client whole.
        let body = rsp.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(body.to_bytes(), &b"\0\0\0\0\x01x"[..]);
        // Unlisted codes pass.
        let up = Upstream::new(&[Step::GrpcTrailer(5)]);
        h.call(&up, get()).await.unwrap();
        assert_eq!(up.seen().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_stream_is_not_held_back() {
        let h = harness(&policy(3, &["grpc-unavailable"]));
        let up = Upstream::new(&[Step::GrpcStream]);
        let rsp = tokio::time::timeout(Duration::from_secs(1), h.call(&up, get()))
            .await
            .expect("the stream's head was held back")
            .unwrap();
        let mut body = rsp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "msg1");
        assert_eq!(up.seen().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_exhausted_returns_the_failure_marked() {
        let mut p = policy(3, &["503"]);
        p.budget = proxy::RetryBudget {
            ratio: Ratio::new(0.0).unwrap(),
            min_per_second: 1,
            window: ApiDuration::from_secs(2),
        };
        let h = harness(&p);
        // Two retries in the budget (1/s × 2 s); the third request gets none.
        let up = Upstream::new(&[Step::Status(503), Step::Status(503), Step::Status(503)]);
        let rsp = h.call(&up, get()).await.unwrap();
        assert_eq!(rsp.status(), 503);
        assert_eq!(up.seen().len(), 3);
        assert!(rsp.extensions().get::<BudgetExhausted>().is_none());
        let up = Upstream::new(&[Step::Status(503)]);
        let rsp = h.call(&up, get()).await.unwrap();
        assert_eq!(rsp.status(), 503);
        assert_eq!(up.seen().len(), 1);
        assert!(rsp.extensions().get::<BudgetExhausted>().is_some());
        assert_eq!(
            h.metrics
                .retry_budget_exhausted_total
                .with_label_values(&["products"])
                .get(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_but_capped() {
        let h = harness(&policy(3, &["503"]));
        let up = Upstream::new(&[
            Step::StatusRetryAfter(503, "0"),
            Step::StatusRetryAfter(503, "30"),
        ]);
        let start = Instant::now();
        h.call(&up, get()).await.unwrap();
        let seen = up.seen();
        // "0" does not shorten the 100 ms backoff; "30" is capped at max (1 s).
        assert_eq!(seen[1].at - start, Duration::from_millis(100));
        assert_eq!(seen[2].at - seen[1].at, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn no_backoff_past_the_deadline() {
        let h = harness(&policy(3, &["503"]));
        let up = Upstream::new(&[Step::Status(503), Step::Status(503)]);
        let mut req = get();
        req.extensions_mut()
            .insert(Deadline(Instant::now() + Duration::from_millis(250)));
        // 100 ms backoff fits, the 200 ms one would not.
        let rsp = h.call(&up, req).await.unwrap();
        assert_eq!(rsp.status(), 503);
        assert_eq!(up.seen().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeouts_are_retried_as_504() {
        let h = harness(&policy(2, &["504"]));
        let up = Upstream::new(&[Step::Hang, Step::Status(200)]);
        let svc = h
            .layer
            .layer(PerTryTimeoutLayer::new(Some(Duration::from_millis(50))).layer(up.service()));
        let rsp = svc.oneshot(get()).await.unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(h.retries("504"), 1);
        let up = Upstream::new(&[Step::Hang, Step::Hang]);
        let svc = h
            .layer
            .layer(PerTryTimeoutLayer::new(Some(Duration::from_millis(50))).layer(up.service()));
        assert_eq!(svc.oneshot(get()).await.unwrap_err(), ProxyError::Timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_policy_it_calls_once() {
        let m = Metrics::new();
        let layer = RetryLayer::new(None, None, "products", &m);
        let up = Upstream::new(&[Step::Status(503)]);
        let rsp = layer.layer(up.service()).oneshot(get()).await.unwrap();
        assert_eq!(rsp.status(), 503);
        assert_eq!(up.seen().len(), 1);
    }

    /// A storm: one upstream fails every attempt for 30 s while callers send
    /// 50 requests a second, each wanting two retries. With a budget of 0.2 ×
    /// requests + 10/s over 10 s, no 10 s window — wherever it starts — holds
    /// more retries than that, and the whole run (three windows) makes at most
    /// 1.4 upstream requests per caller request.
    #[tokio::test(start_paused = true)]
    async fn a_retry_storm_stays_within_the_budget_over_every_window() {
        let (ratio, min_per_second, window) = (0.2, 10u32, 10u64);
        let mut p = policy(3, &["503"]);
        // Retries leave the moment a try failed: what the upstream sees is what the budget granted.
        p.backoff.base = ApiDuration::from_millis(0);
        p.backoff.max = ApiDuration::from_millis(0);
        p.budget = proxy::RetryBudget {
            ratio: Ratio::new(ratio).unwrap(),
            min_per_second,
            window: ApiDuration::from_secs(window),
        };
        let h = harness(&p);
        // (arrival since start, request number) of every upstream request.
        let seen = Arc::new(Mutex::new(Vec::<(Duration, u32)>::new()));
        let start = Instant::now();
        let failing = {
            let seen = seen.clone();
            tower::service_fn(move |req: Request<Body>| {
                let n: u32 = req.headers()["x-n"].to_str().unwrap().parse().unwrap();
                seen.lock().unwrap().push((start.elapsed(), n));
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let mut rsp = Response::new(crate::body::empty());
                    *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    Ok::<_, ProxyError>(rsp)
                }
            })
        };
        let svc = h.layer.layer(failing);
        let requests = 1500u32;
        let mut calls = Vec::new();
        for n in 0..requests {
            let mut req = get();
            req.headers_mut().insert("x-n", n.into());
            calls.push(tokio::spawn(svc.clone().oneshot(req)));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for c in calls {
            assert_eq!(c.await.unwrap().unwrap().status(), 503);
        }
        let seen = seen.lock().unwrap().clone();
        // A request's first arrival is the request, the rest are its retries.
        let mut firsts = std::collections::HashSet::new();
        let events: Vec<(Duration, bool)> = seen
            .iter()
            .map(|(at, n)| (*at, !firsts.insert(*n)))
            .collect();
        let retries = events.iter().filter(|e| e.1).count();
        let amplification = events.len() as f64 / f64::from(requests);
        let windows = 3.0;
        let bound =
            1.0 + ratio + windows * f64::from(min_per_second) * window as f64 / f64::from(requests);
        println!(
            "storm: {requests} requests, {retries} retries, amplification {amplification:.3} (bound {bound:.3})"
        );
        assert!(
            retries > 300,
            "the storm must use the budget: {retries} retries"
        );
        assert!(amplification <= bound, "{amplification} > {bound}");
        let cap = |q: usize| ratio * q as f64 + f64::from(min_per_second) * window as f64;
        let w = Duration::from_secs(window);
        for &(at, _) in &events {
            for (from, to) in [(at, at + w), (at.saturating_sub(w), at)] {
                let (r, q) = events.iter().filter(|(e, _)| (from..=to).contains(e)).fold(
                    (0, 0),
                    |(r, q), e| if e.1 { (r + 1, q) } else { (r, q + 1) },
                );
                assert!(
                    r as f64 <= cap(q) + 1e-9,
                    "[{from:?}, {to:?}] holds {r} retries for {q} requests (cap {})",
                    cap(q)
                );
            }
        }
    }
}
