//! The contract between the hub and its protocol plugins.
//!
//! A plugin is a `cdylib` that implements two safe traits, [`Protocol`] (made once from
//! config, opens sessions) and [`Session`] (one connection's sans-IO state machine), and
//! exports them with [`export_plugin!`]. The hub finds the library in its plugins
//! directory, checks [`abi::ABI_VERSION`], and drives sessions:
//!
//! * every input ([`Input`]: transport bytes or messages, core events, timer expiries)
//!   goes in through [`Session::handle_input`] together with the hub's clock ([`Now`]);
//! * the hub then drains [`Session::poll_output`] until it returns [`Output::Timeout`],
//!   which ends the batch and carries the next timer deadline;
//! * outputs are bytes for the client ([`Output::Transmit`]), requests to the core
//!   ([`Output::Command`], answered later by [`HubEvent::Answer`] with the same
//!   [`CorrelationId`]), [`Output::Close`] and [`Output::Log`].
//!
//! A session owns no socket, clock, thread, lock or file: that is what makes it testable
//! without any of them (see [`testing`]). A panic inside plugin code is caught at the
//! boundary; the hub closes that one session.
//!
//! # A whole plugin
//!
//! ```
//! use hub_plugin_sdk::{
//!     export_plugin, Input, Manifest, Now, Output, OutputQueue, Protocol, Role, Session,
//!     SessionInfo, Transmit, Transport,
//! };
//!
//! /// Echoes every byte back.
//! pub struct Echo;
//!
//! pub struct EchoSession {
//!     out: OutputQueue,
//! }
//!
//! impl Protocol for Echo {
//!     type Session = EchoSession;
//!     fn manifest() -> Manifest {
//!         Manifest {
//!             name: "echo".into(),
//!             version: "1.0.0".into(),
//!             protocol_version: "1".into(),
//!             roles: vec![Role {
//!                 name: "main".into(),
//!                 transport: Transport::Tcp,
//!                 default_listen: "127.0.0.1:7000".into(),
//!                 max_frame: 64 * 1024,
//!             }],
//!             keys: vec![],
//!             service: false,
//!         }
//!     }
//!     fn from_config(_config: &serde_json::Value) -> Result<Self, String> {
//!         Ok(Echo)
//!     }
//!     fn open(&self, _info: SessionInfo) -> EchoSession {
//!         EchoSession { out: OutputQueue::new() }
//!     }
//! }
//!
//! impl Session for EchoSession {
//!     fn handle_input(&mut self, _now: Now, input: Input) {
//!         if let Input::Bytes(bytes) = input {
//!             self.out.push_back(Output::Transmit(Transmit::Bytes(bytes)));
//!         }
//!     }
//!     fn poll_output(&mut self) -> Output {
//!         self.out.pop_front().unwrap_or(Output::Timeout(None))
//!     }
//! }
//!
//! export_plugin!(Echo);
//!
//! // The same session, driven by a test without any socket:
//! let mut harness = hub_plugin_sdk::testing::Harness::new(Echo.open(
//!     hub_plugin_sdk::testing::session_info(Transport::Tcp),
//! ));
//! let outputs = harness.input(Input::Bytes(b"hi".to_vec()));
//! assert_eq!(outputs, vec![Output::Transmit(Transmit::Bytes(b"hi".to_vec()))]);
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod abi;
mod awaiting;
mod command;
mod event;
#[doc(hidden)]
pub mod export;
mod ids;
mod io;
mod manifest;
mod outputs;
mod plugin;
pub mod receipt;
pub mod testing;

pub use awaiting::{fire_and_forget, Awaiting};
pub use command::{
    Answer, Command, ContactEntry, ContactState, CoreError, HubEvent, KeyAgreement, KeyStep, Op,
    PasswordScheme, PublicKey, UserStatus,
};
pub use event::{
    Address, CallNotice, ContactNotice, Content, Delivery, EventBody, EventRecord, FileOffer,
    Origin, RoomNotice, RoomRef, Target, UserRef,
};
pub use ids::{CallId, ConnId, CorrelationId, EventId, RoomId, Seq, UserId};
pub use io::{
    CloseReason, FetchError, FetchRequest, HttpRequest, HttpResponse, Input, LogLevel, Now, Output,
    SessionInfo, Transmit, WsMessage,
};
pub use manifest::{KeyKind, KeySpec, Manifest, Role, Transport};
pub use outputs::OutputQueue;
pub use plugin::{drive, Protocol, Session};
pub use serde_json;
