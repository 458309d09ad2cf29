//! Leaving HTTP through the mesh: a WebSocket (HTTP/1.1 `Upgrade`) and a
//! `CONNECT` tunnel, client → outbound → inbound → app, on real sockets.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A sidecar pair whose server side fronts `app` (any TCP server).
async fn pair_for(app: SocketAddr) -> Pair {
    let server = start_proxy(&config_yaml(app, "http", "[]", "")).await;
    let up = upstream("orders", &["orders"], &[server.inbound_addr]);
    let client = start_proxy(&config_yaml(app, "http", &up, "")).await;
    Pair { client, server }
}

/// A WebSocket server echoing every message.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() || ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A TCP server echoing every byte.
async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_websocket_echoes_through_the_mesh() {
    let app = websocket_echo().await;
    let pair = pair_for(app).await;
    // The app's HTTP_PROXY is the outbound listener: the handshake names the service in Host.
    let stream = TcpStream::connect(pair.client.outbound_addr).await.unwrap();
    let (mut ws, rsp) = tokio_tungstenite::client_async("ws://orders/chat", stream)
        .await
        .expect("handshake through both sidecars");
    assert_eq!(rsp.status(), 101);
    for text in ["hello", "through two sidecars"] {
        ws.send(Message::text(text)).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no echo")
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(text));
    }
    let bytes = vec![7u8; 100_000];
    ws.send(Message::binary(bytes.clone())).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_data().as_ref(), &bytes[..]);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn connect_tunnels_to_the_named_service() {
    let app = tcp_echo().await;
    let pair = pair_for(app).await;
    let mut s = TcpStream::connect(pair.client.outbound_addr).await.unwrap();
    s.write_all(b"CONNECT orders:80 HTTP/1.1\r\nHost: orders:80\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("no answer to CONNECT")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // From here on the bytes are the tunnel's, not HTTP.
    for msg in [&b"\x16\x03\x01 not http at all"[..], b"ping"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("no echo")
            .unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test]
async fn connect_to_an_unknown_service_is_refused_and_stays_http() {
    let app = tcp_echo().await;
    let pair = pair_for(app).await;
    let (out, _) = raw(
        pair.client.outbound_addr,
        b"CONNECT nowhere:443 HTTP/1.1\r\nHost: nowhere:443\r\n\r\nGET / HTTP/1.1\r\nHost: nowhere\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert_eq!(
        out.matches("x-trellis-error: unknown-upstream").count(),
        2,
        "{out}"
    );
}
