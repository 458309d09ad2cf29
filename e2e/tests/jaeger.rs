//! One request through two real `trellis-proxy` processes on 127.0.0.1 is
//! one trace in a real Jaeger (built from its Go module by
//! e2e/kind/tools.sh, run as the OTLP receiver with in-memory storage), read
//! back through Jaeger's query API: the caller's client span and the
//! callee's server span, parent and child, in the trace the caller started.

use std::time::Duration;

use trellis_e2e::jaeger::{LocalJaeger, Trace};
use trellis_e2e::local::{start_echo, start_sidecar};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_two_sidecars_is_one_trace_in_jaeger() {
    let dir = std::env::temp_dir().join(format!("trellis-jaeger-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jaeger = LocalJaeger::start(&dir).await.unwrap();

    let endpoint = jaeger.otlp_endpoint.clone();
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

    // Only the sidecars export here (the echo apps do not trace).
    let trace = Trace::wait_for(&jaeger.query, &trace_id, Duration::from_secs(30), |t| {
        let mut missing = t.missing(&["web", "users"]);
        missing.retain(|m| m.ends_with("(proxy)"));
        missing
    })
    .await
    .unwrap();
    println!("trace {trace_id}:\n{}", trace.tree());

    let client = trace
        .spans
        .iter()
        .find(|s| s.service == "web" && s.kind == "client")
        .expect("a client span from web's sidecar");
    assert_eq!(
        client.parent.as_deref(),
        Some(parent),
        "web's span continues the app's"
    );
    let server = trace
        .spans
        .iter()
        .find(|s| s.service == "users" && s.kind == "server")
        .expect("a server span from users' sidecar");
    assert_eq!(
        server.parent,
        Some(client.id.clone()),
        "users' server span is the child of web's client span"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
