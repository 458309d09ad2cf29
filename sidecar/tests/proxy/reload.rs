//! Config hot reload from the file: changes apply without failing requests
//! in flight; an invalid file is counted and ignored.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::Version;

use crate::support::*;

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_config() -> TempFile {
    TempFile(std::env::temp_dir().join(format!(
        "trellis-proxy-test-{}-{:x}.yaml",
        std::process::id(),
        rand::random::<u64>()
    )))
}

/// Replaces the file the way a ConfigMap update does: write aside, rename over.
fn write_atomically(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn reload_adds_upstreams_removes_endpoints_and_keeps_last_good() {
    let one = start_app("orders-1", Duration::ZERO).await;
    let two = start_app("orders-2", Duration::ZERO).await;
    let users = start_app("users", Duration::ZERO).await;
    let file = temp_config();
    let v1 = config_yaml(
        one.addr,
        "http",
        &upstream("orders", &["orders"], &[one.addr, two.addr]),
        "",
    );
    std::fs::write(&file.0, &v1).unwrap();
    let proxy = trellis_proxy::Proxy::start_with(
        parse(&v1),
        trellis_proxy::Options {
            config_path: Some(file.0.clone()),
            reload_interval: Duration::from_millis(100),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out = proxy.outbound_addr;

    // Steady traffic through every reload; every request must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        tokio::spawn(async move {
            let c = h1_client();
            while !stop.load(Ordering::SeqCst) {
                let (status, _, _) =
                    send(&c, out, "orders", "GET", "/", body(""), Version::HTTP_11).await;
                sent.fetch_add(1, Ordering::SeqCst);
                if status != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    // Long requests in flight on both endpoints while they are reconfigured.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                send(
                    &h1_client(),
                    out,
                    "orders",
                    "GET",
                    "/slow/1500",
                    body(""),
                    Version::HTTP_11,
                )
                .await
                .0
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // v2: endpoint two removed, upstream users added.
    let ups = format!(
        "{}{}",
        upstream("orders", &["orders"], &[one.addr]),
        upstream("users", &["users"], &[users.addr])
    );
    write_atomically(&file.0, &config_yaml(one.addr, "http", &ups, ""));
    let c = h1_client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            send(&c, out, "users", "GET", "/", body(""), Version::HTTP_11)
                .await
                .0
                == 200
        })
        .await,
        "the new upstream never became routable"
    );
    let two_before = two.hits.load(Ordering::SeqCst);
    for _ in 0..10 {
        let (status, headers, _) =
            send(&c, out, "orders", "GET", "/", body(""), Version::HTTP_11).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-app"], "orders-1");
    }
    assert_eq!(
        two.hits.load(Ordering::SeqCst),
        two_before,
        "removed endpoint got traffic"
    );

    // v3: invalid. Counted, logged, ignored.
    write_atomically(
        &file.0,
        &v1.replace("policy: {}", "policy: {retry: {attempts: 11}}"),
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.metrics().config_reload_errors_total.get() == 1
        })
        .await,
        "the invalid file was not counted"
    );
    let (_, m) = admin_get(&proxy, "/metrics").await;
    assert!(m.contains("trellis_config_reload_errors_total 1"), "{m}");
    assert_eq!(
        send(&c, out, "users", "GET", "/", body(""), Version::HTTP_11)
            .await
            .0,
        200
    );
    assert_eq!(proxy.config().upstreams.len(), 2, "last good config kept");

    for s in slow {
        assert_eq!(
            s.await.unwrap(),
            200,
            "an in-flight request failed during reload"
        );
    }
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert!(sent.load(Ordering::SeqCst) > 0);
    assert_eq!(failures.load(Ordering::SeqCst), 0);
}
