//! The sidecar's configuration model, shared by the operator (which writes it)
//! and `trellis-proxy` (which reads it).

mod config;
mod policy;

pub use config::*;
pub use policy::*;
