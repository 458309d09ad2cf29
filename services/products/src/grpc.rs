//! gRPC `product.v1.ProductService`, on the same port as REST.

use std::pin::Pin;

use shop_common::db::rfc3339;
use shop_common::validate::from_cents;
use shop_proto::product::v1 as pb;
use shop_proto::product::v1::product_service_server::ProductService;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::catalog::{Catalog, Product};
use crate::listing::{ListingRequest, total_pages};
use crate::prices::{PriceChange, PriceFeed};

pub struct ProductGrpc {
    pub catalog: Catalog,
    pub prices: PriceFeed,
    /// Ends open price streams when the service shuts down.
    pub shutdown: CancellationToken,
}

fn to_pb(p: &Product) -> pb::Product {
    pb::Product {
        id: p.id.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        price: from_cents(p.price_cents),
        category: p.category.clone(),
        in_stock: p.stock > 0,
        currency: p.currency.clone(),
        stock: p.stock,
        version: p.version,
    }
}

fn update_of(change: &PriceChange) -> pb::PriceUpdate {
    pb::PriceUpdate {
        product_id: change.product_id.clone(),
        new_price: from_cents(change.price_cents),
        currency: change.currency.clone(),
        timestamp: rfc3339(change.changed_at),
        version: change.version,
    }
}

fn internal(e: sqlx::Error) -> Status {
    tracing::error!(error = %e, "database error");
    Status::unavailable("the database is unavailable")
}

/// `minPrice` → `min_price`: errors name fields as the proto does.
fn proto_field(rest: &str) -> String {
    let mut out = String::new();
    for c in rest.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    if out == "q" { "query".into() } else { out }
}

async fn find(catalog: &Catalog, id: &str) -> Result<Product, Status> {
    catalog
        .get(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("product {id:?} does not exist")))
}

type PriceStream = Pin<Box<dyn Stream<Item = Result<pb::PriceUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl ProductService for ProductGrpc {
    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let product = find(&self.catalog, &request.into_inner().product_id).await?;
        Ok(Response::new(to_pb(&product)))
    }

    async fn search_products(
        &self,
        request: Request<pb::SearchProductsRequest>,
    ) -> Result<Response<pb::SearchProductsResponse>, Status> {
        let r = request.into_inner();
        let listing = ListingRequest {
            category: Some(r.category),
            min_price: r.min_price,
            max_price: r.max_price,
            q: Some(r.query),
            page: (r.page != 0).then_some(i64::from(r.page)),
            limit: (r.limit != 0).then_some(i64::from(r.limit)),
            sort: Some(r.sort),
        }
        .check()
        .map_err(|errors| {
            let detail: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", proto_field(&e.field), e.message))
                .collect();
            Status::invalid_argument(detail.join("; "))
        })?;
        let page = self
            .catalog
            .list(&listing.filter, listing.sort, listing.page, listing.limit)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::SearchProductsResponse {
            products: page.items.iter().map(to_pb).collect(),
            total_count: page.total as i32,
            page: listing.page as i32,
            limit: listing.limit as i32,
            total_pages: total_pages(page.total, listing.limit) as i32,
        }))
    }

    type WatchProductPriceStream = PriceStream;

    async fn watch_product_price(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<PriceStream>, Status> {
        let id = request.into_inner().product_id;
        // Subscribe before reading, so no change falls between the two.
        let changes = self.prices.subscribe();
        let current = find(&self.catalog, &id).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(forward_prices(
            current,
            changes,
            self.catalog.clone(),
            tx,
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends the current price, then each newer one, until the caller goes
/// away or the service stops.
async fn forward_prices(
    current: Product,
    mut changes: broadcast::Receiver<PriceChange>,
    catalog: Catalog,
    tx: mpsc::Sender<Result<pb::PriceUpdate, Status>>,
    shutdown: CancellationToken,
) {
    let id = current.id.clone();
    let mut last_version = current.version;
    if tx
        .send(Ok(update_of(&PriceChange::of(&current))))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let change = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("the service is shutting down"))).await;
                return;
            }
            () = tx.closed() => return,
            change = changes.recv() => change,
        };
        let change = match change {
            Ok(c) if c.product_id == id => c,
            Ok(_) => continue,
            // Too slow to keep up: what counts is the latest price, so read it.
            Err(broadcast::error::RecvError::Lagged(_)) => match catalog.get(&id).await {
                Ok(Some(p)) => PriceChange::of(&p),
                _ => continue,
            },
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // A change can arrive twice (broker and local fallback), or a stock
        // change's version can pass it: send only new prices.
        if change.version <= last_version {
            continue;
        }
        last_version = change.version;
        if tx.send(Ok(update_of(&change))).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_follow_the_proto() {
        assert_eq!(proto_field("minPrice"), "min_price");
        assert_eq!(proto_field("limit"), "limit");
        assert_eq!(proto_field("q"), "query");
    }
}
