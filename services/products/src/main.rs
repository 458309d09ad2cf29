use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    shop_common::server::main(
        products::SERVICE,
        products::Config::from_env,
        |c| c.server.listen,
        products::run,
    )
    .await
}
