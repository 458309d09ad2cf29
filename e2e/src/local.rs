//! A mesh of real `trellis-proxy` processes on 127.0.0.1, for the delivery
//! tests (dashboards against Prometheus, traces in Jaeger): the e2e echo
//! server as each service's app, and a sidecar per app whose config is
//! rendered as the operator renders it, with static discovery.
//!
//! The proxy binary is the workspace's (`cargo test --workspace` builds it;
//! alone: `cargo build -p trellis-proxy`), or `TRELLIS_PROXY_BIN`.
//! [`ProxyProcess`] starts one and reads its bound addresses from its start
//! line; the sidecar's own process tests use it too.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::parse::from_yaml;
use trellis_api::proxy::{Listeners, ProxyConfig, Tracing};
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
    _process: ProxyProcess,
}

/// A `trellis-proxy` process (killed when dropped), the addresses its start
/// line names, and every line it has logged so far.
pub struct ProxyProcess {
    pub child: Child,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    /// Runs `cmd` (the binary, or a wrapper that execs it) with `--config
    /// config` and info logs; returns once the start line came (20 s at most).
    pub fn start(mut cmd: Command, config: &Path) -> ProxyProcess {
        let mut child = cmd
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Logged before the start line is passed on: whoever waits
                // for it may read the log at once.
                let start = line.contains("outbound=").then(|| line.clone());
                lines.lock().unwrap().push(line);
                if let Some(start) = start {
                    let _ = tx.send(start);
                }
            }
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{}: no start line in 20 s; logged:\n{}",
                config.display(),
                log.lock().unwrap().join("\n")
            );
        };
        let addr = |key: &str| -> SocketAddr {
            let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
            line[at..]
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("{key} in {line}"))
        };
        ProxyProcess {
            inbound: addr("inbound="),
            outbound: addr("outbound="),
            admin: addr("admin="),
            child,
            log,
        }
    }

    /// The first line logged so far that contains `needle`.
    pub fn logged(&self, needle: &str) -> Option<String> {
        let log = self.log.lock().unwrap();
        log.iter().find(|l| l.contains(needle)).cloned()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let config = sidecar_config(service, app, upstreams, policies, otlp);
    let path = dir.join(format!("{service}-{}.yaml", free_port()));
    std::fs::write(&path, config.to_yaml()).unwrap();
    let process = ProxyProcess::start(Command::new(proxy_binary()), &path);
    Sidecar {
        service,
        inbound: process.inbound,
        outbound: process.outbound,
        admin: process.admin,
        _process: process,
    }
}

/// The sidecar config the operator renders for the MeshService `service`
/// in [`NAMESPACE`] (its app on `app`, calling `upstreams`) under
/// `policies`, with static discovery of the upstreams' addresses and every
/// listener on 127.0.0.1:0; spans go to `otlp` when set.
pub fn sidecar_config<A: AsRef<[SocketAddr]>>(
    service: &str,
    app: SocketAddr,
    upstreams: &[(&str, A)],
    policies: &[ResiliencePolicy],
    otlp: Option<&str>,
) -> ProxyConfig {
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
                .map(|(n, addrs)| {
                    let addrs = addrs.as_ref().iter().map(|a| a.to_string()).collect();
                    (n.to_string(), addrs)
                })
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
    render::proxy_config(&svc, service, NAMESPACE, policies, &settings)
}
