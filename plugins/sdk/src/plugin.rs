//! The safe traits a plugin author implements.

use crate::io::{Input, Now, Output, SessionInfo};
use crate::manifest::Manifest;

/// A protocol: made once from its config, it opens sessions.
///
/// It is shared by every connection thread, hence `Send + Sync`.
pub trait Protocol: Send + Sync + Sized + 'static {
    /// The per-connection state machine.
    type Session: Session;

    /// Static description: name, versions, roles.
    fn manifest() -> Manifest;

    /// Builds the protocol from its config section (`plugins.<name>` as JSON). An error
    /// text makes the hub skip this plugin with that text in its log.
    fn from_config(config: &serde_json::Value) -> Result<Self, String>;

    /// Opens a session for a new connection (or HTTP request).
    fn open(&self, info: SessionInfo) -> Self::Session;
}

/// A sans-IO session: one connection's protocol state.
///
/// The hub calls [`Session::handle_input`] with each input, then drains
/// [`Session::poll_output`] until it returns [`Output::Timeout`]. A session never blocks,
/// sleeps, spawns or opens anything: everything it wants done is an [`Output`].
pub trait Session: Send + 'static {
    /// Feeds one input.
    fn handle_input(&mut self, now: Now, input: Input);

    /// Returns the next output; [`Output::Timeout`] once nothing else is pending.
    fn poll_output(&mut self) -> Output;
}

/// Feeds one input and drains the outputs, as the hub does (useful in plugin tests).
pub fn drive<S: Session>(session: &mut S, now: Now, input: Input) -> Vec<Output> {
    session.handle_input(now, input);
    let mut outputs = Vec::new();
    loop {
        let output = session.poll_output();
        let last = matches!(output, Output::Timeout(_));
        outputs.push(output);
        if last {
            return outputs;
        }
    }
}
