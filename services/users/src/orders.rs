//! The orders service, as users calls it: `GET /api/v1/orders?userId=`.
//! Whatever goes wrong there — nothing listening, no answer in time, an
//! error — becomes a 503 problem here, within the timeout, never a hang.

use std::time::Duration;

use axum::http::HeaderValue;
use axum::http::header::AUTHORIZATION;
use serde::Deserialize;
use shop_common::Problem;
use shop_common::http_client::{Failure, HttpClient};

#[derive(Clone)]
pub struct OrdersClient {
    http: HttpClient,
    /// e.g. `http://orders`.
    base: String,
    timeout: Duration,
}

/// The list the orders service answers with.
#[derive(Deserialize)]
struct OrderList {
    data: Vec<serde_json::Value>,
}

impl OrdersClient {
    pub fn new(http: HttpClient, base: &str, timeout: Duration) -> Self {
        OrdersClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            timeout,
        }
    }

    pub async fn of_user(
        &self,
        user_id: &str,
        authorization: Option<&HeaderValue>,
    ) -> Result<Vec<serde_json::Value>, Problem> {
        let unavailable = |why: String| Problem::unavailable(format!("the orders service {why}"));
        let mut request = self
            .http
            .get(&format!("{}/api/v1/orders", self.base))
            .query(&[("userId", user_id)])
            .timeout(self.timeout);
        if let Some(auth) = authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = request.send().await.map_err(|e| {
            tracing::warn!(error = %e, "calling orders failed");
            unavailable(match Failure::of(&e) {
                Failure::Unreachable => "is unavailable".into(),
                Failure::Timeout => format!("did not answer within {:?}", self.timeout),
                Failure::Broken => "gave no usable answer".into(),
            })
        })?;
        let status = response.status();
        if !status.is_success() {
            tracing::warn!(%status, "orders answered with an error");
            return Err(unavailable(format!("answered {status}")));
        }
        let list: OrderList = response.json().await.map_err(|e| {
            tracing::warn!(error = %e, "orders answered something unexpected");
            unavailable("gave no usable answer".into())
        })?;
        Ok(list.data)
    }
}
