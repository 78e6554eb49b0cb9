//! The `hub` binary: glue between the command line, the config and `server::run`.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = hub::cli::Cli::parse();
    let config = hub::config::HubConfig::load(cli.config.as_deref())?;
    hub::logging::init(&config.log_level);
    match cli.command {
        None | Some(hub::cli::Command::Serve) => {
            actix_rt::System::new().block_on(hub::server::run(config, hub::server::signals()))
        }
        Some(command) => hub::cli::run_command(&config, command),
    }
}
