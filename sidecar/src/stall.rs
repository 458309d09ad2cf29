//! A body that stalls between frames is cut.
//!
//! The request and response timeouts bound the wait for a response head; a
//! body that starts and then stops (a dead upstream mid-response, a caller
//! that sends half its upload) would otherwise hold its connection, its
//! bulkhead slot and its concurrency permit forever. Every body the proxy
//! forwards, in both directions on both listeners, is cut with an error once
//! `http.bodyIdleTimeout` passes without a frame; the peer sees the stream
//! end early (HTTP/2 RST_STREAM, HTTP/1.1 a closed connection).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};
use crate::error::ProxyError;

/// `body`, boxed, cut when it stalls for `idle`. A body that is already
/// complete is only boxed.
pub fn bounded<B>(body: B, idle: Duration) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return crate::body::boxed(body);
    }
    crate::body::boxed(Stall {
        inner: body,
        idle,
        timer: None,
        waiting: false,
    })
}

pin_project! {
    struct Stall<B> {
        #[pin]
        inner: B,
        idle: Duration,
        // Made on the first wait: a body that never waits never touches the timer wheel.
        #[pin]
        timer: Option<Sleep>,
        // Whether the timer runs for the current wait.
        waiting: bool,
    }
}

impl<B> HttpBody for Stall<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if !*this.waiting {
            *this.waiting = true;
            let deadline = Instant::now() + *this.idle;
            match this.timer.as_mut().as_pin_mut() {
                Some(timer) => timer.reset(deadline),
                None => this.timer.set(Some(tokio::time::sleep_until(deadline))),
            }
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(ProxyError::Timeout)))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;
    use http_body_util::{BodyExt, StreamBody};

    type Tx = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

    fn channel_body(idle: Duration) -> (Tx, Body) {
        let (tx, rx) = mpsc::unbounded();
        (tx, bounded(StreamBody::new(rx), idle))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_between_frames_is_cut_at_the_timeout() {
        let (tx, mut body) = channel_body(Duration::from_secs(2));
        let start = Instant::now();
        // Frames 1.5 s apart keep it alive: the clock restarts with each.
        for i in 0..3 {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from(vec![b'x'; i + 1]))));
            });
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap().len(), i + 1);
        }
        assert_eq!(start.elapsed(), Duration::from_millis(4500));
        // Then nothing: cut 2 s after the last frame, not before.
        let err = tokio::time::timeout(Duration::from_secs(60), body.frame())
            .await
            .expect("never cut")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.downcast_ref(), Some(&ProxyError::Timeout));
        assert_eq!(start.elapsed(), Duration::from_millis(6500));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_passes_untouched() {
        let (tx, body) = channel_body(Duration::from_secs(1));
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"ab"))))
            .unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ab");
        let full = bounded(crate::body::full("done"), Duration::ZERO);
        assert_eq!(full.collect().await.unwrap().to_bytes(), "done");
    }
}
