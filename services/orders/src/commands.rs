//! The write side: placing an order, changing its status, and what the
//! consumers do with a completed payment and a fulfilment request. Each
//! reads the order from its events, decides, and appends.

use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use shop_common::Problem;
use shop_common::consumer::Failure;
use shop_common::events::Outgoing;
use shop_common::outbox::Relay;
use shop_common::problem::FieldError;
use shop_common::validate::{Violations, from_cents};
use utoipa::ToSchema;

use crate::domain::{Item, Order, OrderCreated, OrderEvent, OrderPacked, Status, status_change};
use crate::idempotency::{self, Claim};
use crate::store::{AlsoWrite, EventStore, StoreError};
use crate::upstream::{PaymentOutcome, Upstreams, Wanted, forwarded, total_cents};

/// The fulfilment work queue.
pub const FULFILMENT_QUEUE: &str = "order_processing";

/// `POST /orders`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewOrder {
    /// The buyer; taken from the token when the request came through the
    /// gateway (and must match it if given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// 1 to 50 lines, each product once.
    pub items: Vec<Wanted>,
    /// Default `credit_card`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
}

/// A fulfilment request on `order_processing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FulfilOrder {
    pub order_id: String,
}

/// The `data` of a `PaymentProcessed` event, as far as orders reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentProcessed {
    pub payment_id: String,
    pub order_id: String,
    pub status: String,
}

pub struct Placed {
    pub order: Order,
    pub payment: PaymentOutcome,
    /// The Idempotency-Key had been seen: this is the earlier order.
    pub replayed: bool,
}

#[derive(Clone)]
pub struct Orders {
    pub store: EventStore,
    pub upstreams: Upstreams,
    /// Woken after each append that staged messages.
    pub relay: Option<Relay>,
}

fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::Conflict { stream, actual, .. } => Problem::conflict(format!(
            "order {stream:?} changed meanwhile; its version is now {actual}"
        ))
        .with_extension("currentVersion", actual),
        StoreError::Db(e) => e.into(),
        e @ StoreError::Corrupt(..) => Problem::internal(&e),
    }
}

fn store_failure(e: StoreError) -> Failure {
    match e {
        e @ StoreError::Conflict { .. } => Failure::Retry(e.to_string()),
        StoreError::Db(e) => e.into(),
        e @ StoreError::Corrupt(..) => Failure::Reject(e.to_string()),
    }
}

impl Orders {
    fn wake(&self) {
        if let Some(relay) = &self.relay {
            relay.wake();
        }
    }

