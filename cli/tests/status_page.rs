//! The status page in a real headless browser (Debian's chromium, driven
//! over WebDriver by chromedriver): the whole shop under `--load` with
//! `--chaos payments=50%`: the numbers on the page change, the failing
//! payments show on it, traffic to another service shows up within a
//! scrape, and a screenshot is kept as a test artifact.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Dev, SHOP, assert_broker, build, shop_files};
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port in its own process group, which
/// the browsers it starts share: dropped, the whole group is killed, so a
/// failed test leaves no browser behind.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the group our own unreaped child leads.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn browser() -> Option<(Driver, Client)> {
    if !(std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI chromium and chromedriver must be installed (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "skipped: chromium or chromedriver missing (apt-get install chromium chromium-driver)"
        );
        return None;
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child, port);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-proxy-server"]
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{}", driver.1))
            .await
        {
            Ok(client) => return Some((driver, client)),
            Err(e) => {
                assert!(Instant::now() < deadline, "no WebDriver session: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn cell(client: &Client, service: &str, column: &str) -> String {
    let css = format!("tr[data-service=\"{service}\"] td.{column}");
    match client.find(Locator::Css(&css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn number(text: &str) -> f64 {
    text.trim_end_matches('%').parse().unwrap_or(0.0)
}

fn artifact_dir() -> PathBuf {
    let dir = std::env::var_os("TRELLIS_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::bin_dir().join("test-artifacts"));
    std::fs::create_dir_all(&dir).expect("the artifact directory");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_numbers_in_a_real_browser() {
    let Some((_driver, client)) = browser().await else {
        return;
    };
    build(&SHOP);
    let mut dev = Dev::start(&shop_files(), &["--load", "20", "--chaos", "payments=50%"]);
    assert!(
        dev.wait_printed("chaos: payments now fails 50%", Duration::from_secs(30)),
        "the fault knob was not turned"
    );
    assert_broker(&dev);
    client.goto(&dev.status).await.expect("the page loads");
    assert_eq!(client.title().await.expect("a title"), "trellis dev");

    // The gateway's request rate, read off the page a few times.
    let mut rates = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let rate = cell(&client, "gateway", "rate").await;
        if !rate.is_empty() && rate != "–" {
            rates.push(rate);
        }
        let distinct: std::collections::BTreeSet<_> = rates.iter().collect();
        if distinct.len() >= 3 && rates.iter().any(|r| number(r) > 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let distinct: std::collections::BTreeSet<_> = rates.iter().collect();
    assert!(
        distinct.len() >= 3,
        "the gateway's rate did not change on the page: {rates:?}"
    );
    assert!(rates.iter().any(|r| number(r) > 0.0), "{rates:?}");
    let success = cell(&client, "gateway", "success").await;
    assert!(success.ends_with('%'), "success cell: {success:?}");
    assert!(number(&cell(&client, "gateway", "p99").await) > 0.0);
    let lines = client
        .find_all(Locator::Css("#graph polyline"))
        .await
        .expect("the graph");
    assert_eq!(lines.len(), 6, "one line per service");

    // The fault knob shows: payments answers fewer than all requests well.
    let chaos = Instant::now();
    loop {
        let success = cell(&client, "payments", "success").await;
        if success.ends_with('%') && number(&success) < 100.0 {
            eprintln!("payments' success on the page: {success}");
            break;
        }
        assert!(
            chaos.elapsed() < Duration::from_secs(60),
            "payments' failures never showed: {success:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Traffic to users (failed logins) shows up on the page.
    // The load logged its shopper in at the start; wait until that is out of the window.
    let quiet = Instant::now();
    while number(&cell(&client, "users", "rate").await) > 0.0 {
        assert!(
            quiet.elapsed() < Duration::from_secs(30),
            "users never went quiet"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let burst = Instant::now();
    let seen = loop {
        let _ = dev
            .http
            .post(format!("{}/api/auth/login", dev.gateway))
            .json(&serde_json::json!({"email": "nobody@example.com", "password": "wrong password"}))
            .send()
            .await;
        if number(&cell(&client, "users", "rate").await) > 0.0 {
            break burst.elapsed();
        }
        assert!(
            burst.elapsed() < Duration::from_secs(30),
            "users' traffic never showed on the page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("the page showed users' first requests {seen:?} after they were sent");

    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = artifact_dir().join("status-page.png");
    std::fs::write(&path, png).expect("the screenshot is saved");
    eprintln!("screenshot: {}", path.display());

    client.close().await.expect("the browser closes");
    assert!(dev.interrupt(), "trellis dev did not exit cleanly");
}
