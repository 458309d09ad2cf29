//! Forwarding a request to its service: the path rewritten, hop-by-hop
//! headers dropped, `X-Forwarded-*` set, bodies streamed both ways (the
//! request body capped at `MAX_BODY_BYTES`).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use shop_common::Problem;
use shop_common::http_client::Failure;
use shop_common::problem::FieldError;

use crate::Gateway;
use crate::routes::resolve;

/// Headers about one connection, not the message (RFC 9110 §7.6.1), and
/// ones the gateway sets itself.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(name);
    }
}

pub fn too_large(limit: usize) -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
        .with_detail(format!("the request body exceeds {limit} bytes"))
        .with_errors(vec![FieldError::new(
            "body",
            format!("exceeds {limit} bytes"),
        )])
}

/// The router's fallback: every path the gateway routes.
pub async fn forward(
    State(gateway): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let path = request.uri().path();
    let Some((route, upstream_path)) = resolve(path) else {
        return shop_common::extract::not_found(request.uri().clone())
            .await
            .into_response();
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("{}{upstream_path}{query}", gateway.base_url(route.upstream));
    let limit = gateway.max_body_bytes;

    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit).into_response();
    }

    let has_body =
        declared.is_some_and(|n| n > 0) || parts.headers.contains_key(header::TRANSFER_ENCODING);
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // The gateway's own span is the parent upstream; the client's context
    // is its parent in turn.
    headers.remove("traceparent");
    headers.remove("tracestate");
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    headers.insert("x-forwarded-prefix", HeaderValue::from_static(route.prefix));

    let mut upstream_request = gateway.http.request(parts.method, &url).headers(headers);
    if has_body {
        let stream = Limited::new(body, limit).into_data_stream();
        upstream_request = upstream_request.body(reqwest::Body::wrap_stream(stream));
    }
    let sent = upstream_request.send().await;
    let upstream = match sent {
        Ok(r) => r,
        Err(e) if is_length_limit(&e) => return too_large(limit).into_response(),
        Err(e) => {
            tracing::warn!(upstream = route.upstream.name(), error = %e, "forwarding failed");
            return Failure::of(&e)
                .problem(route.upstream.name())
                .into_response();
        }
    };
    let mut response: http::Response<reqwest::Body> = upstream.into();
    strip_hop_by_hop(response.headers_mut());
    response.map(Body::new)
}

fn is_length_limit(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::HOST, HeaderValue::from_static("gateway"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "content-type"]);
    }
}
