//! trellis-operator: turns MeshServices and ResiliencePolicies into running,
//! meshed workloads (docs/architecture.md, "Data flow").
//!
//! Everything lives in this library so tests can start the operator in
//! process against any API server: [`Operator::start`] (or [`run`]) with an
//! [`OperatorConfig`]. `main.rs` only parses flags into that config.
//!
//! | module | what |
//! |---|---|
//! | [`controller`] | the MeshService and ResiliencePolicy reconcilers, their [`Context`](controller::Context) |
//! | [`apply`] | server-side apply that skips writes when nothing changed |
//! | [`conditions`] | status conditions |
//! | [`webhook`] | `/inject` and `/validate` admission webhooks over HTTPS |
//! | [`certs`] | the self-managed webhook CA, serving certificate and `caBundle`s |
//! | [`leader`] | Lease-based leader election |
//! | [`ops`] | `/metrics`, `/healthz`, `/readyz` |
//! | [`metrics`] | the Prometheus metrics |
//! | [`cli`] | flags of the binary |
//! | [`telemetry`] | logs and OTLP traces |

pub mod apply;
pub mod certs;
pub mod cli;
pub mod conditions;
pub mod controller;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod ops;
pub mod telemetry;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use trellis_api::render::Settings;

pub use certs::{CertConfig, CertStore};
pub use controller::Context;
pub use error::Error;
pub use leader::LeaderElectionConfig;
pub use metrics::Metrics;
pub use webhook::{Webhook, WebhookState};

use crate::certs::CertManager;
use crate::leader::Leadership;
use crate::ops::Health;

/// Everything the operator can be told.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Watch one namespace; `None`: all.
    pub namespace: Option<String>,
    /// How MeshServices are rendered (proxy image, cluster domain, ...).
    pub settings: Settings,
    /// Reconciles run at once, per controller.
    pub concurrency: u16,
    /// This replica's name (events, lease holder).
    pub identity: String,
    /// `None`: always run the controllers (single replica, tests).
    pub leader_election: Option<LeaderElectionConfig>,
    /// `None`: no webhooks.
    pub webhook: Option<WebhookConfig>,
    /// The plain-HTTP `/metrics`, `/healthz`, `/readyz` port; `None`: not served.
    pub ops_addr: Option<SocketAddr>,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            namespace: None,
            settings: Settings::default(),
            concurrency: 4,
            identity: default_identity(),
            leader_election: None,
            webhook: None,
            ops_addr: None,
        }
    }
}

/// Where the webhooks listen and how their certificate is managed.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Port 0 picks a free port ([`Operator::webhook_addr`] tells which).
    pub addr: SocketAddr,
    pub certs: CertConfig,
}

/// `POD_NAME`, else `HOSTNAME`, else `trellis-operator`.
pub fn default_identity() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "trellis-operator".into())
}

