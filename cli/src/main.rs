//! `trellis`: the mesh on one machine, CRDs, manifest injection and checks
//! from the command line.

mod dev;
mod inject;
mod preflight;

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trellis_api::crd::{LogLevel, MeshService, ResiliencePolicy};
use trellis_api::inject::ProxySettings;
use trellis_api::parse::from_yaml;
use trellis_api::proxy::ProxyConfig;
use trellis_api::validate::validate_policy;

#[derive(Parser)]
#[command(
    name = "trellis",
    version,
    about = "The command line of the Trellis service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole mesh on this machine: every MeshService with its own
    /// sidecar, RabbitMQ, and a status page.
    Dev(dev::DevArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Add the trellis-proxy sidecar to the workloads of manifests (for GitOps); writes YAML to stdout.
    Inject {
        /// Manifest file; `-` reads standard input.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: String,
        /// Inject every pod not annotated `mesh.trellis.dev/inject: disabled`, not only annotated ones.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value = "trellis/proxy:dev")]
        proxy_image: String,
        /// The ConfigMap holding the sidecar's proxy.yaml.
        #[arg(long, default_value = "trellis-proxy-default")]
        config_map: String,
    },
    /// Without files: preflight of the cluster in KUBECONFIG (one ✓/✗ line
    /// per check, non-zero exit on any ✗). With files: check MeshService,
    /// ResiliencePolicy or ProxyConfig documents offline.
    Check {
        files: Vec<String>,
        #[command(flatten)]
        cluster: preflight::PreflightArgs,
    },
}

fn read(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        Ok(std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?)
    }
}

/// Parses each document by its kind and checks it as the operator's webhook
/// would; errors name the file, document and field.
fn check(file: &str) -> anyhow::Result<usize> {
    use serde::Deserialize;
    let text = read(file)?;
    let mut count = 0;
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| anyhow::anyhow!("{file}: document {i}: {e}"))?;
        if value.is_null() {
            continue;
        }
        let one = serde_yaml::to_string(&value)?;
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        let at = |e: &dyn std::fmt::Display| anyhow::anyhow!("{file}: document {i} ({kind}): {e}");
        match kind {
            "MeshService" => drop(from_yaml::<MeshService>(&one).map_err(|e| at(&e))?),
            "ResiliencePolicy" => {
                let policy = from_yaml::<ResiliencePolicy>(&one).map_err(|e| at(&e))?;
                // What the validating webhook denies, `check` rejects.
                let findings = validate_policy(&policy.spec);
                for warning in &findings.warnings {
                    eprintln!("{file}: document {i} ({kind}): warning: {warning}");
                }
                if !findings.errors.is_empty() {
                    return Err(at(&findings.errors.join("; ")));
                }
            }
            "ProxyConfig" => drop(ProxyConfig::from_yaml(&one).map_err(|e| at(&e))?),
            _ => continue,
        }
        count += 1;
    }
    Ok(count)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => dev::run(args)?,
        Command::Crds => {
            for (_, yaml) in trellis_api::crd::crd_documents() {
                print!("---\n{yaml}");
            }
        }
        Command::Inject {
            file,
            all,
            proxy_image,
            config_map,
        } => {
            let settings = ProxySettings {
                image: proxy_image,
                config_map,
                log_level: LogLevel::Info,
                ..Default::default()
            };
            let selection = if all {
                inject::Selection::All
            } else {
                inject::Selection::Annotated
            };
            print!(
                "{}",
                inject::inject_manifests(&read(&file)?, &settings, selection)?
            );
        }
        Command::Check { files, cluster } if files.is_empty() => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            if !runtime.block_on(preflight::preflight(&cluster))? {
                anyhow::bail!("the cluster is not ready for Trellis (see ✗ above)");
            }
        }
        Command::Check { files, .. } => {
            for file in &files {
                let n = check(file)?;
                eprintln!("{file}: {n} document(s) valid");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis: {e}");
            ExitCode::FAILURE
        }
    }
}
