//! The six services as six processes of the `shop` binary on loopback
//! ports, each configured from its environment as in a pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shop_testkit::{Backend, http};

use crate::{Dbs, SECRET};

pub const SERVICES: [&str; 6] = [
    "users",
    "products",
    "orders",
    "payments",
    "notifications",
    "gateway",
];

pub struct Processes {
    bin: PathBuf,
    pub ports: BTreeMap<&'static str, u16>,
    env: BTreeMap<&'static str, Vec<(String, String)>>,
    children: BTreeMap<&'static str, Child>,
    pub db: Dbs,
}

/// A free loopback port (the kernel's choice; released for the child to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Processes {
    /// Starts the shop from `bin` (the `shop` binary) with its databases on
    /// `backend` and its events on `amqp_url`, and waits until every
    /// service is ready.
    pub async fn start(bin: &Path, backend: Backend, amqp_url: &str) -> Processes {
        let db = Dbs::new(backend).await;
        let ports: BTreeMap<_, _> = SERVICES.iter().map(|s| (*s, free_port())).collect();
        let url = |s: &str| format!("http://127.0.0.1:{}", ports[s]);
        let mut env = BTreeMap::new();
        for service in SERVICES {
            let mut vars = vec![
                ("PORT".to_string(), ports[service].to_string()),
                ("SHUTDOWN_GRACE".into(), "2s".into()),
                ("RUST_LOG".into(), "warn".into()),
                ("AMQP_URL".into(), amqp_url.to_string()),
                ("JWT_SECRET".into(), SECRET.into()),
                ("RETRY_FIRST_DELAY".into(), "100ms".into()),
                ("RATE_LIMIT_PER_SECOND".into(), "100000".into()),
                ("RATE_LIMIT_BURST".into(), "100000".into()),
            ];
            let database = match service {
                "users" => Some(&db.users),
                "products" => Some(&db.products),
                "orders" => Some(&db.orders),
                "payments" => Some(&db.payments),
                "notifications" => Some(&db.notifications),
                _ => None,
            };
            if let Some(d) = database {
                vars.push(("DATABASE_URL".into(), d.url.clone()));
            }
            for upstream in ["users", "products", "orders", "payments", "notifications"] {
                vars.push((format!("{}_URL", upstream.to_uppercase()), url(upstream)));
            }
            env.insert(service, vars);
        }
        let mut shop = Processes {
            bin: bin.to_path_buf(),
            ports,
            env,
            children: BTreeMap::new(),
            db,
        };
        for service in SERVICES {
            shop.spawn(service, &[]);
        }
        for service in SERVICES {
            shop.wait_ready(service).await;
        }
        shop
    }

    /// `http://127.0.0.1:<port of service><path>`.
    pub fn url(&self, service: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[service])
    }

    /// The environment `service` runs with.
    pub fn env(&self, service: &str) -> &[(String, String)] {
        &self.env[service]
    }

    /// Starts `service` with its environment, `overrides` replacing entries.
    pub fn spawn(&mut self, service: &'static str, overrides: &[(&str, &str)]) {
        let mut command = Command::new(&self.bin);
        command
            .arg(service)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env[service] {
            command.env(k, v);
        }
        for (k, v) in overrides {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} {service}: {e}", self.bin.display()));
        self.children.insert(service, child);
    }

    /// Waits until `service` answers `/health/ready` with 200.
    pub async fn wait_ready(&self, service: &str) {
        shop_testkit::wait_ready(&self.url(service, "/health/ready")).await;
    }

    /// Waits until `service` answers at all (`/health/live`).
    pub async fn wait_live(&self, service: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while http()
            .get(self.url(service, "/health/live"))
            .send()
            .await
            .is_err()
        {
            assert!(tokio::time::Instant::now() < deadline, "{service} not live");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush, as a crash.
    pub fn kill(&mut self, service: &str) {
        if let Some(mut child) = self.children.remove(service) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `shop <args…>` to completion with `service`'s environment; its
    /// exit status and standard output.
    pub fn run_command(&self, service: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(&self.bin)
            .args(args)
            .env_clear()
            .envs(self.env[service].iter().map(|(k, v)| (k, v)))
            .output()
            .expect("running a command");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
