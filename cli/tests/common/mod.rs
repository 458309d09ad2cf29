//! `trellis dev` run as a user runs it, from a test: the shop's binaries
//! built, the manifests in a temporary directory, its output read for the
//! URLs, its status API for the processes' ids and ports.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo put the `trellis` binary under test; the shop's binaries
/// are built next to it.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_trellis"))
        .parent()
        .expect("the binary has a directory")
        .to_path_buf()
}

/// Builds the sidecar and `services` (no-op when fresh) in the test's own
/// profile and target dir, with the features `cargo test --workspace`
/// resolves: `--workspace` and a test target (this package's `cli`) make
/// cargo unify features over every member and its dev-dependencies, as the
/// test build does. After `cargo test --workspace` (CI) every library is
/// then already built and only the binaries are linked; `-p` alone would
/// resolve fewer features and build the shop's dependencies a second time.
///
/// The variables cargo sets for a running test (`CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_NAME`, …) are not passed on: build scripts such as ring's
/// watch them (`rerun-if-env-changed`), and seeing them differ from the
/// outer build's empty ones, cargo would rebuild ring and all above it, here
/// and again in the next `cargo test`.
pub fn build(services: &[&str]) {
    let mut cargo = Command::new(env!("CARGO"));
    for (name, _) in std::env::vars_os() {
        let Some(n) = name.to_str() else { continue };
        let per_test = n.starts_with("CARGO_PKG_")
            || n.starts_with("CARGO_MANIFEST_")
            || matches!(
                n,
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if per_test {
            cargo.env_remove(&name);
        }
    }
    cargo.current_dir(workspace()).args([
        "build",
        "--workspace",
        "--test",
        "cli",
        "--bin",
        "trellis-proxy",
    ]);
    for s in services {
        cargo.args(["--bin", s]);
    }
    if let Some(target) = bin_dir().parent() {
        cargo.env("CARGO_TARGET_DIR", target);
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "building the shop failed");
}

pub struct Dev {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub gateway: String,
    pub status: String,
    pub output: Arc<Mutex<Vec<String>>>,
    pub http: reqwest::Client,
}

impl Dev {
    /// Writes `files` (name, YAML) into a temporary directory and starts
    /// `trellis dev` on it with `extra` arguments; returns once it printed
    /// its URLs.
    pub fn start(files: &[(String, String)], extra: &[&str]) -> Dev {
        let dir = tempfile::Builder::new()
            .prefix("trellis-dev-test-")
            .tempdir()
            .expect("a temporary directory");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).expect("mkdir");
        for (name, text) in files {
            std::fs::write(manifests.join(name), text).expect("write a manifest");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .arg("dev")
            .arg(&manifests)
            .arg("--bin-dir")
            .arg(bin_dir())
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("trellis dev starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = output.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    let _ = tx.send(line.clone());
                    output.lock().expect("lock").push(line);
                }
            });
        }
        let (mut gateway, mut status) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(300);
        while gateway.is_none() || status.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!("trellis dev printed no URLs in 300s");
                }
            };
            if let Some(url) = line.strip_prefix("gateway: ") {
                gateway = Some(url.trim().to_string());
            }
            if let Some(url) = line.strip_prefix("status:") {
                status = Some(url.trim().to_string());
            }
        }
        Dev {
            child,
            dir,
            gateway: gateway.unwrap_or_default(),
            status: status.unwrap_or_default(),
            output,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a client"),
        }
    }

    pub fn manifest(&self, name: &str) -> PathBuf {
        self.dir.path().join("manifests").join(name)
    }

    pub fn printed(&self, needle: &str) -> bool {
        self.output
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Waits up to `limit` for a line containing `needle`.
    pub fn wait_printed(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while !self.printed(needle) {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// `/api/status` of the status page.
    pub async fn status(&self) -> Value {
        self.http
            .get(format!("{}/api/status", self.status))
            .send()
            .await
            .expect("the status page answers")
            .json()
            .await
            .expect("status is JSON")
    }

    /// The status entry of one service.
    pub async fn service(&self, name: &str) -> Value {
        let status = self.status().await;
        status["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not in {status}"))
    }

    /// Every pid the status page knows, apps and sidecars.
    pub async fn pids(&self) -> Vec<i32> {
        let status = self.status().await;
        let mut pids = Vec::new();
        for s in status["services"].as_array().into_iter().flatten() {
            for role in ["app", "proxy"] {
                if let Some(pid) = s[role]["pid"].as_i64() {
                    pids.push(pid as i32);
                }
            }
        }
        pids
    }

    /// The sidecar metrics of `service`, as text.
    pub async fn metrics(&self, service: &str) -> String {
        let admin = self.service(service).await["ports"]["admin"].clone();
        self.http
            .get(format!("http://127.0.0.1:{admin}/metrics"))
            .send()
            .await
            .expect("the sidecar's admin port answers")
            .text()
            .await
            .expect("metrics")
    }

    /// SIGINT, as Ctrl-C; waits for the exit and returns whether it was clean.
    pub fn interrupt(&mut self) -> bool {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) of our own, not yet reaped child.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "trellis dev still running 90s after SIGINT"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dev {
    /// A failed test still stops the shop as Ctrl-C does: a SIGKILLed
    /// `trellis dev` would leave its broker (which runs as another user,
    /// so the kernel's parent-death signal does not reach it) behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) of our own, not yet reaped child.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One value of a metric: the sum over the series with all `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Processes still alive among `pids`, or whose command line names `needle`.
pub fn survivors(pids: &[i32], needle: &str) -> Vec<String> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmdline.is_empty() {
            continue;
        }
        if pids.contains(&pid) || cmdline.contains(needle) {
            left.push(format!("{pid}: {cmdline}"));
        }
    }
    left
}

/// A MeshService manifest of `examples/shop`.
pub fn example(name: &str) -> (String, String) {
    let file = format!("{name}.yaml");
    let text = std::fs::read_to_string(workspace().join("examples/shop").join(&file))
        .unwrap_or_else(|e| panic!("examples/shop/{file}: {e}"));
    (file, text)
}

/// Under CI the broker must have been found or started, never missing.
pub fn assert_broker(dev: &Dev) {
    if std::env::var_os("CI").is_some() {
        assert!(
            dev.printed("RabbitMQ started") || dev.printed("RabbitMQ already running"),
            "under CI, RabbitMQ must be installed (apt-get install rabbitmq-server)"
        );
    }
}

/// The shop's services, as `examples/shop` names them.
pub use trellis_e2e::delivery::SHOP;

/// `examples/policies/payments.yaml`.
pub fn payments_policy() -> String {
    std::fs::read_to_string(workspace().join("examples/policies/payments.yaml"))
        .expect("examples/policies/payments.yaml")
}

/// The shop's MeshServices and the payments policy, as `trellis dev` reads them.
pub fn shop_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = SHOP.iter().map(|s| example(s)).collect();
    files.push(("policy-payments.yaml".into(), payments_policy()));
    files
}

