//! What a well-behaved HTTP intermediary does to every message it forwards,
//! whatever the upstream: drop hop-by-hop headers, say it was here (`Via`,
//! `x-forwarded-*`), give the request an id, and refuse requests that already
//! passed through this very listener (a routing loop would otherwise
//! multiply one request until sockets run out).
//!
//! Framing attacks (CL+TE, conflicting Content-Lengths) are stopped below
//! HTTP, in [`crate::server::guard`]; oversized heads by hyper's limits.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
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

/// This listener's identity in `Via`: `trellis.<instance>.<direction>`.
#[derive(Clone, Debug)]
pub struct Hop {
    marker: String,
}

impl Hop {
    pub fn new(instance: &str, direction: Direction) -> Self {
        Hop {
            marker: format!("{VIA_PREFIX}{instance}.{}", direction.as_str()),
        }
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
        let via = format!("{} {}", protocol(req.version()), self.marker);
        append_list(req.headers_mut(), header::VIA, &via);
        append_list(
            req.headers_mut(),
            HeaderName::from_static(X_FORWARDED_FOR),
            &remote.ip().to_string(),
        );
        let headers = req.headers_mut();
        if !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if !headers.contains_key(X_REQUEST_ID) {
            let id = format!("{:032x}", rand::random::<u128>());
            if let Ok(v) = HeaderValue::from_str(&id) {
                headers.insert(X_REQUEST_ID, v);
            }
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

/// Appends `value` to a comma-separated list header, keeping one line.
fn append_list(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let joined = {
        let existing: Vec<&str> = headers
            .get_all(&name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if existing.is_empty() {
            value.to_string()
        } else {
            format!("{}, {value}", existing.join(", "))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(name, v);
    }
}

/// Removes the headers that describe one connection, not the message
/// (RFC 9110 §7.6.1), including those `Connection` names. `TE: trailers`
/// is end-to-end in practice (gRPC needs it) and survives.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
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
