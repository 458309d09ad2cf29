//! Trellis's shared model: the custom resources, the proxy configuration the
//! sidecar reads, and the pure functions that turn one into the other.
//!
//! Nothing here does I/O, so the operator, its webhook, `trellis inject` and
//! `trellis dev` all render the same bytes from the same inputs.

pub mod bounded;
pub mod crd;
pub mod duration;
pub mod inject;
pub mod names;
pub mod parse;
pub mod proxy;
pub mod render;
pub mod resolve;
pub mod route;
pub mod validate;

pub use duration::Duration;
