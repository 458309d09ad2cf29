//! OTLP/gRPC export of finished spans, the only place that knows about it.
//!
//! Spans go through a bounded queue to one export task that sends batches
//! with opentelemetry-otlp's tonic exporter. Why not the SDK's
//! `BatchSpanProcessor`: it counts dropped spans but only logs the count at
//! shutdown; here a full queue increments `trellis_spans_dropped_total`
//! right away. Ending a span never waits: when the collector is slow or gone
//! the queue fills and spans are dropped (and counted), requests are not.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// Spans waiting for export; beyond this they are dropped.
const QUEUE: usize = 4096;
const MAX_BATCH: usize = 512;
const INTERVAL: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

enum Msg {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

/// The span processor handed to the tracer provider.
#[derive(Debug)]
pub struct ExportQueue {
    tx: mpsc::Sender<Msg>,
    dropped: IntCounter,
}

/// Flushes what is queued; held by the proxy for shutdown.
#[derive(Clone, Debug)]
pub struct Flusher(mpsc::Sender<Msg>);

impl Flusher {
    /// Exports everything queued so far (bounded by `timeout`).
    pub async fn flush(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Msg::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
    }
}

/// Builds the exporter for `endpoint` and starts its task. Must run inside a
/// tokio runtime (the gRPC channel connects lazily on it).
pub fn start(
    endpoint: &str,
    resource: &Resource,
    dropped: IntCounter,
) -> anyhow::Result<(ExportQueue, Flusher)> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    exporter.set_resource(resource);
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(exporter, rx));
    Ok((
        ExportQueue {
            tx: tx.clone(),
            dropped,
        },
        Flusher(tx),
    ))
}

async fn run(exporter: opentelemetry_otlp::SpanExporter, mut rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flush = tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Span(s)) => {
                    batch.push(*s);
                    if batch.len() < MAX_BATCH {
                        continue;
                    }
                    None
                }
                Some(Msg::Flush(done)) => Some(done),
                None => break,
            },
            _ = tick.tick() => None,
        };
        // A flush request follows every span queued before it, so draining
        // what is already queued is enough.
        while let Ok(Msg::Span(s)) = rx.try_recv() {
            batch.push(*s);
        }
        export(&exporter, &mut batch).await;
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }
    export(&exporter, &mut batch).await;
}

async fn export(exporter: &opentelemetry_otlp::SpanExporter, batch: &mut Vec<SpanData>) {
    while !batch.is_empty() {
        let n = batch.len().min(MAX_BATCH);
        let chunk: Vec<SpanData> = batch.drain(..n).collect();
        match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(chunk)).await {
            Ok(Ok(())) => debug!(spans = n, "exported spans"),
            Ok(Err(e)) => warn!(error = %e, spans = n, "span export failed"),
            Err(_) => warn!(spans = n, "span export timed out"),
        }
    }
}

impl SpanProcessor for ExportQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(Msg::Span(Box::new(span))).is_err() {
            self.dropped.inc();
        }
    }

    /// Asynchronous here: [`Flusher::flush`] is the awaitable one.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}
