//! A reconcile against an API server that accepts connections and never
//! answers ends with an error (and so is retried), instead of holding its
//! object forever: the controller starts no second reconcile of an object
//! while one is in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::net::TcpListener;
use trellis_api::crd::MeshService;
use trellis_api::render::Settings;
use trellis_operator::controller::{Context, mesh_service};
use trellis_operator::metrics::Metrics;
use trellis_operator::{Error, client};

/// Far longer than any timeout under test: reaching it means the reconcile hung.
const HUNG: Duration = Duration::from_secs(90);

/// A TCP listener on 127.0.0.1 that accepts every connection, keeps it open
/// and never reads or writes a byte.
async fn stalled_api_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

fn config(addr: SocketAddr) -> kube::Config {
    kube::Config::new(format!("http://{addr}").parse().unwrap())
}

fn context(client: Client) -> Context {
    Context::new(client, Settings::default(), Metrics::new(), None)
}

fn service() -> Arc<MeshService> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mesh.trellis.dev/v1alpha1",
            "kind": "MeshService",
            "metadata": {"name": "web", "namespace": "shop", "uid": "uid-web", "generation": 1},
            "spec": {"image": "app:1", "port": 8080},
        }))
        .unwrap(),
    )
}

#[tokio::test]
async fn a_request_the_api_server_never_answers_times_out() {
    let addr = stalled_api_server().await;
    let config = client::with_timeouts(config(addr), Duration::from_secs(1));
    let ctx = Arc::new(context(Client::try_from(config).unwrap()));
    let result = tokio::time::timeout(HUNG, mesh_service::reconcile(service(), ctx))
        .await
        .expect("the reconcile hung on an unanswered request");
    match result {
        Err(Error::Kube { source, .. }) => {
            assert!(
                source.to_string().contains("timed out")
                    || format!("{source:?}").contains("TimedOut"),
                "not a timeout: {source:?}"
            );
        }
        other => panic!("expected a client error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reconcile_that_does_not_finish_is_given_up() {
    let addr = stalled_api_server().await;
    // No client timeouts: only the reconcile's own deadline can end it.
    let mut ctx = context(Client::try_from(config(addr)).unwrap());
    ctx.reconcile_timeout = Duration::from_secs(1);
    let result = tokio::time::timeout(HUNG, mesh_service::reconcile(service(), Arc::new(ctx)))
        .await
        .expect("the reconcile hung past its deadline");
    assert!(
        matches!(result, Err(Error::Timeout(t)) if t == Duration::from_secs(1)),
        "{result:?}"
    );
}
