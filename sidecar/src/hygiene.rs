//! What a well-behaved HTTP intermediary does to every message it forwards,
//! whatever the upstream: drop hop-by-hop headers, say it was here (`Via`,
//! `x-forwarded-*`), give the request an id, and refuse requests that already
//! passed through this very listener (a routing loop would otherwise
//! multiply one request until sockets run out).
//!
//! Framing attacks (CL+TE, conflicting Content-Lengths) are stopped below
//! HTTP, in [`crate::server::guard`]; oversized heads by hyper's limits.

use std::io::Write as _;
use std::net::SocketAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};

use crate::Direction;
use crate::error::ProxyError;

/// A request that has passed more Trellis hops than this is looping between
/// proxies (no real call chain forwards one request through so many sidecars).
const MAX_TRELLIS_HOPS: usize = 32;
const VIA_PREFIX: &str = "trellis.";

pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

const X_REQUEST_ID_NAME: HeaderName = HeaderName::from_static(X_REQUEST_ID);
const X_FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_FOR);
const X_FORWARDED_PROTO_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_PROTO);
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The versions a `Via` entry names, in [`protocol`]'s order.
const VERSIONS: [Version; 5] = [
    Version::HTTP_09,
    Version::HTTP_10,
    Version::HTTP_11,
    Version::HTTP_2,
    Version::HTTP_3,
];

/// This listener's identity in `Via`: `trellis.<instance>.<direction>`.
#[derive(Clone, Debug)]
pub struct Hop {
    marker: String,
    /// `<protocol> <marker>` for each of [`VERSIONS`], made once.
    via: Vec<Option<HeaderValue>>,
}

impl Hop {
    pub fn new(instance: &str, direction: Direction) -> Self {
        let marker = format!("{VIA_PREFIX}{instance}.{}", direction.as_str());
        let via = VERSIONS
            .iter()
            .map(|v| HeaderValue::from_str(&format!("{} {marker}", protocol(*v))).ok())
            .collect();
        Hop { marker, via }
    }

    fn via(&self, version: Version) -> Option<HeaderValue> {
        let i = VERSIONS.iter().position(|v| *v == version).unwrap_or(2);
        self.via[i].clone()
    }

    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// Checks and rewrites a request about to be forwarded.
    pub fn on_request<B>(
        &self,
        req: &mut Request<B>,
        remote: SocketAddr,
        max_headers: usize,
    ) -> Result<(), ProxyError> {
        if req.headers().len() > max_headers {
            return Err(ProxyError::HeadersTooLarge);
        }
        self.check_loop(req.headers())?;
        strip_hop_by_hop(req.headers_mut());
        if let Some(via) = self.via(req.version()) {
            append_list(req.headers_mut(), header::VIA, via);
        }
        if let Some(ip) = ip_value(remote) {
            append_list(req.headers_mut(), X_FORWARDED_FOR_NAME, ip);
        }
        let headers = req.headers_mut();
        if !headers.contains_key(X_FORWARDED_PROTO_NAME) {
            headers.insert(X_FORWARDED_PROTO_NAME, HeaderValue::from_static("http"));
        }
        if !headers.contains_key(X_REQUEST_ID_NAME)
            && let Ok(v) = HeaderValue::from_bytes(&request_id(rand::random::<u128>()))
        {
            headers.insert(X_REQUEST_ID_NAME, v);
        }
        Ok(())
    }

    fn check_loop(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        let mut hops = 0;
        for value in headers.get_all(header::VIA) {
            let Ok(text) = value.to_str() else { continue };
            for entry in text.split(',') {
                // `1.1 trellis.abcd.out` (a comment may follow the name).
                let Some(name) = entry.split_whitespace().nth(1) else {
                    continue;
                };
                if name == self.marker {
                    return Err(ProxyError::Loop);
                }
                if name.starts_with(VIA_PREFIX) {
                    hops += 1;
                }
            }
        }
        if hops >= MAX_TRELLIS_HOPS {
            return Err(ProxyError::Loop);
        }
        Ok(())
    }
}

/// Rewrites a response about to be returned to the client.
/// Calls a listener's stack and cleans the response's hop-by-hop headers:
/// the last step of both listeners.
pub fn respond_through(
    stack: crate::HttpService,
    req: http::Request<crate::body::Body>,
) -> futures::future::BoxFuture<'static, Response<crate::body::Body>> {
    use tower::ServiceExt;
    // Boxed first: the oneshot future is only `Send` for the concrete request type.
    let call: futures::future::BoxFuture<
        'static,
        Result<Response<crate::body::Body>, std::convert::Infallible>,
    > = Box::pin(stack.oneshot(req));
    Box::pin(async move {
        let mut rsp = match call.await {
            Ok(rsp) => rsp,
            Err(never) => match never {},
        };
        on_response(&mut rsp);
        rsp
    })
}

pub fn on_response<B>(rsp: &mut Response<B>) {
    strip_hop_by_hop(rsp.headers_mut());
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `{:032x}` of `id`, without a `String`.
fn request_id(id: u128) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((id >> (4 * (31 - i))) & 0xf) as usize];
    }
    out
}

