//! The status page: every second each sidecar's `/metrics` is read, the
//! last few seconds turned into rates, success and latency per service,
//! and kept for five minutes; `/` is the page, `/api/status` its data.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State as AxumState;
use axum::response::Html;
use axum::routing::get;

use super::plan::Ports;
use super::scrape::{Sample, Window, parse, window};
use super::supervise::State;

const PAGE: &str = include_str!("status.html");
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// Rates are taken over this many scrapes, so one slow second does not jump.
const WINDOW_SCRAPES: usize = 5;
/// Five minutes of history.
const HISTORY: usize = 300;

/// One running service, as the page shows it.
pub struct Member {
    pub name: String,
    pub ports: Ports,
    pub upstreams: Vec<String>,
    pub app: Arc<Mutex<State>>,
    pub proxy: Arc<Mutex<State>>,
}

#[derive(Clone)]
pub struct Board {
    members: Arc<Vec<Member>>,
    gateway: String,
    started: Instant,
    data: Arc<Mutex<Data>>,
}

#[derive(Default)]
struct Data {
    scrapes: BTreeMap<String, VecDeque<(Instant, Vec<Sample>)>>,
    windows: BTreeMap<String, Window>,
    history: VecDeque<Point>,
}

/// One second of the graph.
#[derive(Clone, serde::Serialize)]
struct Point {
    t: f64,
    services: BTreeMap<String, PointOf>,
}

#[derive(Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PointOf {
    rate: f64,
    success: Option<f64>,
    p99_ms: Option<f64>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    gateway: String,
    uptime: f64,
    services: Vec<ServiceStatus>,
    history: Vec<Point>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceStatus {
    name: String,
    ports: Ports,
    upstreams: Vec<String>,
    app: State,
    proxy: State,
    /// Whether the last scrape of its sidecar answered.
    scraped: bool,
    #[serde(flatten)]
    window: Window,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Board {
    pub fn new(members: Arc<Vec<Member>>, gateway: String) -> Board {
        Board {
            members,
            gateway,
            started: Instant::now(),
            data: Arc::default(),
        }
    }

    pub async fn scrape_forever(self) {
        let client = match reqwest::Client::builder()
            .no_proxy()
            .timeout(SCRAPE_EVERY)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                println!("trellis dev: the status page cannot scrape: {e}");
                return;
            }
        };
        let mut tick = tokio::time::interval(SCRAPE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let scrapes = futures::future::join_all(self.members.iter().map(|m| {
                let url = format!("http://127.0.0.1:{}/metrics", m.ports.admin);
                let client = client.clone();
                async move {
                    let text = match client.get(url).send().await {
                        Ok(r) if r.status().is_success() => r.text().await.ok(),
                        _ => None,
                    };
                    (m.name.clone(), text.map(|t| parse(&t)))
                }
            }))
            .await;
            self.record(Instant::now(), scrapes);
        }
    }

    fn record(&self, at: Instant, scrapes: Vec<(String, Option<Vec<Sample>>)>) {
        let mut data = lock(&self.data);
        let mut point = Point {
            t: at.duration_since(self.started).as_secs_f64(),
            services: BTreeMap::new(),
        };
        for (name, samples) in scrapes {
            let series = data.scrapes.entry(name.clone()).or_default();
            match samples {
                Some(s) => series.push_back((at, s)),
                // A sidecar that did not answer starts a new series: its
                // counters start from zero when it comes back.
                None => series.clear(),
            }
            while series.len() > WINDOW_SCRAPES + 1 {
                series.pop_front();
            }
            let w = match (series.front(), series.back()) {
                (Some((t0, first)), Some((t1, last))) if series.len() > 1 => {
                    window(first, last, t1.duration_since(*t0).as_secs_f64())
                }
                _ => Window::default(),
            };
            point.services.insert(
                name.clone(),
                PointOf {
                    rate: w.rate,
                    success: w.success,
                    p99_ms: w.p99_ms,
                },
            );
            data.windows.insert(name, w);
        }
        data.history.push_back(point);
        while data.history.len() > HISTORY {
            data.history.pop_front();
        }
    }

    fn snapshot(&self) -> Snapshot {
        let data = lock(&self.data);
        Snapshot {
            gateway: self.gateway.clone(),
            uptime: self.started.elapsed().as_secs_f64(),
            services: self
                .members
                .iter()
                .map(|m| ServiceStatus {
                    name: m.name.clone(),
                    ports: m.ports,
                    upstreams: m.upstreams.clone(),
                    app: lock(&m.app).clone(),
                    proxy: lock(&m.proxy).clone(),
                    scraped: data.scrapes.get(&m.name).is_some_and(|s| !s.is_empty()),
                    window: data.windows.get(&m.name).cloned().unwrap_or_default(),
                })
                .collect(),
            history: data.history.iter().cloned().collect(),
        }
    }
}

pub async fn serve(listener: tokio::net::TcpListener, board: Board) {
    let app = axum::Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/api/status",
            get(|AxumState(board): AxumState<Board>| async move { Json(board.snapshot()) }),
        )
        .with_state(board);
    if let Err(e) = axum::serve(listener, app).await {
        println!("trellis dev: the status page stopped: {e}");
    }
}
