use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {
            shop_common::server::main(
                orders::SERVICE,
                orders::Config::from_env,
                |c| c.server.listen,
                orders::run,
            )
            .await
        }
        Some("rebuild-read-model") => orders::rebuild_command().await,
        Some(other) => {
            eprintln!("orders: unknown command {other:?} (usage: orders [rebuild-read-model])");
            ExitCode::from(2)
        }
    }
}
