//! `trellis-operator [run] [flags]` and `trellis-operator crdgen`.

use clap::Parser;
use trellis_operator::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Crdgen) => {
            for (_, yaml) in trellis_api::crd::crd_documents() {
                print!("---\n{yaml}");
            }
            return Ok(());
        }
        Some(Command::Run(args)) => *args,
        None => cli.run,
    };
    let _telemetry = trellis_operator::telemetry::init(args.log_json)?;
    let config = args.to_config();
    let client = kube::Client::try_default().await?;
    tracing::info!(
        identity = %config.identity,
        namespace = config.namespace.as_deref().unwrap_or("<all>"),
        leader_election = config.leader_election.is_some(),
        webhook = config.webhook.is_some(),
        "starting trellis-operator"
    );
    trellis_operator::run(client, config, trellis_operator::shutdown_signal()).await
}
