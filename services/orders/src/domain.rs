//! An order and its events, as pure functions: an order is what its events
//! say, folded in order ([`replay`]); a command decides which event to
//! append ([`status_change`]), and only legal transitions are allowed.

use serde::{Deserialize, Serialize};
use shop_common::validate::{cents, from_cents};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Created,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "CREATED",
            Status::Paid => "PAID",
            Status::Shipped => "SHIPPED",
            Status::Delivered => "DELIVERED",
            Status::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "CREATED" => Status::Created,
            "PAID" => Status::Paid,
            "SHIPPED" => Status::Shipped,
            "DELIVERED" => Status::Delivered,
            "CANCELLED" => Status::Cancelled,
            _ => return None,
        })
    }

    /// CREATED→PAID→SHIPPED→DELIVERED, and CREATED→CANCELLED.
    pub fn can_become(self, to: Status) -> bool {
        matches!(
            (self, to),
            (Status::Created, Status::Paid)
                | (Status::Paid, Status::Shipped)
                | (Status::Shipped, Status::Delivered)
                | (Status::Created, Status::Cancelled)
        )
    }
}

/// One line of an order, as events and the API show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Item {
    pub product_id: String,
    pub quantity: u32,
    /// The unit price when the order was placed.
    pub price: f64,
}

/// `OrderCreated` (published).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderCreated {
    pub order_id: String,
    pub user_id: String,
    pub items: Vec<Item>,
    pub total_amount: f64,
    pub currency: String,
    pub status: Status,
}

/// `OrderPaid`: a payment for the order completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderPaid {
    pub order_id: String,
    /// `None` when set by hand (`PUT …/status`).
    pub payment_id: Option<String>,
}

/// `OrderPacked`: fulfilment has packed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderPacked {
    pub order_id: String,
}

/// `OrderShipped`, `OrderDelivered`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderMoved {
    pub order_id: String,
}

/// `OrderCancelled` (published, with the items so stock can be given back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderCancelled {
    pub order_id: String,
    pub user_id: String,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrderEvent {
    Created(OrderCreated),
    Paid(OrderPaid),
    Packed(OrderPacked),
    Shipped(OrderMoved),
    Delivered(OrderMoved),
    Cancelled(OrderCancelled),
}

impl OrderEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Created(_) => "OrderCreated",
            OrderEvent::Paid(_) => "OrderPaid",
            OrderEvent::Packed(_) => "OrderPacked",
            OrderEvent::Shipped(_) => "OrderShipped",
            OrderEvent::Delivered(_) => "OrderDelivered",
            OrderEvent::Cancelled(_) => "OrderCancelled",
        }
    }

    /// Whether other services hear of it on `shop.events`; the rest stay in
    /// the order's stream.
    pub fn is_published(&self) -> bool {
        matches!(self, OrderEvent::Created(_) | OrderEvent::Cancelled(_))
    }

    pub fn data(&self) -> serde_json::Value {
        let value = match self {
            OrderEvent::Created(d) => serde_json::to_value(d),
            OrderEvent::Paid(d) => serde_json::to_value(d),
            OrderEvent::Packed(d) => serde_json::to_value(d),
            OrderEvent::Shipped(d) | OrderEvent::Delivered(d) => serde_json::to_value(d),
            OrderEvent::Cancelled(d) => serde_json::to_value(d),
        };
        value.unwrap_or_default()
    }

    /// An event as stored: its type and its `data`.
    pub fn parse(event_type: &str, data: &str) -> Result<OrderEvent, String> {
        let bad = |e: serde_json::Error| format!("{event_type}: {e}");
        Ok(match event_type {
            "OrderCreated" => OrderEvent::Created(serde_json::from_str(data).map_err(bad)?),
            "OrderPaid" => OrderEvent::Paid(serde_json::from_str(data).map_err(bad)?),
            "OrderPacked" => OrderEvent::Packed(serde_json::from_str(data).map_err(bad)?),
            "OrderShipped" => OrderEvent::Shipped(serde_json::from_str(data).map_err(bad)?),
            "OrderDelivered" => OrderEvent::Delivered(serde_json::from_str(data).map_err(bad)?),
            "OrderCancelled" => OrderEvent::Cancelled(serde_json::from_str(data).map_err(bad)?),
            other => return Err(format!("unknown event type {other:?}")),
        })
    }
}

/// An order's state: what its events say.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub items: Vec<Item>,
    pub total_cents: i64,
    pub currency: String,
    pub status: Status,
    pub payment_id: Option<String>,
    /// Unix milliseconds.
    pub packed_at: Option<i64>,
    /// The number of events in the stream.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Folds one event (recorded at `at`, Unix ms) into the state.
