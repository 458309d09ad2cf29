//! What every service of the shop shares, so that each of them is only its
//! own business logic: typed configuration from the environment, telemetry,
//! the database pool, the broker connection, RFC 9457 errors, health
//! endpoints, outbound HTTP/gRPC clients that go through the mesh, a
//! server that shuts down gracefully, and events that are never lost (the
//! outbox and its relay, consumers with retries and a dead-letter queue).
//!
//! The services know nothing of the mesh: they call each other by service
//! name; when the pod has a sidecar, the proxy settings it injected
//! (`HTTP_PROXY`, `NO_PROXY`, `TRELLIS_OUTBOUND`) route those calls through it.

pub mod amqp;
pub mod auth;
pub mod config;
pub mod consumer;
pub mod db;
pub mod events;
pub mod extract;
pub mod grpc;
pub mod health;
pub mod http_client;
pub mod outbox;
pub mod problem;
pub mod server;
pub mod telemetry;
pub mod validate;

pub use problem::Problem;
