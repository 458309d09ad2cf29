//! The `gateway` binary logs one access line per request (JSON here, with
//! `LOG_FORMAT=json`): method, path, status, duration and trace id.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use shop_testkit::{closed_port, http, terminate, wait_ready};

#[tokio::test]
async fn one_access_line_per_request() {
    let port = closed_port().await.port();
    let nowhere = format!("http://{}", closed_port().await);
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .envs([
            ("PORT", port.to_string()),
            ("JWT_SECRET", "a secret for the binary test, 32b+".into()),
            ("PRODUCTS_URL", nowhere.clone()),
            ("USERS_URL", nowhere.clone()),
            ("ORDERS_URL", nowhere.clone()),
            ("PAYMENTS_URL", nowhere),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "warn,access=info".into()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/health/ready")).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = http()
        .get(format!("{base}/api/products?limit=1"))
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = http()
        .get(format!("{base}/api/orders/o1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    terminate(&child);
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(10), lines)
        .await
        .unwrap()
        .unwrap();
    assert!(child.wait().unwrap().success());

    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .filter(|v| {
            v["fields"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/api/"))
        })
        .collect();
    assert_eq!(access.len(), 2, "{lines:#?}");
    let products = &access[0]["fields"];
    assert_eq!(products["method"], "GET");
    assert_eq!(products["path"], "/api/products");
    assert_eq!(products["status"], 503);
    assert!(products["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(products["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    let orders = &access[1]["fields"];
    assert_eq!(
        (orders["path"].as_str(), orders["status"].as_u64()),
        (Some("/api/orders/o1"), Some(401))
    );
    assert_eq!(orders["trace_id"].as_str().unwrap().len(), 32);
}
