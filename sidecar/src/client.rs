//! Pooled HTTP connections to endpoints, keeping the request's HTTP version
//! end to end: an HTTP/1.x request goes out on an HTTP/1.1 connection, an
//! HTTP/2 request (gRPC, h2c) on a multiplexed HTTP/2 connection (prior
//! knowledge, no upgrade dance).
//!
//! Connections are pooled per endpoint address by hyper-util's client; one
//! client pair exists per upstream (and one for the app) and serving thread,
//! so pool settings follow the upstream's policy, a reloaded upstream gets
//! fresh pools while requests on the old ones finish, and a request never
//! waits on a connection another thread drives.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::error::ProxyError;
use crate::server::workers::lane;
use crate::stall;
use trellis_api::proxy::{Http2Settings, HttpSettings};

/// Which HTTP version to speak to the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// The version the request came in with.
    AsReceived,
    /// Always HTTP/2 (gRPC apps).
    Http2,
}

#[derive(Clone, Debug)]
pub struct HttpClient {
    /// Shared: a clone per request (each attempt takes one) is then one
    /// reference count, not two hyper clients' worth of them.
    inner: Arc<Lanes>,
}

/// One pair of pools per serving thread ([`lane`]), made on first use, so a
/// pooled connection is driven by the thread whose requests use it.
#[derive(Debug)]
struct Lanes {
    settings: ClientSettings,
    lanes: Box<[OnceLock<Clients>]>,
}

#[derive(Debug)]
struct Clients {
    h1: Client<HttpConnector, Body>,
    h2: Client<HttpConnector, Body>,
}

/// Connection settings of one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this.
    pub idle_timeout: Duration,
    /// A response body that stalls this long is cut.
    pub body_idle_timeout: Duration,
    /// A larger response header list is refused (`http.maxHeaderBytes`).
    pub max_header_list_size: u32,
    /// Windows, buffers and pings of the HTTP/2 connections (`http.http2`).
    pub http2: Http2Settings,
}

impl ClientSettings {
    /// Settings from the proxy's HTTP limits and an upstream's timeouts.
    pub fn new(http: &HttpSettings, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        ClientSettings {
            connect_timeout,
            idle_timeout,
            body_idle_timeout: http.body_idle_timeout.as_std(),
            max_header_list_size: http.max_header_bytes,
            http2: http.http2,
        }
    }
}

/// `to` as a URI authority. The last few are kept per thread: a proxy
/// talks to a handful of endpoints, and formatting and parsing one costs
/// more than the lookup.
fn authority_of(to: SocketAddr) -> Result<Authority, http::uri::InvalidUri> {
    use std::cell::RefCell;
    const KEEP: usize = 8;
    thread_local! {
        static RECENT: RefCell<Vec<(SocketAddr, Authority)>> = const { RefCell::new(Vec::new()) };
    }
    if let Some(a) =
        RECENT.with_borrow(|r| r.iter().find(|(k, _)| *k == to).map(|(_, a)| a.clone()))
    {
        return Ok(a);
    }
    let a = Authority::try_from(to.to_string().as_str())?;
    RECENT.with_borrow_mut(|r| {
        if r.len() == KEEP {
            r.remove(0);
        }
        r.push((to, a.clone()));
    });
    Ok(a)
}

impl Clients {
    fn new(settings: &ClientSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.enforce_http(true);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(usize::MAX)
            .build(connector.clone());
        // What an upstream may push before the caller reads it is bounded by
        // the windows; the upstream's own SETTINGS bound the streams. The
        // windows are fixed: an adaptive one pings per burst of data
        // (server/mod.rs).
        let h2 = &settings.http2;
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.idle_timeout)
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_max_header_list_size(settings.max_header_list_size)
            .http2_initial_stream_window_size(h2.initial_stream_window_size.get())
            .http2_initial_connection_window_size(h2.initial_connection_window_size.get())
            .http2_max_send_buf_size(h2.max_send_buffer_size.get() as usize)
            .http2_max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams as usize)
            .http2_keep_alive_interval(h2.keep_alive_interval.as_std())
            .http2_keep_alive_timeout(h2.keep_alive_timeout.as_std())
            .build(connector);
        Clients { h1, h2 }
    }
}

impl HttpClient {
    /// A client for `lanes` serving threads (1 when requests are served on
    /// one runtime).
    pub fn new(settings: ClientSettings, lanes: usize) -> Self {
        HttpClient {
            inner: Arc::new(Lanes {
                settings,
                lanes: (0..lanes.max(1)).map(|_| OnceLock::new()).collect(),
            }),
        }
    }

    /// The pools of the thread this runs on.
    fn clients(&self) -> &Clients {
        let lanes = &self.inner.lanes;
        lanes[lane().min(lanes.len() - 1)].get_or_init(|| Clients::new(&self.inner.settings))
    }

    /// Sends `req` to `to`. The request's path and headers are kept; its URI
    /// is pointed at the endpoint (origin-form on HTTP/1.1, `:authority` is
    /// the endpoint on HTTP/2 while `Host` keeps the logical authority).
    /// A failure is classified here, where its source is known.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        to: SocketAddr,
        wire: Wire,
    ) -> Result<Response<Body>, ProxyError> {
        let h2 = wire == Wire::Http2 || req.version() == Version::HTTP_2;
        // On HTTP/1.1 the logical authority travels in Host; an absolute-form
        // URI's authority replaces whatever Host said (RFC 9112 §3.2.2).
        // HTTP/2 carries `:authority` only; the endpoint's address takes its
        // place, as it must name the connection.
        if !h2
            && let Some(a) = req.uri().authority()
            && let Ok(v) = http::HeaderValue::from_str(a.as_str())
        {
            req.headers_mut().insert(http::header::HOST, v);
        }
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority_of(to).map_err(|_| ProxyError::BadRequest)?);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest)?;
        let sent = if h2 {
            *req.version_mut() = Version::HTTP_2;
            self.clients().h2.request(req).await
        } else {
            if req.version() != Version::HTTP_10 {
                *req.version_mut() = Version::HTTP_11;
            }
            self.clients().h1.request(req).await
        };
        let rsp = sent.map_err(|e| ProxyError::of_client_error(&e))?;
        let idle = self.inner.settings.body_idle_timeout;
        Ok(rsp.map(|b| stall::bounded(b, idle)))
    }
}
