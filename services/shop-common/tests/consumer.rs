//! A work queue against the real RabbitMQ: a failing message is retried
//! with its count after a growing delay, then dead-lettered with the
//! reason, and the messages behind it keep flowing (prefetch 1).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shop_common::amqp::Broker;
use shop_common::consumer::{self, Failure, QueueSpec, RetryPolicy};
use shop_testkit::broker::{drain, publish_raw};
use tokio_util::sync::CancellationToken;

/// What the handler saw: (body, retries, when).
type Seen = Arc<Mutex<Vec<(String, u32, Instant)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_backoff_then_dead_letters_and_keeps_flowing() {
    let Some(url) = shop_testkit::amqp_vhost() else {
        return;
    };
    let shutdown = CancellationToken::new();
    let broker = Broker::start(&url, "consumer-test", shutdown.clone());
    let spec = QueueSpec {
        queue: "work".into(),
        events: vec![],
        prefetch: 1,
        retry: RetryPolicy {
            max_retries: 2,
            first_delay: Duration::from_millis(200),
            factor: 4,
        },
    };
    let seen: Seen = Arc::default();
    let log = seen.clone();
    consumer::consume(&broker, spec, move |message| {
        let log = log.clone();
        async move {
            let body = String::from_utf8_lossy(&message.body).into_owned();
            log.lock()
                .unwrap()
                .push((body.clone(), message.retries, Instant::now()));
            match body.as_str() {
                // Fails once, then works.
                "flaky" if message.retries == 0 => Err(Failure::Retry("not yet".into())),
                "always failing" => Err(Failure::Retry("the database is down".into())),
                _ => Ok(()),
            }
        }
    })
    .await
    .unwrap();
    assert!(broker.connection(Duration::from_secs(10)).await.is_some());
    // Give the consumer's setup (declare, consume) a moment on the new connection.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for (id, body) in [("m1", "always failing"), ("m2", "flaky"), ("m3", "fine")] {
        publish_raw(&url, "", "work", id, body.as_bytes()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let dead = drain(&url, "work.dlq").await;
        if !dead.is_empty() {
            break dead;
        }
        assert!(Instant::now() < deadline, "nothing dead-lettered: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].raw, b"always failing");
    assert_eq!(
        dead[0].headers["x-error"],
        "gave up after 2 retries: the database is down"
    );
    assert_eq!(dead[0].headers["x-retry-count"], "2");

    let seen = seen.lock().unwrap().clone();
    let tries = |body: &str| -> Vec<(u32, Instant)> {
        seen.iter()
            .filter(|(b, _, _)| b == body)
            .map(|(_, n, at)| (*n, *at))
            .collect()
    };
    // The poison message did not hold up the others.
    assert_eq!(tries("fine").len(), 1);
    let flaky = tries("flaky");
    assert_eq!(flaky.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1]);
    let failing = tries("always failing");
    assert_eq!(failing.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1, 2]);
    // Each retry waited at least its delay: 200 ms, then 800 ms.
    assert!(failing[1].1 - failing[0].1 >= Duration::from_millis(200));
    assert!(failing[2].1 - failing[1].1 >= Duration::from_millis(800));
    // While it waited for its retries, the queue went on: the messages
    // behind it were handled before it was given up.
    let position =
        |body: &str, retries: u32| seen.iter().position(|s| s.0 == body && s.1 == retries);
    assert!(
        position("fine", 0) < position("always failing", 2),
        "{seen:?}"
    );
    shutdown.cancel();
}
