//! The bulkhead: at most `maxConcurrent` calls in flight to an upstream, at
//! most `maxQueued` waiting for a slot, none waiting longer than
//! `queueTimeout`.
//!
//! A slow upstream otherwise soaks up every connection and task of the
//! caller, and the caller's other dependencies starve with it. A full
//! bulkhead answers at once with `bulkhead-full` (503), which the fallback can
//! replace. A slot is held until the response body has been streamed, since
//! that is when the upstream is done with the call. It sits outside the retry
//! layer: one request holds one slot across all its attempts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use prometheus::IntCounter;
use tokio::sync::Semaphore;
use tower::{Layer, Service};
use trellis_api::proxy;

use super::classify::Observe;
use crate::body::Body;
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// The slots of one upstream (or route); shared by every request to it.
#[derive(Debug)]
pub struct BulkheadState {
    slots: Arc<Semaphore>,
    max_queued: u32,
    queued: AtomicU32,
    queue_timeout: Duration,
    rejected: IntCounter,
}

impl BulkheadState {
    pub fn new(cfg: &proxy::Bulkhead, peer: &str, metrics: &Metrics) -> Self {
        let max = usize::try_from(cfg.max_concurrent.get())
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        BulkheadState {
            slots: Arc::new(Semaphore::new(max)),
            max_queued: cfg.max_queued,
            queued: AtomicU32::new(0),
            queue_timeout: cfg.queue_timeout.as_std(),
            rejected: metrics.bulkhead_rejected_total.with_label_values(&[peer]),
        }
    }

    /// Free slots now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.slots.available_permits()
    }

    async fn acquire(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ProxyError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queued).then_some(q + 1)
            });
        if queued.is_err() {
            self.rejected.inc();
            return Err(ProxyError::BulkheadFull);
        }
        let waited =
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out (or the semaphore closed, which we never do).
            _ => {
                self.rejected.inc();
                Err(ProxyError::BulkheadFull)
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    state: Arc<BulkheadState>,
}

impl BulkheadLayer {
    pub fn new(state: Arc<BulkheadState>) -> Self {
        BulkheadLayer { state }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Bulkhead<S> {
    inner: S,
    state: Arc<BulkheadState>,
}

impl<S> Service<Request<Body>> for Bulkhead<S>
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let state = self.state.clone();
        // The ready clone goes with this call; a fresh clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let permit = state.acquire().await?;
            let rsp = super::boxed(inner.call(req)).await?;
            Ok(rsp.map(|body| Observe::wrap(body, move |_| drop(permit))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;
    use tower::ServiceExt;
    use trellis_api::Duration as ApiDuration;
    use trellis_api::bounded::Bounded;

    fn state(max_concurrent: u32, max_queued: u32, metrics: &Metrics) -> Arc<BulkheadState> {
        Arc::new(BulkheadState::new(
            &proxy::Bulkhead {
                max_concurrent: Bounded::new(max_concurrent).unwrap(),
                max_queued,
                queue_timeout: ApiDuration::from_millis(100),
            },
            "payments",
            metrics,
        ))
    }

    /// An upstream that answers each call when its test says so.
    fn gated() -> (
        impl Service<
            Request<Body>,
            Response = Response<Body>,
            Error = ProxyError,
            Future = impl Send + 'static,
        > + Clone
        + Send
        + 'static,
        tokio::sync::mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let svc = tower::service_fn(move |_req: Request<Body>| {
            let (go, wait) = oneshot::channel();
            let _ = tx.send(go);
            async move {
                let _ = wait.await;
                Ok(Response::new(crate::body::full("ok")))
            }
        });
        (svc, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn admits_queues_then_rejects() {
        let m = Metrics::new();
        let st = state(2, 1, &m);
        let (up, mut gates) = gated();
        let svc = BulkheadLayer::new(st.clone()).layer(up);
        let call = || tokio::spawn(svc.clone().oneshot(Request::new(crate::body::empty())));
        let a = call();
        let b = call();
        let g1 = gates.recv().await.unwrap();
        let _g2 = gates.recv().await.unwrap();
        assert_eq!(st.available(), 0);
        // Third waits in the queue; fourth finds the queue full.
        let c = call();
        tokio::task::yield_now().await;
        let d = svc
            .clone()
            .oneshot(Request::new(crate::body::empty()))
            .await;
        assert_eq!(d.unwrap_err(), ProxyError::BulkheadFull);
        // A slot frees up when a response body is done, not before.
        g1.send(()).unwrap();
        let rsp_a = a.await.unwrap().unwrap();
        tokio::task::yield_now().await;
        assert!(
            gates.try_recv().is_err(),
            "queued call ran while a body was streaming"
        );
        drop(rsp_a);
        let g3 = gates.recv().await.unwrap();
        g3.send(()).unwrap();
        assert!(c.await.unwrap().is_ok());
        drop(b);
        assert_eq!(
            m.bulkhead_rejected_total
                .with_label_values(&["payments"])
                .get(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queue_wait_is_bounded_by_queue_timeout() {
        let m = Metrics::new();
        let st = state(1, 5, &m);
        let (up, mut gates) = gated();
        let svc = BulkheadLayer::new(st).layer(up);
        let _a = tokio::spawn(svc.clone().oneshot(Request::new(crate::body::empty())));
        let _g = gates.recv().await.unwrap();
        let start = tokio::time::Instant::now();
        let err = svc
            .oneshot(Request::new(crate::body::empty()))
            .await
            .unwrap_err();
        assert_eq!(err, ProxyError::BulkheadFull);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(err.status(), 503);
    }
}
