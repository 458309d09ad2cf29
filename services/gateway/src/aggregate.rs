//! Answers the gateway composes from several services, fetched
//! concurrently. When a part fails the rest is still answered, with the
//! part `null` and a `warnings` entry saying what is missing and why.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use futures::future::join_all;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Serialize;
use serde_json::{Value, json};
use shop_common::Problem;
use shop_common::extract::Path;
use shop_common::http_client::Failure;
use utoipa::ToSchema;

use crate::Gateway;
use crate::auth::USER_ID;
use crate::routes::Upstream;

/// Something the answer lacks.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Warning {
    /// The part that is missing, e.g. `product prod_007` or `inventory`.
    pub part: String,
    /// The status it came with, or the gateway's own (503, 504, 502) when
    /// the service gave no answer.
    pub status: u16,
    pub detail: String,
}

impl Warning {
    fn new(part: String, status: StatusCode, problem: &Problem) -> Self {
        Warning {
            part,
            status: status.as_u16(),
            detail: problem
                .detail
                .clone()
                .unwrap_or_else(|| problem.title.clone()),
        }
    }
}

/// A JSON answer from a service, or why there is none.
enum Fetched {
    Found(Value),
    Failed {
        status: StatusCode,
        problem: Problem,
    },
}

fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// GETs `path` from `upstream` with the caller's identity.
async fn fetch(gateway: &Gateway, upstream: Upstream, path: &str, caller: &HeaderMap) -> Fetched {
    let mut request = gateway
        .http
        .get(&format!("{}{path}", gateway.base_url(upstream)))
        .header(
            "x-forwarded-prefix",
            HeaderValue::from_static(forwarded_prefix(upstream)),
        );
    for name in [AUTHORIZATION, USER_ID] {
        if let Some(v) = caller.get(&name) {
            request = request.header(name, v.clone());
        }
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            let problem = Failure::of(&e).problem(upstream.name());
            return Fetched::Failed {
                status: problem.status,
                problem,
            };
        }
    };
    let status = response.status();
    let body: Option<Value> = response.json().await.ok();
    match body {
        Some(v) if status.is_success() => Fetched::Found(v),
        body => {
            // Pass the service's own problem on when it sent one.
            let problem = body
                .and_then(|b| serde_json::from_value::<Problem>(b).ok())
                .filter(|p| p.status == status)
                .unwrap_or_else(|| Failure::Broken.problem(upstream.name()));
            Fetched::Failed { status, problem }
        }
    }
}

fn forwarded_prefix(upstream: Upstream) -> &'static str {
    crate::routes::ROUTES
        .iter()
        .find(|r| r.upstream == upstream)
        .map(|r| r.prefix)
        .unwrap_or("/")
}

/// An order with the details of each item's product.
#[utoipa::path(get, path = "/api/orders/{id}/with-product-details", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, description = "The order; each item has `product` (null when it could not be fetched) and `warnings` lists what is missing"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn order_with_product_details(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let mut order = match fetch(
        &gateway,
        Upstream::Orders,
        &format!("/api/v1/orders/{}", segment(&id)),
        &headers,
    )
    .await
    {
        Fetched::Found(order) => order,
        Fetched::Failed { problem, .. } => return Err(problem),
    };
    let Some(items) = order.get_mut("items").and_then(Value::as_array_mut) else {
        return Err(Failure::Broken.problem("orders"));
    };
    let product_ids: Vec<Option<String>> = items
        .iter()
        .map(|i| {
            i.get("productId")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    let mut unique: Vec<&String> = product_ids.iter().flatten().collect();
    unique.sort();
    unique.dedup();
    let fetched = join_all(unique.iter().map(|pid| {
        let path = format!("/api/v1/products/{}", segment(pid));
        let (gateway, headers) = (&gateway, &headers);
        async move {
            (
                (*pid).clone(),
                fetch(gateway, Upstream::Products, &path, headers).await,
            )
        }
    }))
    .await;
    let mut warnings = Vec::new();
    let mut details = std::collections::HashMap::new();
    for (pid, result) in fetched {
        match result {
            Fetched::Found(product) => {
                details.insert(pid, product);
            }
            Fetched::Failed { status, problem } => {
                warnings.push(Warning::new(format!("product {pid}"), status, &problem))
            }
        }
    }
    for (item, pid) in items.iter_mut().zip(&product_ids) {
        let product = pid
            .as_ref()
            .and_then(|p| details.get(p))
            .cloned()
            .unwrap_or(Value::Null);
        if let Some(obj) = item.as_object_mut() {
            obj.insert("product".into(), product);
        }
    }
    if let Some(obj) = order.as_object_mut() {
        obj.insert("warnings".into(), json!(warnings));
    }
    Ok(Json(order))
}

/// A product with its inventory.
#[utoipa::path(get, path = "/api/products/{id}/with-inventory", params(("id" = String, Path)),
    responses((status = 200, description = "The product with `inventory` (null when it could not be fetched) and `warnings`"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn product_with_inventory(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let base = format!("/api/v1/products/{}", segment(&id));
    let inventory_path = format!("{base}/inventory");
    let (product, inventory) = futures::join!(
        fetch(&gateway, Upstream::Products, &base, &headers),
        fetch(&gateway, Upstream::Products, &inventory_path, &headers),
    );
    let mut product = match product {
        Fetched::Found(p) => p,
        Fetched::Failed { problem, .. } => return Err(problem),
    };
    let mut warnings = Vec::new();
    let inventory = match inventory {
        Fetched::Found(i) => i,
        Fetched::Failed { status, problem } => {
            warnings.push(Warning::new("inventory".into(), status, &problem));
            Value::Null
        }
    };
    if let Some(obj) = product.as_object_mut() {
        obj.insert("inventory".into(), inventory);
        obj.insert("warnings".into(), json!(warnings));
    }
    Ok(Json(product))
}
