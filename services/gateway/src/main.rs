use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    shop_common::server::main(
        gateway::SERVICE,
        gateway::Config::from_env,
        |c| c.server.listen,
        gateway::run,
    )
    .await
}
