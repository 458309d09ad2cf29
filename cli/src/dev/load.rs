//! `--load RATE`: shop traffic through the gateway, RATE flows a second,
//! each a short walk a shopper takes: browse a page of the catalogue,
//! search, look at a product, or log in and order (which charges the
//! payment). A line every ten seconds says what the shop answered.

use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};

/// Runs until aborted.
pub async fn drive(gateway: String, rate: f64) {
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
    else {
        return;
    };
    let shop = Shop { client, gateway };
    let token = shop.shopper().await;
    let products = shop.product_ids().await;
    println!(
        "trellis dev: load: {rate} flows/s through {} ({} products, {})",
        shop.gateway,
        products.len(),
        if token.is_some() {
            "logged in"
        } else {
            "no login: orders skipped"
        }
    );
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    let counts = std::sync::Arc::new(std::sync::Mutex::new([0u64; 6]));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let shop = shop.clone();
                let token = token.clone();
                let product = if products.is_empty() { None } else {
                    Some(products[rand::rng().random_range(0..products.len())].clone())
                };
                let counts = counts.clone();
                tokio::spawn(async move {
                    let class = shop.flow(token.as_deref(), product.as_deref()).await;
                    if let Ok(mut c) = counts.lock() { c[class] += 1; }
                });
            }
            _ = report.tick() => {
                let c = counts.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
                println!(
                    "trellis dev: load: last 10s: {} 2xx, {} 4xx, {} 5xx, {} failed to connect",
                    c[2], c[4], c[5], c[0]
                );
            }
        }
    }
}

#[derive(Clone)]
struct Shop {
    client: reqwest::Client,
    gateway: String,
}

impl Shop {
    /// Registers a shopper and logs in; the bearer token.
    async fn shopper(&self) -> Option<String> {
        let email = format!("shopper-{}@example.com", uuid::Uuid::new_v4());
        let password = "correct horse battery staple";
        self.client
            .post(format!("{}/api/users", self.gateway))
            .json(&json!({"email": email, "password": password, "name": "Load Shopper"}))
            .send()
            .await
            .ok()?;
        let login: Value = self
            .client
            .post(format!("{}/api/auth/login", self.gateway))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        login["accessToken"].as_str().map(str::to_string)
    }

    async fn product_ids(&self) -> Vec<String> {
        let page: Value = match self
            .client
            .get(format!("{}/api/products?limit=50", self.gateway))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        page["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["id"].as_str().map(str::to_string))
            .collect()
    }

    /// One flow; the status class of its last answer (0 when none came).
    async fn flow(&self, token: Option<&str>, product: Option<&str>) -> usize {
        let roll: u32 = rand::rng().random_range(0..100);
        let g = &self.gateway;
        let request = match (roll, product, token) {
            (0..40, _, _) => {
                let page = rand::rng().random_range(1..4);
                self.client
                    .get(format!("{g}/api/products?page={page}&limit=10"))
            }
            (40..65, _, _) => {
                let q = ["lamp", "mug", "shirt", "book", "chair"][rand::rng().random_range(0..5)];
                self.client
                    .get(format!("{g}/api/products?q={q}&sort=price"))
            }
            (65..80, Some(id), _) | (80.., Some(id), None) => self
                .client
                .get(format!("{g}/api/products/{id}/with-inventory")),
            (80.., Some(id), Some(token)) => self
                .client
                .post(format!("{g}/api/orders"))
                .bearer_auth(token)
                .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                .json(&json!({"items": [{"productId": id, "quantity": 1}]})),
            _ => self.client.get(format!("{g}/api/products")),
        };
        match request.send().await {
            Ok(r) => usize::from(r.status().as_u16() / 100).min(5),
            Err(_) => 0,
        }
    }
}
