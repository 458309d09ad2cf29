//! The manifests on disk: read at start, then polled once a second. An
//! edit re-renders every sidecar's config and rewrites the files that
//! changed; each sidecar reloads its own file. A file that does not parse
//! is reported and the configs in effect stay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use trellis_api::proxy::ProxyConfig;

use super::plan::{Manifests, Ports, proxy_configs};

/// The YAML files of `paths`: files as given, directories' `*.yaml` and
/// `*.yml` in name order.
pub fn yaml_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            anyhow::bail!("{}: no such file or directory", path.display());
        }
    }
    Ok(files)
}

pub fn read(files: &[PathBuf]) -> anyhow::Result<Manifests> {
    let mut manifests = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        manifests.add(&file.display().to_string(), &text)?;
    }
    Ok(manifests)
}

pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("proxy.yaml")
}

/// Writes a sidecar's config whole (a temporary file renamed over it), so
/// the sidecar never reads half a file.
pub fn write_config(dir: &Path, config: &ProxyConfig) -> std::io::Result<()> {
    let tmp = dir.join(".proxy.yaml.new");
    std::fs::write(&tmp, config.to_yaml())?;
    std::fs::rename(tmp, config_path(dir))
}

/// Polls the manifests until aborted.
pub async fn watch(
    files: Vec<PathBuf>,
    paths: Vec<PathBuf>,
    ports: BTreeMap<String, Ports>,
    state_dir: PathBuf,
    otlp_endpoint: Option<String>,
) {
    let snapshot = |files: &[PathBuf]| -> Vec<Option<Vec<u8>>> {
        files.iter().map(|f| std::fs::read(f).ok()).collect()
    };
    let mut files = files;
    let mut last = snapshot(&files);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A policy file added to a directory counts as an edit too.
        let now_files = yaml_files(&paths).unwrap_or_else(|_| files.clone());
        let now = snapshot(&now_files);
        if now_files == files && now == last {
            continue;
        }
        files = now_files;
        last = now;
        match reload(&files, &ports, &state_dir, otlp_endpoint.as_deref()) {
            Ok(changed) if changed.is_empty() => {
                println!("trellis dev: manifests changed; no sidecar config changed")
            }
            Ok(changed) => println!(
                "trellis dev: manifests changed; new config for {}",
                changed.join(", ")
            ),
            Err(e) => {
                println!("trellis dev: manifests changed but {e}; the configs in effect stay")
            }
        }
    }
}

/// Re-renders every running service's config; the names of those rewritten.
fn reload(
    files: &[PathBuf],
    ports: &BTreeMap<String, Ports>,
    state_dir: &Path,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let mut manifests = read(files)?;
    // Only services that run: a MeshService added while running waits for a restart.
    manifests.services.retain(|s| {
        s.metadata
            .name
            .as_ref()
            .is_some_and(|n| ports.contains_key(n))
    });
    let mut changed = Vec::new();
    for (name, config) in proxy_configs(&manifests, ports, otlp_endpoint) {
        let dir = state_dir.join(&name);
        let current = std::fs::read_to_string(config_path(&dir)).unwrap_or_default();
        if current != config.to_yaml() {
            write_config(&dir, &config)?;
            changed.push(name);
        }
    }
    Ok(changed)
}
