//! `proxy-overhead`: what a proxy hop costs, measured open-loop.
//!
//! Four arms against the same in-process hyper echo upstream: `direct`,
//! `trellis` (one trellis-proxy hop, outbound listener), `haproxy` (the same
//! hop through HAProxy) and `pair` (trellis outbound → trellis inbound → echo,
//! the real mesh path). For each protocol (HTTP/1.1, h2c), response size and
//! request rate, requests are sent on a fixed schedule whatever the responses
//! do, and each latency is measured from the request's *scheduled* time, so a
//! stall shows up in every request it delayed (coordinated omission
//! corrected, as wrk2 does). See bench/README.md.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::{Request, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser, Debug)]
#[command(about = "Latency overhead of trellis-proxy vs direct, HAProxy and a sidecar pair")]
struct Args {
    /// ~2.5 s per point instead of 22 s: a sanity run, not a measurement.
    #[arg(long)]
    quick: bool,
    /// Overload instead of overhead: offer more than the proxies can serve
    /// (default: 20000 req/s of h2c, 10-byte bodies, 10 s, no warm-up) and
    /// report how much memory each held and how many requests it answered;
    /// no point is discarded.
    #[arg(long)]
    overload: bool,
    /// The release build of trellis-proxy.
    #[arg(long, default_value = "target/release/trellis-proxy")]
    proxy_bin: PathBuf,
    #[arg(long, default_value = "haproxy")]
    haproxy_bin: String,
    /// Requests per second, comma separated (default 500,1000,2000,4000;
    /// with --overload 20000).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<u32>,
    /// Response body sizes in bytes, comma separated (default 10,1024;
    /// with --overload 10).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// h1, h2 or both (default both; with --overload h2).
    #[arg(long, value_delimiter = ',')]
    protocols: Vec<String>,
    /// Measured seconds per point (overrides --quick's, --overload's 10 s and the default 20 s).
    #[arg(long)]
    seconds: Option<f64>,
    /// Serving threads of each trellis-proxy (`TRELLIS_PROXY_WORKERS`);
    /// default: the proxy's own (the cgroup's CPU limit, else one per core).
    #[arg(long)]
    proxy_workers: Option<usize>,
    /// Warm-up seconds per point (overrides --quick's 0.5 s, --overload's 0 s and the default 2 s).
    #[arg(long)]
    warmup: Option<f64>,
    /// Arms to run, comma separated (direct, trellis, haproxy, pair); the
    /// added latency columns need `direct`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,trellis,haproxy,pair"
    )]
    arms: Vec<String>,
    /// A command each trellis-proxy runs under, split on spaces (e.g.
    /// `valgrind --tool=callgrind`); the proxy's role (one, client, server) is
    /// in its environment as `TRELLIS_BENCH_PROXY`.
    #[arg(long)]
    proxy_wrapper: Option<String>,
    /// Client connections per point, requests spread over them in turn
    /// (HTTP/2: each a multiplexed connection; a mesh proxy's inbound
    /// serves many callers' sidecars).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// The echo upstream holds each response this long (milliseconds), so
    /// requests pile up in the proxies under overload.
    #[arg(long, default_value_t = 0)]
    upstream_delay_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// One way to reach the echo server.
struct Arm {
    name: &'static str,
    /// Where the client connects, per protocol.
    h1: SocketAddr,
    h2: SocketAddr,
    /// Processes whose CPU and memory are charged to the arm.
    pids: Vec<u32>,
}

struct Point {
    latencies: Histogram<u64>,
    sent: usize,
    ok: usize,
    failed: usize,
    non_2xx: usize,
    /// The non-2xx answers by status.
    statuses: std::collections::BTreeMap<u16, usize>,
    max_lag: Duration,
    cpu_ticks: u64,
    rss_kib: u64,
    /// Resident memory once the point's requests are over (`VmRSS`).
    rss_after_kib: u64,
    measured: usize,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let (measure, warmup) = match (args.overload, args.quick) {
        (true, _) => (10.0, 0.0),
        (false, true) => (2.0, 0.5),
        (false, false) => (20.0, 2.0),
    };
    let measure = args.seconds.unwrap_or(measure);
    let warmup = args.warmup.unwrap_or(warmup);
    let overload = args.overload;
    if args.rates.is_empty() {
        args.rates = if overload {
            vec![20000]
        } else {
            vec![500, 1000, 2000, 4000]
        };
    }
    if args.sizes.is_empty() {
        args.sizes = if overload { vec![10] } else { vec![10, 1024] };
    }
    if args.protocols.is_empty() {
        let protocols: &[&str] = if overload { &["h2"] } else { &["h1", "h2"] };
        args.protocols = protocols.iter().map(|p| p.to_string()).collect();
    }
    for arm in &args.arms {
        if !["direct", "trellis", "haproxy", "pair"].contains(&arm.as_str()) {
            bail!("unknown arm {arm:?} (direct, trellis, haproxy, pair)");
        }
    }
    let protos: Vec<Proto> = args
        .protocols
        .iter()
        .map(|p| match p.as_str() {
            "h1" => Ok(Proto::H1),
            "h2" => Ok(Proto::H2),
            other => bail!("unknown protocol {other:?} (h1, h2)"),
        })
        .collect::<anyhow::Result<_>>()?;

