//! The REST API under `/api/v1/orders`. Writes go to the event store
//! (`commands`), reads to the read model (`view`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use shop_common::Problem;
use shop_common::auth::caller;
use shop_common::db::rfc3339;
use shop_common::events::Envelope;
use shop_common::extract::{self, Path, Query};
use shop_common::problem::FieldError;
use shop_common::validate::from_cents;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::AppState;
use crate::commands::NewOrder;
use crate::domain::{Item, Order, Status};
use crate::upstream::{PaymentOutcome, Wanted};
use crate::view;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orders",
        description = "The shop's orders: event-sourced, read from a CQRS read model."
    ),
    paths(place_order, list_orders, get_order, order_events, set_status),
    components(schemas(
        NewOrder,
        Wanted,
        OrderView,
        PlacedView,
        PaymentOutcome,
        OrderList,
        Item,
        Status,
        StatusChange,
        Problem,
        FieldError
    ))
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> axum::Router {
    shop_common::server::router()
        .route("/api/v1/orders", post(place_order).get(list_orders))
        .route("/api/v1/orders/{id}", get(get_order))
        .route("/api/v1/orders/{id}/events", get(order_events))
        .route("/api/v1/orders/{id}/status", put(set_status))
        .with_state(state)
}

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub id: String,
    pub user_id: String,
    pub items: Vec<Item>,
    pub total_amount: f64,
    pub currency: String,
    pub status: Status,
    pub payment_id: Option<String>,
    /// When fulfilment packed it.
    pub packed_at: Option<String>,
    /// The number of events in the order's stream; `PUT …/status` may name it.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl OrderView {
    pub fn of(o: &Order) -> Self {
        OrderView {
            id: o.id.clone(),
            user_id: o.user_id.clone(),
            items: o.items.clone(),
            total_amount: from_cents(o.total_cents),
            currency: o.currency.clone(),
            status: o.status,
            payment_id: o.payment_id.clone(),
            packed_at: o.packed_at.map(rfc3339),
            version: o.version,
            created_at: rfc3339(o.created_at),
            updated_at: rfc3339(o.updated_at),
        }
    }
}

/// A placed order and how charging it went.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlacedView {
    #[serde(flatten)]
    pub order: OrderView,
    pub payment: PaymentOutcome,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderList {
    pub data: Vec<OrderView>,
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) => Ok(Some(k.to_string())),
        _ => Err(Problem::field(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// Place an order: the buyer is checked (users), the stock reserved at
/// today's prices (products), the order recorded, and charged (payments).
/// With an `Idempotency-Key`, a retry returns the same order.
#[utoipa::path(post, path = "/api/v1/orders", request_body = NewOrder,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes a retried POST return the same order")),
    responses((status = 201, body = PlacedView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "not enough stock"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "unknown user or product, or a reused key"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    extract::Json(request): extract::Json<NewOrder>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let placed = state
        .orders
        .place(&headers, key.as_deref(), request)
        .await?;
    let body = PlacedView {
        order: OrderView::of(&placed.order),
        payment: placed.payment,
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/orders/{}", placed.order.id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    if placed.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Whose orders (default: the authenticated caller).
    user_id: Option<String>,
}

/// A user's orders, newest first (from the read model).
#[utoipa::path(get, path = "/api/v1/orders", params(ListQuery),
    responses((status = 200, body = OrderList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")))]
async fn list_orders(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<OrderList>, Problem> {
    let user = match (caller(&headers), q.user_id) {
        (Some(c), Some(u)) if c != u => {
            return Err(Problem::forbidden("a user may only list their own orders"));
        }
        (Some(c), _) => c,
        (None, Some(u)) => u,
        (None, None) => return Err(Problem::field("userId", "is required")),
    };
    let orders = view::of_user(state.orders.store.db(), &user).await?;
    Ok(Json(OrderList {
        data: orders.iter().map(OrderView::of).collect(),
    }))
}

async fn visible(state: &AppState, headers: &HeaderMap, id: &str) -> Result<Order, Problem> {
    let caller = caller(headers);
    view::get(state.orders.store.db(), id)
        .await?
        .filter(|o| caller.as_ref().is_none_or(|c| c == &o.user_id))
        .ok_or_else(|| Problem::not_found("order", id))
}

/// One order (from the read model).
#[utoipa::path(get, path = "/api/v1/orders/{id}", params(("id" = String, Path)),
    responses((status = 200, body = OrderView), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, Problem> {
    Ok(Json(OrderView::of(&visible(&state, &headers, &id).await?)))
}

/// The order's stream: every event, in order.
#[utoipa::path(get, path = "/api/v1/orders/{id}/events", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn order_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Vec<Envelope<serde_json::Value>>>, Problem> {
    visible(&state, &headers, &id).await?;
    let stream = state
        .orders
        .store
        .stream(&id)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(Json(stream.iter().map(|r| r.envelope()).collect()))
}

/// A status change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// PAID, SHIPPED, DELIVERED or CANCELLED.
    status: String,
    /// The version the change is based on; 409 if the order moved on.
    version: Option<i64>,
}

/// Change the status: CREATED→PAID→SHIPPED→DELIVERED, CREATED→CANCELLED;
/// anything else, or a stale `version`, is a 409.
#[utoipa::path(put, path = "/api/v1/orders/{id}/status", params(("id" = String, Path)), request_body = StatusChange,
    responses((status = 200, body = OrderView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn set_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    extract::Json(change): extract::Json<StatusChange>,
) -> Result<Json<OrderView>, Problem> {
    let to = Status::parse(&change.status)
        .ok_or_else(|| Problem::field("status", "must be PAID, SHIPPED, DELIVERED or CANCELLED"))?;
    let order = state
        .orders
        .set_status(&id, to, change.version, caller(&headers).as_deref())
        .await?;
    Ok(Json(OrderView::of(&order)))
}
