//! The per-connection HTTP/2 bounds (`http.http2`, `http.maxHeaderBytes`)
//! on real connections: a caller gets no more streams than allowed (the
//! extra ones are refused, or a client waits for them), and an upstream's
//! header list over the limit is a clear error, not a hang or a reset.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const MAX_STREAMS: u32 = 4;

fn bounded_config(app: SocketAddr, http2: &str) -> String {
    config_yaml(app, "http", &upstream("orders", &["orders"], &[app]), "").replace(
        "shutdownGrace: 5s}",
        &format!("shutdownGrace: 5s, {http2}}}"),
    )
}

/// An app, and a proxy allowing [`MAX_STREAMS`] streams per connection.
async fn start_limited() -> (App, trellis_proxy::ProxyHandle) {
    let app = start_app("orders", Duration::ZERO).await;
    let http2 = format!("http2: {{maxConcurrentStreams: {MAX_STREAMS}}}");
    let proxy = start_proxy(&bounded_config(app.addr, &http2)).await;
    (app, proxy)
}

// Frame types and codes of RFC 9113.
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const REFUSED_STREAM: u32 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = BytesMut::new();
    f.put_uint(payload.len() as u64, 3);
    f.put_u8(kind);
    f.put_u8(flags);
    f.put_u32(stream);
    f.put_slice(payload);
    f.to_vec()
}

/// `GET http://{authority}{path}` as an HPACK block of literals (no
/// Huffman, no table): what a client ignoring the server's limit sends.
fn get_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http (static table)
    for (name_index, value) in [(4u8, path), (1u8, authority)] {
        b.push(name_index); // literal without indexing, indexed name (:path, :authority)
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// What came back on a connection, frame by frame.
#[derive(Default, Debug)]
struct Seen {
    max_concurrent_streams: Option<u32>,
    /// Streams answered with a response head.
    answered: Vec<u32>,
    /// Streams reset, and the error code.
    reset: BTreeMap<u32, u32>,
    goaway: bool,
}

async fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

/// Opens `streams` streams at once on one raw connection to `addr`, then
/// reads until every stream was answered or reset (or 20 s passed).
async fn open_streams_at_once(addr: SocketAddr, streams: u32) -> Seen {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..streams {
        // END_STREAM | END_HEADERS; the app holds each request a while.
        out.extend(frame(
            HEADERS,
            0x5,
            1 + 2 * i,
            &get_block("orders", "/slow/300"),
        ));
    }
    s.write_all(&out).await.unwrap();
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (seen.answered.len() + seen.reset.len()) < streams as usize && !seen.goaway {
        let Ok(Some((kind, flags, stream, payload))) =
            tokio::time::timeout_at(deadline, read_frame(&mut s)).await
        else {
            break;
        };
        match kind {
            SETTINGS if flags & 0x1 == 0 => {
                for setting in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                        seen.max_concurrent_streams = Some(value);
                    }
                }
                s.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
            }
            HEADERS => seen.answered.push(stream),
            RST_STREAM => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                seen.reset.insert(stream, code);
            }
            GOAWAY => seen.goaway = true,
            _ => {}
        }
    }
    seen.answered.sort();
    seen
}

#[tokio::test]
async fn streams_over_the_limit_are_refused_and_the_others_served() {
    let (app, proxy) = start_limited().await;
    for (listener, addr) in [
        ("outbound", proxy.outbound_addr),
        ("inbound", proxy.inbound_addr),
    ] {
        let before = app.hits.load(std::sync::atomic::Ordering::SeqCst);
        let seen = open_streams_at_once(addr, MAX_STREAMS + 2).await;
        assert_eq!(
            seen.max_concurrent_streams,
            Some(MAX_STREAMS),
            "{listener}: {seen:?}"
        );
        // The first four are served; the two beyond the limit are refused
        // (safe for the client to retry: never processed).
        assert_eq!(seen.answered, [1, 3, 5, 7], "{listener}: {seen:?}");
        assert_eq!(
            seen.reset,
            BTreeMap::from([(9, REFUSED_STREAM), (11, REFUSED_STREAM)]),
            "{listener}: {seen:?}"
        );
        assert!(!seen.goaway, "{listener}: the connection stays: {seen:?}");
        let hits = app.hits.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert_eq!(
            hits, MAX_STREAMS as usize,
            "{listener}: requests the app got"
        );
    }
}

#[tokio::test]
async fn a_client_that_honours_the_limit_waits_and_gets_every_answer() {
    let (app, proxy) = start_limited().await;
    let stream = TcpStream::connect(proxy.outbound_addr).await.unwrap();
    let (tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let call = |mut tx: hyper::client::conn::http2::SendRequest<TestBody>| async move {
        let req = Request::builder()
            .uri("http://orders/slow/100")
            .version(Version::HTTP_2)
            .body(body(""))
            .unwrap();
        let rsp = tx.send_request(req).await.unwrap();
        let status = rsp.status();
        let b = rsp.into_body().collect().await.unwrap().to_bytes();
        (status, b)
    };
    // Until the proxy's SETTINGS arrive a client may assume 100 streams
    // (and have the extra ones refused); after one answer it knows the limit.
    assert_eq!(call(tx.clone()).await.0, 200);
    let calls: Vec<_> = (0..3 * MAX_STREAMS)
        .map(|_| tokio::spawn(call(tx.clone())))
        .collect();
    for c in calls {
        let (status, b) = c.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(b, "slow orders");
    }
    assert_eq!(
        app.hits.load(std::sync::atomic::Ordering::SeqCst),
        1 + 3 * MAX_STREAMS as usize
    );
}

/// An h2c app whose response carries one header of `/<n>` bytes.
async fn start_big_header_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let n: usize = req.uri().path()[1..].parse().unwrap_or(0);
                    let mut rsp = Response::new(body("big"));
                    rsp.headers_mut()
                        .insert("x-big", "a".repeat(n).parse().unwrap());
                    Ok::<_, Infallible>(rsp)
                });
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                b.max_header_list_size(1 << 20);
                let _ = b.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// `GET http://orders/<n>` over h2c to `via`, with a client that takes
/// header lists up to 1 MiB.
async fn get_h2(via: SocketAddr, n: usize) -> Response<Bytes> {
    let stream = TcpStream::connect(via).await.unwrap();
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.max_header_list_size(1 << 20);
    let (mut tx, conn) = b.handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://orders/{n}"))
        .version(Version::HTTP_2)
        .body(body(""))
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    let (parts, b) = rsp.into_parts();
    Response::from_parts(parts, b.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn an_upstream_header_list_over_max_header_bytes_is_a_clear_502() {
    let app = start_big_header_app().await;
    // 32 KiB: more than hyper's own default (16 KiB), so the limit is the config's.
    let proxy = start_proxy(
        &bounded_config(app, "http2: {}").replace("maxHeaderBytes: 16384", "maxHeaderBytes: 32768"),
    )
    .await;
    let under = get_h2(proxy.outbound_addr, 24 * 1024).await;
    assert_eq!(under.status(), 200);
    assert_eq!(under.headers()["x-big"].len(), 24 * 1024);
    let over = get_h2(proxy.outbound_addr, 40 * 1024).await;
    assert_eq!(over.status(), 502, "{over:?}");
    assert_eq!(over.headers()["x-trellis-error"], "bad-response");
}
