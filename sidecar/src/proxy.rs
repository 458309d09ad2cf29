//! One proxy instance: its listeners, its state, how a new config is
//! applied, and how it shuts down. Everything is owned by the instance (no
//! global state), so tests run several proxies in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::AdminHandler;
use crate::client::{ClientSettings, HttpClient};
use crate::discovery::KubeClient;
use crate::inbound::{Inbound, InboundHandler, stack as inbound_stack};
use crate::metrics::Metrics;
use crate::outbound::{BuildContext, Outbound, OutboundHandler, RouteTable};
use crate::resilience::InboundResilience;
use crate::server::{self, Shutdown};
use crate::trace::Telemetry;
use trellis_api::proxy::{HttpSettings, ProxyConfig, Timeouts};

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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config_path: None,
            reload_interval: Duration::from_secs(1),
            kube_client: None,
        }
    }
}

pub struct Proxy;

/// State shared by the listeners of one proxy.
pub struct Shared {
    pub metrics: Metrics,
    pub config: ArcSwap<ProxyConfig>,
    pub settings: Arc<ArcSwap<HttpSettings>>,
    pub outbound: Arc<Outbound>,
    pub inbound: Arc<Inbound>,
    pub telemetry: Arc<Telemetry>,
    kube: KubeClient,
    app_client: HttpClient,
    /// The inbound limits' state (token bucket, in-flight count).
    inbound_limits: Mutex<InboundResilience>,
    /// One apply at a time (file watcher and API callers).
    applying: Mutex<()>,
}

impl Shared {
    /// Applies a validated config atomically: each listener sees the old or
    /// the new routing, never a mix, and requests in flight finish on what
    /// they started with. Listener addresses and tracing settings take effect
    /// on restart only.
    pub fn apply(&self, config: ProxyConfig) {
        let _one = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.config.load_full();
        if old.listeners != config.listeners {
            warn!("listener addresses changed; they take effect on restart");
        }
        if old.tracing != config.tracing {
            warn!("tracing settings changed; they take effect on restart");
        }
        self.settings.store(Arc::new(config.http.clone()));
        let previous = self.outbound.table.load_full();
        let table = RouteTable::build(
            &config.upstreams,
            &previous,
            &BuildContext {
                metrics: &self.metrics,
                telemetry: &self.telemetry,
                kube: &self.kube,
            },
        );
        self.outbound.table.store(Arc::new(table));
        let mut limits = self
            .inbound_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *limits = limits.reload(&config.inbound, &self.metrics);
        self.inbound.stack.store(Arc::new(inbound_stack::build(
            inbound_stack::InboundTarget {
                app: &config.app,
                limits: &limits,
                client: &self.app_client,
                metrics: &self.metrics,
                telemetry: &self.telemetry,
            },
        )));
        self.config.store(Arc::new(config));
    }

    /// Ready once every upstream's discovery has answered at least once.
    pub fn is_ready(&self) -> bool {
        self.outbound
            .table
            .load()
            .upstreams()
            .all(|u| u.endpoints.is_resolved())
    }
}

/// A running proxy.
pub struct ProxyHandle {
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    reload: Option<JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(config: ProxyConfig) -> anyhow::Result<ProxyHandle> {
        Self::start_with(config, Options::default()).await
    }

    /// Binds the listeners, starts discovery and serves. Returns once every
    /// listener accepts (static upstreams are routable at once).
    pub async fn start_with(config: ProxyConfig, opts: Options) -> anyhow::Result<ProxyHandle> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the {what} listener on {addr}"))
        };
        let inbound_l = bind(config.listeners.inbound, "inbound").await?;
        let outbound_l = bind(config.listeners.outbound, "outbound").await?;
        let admin_l = bind(config.listeners.admin, "admin").await?;

        let metrics = Metrics::new();
        let telemetry = Arc::new(Telemetry::new(&config.tracing, &config.identity, &metrics)?);
        let instance = format!("{:08x}", rand::random::<u32>());
        let settings = Arc::new(ArcSwap::from_pointee(config.http.clone()));
        let app_defaults = Timeouts::default();
        let app_client = HttpClient::new(ClientSettings {
            connect_timeout: app_defaults.connect.as_std(),
            idle_timeout: app_defaults.idle.as_std(),
        });
        let inbound_limits = InboundResilience::new(&config.inbound, &metrics);
        let inbound_stack = inbound_stack::build(inbound_stack::InboundTarget {
            app: &config.app,
            limits: &inbound_limits,
            client: &app_client,
            metrics: &metrics,
            telemetry: &telemetry,
        });
        let shared = Arc::new(Shared {
            outbound: Arc::new(Outbound::new(&instance, settings.clone(), metrics.clone())),
            inbound: Arc::new(Inbound::new(
                &instance,
                inbound_stack,
                settings.clone(),
                metrics.clone(),
            )),
            metrics,
            config: ArcSwap::from_pointee(config.clone()),
            settings: settings.clone(),
            telemetry,
            kube: opts.kube_client.map(KubeClient::given).unwrap_or_default(),
            app_client,
            inbound_limits: Mutex::new(inbound_limits),
            applying: Mutex::new(()),
        });
        shared.apply(config);

        let (shutdown, signal) = Shutdown::new();
        let handle = ProxyHandle {
            inbound_addr: inbound_l.local_addr()?,
            outbound_addr: outbound_l.local_addr()?,
            admin_addr: admin_l.local_addr()?,
            listeners: vec![
                tokio::spawn(server::serve(
                    "inbound",
                    inbound_l,
                    InboundHandler(shared.inbound.clone()),
                    settings.clone(),
                    signal.clone(),
                )),
                tokio::spawn(server::serve(
                    "outbound",
                    outbound_l,
                    OutboundHandler(shared.outbound.clone()),
                    settings.clone(),
                    signal.clone(),
                )),
                tokio::spawn(server::serve(
                    "admin",
                    admin_l,
                    AdminHandler(shared.clone()),
                    settings,
                    signal,
                )),
            ],
            reload: opts.config_path.map(|path| {
                tokio::spawn(crate::reload::watch(
                    path,
                    opts.reload_interval,
                    shared.clone(),
                ))
            }),
            shared,
            shutdown,
        };
        info!(
            inbound = %handle.inbound_addr,
            outbound = %handle.outbound_addr,
            admin = %handle.admin_addr,
            instance,
            "trellis-proxy started"
        );
        Ok(handle)
    }
}

impl ProxyHandle {
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The config in effect.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.shared.config.load_full()
    }

    /// Applies a new config, as a changed config file would.
    pub fn reload(&self, config: ProxyConfig) {
        self.shared.apply(config);
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// Stops accepting at once, lets in-flight requests finish within the
    /// config's `shutdownGrace`, closes the rest, flushes spans.
    pub async fn shutdown(mut self) {
        info!("shutting down");
        let _ = self.shutdown.send(true);
        if let Some(r) = self.reload.take() {
            r.abort();
        }
        for l in std::mem::take(&mut self.listeners) {
            let _ = l.await;
        }
        // Stops discovery tasks and closes pooled connections.
        self.shared
            .outbound
            .table
            .store(Arc::new(RouteTable::default()));
        self.shared.telemetry.flush(TRACE_FLUSH).await;
        info!("shut down");
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        // A handle dropped without `shutdown` still stops its listeners.
        let _ = self.shutdown.send(true);
        if let Some(r) = &self.reload {
            r.abort();
        }
    }
}