pub fn apply(state: Option<Order>, event: &OrderEvent, at: i64) -> Result<Order, String> {
    let mut order = match (state, event) {
        (None, OrderEvent::Created(c)) => {
            return Ok(Order {
                id: c.order_id.clone(),
                user_id: c.user_id.clone(),
                items: c.items.clone(),
                total_cents: cents(c.total_amount).map_err(|e| format!("totalAmount {e}"))?,
                currency: c.currency.clone(),
                status: Status::Created,
                payment_id: None,
                packed_at: None,
                version: 1,
                created_at: at,
                updated_at: at,
            });
        }
        (Some(_), OrderEvent::Created(_)) => return Err("OrderCreated in an existing order".into()),
        (None, other) => return Err(format!("{} before OrderCreated", other.event_type())),
        (Some(order), _) => order,
    };
    match event {
        OrderEvent::Created(_) => unreachable!("handled above"),
        OrderEvent::Paid(p) => {
            order.status = Status::Paid;
            order.payment_id = p.payment_id.clone();
        }
        OrderEvent::Packed(_) => order.packed_at = Some(at),
        OrderEvent::Shipped(_) => order.status = Status::Shipped,
        OrderEvent::Delivered(_) => order.status = Status::Delivered,
        OrderEvent::Cancelled(_) => order.status = Status::Cancelled,
    }
    order.version += 1;
    order.updated_at = at;
    Ok(order)
}

/// The state after all of `events` (each with the time it was recorded).
pub fn replay<'a>(
    events: impl IntoIterator<Item = (&'a OrderEvent, i64)>,
) -> Result<Option<Order>, String> {
    let mut state = None;
    for (event, at) in events {
        state = Some(apply(state, event, at)?);
    }
    Ok(state)
}

/// Why a status change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an order that is {from} cannot become {to}", from = .from.as_str(), to = .to.as_str())]
pub struct Illegal {
    pub from: Status,
    pub to: Status,
}

/// The event that moves `order` to `to`.
pub fn status_change(
    order: &Order,
    to: Status,
    payment_id: Option<String>,
) -> Result<OrderEvent, Illegal> {
    if !order.status.can_become(to) {
        return Err(Illegal {
            from: order.status,
            to,
        });
    }
    let order_id = order.id.clone();
    Ok(match to {
        Status::Paid => OrderEvent::Paid(OrderPaid {
            order_id,
            payment_id,
        }),
        Status::Shipped => OrderEvent::Shipped(OrderMoved { order_id }),
        Status::Delivered => OrderEvent::Delivered(OrderMoved { order_id }),
        Status::Cancelled => OrderEvent::Cancelled(OrderCancelled {
            order_id,
            user_id: order.user_id.clone(),
            items: order.items.clone(),
        }),
        Status::Created => unreachable!("no order becomes CREATED again"),
    })
}

impl Order {
    pub fn total_amount(&self) -> f64 {
        from_cents(self.total_cents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created() -> OrderEvent {
        OrderEvent::Created(OrderCreated {
            order_id: "ord_1".into(),
            user_id: "usr_1".into(),
            items: vec![Item {
                product_id: "prod_001".into(),
                quantity: 2,
                price: 29.99,
            }],
            total_amount: 59.98,
            currency: "USD".into(),
            status: Status::Created,
        })
    }

    #[test]
    fn legal_transitions_only() {
        use Status::*;
        let all = [Created, Paid, Shipped, Delivered, Cancelled];
        let legal: Vec<_> = all
            .iter()
            .flat_map(|&f| all.iter().map(move |&t| (f, t)))
            .filter(|(f, t)| f.can_become(*t))
            .collect();
        assert_eq!(
            legal,
            [
                (Created, Paid),
                (Created, Cancelled),
                (Paid, Shipped),
                (Shipped, Delivered)
            ]
        );
    }

    #[test]
    fn replay_folds_every_event() {
        let created = created();
        let paid = OrderEvent::Paid(OrderPaid {
            order_id: "ord_1".into(),
            payment_id: Some("pay_1".into()),
        });
        let packed = OrderEvent::Packed(OrderPacked {
            order_id: "ord_1".into(),
        });
        let order = replay([(&created, 10), (&paid, 20), (&packed, 30)])
            .unwrap()
            .unwrap();
        assert_eq!(order.status, Status::Paid);
        assert_eq!(order.payment_id.as_deref(), Some("pay_1"));
        assert_eq!(order.packed_at, Some(30));
        assert_eq!(order.total_cents, 5998);
        assert_eq!(
            (order.version, order.created_at, order.updated_at),
            (3, 10, 30)
        );
        assert_eq!(replay([]).unwrap(), None);
        assert!(
            replay([(&paid, 1)]).is_err(),
            "no order before OrderCreated"
        );
        assert!(replay([(&created, 1), (&created, 2)]).is_err());
    }

    #[test]
    fn status_changes_make_the_matching_event() {
        let order = replay([(&created(), 1)]).unwrap().unwrap();
        let cancelled = status_change(&order, Status::Cancelled, None).unwrap();
        assert_eq!(cancelled.event_type(), "OrderCancelled");
        assert!(cancelled.is_published());
        let err = status_change(&order, Status::Shipped, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an order that is CREATED cannot become SHIPPED"
        );
        let paid = apply(
            Some(order),
            &status_change(
                &replay([(&created(), 1)]).unwrap().unwrap(),
                Status::Paid,
                None,
            )
            .unwrap(),
            2,
        )
        .unwrap();
        assert!(status_change(&paid, Status::Cancelled, None).is_err());
    }

    #[test]
    fn stored_events_parse_back() {
        for event in [
            created(),
            OrderEvent::Shipped(OrderMoved {
                order_id: "o".into(),
            }),
        ] {
            let data = event.data().to_string();
            assert_eq!(OrderEvent::parse(event.event_type(), &data).unwrap(), event);
        }
        assert!(OrderEvent::parse("OrderLost", "{}").is_err());
        assert!(OrderEvent::parse("OrderShipped", "{\"orderId\": 1}").is_err());
    }
}
