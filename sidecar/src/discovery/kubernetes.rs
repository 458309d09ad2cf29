//! `kubernetes` discovery: the ready endpoints of a Service's EndpointSlices
//! (label `kubernetes.io/service-name=<service>`), watched.
//!
//! The address port comes from the config (the peer sidecar's inbound port),
//! not from the slice, whose ports name the app's. During a watch outage the
//! last endpoints stay and the set is stale; while stale, a plain list is
//! tried every few seconds, because a watch that resumes from its last
//! resource version emits nothing until something changes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::balance::EndpointSet;

const SERVICE_LABEL: &str = "kubernetes.io/service-name";
const STALE_PROBE: Duration = Duration::from_secs(3);
const CLIENT_RETRY: Duration = Duration::from_secs(2);

/// The API client, made on first use from the in-cluster environment or
/// `KUBECONFIG`, or given (tests). Shared by every upstream of one proxy.
#[derive(Clone, Default)]
pub struct KubeClient(Arc<OnceCell<kube::Client>>);

impl KubeClient {
    pub fn given(client: kube::Client) -> Self {
        KubeClient(Arc::new(OnceCell::new_with(Some(client))))
    }

    async fn get(&self) -> Result<kube::Client, kube::Error> {
        self.0
            .get_or_try_init(kube::Client::try_default)
            .await
            .cloned()
    }
}

pub async fn run(
    kube: KubeClient,
    namespace: String,
    service: String,
    port: u16,
    set: Arc<EndpointSet>,
) {
    let client = loop {
        match kube.get().await {
            Ok(c) => break c,
            Err(e) => {
                warn!(peer = set.peer(), error = %e, "no Kubernetes client; retrying");
                set.set_stale(true);
                tokio::time::sleep(CLIENT_RETRY).await;
            }
        }
    };
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let selector = format!("{SERVICE_LABEL}={service}");
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut slices: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    let mut listing: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    let mut probe = tokio::time::interval(STALE_PROBE);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = stream.next() => {
                let Some(event) = event else { break };
                match event {
                    Ok(Event::Init) => listing.clear(),
                    Ok(Event::InitApply(s)) => {
                        listing.insert(name(&s), ready_addresses(&s, port));
                    }
                    Ok(Event::InitDone) => {
                        slices = std::mem::take(&mut listing);
                        publish(&set, &slices);
                    }
                    Ok(Event::Apply(s)) => {
                        slices.insert(name(&s), ready_addresses(&s, port));
                        publish(&set, &slices);
                    }
                    Ok(Event::Delete(s)) => {
                        slices.remove(&name(&s));
                        publish(&set, &slices);
                    }
                    Err(e) => {
                        if !set.is_stale() {
                            warn!(peer = set.peer(), error = %e, "EndpointSlice watch failed; keeping the last endpoints");
                        }
                        set.set_stale(true);
                    }
                }
            }
            _ = probe.tick(), if set.is_stale() => {
                match api.list(&ListParams::default().labels(&selector)).await {
                    Ok(list) => {
                        slices = list.items.iter().map(|s| (name(s), ready_addresses(s, port))).collect();
                        info!(peer = set.peer(), "Kubernetes API reachable again");
                        publish(&set, &slices);
                    }
                    Err(e) => debug!(peer = set.peer(), error = %e, "still cannot list EndpointSlices"),
                }
            }
        }
    }
}

fn name(s: &EndpointSlice) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

fn publish(set: &EndpointSet, slices: &BTreeMap<String, Vec<SocketAddr>>) {
    let addrs: Vec<SocketAddr> = slices.values().flatten().copied().collect();
    debug!(
        peer = set.peer(),
        endpoints = addrs.len(),
        "EndpointSlices changed"
    );
    set.update(addrs);
}

/// Addresses of the slice's ready endpoints (an unset `ready` means ready,
/// as the API documents), on `port`.
fn ready_addresses(s: &EndpointSlice, port: u16) -> Vec<SocketAddr> {
    if s.address_type == "FQDN" {
        return Vec::new();
    }
    s.endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}
