//! Power of two choices over peak-EWMA: traffic shifts to the fast endpoint.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Version;

use crate::support::*;

#[tokio::test]
async fn p2c_prefers_the_fast_endpoint() {
    let fast = start_app("fast", Duration::ZERO).await;
    let slow = start_app("slow", Duration::from_millis(100)).await;
    let ups = upstream("orders", &["orders"], &[fast.addr, slow.addr]);
    let proxy = start_proxy(&config_yaml(fast.addr, "http", &ups, "")).await;
    let c = h1_client();
    let get = || {
        send(
            &c,
            proxy.outbound_addr,
            "orders",
            "GET",
            "/",
            body(""),
            Version::HTTP_11,
        )
    };
    // Warm-up: both endpoints get measured.
    for _ in 0..10 {
        assert_eq!(get().await.0, 200);
    }
    let (f0, s0) = (
        fast.hits.load(Ordering::SeqCst),
        slow.hits.load(Ordering::SeqCst),
    );
    let n = 60;
    for _ in 0..n {
        assert_eq!(get().await.0, 200);
    }
    let to_fast = fast.hits.load(Ordering::SeqCst) - f0;
    let to_slow = slow.hits.load(Ordering::SeqCst) - s0;
    assert_eq!(to_fast + to_slow, n);
    assert!(to_fast * 100 >= n * 80, "fast {to_fast}, slow {to_slow}");
}

#[tokio::test]
async fn requests_spread_over_equal_endpoints() {
    let a = start_app("a", Duration::ZERO).await;
    let b = start_app("b", Duration::ZERO).await;
    let ups = upstream("orders", &["orders"], &[a.addr, b.addr]);
    let proxy = start_proxy(&config_yaml(a.addr, "http", &ups, "")).await;
    let c = h1_client();
    // Concurrent requests: in-flight counts spread them.
    let reqs: Vec<_> = (0..40)
        .map(|_| {
            send(
                &c,
                proxy.outbound_addr,
                "orders",
                "GET",
                "/slow/50",
                body(""),
                Version::HTTP_11,
            )
        })
        .collect();
    for (status, _, _) in futures::future::join_all(reqs).await {
        assert_eq!(status, 200);
    }
    let (ha, hb) = (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst));
    assert_eq!(ha + hb, 40);
    assert!(ha >= 5 && hb >= 5, "a {ha}, b {hb}");
}
