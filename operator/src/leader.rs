//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager):
//! only the holder runs the controllers; every replica serves the webhooks.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which Lease, who we are, and how long a lease lasts.
#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    pub lease_name: String,
    pub lease_namespace: String,
    /// Unique per replica (the pod name).
    pub identity: String,
    /// A holder that has not renewed for this long loses the lease.
    pub lease_duration: Duration,
    /// The holder renews this long before expiry.
    pub renew_grace: Duration,
}

impl LeaderElectionConfig {
    pub fn new(lease_namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderElectionConfig {
            lease_name: "trellis-operator".into(),
            lease_namespace: lease_namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_grace: Duration::from_secs(5),
        }
    }
}

/// Whether this replica leads, as a watch channel, and the task that keeps the lease.
/// Dropping every receiver releases the lease and ends the task.
pub struct Leadership {
    pub is_leader: watch::Receiver<bool>,
    pub task: Option<JoinHandle<()>>,
    /// Kept open when there is no election, so the receiver never reports "closed".
    _always: Option<watch::Sender<bool>>,
}

impl Leadership {
    /// Always the leader (leader election off, or a single replica).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Leadership {
            is_leader: rx,
            task: None,
            _always: Some(tx),
        }
    }

    /// Joins the election.
    pub async fn elect(
        client: Client,
        config: &LeaderElectionConfig,
    ) -> Result<Self, LeaseManagerError> {
        let duration = config.lease_duration.as_secs().max(2);
        let grace = config.renew_grace.as_secs().clamp(1, duration - 1);
        let manager = LeaseManagerBuilder::new(client, &config.lease_name)
            .with_namespace(&config.lease_namespace)
            .with_identity(&config.identity)
            .with_duration(duration)
            .with_grace(grace)
            // The default field manager embeds the identity: replicas must differ,
            // since the lock relies on server-side-apply conflicts between managers.
            .build()
            .await?;
        let (rx, handle) = manager.watch().await;
        let identity = config.identity.clone();
        let task = tokio::spawn(async move {
            match handle.await {
                Ok(Ok(_)) => tracing::info!(%identity, "lease released"),
                Ok(Err(e)) => tracing::warn!(%identity, error = %e, "lease manager stopped"),
                Err(e) => tracing::warn!(%identity, error = %e, "lease manager task failed"),
            }
        });
        Ok(Leadership {
            is_leader: rx,
            task: Some(task),
            _always: None,
        })
    }
}
