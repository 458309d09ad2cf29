//! HTTP hygiene, one rule per test, over raw TCP sockets so nothing between
//! the test and the proxy fixes the bytes up.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Version};

use crate::support::*;

async fn setup() -> (App, trellis_proxy::ProxyHandle) {
    let app = start_app("orders", Duration::ZERO).await;
    let ups = upstream("orders", &["orders"], &[app.addr]);
    let proxy = start_proxy(&config_yaml(app.addr, "http", &ups, "")).await;
    (app, proxy)
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn smuggling_cl_and_te_is_400_and_closes() {
    let (app, proxy) = setup().await;
    let attack = b"POST /echo HTTP/1.1\r\nHost: orders\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: orders\r\n\r\n";
    let (out, closed) = raw(proxy.outbound_addr, attack, WAIT).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1").count(),
        1,
        "one response only: {out}"
    );
    assert!(closed, "connection must close");
    assert_eq!(
        app.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the app"
    );
    // Same with the headers the other way round, after a good request.
    let attack = b"GET / HTTP/1.1\r\nHost: orders\r\n\r\nPOST / HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
    let (out, closed) = raw(proxy.outbound_addr, attack, WAIT).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("HTTP/1.1 400"), "{out}");
    assert!(closed);
    assert_eq!(app.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn conflicting_content_lengths_are_400_and_close() {
    let (app, proxy) = setup().await;
    let (out, closed) = raw(
        proxy.outbound_addr,
        b"POST /echo HTTP/1.1\r\nHost: orders\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        WAIT,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(closed);
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oversized_header_is_431() {
    let (app, proxy) = setup().await;
    // maxHeaderBytes is 16 KiB in the test config.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: orders\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (out, _) = raw(proxy.outbound_addr, big.as_bytes(), WAIT).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let (app, proxy) = setup().await;
    // maxHeaders is 50 in the test config.
    let mut req = String::from("GET / HTTP/1.1\r\nHost: orders\r\n");
    for i in 0..60 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let (out, _) = raw(proxy.outbound_addr, req.as_bytes(), WAIT).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn h2_header_limits_are_431() {
    let (app, proxy) = setup().await;
    let mut req = Request::builder()
        .uri("http://orders/")
        .version(Version::HTTP_2);
    for i in 0..60 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let (status, headers, _) = send_h2_to(proxy.outbound_addr, req.body(body("")).unwrap()).await;
    assert_eq!(status, 431);
    assert_eq!(headers["x-trellis-error"], "headers-too-large");
    // A header list over maxHeaderBytes: refused by the HTTP/2 layer itself.
    let req = Request::builder()
        .uri("http://orders/")
        .version(Version::HTTP_2)
        .header("x-big", "a".repeat(20_000))
        .body(body(""))
        .unwrap();
    let stream = tokio::net::TcpStream::connect(proxy.outbound_addr)
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    match tx.send_request(req).await {
        Ok(rsp) => assert_eq!(rsp.status(), 431),
        Err(e) => panic!("expected a 431, got {e}"),
    }
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn slowloris_head_times_out() {
    let (app, proxy) = setup().await;
    // headerReadTimeout is 1s in the test config: a head never finished is cut.
    let mut s = tokio::net::TcpStream::connect(proxy.outbound_addr)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: orders\r\nX-Slow: ")
        .await
        .unwrap();
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "a dribbling client must be disconnected");
    // A connection that sends nothing at all is cut too.
    let (out, closed) = raw(proxy.outbound_addr, b"", Duration::from_secs(10)).await;
    assert!(closed, "{out}");
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_not_cut_by_the_head_timeout() {
    let (_app, proxy) = setup().await;
    let mut s = tokio::net::TcpStream::connect(proxy.outbound_addr)
        .await
        .unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n";
    for _ in 0..2 {
        tokio::io::AsyncWriteExt::write_all(&mut s, req)
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Idle past headerReadTimeout (1s): still usable.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped() {
    let (_app, proxy) = setup().await;
    let (out, _) = raw(
        proxy.outbound_addr,
        b"GET /echo HTTP/1.1\r\nHost: orders\r\nConnection: close, X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers, deflate\r\nX-Kept: yes\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    let j: serde_json::Value = serde_json::from_str(body).unwrap();
    let h = &j["headers"];
    for gone in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the app: {h}");
    }
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-kept"], "yes");
    assert!(h["via"].as_str().unwrap().contains("trellis."));
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-request-id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn a_request_looping_back_into_the_proxy_is_508() {
    let (app, proxy) = setup().await;
    // An upstream whose endpoint is the proxy's own outbound listener.
    let ups = format!(
        "{}{}",
        upstream("orders", &["orders"], &[app.addr]),
        upstream("loop", &["loop"], &[proxy.outbound_addr])
    );
    proxy
        .reload(parse(&config_yaml(app.addr, "http", &ups, "")))
        .await;
    let (status, headers, _) = send(
        &h1_client(),
        proxy.outbound_addr,
        "loop",
        "GET",
        "/",
        body(""),
        Version::HTTP_11,
    )
    .await;
    assert_eq!(status, 508);
    assert_eq!(headers["x-trellis-error"], "loop");
}

/// RFC 9112 §3.2 on both listeners: a request without `Host` (HTTP/1.1),
/// with two, or with an invalid one is answered 400 and never forwarded.
#[tokio::test]
async fn a_missing_repeated_or_invalid_host_is_400_on_both_listeners() {
    let (app, proxy) = setup().await;
    let bad: [&[u8]; 5] = [
        b"GET /echo HTTP/1.1\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: orders\r\nHost: orders\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: orders\r\nHost: evil\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: user@orders\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: orders:http\r\n\r\n",
    ];
    for listener in [proxy.outbound_addr, proxy.inbound_addr] {
        for request in bad {
            let (out, _) = raw(listener, request, WAIT).await;
            let shown = String::from_utf8_lossy(request);
            assert!(out.starts_with("HTTP/1.1 400"), "{shown:?}: {out}");
            assert!(
                out.to_ascii_lowercase()
                    .contains("x-trellis-error: bad-request"),
                "{shown:?}: {out}"
            );
        }
    }
    assert_eq!(app.hits.load(Ordering::SeqCst), 0, "nothing was forwarded");
    // The same requests with one good Host go through; HTTP/1.0 needs none.
    let (out, _) = raw(
        proxy.inbound_addr,
        b"GET /echo HTTP/1.1\r\nHost: orders:8080\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let (out, _) = raw(proxy.inbound_addr, b"GET /echo HTTP/1.0\r\n\r\n", WAIT).await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert_eq!(app.hits.load(Ordering::SeqCst), 2);
}

/// The rest of RFC 9112's request-head rules, as both listeners apply them
/// (hyper's parser and the framing guard): each head is answered 400 and
/// nothing is forwarded.
#[tokio::test]
async fn other_malformed_heads_are_400_and_never_forwarded() {
    let (app, proxy) = setup().await;
    let bad: [(&str, &[u8]); 6] = [
        // §6.3: a request whose last transfer coding is not chunked has no knowable length.
        (
            "te-not-chunked",
            b"POST /echo HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        ),
        // §5.1: no whitespace between a field name and the colon.
        (
            "space-before-colon",
            b"GET /echo HTTP/1.1\r\nHost : orders\r\n\r\n",
        ),
        // §5.2: obsolete line folding in a request.
        (
            "obs-fold",
            b"GET /echo HTTP/1.1\r\nHost: orders\r\nX-A: a\r\n b\r\n\r\n",
        ),
        // §6.2: an invalid Content-Length.
        (
            "bad-length",
            b"POST /echo HTTP/1.1\r\nHost: orders\r\nContent-Length: 1x\r\n\r\nabc",
        ),
        // §3: a request line with a bad method token or version.
        ("bad-method", b"G(T /echo HTTP/1.1\r\nHost: orders\r\n\r\n"),
        ("bad-version", b"GET /echo HTTP/9.9\r\nHost: orders\r\n\r\n"),
    ];
    for listener in [proxy.outbound_addr, proxy.inbound_addr] {
        for (what, request) in bad {
            let (out, _) = raw(listener, request, WAIT).await;
            assert!(out.starts_with("HTTP/1.1 400"), "{what}: {out}");
        }
    }
    assert_eq!(app.hits.load(Ordering::SeqCst), 0, "nothing was forwarded");
}
