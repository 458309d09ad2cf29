//! The binaries `trellis dev` runs: a MeshService named `x` is the binary
//! `x` of the workspace's package `x`, built with `cargo build --release`,
//! or taken from `--bin-dir` as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Found {
    pub proxy: PathBuf,
    pub apps: BTreeMap<String, PathBuf>,
    /// Services without a binary, and why.
    pub missing: Vec<(String, String)>,
}

/// Finds (building when there is no `bin_dir`) the sidecar and each app.
pub fn find(apps: &[String], proxy: &str, bin_dir: Option<&Path>) -> anyhow::Result<Found> {
    let dir = match bin_dir {
        Some(d) => d.to_path_buf(),
        None => build(apps, proxy)?,
    };
    let proxy_path = dir.join(proxy);
    anyhow::ensure!(
        proxy_path.is_file(),
        "{} not found (build it: cargo build --release -p {proxy})",
        proxy_path.display()
    );
    let mut found = Found {
        proxy: proxy_path,
        apps: BTreeMap::new(),
        missing: Vec::new(),
    };
    for app in apps {
        let path = dir.join(app);
        if path.is_file() {
            found.apps.insert(app.clone(), path);
        } else {
            found
                .missing
                .push((app.clone(), format!("no binary {}", path.display())));
        }
    }
    Ok(found)
}

/// Builds the sidecar and every app that is a package of the workspace
/// around the current directory; the directory the binaries are in.
fn build(apps: &[String], proxy: &str) -> anyhow::Result<PathBuf> {
    let metadata = Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run cargo ({e}); install Rust, or pass --bin-dir"))?;
    anyhow::ensure!(
        metadata.status.success(),
        "cargo metadata failed (run trellis dev inside the Trellis workspace, or pass --bin-dir): {}",
        String::from_utf8_lossy(&metadata.stderr).trim()
    );
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout)?;
    let has_binary = |name: &str| {
        metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| {
                p["name"] == name
                    && p["targets"].as_array().into_iter().flatten().any(|t| {
                        t["name"] == name
                            && t["kind"]
                                .as_array()
                                .is_some_and(|k| k.iter().any(|k| k == "bin"))
                    })
            })
    };
    let mut packages = vec![proxy.to_string()];
    packages.extend(apps.iter().filter(|a| has_binary(a)).cloned());
    println!(
        "trellis dev: building {} (cargo build --release; the first build takes minutes)",
        packages.join(", ")
    );
    let mut cargo = Command::new("cargo");
    cargo.args(["build", "--release"]);
    for p in &packages {
        cargo.args(["-p", p]);
    }
    let status = cargo.status()?;
    anyhow::ensure!(status.success(), "cargo build failed");
    let target = metadata["target_directory"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("cargo metadata names no target directory"))?;
    Ok(Path::new(target).join("release"))
}
