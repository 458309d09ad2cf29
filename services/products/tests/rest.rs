//! The REST API over real HTTP, on SQLite and on Postgres.

mod common;

use std::collections::HashSet;

use serde_json::{Value, json};
use shop_testkit::{TestDb, assert_problem, db_tests, get_json, http};

db_tests!(
    lists_with_meta_and_links,
    filters_and_sorts,
    pages_cover_every_product_once,
    rejects_bad_listing_queries,
    gets_one_product_with_links,
    inventory_updates_are_optimistic,
    bad_inventory_updates_change_nothing,
    concurrent_updates_one_wins,
    prices_change,
    seeds_once,
    links_lead_back_through_the_gateway,
    serves_its_openapi,
);

async fn lists_with_meta_and_links(db: TestDb) {
    let svc = common::start(&db, None).await;
    let list = get_json(&svc.url("/api/v1/products")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 20);
    assert_eq!(
        list["meta"],
        json!({"totalCount": 60, "page": 1, "limit": 20, "totalPages": 3})
    );
    assert_eq!(list["links"]["self"], "/api/v1/products?page=1&limit=20");
    assert_eq!(list["links"]["next"], "/api/v1/products?page=2&limit=20");
    assert!(list["links"].get("prev").is_none());
    let first = &list["data"][0];
    for field in [
        "id",
        "name",
        "description",
        "category",
        "price",
        "currency",
        "inStock",
        "version",
        "createdAt",
        "updatedAt",
    ] {
        assert!(first.get(field).is_some(), "{field} missing in {first}");
    }
    // Newest first by default.
    assert_eq!(first["id"], "prod_060");
    let categories: HashSet<_> = get_json(&svc.url("/api/v1/products?limit=100")).await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["category"].as_str().unwrap().to_string())
        .collect();
    assert!(categories.len() >= 4, "{categories:?}");
}

async fn filters_and_sorts(db: TestDb) {
    let svc = common::start(&db, None).await;
    let list = get_json(
        &svc.url("/api/v1/products?category=books&minPrice=40&maxPrice=45.99&sort=price&limit=100"),
    )
    .await;
    let data = list["data"].as_array().unwrap();
    assert!(!data.is_empty());
    let prices: Vec<f64> = data.iter().map(|p| p["price"].as_f64().unwrap()).collect();
    assert!(data.iter().all(|p| p["category"] == "books"));
    assert!(
        prices.iter().all(|&p| (40.0..=45.99).contains(&p)),
        "{prices:?}"
    );
    assert!(
        prices.windows(2).all(|w| w[0] <= w[1]),
        "ascending: {prices:?}"
    );
    assert_eq!(list["meta"]["totalCount"], data.len());

    let desc = get_json(&svc.url("/api/v1/products?sort=-price&limit=5")).await;
    let prices: Vec<f64> = desc["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["price"].as_f64().unwrap())
        .collect();
    assert!(
        prices.windows(2).all(|w| w[0] >= w[1]),
        "descending: {prices:?}"
    );
    assert_eq!(prices[0], 329.99);

    let search = get_json(&svc.url("/api/v1/products?q=RUST")).await;
    let names: Vec<&str> = search["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(search["meta"]["totalCount"], 2, "{names:?}");

    let none = get_json(&svc.url("/api/v1/products?category=nothing")).await;
    assert_eq!(
        none["meta"],
        json!({"totalCount": 0, "page": 1, "limit": 20, "totalPages": 0})
    );
}

async fn pages_cover_every_product_once(db: TestDb) {
    let svc = common::start(&db, None).await;
    let mut seen = Vec::new();
    let mut next = Some("/api/v1/products?sort=name&limit=7".to_string());
    let mut pages = 0;
    while let Some(link) = next {
        let page = get_json(&svc.url(&link)).await;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_string()),
        );
        next = page["links"]["next"].as_str().map(str::to_string);
        pages += 1;
        if pages > 1 {
            assert!(page["links"]["prev"].is_string());
        }
    }
    assert_eq!(pages, 9);
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (60, 60));
    // Past the end: empty, with a way back.
    let beyond = get_json(&svc.url("/api/v1/products?page=50&limit=10")).await;
    assert!(beyond["data"].as_array().unwrap().is_empty());
    assert!(beyond["links"]["prev"].is_string());
}

