//! The event store and the read model on a real database (SQLite and
//! Postgres): optimistic concurrency on one stream, nothing staged twice or
//! lost, and a rebuilt read model equal to the live one.

use orders::domain::{Item, Order, OrderCreated, OrderEvent, Status, status_change};
use orders::store::{AlsoWrite, EventStore, StoreError};
use orders::view;
use shop_common::config::DatabaseSettings;
use shop_common::db::Backend;
use shop_common::outbox;
use shop_testkit::{TestDb, db_tests};
use sqlx::Row;

db_tests!(
    two_writers_of_one_order_one_wins,
    a_rebuilt_read_model_equals_the_live_one,
);

async fn store(db: &TestDb) -> EventStore {
    shop_common::telemetry::init_for_tests();
    let db = orders::database(&DatabaseSettings::new(&db.url))
        .await
        .expect("the orders database");
    EventStore::new(db)
}

fn created(id: &str, user: &str) -> OrderEvent {
    OrderEvent::Created(OrderCreated {
        order_id: id.into(),
        user_id: user.into(),
        items: vec![Item {
            product_id: "prod_001".into(),
            quantity: 2,
            price: 9.5,
        }],
        total_amount: 19.0,
        currency: "USD".into(),
        status: Status::Created,
    })
}

async fn place(store: &EventStore, id: &str, user: &str) -> Order {
    store
        .append(id, None, created(id, user), AlsoWrite::default())
        .await
        .expect("a new stream")
}

async fn move_to(store: &EventStore, order: &Order, to: Status) -> Result<Order, StoreError> {
    let event = status_change(order, to, None).expect("a legal transition");
    store
        .append(&order.id, Some(order), event, AlsoWrite::default())
        .await
}

async fn two_writers_of_one_order_one_wins(db: TestDb) {
    let store = store(&db).await;
    let order = place(&store, "ord_race", "usr_1").await;
    // Both read version 1; both try to append version 2 at the same time.
    let (paid, cancelled) = tokio::join!(
        move_to(&store, &order, Status::Paid),
        move_to(&store, &order, Status::Cancelled),
    );
    let (winner, loser) = match (paid, cancelled) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        (a, b) => panic!("exactly one writer must win: {a:?} / {b:?}"),
    };
    match loser {
        StoreError::Conflict {
            expected, actual, ..
        } => assert_eq!((expected, actual), (1, 2)),
        other => panic!("the loser gets a conflict, not {other:?}"),
    }
    assert_eq!(winner.version, 2);

    // The stream holds the winner's event, the state is the winner's, the
    // read model agrees.
    let stream = store.stream("ord_race").await.unwrap();
    assert_eq!(stream.len(), 2);
    let loaded = store.load("ord_race").await.unwrap().unwrap();
    assert_eq!(loaded.status, winner.status);
    assert_eq!(
        view::get(store.db(), "ord_race").await.unwrap(),
        Some(loaded.clone())
    );

    // The loser may try again on the new version: a legal move goes on.
    if loaded.status == Status::Paid {
        let shipped = move_to(&store, &loaded, Status::Shipped).await.unwrap();
        assert_eq!(shipped.version, 3);
    } else {
        assert!(status_change(&loaded, Status::Paid, None).is_err());
    }

    // Every published event of the stream is in the outbox exactly once.
    let published: Vec<String> = store
        .stream("ord_race")
        .await
        .unwrap()
        .iter()
        .filter(|r| r.event.is_published())
        .map(|r| r.event_id.clone())
        .collect();
    let staged: Vec<String> = outbox::attempts(store.db())
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(staged, published);
    assert_eq!(
        outbox::pending(store.db()).await.unwrap(),
        published.len() as i64
    );
}

async fn a_rebuilt_read_model_equals_the_live_one(db: TestDb) {
    let backend = match db.backend {
        shop_testkit::Backend::Sqlite => Backend::Sqlite,
        shop_testkit::Backend::Postgres => Backend::Postgres,
    };
    let store = store(&db).await;
    for i in 0..12 {
        let mut order = place(&store, &format!("ord_{i:02}"), &format!("usr_{}", i % 3)).await;
        let path: &[Status] = match i % 4 {
            0 => &[],
            1 => &[Status::Paid, Status::Shipped],
            2 => &[Status::Paid, Status::Shipped, Status::Delivered],
            _ => &[Status::Cancelled],
        };
        for to in path {
            order = move_to(&store, &order, *to).await.unwrap();
        }
    }
    let live = view::all(store.db()).await.unwrap();
    assert_eq!(live.len(), 12);

    // Damage the read model; the rebuild replays every stream.
    sqlx::query("UPDATE order_view SET status = 'DELIVERED', version = 99")
        .execute(store.db())
        .await
        .unwrap();
    sqlx::query("DELETE FROM order_view WHERE id = 'ord_03'")
        .execute(store.db())
        .await
        .unwrap();
    assert_ne!(view::all(store.db()).await.unwrap(), live);
    let n = view::rebuild(store.db(), backend).await.unwrap();
    assert_eq!(n, 12);
    let rebuilt = view::all(store.db()).await.unwrap();
    pretty_assertions::assert_eq!(rebuilt, live);
    let versions: Vec<i64> = sqlx::query("SELECT version FROM order_view ORDER BY id")
        .fetch_all(store.db())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("version"))
        .collect();
    assert_eq!(versions, [1, 3, 4, 2, 1, 3, 4, 2, 1, 3, 4, 2]);
}
