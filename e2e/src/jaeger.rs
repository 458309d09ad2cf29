//! Jaeger for the trace tests: the v2 binary (built from its Go module by
//! e2e/kind/tools.sh) run on loopback with in-memory storage, and a trace
//! read back through its query API (`GET /api/traces/{id}`) as a tree of
//! spans, each named by service and by who made it (the app or its
//! `trellis-proxy`, told apart by the `trellis.component` resource attribute).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::delivery::{SHOP, tool};
use crate::local::{Process, free_port};

/// Jaeger v2's configuration: OTLP/gRPC in on `otlp`, memory storage, the
/// query API on `query`, health on `health`.
pub fn config(otlp: &str, query: &str, query_grpc: &str, health: &str) -> String {
    format!(
        r#"service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics: {{level: none}}
    logs: {{level: warn}}
extensions:
  healthcheckv2:
    use_v2: true
    http: {{endpoint: "{health}"}}
  jaeger_query:
    storage: {{traces: memory}}
    http: {{endpoint: "{query}"}}
    grpc: {{endpoint: "{query_grpc}"}}
  jaeger_storage:
    backends:
      memory: {{memory: {{max_traces: 10000}}}}
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "{otlp}"}}
processors:
  batch: {{timeout: 200ms}}
exporters:
  jaeger_storage_exporter: {{trace_storage: memory}}
"#
    )
}

/// A Jaeger process on free loopback ports; killed when dropped.
pub struct LocalJaeger {
    /// Where OTLP/gRPC exporters send spans, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: String,
    /// Base URL of the query API.
    pub query: String,
    _process: Process,
}

