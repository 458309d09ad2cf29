//! What several test files share: the event schemas, looking into a
//! service's database, counting events per order.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use shop_common::config::DatabaseSettings;
use shop_common::db::Db;
use shop_testkit::TestDb;
use shop_testkit::broker::Seen;
use sqlx::Row;

/// Every schema under `services/events/`, by event type.
pub fn schemas() -> BTreeMap<String, jsonschema::Validator> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../events");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("services/events") {
        let path = entry.expect("an entry").path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(event_type) = name.strip_suffix(".schema.json") else {
            continue;
        };
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("a schema"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{name} is not a valid schema: {e}"));
        out.insert(event_type.to_string(), validator);
    }
    out
}

/// Checks every event against the schema of its type; the types seen.
pub fn assert_valid(events: &[Seen]) -> BTreeMap<String, usize> {
    let schemas = schemas();
    let mut seen = BTreeMap::new();
    for event in events {
        let validator = schemas
            .get(&event.routing_key)
            .unwrap_or_else(|| panic!("no schema for {} in services/events/", event.routing_key));
        let errors: Vec<String> = validator
            .iter_errors(&event.body)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not match its schema: {errors:?}\n{}",
            event.routing_key,
            event.body
        );
        assert_eq!(
            event.body["eventType"],
            event.routing_key.as_str(),
            "routing key = event type"
        );
        *seen.entry(event.routing_key.clone()).or_insert(0) += 1;
    }
    seen
}

pub fn shop_bin() -> &'static std::path::Path {
    env!("CARGO_BIN_EXE_shop").as_ref()
}

/// A service's database, as the test looks into it.
pub async fn open(db: &TestDb, migrator: &'static sqlx::migrate::Migrator) -> Db {
    shop_common::db::connect(&DatabaseSettings::new(&db.url), migrator)
        .await
        .expect("a service database")
}

pub async fn handled(db: &Db, consumer: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM processed_messages WHERE consumer = $1")
        .bind(consumer.to_string())
        .fetch_one(db)
        .await
        .unwrap()
        .get("n")
}

/// The distinct event ids of `event_type` per order id, and how many
/// copies of them arrived in all.
pub fn per_order(events: &[Seen], event_type: &str) -> (BTreeMap<String, BTreeSet<String>>, usize) {
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut copies = 0;
    for e in events.iter().filter(|e| e.routing_key == event_type) {
        copies += 1;
        let order = e.body["data"]["orderId"].as_str().unwrap_or_default();
        let id = e.body["eventId"].as_str().unwrap_or_default();
        ids.entry(order.into()).or_default().insert(id.into());
    }
    (ids, copies)
}
