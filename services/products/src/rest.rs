//! The REST API under `/api/v1/products`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use shop_common::Problem;
use shop_common::db::rfc3339;
use shop_common::extract::{self, Path, Query};
use shop_common::problem::FieldError;
use shop_common::validate::{Violations, cents, from_cents};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::AppState;
use crate::catalog::{Product, UpdateError, Versioned};
use crate::listing::{ListingRequest, page_links, total_pages};
use crate::reservations::{Line, ReserveError, Reserved};

const COLLECTION: &str = "/api/v1/products";
const MAX_STOCK: i64 = 1_000_000_000;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "products",
        description = "The shop's catalogue and inventory."
    ),
    paths(
        list_products,
        get_product,
        get_inventory,
        put_inventory,
        put_price,
        reserve,
        release
    ),
    components(schemas(
        ProductView,
        ProductList,
        Meta,
        InventoryView,
        InventoryUpdate,
        PriceUpdate,
        NewReservation,
        Line,
        ReservationView,
        Reserved,
        Problem,
        FieldError
    ))
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> axum::Router {
    shop_common::server::router()
        .route(COLLECTION, get(list_products))
        .route("/api/v1/products/{id}", get(get_product))
        .route(
            "/api/v1/products/{id}/inventory",
            get(get_inventory).put(put_inventory),
        )
        .route("/api/v1/products/{id}/price", axum::routing::put(put_price))
        .route("/api/v1/reservations", axum::routing::post(reserve))
        .route(
            "/api/v1/reservations/{order_id}",
            axum::routing::delete(release),
        )
        .with_state(state)
}

/// A product as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub category: String,
    /// In currency units, two decimals.
    pub price: f64,
    pub currency: String,
    pub in_stock: bool,
    /// Grows by one with every change; PUTs must name it.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    #[serde(rename = "_links", skip_serializing_if = "BTreeMap::is_empty", default)]
    pub links: BTreeMap<String, String>,
}

impl ProductView {
    pub fn of(p: &Product) -> Self {
        ProductView {
            id: p.id.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            category: p.category.clone(),
            price: from_cents(p.price_cents),
            currency: p.currency.clone(),
            in_stock: p.stock > 0,
            version: p.version,
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
            links: BTreeMap::new(),
        }
    }

