//! The `trellis-proxy` binary: starts from a file, serves on its serving
//! threads (as many as `TRELLIS_PROXY_WORKERS` says, else as the cgroup's
//! CPU limit allows), exits 0 on SIGTERM; refuses an invalid file naming the
//! field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use trellis_e2e::local::ProxyProcess;

use crate::support::*;

fn temp_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "trellis-proxy-bin-{tag}-{}-{:x}.yaml",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// A `trellis-proxy` process started on a config file of its own.
struct Running {
    process: ProxyProcess,
    outbound: SocketAddr,
    path: PathBuf,
}

impl Running {
    /// Starts `cmd` (the binary, or a wrapper that execs it) on a config
    /// routing `orders` to `app`; returns once the start line named the
    /// bound addresses.
    fn start(cmd: Command, app: SocketAddr) -> Running {
        let path = temp_path("ok");
        std::fs::write(
            &path,
            config_yaml(app, "http", &upstream("orders", &["orders"], &[app]), ""),
        )
        .unwrap();
        let process = ProxyProcess::start(cmd, &path);
        Running {
            outbound: process.outbound,
            process,
            path,
        }
    }

    /// `GET /` to `orders` through the outbound listener reaches the app.
    async fn get_orders(&self) {
        let (status, headers, _) = send(
            &h1_client(),
            self.outbound,
            "orders",
            "GET",
            "/",
            body(""),
            http::Version::HTTP_11,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-app"], "orders");
    }

    /// The first log line containing `needle`.
    fn logged(&self, needle: &str) -> String {
        self.process.logged(needle).unwrap_or_else(|| {
            let log = self.process.log.lock().unwrap();
            panic!("no log line with {needle:?} in\n{}", log.join("\n"))
        })
    }

    /// SIGTERM, then the exit status (within 15 s).
    async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.process.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = self.process.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = std::fs::remove_file(&self.path);
        status
    }
}

fn proxy_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trellis-proxy"))
}

#[tokio::test]
async fn binary_serves_and_exits_cleanly_on_sigterm() {
    let app = start_app("orders", Duration::ZERO).await;
    let proxy = Running::start(proxy_command(), app.addr);
    proxy.get_orders().await;
    let status = proxy.stop().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn binary_serves_every_connection_on_its_serving_threads() {
    let app = start_app("orders", Duration::ZERO).await;
    let mut cmd = proxy_command();
    cmd.env("TRELLIS_PROXY_WORKERS", "3");
    let proxy = Running::start(cmd, app.addr);
    assert!(
        proxy
            .logged("serving threads from TRELLIS_PROXY_WORKERS")
            .contains("workers=3")
    );
    assert!(proxy.logged("trellis-proxy started").contains("workers=3"));
    let threads: Vec<String> =
        std::fs::read_dir(format!("/proc/{}/task", proxy.process.child.id()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_string())
            .filter(|c| c.starts_with("trellis-worker"))
            .collect();
    assert_eq!(threads.len(), 3, "{threads:?}");
    // Fresh connections land on any of the threads' sockets; each is served,
    // over HTTP/1.1 and HTTP/2, with connections pooled per thread upstream.
    let mut sent = Vec::new();
    for i in 0..24 {
        let (client, version) = if i % 2 == 0 {
            (h1_client(), http::Version::HTTP_11)
        } else {
            (h2_client(), http::Version::HTTP_2)
        };
        let outbound = proxy.outbound;
        sent.push(tokio::spawn(async move {
            send(&client, outbound, "orders", "GET", "/", body(""), version).await
        }));
    }
    for s in sent {
        let (status, headers, _) = s.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["x-app"], "orders");
    }
    let status = proxy.stop().await;
    assert!(status.success(), "{status}");
}

/// A cgroup limited to `cpus` CPUs, made in whichever hierarchy has the
/// `cpu` controller (v2 `cpu.max`, v1 `cpu.cfs_quota_us`); removed on drop.
struct LimitedCgroup(PathBuf);

impl LimitedCgroup {
    fn create(cpus: u32) -> std::io::Result<LimitedCgroup> {
        let name = format!(
            "trellis-test-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let v2 = Path::new("/sys/fs/cgroup");
        let controllers =
            std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "cpu") {
            std::fs::write(v2.join("cgroup.subtree_control"), "+cpu")?;
            let dir = v2.join(&name);
            std::fs::create_dir(&dir)?;
            let group = LimitedCgroup(dir);
            std::fs::write(
                group.0.join("cpu.max"),
                format!("{} 100000", cpus * 100_000),
            )?;
            return Ok(group);
        }
        for v1 in ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"] {
            let v1 = Path::new(v1);
            if v1.join("cpu.cfs_quota_us").exists() {
                let dir = v1.join(&name);
                std::fs::create_dir(&dir)?;
                let group = LimitedCgroup(dir);
                std::fs::write(group.0.join("cpu.cfs_period_us"), "100000")?;
                std::fs::write(
                    group.0.join("cpu.cfs_quota_us"),
                    format!("{}", cpus * 100_000),
                )?;
                return Ok(group);
            }
        }
        Err(std::io::Error::other(
            "no cgroup hierarchy with the cpu controller",
        ))
    }

    /// The binary, started inside this cgroup.
    fn command(&self) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"echo $$ > "$0" && exec "$@""#])
            .arg(self.0.join("cgroup.procs"))
            .arg(env!("CARGO_BIN_EXE_trellis-proxy"));
        cmd
    }
}

impl Drop for LimitedCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn binary_threads_follow_the_cgroup_cpu_limit_unless_told() {
    let group = match LimitedCgroup::create(1) {
        Ok(g) => g,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: cannot make a CPU-limited cgroup ({e}); run as root");
            return;
        }
        Err(e) => panic!("cannot make a CPU-limited cgroup under CI: {e}"),
    };
    let app = start_app("orders", Duration::ZERO).await;
    // One CPU of quota: one serving thread, whatever the machine's cores.
    let proxy = Running::start(group.command(), app.addr);
    let line = proxy.logged("serving threads from the container's CPU limit");
    assert!(line.contains("workers=1"), "{line}");
    assert!(line.contains(&*group.0.to_string_lossy()), "{line}");
    proxy.get_orders().await;
    assert!(proxy.stop().await.success());
    // The explicit setting wins over the limit.
    let mut cmd = group.command();
    cmd.env("TRELLIS_PROXY_WORKERS", "2");
    let proxy = Running::start(cmd, app.addr);
    assert!(proxy.logged("trellis-proxy started").contains("workers=2"));
    assert!(proxy.stop().await.success());
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
