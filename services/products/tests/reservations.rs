//! Reservations on a real database (SQLite and Postgres): an order's
//! `OrderCreated` and `OrderCancelled` handled at the same time, in either
//! order, leave the stock as it was and nothing reserved.

use shop_common::config::DatabaseSettings;
use shop_common::events::Envelope;
use shop_common::outbox;
use shop_testkit::{TestDb, db_tests};
use sqlx::Row;

use products::reservations::{Line, OrderLine, OrderLines, Reservations};

db_tests!(created_and_cancelled_at_once_leave_the_stock_as_it_was);

fn lines(order_id: &str) -> OrderLines {
    OrderLines {
        order_id: order_id.into(),
        items: vec![OrderLine {
            product_id: "prod_002".into(),
            quantity: 3,
        }],
    }
}

async fn stock(db: &shop_common::db::Db) -> (i64, i64) {
    let row = sqlx::query("SELECT stock, reserved FROM products WHERE id = 'prod_002'")
        .fetch_one(db)
        .await
        .unwrap();
    (row.get("stock"), row.get("reserved"))
}

async fn created_and_cancelled_at_once_leave_the_stock_as_it_was(db: TestDb) {
    shop_common::telemetry::init_for_tests();
    let db = shop_common::db::connect(&DatabaseSettings::new(&db.url), &products::MIGRATOR)
        .await
        .unwrap();
    outbox::migrate(&db).await.unwrap();
    let reservations = Reservations::new(db.clone());
    let before = stock(&db).await;
    for i in 0..10 {
        let order = format!("ord_{i}");
        let line = Line {
            product_id: "prod_002".into(),
            quantity: 3,
        };
        reservations.reserve(&order, &[line]).await.unwrap();
        let created = Envelope::new("OrderCreated", lines(&order));
        let cancelled = Envelope::new("OrderCancelled", lines(&order));
        // Half the time the cancellation is started first.
        let (a, b) = if i % 2 == 0 {
            tokio::join!(
                reservations.commit("products.orders", &created),
                reservations.cancel("products.orders", &cancelled)
            )
        } else {
            let (b, a) = tokio::join!(
                reservations.cancel("products.orders", &cancelled),
                reservations.commit("products.orders", &created)
            );
            (a, b)
        };
        a.unwrap();
        b.unwrap();
        assert_eq!(stock(&db).await, before, "after order {i}");
        let state = &reservations.of_order(&order).await.unwrap()[0].state;
        assert!(
            ["RELEASED", "RETURNED"].contains(&state.as_str()),
            "{state}"
        );
    }
}
