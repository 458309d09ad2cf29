//! A request body that can be sent again.
//!
//! The first attempt streams the caller's body as it arrives and keeps a copy
//! of what went by (a tee), up to a cap. A retry replays the copy and then
//! continues with whatever the caller has not sent yet. Nothing is read ahead
//! of the upstream (a streaming client is never blocked on us), and never more
//! than the cap is held: past it the copy is dropped and the request can no
//! longer be retried — the attempt in flight is unaffected.
//!
//! Attempts are sequential, but the connection of a failed attempt may still
//! poll its copy for a moment after we gave up on it; state is shared under a
//! mutex, and the caller's body is polled with a waker that wakes every clone
//! waiting on it, so no clone misses a wake-up whichever polled last.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};

#[derive(Debug, thiserror::Error)]
#[error("request body can no longer be replayed: {0}")]
struct ReplayError(String);

struct Shared {
    /// The caller's body, until it ended or failed.
    original: Option<Body>,
    /// Data frames read so far (empty once `overflowed`).
    chunks: Vec<Bytes>,
    /// Data frames ever read, kept or not.
    read: usize,
    bytes: usize,
    cap: usize,
    overflowed: bool,
    eos: bool,
    trailers: Option<HeaderMap>,
    failed: Option<String>,
    /// Wakes every clone waiting on the caller's body.
    fan: Arc<FanOut>,
}

#[derive(Default)]
struct FanOut(Mutex<Vec<Waker>>);

impl FanOut {
    fn add(&self, waker: &Waker) {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !w.iter().any(|x| x.will_wake(waker)) {
            w.push(waker.clone());
        }
    }
}

impl Wake for FanOut {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waiting = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for w in waiting {
            w.wake();
        }
    }
}

impl Shared {
    fn wake_all(&mut self) {
        self.fan.wake_by_ref();
    }
}

/// One attempt's view of the request body.
pub(crate) struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// Data frames this clone has yielded.
    pos: usize,
    trailers_sent: bool,
}

