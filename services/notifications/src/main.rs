use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    shop_common::server::main(
        notifications::SERVICE,
        notifications::Config::from_env,
        |c| c.server.listen,
        notifications::run,
    )
    .await
}
