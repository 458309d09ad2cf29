//! Discovery: keeps each upstream's [`EndpointSet`] current from its source
//! (`static`, `kubernetes`, `dns`). A source that fails keeps the last known
//! endpoints in use and marks the set stale; an empty set makes requests
//! fail fast with `no-endpoints`.

mod dns;
mod kubernetes;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::balance::EndpointSet;
use trellis_api::proxy::Discovery;

pub use kubernetes::KubeClient;

/// The running discovery of one upstream; dropping it stops it.
#[derive(Debug)]
pub struct DiscoveryTask(Option<JoinHandle<()>>);

impl Drop for DiscoveryTask {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// Starts discovery for `set`. Static addresses are in the set when this returns.
pub fn start(discovery: &Discovery, set: Arc<EndpointSet>, kube: &KubeClient) -> DiscoveryTask {
    match discovery {
        Discovery::Static { addresses } => {
            // Validated when the config was parsed.
            set.update(
                addresses
                    .iter()
                    .filter_map(|a| a.parse::<SocketAddr>().ok()),
            );
            DiscoveryTask(None)
        }
        Discovery::Dns {
            host,
            port,
            refresh,
        } => DiscoveryTask(Some(tokio::spawn(dns::run(
            host.clone(),
            port.get() as u16,
            refresh.as_std(),
            set,
        )))),
        Discovery::Kubernetes {
            service,
            namespace,
            port,
        } => DiscoveryTask(Some(tokio::spawn(kubernetes::run(
            kube.clone(),
            namespace.clone(),
            service.clone(),
            port.get() as u16,
            set,
        )))),
    }
}
