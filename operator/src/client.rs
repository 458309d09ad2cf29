//! Request timeouts for the operator's kube client.
//!
//! kube 5 leaves `Config::read_timeout` unset (it would cut idle exec and
//! port-forward sessions), so a request to an API server that took the
//! connection and never answers waits forever, and so does the reconcile
//! that sent it: the controller starts no second reconcile of an object
//! while one is in flight, and that object is frozen. Here every read and
//! write gives up after the request timeout, counted from the request's own
//! write (`reset_reader_on_write`: not from when its pooled connection went
//! idle).
//!
//! Watches are long polls on the same client: a watch with no event for
//! longer than the read timeout would be cut (and renewed) on every quiet
//! stretch. [`watch_timeout`] asks the API server to end each watch sooner;
//! the watcher then renews it from its last resourceVersion, with no list.

use std::time::Duration;

/// Connecting gives up after this, or after the request timeout if shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `config` with connect, read and write timeouts; reads time out
/// `request_timeout` after the request was written.
pub fn with_timeouts(mut config: kube::Config, request_timeout: Duration) -> kube::Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT.min(request_timeout));
    config.read_timeout = Some(request_timeout);
    config.write_timeout = Some(request_timeout);
    config.reset_reader_on_write = true;
    config
}

/// The `timeoutSeconds` of every watch on a client whose reads time out
/// after `request_timeout`: two thirds of it, at least one second.
pub fn watch_timeout(request_timeout: Duration) -> u32 {
    let secs = request_timeout.as_secs().saturating_mul(2) / 3;
    u32::try_from(secs).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_end_before_a_read_would_time_out() {
        for secs in [1, 2, 3, 30, 60, 290] {
            let t = watch_timeout(Duration::from_secs(secs));
            assert!(t >= 1);
            assert!(secs == 1 || u64::from(t) < secs, "{secs} s -> {t} s");
        }
        assert_eq!(watch_timeout(Duration::from_secs(30)), 20);
    }

    #[test]
    fn every_request_gets_a_deadline() {
        let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        let config = with_timeouts(config, Duration::from_secs(30));
        assert_eq!(config.read_timeout, Some(Duration::from_secs(30)));
        assert_eq!(config.write_timeout, Some(Duration::from_secs(30)));
        assert_eq!(config.connect_timeout, Some(CONNECT_TIMEOUT));
        assert!(config.reset_reader_on_write);
    }
}
