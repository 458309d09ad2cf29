//! Process tests of trellis-proxy: real proxies, real servers, on 127.0.0.1.
//! One test binary (one link) with a module per concern.

mod support;

mod admin;
mod balancing;
mod binary;
mod grpc;
mod http2_bounds;
mod hygiene;
mod kubernetes;
mod protocols;
mod reload;
mod routing;
mod shutdown;
mod stalls;
mod traces;
mod upgrades;
