//! A mesh of real `trellis-proxy` processes on 127.0.0.1, for the delivery
//! tests (dashboards against Prometheus, traces in Jaeger): the e2e echo
//! server as each service's app, and a sidecar per app whose config is
//! rendered as the operator renders it, with static discovery.
//!
//! The proxy binary is the workspace's (`cargo test --workspace` builds it;
//! alone: `cargo build -p trellis-proxy`), or `TRELLIS_PROXY_BIN`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::parse::from_yaml;
use trellis_api::proxy::{Listeners, Tracing};
use trellis_api::render::{self, DiscoveryMode, Settings};
use trellis_e2e_app::echo::{self, EchoState};

/// The namespace of every service.
pub const NAMESPACE: &str = "shop";

/// Kills the process when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running sidecar and the service it belongs to.
pub struct Sidecar {
    pub service: &'static str,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    _process: Process,
}

pub fn proxy_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("TRELLIS_PROXY_BIN") {
        return bin.into();
    }
    // target/debug/deps/<this test> -> target/debug/trellis-proxy
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("trellis-proxy");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p trellis-proxy (or set TRELLIS_PROXY_BIN)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn start_echo(name: &str) -> (SocketAddr, Arc<EchoState>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let state = EchoState::new(name.to_string(), "1".into());
    tokio::spawn(echo::serve(addr, state.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "echo {name} did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (addr, state)
}

/// Starts `trellis-proxy` for `service` (its app on `app`), with static
/// discovery of `upstreams`, on a config rendered as the operator renders it;
/// spans go to `otlp` when set. The config file is written into `dir`.
pub fn start_sidecar(
    service: &'static str,
    app: SocketAddr,
    upstreams: &[(&str, Vec<SocketAddr>)],
    policies: &[ResiliencePolicy],
    otlp: Option<&str>,
    dir: &Path,
) -> Sidecar {
    let names: Vec<&str> = upstreams.iter().map(|(n, _)| *n).collect();
    let svc: MeshService = from_yaml(&format!(
        "apiVersion: mesh.trellis.dev/v1alpha1\nkind: MeshService\n\
         metadata: {{name: {service}, namespace: {NAMESPACE}}}\n\
         spec: {{image: \"trellis/e2e-app:dev\", port: {port}, upstreams: {names:?}}}\n",
        port = app.port(),
    ))
    .unwrap();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let settings = Settings {
        discovery: DiscoveryMode::Static(
            upstreams
                .iter()
                .map(|(n, addrs)| (n.to_string(), addrs.iter().map(|a| a.to_string()).collect()))
                .collect(),
        ),
        listeners: Some(Listeners {
            inbound: loopback,
            outbound: loopback,
            admin: loopback,
        }),
        tracing: Tracing {
            otlp_endpoint: otlp.map(str::to_string),
            ..Tracing::default()
        },
        ..Settings::default()
    };
    let config = render::proxy_config(&svc, service, NAMESPACE, policies, &settings);
    let path = dir.join(format!("{service}-{}.yaml", free_port()));
    std::fs::write(&path, config.to_yaml()).unwrap();
    let mut child = Command::new(proxy_binary())
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let process = Process(child);
    // The start line names the bound addresses.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("outbound=") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{service}: no start line"));
    let addr = |key: &str| -> SocketAddr {
        let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
        line[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    Sidecar {
        service,
        inbound: addr("inbound="),
        outbound: addr("outbound="),
        admin: addr("admin="),
        _process: process,
    }
}
