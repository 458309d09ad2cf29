//! Request-reply over the broker. The client publishes a JSON request to a
//! named queue with a correlation id and its own reply queue, and waits (up
//! to a timeout of its choosing) for the reply with that id; the server
//! consumes the queue and answers each message to its `reply-to`. A failed
//! request is answered with a problem (`application/problem+json`), so the
//! caller learns why instead of waiting out its timeout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{Broker, exclusive_consumer, extract_trace, trace_headers};
use crate::problem::{self, Problem};

const JSON: &str = "application/json";

/// What a handler answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Ok(serde_json::Value),
    Err(Problem),
}

/// Serves `queue`: each request body goes to `handler`, its reply back to
/// the caller. Declares the queue (non-durable: a request outliving its
/// caller's timeout is worthless) and consumes with `prefetch` in flight.
pub async fn serve<H, Fut>(
    broker: &Broker,
    queue: &'static str,
    prefetch: u16,
    handler: H,
) -> lapin::Result<()>
where
    H: Fn(Vec<u8>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    broker
        .on_connect(move |conn: Arc<Connection>| {
            let handler = handler.clone();
            Box::pin(async move {
                let channel = conn.create_channel().await?;
                channel
                    .queue_declare(
                        queue.into(),
                        QueueDeclareOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                channel
                    .basic_qos(prefetch, BasicQosOptions::default())
                    .await?;
                let consumer = channel
                    .basic_consume(
                        queue.into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                tokio::spawn(answer_requests(channel, consumer, queue, handler));
                Ok(())
            })
        })
        .await
}

async fn answer_requests<H, Fut>(
    channel: Channel,
    mut consumer: lapin::Consumer,
    queue: &'static str,
    handler: H,
) where
    H: Fn(Vec<u8>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(queue, error = %e, "request consumer stopped");
                return;
            }
        };
        let channel = channel.clone();
        let handler = handler.clone();
        let span = tracing::info_span!("amqp.rpc.server", otel.kind = "consumer", queue);
        let _ = span.set_parent(extract_trace(&delivery.properties));
        tokio::spawn(
            async move {
                let Some(reply_to) = delivery.properties.reply_to().clone() else {
                    tracing::warn!(queue, "request without reply-to dropped");
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                    return;
                };
                let (content_type, body) = match handler(delivery.data.clone()).await {
                    Reply::Ok(value) => (JSON, serde_json::to_vec(&value).unwrap_or_default()),
                    Reply::Err(p) => (
                        problem::CONTENT_TYPE,
                        serde_json::to_vec(&p).unwrap_or_default(),
                    ),
                };
                let mut props = BasicProperties::default()
                    .with_content_type(content_type.into())
                    .with_headers(trace_headers());
                if let Some(id) = delivery.properties.correlation_id().clone() {
                    props = props.with_correlation_id(id);
                }
                let sent = channel
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await;
                let settled = match sent {
                    Ok(_) => delivery.ack(BasicAckOptions::default()).await,
                    Err(e) => {
                        tracing::warn!(queue, error = %e, "reply not sent");
                        // Once more if this was the first try; a caller may still wait.
                        let requeue = !delivery.redelivered;
                        delivery
                            .nack(BasicNackOptions {
                                requeue,
                                ..Default::default()
                            })
                            .await
                    }
                };
                if let Err(e) = settled {
                    tracing::warn!(queue, error = %e, "settling a request failed");
                }
            }
            .instrument(span),
        );
    }
}

/// Why a call got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("nobody serves {queue}")]
    NoServer { queue: String },
    #[error("no reply from {queue} within {after:?}")]
    Timeout { queue: String, after: Duration },
    #[error("{0}")]
    Remote(Problem),
    #[error("the reply is not what was expected: {0}")]
    Decode(String),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

type Pending = Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<lapin::message::Delivery>>>>;

/// The calling side: one exclusive reply queue per connection, replies
/// matched to waiting calls by correlation id.
#[derive(Clone)]
pub struct RpcClient {
    broker: Broker,
    pending: Pending,
    /// The channel publishing requests and the reply queue's name.
    reply: Arc<tokio::sync::watch::Sender<Option<(Channel, String)>>>,
}

impl RpcClient {
    pub async fn new(broker: &Broker) -> lapin::Result<RpcClient> {
        let client = RpcClient {
            broker: broker.clone(),
            pending: Pending::default(),
            reply: Arc::new(tokio::sync::watch::channel(None).0),
        };
        let (pending, reply) = (client.pending.clone(), client.reply.clone());
        broker
            .on_connect(move |conn: Arc<Connection>| {
                let (pending, reply) = (pending.clone(), reply.clone());
                Box::pin(async move {
                    let channel = conn.create_channel().await?;
                    channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await?;
                    let (queue, consumer) = exclusive_consumer(&channel).await?;
                    tokio::spawn(route_replies(consumer, pending));
                    reply.send_replace(Some((channel, queue.as_str().to_string())));
                    Ok(())
                })
            })
            .await?;
        Ok(client)
    }

    /// Sends `request` to `queue` and waits at most `timeout` for the reply.
    pub async fn call<Req, Resp>(
        &self,
        queue: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || RpcError::Timeout {
            queue: queue.to_string(),
            after: timeout,
        };
        let mut ready = self.reply.subscribe();
        let (channel, reply_to) = match tokio::time::timeout_at(
            deadline,
            ready.wait_for(|r| r.as_ref().is_some_and(|(c, _)| c.status().connected())),
        )
        .await
        {
            Ok(Ok(r)) => r.clone().ok_or(RpcError::NotConnected)?,
            _ if !self.broker.is_connected() => return Err(RpcError::NotConnected),
            _ => return Err(timed_out()),
        };
        let body = serde_json::to_vec(request).map_err(|e| RpcError::Decode(e.to_string()))?;
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(correlation_id.clone(), tx);
        let _forget = ForgetOnDrop(&self.pending, &correlation_id);

        let props = BasicProperties::default()
            .with_content_type(JSON.into())
            .with_correlation_id(correlation_id.as_str().into())
            .with_reply_to(reply_to.into())
            // The broker drops a request nobody took before the caller gave up.
            .with_expiration(timeout.as_millis().to_string().into())
            .with_headers(trace_headers());
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(Some(_)) | Confirmation::Nack(_) => {
                return Err(RpcError::NoServer {
                    queue: queue.to_string(),
                });
            }
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
        }
        let delivery = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(d)) => d,
            _ => return Err(timed_out()),
        };
        let is_problem = delivery
            .properties
            .content_type()
            .as_ref()
            .is_some_and(|ct| ct.as_str() == problem::CONTENT_TYPE);
        if is_problem {
            let p: Problem = serde_json::from_slice(&delivery.data)
                .map_err(|e| RpcError::Decode(e.to_string()))?;
            return Err(RpcError::Remote(p));
        }
        serde_json::from_slice(&delivery.data).map_err(|e| RpcError::Decode(e.to_string()))
    }
}

/// Forgets a waiting call however `call` ends (timeout, error, cancel).
struct ForgetOnDrop<'a>(&'a Pending, &'a str);

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.1);
    }
}

async fn route_replies(mut consumer: lapin::Consumer, pending: Pending) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let Some(id) = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str().to_string())
        else {
            continue;
        };
        // A reply nobody waits for any more (it came too late) is dropped.
        let waiter = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(delivery);
        }
    }
}
