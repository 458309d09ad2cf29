//! `trellis-proxy --config /etc/trellis/proxy.yaml`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use trellis_api::proxy::ProxyConfig;
use trellis_proxy::{Options, Proxy, cgroup};

#[derive(Parser, Debug)]
#[command(name = "trellis-proxy", version, about = "The Trellis sidecar proxy")]
struct Args {
    /// The proxy config (apiVersion proxy.trellis.dev/v1); watched for changes.
    #[arg(
        long,
        env = "TRELLIS_PROXY_CONFIG",
        default_value = "/etc/trellis/proxy.yaml"
    )]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("trellis-proxy: cannot read {}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    let config = match ProxyConfig::from_yaml(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trellis-proxy: {}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    let workers = serving_threads();
    // The control side (config, discovery, admin, span export) runs here;
    // requests run on the serving threads, one runtime each.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let signals = shutdown_signals();
        let opts = Options {
            config_path: Some(args.config),
            workers: Some(workers),
            ..Options::default()
        };
        let proxy = match Proxy::start_with(config, opts).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "cannot start");
                return ExitCode::FAILURE;
            }
        };
        signals.await;
        proxy.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// A sidecar shares its pod's CPU with the app: `TRELLIS_PROXY_WORKERS`
/// if set, else one thread per whole CPU of the container's limit (its
/// cgroup), else one per core.
fn serving_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Ok(text) = std::env::var("TRELLIS_PROXY_WORKERS") {
        match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => {
                tracing::info!(workers = n, "serving threads from TRELLIS_PROXY_WORKERS");
                return n;
            }
            _ => tracing::warn!(
                value = text,
                "TRELLIS_PROXY_WORKERS is not a positive number; ignored"
            ),
        }
    }
    match cgroup::cpu_limit() {
        Some(limit) => {
            let n = cgroup::workers_for(Some(limit.cpus), cores);
            tracing::info!(workers = n, %limit, "serving threads from the container's CPU limit");
            n
        }
        None => {
            tracing::info!(
                workers = cores,
                "serving threads: one per core (no CPU limit)"
            );
            cores
        }
    }
}

/// `RUST_LOG` wins over the config's level, for debugging a running pod.
fn init_logging(config: &ProxyConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.as_str()));
    // Colors only for people: a pod's log is a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// SIGTERM (the kubelet) or SIGINT (a terminal), listened for from the call
/// on: one that comes right after the start line is a clean shutdown, not
/// the default action's exit.
fn shutdown_signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            (Err(_), Err(_)) => std::future::pending().await,
        }
        tracing::info!("signal received");
    }
}
