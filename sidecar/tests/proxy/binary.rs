//! The `trellis-proxy` binary: starts from a file, serves, exits 0 on SIGTERM;
//! refuses an invalid file naming the field.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn temp_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "trellis-proxy-bin-{tag}-{}-{:x}.yaml",
        std::process::id(),
        rand::random::<u32>()
    ))
}

#[tokio::test]
async fn binary_serves_and_exits_cleanly_on_sigterm() {
    let app = start_app("orders", Duration::ZERO).await;
    let path = temp_path("ok");
    std::fs::write(
        &path,
        config_yaml(
            app.addr,
            "http",
            &upstream("orders", &["orders"], &[app.addr]),
            "",
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis-proxy"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The start line names the bound addresses.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.find("outbound=") {
                let addr: String = line[i + 9..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let _ = tx.send(addr);
            }
        }
    });
    let outbound: std::net::SocketAddr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("start line")
        .parse()
        .unwrap();
    let (status, headers, _) = send(
        &h1_client(),
        outbound,
        "orders",
        "GET",
        "/",
        body(""),
        http::Version::HTTP_11,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-app"], "orders");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn binary_rejects_an_invalid_file_naming_the_field() {
    let path = temp_path("bad");
    std::fs::write(
        &path,
        config_yaml("127.0.0.1:1".parse().unwrap(), "http", "[]", "")
            .replace("maxHeaders: 50", "maxHeaders: many"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trellis-proxy"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.maxHeaders"), "{err}");
}
