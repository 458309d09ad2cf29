//! `dns` discovery: the A/AAAA records of a host, resolved every `refresh`.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::balance::EndpointSet;

/// A refresh of zero would spin.
const MIN_REFRESH: Duration = Duration::from_millis(500);
/// Until the first answer, retry sooner than `refresh`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

pub async fn run(host: String, port: u16, refresh: Duration, set: Arc<EndpointSet>) {
    let refresh = refresh.max(MIN_REFRESH);
    loop {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => {
                let addrs: Vec<_> = addrs.collect();
                debug!(peer = set.peer(), %host, endpoints = addrs.len(), "resolved");
                set.update(addrs);
            }
            Err(e) => {
                warn!(peer = set.peer(), %host, error = %e, "DNS lookup failed; keeping the last endpoints");
                set.set_stale(true);
            }
        }
        let wait = if set.is_resolved() {
            refresh
        } else {
            FIRST_RETRY.min(refresh)
        };
        tokio::time::sleep(wait).await;
    }
}
