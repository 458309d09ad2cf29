//! The pool on SQLite and Postgres: embedded migrations, the shared SQL
//! dialect, unique violations, readiness, and giving up on a database that
//! never comes.

use std::time::{Duration, Instant};

use shop_common::config::DatabaseSettings;
use shop_common::db::{self, DatabaseCheck};
use shop_common::health::{Check, Health};
use shop_testkit::{Backend, TestDb, db_tests};
use sqlx::Row;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations");

db_tests!(
    migrates_and_speaks_one_dialect,
    unique_violations_are_recognised,
    migrations_run_once
);

async fn migrates_and_speaks_one_dialect(test_db: TestDb) {
    let pool = db::connect(&DatabaseSettings::new(&test_db.url), &MIGRATOR)
        .await
        .unwrap();
    // `$1` twice in one statement binds one value on both backends.
    sqlx::query("INSERT INTO notes (id, owner, body, cents) VALUES ($1, $2, $1, $3)")
        .bind("n1")
        .bind("ada")
        .bind(1999_i64)
        .execute(&pool)
        .await
        .unwrap();
    let row =
        sqlx::query("SELECT id, body, cents, COUNT(*) OVER () AS n FROM notes WHERE owner = $1")
            .bind("ada")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row.get::<String, _>("body"), "n1");
    assert_eq!(row.get::<i64, _>("cents"), 1999);
    assert_eq!(row.get::<i64, _>("n"), 1);
    // The CHECK constraint holds on both.
    let negative =
        sqlx::query("INSERT INTO notes (id, owner, body, cents) VALUES ('n2', 'ada', 'x', -1)")
            .execute(&pool)
            .await;
    assert!(negative.is_err());
    assert!(DatabaseCheck(pool.clone()).check().await.is_ok());
}

async fn unique_violations_are_recognised(test_db: TestDb) {
    let pool = db::connect(&DatabaseSettings::new(&test_db.url), &MIGRATOR)
        .await
        .unwrap();
    let insert = |id: &'static str| {
        sqlx::query("INSERT INTO notes (id, owner, body, cents) VALUES ($1, 'bob', 'same', 0)")
            .bind(id)
            .execute(&pool)
    };
    insert("a").await.unwrap();
    let err = insert("b").await.unwrap_err();
    assert!(db::is_unique_violation(&err), "{err}");
    let other = sqlx::query("INSERT INTO nope VALUES (1)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(!db::is_unique_violation(&other));
}

async fn migrations_run_once(test_db: TestDb) {
    let settings = DatabaseSettings::new(&test_db.url);
    let first = db::connect(&settings, &MIGRATOR).await.unwrap();
    sqlx::query("INSERT INTO notes (id, owner, body, cents) VALUES ('keep', 'c', 'b', 1)")
        .execute(&first)
        .await
        .unwrap();
    first.close().await;
    // A restart: migrations already applied are skipped, data stays.
    let second = db::connect(&settings, &MIGRATOR).await.unwrap();
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM notes")
        .fetch_one(&second)
        .await
        .unwrap()
        .get("n");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn readiness_fails_when_the_database_goes_away() {
    let Some(test_db) = TestDb::of(Backend::Postgres).await else {
        return;
    };
    let pool = db::connect(&DatabaseSettings::new(&test_db.url), &MIGRATOR)
        .await
        .unwrap();
    let health = Health::new().with_check(DatabaseCheck(pool.clone()));
    let (ready, checks) = health.report().await;
    assert!(ready, "{checks:?}");
    let name = test_db.url.rsplit('/').next().unwrap().to_string();
    let admin = std::env::var("SHOP_TEST_POSTGRES_URL").unwrap();
    let admin = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let (ready, checks) = health.report().await;
    assert!(!ready);
    assert_eq!(checks["database"]["status"], "DOWN", "{checks:?}");
}

#[tokio::test]
async fn gives_up_on_a_database_that_never_answers() {
    let addr = shop_testkit::closed_port().await;
    let mut settings = DatabaseSettings::new(format!("postgres://shop@{addr}/nothing"));
    settings.startup_timeout = Duration::from_millis(800);
    let started = Instant::now();
    let err = db::connect(&settings, &MIGRATOR).await.unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    // It retried for a while, then stopped.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}
