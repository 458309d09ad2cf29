//! `trellis dev`: the mesh on one machine. Every MeshService of the given
//! manifests runs as a local process with its own `trellis-proxy`, on free
//! loopback ports, configured by `api`'s renderer with static discovery.

mod binaries;
mod broker;
mod chaos;
mod load;
mod plan;
mod policies;
mod scrape;
mod status;
mod supervise;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anstyle::AnsiColor;

use plan::{LocalEnv, Ports, ServicePlan};
use supervise::{Spec, Supervised};

/// Options of `trellis dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Files or directories of MeshService and ResiliencePolicy YAML
    /// (default: examples/shop and examples/policies).
    pub paths: Vec<PathBuf>,
    /// Where configs, databases and the broker's files go (default: a new
    /// temporary directory, removed at exit).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Take the binaries from here instead of building them with cargo.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Port of the status page on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub status_port: u16,
    /// Drive shop traffic through the gateway at RATE flows per second.
    #[arg(long, num_args = 0..=1, default_missing_value = "5", value_name = "RATE")]
    pub load: Option<f64>,
    /// Turn a service's fault knob: `payments=50%` fails half its requests.
    #[arg(long, value_name = "SERVICE=RATE")]
    pub chaos: Vec<String>,
    /// Do not look for or start RabbitMQ.
    #[arg(long)]
    pub no_broker: bool,
    /// Export the spans of every app and sidecar over OTLP/gRPC to this
    /// collector, e.g. a local Jaeger's `http://127.0.0.1:4317`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// The sidecar binary's name.
const PROXY: &str = "trellis-proxy";
const COLOURS: [AnsiColor; 6] = [
    AnsiColor::Cyan,
    AnsiColor::Green,
    AnsiColor::Yellow,
    AnsiColor::Magenta,
    AnsiColor::Blue,
    AnsiColor::Red,
];

/// A progress line for a long step.
fn step(what: &str) {
    println!("trellis dev: {what}");
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(dev(args))
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let paths = if args.paths.is_empty() {
        ["examples/shop", "examples/policies"]
            .map(PathBuf::from)
            .into_iter()
            .filter(|p| p.exists())
            .collect()
    } else {
        args.paths.clone()
    };
    let files = policies::yaml_files(&paths)?;
    let manifests = policies::read(&files)?;
    anyhow::ensure!(
        !manifests.services.is_empty(),
        "no MeshService in {}",
        display_paths(&paths)
    );

    let (state_dir, _temporary) = match &args.state_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.canonicalize()?, None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("trellis-dev-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    // Readable by the broker's own account when it runs as one.
    std::fs::set_permissions(
        &state_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;

    let wanted = manifests.names();
    let found = binaries::find(&wanted, PROXY, args.bin_dir.as_deref())?;
    for (name, why) in &found.missing {
        step(&format!("{name}: skipped ({why})"));
    }
    let mut manifests = manifests;
    manifests.services.retain(|s| {
        s.metadata
            .name
            .as_ref()
            .is_some_and(|n| found.apps.contains_key(n))
    });
    anyhow::ensure!(
        !manifests.services.is_empty(),
        "none of the MeshServices has a binary"
    );

    // All ports at once: each is held until the last is chosen, so the
    // kernel cannot hand out one twice.
    let names = manifests.names();
    let mut pool = free_ports(names.len() * 4 + 3)?.into_iter();
    let mut next_port = move || pool.next().unwrap_or(0);
    let broker = if args.no_broker {
        broker::Broker::Missing
    } else {
        step("looking for RabbitMQ");
        let b = broker::ensure(&state_dir, &mut next_port).await?;
        match &b {
            broker::Broker::Running { url } => step(&format!("RabbitMQ already running: {url}")),
            broker::Broker::Started { url, .. } => step(&format!("RabbitMQ started: {url}")),
            broker::Broker::Missing => step(&format!(
                "RabbitMQ is not installed; the services run without events (install it: {})",
                broker::INSTALL_HINT
            )),
        }
        b
    };

    let ports: BTreeMap<String, Ports> = names
        .into_iter()
        .map(|n| (n, Ports::take(&mut next_port)))
        .collect();
    let local = LocalEnv {
        amqp_url: broker.url().map(str::to_string),
        jwt_secret: random_secret(),
        otlp_endpoint: args.otlp_endpoint.clone(),
    };
    let plans = plan::plan(&manifests, &ports, &local);
    let width = plans.iter().map(|p| p.name.len() + 6).max().unwrap_or(8);
    supervise::LABEL_WIDTH.store(width, std::sync::atomic::Ordering::Relaxed);

    step(&format!(
        "starting {} services with their sidecars",
        plans.len()
    ));
    let mut members = Vec::new();
    let mut children = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        if !p.unset.is_empty() {
            step(&format!(
                "{}: left unset (from Secrets in a cluster): {}",
                p.name,
                p.unset.join(", ")
            ));
        }
        let dir = state_dir.join(&p.name);
        std::fs::create_dir_all(&dir)?;
        policies::write_config(&dir, &p.proxy_config)?;
        let colour = COLOURS[i % COLOURS.len()];
        let proxy = Supervised::start(proxy_spec(p, &dir, &found.proxy, colour));
        let app = Supervised::start(app_spec(p, &dir, &found.apps[&p.name], colour));
        members.push(status::Member {
            name: p.name.clone(),
            ports: p.ports,
            upstreams: manifests
                .service(&p.name)
                .map(|s| s.spec.upstreams.clone())
                .unwrap_or_default(),
            app: app.state.clone(),
            proxy: proxy.state.clone(),
        });
        children.push((app, proxy));
    }

    let ready = wait_ready(&plans).await;
    let members = Arc::new(members);
    let gateway = plans
        .iter()
        .find(|p| p.name == "gateway")
        .unwrap_or(&plans[0]);
    let gateway_url = format!("http://127.0.0.1:{}", gateway.ports.inbound);

    let board = status::Board::new(members.clone(), gateway_url.clone());
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.status_port))).await?;
    let status_url = format!("http://{}", listener.local_addr()?);
    let scraper = tokio::spawn(board.clone().scrape_forever());
    let server = tokio::spawn(status::serve(listener, board.clone()));

    match ready {
        Ok(()) => step(&format!(
            "all {} services ready in {:.1}s",
            plans.len(),
            started.elapsed().as_secs_f64()
        )),
        Err(not_ready) => step(&format!(
            "not ready after {:.0}s: {} (still starting; see their logs above)",
            started.elapsed().as_secs_f64(),
            not_ready.join(", ")
        )),
    }
    println!("gateway: {gateway_url}");
    println!("status:  {status_url}");

    for knob in &args.chaos {
        match chaos::turn(knob, &ports).await {
            Ok(msg) => step(&msg),
            Err(e) => step(&format!("--chaos {knob}: {e}")),
        }
    }
    let load = args
        .load
        .map(|rate| tokio::spawn(load::drive(gateway_url.clone(), rate)));
    let watcher = tokio::spawn(policies::watch(
        files,
        paths,
        ports.clone(),
        state_dir.clone(),
        args.otlp_endpoint.clone(),
    ));

    wait_for_signal().await;
    step("stopping: apps first, then sidecars");
    for task in [Some(watcher), load, Some(scraper), Some(server)]
        .into_iter()
        .flatten()
    {
        task.abort();
    }
    let (apps, proxies): (Vec<_>, Vec<_>) = children.into_iter().unzip();
    futures::future::join_all(apps.into_iter().map(Supervised::stop)).await;
    futures::future::join_all(proxies.into_iter().map(Supervised::stop)).await;
    broker.stop().await;
    step("stopped");
    Ok(())
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn proxy_spec(p: &ServicePlan, dir: &Path, program: &Path, colour: AnsiColor) -> Spec {
    Spec {
        label: format!("{}-proxy", p.name),
        program: program.to_path_buf(),
        args: vec![
            "--config".into(),
            policies::config_path(dir).display().to_string(),
        ],
        // Two sidecar threads each: the whole shop shares this machine.
        env: vec![("TRELLIS_PROXY_WORKERS".into(), "1".into())],
        dir: dir.to_path_buf(),
        colour,
        grace: Duration::from_secs(10),
    }
}