impl ReplayBody {
    /// Wraps the caller's body, keeping up to `cap` bytes for replays.
    pub(crate) fn new(body: Body, cap: usize) -> Self {
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                original: Some(body),
                chunks: Vec::new(),
                read: 0,
                bytes: 0,
                cap,
                overflowed: false,
                eos: false,
                trailers: None,
                failed: None,
                fan: Arc::default(),
            })),
            pos: 0,
            trailers_sent: false,
        }
    }

    /// A fresh copy from the start, or `None` once the body outgrew the cap.
    pub(crate) fn replay(&self) -> Option<ReplayBody> {
        if self.lock().overflowed {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            pos: 0,
            trailers_sent: false,
        })
    }

    /// Whether a retry could still replay the body.
    pub(crate) fn is_replayable(&self) -> bool {
        !self.lock().overflowed
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let shared = this.shared.clone();
        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if this.pos < s.read {
                if s.overflowed {
                    let e = ReplayError(format!("more than {} bytes", s.cap));
                    return Poll::Ready(Some(Err(e.into())));
                }
                let chunk = s.chunks[this.pos].clone();
                this.pos += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if let Some(msg) = &s.failed {
                return Poll::Ready(Some(Err(ReplayError(msg.clone()).into())));
            }
            if s.eos {
                if !this.trailers_sent
                    && let Some(t) = s.trailers.clone()
                {
                    this.trailers_sent = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                return Poll::Ready(None);
            }
            // Register before polling, so a wake-up in between is not lost.
            s.fan.add(cx.waker());
            let fan = Waker::from(s.fan.clone());
            let Some(original) = s.original.as_mut() else {
                s.eos = true;
                continue;
            };
            match Pin::new(original).poll_frame(&mut Context::from_waker(&fan)) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    s.eos = true;
                    s.original = None;
                    s.wake_all();
                }
                Poll::Ready(Some(Err(e))) => {
                    s.failed = Some(e.to_string());
                    s.original = None;
                    s.wake_all();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            s.read += 1;
                            this.pos = s.read;
                            if !s.overflowed {
                                if s.bytes + data.len() > s.cap {
                                    s.overflowed = true;
                                    s.chunks = Vec::new();
                                } else {
                                    s.bytes += data.len();
                                    s.chunks.push(data.clone());
                                }
                            }
                            Frame::data(data)
                        }
                        Err(frame) => match frame.into_trailers() {
                            Ok(t) => {
                                s.trailers = Some(t.clone());
                                s.eos = true;
                                s.original = None;
                                this.trailers_sent = true;
                                Frame::trailers(t)
                            }
                            // A frame kind this body does not know: skip it.
                            Err(_) => continue,
                        },
                    };
                    if s.original.as_ref().is_some_and(|o| o.is_end_stream()) {
                        s.eos = true;
                        s.original = None;
                    }
                    s.wake_all();
                    return Poll::Ready(Some(Ok(frame)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.lock();
        if self.pos < s.read || s.failed.is_some() {
            return false;
        }
        if s.eos {
            return self.trailers_sent || s.trailers.is_none();
        }
        s.original.as_ref().is_some_and(|o| o.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.lock();
        if s.overflowed && self.pos < s.read {
            return SizeHint::default();
        }
        let buffered: u64 = s
            .chunks
            .get(self.pos..)
            .map_or(0, |c| c.iter().map(|b| b.len() as u64).sum());
        let rest = match &s.original {
            Some(o) => o.size_hint(),
            None => SizeHint::with_exact(0),
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        // A clone waiting on the caller's body may have been registered
        // behind this one's waker; let it re-register.
        self.lock().wake_all();
    }
}

impl From<ReplayBody> for Body {
    fn from(b: ReplayBody) -> Body {
        crate::body::boxed(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;
    use http_body_util::{BodyExt, StreamBody};

    type Tx = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

    fn channel_body() -> (Tx, Body) {
        let (tx, rx) = mpsc::unbounded();
        (tx, crate::body::boxed(StreamBody::new(rx)))
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    async fn text(body: ReplayBody) -> Result<(String, Option<HeaderMap>), BoxError> {
        let c = body.collect().await?;
        let trailers = c.trailers().cloned();
        Ok((String::from_utf8(c.to_bytes().to_vec())?, trailers))
    }

    #[tokio::test]
    async fn replays_a_full_body_with_trailers() {
        let (tx, body) = channel_body();
        tx.unbounded_send(data("hello ")).unwrap();
        tx.unbounded_send(data("world")).unwrap();
        let mut t = HeaderMap::new();
        t.insert("x-sum", "1".parse().unwrap());
        tx.unbounded_send(Ok(Frame::trailers(t.clone()))).unwrap();
        drop(tx);
        let first = ReplayBody::new(body, 1024);
        let second = first.replay().unwrap();
        assert_eq!(
            text(first).await.unwrap(),
            ("hello world".into(), Some(t.clone()))
        );
        let third = second.replay().unwrap();
        assert_eq!(
            text(second).await.unwrap(),
            ("hello world".into(), Some(t.clone()))
        );
        assert_eq!(text(third).await.unwrap(), ("hello world".into(), Some(t)));
    }

    #[tokio::test]
    async fn a_retry_continues_where_a_partial_attempt_stopped() {
        let (tx, body) = channel_body();
        let mut first = ReplayBody::new(body, 1024);
        tx.unbounded_send(data("a")).unwrap();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "a");
        // The attempt failed after one chunk; the retry gets it, then the rest.
        let second = first.replay().unwrap();
        drop(first);
        tx.unbounded_send(data("b")).unwrap();
        drop(tx);
        assert_eq!(text(second).await.unwrap().0, "ab");
    }

    #[tokio::test]
    async fn a_lagging_clone_does_not_steal_the_wakeup() {
        let (tx, body) = channel_body();
        let mut first = ReplayBody::new(body, 1024);
        let second = first.replay().unwrap();
        // Both wait on the caller's body; the new attempt registered first.
        let reader = tokio::spawn(text(second));
        tokio::task::yield_now().await;
        let poll_first = futures::poll!(first.frame());
        assert!(poll_first.is_pending());
        tx.unbounded_send(data("x")).unwrap();
        drop(tx);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("second clone was never woken")
            .unwrap()
            .unwrap();
        assert_eq!(got.0, "x");
    }

    #[tokio::test]
    async fn past_the_cap_the_attempt_goes_on_but_no_replay() {
        let (tx, body) = channel_body();
        let first = ReplayBody::new(body, 4);
        let early = first.replay().unwrap();
        tx.unbounded_send(data("abc")).unwrap();
        tx.unbounded_send(data("defg")).unwrap();
        drop(tx);
        assert!(first.is_replayable());
        let mut first = first;
        let mut all = Vec::new();
        while let Some(f) = first.frame().await {
            all.push(f.unwrap().into_data().unwrap());
        }
        assert_eq!(all.concat(), b"abcdefg");
        assert!(!first.is_replayable());
        assert!(first.replay().is_none());
        // A clone made before the overflow cannot pretend to have the data.
        assert!(text(early).await.is_err());
    }

    #[tokio::test]
    async fn empty_and_size_hints() {
        let first = ReplayBody::new(crate::body::full("12345"), 1024);
        assert_eq!(first.size_hint().exact(), Some(5));
        let second = first.replay().unwrap();
        assert_eq!(text(first).await.unwrap().0, "12345");
        assert_eq!(second.size_hint().exact(), Some(5));
        assert!(!second.is_end_stream());
        assert_eq!(text(second).await.unwrap().0, "12345");
        let empty = ReplayBody::new(crate::body::empty(), 1024);
        assert!(empty.is_end_stream());
    }

    #[tokio::test]
    async fn body_errors_reach_every_clone() {
        let (tx, body) = channel_body();
        let first = ReplayBody::new(body, 1024);
        let second = first.replay().unwrap();
        tx.unbounded_send(Err("caller went away".into())).unwrap();
        assert!(text(first).await.is_err());
        assert!(text(second).await.is_err());
    }
}