/// A shopper registered and logged in through the gateway: its token.
pub async fn shopper(dev: &Dev) -> String {
    let (email, password) = ("e2e@example.com", "correct horse battery staple");
    let created = dev
        .http
        .post(format!("{}/api/users", dev.gateway))
        .json(&json!({"email": email, "password": password, "name": "E2E"}))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let login: Value = dev
        .http
        .post(format!("{}/api/auth/login", dev.gateway))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("login answers")
        .json()
        .await
        .expect("JSON");
    login["accessToken"].as_str().expect("a token").to_string()
}

/// Places an order for one `product`; the status and the answer.
pub async fn order(dev: &Dev, token: &str, product: usize) -> (u16, Value) {
    let (status, _, answer) = traced_order(dev, token, product).await;
    (status, answer)
}

/// Places an order for one `product`; the status, the trace it joined
/// (the gateway's `x-trace-id`) and the answer.
pub async fn traced_order(dev: &Dev, token: &str, product: usize) -> (u16, String, Value) {
    let r = dev
        .http
        .post(format!("{}/api/orders", dev.gateway))
        .bearer_auth(token)
        .header("Idempotency-Key", uuid_like())
        .json(&json!({"items": [{"productId": format!("prod_{:03}", 1 + product % 60), "quantity": 1}]}))
        .send()
        .await
        .expect("the gateway answers");
    let status = r.status().as_u16();
    let trace = r
        .headers()
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, trace, r.json().await.unwrap_or(Value::Null))
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
