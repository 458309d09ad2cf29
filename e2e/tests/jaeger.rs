//! One request through two real `trellis-proxy` processes on 127.0.0.1 is
//! one trace in a real Jaeger (built from its Go module by
//! e2e/kind/tools.sh, run as the OTLP receiver with in-memory storage), read
//! back through Jaeger's query API: the caller's client span and the
//! callee's server span, parent and child, in the trace the caller started.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_e2e::delivery::tool;
use trellis_e2e::local::{Process, free_port, start_echo, start_sidecar};

/// Jaeger v2's configuration: OTLP/gRPC in, memory storage, query API out, all on loopback.
fn jaeger_config(
    otlp: SocketAddr,
    query: SocketAddr,
    query_grpc: SocketAddr,
    health: SocketAddr,
) -> String {
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

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_two_sidecars_is_one_trace_in_jaeger() {
    let jaeger = tool("jaeger").unwrap();
    let dir = std::env::temp_dir().join(format!("trellis-jaeger-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (otlp, query, query_grpc, health) = (loopback(), loopback(), loopback(), loopback());
    std::fs::write(
        dir.join("jaeger.yaml"),
        jaeger_config(otlp, query, query_grpc, health),
    )
    .unwrap();
    let _jaeger = Process(
        Command::new(&jaeger)
            .arg(format!(
                "--config=file:{}",
                dir.join("jaeger.yaml").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("http://{health}/status"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "Jaeger not healthy in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let endpoint = format!("http://{otlp}");
    let (users_app, _) = start_echo("users").await;
    let (web_app, _) = start_echo("web").await;
    let users = start_sidecar("users", users_app, &[], &[], Some(&endpoint), &dir);
    let web = start_sidecar(
        "web",
        web_app,
        &[("users", vec![users.inbound])],
        &[],
        Some(&endpoint),
        &dir,
    );

    // The caller's app started the trace; its sidecar continues it.
    let trace_id = format!("{:032x}", (u128::from(std::process::id()) << 64) | 0x7e15);
    let parent = "00f067aa0ba902b7";
    let via_web = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", web.outbound)).unwrap())
        .build()
        .unwrap();
    let rsp = via_web
        .get("http://users/api/v1/users/1")
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .send()
        .await
        .unwrap();
    assert!(rsp.status().is_success(), "{}", rsp.status());

    // Export is batched: poll until both sidecars' spans are in.
    let deadline = Instant::now() + Duration::from_secs(30);
    let trace = loop {
        let got: Value = http
            .get(format!("http://{query}/api/traces/{trace_id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        let trace = got["data"][0].clone();
        let services: Vec<_> = trace["processes"]
            .as_object()
            .map(|p| {
                p.values()
                    .filter_map(|v| v["serviceName"].as_str())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if services.iter().any(|s| s == "web") && services.iter().any(|s| s == "users") {
            break trace;
        }
        assert!(
            Instant::now() < deadline,
            "no trace with web and users spans: {got}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let processes: BTreeMap<String, String> = trace["processes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["serviceName"].as_str().unwrap().to_string()))
        .collect();
    let spans = trace["spans"].as_array().unwrap();
    let service_of = |s: &Value| processes[s["processID"].as_str().unwrap()].clone();
    let parent_of = |s: &Value| {
        s["references"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
            .and_then(|r| r["spanID"].as_str())
            .map(str::to_string)
    };
    let kind_of = |s: &Value| {
        s["tags"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["key"] == "span.kind"))
            .and_then(|t| t["value"].as_str())
            .unwrap_or("")
            .to_string()
    };
    println!("trace {trace_id}:");
    for s in spans {
        println!(
            "  {} {} [{}] {} parent {:?}",
            s["spanID"].as_str().unwrap(),
            service_of(s),
            kind_of(s),
            s["operationName"].as_str().unwrap(),
            parent_of(s)
        );
    }
    assert!(
        spans
            .iter()
            .all(|s| s["traceID"] == trace_id.trim_start_matches('0') || s["traceID"] == trace_id)
    );
    let client = spans
        .iter()
        .find(|s| service_of(s) == "web" && kind_of(s) == "client")
        .expect("a client span from web's sidecar");
    assert_eq!(
        parent_of(client).as_deref(),
        Some(parent),
        "web's span continues the app's"
    );
    let server = spans
        .iter()
        .find(|s| service_of(s) == "users" && kind_of(s) == "server")
        .expect("a server span from users' sidecar");
    assert_eq!(
        parent_of(server).as_deref(),
        client["spanID"].as_str(),
        "users' server span is the child of web's client span"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