    let echo = start_echo()?;
    let work = std::env::temp_dir().join(format!("trellis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut children: Vec<Child> = Vec::new();
    let result = run(&args, &protos, measure, warmup, echo, &work, &mut children);
    stop_children(&mut children);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run(
    args: &Args,
    protos: &[Proto],
    measure: f64,
    warmup: f64,
    echo: SocketAddr,
    work: &Path,
    children: &mut Vec<Child>,
) -> anyhow::Result<()> {
    let wanted = |name: &str| args.arms.iter().any(|a| a == name);
    let mut arms = Vec::new();
    if wanted("direct") {
        arms.push(Arm {
            name: "direct",
            h1: echo,
            h2: echo,
            pids: vec![],
        });
    }
    if wanted("trellis") {
        // One hop: the outbound listener routes to the echo server.
        let (one, one_pid) = start_trellis(args, work, "one", echo, echo, children)?;
        arms.push(Arm {
            name: "trellis",
            h1: one.outbound,
            h2: one.outbound,
            pids: vec![one_pid],
        });
    }
    if wanted("haproxy") {
        match start_haproxy(args, work, echo, children) {
            Ok((h1, h2, pid)) => arms.push(Arm {
                name: "haproxy",
                h1,
                h2,
                pids: vec![pid],
            }),
            Err(e) => eprintln!("haproxy arm skipped: {e:#}"),
        }
    }
    if wanted("pair") {
        // A pair: client side routes to the server side's inbound, which forwards to echo.
        let (server, server_pid) = start_trellis(args, work, "server", echo, echo, children)?;
        let (client, client_pid) =
            start_trellis(args, work, "client", echo, server.inbound, children)?;
        arms.push(Arm {
            name: "pair",
            h1: client.outbound,
            h2: client.outbound,
            pids: vec![client_pid, server_pid],
        });
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for arm in &arms {
        for &p in protos {
            rt.block_on(wait_ready(arm, p))
                .with_context(|| format!("arm {} ({p:?}) never answered", arm.name))?;
        }
    }

    eprintln!(
        "measuring {} s per point after {} s warm-up; {} points",
        measure,
        warmup,
        protos.len() * args.sizes.len() * args.rates.len() * arms.len()
    );
    let mut table = String::new();
    if args.overload {
        table.push_str("| proto | size | offered/s | arm | 2xx | failed | non-2xx | p50 µs (2xx) | peak RSS MiB | RSS after MiB | CPU s/1k offered |\n");
        table.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    } else {
        table.push_str("| proto | size | rate/s | arm | p50 µs | p99 µs | p99.9 µs | +p50 µs | +p99 µs | +p99.9 µs | RSS MiB | CPU s/1k req | note |\n");
        table.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    }
    for &proto in protos {
        for &size in &args.sizes {
            for &rate in &args.rates {
                let mut direct: Option<[u64; 3]> = None;
                for arm in &arms {
                    let point = run_point(&rt, args, arm, proto, size, rate, warmup, measure)?;
                    let row = if args.overload {
                        format_overload_row(proto, size, rate, arm, &point)
                    } else {
                        format_row(proto, size, rate, arm, &point, &mut direct)
                    };
                    eprintln!("{}", row.trim_end());
                    table.push_str(&row);
                }
            }
        }
    }
    println!("{table}");
    Ok(())
}

fn proto_name(proto: Proto) -> &'static str {
    match proto {
        Proto::H1 => "HTTP/1.1",
        Proto::H2 => "h2c",
    }
}

/// Under overload every point is kept: what was answered, what failed, and
/// what the proxy held at its peak and once the load stopped.
fn format_overload_row(proto: Proto, size: usize, rate: u32, arm: &Arm, p: &Point) -> String {
    let p50 = if p.ok > 0 {
        p.latencies.value_at_quantile(0.5).to_string()
    } else {
        "—".into()
    };
    let mut non_2xx = p.non_2xx.to_string();
    if !p.statuses.is_empty() {
        let by_status: Vec<String> = p
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        let _ = write!(non_2xx, " ({})", by_status.join(", "));
    }
    let (peak, after, cpu) = if arm.pids.is_empty() {
        ("—".into(), "—".into(), "—".into())
    } else {
        (
            format!("{:.1}", p.rss_kib as f64 / 1024.0),
            format!("{:.1}", p.rss_after_kib as f64 / 1024.0),
            format!("{:.3}", cpu_per_1k(p)),
        )
    };
    format!(
        "| {} | {size} | {rate} | {} | {} | {} | {} | {p50} | {peak} | {after} | {cpu} |\n",
        proto_name(proto),
        arm.name,
        p.ok,
        p.failed + (p.sent - p.ok - p.failed - p.non_2xx),
        non_2xx,
    )
}

/// CPU seconds of the arm's processes per 1000 measured requests.
fn cpu_per_1k(p: &Point) -> f64 {
    let ticks_per_s = 100.0; // USER_HZ on Linux
    p.cpu_ticks as f64 / ticks_per_s / (p.measured.max(1) as f64 / 1000.0)
}

fn format_row(
    proto: Proto,
    size: usize,
    rate: u32,
    arm: &Arm,
    p: &Point,
    direct: &mut Option<[u64; 3]>,
) -> String {
    let proto_s = proto_name(proto);
    let mut note = String::new();
    if p.failed > 0 || p.non_2xx > 0 {
        let _ = write!(
            note,
            "discarded: {} failed, {} non-2xx",
            p.failed, p.non_2xx
        );
    } else if p.ok < p.sent || p.max_lag > Duration::from_millis(50) {
        let _ = write!(
            note,
            "discarded: shortfall ({} of {} done, scheduler lag {} ms)",
            p.ok,
            p.sent,
            p.max_lag.as_millis()
        );
    }
    let q = |x: f64| p.latencies.value_at_quantile(x);
    let abs = [q(0.5), q(0.99), q(0.999)];
    if !note.is_empty() {
        if arm.name == "direct" {
            *direct = None;
        }
        return format!(
            "| {proto_s} | {size} | {rate} | {} | | | | | | | | | {note} |\n",
            arm.name
        );
    }
    let added = match (arm.name, *direct) {
        ("direct", _) => {
            *direct = Some(abs);
            ["—".to_string(), "—".to_string(), "—".to_string()]
        }
        (_, Some(d)) => [0, 1, 2].map(|i| format!("{}", abs[i] as i64 - d[i] as i64)),
        (_, None) => ["n/a".into(), "n/a".into(), "n/a".into()],
    };
    let (rss, cpu) = if arm.pids.is_empty() {
        ("—".to_string(), "—".to_string())
    } else {
        (
            format!("{:.1}", p.rss_kib as f64 / 1024.0),
            format!("{:.3}", cpu_per_1k(p)),
        )
    };
    format!(
        "| {proto_s} | {size} | {rate} | {} | {} | {} | {} | {} | {} | {} | {rss} | {cpu} | |\n",
        arm.name, abs[0], abs[1], abs[2], added[0], added[1], added[2]
    )
}

type BenchBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn client(proto: Proto) -> Client<HttpConnector, BenchBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_max_idle_per_host(1024);
    if proto == Proto::H2 {
        b.http2_only(true);
    }
    b.build(connector)
}

fn request(target: SocketAddr, size: usize, delay_ms: u64, proto: Proto) -> Request<BenchBody> {
    let uri = if delay_ms > 0 {
        format!("http://{target}/{size}?ms={delay_ms}")
    } else {
        format!("http://{target}/{size}")
    };
    let uri: Uri = uri.parse().unwrap_or_else(|e| panic!("uri: {e}"));
    Request::builder()
        .uri(uri)
        .version(if proto == Proto::H2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        })
        .body(Empty::new().boxed())
        .unwrap_or_else(|e| panic!("request: {e}"))
}

async fn wait_ready(arm: &Arm, proto: Proto) -> anyhow::Result<()> {
    let target = if proto == Proto::H2 { arm.h2 } else { arm.h1 };
    let c = client(proto);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Ok(rsp)) = tokio::time::timeout(
            Duration::from_secs(2),
            c.request(request(target, 10, 0, proto)),
        )
        .await
            && rsp.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no 2xx from {target}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

enum Outcome {
    Ok,
    Status(u16),
    Failed,
}

struct Sample {
    latency: Duration,
    measured: bool,
    outcome: Outcome,
}

#[allow(clippy::too_many_arguments)]
fn run_point(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    arm: &Arm,
    proto: Proto,
    size: usize,
    rate: u32,
    warmup: f64,
    measure: f64,
) -> anyhow::Result<Point> {
    let target = if proto == Proto::H2 { arm.h2 } else { arm.h1 };
    let clients: Vec<_> = (0..args.connections.max(1))
        .map(|_| client(proto))
        .collect();
    let delay_ms = args.upstream_delay_ms;
    let total = ((warmup + measure) * rate as f64) as usize;
    let warm_n = (warmup * rate as f64) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let handle = rt.handle().clone();
    let start = Instant::now() + Duration::from_millis(20);
    let stats_before = Arc::new(std::sync::Mutex::new(None));

    // The schedule is kept by an OS thread (no timer-wheel granularity);
    // requests run on the runtime below.
    let sb = stats_before.clone();
    let pids = arm.pids.clone();
    let dispatcher = std::thread::spawn(move || {
        let mut max_lag = Duration::ZERO;
        for i in 0..total {
            let t = start + interval * i as u32;
            if i == warm_n {
                for pid in &pids {
                    reset_peak_rss(*pid);
                }
                *sb.lock().unwrap_or_else(|p| p.into_inner()) = Some(cpu_ticks(&pids));
            }
            let now = Instant::now();
            if t > now {
                std::thread::sleep(t - now);
            } else if i >= warm_n {
                max_lag = max_lag.max(now - t);
            }
            let (c, tx) = (clients[i % clients.len()].clone(), tx.clone());
            let measured = i >= warm_n;
            handle.spawn(async move {
                let res = tokio::time::timeout(Duration::from_secs(5), async {
                    let rsp = c.request(request(target, size, delay_ms, proto)).await?;
                    let status = rsp.status();
                    rsp.into_body().collect().await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
                })
                .await;
                let outcome = match res {
                    Ok(Ok(s)) if s.is_success() => Outcome::Ok,
                    Ok(Ok(s)) => Outcome::Status(s.as_u16()),
                    _ => Outcome::Failed,
                };
                let _ = tx.send(Sample {
                    latency: t.elapsed(),
                    measured,
                    outcome,
                });
            });
        }
        max_lag
    });

    let mut point = Point {
        latencies: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        sent: total - warm_n,
        ok: 0,
        failed: 0,
        non_2xx: 0,
        statuses: Default::default(),
        max_lag: Duration::ZERO,
        cpu_ticks: 0,
        rss_kib: 0,
        rss_after_kib: 0,
        measured: total - warm_n,
    };
    let end = start + Duration::from_secs_f64(warmup + measure) + Duration::from_secs(6);
    rt.block_on(async {
        let mut seen = 0;
        while seen < total {
            let left = end.saturating_duration_since(Instant::now());
            let Ok(Some(s)) = tokio::time::timeout(left, rx.recv()).await else {
                break;
            };
            seen += 1;
            if !s.measured {
                continue;
            }
            match s.outcome {
                Outcome::Ok => {
                    point.ok += 1;
                    let _ = point.latencies.record(s.latency.as_micros() as u64);
                }
                Outcome::Status(code) => {
                    point.non_2xx += 1;
                    *point.statuses.entry(code).or_default() += 1;
                }
                Outcome::Failed => point.failed += 1,
            }
        }
    });
    point.max_lag = dispatcher.join().unwrap_or(Duration::MAX);
    let before = stats_before
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or(0);
    point.cpu_ticks = cpu_ticks(&arm.pids).saturating_sub(before);
    point.rss_kib = arm.pids.iter().map(|p| rss_kib(*p, "VmHWM:")).sum();
    // Let connections of this point close before the next.
    std::thread::sleep(Duration::from_millis(200));
    point.rss_after_kib = arm.pids.iter().map(|p| rss_kib(*p, "VmRSS:")).sum();
    Ok(point)
}

/// utime + stime of the processes, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// Resets VmHWM so the next reading is the peak of this point only.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// `VmHWM:` (the peak since the last reset) or `VmRSS:` (now), in KiB.
fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The echo upstream: `GET /<n>?ms=<d>` answers `n` bytes after `d`
/// milliseconds. Its own thread and
/// runtime, so the load generator does not queue behind it.
fn start_echo() -> anyhow::Result<SocketAddr> {
    let listener = StdListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("echo runtime: {e}"));
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)
                .unwrap_or_else(|e| panic!("echo listener: {e}"));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let n: usize = req
                                .uri()
                                .path()
                                .trim_start_matches('/')
                                .parse()
                                .unwrap_or(0);
                            let ms: u64 = req
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("ms="))
                                .and_then(|d| d.parse().ok())
                                .unwrap_or(0);
                            if ms > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(vec![b'x'; n]),
                            )))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    Ok(addr)
}

