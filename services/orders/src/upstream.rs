//! The services an order needs, called over plain HTTP (the sidecar makes
//! the calls resilient): users (does the buyer exist), products (reserve the
//! stock, at today's prices), payments (charge). A refusal of theirs that is
//! about the request (a 4xx problem) is passed on as it is; anything else is
//! a 503 naming the service.

use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};
use shop_common::Problem;
use shop_common::http_client::{Failure, HttpClient};
use shop_common::problem::FieldError;
use shop_common::validate::cents;

use crate::domain::Order;

#[derive(Debug, Clone)]
pub struct Upstreams {
    pub http: HttpClient,
    pub users: String,
    pub products: String,
    pub payments: String,
    pub timeout: Duration,
}

/// One line of a new order, before prices are known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Wanted {
    pub product_id: String,
    /// 1 to 1000.
    pub quantity: u32,
}

/// What products reserved: each line with its unit price.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub items: Vec<ReservedItem>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservedItem {
    pub product_id: String,
    pub quantity: u32,
    pub price: f64,
    pub currency: String,
}

/// How charging went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentOutcome {
    /// `COMPLETED`, or `FAILED` when payments refused or could not be reached
    /// (the order stays CREATED; retrying the POST, or paying it through
    /// payments, completes it).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The caller's identity, passed on to every call made for it.
pub fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in ["authorization", "x-user-id"] {
        if let Some(v) = headers.get(name) {
            out.insert(name, v.clone());
        }
    }
    out
}

impl Upstreams {
    async fn call(
        &self,
        service: &str,
        method: Method,
        url: String,
        headers: &HeaderMap,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value), Problem> {
        let mut request = self
            .http
            .request(method, &url)
            .headers(headers.clone())
            .timeout(self.timeout);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            tracing::warn!(service, error = %e, "call failed");
            Failure::of(&e)
                .problem(service)
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
        })?;
        let status = response.status();
        let value = response.json().await.unwrap_or(serde_json::Value::Null);
        if status.is_client_error() {
            return Err(passed_on(status, &value, service));
        }
        if !status.is_success() {
            tracing::warn!(service, %status, "answered with an error");
            return Err(Problem::unavailable(format!(
                "the {service} service answered {status}"
            )));
        }
        Ok((status, value))
    }

    /// `Ok` if the user exists.
    pub async fn check_user(&self, user_id: &str, headers: &HeaderMap) -> Result<(), Problem> {
        let url = format!("{}/api/v1/users/{}", self.users, encode(user_id));
        match self.call("users", Method::GET, url, headers, None).await {
            Ok(_) => Ok(()),
            Err(p) if p.status == StatusCode::NOT_FOUND => {
                Err(Problem::validation(vec![FieldError::new(
                    "userId",
                    format!("no user {user_id:?}"),
                )])
                .with_status(StatusCode::UNPROCESSABLE_ENTITY))
            }
            Err(p) => Err(p),
        }
    }

    /// Reserves the stock of every line, all or nothing (idempotent per order).
    pub async fn reserve(
        &self,
        order_id: &str,
        items: &[Wanted],
        headers: &HeaderMap,
    ) -> Result<Reservation, Problem> {
        let url = format!("{}/api/v1/reservations", self.products);
        let body = serde_json::json!({"orderId": order_id, "items": items});
        let (_, value) = self
            .call("products", Method::POST, url, headers, Some(body))
            .await?;
        serde_json::from_value(value).map_err(|e| {
            tracing::warn!(error = %e, "products answered an unexpected reservation");
            Problem::unavailable("the products service gave no usable answer")
        })
    }

    /// Gives the stock back when the order could not be recorded.
    pub async fn release(&self, order_id: &str, headers: &HeaderMap) {
        let url = format!("{}/api/v1/reservations/{}", self.products, encode(order_id));
        if let Err(e) = self
            .call("products", Method::DELETE, url, headers, None)
            .await
        {
            tracing::warn!(order_id, error = %e, "releasing a reservation failed");
        }
    }

    /// Charges the order (payments deduplicates on the order id).
    pub async fn charge(&self, order: &Order, method: &str, headers: &HeaderMap) -> PaymentOutcome {
        let url = format!("{}/api/v1/payments", self.payments);
        let body = serde_json::json!({
            "orderId": order.id,
            "amount": order.total_amount(),
            "paymentMethod": method,
        });
        let mut headers = headers.clone();
        if let Ok(key) = format!("order-{}", order.id).parse() {
            headers.insert("idempotency-key", key);
        }
        match self
            .call("payments", Method::POST, url, &headers, Some(body))
            .await
        {
            Ok((_, payment)) => PaymentOutcome {
                status: payment["status"]
                    .as_str()
                    .unwrap_or("COMPLETED")
                    .to_string(),
                payment_id: payment["id"].as_str().map(str::to_string),
                detail: None,
            },
            Err(p) => PaymentOutcome {
                status: "FAILED".into(),
                payment_id: None,
                detail: Some(p.detail.clone().unwrap_or_else(|| p.title.clone())),
            },
        }
    }
}

/// A 4xx of another service, passed on with its status and details.
fn passed_on(status: StatusCode, body: &serde_json::Value, service: &str) -> Problem {
    match serde_json::from_value::<Problem>(body.clone()) {
        Ok(p) => p,
        Err(_) => {
            Problem::new(status).with_detail(format!("the {service} service answered {status}"))
        }
    }
}

/// Percent-encodes one path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Cents of a reservation's total, or why not.
pub fn total_cents(items: &[ReservedItem]) -> Result<i64, &'static str> {
    items.iter().try_fold(0i64, |sum, item| {
        let unit = cents(item.price)?;
        Ok(sum + unit * i64::from(item.quantity))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_in_cents() {
        let item = |price, quantity| ReservedItem {
            product_id: "p".into(),
            quantity,
            price,
            currency: "USD".into(),
        };
        assert_eq!(total_cents(&[item(29.99, 2), item(49.99, 1)]), Ok(10997));
        assert!(total_cents(&[item(0.001, 1)]).is_err());
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("usr_1"), "usr_1");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
