//! Request amplification and success rate of the outbound resilience stack
//! under each failure mode, printed as a table.
//!
//! Everything goes through the real proxy, with the harness of
//! `sidecar/tests/resilience_process.rs`: three upstream servers on
//! 127.0.0.1 that fail on command (`fault.rs`), and a sidecar whose config is
//! rendered from ResiliencePolicy YAML the way the operator renders it,
//! started with `Proxy::start`, and called through its outbound listener by
//! a pooled hyper-util client (`mesh.rs`). For every failure mode — applied
//! to one endpoint of three, or to all — a closed-loop load runs twice, each
//! time against a fresh proxy and fresh servers: with retries only, and with
//! the full policy (retries, breaker, outlier detection, per-try and request
//! timeouts).
//!
//! Amplification = requests the upstream servers handled / client requests:
//! what the upstream suffers on top of the callers' own load. Refused
//! connections reach no server, so they do not count; the proxy's own retry
//! count (`trellis_retries_total`) is printed beside it. Ratios do not depend
//! on compiler optimisation, so a debug build is fine:
//!
//! ```text
//! cargo run -p trellis-bench-resilience -- [seconds per row, default 3] [workers, default 8]
//! cargo run -p trellis-bench-resilience -- storm [seconds, default 30] [requests/s, default 50]
//! ```
//!
//! `storm` is the retry budget's black-box check: one upstream failing every
//! request, an open-loop load at a fixed rate, budget 0.2 + 10/s over 10 s;
//! it prints the amplification beside its bound, `1 + ratio + minPerSecond ×
//! window × windows / requests` (the run spans `windows` windows).

#[path = "../../../sidecar/tests/resilience_support/fault.rs"]
mod fault;
#[path = "../../../sidecar/tests/resilience_support/mesh.rs"]
mod mesh;

use std::time::{Duration, Instant};

use fault::{FaultServer, Mode};
use mesh::{HttpClient, Mesh, call, get};
use tokio::task::JoinSet;

/// The MeshService the caller's sidecar calls (the `Host` of every request).
const UPSTREAM: &str = "bench";

/// The ResiliencePolicy header; the spec follows.
fn policy(spec: &str) -> String {
    format!(
        "apiVersion: mesh.trellis.dev/v1alpha1\n\
         kind: ResiliencePolicy\n\
         metadata: {{name: {UPSTREAM}, namespace: {ns}}}\n\
         spec:\n  targetRef: {{kind: MeshService, name: {UPSTREAM}}}\n{spec}",
        ns = mesh::NAMESPACE,
    )
}

const RETRY_ONLY: &str = r#"
  retry:
    attempts: 3
    perTryTimeout: 100ms
    backoff: {base: 5ms, max: 50ms, jitter: full}
    retryOn: [connect-failure, reset, "502", "503", "504"]
    budget: {ratio: 0.2, minPerSecond: 10, window: 10s}
"#;

const FULL: &str = r#"
  timeout: {request: 1s, connect: 500ms, idle: 60s}
  retry:
    attempts: 3
    perTryTimeout: 100ms
    backoff: {base: 5ms, max: 50ms, jitter: full}
    retryOn: [connect-failure, reset, "502", "503", "504"]
    budget: {ratio: 0.2, minPerSecond: 10, window: 10s}
  circuitBreaker:
    failureRateThreshold: 50
    minimumRequests: 20
    window: 10s
    consecutiveFailures: 5
    openDuration: 1s
    maxOpenDuration: 10s
    halfOpenRequests: 3
  outlierDetection: {consecutiveFailures: 5, baseEjection: 10s, maxEjectionPercent: 50}
"#;

#[derive(Clone, Copy)]
enum Fault {
    Status503,
    Random50,
    Down,
    Slow,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Status503 => "100% 503",
            Fault::Random50 => "50% random 503",
            Fault::Down => "down (refused)",
            Fault::Slow => "slow (300 ms)",
        }
    }

    fn mode(self) -> Mode {
        match self {
            Fault::Status503 => Mode::Status(503),
            Fault::Random50 => Mode::Random {
                rate: 0.5,
                status: 503,
            },
            Fault::Down => Mode::Ok,
            Fault::Slow => Mode::Delay(Duration::from_millis(300)),
        }
    }
}

/// What the client saw of one call.
struct Seen {
    ok: bool,
    circuit_open: bool,
    latency: Duration,
}

