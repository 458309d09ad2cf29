//! Request amplification and success rate of the outbound resilience stack
//! under each failure mode, printed as a table.
//!
//! Three real upstream servers on 127.0.0.1; the stack over a real-HTTP
//! attempt service (the balancer's P2C endpoint set + a pooled hyper client,
//! the same harness as `sidecar/tests/resilience_process.rs`). For every
//! failure mode — applied to one endpoint of three, or to all — a closed-loop
//! load runs twice: with retries only, and with the full policy (retries,
//! breaker, outlier detection, per-try and request timeouts).
//!
//! Amplification = attempts sent to endpoints / client requests: what the
//! upstream suffers on top of the callers' own load. Ratios do not depend on
//! compiler optimisation, so a debug build is fine:
//!
//! ```text
//! cargo run -p trellis-bench-resilience -- [seconds per row, default 3] [workers, default 8]
//! ```

#[path = "../../../sidecar/tests/resilience_support/mod.rs"]
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

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

struct Row {
    fault: &'static str,
    scope: &'static str,
    policy: &'static str,
    requests: usize,
    attempts: u64,
    success: usize,
    rejected: usize,
    p50: Duration,
    p99: Duration,
}

async fn run(
    fault: Fault,
    all: bool,
    policy_name: &'static str,
    yaml: &str,
    secs: u64,
    workers: usize,
) -> Row {
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
    let up = upstream("bench", &addrs, policy(yaml), vec![]);
    let stack = stack(&up, false);
    let mut answers = load(
        &stack.svc,
        workers,
        usize::MAX,
        Duration::from_secs(secs),
        |_| get("/bench"),
    )
    .await;
    answers.sort_by_key(|a| a.latency);
    let pct = |p: f64| {
        answers
            .get(((answers.len() as f64 * p) as usize).min(answers.len().saturating_sub(1)))
            .map_or(Duration::ZERO, |a| a.latency)
    };
    Row {
        fault: fault.name(),
        scope: if all { "all 3" } else { "1 of 3" },
        policy: policy_name,
        requests: answers.len(),
        attempts: stack.sent.load(Ordering::Relaxed),
        success: answers.iter().filter(|a| a.ok()).count(),
        rejected: answers
            .iter()
            .filter(|a| a.error.as_deref() == Some("circuit-open"))
            .count(),
        p50: pct(0.5),
        p99: pct(0.99),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    println!("resilience bench: 3 endpoints, {workers} closed-loop clients, {secs} s per row\n");
    println!(
        "{:<16} {:<7} {:<10} {:>8} {:>9} {:>7} {:>9} {:>10} {:>9} {:>9}",
        "failure",
        "scope",
        "policy",
        "requests",
        "attempts",
        "ampl.",
        "success",
        "breaker-rej",
        "p50",
        "p99"
    );
    for fault in [Fault::Status503, Fault::Random50, Fault::Down, Fault::Slow] {
        for all in [false, true] {
            for (name, yaml) in [("retry", RETRY_ONLY), ("full", FULL)] {
                let r = run(fault, all, name, yaml, secs, workers).await;
                let ampl = r.attempts as f64 / r.requests.max(1) as f64;
                let success = 100.0 * r.success as f64 / r.requests.max(1) as f64;
                println!(
                    "{:<16} {:<7} {:<10} {:>8} {:>9} {:>7.3} {:>8.2}% {:>10} {:>9.1?} {:>9.1?}",
                    r.fault,
                    r.scope,
                    r.policy,
                    r.requests,
                    r.attempts,
                    ampl,
                    success,
                    r.rejected,
                    r.p50,
                    r.p99
                );
            }
        }
    }
}
