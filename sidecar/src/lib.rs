//! `trellis-proxy`: the sidecar of the Trellis mesh.

pub mod body;
pub mod error;
pub mod metrics;