/// Calls from `workers` concurrent clients, each in a closed loop, for
/// `duration`; every call timed from send to the end of its body.
async fn load(client: &HttpClient, workers: usize, duration: Duration) -> Vec<Seen> {
    let deadline = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let client = client.clone();
        tasks.spawn(async move {
            let mut seen = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                let a = call(&client, get(UPSTREAM, "/bench")).await;
                seen.push(Seen {
                    ok: a.ok(),
                    circuit_open: a.error() == Some("circuit-open"),
                    latency: start.elapsed(),
                });
            }
            seen
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all
}

struct Row {
    requests: usize,
    hits: u64,
    retries: f64,
    success: usize,
    rejected: usize,
    /// Median client-side latency of circuit-open rejections, if any.
    rejected_p50: Option<Duration>,
}

async fn run(fault: Fault, all: bool, spec: &str, secs: u64, workers: usize) -> Row {
    let servers = [
        FaultServer::start(Mode::Ok).await,
        FaultServer::start(Mode::Ok).await,
        FaultServer::start(Mode::Ok).await,
    ];
    let faulty: &[FaultServer] = if all { &servers } else { &servers[..1] };
    for s in faulty {
        s.set_mode(fault.mode());
        if let Fault::Down = fault {
            s.down().await;
        }
    }
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let mesh = Mesh::start(&[(UPSTREAM, &addrs)], &policy(spec)).await;
    let seen = load(&mesh.outbound, workers, Duration::from_secs(secs)).await;
    let retries = mesh
        .metrics()
        .await
        .find("trellis_retries_total", &[("peer", UPSTREAM)])
        .unwrap_or(0.0);
    // Stops the proxy's listeners; the servers stop when dropped.
    drop(mesh);
    let mut rejections: Vec<Duration> = seen
        .iter()
        .filter(|s| s.circuit_open)
        .map(|s| s.latency)
        .collect();
    rejections.sort();
    Row {
        requests: seen.len(),
        hits: servers.iter().map(FaultServer::hits).sum(),
        retries,
        success: seen.iter().filter(|s| s.ok).count(),
        rejected: rejections.len(),
        rejected_p50: rejections.get(rejections.len() / 2).copied(),
    }
}

const STORM: &str = r#"
  retry:
    attempts: 3
    backoff: {base: 1ms, max: 5ms, jitter: full}
    retryOn: ["503"]
    budget: {ratio: 0.2, minPerSecond: 10, window: 10s}
"#;

/// One upstream answering 503 to everything, `rate` requests a second for
/// `secs` seconds, sent on schedule whatever the answers take.
async fn storm(secs: u64, rate: u64) {
    let (ratio, min_per_second, window) = (0.2, 10.0, 10.0);
    let server = FaultServer::start(Mode::Status(503)).await;
    let mesh = Mesh::start(&[(UPSTREAM, &[server.addr])], &policy(STORM)).await;
    let total = secs * rate;
    let mut calls = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let start = Instant::now();
    for _ in 0..total {
        tick.tick().await;
        let client = mesh.outbound.clone();
        calls.spawn(async move { call(&client, get(UPSTREAM, "/bench")).await.status });
    }
    let sent = start.elapsed();
    let mut failed = 0;
    while let Some(status) = calls.join_next().await {
        failed += usize::from(status.unwrap() == 503);
    }
    let retries = mesh
        .metrics()
        .await
        .find("trellis_retries_total", &[("peer", UPSTREAM)])
        .unwrap_or(0.0);
    drop(mesh);
    let requests = total as f64;
    let hits = server.hits() as f64;
    let windows = (sent.as_secs_f64() / window).ceil();
    let bound = 1.0 + ratio + min_per_second * window * windows / requests;
    println!(
        "retry storm through trellis-proxy: {total} requests over {sent:.1?} ({rate}/s), \
         all {failed} answered 503\n\
         upstream hits {hits}, retries {retries}, amplification {:.3}, bound {bound:.3} \
         (0.2 + 10/s over 10 s, {windows} windows)",
        hits / requests
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("storm") {
        args.next();
        let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
        let rate: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
        return storm(secs, rate).await;
    }
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    println!(
        "resilience bench (through trellis-proxy): 3 endpoints, {workers} closed-loop clients, \
         {secs} s per row\n"
    );
    println!(
        "{:<16} {:<7} {:<7} {:>8} {:>8} {:>7} {:>8} {:>9} {:>11} {:>10}",
        "failure",
        "scope",
        "policy",
        "requests",
        "hits",
        "ampl.",
        "retries",
        "success",
        "breaker-rej",
        "rej. p50"
    );
    for fault in [Fault::Status503, Fault::Random50, Fault::Down, Fault::Slow] {
        for all in [false, true] {
            for (name, spec) in [("retry", RETRY_ONLY), ("full", FULL)] {
                let r = run(fault, all, spec, secs, workers).await;
                let ampl = r.hits as f64 / r.requests.max(1) as f64;
                let success = 100.0 * r.success as f64 / r.requests.max(1) as f64;
                let p50 = r
                    .rejected_p50
                    .map_or_else(|| "—".to_string(), |d| format!("{d:.1?}"));
                println!(
                    "{:<16} {:<7} {:<7} {:>8} {:>8} {:>7.3} {:>8} {:>8.2}% {:>11} {:>10}",
                    fault.name(),
                    if all { "all 3" } else { "1 of 3" },
                    name,
                    r.requests,
                    r.hits,
                    ampl,
                    r.retries,
                    success,
                    r.rejected,
                    p50
                );
            }
        }
    }
}
