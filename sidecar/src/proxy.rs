//! One proxy instance, composed in this one place: its listeners, the
//! applier that owns its config's state, the file watcher, and how it shuts
//! down. Everything is owned by the instance (no global state), so tests run
//! several proxies in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::Direction;
use crate::admin::AdminHandler;
use crate::apply::{Applier, Views};
use crate::discovery::KubeClient;
use crate::edge::Edge;
use crate::hygiene::Hop;
use crate::inbound::InboundRouter;
use crate::metrics::Metrics;
use crate::outbound::{EndpointGauges, OutboundRouter};
use crate::server::workers::Workers;
use crate::server::{self, Shutdown};
use crate::trace::Telemetry;
use trellis_api::proxy::ProxyConfig;

/// How long shutdown waits for queued spans to reach the collector.
const TRACE_FLUSH: Duration = Duration::from_secs(5);

/// How to run a proxy besides its config.
#[derive(Clone)]
pub struct Options {
    /// The file the config came from: watched, and re-applied when it changes.
    pub config_path: Option<PathBuf>,
    /// How often the file is checked.
    pub reload_interval: Duration,
    /// For `kubernetes` discovery; default: in-cluster or `KUBECONFIG`, made on first use.
    pub kube_client: Option<kube::Client>,
    /// Serving threads for the inbound and outbound listeners, each with its
    /// own runtime, listening socket and connection pools
    /// ([`crate::server::workers`]). `None`: they are served on the runtime
    /// that starts the proxy (tests, embedding).
    pub workers: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config_path: None,
            reload_interval: Duration::from_secs(1),
            kube_client: None,
            workers: None,
        }
    }
}

pub struct Proxy;

/// A running proxy.
pub struct ProxyHandle {
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    metrics: Metrics,
    views: Views,
    /// Where new configs go: to the applier, which stops once every sender is gone.
    configs: Option<watch::Sender<Arc<ProxyConfig>>>,
    applier: Option<JoinHandle<()>>,
    watcher: Option<JoinHandle<()>>,
    telemetry: Arc<Telemetry>,
    shutdown: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    /// Declared last: dropped after everything above, it stops the serving threads.
    workers: Option<Workers>,
}

impl Proxy {
    pub async fn start(config: ProxyConfig) -> anyhow::Result<ProxyHandle> {
        Self::start_with(config, Options::default()).await
    }

    /// Binds the listeners, starts discovery and serves. Returns once every
    /// listener accepts (static upstreams are routable at once).
    pub async fn start_with(config: ProxyConfig, opts: Options) -> anyhow::Result<ProxyHandle> {
        let workers = opts
            .workers
            .map(Workers::start)
            .transpose()
            .context("starting the serving threads")?;
        let bind = |addr: SocketAddr, what: &'static str| {
            let listeners = match &workers {
                Some(w) => w.bind(addr),
                None => std::net::TcpListener::bind(addr)
                    .and_then(|l| {
                        l.set_nonblocking(true)?;
                        TcpListener::from_std(l)
                    })
                    .map(|l| vec![l]),
            };
            listeners.with_context(|| format!("binding the {what} listener on {addr}"))
        };
        let inbound_ls = bind(config.listeners.inbound, "inbound")?;
        let outbound_ls = bind(config.listeners.outbound, "outbound")?;
        let admin_l = TcpListener::bind(config.listeners.admin)
            .await
            .with_context(|| format!("binding the admin listener on {}", config.listeners.admin))?;
        let lanes = workers.as_ref().map_or(1, Workers::len);

        let metrics = Metrics::new();
        let telemetry = Arc::new(Telemetry::new(&config.tracing, &config.identity, &metrics)?);
        let instance = format!("{:08x}", rand::random::<u32>());
        let kube = opts.kube_client.map(KubeClient::given).unwrap_or_default();
        let config = Arc::new(config);
        let (applier, views) =
            Applier::start(config.clone(), &metrics, telemetry.clone(), kube, lanes);
        metrics
            .registry()
            .register(Box::new(EndpointGauges::new(&views.routes)))
            .context("registering the endpoint gauges")?;
        let (configs, configs_rx) = watch::channel(config);
        let applier = tokio::spawn(applier.run(configs_rx));
        let watcher = opts.config_path.map(|path| {
            tokio::spawn(crate::reload::watch(
                path,
                opts.reload_interval,
                configs.clone(),
                metrics.config_reload_errors_total.clone(),
            ))
        });