impl LocalJaeger {
    /// Starts Jaeger with its config in `dir` and waits until it is healthy.
    pub async fn start(dir: &Path) -> anyhow::Result<LocalJaeger> {
        let jaeger = tool("jaeger")?;
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
        let (otlp, query, query_grpc, health) = (port(), port(), port(), port());
        let file = dir.join("jaeger.yaml");
        std::fs::write(&file, config(&otlp, &query, &query_grpc, &health))?;
        let process = Process(
            Command::new(&jaeger)
                .arg(format!("--config=file:{}", file.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {}", jaeger.display()))?,
        );
        let http = client()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http
            .get(format!("http://{health}/status"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if Instant::now() > deadline {
                bail!("Jaeger not healthy in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(LocalJaeger {
            otlp_endpoint: format!("http://{otlp}"),
            query: format!("http://{query}"),
            _process: process,
        })
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// The services whose events notifications consumes.
const SHOP_SENDERS: [&str; 2] = ["orders", "payments"];

/// Who made a span: the service's app or its sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    App,
    Proxy,
}

/// One span of a trace, as Jaeger's query API returns it.
#[derive(Clone, Debug)]
pub struct Span {
    pub id: String,
    pub parent: Option<String>,
    pub service: String,
    pub component: Component,
    /// `server`, `client`, `consumer`, `producer` or `internal`.
    pub kind: String,
    pub operation: String,
    pub start: u64,
}

/// The spans of one trace.
#[derive(Clone, Debug)]
pub struct Trace {
    pub id: String,
    pub spans: Vec<Span>,
}

impl Trace {
    /// Reads the first trace of a query API answer (`{"data": [trace]}`).
    pub fn from_query(id: &str, answer: &Value) -> anyhow::Result<Trace> {
        let trace = &answer["data"][0];
        let processes = trace["processes"]
            .as_object()
            .with_context(|| format!("no trace {id} in {answer}"))?;
        let mut spans = Vec::new();
        for s in trace["spans"].as_array().into_iter().flatten() {
            let process = &processes[s["processID"].as_str().unwrap_or_default()];
            let tag = |tags: &Value, key: &str| {
                tags.as_array()
                    .and_then(|t| t.iter().find(|t| t["key"] == key))
                    .and_then(|t| t["value"].as_str())
                    .map(str::to_string)
            };
            let component = match tag(&process["tags"], "trellis.component").as_deref() {
                Some("proxy") => Component::Proxy,
                _ => Component::App,
            };
            spans.push(Span {
                id: s["spanID"].as_str().unwrap_or_default().to_string(),
                parent: s["references"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                    .and_then(|r| r["spanID"].as_str())
                    .map(str::to_string),
                service: process["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                component,
                kind: tag(&s["tags"], "span.kind").unwrap_or_else(|| "internal".into()),
                operation: s["operationName"].as_str().unwrap_or_default().to_string(),
                start: s["startTime"].as_u64().unwrap_or_default(),
            });
        }
        Ok(Trace {
            id: id.to_string(),
            spans,
        })
    }

    /// Polls `query` (a query API base URL) until the trace is complete,
    /// that is `problems` of it are none; span export is batched, so spans
    /// arrive over a few seconds. The error names what was still missing.
    pub async fn wait_for(
        query: &str,
        id: &str,
        limit: Duration,
        problems: impl Fn(&Trace) -> Vec<String>,
    ) -> anyhow::Result<Trace> {
        let http = client()?;
        let deadline = Instant::now() + limit;
        loop {
            let answer: Value = match http.get(format!("{query}/api/traces/{id}")).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let (left, tree) = match Trace::from_query(id, &answer) {
                Ok(t) => match problems(&t) {
                    left if left.is_empty() => return Ok(t),
                    left => (left, t.tree()),
                },
                Err(e) => (vec![e.to_string()], String::new()),
            };
            if Instant::now() > deadline {
                bail!("trace {id} after {limit:?}: {left:#?}\n{tree}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Those of `services` without both an app span and a sidecar span, as
    /// `service (app)` / `service (proxy)`.
    pub fn missing(&self, services: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for s in services {
            for (component, label) in [(Component::App, "app"), (Component::Proxy, "proxy")] {
                if !self
                    .spans
                    .iter()
                    .any(|x| x.service == *s && x.component == component)
                {
                    out.push(format!("{s} ({label})"));
                }
            }
        }
        out
    }

    pub fn span(&self, id: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.id == id)
    }

    /// Spans whose parent is not in the trace.
    pub fn roots(&self) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| s.parent.as_deref().and_then(|p| self.span(p)).is_none())
            .collect()
    }

    /// The span and its ancestors, nearest first.
    pub fn ancestry<'a>(&'a self, span: &'a Span) -> Vec<&'a Span> {
        let mut out = vec![span];
        let mut at = span;
        while let Some(parent) = at.parent.as_deref().and_then(|p| self.span(p)) {
            if out.iter().any(|s| s.id == parent.id) {
                break;
            }
            out.push(parent);
            at = parent;
        }
        out
    }

    /// Whether a call from `from` to `to` went app → sidecar → sidecar →
    /// app: `to`'s app span under `to`'s inbound sidecar span, under
    /// `from`'s outbound sidecar span, under one of `from`'s app spans.
    pub fn sidecar_hop(&self, from: &str, to: &str) -> bool {
        let parent = |s: &Span| s.parent.as_deref().and_then(|p| self.span(p));
        let is = |s: &Span, service: &str, component: Component, kind: &str| {
            s.service == service && s.component == component && s.kind == kind
        };
        self.spans.iter().any(|callee| {
            let Some(inbound) = parent(callee) else {
                return false;
            };
            let Some(outbound) = parent(inbound) else {
                return false;
            };
            is(callee, to, Component::App, "server")
                && is(inbound, to, Component::Proxy, "server")
                && is(outbound, from, Component::Proxy, "client")
                && parent(outbound)
                    .is_some_and(|s| s.service == from && s.component == Component::App)
        })
    }

    /// Whether `to`'s app consumed a message that `from`'s app sent: a
    /// consumer span of `to` whose nearest ancestor outside `to` is one of
    /// `from`'s app spans (no sidecar between: the hop is the broker).
    pub fn message_hop(&self, from: &str, to: &str) -> bool {
        self.spans
            .iter()
            .filter(|s| s.service == to && s.component == Component::App && s.kind == "consumer")
            .any(|s| {
                self.ancestry(s)
                    .into_iter()
                    .find(|a| a.service != to)
                    .is_some_and(|a| a.service == from && a.component == Component::App)
            })
    }

    /// What the shop's order trace lacks: one root (the gateway's inbound
    /// sidecar), every service's app and sidecar spans, each synchronous
    /// call through both sidecars, and notifications reached over the broker.
    pub fn shop_order_problems(&self) -> Vec<String> {
        // Nothing calls notifications over HTTP: no sidecar span of its own.
        let mut problems: Vec<String> = self
            .missing(&SHOP)
            .into_iter()
            .filter(|m| m != "notifications (proxy)")
            .map(|m| format!("no span from {m}"))
            .collect();
        let roots = self.roots();
        match roots.as_slice() {
            [root] if root.service == "gateway" && root.component == Component::Proxy => {}
            _ => problems.push(format!(
                "not one root at the gateway's sidecar: {:?}",
                roots
                    .iter()
                    .map(|s| format!("{} {:?} {}", s.service, s.component, s.operation))
                    .collect::<Vec<_>>()
            )),
        }
        for (from, to) in [
            ("gateway", "orders"),
            ("orders", "users"),
            ("orders", "products"),
            ("orders", "payments"),
        ] {
            if !self.sidecar_hop(from, to) {
                problems.push(format!("no {from} → {to} call through both sidecars"));
            }
        }
        if !SHOP_SENDERS
            .iter()
            .any(|from| self.message_hop(from, "notifications"))
        {
            problems.push("no notifications consumer span under an orders or payments span".into());
        }
        problems
    }

    /// The span tree, one line per span (`service [app|proxy] kind:
    /// operation`), children indented under their parent in start order.
    pub fn tree(&self) -> String {
        let mut children: BTreeMap<Option<&str>, Vec<&Span>> = BTreeMap::new();
        for s in &self.spans {
            let parent = s.parent.as_deref().filter(|p| self.span(p).is_some());
            children.entry(parent).or_default().push(s);
        }
        for list in children.values_mut() {
            list.sort_by_key(|s| s.start);
        }
        let mut out = String::new();
        let mut stack: Vec<(&Span, usize)> = children
            .get(&None)
            .into_iter()
            .flatten()
            .rev()
            .map(|s| (*s, 0))
            .collect();
        while let Some((s, depth)) = stack.pop() {
            let who = match s.component {
                Component::App => "app",
                Component::Proxy => "proxy",
            };
            out.push_str(&format!(
                "{:indent$}{} [{who}] {}: {}\n",
                "",
                s.service,
                s.kind,
                s.operation,
                indent = depth * 2
            ));
            for c in children
                .get(&Some(s.id.as_str()))
                .into_iter()
                .flatten()
                .rev()
            {
                stack.push((c, depth + 1));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer() -> Value {
        let span = |id: &str, parent: Option<&str>, p: &str, op: &str, kind: &str, t: u64| {
            let refs = parent
                .map(|p| json!([{"refType": "CHILD_OF", "spanID": p}]))
                .unwrap_or(json!([]));
            json!({"spanID": id, "processID": p, "operationName": op, "startTime": t,
                   "references": refs, "tags": [{"key": "span.kind", "value": kind}]})
        };
        json!({"data": [{
            "processes": {
                "p1": {"serviceName": "gateway", "tags": [{"key": "trellis.component", "value": "proxy"}]},
                "p2": {"serviceName": "gateway", "tags": []},
                "p3": {"serviceName": "orders", "tags": []},
            },
            "spans": [
                span("c", Some("b"), "p3", "process", "consumer", 30),
                span("a", None, "p1", "POST", "server", 10),
                span("b", Some("a"), "p2", "POST /api/orders", "server", 20),
            ]
        }]})
    }

    #[test]
    fn spans_are_told_apart_by_component_and_printed_as_a_tree() {
        let t = Trace::from_query("t", &answer()).unwrap();
        assert_eq!(
            t.tree(),
            "gateway [proxy] server: POST\n  gateway [app] server: POST /api/orders\n    orders [app] consumer: process\n"
        );
        assert_eq!(t.missing(&["gateway", "orders"]), ["orders (proxy)"]);
        assert_eq!(t.roots().len(), 1);
        let c = t.span("c").unwrap();
        let up: Vec<_> = t.ancestry(c).iter().map(|s| s.id.as_str()).collect();
        assert_eq!(up, ["c", "b", "a"]);
    }

    #[test]
    fn hops_follow_parents() {
        let t = Trace::from_query("t", &answer()).unwrap();
        assert!(t.message_hop("gateway", "orders"));
        assert!(!t.message_hop("payments", "orders"));
        assert!(!t.sidecar_hop("gateway", "orders"));
    }

    #[test]
    fn an_answer_without_a_trace_is_an_error() {
        assert!(Trace::from_query("t", &json!({"data": []})).is_err());
    }
}
