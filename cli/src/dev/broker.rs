//! RabbitMQ for the local shop: the one already answering on 5672, or a
//! node of Debian's `rabbitmq-server` started on free loopback ports with
//! its own data dir (never the system's node or files), or none, said so.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anstyle::AnsiColor;

use super::supervise::{Spec, Supervised};

const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";
pub const INSTALL_HINT: &str = "apt-get install -y rabbitmq-server";

/// Where the broker is, and the processes `trellis dev` started for it.
pub enum Broker {
    /// Not ours: in use, left alone.
    Running {
        url: String,
    },
    /// Ours: epmd and the node, stopped when `trellis dev` stops.
    Started {
        url: String,
        processes: Vec<Supervised>,
    },
    Missing,
}

impl Broker {
    pub fn url(&self) -> Option<&str> {
        match self {
            Broker::Running { url } | Broker::Started { url, .. } => Some(url),
            Broker::Missing => None,
        }
    }

    pub async fn stop(self) {
        if let Broker::Started { processes, .. } = self {
            for p in processes.into_iter().rev() {
                p.stop().await;
            }
        }
    }
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

pub fn installed() -> bool {
    Path::new(RABBIT_BIN).join("rabbitmq-server").exists()
}

/// Finds or starts the broker; `ports` gives free loopback ports.
pub async fn ensure(state_dir: &Path, mut ports: impl FnMut() -> u16) -> anyhow::Result<Broker> {
    if answers(5672) {
        return Ok(Broker::Running {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        });
    }
    if !installed() {
        return Ok(Broker::Missing);
    }
    let (amqp, dist, epmd) = (ports(), ports(), ports());
    let dir = state_dir.join("rabbitmq");
    for sub in ["home", "mnesia", "log"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
    std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
    std::fs::write(dir.join("advanced.config"), "[].\n")?;
    std::fs::write(
        dir.join("rabbitmq.conf"),
        "disk_free_limit.absolute = 50MB\nlog.console = true\nlog.console.level = warning\nlog.file = false\n",
    )?;
    let as_root = is_root();
    if as_root {
        // The package's files belong to its own account; so must ours.
        let status = std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status()?;
        anyhow::ensure!(status.success(), "chown of {} failed", dir.display());
    }
    let env = rabbit_env(&dir, amqp, dist, epmd);
    let (program, prefix) = run_as(as_root);
    // epmd runs in the foreground as our child, not as the daemon the
    // node would otherwise leave behind.
    let epmd_spec = Spec {
        label: "epmd".into(),
        program: program.clone(),
        args: [
            prefix.clone(),
            vec![
                "epmd".into(),
                "-port".into(),
                epmd.to_string(),
                "-address".into(),
                "127.0.0.1".into(),
            ],
        ]
        .concat(),
        env: env.clone(),
        dir: dir.clone(),
        colour: AnsiColor::BrightBlack,
        grace: Duration::from_secs(5),
    };
    let node_spec = Spec {
        label: "rabbitmq".into(),
        program,
        args: [prefix, vec![format!("{RABBIT_BIN}/rabbitmq-server")]].concat(),
        env,
        dir: dir.clone(),
        colour: AnsiColor::BrightBlack,
        grace: Duration::from_secs(20),
    };
    let processes = vec![Supervised::start(epmd_spec), Supervised::start(node_spec)];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !answers(amqp) {
        if tokio::time::Instant::now() > deadline {
            for p in processes.into_iter().rev() {
                p.stop().await;
            }
            anyhow::bail!(
                "RabbitMQ did not listen on 127.0.0.1:{amqp} within 120s (its files: {})",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Broker::Started {
        url: format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
        processes,
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// As root, the node runs as the `rabbitmq` account its package created.
fn run_as(as_root: bool) -> (PathBuf, Vec<String>) {
    if as_root {
        (
            "setpriv".into(),
            [
                "--reuid=rabbitmq",
                "--regid=rabbitmq",
                "--init-groups",
                "--",
            ]
            .map(String::from)
            .to_vec(),
        )
    } else {
        ("env".into(), Vec::new())
    }
}

/// Every variable that could point RabbitMQ or Erlang at the system's
/// node, files or ports, pointed at ours.
fn rabbit_env(dir: &Path, amqp: u16, dist: u16, epmd: u16) -> Vec<(String, String)> {
    let at = |p: &str| dir.join(p).display().to_string();
    [
        (
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ),
        ("HOME", at("home")),
        ("RABBITMQ_NODENAME", format!("trellis-dev-{amqp}@localhost")),
        ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
        ("RABBITMQ_NODE_PORT", amqp.to_string()),
        ("RABBITMQ_DIST_PORT", dist.to_string()),
        ("ERL_EPMD_PORT", epmd.to_string()),
        ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
        ("RABBITMQ_MNESIA_BASE", at("mnesia")),
        ("RABBITMQ_LOG_BASE", at("log")),
        ("RABBITMQ_CONF_ENV_FILE", at("rabbitmq-env.conf")),
        ("RABBITMQ_CONFIG_FILE", at("rabbitmq.conf")),
        ("RABBITMQ_ADVANCED_CONFIG_FILE", at("advanced.config")),
        ("RABBITMQ_ENABLED_PLUGINS_FILE", at("enabled_plugins")),
        (
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
