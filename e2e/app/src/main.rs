//! `trellis-e2e-app [--role echo|driver] [--listen ADDR]` (or `APP_ROLE`,
//! `APP_LISTEN`: a MeshService sets env, not arguments).

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};
use trellis_e2e_app::{driver, echo};

#[derive(Parser, Debug)]
#[command(
    name = "trellis-e2e-app",
    version,
    about = "Workload of the Trellis cluster tests"
)]
struct Args {
    #[arg(long, env = "APP_ROLE", value_enum, default_value = "echo")]
    role: Role,
    /// Where to listen; the sidecar forwards to it on localhost.
    #[arg(long, env = "APP_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Role {
    /// HTTP echo and gRPC service with fault knobs.
    Echo,
    /// Control API that calls other services through the sidecar.
    Driver,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    match args.role {
        Role::Echo => {
            let version = std::env::var("VERSION").unwrap_or_else(|_| "1".into());
            let state = echo::EchoState::new(trellis_e2e_app::pod_name(), version);
            echo::serve(args.listen, state).await
        }
        Role::Driver => driver::serve(args.listen).await,
    }
}