/// A running operator. Drop does not stop it: call [`Operator::shutdown`].
pub struct Operator {
    identity: String,
    webhook_addr: Option<SocketAddr>,
    ops_addr: Option<SocketAddr>,
    metrics: Metrics,
    certs: Option<Arc<CertStore>>,
    leadership: Leadership,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Operator {
    /// Starts the webhooks and ops servers (all replicas) and joins the leader
    /// election; the controllers run while this replica leads. Returns once
    /// the servers are bound.
    pub async fn start(client: Client, config: OperatorConfig) -> anyhow::Result<Operator> {
        let metrics = Metrics::new();
        let health = Arc::new(Health::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let signal = {
            let rx = shutdown_rx.clone();
            move || {
                let mut rx = rx.clone();
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                }
            }
        };
        let mut tasks = Vec::new();

        let mut webhook_addr = None;
        let mut certs = None;
        if let Some(wh) = &config.webhook {
            let store = CertStore::new();
            let _ = health.certs.set(store.clone());
            let manager = CertManager::new(
                client.clone(),
                wh.certs.clone(),
                store.clone(),
                metrics.clone(),
            );
            // A first pass now, so the server usually starts with a certificate.
            if let Err(e) = manager.ensure().await {
                tracing::warn!(error = %e, "webhook certificate not ready yet; retrying in the background");
            }
            let state = Arc::new(WebhookState {
                client: Some(client.clone()),
                proxy: config.settings.proxy.clone(),
                metrics: metrics.clone(),
            });
            let (addr, task) = Webhook::serve(wh.addr, state, store.clone(), signal()).await?;
            tracing::info!(%addr, "webhooks listening (HTTPS)");
            tasks.push(task);
            tasks.push(tokio::spawn(manager.run(signal())));
            webhook_addr = Some(addr);
            certs = Some(store);
        }

        let mut ops_addr = None;
        if let Some(addr) = config.ops_addr {
            let (addr, task) = ops::serve(addr, metrics.clone(), health.clone(), signal()).await?;
            tracing::info!(%addr, "metrics and health listening (HTTP)");
            tasks.push(task);
            ops_addr = Some(addr);
        }

        let leadership = match &config.leader_election {
            Some(le) => Leadership::elect(client.clone(), le).await?,
            None => Leadership::always(),
        };
        let ctx = Arc::new(Context::new(
            client,
            config.settings.clone(),
            metrics.clone(),
            Some(config.identity.clone()),
        ));
        let stopping = shutdown_rx.clone();
        let supervisor = supervise(
            ctx,
            config.namespace.clone(),
            config.concurrency.max(1),
            leadership.is_leader.clone(),
            shutdown_rx,
        );
        let health_for_supervisor = health.clone();
        tasks.push(tokio::spawn(async move {
            supervisor.await;
            if !*stopping.borrow() {
                // The election ended without a shutdown: let the liveness probe restart us.
                health_for_supervisor.broken.store(true, Ordering::Relaxed);
            }
        }));

        Ok(Operator {
            identity: config.identity.clone(),
            webhook_addr,
            ops_addr,
            metrics,
            certs,
            leadership,
            shutdown,
            tasks,
        })
    }

    /// This replica's name (the lease holder identity).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The webhooks' HTTPS address, when served.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook_addr
    }

    /// The `/metrics` `/healthz` `/readyz` address, when served.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The PEM CA bundle a webhook client should trust.
    pub fn ca_bundle(&self) -> Option<String> {
        self.certs.as_ref().map(|c| c.ca_bundle())
    }

    pub fn cert_store(&self) -> Option<Arc<CertStore>> {
        self.certs.clone()
    }

    /// Whether this replica runs the controllers now.
    pub fn is_leader(&self) -> bool {
        *self.leadership.is_leader.borrow()
    }

    /// Changes of leadership.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leadership.is_leader.clone()
    }

    /// Stops everything: controllers finish in-flight reconciles, servers
    /// finish open requests, and the lease is released so another replica
    /// takes over at once.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let Leadership {
            is_leader, task, ..
        } = self.leadership;
        drop(is_leader);
        if let Some(task) = task
            && tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
        {
            tracing::warn!("lease not released within 5s");
        }
    }
}

/// Runs the operator until `shutdown` resolves, then stops it gracefully.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let operator = Operator::start(client, config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    operator.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the controllers while `leader` is true; stops them when it turns
/// false (they restart if leadership comes back) or at shutdown.
async fn supervise(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let metrics = ctx.metrics.clone();
    loop {
        tokio::select! {
            r = leader.wait_for(|l| *l) => if r.is_err() {
                tracing::warn!("leader election ended; controllers will not run");
                return;
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        tracing::info!("leading: starting controllers");
        metrics.leader.set(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut controllers = tokio::spawn(controller::run_controllers(
            ctx.clone(),
            namespace.clone(),
            concurrency,
            async move {
                let _ = stop_rx.await;
            },
        ));
        let lost = tokio::select! {
            r = leader.wait_for(|l| !*l) => {
                if r.is_err() { tracing::warn!("leader election ended"); }
                true
            }
            _ = shutdown.wait_for(|s| *s) => false,
            _ = &mut controllers => {
                tracing::error!("controllers stopped unexpectedly; restarting");
                metrics.leader.set(0);
                continue;
            }
        };
        if lost {
            tracing::warn!("lost the lease: stopping controllers");
        }
        let _ = stop_tx.send(());
        let abort = controllers.abort_handle();
        let grace = if lost {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        if tokio::time::timeout(grace, &mut controllers).await.is_err() {
            abort.abort();
        }
        metrics.leader.set(0);
        if !lost {
            return;
        }
    }
}
