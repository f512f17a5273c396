//! The `fanout` binary: parses the command line and hands it to [`fanout::commands::main`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fanout_shared::logging::init_human();
    fanout::commands::main(fanout::args::Cli::parse()).await
}
