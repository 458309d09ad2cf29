//! What a well-behaved HTTP intermediary does to every request it forwards,
//! whatever the upstream: refuse heads HTTP forbids (RFC 9110, RFC 9112
//! §3.2: a missing, repeated or invalid `Host`), drop hop-by-hop headers, say
//! it was here (`Via`, `x-forwarded-*`), give the request an id, and refuse
//! requests that already passed through this very listener (a routing loop
//! would otherwise multiply one request until sockets run out).
//!
//! Framing attacks (CL+TE, conflicting Content-Lengths) are stopped below
//! HTTP, in [`crate::server::guard`]; oversized heads, bad request lines,
//! header syntax, `obs-fold`, invalid lengths and a final transfer coding
//! other than chunked by hyper, which answers 400 or 431 itself (the
//! process tests pin each). `Max-Forwards` is not acted on: `TRACE` and
//! `OPTIONS` are forwarded like any request.
//! A `Host` that differs from an HTTP/2 `:authority` is not refused: every
//! hop of the mesh names its endpoint in `:authority`, so on the inbound side
//! they differ by design.

use std::io::Write as _;
use std::net::{Ipv6Addr, SocketAddr};

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};

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

    /// Checks and rewrites a request about to be forwarded; an `Err` is the
    /// answer instead, and nothing is forwarded.
    pub fn on_request<B>(
        &self,
        req: &mut Request<B>,
        remote: SocketAddr,
        max_headers: usize,
    ) -> Result<(), ProxyError> {
        if req.headers().len() > max_headers {
            return Err(ProxyError::HeadersTooLarge);
        }
        check_host(req)?;
        self.check_loop(req.headers())?;
        let http11 = req.version() == Version::HTTP_11;
        strip_hop_by_hop(req.headers_mut(), http11);
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
            && let Ok(mut v) = HeaderValue::from_bytes(&request_id(rand::random::<u128>()))
        {
            // Unique per request: not worth a slot in an HTTP/2 peer's HPACK table.
            v.set_sensitive(true);
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

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, and any request with
/// more than one `Host` or an invalid one, is answered 400.
fn check_host<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == Version::HTTP_11 => Err(ProxyError::BadRequest),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(ProxyError::BadRequest),
        (Some(host), None) if is_valid_host(host.as_bytes()) => Ok(()),
        (Some(_), None) => Err(ProxyError::BadRequest),
    }
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a
/// bracketed IPv6 address, or a reg-name (which covers IPv4), then digits.
fn is_valid_host(value: &[u8]) -> bool {
    let port = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..end]).ok();
        if literal.and_then(|a| a.parse::<Ipv6Addr>().ok()).is_none() {
            return false;
        }
        &rest[end + 1..]
    } else {
        let end = value.iter().position(|b| *b == b':').unwrap_or(value.len());
        if !is_reg_name(&value[..end]) {
            return false;
        }
        &value[end..]
    };
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`.
fn is_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// Cleans the hop-by-hop headers of a response about to be returned to the
/// client; a `101 Switching Protocols` keeps the upgrade it announces.
pub fn on_response<B>(rsp: &mut Response<B>) {
    let switching = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(rsp.headers_mut(), switching);
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

/// Appends `value` to a comma-separated list header, keeping one line
/// (values that are not visible ASCII are dropped from it).
fn append_list(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    match headers.entry(name) {
        Entry::Vacant(e) => {
            e.insert(value);
        }
        Entry::Occupied(mut e) => {
            let kept = || e.iter().filter(|v| v.to_str().is_ok());
            let len: usize = kept().map(|v| v.len() + 2).sum();
            if len == 0 {
                e.insert(value);
                return;
            }
            // One allocation, handed to the header value as is.
            let mut joined = Vec::with_capacity(len + value.len());
            for v in kept() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            if value.to_str().is_ok() {
                joined.extend_from_slice(value.as_bytes());
            }
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
                e.insert(v);
            }
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
/// is end-to-end in practice (gRPC needs it) and survives. When `upgrading`
/// (an HTTP/1.1 message) announces an upgrade, the next hop is asked for the
/// same one: `Upgrade` stays and `Connection: upgrade` is written anew.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // Most messages carry none of them: one pass over the names, no removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut upgrade = false;
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if name == header::UPGRADE {
            upgrade = true;
        }
        // A client must not be able to strip end-to-end framing or routing this way.
        if name != header::CONTENT_LENGTH && name != header::HOST && name != header::UPGRADE {
            headers.remove(name);
        }
    }
    let keep_upgrade = upgrading && upgrade && headers.contains_key(header::UPGRADE);
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
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
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
            .header("host", "orders")
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
            .header("host", "orders")
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
            .header("host", "orders")
            .header("via", "1.1 trellis.a.inbound, 1.1 trellis.a.outbound")
            .body(())
            .unwrap();
        assert_eq!(
            hop.on_request(&mut req, remote(), 100),
            Err(ProxyError::Loop)
        );
        // The other direction of the same proxy is a different hop.
        let mut req = Request::builder()
            .header("host", "orders")
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
            let mut req = Request::builder()
                .version(v)
                .header("host", "orders")
                .body(())
                .unwrap();
            hop.on_request(&mut req, remote(), 100).unwrap();
            assert_eq!(req.headers()["via"], text);
        }
    }

    #[test]
    fn too_many_headers() {
        let mut req = Request::builder()
            .header("host", "orders")
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

    fn host_verdict(version: Version, hosts: &[&[u8]]) -> Result<(), ProxyError> {
        let mut req = Request::builder().version(version).body(()).unwrap();
        for h in hosts {
            req.headers_mut()
                .append(header::HOST, HeaderValue::from_bytes(h).unwrap());
        }
        Hop::new("a", Direction::Inbound).on_request(&mut req, remote(), 100)
    }

    #[test]
    fn host_must_be_there_once_and_valid() {
        let ok = Ok(());
        let bad = Err(ProxyError::BadRequest);
        for v in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
            assert_eq!(host_verdict(v, &[b"orders"]), ok, "{v:?}");
            assert_eq!(host_verdict(v, &[b"orders", b"orders"]), bad, "{v:?}");
            assert_eq!(host_verdict(v, &[b"a", b"b"]), bad, "{v:?}");
            assert_eq!(host_verdict(v, &[b"orders shop"]), bad, "{v:?}");
        }
        // Only HTTP/1.1 requires it (HTTP/2 has :authority, HTTP/1.0 predates it).
        assert_eq!(host_verdict(Version::HTTP_11, &[]), bad);
        assert_eq!(host_verdict(Version::HTTP_10, &[]), ok);
        assert_eq!(host_verdict(Version::HTTP_2, &[]), ok);
    }

    #[test]
    fn host_values_follow_the_uri_grammar() {
        for good in [
            "orders",
            "orders.shop.svc.cluster.local:8080",
            "ORDERS:80",
            "10.0.0.1:4143",
            "[::1]",
            "[fe80::1]:8080",
            "a-b_c~d.e",
            "xn--bcher-kva.example",
            "%41bc",
            "orders:",
            "",
        ] {
            assert!(is_valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "orders shop",
            "user@orders",
            "orders:80:80",
            "orders:http",
            "[::1",
            "[nope]:80",
            "[::1]x",
            "orders/x",
            "%4",
            "%zz",
            "or\"ders",
            "orders\t",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad:?}");
        }
        // Bytes HeaderValue allows but a host never has.
        assert!(!is_valid_host(b"ord\xffers"));
    }

    #[test]
    fn an_upgrade_is_asked_of_the_next_hop_too() {
        let mut req = Request::builder()
            .header("host", "orders")
            .header("connection", "Upgrade, x-private")
            .header("upgrade", "websocket")
            .header("x-private", "1")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        Hop::new("a", Direction::Outbound)
            .on_request(&mut req, remote(), 100)
            .unwrap();
        let h = req.headers();
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("x-private"));
        assert!(h.contains_key("sec-websocket-key"));
        // Over HTTP/2 there is no such thing: both go.
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        Hop::new("a", Direction::Outbound)
            .on_request(&mut req, remote(), 100)
            .unwrap();
        assert!(!req.headers().contains_key("upgrade"));
        // A 101 keeps what it switches to; any other response drops it.
        let mut rsp = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        on_response(&mut rsp);
        assert_eq!(rsp.headers()["upgrade"], "websocket");
        assert_eq!(rsp.headers()["connection"], "upgrade");
        let mut rsp = Response::builder()
            .header("connection", "upgrade")
            .header("upgrade", "h2c")
            .body(())
            .unwrap();
        on_response(&mut rsp);
        assert!(rsp.headers().is_empty());
    }
}
