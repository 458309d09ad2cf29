//! The REST API under `/api/v1/payments`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shop_common::Problem;
use shop_common::auth::caller;
use shop_common::extract::{self, Path};
use shop_common::http_client::{Failure, HttpClient};
use shop_common::problem::FieldError;
use shop_common::validate::{Violations, cents, from_cents};
use utoipa::{OpenApi, ToSchema};

use crate::AppState;
use crate::faults::{self, FaultView};
use crate::ledger::{Payment, RecordError, created_at, new_id};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "payments",
        description = "The shop's payments, with a fault knob."
    ),
    paths(charge, get_payment, faults::show, faults::change),
    components(schemas(NewPayment, PaymentView, FaultView, Problem, FieldError))
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> axum::Router {
    let api = shop_common::server::router()
        .route("/api/v1/payments", post(charge))
        .route("/api/v1/payments/{id}", get(get_payment))
        .with_state(state.clone())
        .layer(axum::middleware::from_fn_with_state(
            state.faults.clone(),
            faults::inject,
        ));
    api.merge(faults::admin(state.faults.clone()))
}

/// `POST /payments`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewPayment {
    pub order_id: String,
    /// Must equal the order's total.
    pub amount: f64,
    /// Default `credit_card`.
    #[serde(default)]
    pub payment_method: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    pub id: String,
    pub order_id: String,
    pub user_id: String,
    pub amount: f64,
    pub currency: String,
    /// `COMPLETED`.
    pub status: String,
    pub payment_method: String,
    pub created_at: String,
}

impl PaymentView {
    fn of(p: &Payment) -> Self {
        PaymentView {
            id: p.id.clone(),
            order_id: p.order_id.clone(),
            user_id: p.user_id.clone(),
            amount: from_cents(p.amount_cents),
            currency: p.currency.clone(),
            status: p.status.clone(),
            payment_method: p.method.clone(),
            created_at: created_at(p),
        }
    }
}

/// The order as payments reads it from orders.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderSummary {
    user_id: String,
    total_amount: f64,
    currency: String,
    status: String,
}

/// Calls orders for the order a payment is for.
#[derive(Clone)]
pub struct OrdersClient {
    pub http: HttpClient,
    pub base: String,
    pub timeout: Duration,
}

impl OrdersClient {
    async fn order(&self, id: &str, headers: &HeaderMap) -> Result<OrderSummary, Problem> {
        let mut request = self
            .http
            .get(&format!("{}/api/v1/orders/{}", self.base, id))
            .timeout(self.timeout);
        for name in ["authorization", "x-user-id"] {
            if let Some(v) = headers.get(name) {
                request = request.header(name, v.clone());
            }
        }
        let response = request.send().await.map_err(|e| {
            tracing::warn!(error = %e, "calling orders failed");
            Failure::of(&e)
                .problem("orders")
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
        })?;
        match response.status() {
            s if s.is_success() => response.json().await.map_err(|e| {
                tracing::warn!(error = %e, "orders answered something unexpected");
                Problem::unavailable("the orders service gave no usable answer")
            }),
            StatusCode::NOT_FOUND => Err(Problem::field("orderId", format!("no order {id:?}"))
                .with_status(StatusCode::UNPROCESSABLE_ENTITY)),
            s => Err(Problem::unavailable(format!(
                "the orders service answered {s}"
            ))),
        }
    }
}

fn key_of(headers: &HeaderMap) -> Result<String, Problem> {
    match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(k)) if (1..=255).contains(&k.len()) => Ok(k.to_string()),
        Some(_) => Err(Problem::field(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )),
        None => Err(Problem::field(
            "Idempotency-Key",
            "is required: a retried charge must not charge twice",
        )),
    }
}

