//! The hub: config, logging, plugin loader, listeners, admin HTTP and CLI around the
//! core. `server::run(config, shutdown)` is the entry point; the binary is glue.

#![deny(unsafe_code)] // allowed only in `loader`, the import side of the plugin ABI

pub mod admin;
pub mod cli;
pub mod config;
pub mod driver;
pub mod fetch;
pub mod keys;
pub mod listeners;
pub mod loader;
pub mod logging;
pub mod server;
pub mod service;
pub mod state;
pub mod tls;
