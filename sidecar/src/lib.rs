//! `trellis-proxy`: the sidecar of the Trellis mesh.
//!
//! Module map (one concern each):
//! - [`proxy`]: start, hot reload and shutdown of one proxy instance.
//! - [`server`]: listeners (HTTP/1.1 + h2c), protocol limits, graceful drain;
//!   [`server::guard`] stops request smuggling and slowloris below hyper.
//! - [`hygiene`]: hop-by-hop headers, `Via`/`x-forwarded-*`, request ids, loops.
//! - [`outbound`]: routing by authority to upstreams; `outbound::stack` composes
//!   the per-upstream tower stack. [`inbound`]: the app side; `inbound::stack`.
//! - [`balance`]: endpoint sets and the P2C peak-EWMA balancer (ejection and
//!   outcome hooks for outlier detection). [`discovery`]: static, DNS, Kubernetes.
//! - [`client`]: pooled HTTP/1.1 and HTTP/2 connections to endpoints.
//! - [`observe`], [`trace`], [`metrics`]: metrics and spans. [`admin`]: the admin port.
//! - [`respond`]: where errors become responses. [`resilience`]: the policy layers.

pub mod admin;
pub mod balance;
pub mod body;
pub mod client;
pub mod discovery;
pub mod error;
pub mod hygiene;
pub mod inbound;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod proxy;
mod reload;
pub mod resilience;
pub mod respond;
pub mod server;
pub mod trace;

use std::convert::Infallible;

use http::{Request, Response};
use tower::util::BoxCloneSyncService;

pub use proxy::{Options, Proxy, ProxyHandle};

/// A complete stack: every request gets a response (errors already turned
/// into responses carrying `x-trellis-error`).
pub type HttpService = BoxCloneSyncService<Request<body::Body>, Response<body::Body>, Infallible>;

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
