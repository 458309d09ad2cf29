//! Calls through the pod's outbound sidecar: single calls and open-loop load.
//!
//! Requests go to the sidecar's outbound listener (`TRELLIS_OUTBOUND`, which
//! the injector sets) with the called service in `Host`, which is what an app
//! using `HTTP_PROXY=http://127.0.0.1:4140` sends for `http://<service>/...`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::api::{CallResult, CallSpec, LoadReport, LoadSpec};

/// An HTTP/1.1 client pinned to the outbound sidecar.
#[derive(Clone)]
pub struct Outbound {
    address: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Outbound {
    /// `address`: the outbound listener, `host:port`.
    pub fn new(address: String) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Outbound { address, client }
    }

    /// One request; failures to get any answer are in `error`.
    pub async fn call(
        &self,
        authority: &str,
        method: &str,
        path: &str,
        body: &str,
        timeout: Duration,
    ) -> CallResult {
        let failed = |e: String| CallResult {
            status: 0,
            body: String::new(),
            trellis_error: None,
            fallback: false,
            error: Some(e),
        };
        let req = match http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.address))
            .header(http::header::HOST, authority)
            .body(Full::new(Bytes::from(body.to_string())))
        {
            Ok(r) => r,
            Err(e) => return failed(format!("bad request: {e}")),
        };
        let answer = async {
            let rsp = self.client.request(req).await.map_err(|e| {
                use std::error::Error as _;
                let connect = e.is_connect();
                let source = e.source().map(|s| format!(": {s}")).unwrap_or_default();
                format!("{}{e}{source}", if connect { "connect: " } else { "" })
            })?;
            let (parts, body) = rsp.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok::<_, String>(CallResult {
                status: parts.status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
                trellis_error: parts
                    .headers
                    .get("x-trellis-error")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from),
                fallback: parts.headers.contains_key("x-trellis-fallback"),
                error: None,
            })
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => failed(e),
            Err(_) => failed("timeout".into()),
        }
    }

    /// `spec.count` calls, one after another.
    pub async fn calls(&self, spec: &CallSpec) -> Vec<CallResult> {
        let mut results = Vec::with_capacity(spec.count as usize);
        for _ in 0..spec.count {
            results.push(
                self.call(
                    &spec.authority,
                    &spec.method,
                    &spec.path,
                    &spec.body,
                    Duration::from_secs(10),
                )
                .await,
            );
        }
        results
    }
}

/// Adds one finished request to a report.
pub fn record(report: &mut LoadReport, result: &CallResult) {
    report.completed += 1;
    if result.status != 0 {
        *report.statuses.entry(result.status).or_default() += 1;
    }
    if (200..300).contains(&result.status) {
        report.ok += 1;
        if let Some(echo) = result.echo() {
            *report.pods.entry(echo.pod).or_default() += 1;
            *report.versions.entry(echo.version).or_default() += 1;
        }
        return;
    }
    *report.failures.entry(failure_kind(result)).or_default() += 1;
}

/// A short, low-cardinality name for why a request failed.
pub fn failure_kind(result: &CallResult) -> String {
    if let Some(reason) = &result.trellis_error {
        return format!("trellis-{reason}");
    }
    if result.status != 0 {
        return format!("status-{}", result.status);
    }
    match result.error.as_deref() {
        Some("timeout") => "timeout".into(),
        Some(e) if e.starts_with("connect") => "connect".into(),
        Some(e) if e.starts_with("body") => "body".into(),
        _ => "error".into(),
    }
}

/// Runs `spec` to the end, updating `report` as answers come in.
pub async fn run(outbound: Outbound, spec: LoadSpec, report: Arc<Mutex<LoadReport>>) {
    let started = Instant::now();
    if let Ok(mut r) = report.lock() {
        r.spec_total = spec.total;
    }
    let period = Duration::from_secs_f64(1.0 / f64::from(spec.rps.max(1)));
    let mut tick = tokio::time::interval(period);
    // Open loop: a late tick is sent at once rather than skipped.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let timeout = Duration::from_millis(spec.timeout_ms);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.total {
        tick.tick().await;
        let (outbound, spec, shared) = (outbound.clone(), spec.clone(), report.clone());
        tasks.spawn(async move {
            let result = outbound
                .call(&spec.authority, "GET", &spec.path, "", timeout)
                .await;
            if let Ok(mut r) = shared.lock() {
                record(&mut r, &result);
            }
        });
        if let Ok(mut r) = report.lock() {
            r.sent += 1;
        }
        // Reap finished tasks so a long run does not hold them all.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    if let Ok(mut r) = report.lock() {
        r.elapsed_ms = started.elapsed().as_millis() as u64;
        r.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: u16, body: &str, trellis: Option<&str>, error: Option<&str>) -> CallResult {
        CallResult {
            status,
            body: body.into(),
            trellis_error: trellis.map(String::from),
            fallback: false,
            error: error.map(String::from),
        }
    }

    #[test]
    fn records_successes_by_pod_and_failures_by_kind() {
        let mut r = LoadReport::default();
        let echo = r#"{"pod":"a","method":"GET","path":"/","version":"1"}"#;
        record(&mut r, &result(200, echo, None, None));
        record(&mut r, &result(503, "", Some("circuit-open"), None));
        record(&mut r, &result(503, "", None, None));
        record(&mut r, &result(0, "", None, Some("timeout")));
        record(&mut r, &result(0, "", None, Some("connect: refused")));
        assert_eq!((r.completed, r.ok), (5, 1));
        assert_eq!(r.pods["a"], 1);
        assert_eq!(r.versions["1"], 1);
        assert_eq!(r.statuses[&503], 2);
        let kinds: Vec<&str> = r.failures.keys().map(String::as_str).collect();
        assert_eq!(
            kinds,
            ["connect", "status-503", "timeout", "trellis-circuit-open"]
        );
    }
}
