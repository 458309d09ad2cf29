//! Bodies that stall between chunks are cut at `http.bodyIdleTimeout`, in
//! both directions.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::support::*;

const IDLE: Duration = Duration::from_millis(300);

async fn setup() -> (App, trellis_proxy::ProxyHandle) {
    let app = start_app("orders", Duration::ZERO).await;
    let ups = upstream("orders", &["orders"], &[app.addr]);
    let yaml = config_yaml(app.addr, "http", &ups, "").replace(
        "shutdownGrace: 5s}",
        "shutdownGrace: 5s, bodyIdleTimeout: 300ms}",
    );
    (app, start_proxy(&yaml).await)
}

#[tokio::test]
async fn a_response_that_stalls_is_cut() {
    let (_app, proxy) = setup().await;
    let req = Request::builder()
        .uri(format!("http://{}/stall", proxy.outbound_addr))
        .header("host", "orders")
        .body(body(""))
        .unwrap();
    let rsp = h1_client().request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let mut b = rsp.into_body();
    let first = b.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    let since = Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(10), b.frame())
        .await
        .expect("the stalled body was never cut");
    assert!(!matches!(next, Some(Ok(_))), "the body went on: {next:?}");
    assert!(since.elapsed() >= IDLE, "cut early: {:?}", since.elapsed());
}

#[tokio::test]
async fn a_request_body_that_stalls_is_cut() {
    let (app, proxy) = setup().await;
    let mut s = tokio::net::TcpStream::connect(proxy.outbound_addr)
        .await
        .unwrap();
    // Half a chunked upload, then silence.
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .await
    .unwrap();
    let since = Instant::now();
    let (out, _) = read_until_close(&mut s, Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(since.elapsed() >= IDLE, "cut early: {:?}", since.elapsed());
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.cut_bodies.load(Ordering::SeqCst) == 1
        })
        .await,
        "the app never saw its request body end early"
    );
}