    fn with_links(mut self, base: &str) -> Self {
        let this = format!("{base}/{}", encode_segment(&self.id));
        self.links
            .insert("inventory".into(), format!("{this}/inventory"));
        let category = form_urlencoded::Serializer::new(String::new())
            .append_pair("category", &self.category)
            .finish();
        self.links
            .insert("category".into(), format!("{base}?{category}"));
        self.links.insert("self".into(), this);
        self
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub total_count: i64,
    pub page: u32,
    pub limit: u32,
    pub total_pages: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductList {
    pub data: Vec<ProductView>,
    pub meta: Meta,
    /// `self`, and `prev`/`next` where those pages exist.
    pub links: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this category.
    category: Option<String>,
    /// At least this price.
    min_price: Option<f64>,
    /// At most this price.
    max_price: Option<f64>,
    /// A case-insensitive part of the name or description.
    q: Option<String>,
    /// From 1 (default 1).
    page: Option<i64>,
    /// 1 to 100 (default 20).
    limit: Option<i64>,
    /// `price`, `-price`, `name`, `-name`, `createdAt`, `-createdAt` (default).
    sort: Option<String>,
}

/// The collection's path as the caller sees it: behind the gateway that is
/// its prefix (`X-Forwarded-Prefix`), so links lead back through it.
fn collection_base(headers: &HeaderMap) -> String {
    headers
        .get("x-forwarded-prefix")
        .and_then(|v| v.to_str().ok())
        .filter(|p| {
            p.starts_with('/')
                && p.len() <= 100
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
        })
        .map(|p| p.trim_end_matches('/').to_string())
        .unwrap_or_else(|| COLLECTION.to_string())
}

fn encode_segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// List products, filtered, sorted and paged.
#[utoipa::path(get, path = "/api/v1/products", params(ListQuery),
    responses((status = 200, body = ProductList), (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list_products(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<ProductList>, Problem> {
    let listing = ListingRequest {
        category: q.category,
        min_price: q.min_price,
        max_price: q.max_price,
        q: q.q,
        page: q.page,
        limit: q.limit,
        sort: q.sort,
    }
    .check()
    .map_err(Problem::validation)?;
    let page = state
        .catalog
        .list(&listing.filter, listing.sort, listing.page, listing.limit)
        .await?;
    let base = collection_base(&headers);
    let links = page_links(&base, &listing, page.total);
    let mut link_map = BTreeMap::from([("self".to_string(), links.this)]);
    link_map.extend(links.prev.map(|l| ("prev".to_string(), l)));
    link_map.extend(links.next.map(|l| ("next".to_string(), l)));
    Ok(Json(ProductList {
        data: page.items.iter().map(ProductView::of).collect(),
        meta: Meta {
            total_count: page.total,
            page: listing.page,
            limit: listing.limit,
            total_pages: total_pages(page.total, listing.limit),
        },
        links: link_map,
    }))
}

async fn find(state: &AppState, id: &str) -> Result<Product, Problem> {
    state
        .catalog
        .get(id)
        .await?
        .ok_or_else(|| Problem::not_found("product", id))
}

fn with_etag(version: i64, body: impl Serialize) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// One product, with links to its inventory and category.
#[utoipa::path(get, path = "/api/v1/products/{id}", params(("id" = String, Path)),
    responses((status = 200, body = ProductView), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_product(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let product = find(&state, &id).await?;
    let view = ProductView::of(&product).with_links(&collection_base(&headers));
    Ok(with_etag(product.version, view))
}

/// A product's stock.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryView {
    pub product_id: String,
    pub stock: i64,
    /// Held for orders not yet committed.
    pub reserved: i64,
    /// `stock - reserved`: what a new order can have.
    pub available: i64,
    pub in_stock: bool,
    pub version: i64,
    #[serde(rename = "_links")]
    pub links: BTreeMap<String, String>,
}

impl InventoryView {
    fn of(p: &Product, base: &str) -> Self {
        let product = format!("{base}/{}", encode_segment(&p.id));
        InventoryView {
            product_id: p.id.clone(),
            stock: p.stock,
            reserved: p.reserved,
            available: p.stock - p.reserved,
            in_stock: p.stock > p.reserved,
            version: p.version,
            links: BTreeMap::from([
                ("self".to_string(), format!("{product}/inventory")),
                ("product".to_string(), product),
            ]),
        }
    }
}

/// A product's stock and version.
#[utoipa::path(get, path = "/api/v1/products/{id}/inventory", params(("id" = String, Path)),
    responses((status = 200, body = InventoryView), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_inventory(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let product = find(&state, &id).await?;
    Ok(with_etag(
        product.version,
        InventoryView::of(&product, &collection_base(&headers)),
    ))
}

/// Sets the stock, if `version` is still the product's version.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryUpdate {
    /// The new stock, 0 or more.
    stock: i64,
    /// The version this change is based on.
    version: i64,
}

fn conflict(e: UpdateError, id: &str) -> Problem {
    match e {
        UpdateError::NotFound => Problem::not_found("product", id),
        UpdateError::Conflict { expected, current } => Problem::conflict(format!(
            "product {id:?} changed: version {expected} is stale, the current version is {current}"
        ))
        .with_extension("currentVersion", current),
        UpdateError::BelowReserved { reserved } => Problem::conflict(format!(
            "product {id:?} has {reserved} reserved for orders: the stock cannot be less"
        ))
        .with_extension("reserved", reserved),
        UpdateError::Db(e) => e.into(),
    }
}

/// Set the stock (optimistic concurrency: 409 when `version` is stale).
#[utoipa::path(put, path = "/api/v1/products/{id}/inventory", params(("id" = String, Path)), request_body = InventoryUpdate,
    responses((status = 200, body = InventoryView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn put_inventory(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    extract::Json(update): extract::Json<InventoryUpdate>,
) -> Result<Response, Problem> {
    Violations::new()
        .check(update.stock >= 0, "stock", "must not be negative")
        .check(
            update.stock <= MAX_STOCK,
            "stock",
            format!("must be at most {MAX_STOCK}"),
        )
        .check(update.version >= 1, "version", "must be at least 1")
        .finish()?;
    let product = state
        .catalog
        .set(Versioned::Stock, &id, update.stock, update.version, |_| {
            None
        })
        .await
        .map_err(|e| conflict(e, &id))?;
    Ok(with_etag(
        product.version,
        InventoryView::of(&product, &collection_base(&headers)),
    ))
}

/// Sets the price, if `version` is still the product's version.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceUpdate {
    /// In currency units, at most two decimals.
    price: f64,
    /// The version this change is based on.
    version: i64,
}

/// Set the price; watchers of the price (gRPC `WatchProductPrice`) are told.
#[utoipa::path(put, path = "/api/v1/products/{id}/price", params(("id" = String, Path)), request_body = PriceUpdate,
    responses((status = 200, body = ProductView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn put_price(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    extract::Json(update): extract::Json<PriceUpdate>,
) -> Result<Response, Problem> {
    let mut violations = Violations::new();
    let price = cents(update.price)
        .map_err(|m| violations.add("price", m))
        .ok();
    violations
        .check(update.version >= 1, "version", "must be at least 1")
        .finish()?;
    let price = price.unwrap_or_default();
    let product = state
        .catalog
        .set(
            Versioned::PriceCents,
            &id,
            price,
            update.version,
            crate::prices::event,
        )
        .await
        .map_err(|e| conflict(e, &id))?;
    state.prices.announce(&product);
    state.wake_relay();
    let view = ProductView::of(&product).with_links(&collection_base(&headers));
    Ok(with_etag(product.version, view))
}

/// Reserve stock for an order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewReservation {
    order_id: String,
    /// 1 to 50 lines, each product once, 1 to 1000 each.
    items: Vec<Line>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationView {
    pub order_id: String,
    pub items: Vec<Reserved>,
}

/// Reserve every line of an order, or none (409 naming the line short of
/// stock). Idempotent per order: a repeat returns the first reservation.
#[utoipa::path(post, path = "/api/v1/reservations", request_body = NewReservation,
    responses((status = 201, body = ReservationView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn reserve(
    State(state): State<AppState>,
    extract::Json(request): extract::Json<NewReservation>,
) -> Result<Response, Problem> {
    let mut v = Violations::new();
    v.length("orderId", &request.order_id, 1, 100)
        .check(!request.items.is_empty(), "items", "must not be empty")
        .check(
            request.items.len() <= 50,
            "items",
            "must have at most 50 lines",
        );
    for (i, line) in request.items.iter().enumerate() {
        v.check(
            (1..=1000).contains(&line.quantity),
            &format!("items[{i}].quantity"),
            "must be between 1 and 1000",
        );
        if request.items[..i]
            .iter()
            .any(|o| o.product_id == line.product_id)
        {
            v.add(&format!("items[{i}].productId"), "appears twice");
        }
    }
    v.finish()?;
    let items = state
        .reservations
        .reserve(&request.order_id, &request.items)
        .await
        .map_err(|e| match e {
            ReserveError::NotFound(i) => Problem::field(
                format!("items[{i}].productId"),
                format!("no product {:?}", request.items[i].product_id),
            )
            .with_status(axum::http::StatusCode::UNPROCESSABLE_ENTITY),
            ReserveError::Insufficient { index, available } => Problem::conflict(format!(
                "not enough stock of {:?}: {available} available",
                request.items[index].product_id
            ))
            .with_errors(vec![FieldError::new(
                format!("items[{index}].quantity"),
                format!("only {available} available"),
            )])
            .with_extension("available", available),
            ReserveError::Db(e) => e.into(),
        })?;
    let body = ReservationView {
        order_id: request.order_id,
        items,
    };
    Ok((axum::http::StatusCode::CREATED, Json(body)).into_response())
}

/// Release what is still only reserved for an order.
#[utoipa::path(delete, path = "/api/v1/reservations/{orderId}", params(("orderId" = String, Path)),
    responses((status = 204)))]
async fn release(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> Result<axum::http::StatusCode, Problem> {
    state.reservations.release(&order_id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
