//! Accepting connections: HTTP/1.1 and HTTP/2 prior knowledge on one port
//! (hyper-util's auto builder, upgrades allowed), protocol limits from the config (HTTP/2's
//! per-connection bounds: `http.http2`), and graceful
//! shutdown (stop accepting, `Connection: close` / GOAWAY, drain, then cut).

pub mod guard;
pub mod workers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::body::Body;
use crate::published::View;
use trellis_api::proxy::HttpSettings;

/// hyper refuses read buffers smaller than this.
const MIN_BUF_SIZE: usize = 8192;
/// How many headers hyper's HTTP/1 parser takes unless told otherwise.
const HYPER_MAX_HEADERS: usize = 100;

/// Serves one request of one connection: every request gets a response.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> BoxFuture<'static, Response<Body>>;
}

/// Fires once, when the proxy starts shutting down.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    pub async fn wait(&mut self) {
        // An Err means the sender is gone: shutting down as well.
        let _ = self.0.wait_for(|down| *down).await;
    }
}

/// Accepts on `listener` until shutdown, then drains for up to `grace` (read
/// from `settings` at that moment) and cuts what is left.
pub async fn serve<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    settings: View<HttpSettings>,
    mut shutdown: Shutdown,
) {
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let http = settings.load();
                let builder = builder(&http);
                let max_head = (http.max_header_bytes as usize).max(MIN_BUF_SIZE);
                let io = TokioIo::new(guard::H1Guard::new(
                    stream,
                    max_head,
                    http.max_headers as usize,
                    http.header_read_timeout.as_std(),
                ));
                let handler = handler.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let fut = handler.handle(req, remote);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                // Upgrades (WebSocket, CONNECT) hand the connection to the edge after a 101/200.
                let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
                let conn = graceful.watch(conn);
                conns.spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(listener = name, %remote, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.wait() => break,
        }
    }
    // New connections are refused from here on.
    drop(listener);
    let grace = settings.load().shutdown_grace.as_std();
    info!(
        listener = name,
        connections = conns.len(),
        ?grace,
        "draining"
    );
    let drained = tokio::time::timeout(grace, graceful.shutdown()).await;
    if drained.is_err() {
        warn!(
            listener = name,
            "grace period over; closing remaining connections"
        );
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

fn builder(http: &HttpSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // The head timeout is the guard's: hyper's also runs while a keep-alive
    // connection is idle, and would close pooled mesh connections every
    // `headerReadTimeout`, racing with requests the peer is about to send.
    let mut h1 = b.http1();
    h1.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size((http.max_header_bytes as usize).max(MIN_BUF_SIZE));
    // hyper parses up to its default count on the stack; any explicit limit,
    // even the same one, costs a heap buffer per request head.
    if http.max_headers as usize != HYPER_MAX_HEADERS {
        h1.max_headers(http.max_headers as usize);
    }
    // Fixed flow-control windows: an adaptive window pings the peer to
    // measure bandwidth-delay on every burst of data, a frame each way per
    // request on a mesh's short calls.
    let h2 = &http.http2;
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(http.max_header_bytes)
        .max_concurrent_streams(h2.max_concurrent_streams.get())
        .initial_stream_window_size(h2.initial_stream_window_size.get())
        .initial_connection_window_size(h2.initial_connection_window_size.get())
        .max_send_buf_size(h2.max_send_buffer_size.get() as usize)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams as usize)
        .keep_alive_interval(Some(h2.keep_alive_interval.as_std()))
        .keep_alive_timeout(h2.keep_alive_timeout.as_std());
    b
}
