//! How a config takes effect: configs flow one way, from their sources (the
//! file watcher, [`crate::ProxyHandle::reload`]) through a `watch` channel to
//! the one [`Applier`], which builds what the listeners use and publishes it.
//!
//! The applier owns everything that must survive a reload — endpoint sets
//! and discovery tasks, breakers, budgets, bulkheads, outlier state, the
//! inbound limits, connection pools — and decides per piece whether the new
//! config keeps it. The listeners and the admin port only read what it
//! published ([`View`]); nobody else writes. Configs arrive already
//! validated; one that came while another was applied is applied after it,
//! and of several queued only the newest is (each is a whole config).

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::HttpService;
use crate::client::{ClientSettings, HttpClient};
use crate::discovery::KubeClient;
use crate::inbound::stack as inbound_stack;
use crate::metrics::Metrics;
use crate::outbound::{BuildContext, RouteTable};
use crate::published::{Published, View, publish};
use crate::resilience::InboundResilience;
use crate::trace::Telemetry;
use trellis_api::proxy::{HttpSettings, ProxyConfig, Timeouts};

/// What the listeners and the admin port read.
#[derive(Clone)]
pub struct Views {
    pub routes: View<RouteTable>,
    pub inbound: View<HttpService>,
    pub http: View<HttpSettings>,
    /// The config in effect.
    pub config: watch::Receiver<Arc<ProxyConfig>>,
}

/// The one writer of a proxy's routes, stacks and limits.
pub struct Applier {
    metrics: Metrics,
    telemetry: Arc<Telemetry>,
    kube: KubeClient,
    routes: Published<RouteTable>,
    table: Arc<RouteTable>,
    inbound: Published<HttpService>,
    inbound_limits: InboundResilience,
    app_client: HttpClient,
    http: Published<HttpSettings>,
    applied: watch::Sender<Arc<ProxyConfig>>,
    /// Serving threads, each with its own connection pools.
    lanes: usize,
}

impl Applier {
    /// Applies `config` (static upstreams are routable when this returns)
    /// and returns the applier with what it publishes. `lanes`: how many
    /// serving threads the listeners run on.
    pub fn start(
        config: Arc<ProxyConfig>,
        metrics: &Metrics,
        telemetry: Arc<Telemetry>,
        kube: KubeClient,
        lanes: usize,
    ) -> (Applier, Views) {
        let inbound_limits = InboundResilience::new(&config.inbound, metrics);
        let app_client = HttpClient::new(app_client_settings(&config.http), lanes);
        let inbound_stack = inbound_stack::build(inbound_stack::InboundTarget {
            app: &config.app,
            limits: &inbound_limits,
            client: &app_client,
            telemetry: &telemetry,
        });
        let (routes, routes_view) = publish(RouteTable::default());
        let (inbound, inbound_view) = publish(inbound_stack);
        let (http, http_view) = publish(config.http.clone());
        let (applied, config_view) = watch::channel(config.clone());
        let mut applier = Applier {
            metrics: metrics.clone(),
            telemetry,
            kube,
            routes,
            table: Arc::new(RouteTable::default()),
            inbound,
            inbound_limits,
            app_client,
            http,
            applied,
            lanes,
        };
        applier.apply(config);
        let views = Views {
            routes: routes_view,
            inbound: inbound_view,
            http: http_view,
            config: config_view,
        };
        (applier, views)
    }

    /// Applies every config sent until the senders are gone, then retires
    /// the routes: discovery stops and pooled connections close.
    pub async fn run(mut self, mut configs: watch::Receiver<Arc<ProxyConfig>>) {
        // The channel's first value was applied at start, and a new
        // receiver has seen it: `changed` waits for the next.
        while configs.changed().await.is_ok() {
            let config = configs.borrow_and_update().clone();
            self.apply(config);
        }
        self.routes.set(RouteTable::default());
    }

    /// Applies a validated config: each listener sees the old or the new
    /// routing, never a mix, and requests in flight finish on what they
    /// started with. Listener addresses and tracing settings take effect on
    /// restart only.
    fn apply(&mut self, config: Arc<ProxyConfig>) {
        let old = self.applied.borrow().clone();
        if !Arc::ptr_eq(&old, &config) {
            if old.listeners != config.listeners {
                warn!("listener addresses changed; they take effect on restart");
            }
            if old.tracing != config.tracing {
                warn!("tracing settings changed; they take effect on restart");
            }
        }
        let table = Arc::new(RouteTable::build(
            &config.upstreams,
            &self.table,
            &BuildContext {
                metrics: &self.metrics,
                telemetry: &self.telemetry,
                kube: &self.kube,
                http: &config.http,
                lanes: self.lanes,
            },
        ));
        self.table = table.clone();
        self.routes.set_arc(table);
        if app_client_settings(&old.http) != app_client_settings(&config.http) {
            self.app_client = HttpClient::new(app_client_settings(&config.http), self.lanes);
        }
        self.inbound_limits = self.inbound_limits.reload(&config.inbound, &self.metrics);
        self.inbound
            .set(inbound_stack::build(inbound_stack::InboundTarget {
                app: &config.app,
                limits: &self.inbound_limits,
                client: &self.app_client,
                telemetry: &self.telemetry,
            }));
        self.http.set(config.http.clone());
        self.applied.send_replace(config);
        info!(upstreams = self.table.upstreams().count(), "config applied");
    }
}

/// The app is on loopback: the default timeouts of a policy without any.
fn app_client_settings(http: &HttpSettings) -> ClientSettings {
    let defaults = Timeouts::default();
    ClientSettings::new(http, defaults.connect.as_std(), defaults.idle.as_std())
}