    /// Checks the buyer, reserves stock, records the order and charges it.
    pub async fn place(
        &self,
        headers: &HeaderMap,
        key: Option<&str>,
        request: NewOrder,
    ) -> Result<Placed, Problem> {
        let user_id = buyer(headers, &request)?;
        let method = check(&request)?;
        let (order_id, seen) = match key {
            None => (idempotency::new_order_id(), false),
            Some(key) => {
                let hash = idempotency::request_hash(&serde_json::json!({
                    "userId": user_id, "items": request.items, "paymentMethod": method,
                }));
                match idempotency::claim(self.store.db(), &user_id, key, &hash).await? {
                    Claim::Fresh(id) => (id, false),
                    Claim::Seen(id) => (id, true),
                    Claim::Mismatch => {
                        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
                            .with_type("urn:shop:problem:idempotency-key-reused")
                            .with_detail("this Idempotency-Key was used for a different request")
                            .with_errors(vec![FieldError::new(
                                "Idempotency-Key",
                                "already used for a different request",
                            )]));
                    }
                }
            }
        };
        if seen && let Some(order) = self.store.load(&order_id).await.map_err(store_problem)? {
            return Ok(self.charged(order, &method, headers, true).await);
        }
        let forward = forwarded(headers);
        self.upstreams.check_user(&user_id, &forward).await?;
        let reservation = self
            .upstreams
            .reserve(&order_id, &request.items, &forward)
            .await?;
        let currency = reservation
            .items
            .first()
            .map(|i| i.currency.clone())
            .unwrap_or_default();
        if reservation.items.iter().any(|i| i.currency != currency) {
            self.upstreams.release(&order_id, &forward).await;
            return Err(
                Problem::field("items", "all products of an order must have one currency")
                    .with_status(StatusCode::UNPROCESSABLE_ENTITY),
            );
        }
        let total = match total_cents(&reservation.items) {
            Ok(t) => t,
            Err(e) => {
                self.upstreams.release(&order_id, &forward).await;
                return Err(Problem::internal(&format!("a reserved price {e}")));
            }
        };
        let created = OrderEvent::Created(OrderCreated {
            order_id: order_id.clone(),
            user_id,
            items: reservation
                .items
                .iter()
                .map(|i| Item {
                    product_id: i.product_id.clone(),
                    quantity: i.quantity,
                    price: i.price,
                })
                .collect(),
            total_amount: from_cents(total),
            currency,
            status: Status::Created,
        });
        let order = match self
            .store
            .append(&order_id, None, created, AlsoWrite::default())
            .await
        {
            Ok(order) => order,
            // A concurrent request with the same key recorded it first.
            Err(StoreError::Conflict { .. }) => {
                let order = self.store.load(&order_id).await.map_err(store_problem)?;
                let order =
                    order.ok_or_else(|| Problem::internal(&"a conflicting order vanished"))?;
                return Ok(self.charged(order, &method, headers, true).await);
            }
            Err(e) => {
                self.upstreams.release(&order_id, &forward).await;
                return Err(store_problem(e));
            }
        };
        self.wake();
        Ok(self.charged(order, &method, headers, seen).await)
    }

    /// Charges `order` unless it is past CREATED.
    async fn charged(
        &self,
        order: Order,
        method: &str,
        headers: &HeaderMap,
        replayed: bool,
    ) -> Placed {
        let payment = if order.status == Status::Created {
            self.upstreams
                .charge(&order, method, &forwarded(headers))
                .await
        } else {
            PaymentOutcome {
                status: "COMPLETED".into(),
                payment_id: order.payment_id.clone(),
                detail: None,
            }
        };
        Placed {
            order,
            payment,
            replayed,
        }
    }

    /// `PUT /orders/{id}/status`: legal transitions only, optionally
    /// against the version the caller saw.
    pub async fn set_status(
        &self,
        id: &str,
        to: Status,
        expected_version: Option<i64>,
        caller: Option<&str>,
    ) -> Result<Order, Problem> {
        let order = self
            .store
            .load(id)
            .await
            .map_err(store_problem)?
            .filter(|o| caller.is_none_or(|c| c == o.user_id))
            .ok_or_else(|| Problem::not_found("order", id))?;
        if let Some(expected) = expected_version
            && expected != order.version
        {
            return Err(Problem::conflict(format!(
                "order {id:?} changed: version {expected} is stale, the current version is {}",
                order.version
            ))
            .with_extension("currentVersion", order.version));
        }
        let event = status_change(&order, to, None).map_err(|e| {
            Problem::conflict(e.to_string())
                .with_extension("currentStatus", order.status.as_str())
                .with_extension("currentVersion", order.version)
        })?;
        let also = AlsoWrite {
            messages: if to == Status::Paid {
                vec![fulfilment(id).map_err(|e| Problem::internal(&e))?]
            } else {
                vec![]
            },
            handled: None,
        };
        let order = self
            .store
            .append(id, Some(&order), event, also)
            .await
            .map_err(store_problem)?;
        self.wake();
        Ok(order)
    }

    /// A `PaymentProcessed` event: a completed payment marks its order PAID
    /// and queues its fulfilment.
    pub async fn payment_processed(
        &self,
        consumer: &str,
        event_id: &str,
        payment: PaymentProcessed,
    ) -> Result<(), Failure> {
        if payment.status != "COMPLETED" {
            return Ok(());
        }
        let order = self
            .store
            .load(&payment.order_id)
            .await
            .map_err(store_failure)?
            .ok_or_else(|| Failure::Reject(format!("no order {:?}", payment.order_id)))?;
        match order.status {
            Status::Created => {}
            Status::Cancelled => {
                return Err(Failure::Reject(format!(
                    "order {} was cancelled before payment {} completed: refund it",
                    order.id, payment.payment_id
                )));
            }
            // Already paid (a redelivery), or further along.
            _ => return Ok(()),
        }
        let event = status_change(&order, Status::Paid, Some(payment.payment_id))
            .map_err(|e| Failure::Reject(e.to_string()))?;
        let also = AlsoWrite {
            messages: vec![fulfilment(&order.id).map_err(|e| Failure::Reject(e.to_string()))?],
            handled: Some((consumer.to_string(), event_id.to_string())),
        };
        self.store
            .append(&order.id, Some(&order), event, also)
            .await
            .map_err(store_failure)?;
        self.wake();
        Ok(())
    }

    /// A fulfilment request: a paid order is packed once.
    pub async fn fulfil(&self, request: FulfilOrder) -> Result<(), Failure> {
        let order = self
            .store
            .load(&request.order_id)
            .await
            .map_err(store_failure)?
            .ok_or_else(|| Failure::Reject(format!("no order {:?}", request.order_id)))?;
        if order.status != Status::Paid || order.packed_at.is_some() {
            return Ok(());
        }
        let packed = OrderEvent::Packed(OrderPacked {
            order_id: order.id.clone(),
        });
        self.store
            .append(&order.id, Some(&order), packed, AlsoWrite::default())
            .await
            .map_err(store_failure)?;
        Ok(())
    }
}

