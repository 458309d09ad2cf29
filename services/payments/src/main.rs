use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    shop_common::server::main(
        payments::SERVICE,
        payments::Config::from_env,
        |c| c.server.listen,
        payments::run,
    )
    .await
}
