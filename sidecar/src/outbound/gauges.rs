//! `trellis_endpoints{peer,state}` and `trellis_discovery_stale{peer}`,
//! computed from the route table when scraped: ejections end by themselves
//! and upstreams come and go with reloads, so no one has to keep gauges in
//! step, and nothing else writes them.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

use super::RouteTable;
use crate::balance::EndpointState;
use crate::published::{View, WeakView};

pub struct EndpointGauges {
    /// Weak: the registry this lives in is reachable from the table.
    table: WeakView<RouteTable>,
    /// Unfilled: what the families look like.
    shape: [IntGaugeVec; 2],
}

fn families() -> [IntGaugeVec; 2] {
    let vec = |name: &str, help: &str, labels: &[&str]| {
        IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric definition: {e}"))
    };
    [
        vec(
            "trellis_endpoints",
            "Endpoints by state",
            &["peer", "state"],
        ),
        vec(
            "trellis_discovery_stale",
            "1 while discovery cannot reach its source and serves the last known endpoints",
            &["peer"],
        ),
    ]
}

impl EndpointGauges {
    pub fn new(table: &View<RouteTable>) -> Self {
        EndpointGauges {
            table: table.downgrade(),
            shape: families(),
        }
    }
}

impl Collector for EndpointGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.shape.iter().flat_map(|f| f.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let [endpoints, stale] = families();
        let Some(table) = self.table.upgrade() else {
            return Vec::new();
        };
        for u in table.load().upstreams() {
            let peer = u.config.name.as_str();
            let mut counts = [0i64; 3];
            for e in u.endpoints.snapshot().iter() {
                counts[u.endpoints.state(e) as usize] += 1;
            }
            for state in EndpointState::ALL {
                endpoints
                    .with_label_values(&[peer, state.as_str()])
                    .set(counts[state as usize]);
            }
            stale
                .with_label_values(&[peer])
                .set(i64::from(u.endpoints.is_stale()));
        }
        let mut out = endpoints.collect();
        out.extend(stale.collect());
        out
    }
}
