//! Every service of the shop in one binary: `shop <service>` runs it as its
//! own binary would (configuration from the environment, signals, exit
//! codes). The process tests and benchmarks start the shop from it.

use std::process::ExitCode;

use shop_common::server::main as serve;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["gateway"] => {
            serve(
                gateway::SERVICE,
                gateway::Config::from_env,
                |c| c.server.listen,
                gateway::run,
            )
            .await
        }
        ["users"] => {
            serve(
                users::SERVICE,
                users::Config::from_env,
                |c| c.server.listen,
                users::run,
            )
            .await
        }
        ["products"] => {
            serve(
                products::SERVICE,
                products::Config::from_env,
                |c| c.server.listen,
                products::run,
            )
            .await
        }
        ["orders"] => {
            serve(
                orders::SERVICE,
                orders::Config::from_env,
                |c| c.server.listen,
                orders::run,
            )
            .await
        }
        ["orders", "rebuild-read-model"] => orders::rebuild_command().await,
        ["payments"] => {
            serve(
                payments::SERVICE,
                payments::Config::from_env,
                |c| c.server.listen,
                payments::run,
            )
            .await
        }
        ["notifications"] => {
            serve(
                notifications::SERVICE,
                notifications::Config::from_env,
                |c| c.server.listen,
                notifications::run,
            )
            .await
        }
        _ => {
            eprintln!(
                "usage: shop gateway|users|products|orders [rebuild-read-model]|payments|notifications"
            );
            ExitCode::from(2)
        }
    }
}