async fn rejects_bad_listing_queries(db: TestDb) {
    let svc = common::start(&db, None).await;
    for (query, field) in [
        ("page=0", "page"),
        ("limit=10000", "limit"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("page=1.5", "page"),
        ("minPrice=-1", "minPrice"),
        ("maxPrice=cheap", "maxPrice"),
        ("minPrice=50&maxPrice=10", "minPrice"),
        ("sort=cheapest", "sort"),
        ("colour=red", "colour"),
    ] {
        let r = http()
            .get(svc.url(&format!("/api/v1/products?{query}")))
            .send()
            .await
            .unwrap();
        assert_problem(r, 400, Some(field)).await;
    }
}

async fn gets_one_product_with_links(db: TestDb) {
    let svc = common::start(&db, None).await;
    let r = http()
        .get(svc.url("/api/v1/products/prod_011"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["etag"], "\"1\"");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["name"], "Designing Data-Intensive Applications");
    assert_eq!(p["price"], 45.99);
    assert_eq!(p["inStock"], true);
    assert_eq!(
        p["_links"],
        json!({
            "self": "/api/v1/products/prod_011",
            "inventory": "/api/v1/products/prod_011/inventory",
            "category": "/api/v1/products?category=books",
        })
    );
    let missing = http()
        .get(svc.url("/api/v1/products/prod_999"))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(missing, 404, None).await;
    assert!(problem["detail"].as_str().unwrap().contains("prod_999"));
}

async fn put_inventory(svc: &shop_testkit::Running, id: &str, body: Value) -> reqwest::Response {
    http()
        .put(svc.url(&format!("/api/v1/products/{id}/inventory")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn inventory_updates_are_optimistic(db: TestDb) {
    let svc = common::start(&db, None).await;
    let inv = get_json(&svc.url("/api/v1/products/prod_001/inventory")).await;
    assert_eq!(inv["stock"], 120);
    assert_eq!(inv["version"], 1);
    assert_eq!(inv["_links"]["product"], "/api/v1/products/prod_001");

    let r = put_inventory(&svc, "prod_001", json!({"stock": 0, "version": 1})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let updated: Value = r.json().await.unwrap();
    assert_eq!(
        (
            updated["stock"].as_i64(),
            updated["version"].as_i64(),
            updated["inStock"].as_bool()
        ),
        (Some(0), Some(2), Some(false))
    );
    assert_eq!(
        get_json(&svc.url("/api/v1/products/prod_001")).await["inStock"],
        false
    );

    // Based on version 1, which is gone: 409, and nothing changes.
    let stale = put_inventory(&svc, "prod_001", json!({"stock": 50, "version": 1})).await;
    let problem = assert_problem(stale, 409, None).await;
    assert_eq!(problem["currentVersion"], 2);
    let inv = get_json(&svc.url("/api/v1/products/prod_001/inventory")).await;
    assert_eq!(
        (inv["stock"].as_i64(), inv["version"].as_i64()),
        (Some(0), Some(2))
    );

    let unknown = put_inventory(&svc, "prod_999", json!({"stock": 5, "version": 1})).await;
    assert_problem(unknown, 404, None).await;
}

async fn bad_inventory_updates_change_nothing(db: TestDb) {
    let svc = common::start(&db, None).await;
    let url = svc.url("/api/v1/products/prod_002/inventory");
    let send = |body: String| {
        http()
            .put(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, status, field) in [
        (r#"{"stock": -1, "version": 1}"#.to_string(), 400, "stock"),
        (r#"{"stock": "ten", "version": 1}"#.into(), 400, "stock"),
        (r#"{"stock": 10}"#.into(), 400, "version"),
        (r#"{"stock": 10, "version": 0}"#.into(), 400, "version"),
        (
            r#"{"stock": 10, "version": 1, "price": 1}"#.into(),
            400,
            "price",
        ),
        (r#"{"stock": 10, "#.into(), 400, "body"),
        (r#"{"stock": 1e12, "version": 1}"#.into(), 400, "stock"),
        (
            format!(
                r#"{{"stock": 10, "version": 1, "pad": "{}"}}"#,
                "x".repeat(70_000)
            ),
            413,
            "body",
        ),
    ] {
        assert_problem(send(body).await.unwrap(), status, Some(field)).await;
    }
    let text = http()
        .put(&url)
        .body(r#"{"stock": 10, "version": 1}"#)
        .send()
        .await
        .unwrap();
    assert_problem(text, 415, Some("Content-Type")).await;
    let inv = get_json(&url).await;
    assert_eq!(
        (inv["stock"].as_i64(), inv["version"].as_i64()),
        (Some(200), Some(1))
    );
}

async fn concurrent_updates_one_wins(db: TestDb) {
    let svc = common::start(&db, None).await;
    let attempts = (0..8).map(|i| {
        let url = svc.url("/api/v1/products/prod_003/inventory");
        async move {
            let r = http()
                .put(url)
                .json(&json!({"stock": 100 + i, "version": 1}))
                .send()
                .await
                .unwrap();
            (i, r.status().as_u16())
        }
    });
    let results = futures::future::join_all(attempts).await;
    let winners: Vec<i64> = results
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(i, _)| *i)
        .collect();
    let losers = results.iter().filter(|(_, s)| *s == 409).count();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(losers, 7, "{results:?}");
    let inv = get_json(&svc.url("/api/v1/products/prod_003/inventory")).await;
    assert_eq!(inv["stock"].as_i64(), Some(100 + winners[0]));
    assert_eq!(inv["version"], 2);
}

async fn prices_change(db: TestDb) {
    let svc = common::start(&db, None).await;
    let url = svc.url("/api/v1/products/prod_004/price");
    let r = http()
        .put(&url)
        .json(&json!({"price": 299.5, "version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        (p["price"].as_f64(), p["version"].as_i64()),
        (Some(299.5), Some(2))
    );
    assert_eq!(
        get_json(&svc.url("/api/v1/products/prod_004")).await["price"],
        299.5
    );
    let r = http()
        .put(&url)
        .json(&json!({"price": 9.999, "version": 2}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 400, Some("price")).await;
    let r = http()
        .put(&url)
        .json(&json!({"price": -3, "version": 2}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 400, Some("price")).await;
    assert_eq!(
        get_json(&svc.url("/api/v1/products/prod_004")).await["price"],
        299.5
    );
}

async fn seeds_once(db: TestDb) {
    let first = common::start(&db, None).await;
    put_inventory(&first, "prod_005", json!({"stock": 7, "version": 1})).await;
    first.stop().await.unwrap();
    let second = common::start(&db, None).await;
    let list = get_json(&second.url("/api/v1/products")).await;
    assert_eq!(list["meta"]["totalCount"], 60);
    assert_eq!(
        get_json(&second.url("/api/v1/products/prod_005/inventory")).await["stock"],
        7
    );
}

async fn links_lead_back_through_the_gateway(db: TestDb) {
    let svc = common::start(&db, None).await;
    let get = |path: &str, prefix: &'static str| {
        http()
            .get(svc.url(path))
            .header("x-forwarded-prefix", prefix)
            .send()
    };
    let list: Value = get("/api/v1/products?limit=10", "/api/products")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["links"]["next"], "/api/products?page=2&limit=10");
    let one: Value = get("/api/v1/products/prod_001", "/api/products")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["_links"]["self"], "/api/products/prod_001");
    // A prefix that is not a plain path is ignored.
    let odd: Value = get("/api/v1/products/prod_001", "https://evil.example/")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(odd["_links"]["self"], "/api/v1/products/prod_001");
}

async fn serves_its_openapi(db: TestDb) {
    let svc = common::start(&db, None).await;
    let doc = get_json(&svc.url("/openapi.json")).await;
    let paths: HashSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/api/v1/products",
        "/api/v1/products/{id}",
        "/api/v1/products/{id}/inventory",
        "/api/v1/products/{id}/price",
    ] {
        assert!(paths.contains(p), "{p} missing from {paths:?}");
    }
    assert!(doc["paths"]["/api/v1/products/{id}/inventory"]["put"].is_object());
    let ready = get_json(&svc.url("/health/ready")).await;
    assert_eq!(ready["checks"]["database"]["status"], "UP");
}
