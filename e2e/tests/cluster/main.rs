//! The cluster suite: Trellis carrying traffic in a real Kubernetes cluster,
//! with the operator running in it (`e2e/kind.sh up`, or any cluster with
//! Trellis installed, named by `TRELLIS_CLUSTER_KUBECONFIG`).
//!
//! `cargo test -p trellis-e2e --test cluster -- --nocapture`
//!
//! Measured numbers are printed as `MEASURED ...` lines (and collected in
//! `TRELLIS_E2E_REPORT` when set); no test asserts on speed.

mod dashboards;
mod disruption;
mod mesh;
mod resilience;
mod shop;
mod support;