struct TrellisAddrs {
    inbound: SocketAddr,
    outbound: SocketAddr,
}

/// A trellis-proxy process whose app is `app` and whose upstream `echo`
/// (also reachable as `127.0.0.1`, the authority the benchmark client sends)
/// is `upstream`.
fn start_trellis(
    args: &Args,
    work: &Path,
    name: &str,
    app: SocketAddr,
    upstream: SocketAddr,
    children: &mut Vec<Child>,
) -> anyhow::Result<(TrellisAddrs, u32)> {
    let (inbound, outbound, admin) = (free_port()?, free_port()?, free_port()?);
    let config = format!(
        r#"apiVersion: proxy.trellis.dev/v1
kind: ProxyConfig
identity: {{service: bench-{name}, namespace: bench}}
listeners: {{inbound: "{inbound}", outbound: "{outbound}", admin: "{admin}"}}
app: {{address: "{app}", protocol: http}}
log: {{level: warn}}
upstreams:
- name: echo
  authorities: [echo, "127.0.0.1"]
  discovery: !static {{addresses: ["{upstream}"]}}
  policy: {{}}
"#
    );
    let path = work.join(format!("{name}.yaml"));
    std::fs::write(&path, config)?;
    let log = work.join(format!("{name}.log"));
    let mut cmd = match args.proxy_wrapper.as_deref() {
        Some(wrapper) => {
            let mut words = wrapper.split_whitespace();
            let mut cmd = Command::new(words.next().context("--proxy-wrapper is empty")?);
            cmd.args(words).arg(&args.proxy_bin);
            cmd
        }
        None => Command::new(&args.proxy_bin),
    };
    cmd.env("TRELLIS_BENCH_PROXY", name);
    if let Some(n) = args.proxy_workers {
        cmd.env("TRELLIS_PROXY_WORKERS", n.to_string());
    }
    let child = cmd
        .arg("--config")
        .arg(&path)
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", args.proxy_bin.display()))?;
    let pid = child.id();
    children.push(child);
    wait_listening(admin).with_context(|| {
        format!(
            "trellis-proxy {name}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    Ok((TrellisAddrs { inbound, outbound }, pid))
}

/// HAProxy doing the same hop: one HTTP/1.1 frontend, one h2c frontend,
/// each keeping its protocol to the echo server, connections reused.
fn start_haproxy(
    args: &Args,
    work: &Path,
    echo: SocketAddr,
    children: &mut Vec<Child>,
) -> anyhow::Result<(SocketAddr, SocketAddr, u32)> {
    let (h1, h2) = (free_port()?, free_port()?);
    let config = format!(
        "global\n  maxconn 4000\n  nbthread 2\n\
         defaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend fe_h1\n  bind {h1}\n  default_backend be_h1\n\
         frontend fe_h2\n  bind {h2} proto h2\n  default_backend be_h2\n\
         backend be_h1\n  http-reuse always\n  server echo {echo}\n\
         backend be_h2\n  http-reuse always\n  server echo {echo} proto h2\n"
    );
    let path = work.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let child = Command::new(&args.haproxy_bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.haproxy_bin))?;
    let pid = child.id();
    children.push(child);
    wait_listening(h1)?;
    wait_listening(h2)?;
    Ok((h1, h2, pid))
}

/// SIGTERM, so a proxy shuts down as in a pod (and a profiler around it
/// writes its output); SIGKILL for what is still running 15 s later.
fn stop_children(children: &mut [Child]) {
    for c in children.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for c in children.iter_mut() {
        while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    // Long enough for a proxy started under a profiler.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr}")
}
