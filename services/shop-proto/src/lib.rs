//! The shop's gRPC contracts, generated from `proto/`.

/// `product.v1`: ProductService, its messages, client and server.
pub mod product {
    pub mod v1 {
        tonic::include_proto!("product.v1");
    }
}
