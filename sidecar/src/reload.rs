//! Config hot reload from the file: it is read every interval and, when its
//! bytes change and they parse, sent to the applier ([`crate::apply`]).
//! Polling the contents (not inotify, not mtime) is what works for a mounted
//! ConfigMap, whose update is an atomic symlink swap, and costs one small
//! read a second.
//!
//! A file that does not parse or validate is logged with the failing field's
//! path, counted in `trellis_config_reload_errors_total`, and never sent:
//! the last good config stays in effect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::watch;
use tracing::{error, info, warn};

use trellis_api::proxy::ProxyConfig;

pub async fn watch(
    path: PathBuf,
    interval: Duration,
    configs: watch::Sender<Arc<ProxyConfig>>,
    errors: IntCounter,
) {
    // The config in effect came from this file; its current bytes are the baseline.
    let mut last = tokio::fs::read(&path).await.ok();
    let mut missing = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => {
                missing = false;
                b
            }
            Err(e) => {
                if !missing {
                    warn!(path = %path.display(), error = %e, "cannot read the config file; keeping the current config");
                    missing = true;
                }
                continue;
            }
        };
        if last.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        last = Some(bytes.clone());
        let parsed = String::from_utf8(bytes)
            .map_err(|e| trellis_api::parse::ParseError {
                path: ".".into(),
                reason: format!("not UTF-8: {e}"),
            })
            .and_then(|text| ProxyConfig::from_yaml(&text));
        match parsed {
            Ok(config) => {
                info!(path = %path.display(), "config file changed");
                if configs.send(Arc::new(config)).is_err() {
                    // The applier is gone: the proxy is shutting down.
                    return;
                }
            }
            Err(e) => {
                errors.inc();
                error!(
                    path = %path.display(),
                    field = %e.path,
                    reason = %e.reason,
                    "invalid config file ignored; the last good config stays"
                );
            }
        }
    }
}
