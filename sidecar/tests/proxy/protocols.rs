//! HTTP/1.1 and h2c end to end: client → outbound → inbound → app.

use std::time::Duration;

use http::{Request, Version};
use http_body_util::BodyExt;

use crate::support::*;

#[tokio::test]
async fn http1_request_and_body_survive_two_hops() {
    let app = start_app("orders", Duration::ZERO).await;
    let pair = start_pair(&app, "http").await;
    let (status, headers, b) = send(
        &h1_client(),
        pair.client.outbound_addr,
        "orders",
        "POST",
        "/echo?x=1",
        body("hello world"),
        Version::HTTP_11,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-app"], "orders");
    let j = json(&b);
    assert_eq!(j["body"], "hello world");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["uri"], "/echo?x=1");
    assert_eq!(j["headers"]["host"], "orders");
    // Two hops said they were here, and the request got an id and a trace context.
    let via = j["headers"]["via"].as_str().unwrap();
    assert_eq!(via.matches("trellis.").count(), 2, "{via}");
    assert!(j["headers"]["x-request-id"].as_str().is_some());
    assert!(
        j["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-")
    );
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn http1_large_streamed_body() {
    let app = start_app("orders", Duration::ZERO).await;
    let pair = start_pair(&app, "http").await;
    let big = "x".repeat(1024 * 1024);
    let (status, _, b) = send(
        &h1_client(),
        pair.client.outbound_addr,
        "orders",
        "PUT",
        "/echo",
        body(big.clone()),
        Version::HTTP_11,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json(&b)["body"].as_str().unwrap().len(), big.len());
}

#[tokio::test]
async fn h2c_stays_h2_end_to_end() {
    let app = start_app("orders", Duration::ZERO).await;
    let pair = start_pair(&app, "http").await;
    let (status, _, b) = send(
        &h2_client(),
        pair.client.outbound_addr,
        "orders.shop",
        "POST",
        "/echo",
        body("over h2"),
        Version::HTTP_2,
    )
    .await;
    assert_eq!(status, 200);
    let j = json(&b);
    assert_eq!(j["version"], "HTTP/2.0");
    assert_eq!(j["body"], "over h2");
}

#[tokio::test]
async fn h2_response_trailers_survive_two_hops() {
    let app = start_app("orders", Duration::ZERO).await;
    let pair = start_pair(&app, "http").await;
    let req = Request::builder()
        .uri("http://orders/trailers")
        .version(Version::HTTP_2)
        .body(body(""))
        .unwrap();
    let stream = tokio::net::TcpStream::connect(pair.client.outbound_addr)
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(&collected.to_bytes()[..], b"part1-part2");
}

#[tokio::test]
async fn h2_request_trailers_reach_the_app() {
    let app = start_app("orders", Duration::ZERO).await;
    let pair = start_pair(&app, "http").await;
    let mut t = http::HeaderMap::new();
    t.insert("x-sum", "42".parse().unwrap());
    let frames = vec![
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(
            b"data",
        ))),
        Ok(hyper::body::Frame::trailers(t)),
    ];
    let b = http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed();
    let req = Request::builder()
        .method("POST")
        .uri("http://orders/echo")
        .version(Version::HTTP_2)
        .header("te", "trailers")
        .body(b)
        .unwrap();
    let (status, _, b) = send_h2_to(pair.client.outbound_addr, req).await;
    assert_eq!(status, 200);
    let j = json(&b);
    assert_eq!(j["body"], "data");
    assert_eq!(j["trailers"][0], "x-sum: 42");
    assert_eq!(j["headers"]["te"], "trailers");
}
