//! Real upstream servers on 127.0.0.1 that fail on command: a status, a
//! reset, a delay, a gRPC status in trailers, seeded random failures, or
//! holding every request until released; `down()` closes the listener and
//! every connection, `up()` binds the same address again.
//!
//! Used by `tests/resilience_process.rs` and by `bench/resilience`, both
//! through the real proxy.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The seed of [`Mode::Random`]'s failure sequence.
pub const SEED: u64 = 7;

/// What an upstream does with each request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Ok,
    Status(u16),
    /// Fails with `status` at this rate: the n-th request handled gets the
    /// n-th draw of [`failure_sequence`].
    Random {
        rate: f64,
        status: u16,
    },
    /// Closes the connection without answering.
    Reset,
    /// Answers 200 after a delay.
    Delay(Duration),
    /// Holds every request until [`FaultServer::release`], then answers 200.
    Hold,
    /// gRPC: one message, then `grpc-status` in the trailers.
    GrpcTrailer(u16),
    /// The first `n` requests get gRPC UNAVAILABLE in trailers, then OK.
    GrpcUnavailableFirst(u64),
}

/// Which of the first `n` requests a [`Mode::Random`] server fails.
pub fn failure_sequence(rate: f64, n: usize) -> Vec<bool> {
    let mut rng = StdRng::seed_from_u64(SEED);
    (0..n).map(|_| rng.random::<f64>() < rate).collect()
}

/// One request an upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

struct State {
    mode: Mutex<Mode>,
    hits: AtomicU64,
    seen: Mutex<Vec<Seen>>,
    rng: Mutex<StdRng>,
    gate: watch::Sender<bool>,
}

/// An upstream server (see the module docs).
pub struct FaultServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }
}

type RspBody = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> RspBody {
    Full::new(b.into()).boxed()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<RspBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let n = state.hits.fetch_add(1, Ordering::SeqCst);
    state.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        headers: parts.headers.clone(),
        body,
    });
    let mode = *state.mode.lock().unwrap();
    let status = |s: u16| {
        let mut r = Response::new(full(format!("status {s}\n")));
        *r.status_mut() = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Ok(r)
    };
    let grpc = |code: u16| {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", code.into());
        let body = Full::new(Bytes::from_static(b"\0\0\0\0\x02hi"))
            .with_trailers(async move { Some(Ok(t)) })
            .boxed();
        let mut r = Response::new(body);
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok(r)
    };
    match mode {
        Mode::Ok => status(200),
        Mode::Status(s) => status(s),
        Mode::Random { rate, status: s } => {
            let fail = state.rng.lock().unwrap().random::<f64>() < rate;
            status(if fail { s } else { 200 })
        }
        Mode::Reset => Err("reset on command".into()),
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
            status(200)
        }
        Mode::Hold => {
            let mut open = state.gate.subscribe();
            let _ = open.wait_for(|open| *open).await;
            status(200)
        }
        Mode::GrpcTrailer(code) => grpc(code),
        Mode::GrpcUnavailableFirst(k) => grpc(if n < k { 14 } else { 0 }),
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    // Dropped with this task (`down()`): every connection task is aborted.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let st = state.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

impl FaultServer {
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            mode: Mutex::new(mode),
            hits: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            rng: Mutex::new(StdRng::seed_from_u64(SEED)),
            gate: watch::Sender::new(false),
        });
        let task = tokio::spawn(serve(listener, state.clone()));
        FaultServer {
            addr,
            state,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Requests handled (their bodies read), whatever the answer.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Lets every held request (and every later one) through.
    pub fn release(&self) {
        self.state.gate.send_replace(true);
    }

    /// Stops listening and drops every connection: connects are refused.
    pub async fn down(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    pub async fn up(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        *self.task.lock().unwrap() = Some(tokio::spawn(serve(listener, self.state.clone())));
    }
}
