//! The `hub` binary: glue between the command line, the config and `server::run`.

#![forbid(unsafe_code)]

use clap::Parser;

/// jemalloc instead of glibc's malloc. The message path allocates small short-lived
/// buffers on one thread (a connection's) and frees them on another (a user actor's);
/// glibc spent about a sixth of the hub's CPU on that, and the 1:1 benchmark needs
/// roughly half the CPU per message with jemalloc (docs/performance.md). The loader
/// offers it to every plugin library (`loader::HUB_ALLOCATOR`), so the plugins'
/// allocations are jemalloc's too.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
