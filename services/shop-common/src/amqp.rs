//! The broker connection (RabbitMQ, lapin), kept up by one supervisor task:
//! it connects with backoff, runs every registered setup (declare queues,
//! start consumers) on each new connection, and reconnects when the
//! connection is lost. Readiness reads its state; publishers and consumers
//! get channels from it. Trace context travels in message headers.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Env, redact_url};
use crate::health::Check;
use crate::telemetry;

pub mod rpc;

/// `AMQP_URL`, e.g. `amqp://user:pass@rabbitmq:5672/%2f`.
pub fn url_from_env(env: &Env) -> Result<Option<String>, ConfigError> {
    let Some(url) = env.get("AMQP_URL") else {
        return Ok(None);
    };
    if !url.starts_with("amqp://") {
        return Err(ConfigError::invalid(
            "AMQP_URL",
            &redact_url(url),
            "expected amqp://…",
        ));
    }
    Ok(Some(url.to_string()))
}

type Setup = Arc<dyn Fn(Arc<Connection>) -> BoxFuture<'static, lapin::Result<()>> + Send + Sync>;

/// A supervised connection to the broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    current: watch::Sender<Option<Arc<Connection>>>,
    /// Held while a connection is being set up, so a setup registered
    /// meanwhile runs exactly once on it.
    setups: Mutex<Vec<Setup>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Broker {
    /// Starts the supervisor; it runs until `shutdown`, then closes the connection.
    pub fn start(url: &str, name: &str, shutdown: CancellationToken) -> Broker {
        let broker = Broker {
            inner: Arc::new(Inner {
                current: watch::channel(None).0,
                setups: Mutex::new(Vec::new()),
            }),
        };
        tokio::spawn(supervise(
            broker.clone(),
            url.to_string(),
            name.to_string(),
            shutdown,
        ));
        broker
    }

    pub fn is_connected(&self) -> bool {
        self.inner
            .current
            .borrow()
            .as_ref()
            .is_some_and(|c| c.status().connected())
    }

    /// The current connection, waiting up to `timeout` for one.
    pub async fn connection(&self, timeout: Duration) -> Option<Arc<Connection>> {
        let mut rx = self.inner.current.subscribe();
        let wait = rx.wait_for(|c| c.as_ref().is_some_and(|c| c.status().connected()));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(c)) => c.clone(),
            _ => None,
        }
    }

    /// Runs `setup` on every connection from now on, including the current
    /// one (its result is returned then). Topology and consumers go here, so
    /// they come back after a reconnect.
    pub async fn on_connect<F>(&self, setup: F) -> lapin::Result<()>
    where
        F: Fn(Arc<Connection>) -> BoxFuture<'static, lapin::Result<()>> + Send + Sync + 'static,
    {
        let setup: Setup = Arc::new(setup);
        let mut setups = self.inner.setups.lock().await;
        setups.push(setup.clone());
        let current = self.inner.current.borrow().clone();
        match current {
            Some(conn) if conn.status().connected() => setup(conn).await,
            _ => Ok(()),
        }
    }
}

async fn supervise(broker: Broker, url: String, name: String, shutdown: CancellationToken) {
    let shown = redact_url(&url);
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let props = ConnectionProperties::default().with_connection_name(name.clone().into());
        let connected = tokio::select! {
            () = shutdown.cancelled() => break,
            c = Connection::connect(&url, props) => c,
        };
        let conn = match connected {
            Ok(conn) => Arc::new(conn),
            Err(e) => {
                tracing::warn!(broker = %shown, error = %e, retry_in = ?delay, "broker not reachable");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut events = Box::pin(conn.events_listener());
        let setup_ok = {
            let setups = broker.inner.setups.lock().await;
            let mut ok = true;
            for setup in setups.iter() {
                if let Err(e) = setup(conn.clone()).await {
                    tracing::warn!(broker = %shown, error = %e, "setting up the connection failed");
                    ok = false;
                    break;
                }
            }
            if ok {
                broker.inner.current.send_replace(Some(conn.clone()));
            }
            ok
        };
        if !setup_ok {
            let _ = conn.close(320, "setup failed".into()).await;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            continue;
        }
        tracing::info!(broker = %shown, "broker connected");
        delay = Duration::from_millis(100);
        let lost = async {
            while let Some(event) = events.next().await {
                if let lapin::Event::Error(e) = event {
                    return e.to_string();
                }
            }
            "connection ended".to_string()
        };
        tokio::select! {
            () = shutdown.cancelled() => {
                broker.inner.current.send_replace(None);
                let _ = conn.close(200, "shutting down".into()).await;
                break;
            }
            reason = lost => {
                broker.inner.current.send_replace(None);
                tracing::warn!(broker = %shown, %reason, "broker connection lost; reconnecting");
            }
        }
    }
}

/// Readiness: the broker connection is up.
pub struct BrokerCheck(pub Broker);

impl Check for BrokerCheck {
    fn name(&self) -> &str {
        "broker"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self.0.is_connected() {
                Ok(())
            } else {
                Err("not connected".into())
            }
        })
    }
}

/// A server-named queue only this connection sees, deleted with it, and a
/// consumer on it without acknowledgements: for replies and for fan-out
/// to every replica.
pub async fn exclusive_consumer(
    channel: &lapin::Channel,
) -> lapin::Result<(ShortString, lapin::Consumer)> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue.name().clone(), consumer))
}

/// Message headers carrying the current span's trace context.
pub fn trace_headers() -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in telemetry::current_context_fields() {
        table.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    table
}

/// The trace context a message's publisher sent in its headers.
pub fn extract_trace(properties: &BasicProperties) -> opentelemetry::Context {
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty);
    TraceContextPropagator::new().extract(&HeaderTable(headers))
}

struct HeaderTable<'a>(&'a FieldTable);

impl Extractor for HeaderTable<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(&ShortString::from(key))? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}
