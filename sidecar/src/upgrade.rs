//! HTTP/1.1 `Upgrade` (WebSocket) and `CONNECT` through both listeners.
//!
//! The handshake is an ordinary request through the listener's stack, so
//! routing, limits, the breaker and timeouts apply to opening a tunnel. When
//! the answer switches protocols (`101`, or a 2xx to `CONNECT`), the edge
//! splices the caller's connection with the upstream's and copies bytes both
//! ways until either side closes; from then on nothing is HTTP.
//!
//! A `CONNECT` on the outbound side goes, like any request, to an endpoint
//! of the named upstream: the peer sidecar's inbound listener, which opens
//! the tunnel to its own app ([`Tunnel`]). The app, not an HTTP proxy, never
//! sees `CONNECT`; what is tunnelled (TLS, a database protocol) reaches the
//! service that was named.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::body::{Body, empty};
use crate::error::ProxyError;

/// Whether a request (already past hygiene, which keeps `Upgrade` only on
/// an HTTP/1.1 upgrade request) asks to leave HTTP.
pub fn is_requested<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        || (req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE))
}

/// Response extension: the connection a sidecar opened to its own app for
/// a `CONNECT`, handed to the edge to splice.
#[derive(Clone, Debug)]
pub struct Tunnel(Arc<Mutex<Option<TcpStream>>>);

impl Tunnel {
    /// Opens the app's end of a tunnel; the `200` that says so.
    pub async fn open(app: SocketAddr) -> Result<Response<Body>, ProxyError> {
        let stream = TcpStream::connect(app)
            .await
            .map_err(|_| ProxyError::ConnectFailure)?;
        let _ = stream.set_nodelay(true);
        let mut rsp = Response::new(empty());
        rsp.extensions_mut()
            .insert(Tunnel(Arc::new(Mutex::new(Some(stream)))));
        Ok(rsp)
    }

    fn take(&self) -> Option<TcpStream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The caller's side of a requested upgrade, taken before the request goes
/// down the stack (hyper hands the connection over once the response is sent).
pub struct Pending {
    caller: OnUpgrade,
    connect: bool,
}

impl Pending {
    pub fn take<B>(req: &mut Request<B>) -> Pending {
        Pending {
            connect: req.method() == Method::CONNECT,
            caller: hyper::upgrade::on(req),
        }
    }

    /// Splices the two connections if `rsp` switched protocols; otherwise
    /// the caller's connection simply stays HTTP.
    pub fn finish(self, rsp: &mut Response<Body>) {
        let switched = rsp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (self.connect && rsp.status().is_success());
        if !switched {
            return;
        }
        let tunnel = rsp.extensions_mut().remove::<Tunnel>();
        let upstream = match tunnel.and_then(|t| t.take()) {
            Some(stream) => Far::Tcp(stream),
            None => Far::Upgrade(hyper::upgrade::on(&mut *rsp)),
        };
        tokio::spawn(splice(self.caller, upstream));
    }
}

enum Far {
    Tcp(TcpStream),
    Upgrade(OnUpgrade),
}

async fn splice(caller: OnUpgrade, far: Far) {
    let mut caller = match caller.await {
        Ok(io) => TokioIo::new(io),
        Err(e) => return debug!(error = %e, "the caller's connection never switched"),
    };
    let copied = match far {
        Far::Tcp(mut stream) => tokio::io::copy_bidirectional(&mut caller, &mut stream).await,
        Far::Upgrade(on) => match on.await {
            Ok(io) => tokio::io::copy_bidirectional(&mut caller, &mut TokioIo::new(io)).await,
            Err(e) => return debug!(error = %e, "the upstream's connection never switched"),
        },
    };
    match copied {
        Ok((up, down)) => debug!(up, down, "tunnel closed"),
        Err(e) => debug!(error = %e, "tunnel broke"),
    }
}