fn app_spec(p: &ServicePlan, dir: &Path, program: &Path, colour: AnsiColor) -> Spec {
    let mut env = p.env.clone();
    env.push(("SHUTDOWN_GRACE".into(), "5s".into()));
    // One access-log line per request drowns the rest; the status page
    // counts requests. RUST_LOG set for `trellis dev` reaches every app.
    if std::env::var_os("RUST_LOG").is_none() {
        env.push(("RUST_LOG".into(), "info,access=warn".into()));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        env.push(("NO_COLOR".into(), "1".into()));
    }
    Spec {
        label: p.name.clone(),
        program: program.to_path_buf(),
        args: Vec::new(),
        env,
        dir: dir.to_path_buf(),
        colour,
        grace: Duration::from_secs(10),
    }
}

/// Waits until every sidecar is ready and every app answers its readiness
/// path through its sidecar; the names of those that were not in time.
async fn wait_ready(plans: &[ServicePlan]) -> Result<(), Vec<String>> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| vec![e.to_string()])?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut waiting: Vec<&ServicePlan> = plans.iter().collect();
    let mut last_report = Instant::now();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for p in waiting {
            let proxy = format!("http://127.0.0.1:{}/ready", p.ports.admin);
            let app = format!("http://127.0.0.1:{}{}", p.ports.inbound, p.readiness_path);
            let ok = |url: String| {
                let client = client.clone();
                async move {
                    client
                        .get(url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            };
            if !(ok(proxy).await && ok(app).await) {
                still.push(p);
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(waiting.iter().map(|p| p.name.clone()).collect());
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            let names: Vec<_> = waiting.iter().map(|p| p.name.as_str()).collect();
            step(&format!("waiting for readiness: {}", names.join(", ")));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// `n` distinct free loopback ports, as the kernel hands them out. The
/// listeners are closed before the children bind the ports; the kernel
/// does not hand them out again at once.
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// The token secret the users service signs with and the gateway checks,
/// new on every run.
fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
