use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    shop_common::server::main(
        users::SERVICE,
        users::Config::from_env,
        |c| c.server.listen,
        users::run,
    )
    .await
}
