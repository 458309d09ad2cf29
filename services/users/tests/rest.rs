//! The users API over real HTTP, on SQLite and on Postgres.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shop_common::auth::Tokens;
use shop_testkit::{
    Running, TestDb, assert_problem, closed_port, db_tests, get_json, http, send, silent_server,
};
use sqlx::Row;

db_tests!(
    registers_and_reads_a_user,
    duplicate_emails_conflict,
    bad_registrations_write_nothing,
    logs_in_with_a_jwt,
    wrong_credentials_are_401,
    orders_down_is_a_clear_503,
    orders_hanging_is_a_503_within_the_timeout,
    serves_its_openapi,
);

async fn register(svc: &Running, body: Value) -> reqwest::Response {
    http()
        .post(svc.url("/api/v1/users"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn new_user(svc: &Running, email: &str) -> Value {
    let r = register(
        svc,
        json!({"email": email, "password": "correct horse", "name": "Ada Lovelace"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

async fn count_users(db: &TestDb) -> i64 {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let n = sqlx::query("SELECT COUNT(*) AS n FROM users")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    pool.close().await;
    n
}

async fn registers_and_reads_a_user(db: TestDb) {
    let svc = common::start(&db, "http://orders.invalid").await;
    let r = register(
        &svc,
        json!({"email": "  Ada@Example.com ", "password": "correct horse", "name": " Ada "}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["name"], "Ada");
    assert!(user["id"].as_str().unwrap().starts_with("usr_"));
    assert!(
        user.get("password").is_none() && user.get("passwordHash").is_none(),
        "{user}"
    );
    assert_eq!(
        location,
        format!("/api/v1/users/{}", user["id"].as_str().unwrap())
    );

    let fetched: Value = get_json(&svc.url(&location)).await;
    assert_eq!(fetched, user);
    // Authenticated by the gateway as someone else: not theirs to read.
    let (status, _) = send(
        http()
            .get(svc.url(&location))
            .header("x-user-id", "usr_other"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        http()
            .get(svc.url(&format!("{location}/orders")))
            .header("x-user-id", "usr_other"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        http()
            .get(svc.url(&location))
            .header("x-user-id", user["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200);
    assert_problem(
        http()
            .get(svc.url("/api/v1/users/usr_nobody"))
            .send()
            .await
            .unwrap(),
        404,
        None,
    )
    .await;

    // Stored as an argon2id hash, never as the password.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let hash: String = sqlx::query("SELECT password_hash FROM users")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("password_hash");
    assert!(
        hash.starts_with("$argon2id$") && !hash.contains("correct horse"),
        "{hash}"
    );
}

async fn duplicate_emails_conflict(db: TestDb) {
    let svc = common::start(&db, "http://orders.invalid").await;
    new_user(&svc, "grace@example.com").await;
    let again = register(
        &svc,
        json!({"email": "GRACE@example.com", "password": "another one", "name": "G"}),
    )
    .await;
    assert_problem(again, 409, Some("email")).await;
    // Concurrent registrations of one new address: exactly one wins.
    let racers = (0..5).map(|i| {
        let svc = &svc;
        async move { register(svc, json!({"email": "race@example.com", "password": "password1", "name": format!("r{i}")})).await.status().as_u16() }
    });
    let mut statuses = futures::future::join_all(racers).await;
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409]);
    assert_eq!(count_users(&db).await, 2);
}

async fn bad_registrations_write_nothing(db: TestDb) {
    let svc = common::start(&db, "http://orders.invalid").await;
    let send = |body: String| {
        http()
            .post(svc.url("/api/v1/users"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, status, field) in [
        (r#"{"email": "not-an-email", "password": "long enough", "name": "A"}"#.to_string(), 400, "email"),
        (r#"{"email": "a@example.com", "password": "short", "name": "A"}"#.into(), 400, "password"),
        (r#"{"email": "a@example.com", "password": "long enough", "name": "   "}"#.into(), 400, "name"),
        (r#"{"email": "a@example.com", "password": "long enough"}"#.into(), 400, "name"),
        (r#"{"email": 42, "password": "long enough", "name": "A"}"#.into(), 400, "email"),
        (r#"{"email": "a@example.com", "password": "long enough", "name": "A", "role": "admin"}"#.into(), 400, "role"),
        (r#"{"email": "a@example.com""#.into(), 400, "body"),
        (format!(r#"{{"email": "a@example.com", "password": "long enough", "name": "{}"}}"#, "n".repeat(101)), 400, "name"),
        (format!(r#"{{"email": "a@example.com", "password": "{}", "name": "A"}}"#, "p".repeat(100_000)), 413, "body"),
    ] {
        assert_problem(send(body).await.unwrap(), status, Some(field)).await;
    }
    // Several bad fields at once are all named.
    let many = send(r#"{"email": "x", "password": "y", "name": ""}"#.into())
        .await
        .unwrap();
    let problem = assert_problem(many, 400, Some("email")).await;
    assert_eq!(problem["errors"].as_array().unwrap().len(), 3);
    assert_eq!(count_users(&db).await, 0);
}

async fn login(svc: &Running, email: &str, password: &str) -> reqwest::Response {
    http()
        .post(svc.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn logs_in_with_a_jwt(db: TestDb) {
    let svc = common::start(&db, "http://orders.invalid").await;
    let user = new_user(&svc, "linus@example.com").await;
    let r = login(&svc, "Linus@Example.com", "correct horse").await;
    assert_eq!(r.status(), 200);
    let token: Value = r.json().await.unwrap();
    assert_eq!(token["tokenType"], "Bearer");
    assert_eq!(token["expiresIn"], 600);
    assert_eq!(token["userId"], user["id"]);
    let claims = Tokens::new(common::SECRET.as_bytes())
        .verify(token["accessToken"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims.sub, user["id"].as_str().unwrap());
    assert!(
        claims.exp > claims.iat && claims.exp - claims.iat == 600,
        "{claims:?}"
    );
    // Signed with this secret only.
    let other = Tokens::new(b"some other secret, also 32 bytes long");
    assert!(
        other
            .verify(token["accessToken"].as_str().unwrap())
            .is_err()
    );
}

async fn wrong_credentials_are_401(db: TestDb) {
    let svc = common::start(&db, "http://orders.invalid").await;
    new_user(&svc, "ken@example.com").await;
    let wrong = assert_problem(
        login(&svc, "ken@example.com", "wrong horse").await,
        401,
        None,
    )
    .await;
    let unknown = assert_problem(
        login(&svc, "nobody@example.com", "correct horse").await,
        401,
        None,
    )
    .await;
    assert_eq!(
        wrong["detail"], unknown["detail"],
        "no hint which part was wrong"
    );
    let malformed = http()
        .post(svc.url("/api/v1/auth/login"))
        .json(&json!({"email": "ken@example.com"}))
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 400, Some("password")).await;
}

async fn orders_down_is_a_clear_503(db: TestDb) {
    let orders = closed_port().await;
    let svc = common::start(&db, &format!("http://{orders}")).await;
    let user = new_user(&svc, "edsger@example.com").await;
    let r = http()
        .get(svc.url(&format!(
            "/api/v1/users/{}/orders",
            user["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(r, 503, None).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("orders"),
        "{problem}"
    );
}

async fn orders_hanging_is_a_503_within_the_timeout(db: TestDb) {
    let (orders, _hang) = silent_server().await;
    let svc = common::start(&db, &format!("http://{orders}")).await;
    let user = new_user(&svc, "barbara@example.com").await;
    let started = Instant::now();
    let r = http()
        .get(svc.url(&format!(
            "/api/v1/users/{}/orders",
            user["id"].as_str().unwrap()
        )))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("an answer, not a hang");
    let problem = assert_problem(r, 503, None).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("did not answer within 500ms"),
        "{problem}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn serves_its_openapi(db: TestDb) {
    let svc = common::start(&db, "http://orders.invalid").await;
    let doc: Value = get_json(&svc.url("/openapi.json")).await;
    for p in [
        "/api/v1/users",
        "/api/v1/users/{id}",
        "/api/v1/users/{id}/orders",
        "/api/v1/auth/login",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing");
    }
}
