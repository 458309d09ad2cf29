//! Two operators, one Lease: one leads; when it stops, the other takes over.

mod common;

use std::time::{Duration, Instant};

use common::FakeApi;
use trellis_operator::{LeaderElectionConfig, Operator, OperatorConfig};

const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/trellis-system/leases/trellis-operator";

fn config(identity: &str) -> OperatorConfig {
    OperatorConfig {
        identity: identity.into(),
        leader_election: Some(LeaderElectionConfig {
            lease_duration: Duration::from_secs(3),
            renew_grace: Duration::from_secs(1),
            ..LeaderElectionConfig::new("trellis-system", identity)
        }),
        ..OperatorConfig::default()
    }
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_failover_on_shutdown() {
    let (client, fake) = FakeApi::new();
    let a = Operator::start(client.clone(), config("replica-a"))
        .await
        .unwrap();
    let b = Operator::start(client, config("replica-b")).await.unwrap();

    wait_for("a leader", Duration::from_secs(10), || {
        a.is_leader() || b.is_leader()
    })
    .await;
    // Stays exclusive across renewals.
    for _ in 0..20 {
        assert!(!(a.is_leader() && b.is_leader()), "two leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease = fake.get(LEASE).expect("lease created");
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    assert_eq!(holder, leader.identity());
    assert!(
        leader
            .metrics()
            .render()
            .contains("trellis_operator_leader 1")
    );
    assert!(
        follower
            .metrics()
            .render()
            .contains("trellis_operator_leader 0")
    );

    let started = Instant::now();
    leader.shutdown().await;
    wait_for("failover", Duration::from_secs(10), || follower.is_leader()).await;
    eprintln!(
        "failover after {:?} (lease released on shutdown)",
        started.elapsed()
    );
    let lease = fake.get(LEASE).unwrap();
    assert_eq!(
        lease["spec"]["holderIdentity"].as_str(),
        Some(follower.identity())
    );

    // Losing the lease (here: another holder took it) stops the controllers.
    fake.update(LEASE, |l| {
        l["spec"]["holderIdentity"] = serde_json::json!("intruder");
        l["spec"]["leaseDurationSeconds"] = serde_json::json!(3600);
        l["spec"]["renewTime"] = serde_json::json!(k8s_openapi::jiff::Timestamp::now().to_string());
    });
    wait_for("the lease to be lost", Duration::from_secs(10), || {
        !follower.is_leader()
    })
    .await;
    wait_for("leader gauge 0", Duration::from_secs(5), || {
        follower
            .metrics()
            .render()
            .contains("trellis_operator_leader 0")
    })
    .await;
    follower.shutdown().await;
}
