//! What orders consumes: `PaymentProcessed` from its own queue (a completed
//! payment marks the order PAID), and fulfilment requests from the work
//! queue `order_processing` (one at a time: prefetch 1).

use shop_common::amqp::Broker;
use shop_common::consumer::{self, Failure, QueueSpec, RetryPolicy};

use crate::commands::{FULFILMENT_QUEUE, FulfilOrder, Orders, PaymentProcessed};

pub const PAYMENTS_QUEUE: &str = "orders.payments";

pub async fn start(broker: &Broker, orders: Orders, retry: RetryPolicy) -> lapin::Result<()> {
    let payments = QueueSpec {
        queue: PAYMENTS_QUEUE.into(),
        events: vec!["PaymentProcessed".into()],
        prefetch: 8,
        retry,
    };
    let on_payment = orders.clone();
    consumer::consume(broker, payments, move |message| {
        let orders = on_payment.clone();
        async move {
            let event = message.envelope::<PaymentProcessed>()?;
            let id = event.event_id.to_string();
            orders
                .payment_processed(PAYMENTS_QUEUE, &id, event.data)
                .await
        }
    })
    .await?;

    let fulfilment = QueueSpec {
        queue: FULFILMENT_QUEUE.into(),
        events: vec![],
        prefetch: 1,
        retry,
    };
    consumer::consume(broker, fulfilment, move |message| {
        let orders = orders.clone();
        async move {
            let request: FulfilOrder = message.json()?;
            if request.order_id.trim().is_empty() {
                return Err(Failure::Reject("orderId is empty".into()));
            }
            orders.fulfil(request).await
        }
    })
    .await
}
