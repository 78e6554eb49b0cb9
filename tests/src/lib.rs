//! Independent clients of the hub's protocols, written from the specs and
//! `docs/protocols/*.md` (never from the plugins' code), and a harness that starts the
//! real `hub` binary for end-to-end tests.

pub mod cchat_client;
pub mod harness;
pub mod json_client;
pub mod json_crypto;
pub mod p2p_client;
pub mod retro_client;
pub mod xdr_client;