fn created(p: &Payment, status: StatusCode, replayed: bool) -> Response {
    let mut response = (status, Json(PaymentView::of(p))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/payments/{}", p.id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Charge an order. The `Idempotency-Key` header is required: a retry with
/// the same key and body returns the first payment; the amount must be the
/// order's total; an order is paid once.
#[utoipa::path(post, path = "/api/v1/payments", request_body = NewPayment,
    params(("Idempotency-Key" = String, Header)),
    responses((status = 201, body = PaymentView),
        (status = 200, body = PaymentView, description = "a retry: the payment made for this key"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "the order is paid or not payable"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "unknown order, wrong amount, or a reused key"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn charge(
    State(state): State<AppState>,
    headers: HeaderMap,
    extract::Json(request): extract::Json<NewPayment>,
) -> Result<Response, Problem> {
    let key = key_of(&headers)?;
    let method = request
        .payment_method
        .clone()
        .unwrap_or_else(|| "credit_card".into());
    let mut v = Violations::new();
    v.length("orderId", &request.order_id, 1, 100)
        .length("paymentMethod", &method, 1, 50);
    let amount = match cents(request.amount) {
        Ok(0) => {
            v.add("amount", "must be more than 0");
            0
        }
        Ok(c) => c,
        Err(e) => {
            v.add("amount", e);
            0
        }
    };
    v.finish()?;
    let hash = hex::encode(Sha256::digest(
        serde_json::json!([request.order_id, amount, method]).to_string(),
    ));
    if let Some(existing) = state.ledger.by_key(&key).await? {
        return replay(existing, &hash);
    }
    let order = state.orders.order(&request.order_id, &headers).await?;
    if let Some(c) = caller(&headers)
        && c != order.user_id
    {
        return Err(Problem::forbidden(
            "a user may only pay for their own orders",
        ));
    }
    if let Some(paid) = state.ledger.by_order(&request.order_id).await? {
        return Err(already_paid(&paid));
    }
    if order.status != "CREATED" {
        return Err(Problem::conflict(format!(
            "order {:?} is {} and cannot be paid",
            request.order_id, order.status
        )));
    }
    let total = cents(order.total_amount)
        .map_err(|e| Problem::internal(&format!("the order's total {e}")))?;
    if amount != total {
        return Err(Problem::field(
            "amount",
            format!("must be the order's total, {}", from_cents(total)),
        )
        .with_status(StatusCode::UNPROCESSABLE_ENTITY));
    }
    let (id, now) = new_id();
    let payment = Payment {
        id,
        order_id: request.order_id.clone(),
        user_id: order.user_id,
        idempotency_key: key.clone(),
        request_hash: hash.clone(),
        amount_cents: amount,
        currency: order.currency,
        method,
        status: "COMPLETED".into(),
        created_at: now,
    };
    match state.ledger.record(&payment).await {
        Ok(()) => {
            if let Some(relay) = &state.relay {
                relay.wake();
            }
            Ok(created(&payment, StatusCode::CREATED, false))
        }
        // A concurrent request with this key or for this order was first.
        Err(RecordError::Duplicate) => match state.ledger.by_key(&key).await? {
            Some(existing) => replay(existing, &hash),
            None => match state.ledger.by_order(&request.order_id).await? {
                Some(paid) => Err(already_paid(&paid)),
                None => Err(Problem::conflict(
                    "a concurrent payment got in the way; try again",
                )),
            },
        },
        Err(RecordError::Db(e)) => Err(e.into()),
    }
}

fn replay(existing: Payment, hash: &str) -> Result<Response, Problem> {
    if existing.request_hash != hash {
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
            .with_type("urn:shop:problem:idempotency-key-reused")
            .with_detail("this Idempotency-Key was used for a different payment")
            .with_errors(vec![FieldError::new(
                "Idempotency-Key",
                "already used for a different payment",
            )]));
    }
    Ok(created(&existing, StatusCode::OK, true))
}

fn already_paid(paid: &Payment) -> Problem {
    Problem::conflict(format!("order {:?} is paid already", paid.order_id))
        .with_extension("paymentId", paid.id.clone())
}

/// One payment.
#[utoipa::path(get, path = "/api/v1/payments/{id}", params(("id" = String, Path)),
    responses((status = 200, body = PaymentView), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_payment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<PaymentView>, Problem> {
    let caller = caller(&headers);
    state
        .ledger
        .get(&id)
        .await?
        .filter(|p| caller.as_ref().is_none_or(|c| c == &p.user_id))
        .map(|p| Json(PaymentView::of(&p)))
        .ok_or_else(|| Problem::not_found("payment", &id))
}