/// The caller's IP as a header value, without a `String`.
fn ip_value(remote: SocketAddr) -> Option<HeaderValue> {
    // The longest IPv6 text (IPv4-mapped) is 45 bytes.
    let mut buf = [0u8; 64];
    let len = match remote {
        SocketAddr::V4(a) => {
            let mut len = 0;
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        SocketAddr::V6(a) => {
            let mut w = &mut buf[..];
            write!(w, "{}", a.ip()).ok()?;
            64 - w.len()
        }
    };
    HeaderValue::from_bytes(&buf[..len]).ok()
}

/// Appends `value` to a comma-separated list header, keeping one line.
fn append_list(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    match headers.entry(name) {
        Entry::Vacant(e) => {
            e.insert(value);
        }
        Entry::Occupied(mut e) => {
            let mut joined = String::new();
            for v in e.iter().filter_map(|v| v.to_str().ok()) {
                joined.push_str(v);
                joined.push_str(", ");
            }
            let value = if joined.is_empty() {
                value
            } else {
                joined.push_str(value.to_str().unwrap_or_default());
                match HeaderValue::from_str(&joined) {
                    Ok(v) => v,
                    Err(_) => return,
                }
            };
            e.insert(value);
        }
    }
}

/// What [`strip_hop_by_hop`] removes or rewrites by name.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ]
    .contains(name)
}

/// Removes the headers that describe one connection, not the message
/// (RFC 9110 §7.6.1), including those `Connection` names. `TE: trailers`
/// is end-to-end in practice (gRPC needs it) and survives.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names, no removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // A client must not be able to strip end-to-end framing or routing this way.
        if name != header::CONTENT_LENGTH && name != header::HOST {
            headers.remove(name);
        }
    }
    let wants_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> SocketAddr {
        SocketAddr::from(([10, 1, 2, 3], 5555))
    }

    #[test]
    fn strips_hop_by_hop_and_what_connection_names() {
        let mut req = Request::builder()
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers, deflate")
            .header("upgrade", "websocket")
            .header("proxy-connection", "keep-alive")
            .header("proxy-authorization", "Basic x")
            .header("x-kept", "yes")
            .body(())
            .unwrap();
        Hop::new("a", Direction::Outbound)
            .on_request(&mut req, remote(), 100)
            .unwrap();
        let h = req.headers();
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "upgrade",
            "proxy-connection",
            "proxy-authorization",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["via"], "1.1 trellis.a.outbound");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h[X_REQUEST_ID].len(), 32);
    }

    #[test]
    fn appends_to_forwarding_lists_and_keeps_request_id() {
        let mut req = Request::builder()
            .header("via", "1.1 other")
            .header("x-forwarded-for", "192.0.2.1")
            .header("x-request-id", "abc")
            .body(())
            .unwrap();
        Hop::new("a", Direction::Inbound)
            .on_request(&mut req, remote(), 100)
            .unwrap();
        assert_eq!(req.headers()["via"], "1.1 other, 1.1 trellis.a.inbound");
        assert_eq!(req.headers()["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
        assert_eq!(req.headers()["x-request-id"], "abc");
    }

    #[test]
    fn detects_its_own_marker() {
        let hop = Hop::new("a", Direction::Outbound);
        let mut req = Request::builder()
            .header("via", "1.1 trellis.a.inbound, 1.1 trellis.a.outbound")
            .body(())
            .unwrap();
        assert_eq!(
            hop.on_request(&mut req, remote(), 100),
            Err(ProxyError::Loop)
        );
        // The other direction of the same proxy is a different hop.
        let mut req = Request::builder()
            .header("via", "1.1 trellis.a.inbound")
            .body(())
            .unwrap();
        assert_eq!(hop.on_request(&mut req, remote(), 100), Ok(()));
    }

    #[test]
    fn request_ids_and_ips_format_as_before() {
        for id in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(request_id(id).as_slice(), format!("{id:032x}").as_bytes());
        }
        for addr in [
            "10.1.2.3:1",
            "[::1]:2",
            "[::ffff:255.255.255.255]:3",
            "[fe80::1:2:3:4]:4",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(ip_value(addr).unwrap(), addr.ip().to_string().as_str());
        }
    }

    #[test]
    fn via_names_the_version() {
        let hop = Hop::new("a", Direction::Inbound);
        for (v, text) in [
            (Version::HTTP_10, "1.0 trellis.a.inbound"),
            (Version::HTTP_11, "1.1 trellis.a.inbound"),
            (Version::HTTP_2, "2 trellis.a.inbound"),
        ] {
            let mut req = Request::builder().version(v).body(()).unwrap();
            hop.on_request(&mut req, remote(), 100).unwrap();
            assert_eq!(req.headers()["via"], text);
        }
    }

    #[test]
    fn too_many_headers() {
        let mut req = Request::builder()
            .header("a", "1")
            .header("b", "1")
            .header("c", "1")
            .body(())
            .unwrap();
        let hop = Hop::new("a", Direction::Outbound);
        assert_eq!(
            hop.on_request(&mut req, remote(), 2),
            Err(ProxyError::HeadersTooLarge)
        );
    }
}
