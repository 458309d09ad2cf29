//! The `products` binary as Kubernetes runs it: configured by environment
//! variables, stopped by SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use shop_testkit::{TestDb, closed_port, http, terminate, wait_ready};

fn products() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_products"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn a_bad_setting_stops_it_with_the_variable_named() {
    for (var, value) in [
        ("PORT", "eighty"),
        ("DATABASE_URL", "mysql://db/x"),
        ("AMQP_URL", "http://rabbit"),
        ("SHUTDOWN_GRACE", "soon"),
    ] {
        let out = products().env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("configuration error: {var}")),
            "{var}: {stderr}"
        );
    }
}

#[tokio::test]
async fn serves_then_stops_cleanly_on_sigterm() {
    let db = TestDb::sqlite();
    let port = closed_port().await.port();
    let mut child = products()
        .env("PORT", port.to_string())
        .env("DATABASE_URL", &db.url)
        .env("SHUTDOWN_GRACE", "2s")
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/health/ready")).await;
    let r = http()
        .get(format!("{base}/api/v1/products/prod_001"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    terminate(&child);
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
}