        let (shutdown, signal) = Shutdown::new();
        let inbound = Edge::new(
            Hop::new(&instance, Direction::Inbound),
            views.http.clone(),
            InboundRouter::new(views.inbound.clone(), &metrics),
        );
        let outbound = Edge::new(
            Hop::new(&instance, Direction::Outbound),
            views.http.clone(),
            OutboundRouter::new(views.routes.clone(), &metrics),
        );
        let admin = AdminHandler::new(metrics.clone(), views.clone());
        let inbound_addr = inbound_ls[0].local_addr()?;
        let outbound_addr = outbound_ls[0].local_addr()?;
        let admin_addr = admin_l.local_addr()?;
        let runtimes: Vec<Handle> = match &workers {
            Some(w) => w.handles().to_vec(),
            None => vec![Handle::current()],
        };
        let mut listeners = Vec::new();
        for ((inbound_l, outbound_l), runtime) in
            inbound_ls.into_iter().zip(outbound_ls).zip(&runtimes)
        {
            listeners.push(runtime.spawn(server::serve(
                "inbound",
                inbound_l,
                inbound.clone(),
                views.http.clone(),
                signal.clone(),
            )));
            listeners.push(runtime.spawn(server::serve(
                "outbound",
                outbound_l,
                outbound.clone(),
                views.http.clone(),
                signal.clone(),
            )));
        }
        listeners.push(tokio::spawn(server::serve(
            "admin",
            admin_l,
            admin,
            views.http.clone(),
            signal,
        )));
        let handle = ProxyHandle {
            inbound_addr,
            outbound_addr,
            admin_addr,
            listeners,
            metrics,
            views,
            configs: Some(configs),
            applier: Some(applier),
            watcher,
            telemetry,
            shutdown,
            workers,
        };
        info!(
            inbound = %handle.inbound_addr,
            outbound = %handle.outbound_addr,
            admin = %handle.admin_addr,
            instance,
            workers = lanes,
            "trellis-proxy started"
        );
        Ok(handle)
    }
}

impl ProxyHandle {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The config in effect.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.views.config.borrow().clone()
    }

    /// Applies a new config, as a changed config file would; returns once it
    /// is in effect (or a newer one replaced it before it was).
    pub async fn reload(&self, config: ProxyConfig) {
        let Some(configs) = &self.configs else { return };
        let sent = Arc::new(config);
        configs.send_replace(sent.clone());
        let mut applied = self.views.config.clone();
        let _ = applied
            .wait_for(|c| Arc::ptr_eq(c, &sent) || !Arc::ptr_eq(&configs.borrow(), &sent))
            .await;
    }

    /// Ready once every upstream's discovery has answered at least once.
    pub fn is_ready(&self) -> bool {
        self.views.routes.load().is_resolved()
    }

    /// Stops accepting at once, lets in-flight requests finish within the
    /// config's `shutdownGrace`, closes the rest, flushes spans.
    pub async fn shutdown(mut self) {
        info!("shutting down");
        let _ = self.shutdown.send(true);
        for l in std::mem::take(&mut self.listeners) {
            let _ = l.await;
        }
        // The last sender gone, the applier retires the routes: discovery
        // stops and pooled connections close.
        if let Some(w) = self.watcher.take() {
            w.abort();
            let _ = w.await;
        }
        self.configs = None;
        if let Some(a) = self.applier.take() {
            let _ = a.await;
        }
        self.telemetry.flush(TRACE_FLUSH).await;
        // The serving threads stop with the handle, their pooled connections with them.
        self.workers = None;
        info!("shut down");
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        // A handle dropped without `shutdown` still stops its listeners and
        // the file watcher; the applier stops with its last sender.
        let _ = self.shutdown.send(true);
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}
