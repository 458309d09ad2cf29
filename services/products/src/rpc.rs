//! AMQP request-reply on `product_requests`: `{"productId": "…"}` in, the
//! product (with its stock) or a problem out.

use serde::Deserialize;
use shop_common::Problem;
use shop_common::amqp::Broker;
use shop_common::amqp::rpc::{self, Reply};
use shop_common::extract::parse_json;

use crate::catalog::Catalog;
use crate::rest::ProductView;

pub const QUEUE: &str = "product_requests";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProductRequest {
    product_id: String,
}

pub async fn serve(broker: &Broker, catalog: Catalog) -> lapin::Result<()> {
    rpc::serve(broker, QUEUE, 16, move |body| {
        let catalog = catalog.clone();
        async move { answer(&catalog, &body).await }
    })
    .await
}

async fn answer(catalog: &Catalog, body: &[u8]) -> Reply {
    let request: ProductRequest = match parse_json(body) {
        Ok(r) => r,
        Err(problem) => return Reply::Err(problem),
    };
    match catalog.get(&request.product_id).await {
        Ok(Some(product)) => {
            let mut view = serde_json::to_value(ProductView::of(&product)).unwrap_or_default();
            view["stock"] = product.stock.into();
            Reply::Ok(view)
        }
        Ok(None) => Reply::Err(Problem::not_found("product", &request.product_id)),
        Err(e) => Reply::Err(e.into()),
    }
}
