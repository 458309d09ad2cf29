//! `trellis-proxy`: the sidecar of the Trellis mesh. The design, and why
//! each stack is in the order it is, is in `docs/architecture.md`.
//!
//! Module map (one concern each):
//! - [`proxy`]: one proxy instance, composed: listeners, applier, file watcher, shutdown.
//! - [`apply`]: the one applier configs flow to ([`reload`] and
//!   [`ProxyHandle::reload`] send them); it publishes ([`published`]) what the
//!   listeners and [`admin`] read.
//! - [`server`]: listeners (HTTP/1.1 + h2c), protocol limits, graceful drain;
//!   [`server::guard`] stops request smuggling and slowloris below hyper;
//!   [`server::workers`] the serving threads, sized by [`cgroup`] (the
//!   container's CPU limit) in the binary.
//! - [`edge`]: where every request enters and its one response leaves, on
//!   both listeners: [`hygiene`] (request-head rules, hop-by-hop, `Via`,
//!   loops), [`respond`] (errors become HTTP or gRPC answers), [`observe`]
//!   (request metrics), [`upgrade`] (WebSocket, CONNECT), [`stall`] (bodies).
//! - [`outbound`]: routing by authority to upstreams; `outbound::stack`
//!   composes the per-upstream stack. [`inbound`]: the app side; `inbound::stack`.
//! - [`resilience`]: the policy layers. [`balance`]: endpoint sets and the
//!   P2C peak-EWMA balancer. [`discovery`]: static, DNS, Kubernetes.
//! - [`client`]: pooled HTTP/1.1 and HTTP/2 connections to endpoints.
//! - [`trace`], [`metrics`]: spans and the metrics registry.
//! - [`error`]: [`error::ProxyError`], what every layer below the edge fails with.

pub mod admin;
pub mod apply;
pub mod balance;
pub mod body;
pub mod cgroup;
pub mod client;
pub mod discovery;
pub mod edge;
pub mod error;
pub mod hygiene;
pub mod inbound;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod proxy;
pub mod published;
mod reload;
pub mod resilience;
pub mod respond;
pub mod server;
pub mod stall;
pub mod trace;
pub mod upgrade;

use http::{Request, Response};
use tower::util::BoxCloneSyncService;

pub use proxy::{Options, Proxy, ProxyHandle};

/// A stack below a listener's edge: it answers with an upstream's response
/// or fails with a typed [`error::ProxyError`], which the edge turns into the
/// caller's answer.
pub type HttpService =
    BoxCloneSyncService<Request<body::Body>, Response<body::Body>, error::ProxyError>;

/// Which side of the sidecar a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From other sidecars to the app.
    Inbound,
    /// From the app to upstreams.
    Outbound,
}

impl Direction {
    /// The `direction` metric label, also used in `Via` markers.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}
