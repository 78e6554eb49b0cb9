//! The hub's core: event model, store, accounts, and the router, user, room and call
//! actors that move events between connections.
//!
//! Connection actors (in the `hub` crate) talk to the core only through [`Core`]; the
//! core talks to storage only through [`store::Storage`].

#![forbid(unsafe_code)]

pub mod accounts;
pub mod actors;
mod api;
pub mod files;
pub mod metrics;
pub mod store;

pub use actors::{delivery_size, CoreSettings, SessionAddr, SessionMsg};
pub use api::{ConnContext, Core, Pending};