fn fulfilment(order_id: &str) -> Result<Outgoing, serde_json::Error> {
    Outgoing::to_queue(
        FULFILMENT_QUEUE,
        "FulfilOrder",
        &format!("fulfil-{order_id}"),
        &FulfilOrder {
            order_id: order_id.to_string(),
        },
    )
}

/// The buyer: the authenticated caller, or (inside the shop) `userId`.
fn buyer(headers: &HeaderMap, request: &NewOrder) -> Result<String, Problem> {
    match (shop_common::auth::caller(headers), &request.user_id) {
        (Some(caller), Some(given)) if &caller != given => Err(Problem::forbidden(
            "an order may only be placed for oneself",
        )),
        (Some(caller), _) => Ok(caller),
        (None, Some(given)) if !given.trim().is_empty() => Ok(given.clone()),
        (None, _) => Err(Problem::field("userId", "is required")),
    }
}

/// Checks the lines and the payment method; the payment method to use.
fn check(request: &NewOrder) -> Result<String, Problem> {
    let mut v = Violations::new();
    v.check(!request.items.is_empty(), "items", "must not be empty")
        .check(
            request.items.len() <= 50,
            "items",
            "must have at most 50 lines",
        );
    for (i, item) in request.items.iter().enumerate() {
        v.length(&format!("items[{i}].productId"), &item.product_id, 1, 100)
            .check(
                (1..=1000).contains(&item.quantity),
                &format!("items[{i}].quantity"),
                "must be between 1 and 1000",
            );
        if request.items[..i]
            .iter()
            .any(|o| o.product_id == item.product_id)
        {
            v.add(&format!("items[{i}].productId"), "appears twice");
        }
    }
    let method = request
        .payment_method
        .clone()
        .unwrap_or_else(|| "credit_card".into());
    v.length("paymentMethod", &method, 1, 50);
    v.finish()?;
    Ok(method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(items: Vec<(&str, u32)>) -> NewOrder {
        NewOrder {
            user_id: Some("usr_1".into()),
            items: items
                .into_iter()
                .map(|(p, q)| Wanted {
                    product_id: p.into(),
                    quantity: q,
                })
                .collect(),
            payment_method: None,
        }
    }

    #[test]
    fn lines_are_checked() {
        assert_eq!(check(&order(vec![("p1", 1)])).unwrap(), "credit_card");
        let p = check(&order(vec![("p1", 0), ("p1", 2), ("", 1001)])).unwrap_err();
        let fields: Vec<_> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "items[0].quantity",
                "items[1].productId",
                "items[2].productId",
                "items[2].quantity"
            ]
        );
        assert_eq!(check(&order(vec![])).unwrap_err().errors[0].field, "items");
    }

    #[test]
    fn the_buyer_is_the_caller() {
        let mut headers = HeaderMap::new();
        assert_eq!(buyer(&headers, &order(vec![])).unwrap(), "usr_1");
        headers.insert("x-user-id", "usr_2".parse().unwrap());
        assert_eq!(buyer(&headers, &order(vec![])).unwrap_err().status, 403);
        let mut mine = order(vec![]);
        mine.user_id = None;
        assert_eq!(buyer(&headers, &mine).unwrap(), "usr_2");
        assert_eq!(
            buyer(&HeaderMap::new(), &mine).unwrap_err().errors[0].field,
            "userId"
        );
    }
}
