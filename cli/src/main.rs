//! The `fanout` binary: parses the command line and hands it to [`fanout::main`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fanout_shared::logging::init_human();
    fanout::main(fanout::Cli::parse()).await
}
