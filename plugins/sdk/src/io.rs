//! Session inputs and outputs: the sans-IO surface of a plugin session.

use crate::command::{Command, HubEvent};
use crate::ids::ConnId;
use crate::manifest::Transport;
use serde::{Deserialize, Serialize};

/// The hub's clock, handed in with every input: plugins own no clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Now {
    /// Monotonic milliseconds since the hub started; timer deadlines use this clock.
    pub mono_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// Facts about a new session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The connection's id (unique in this hub process).
    pub conn: ConnId,
    /// The role (listener) it arrived on.
    pub role: String,
    /// The transport of that role.
    pub transport: Transport,
    /// Peer address, `ip:port` (empty for a service session).
    pub peer: String,
    /// The hub's own address of the connection, `ip:port` (for a service session: the
    /// bound address of the plugin's first role).
    pub local: String,
}

/// A whole WebSocket message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WsMessage {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// As output: send a WebSocket ping with this payload (at most 125 bytes).
    /// The hub answers the client's pings itself and never feeds them in.
    Ping(Vec<u8>),
    /// As input: the client's pong, echoing a ping's payload. A pong proves the client
    /// has read everything sent before that ping (TCP and WebSocket keep order).
    Pong(Vec<u8>),
}

/// An HTTP request, body complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// Method, upper case.
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// Headers, names lower case.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// An HTTP response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// One input to a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// The session was just opened (always the first input).
    Opened,
    /// Bytes from a stream transport (TCP, TLS), in arrival order, arbitrary chunking.
    Bytes(Vec<u8>),
    /// A whole WebSocket message.
    Message(WsMessage),
    /// A whole HTTP request.
    Request(HttpRequest),
    /// Something from the core.
    Event(HubEvent),
    /// The deadline from the last [`Output::Timeout`] has passed.
    Timeout,
    /// The client sent a frame larger than the role's `max_frame`; the hub did not buffer
    /// it and will close the connection after this input's outputs.
    TooLarge {
        /// The limit that was exceeded.
        limit: u32,
    },
    /// The answer to an [`Output::Fetch`] (or why there is none).
    Fetched {
        /// The request's id.
        id: u64,
        /// The response, whatever its status.
        result: Result<HttpResponse, FetchError>,
    },
    /// The transport is gone. `clean` is true for an orderly goodbye (WebSocket close
    /// frame, TCP FIN after the protocol's own goodbye), false for errors and resets.
    /// Outputs other than commands are ignored after this.
    Closed {
        /// Orderly close?
        clean: bool,
    },
}

/// An outbound HTTP request ([`Output::Fetch`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Chosen by the plugin, echoed in [`Input::Fetched`].
    pub id: u64,
    /// Method, upper case.
    pub method: String,
    /// An `http://` URL.
    pub url: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Give up after this long (the hub caps it).
    pub timeout_ms: u64,
    /// Send from this local IP address (a node known by its address must be seen
    /// coming from it); `None`: whatever the system picks.
    pub from_ip: Option<String>,
}

/// Why an outbound request has no response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchError {
    /// No response in time.
    Timeout,
    /// The peer could not be reached (connection refused, reset...).
    Unreachable(String),
    /// The response was larger than the hub accepts.
    TooLarge,
    /// The request was malformed (bad URL...).
    Invalid(String),
    /// This kind of session cannot make outbound requests.
    Unsupported,
}

/// Bytes for the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transmit {
    /// Stream bytes (TCP, TLS).
    Bytes(Vec<u8>),
    /// A WebSocket message.
    Message(WsMessage),
    /// The HTTP response (ends an HTTP session).
    Response(HttpResponse),
}

/// Why a session asks to be closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseReason {
    /// WebSocket close code (ignored by other transports).
    pub code: Option<u16>,
    /// Human-readable reason for logs (and the WebSocket close frame).
    pub reason: String,
}

/// Log levels for [`Output::Log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Per-frame detail.
    Trace,
    /// State changes.
    Debug,
    /// Start and stop.
    Info,
    /// A misbehaving peer.
    Warn,
    /// A fault of the plugin's own.
    Error,
}

/// One output of a session.
///
/// After every input the caller drains [`crate::Session::poll_output`] until it returns
/// [`Output::Timeout`]; that output ends the batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// Send bytes to the client.
    Transmit(Transmit),
    /// Ask the core.
    Command(Command),
    /// Close the connection after everything transmitted so far.
    Close(CloseReason),
    /// A log line; the hub writes it inside the connection's span.
    Log {
        /// Level.
        level: LogLevel,
        /// Message.
        message: String,
    },
    /// Ask the hub to make an outbound HTTP request (plain HTTP/1.1); the answer comes
    /// back as [`Input::Fetched`] with the same id. The hub bounds the requests in flight
    /// and their time.
    Fetch(FetchRequest),
    /// End of this batch. `Some(deadline)` (on [`Now::mono_ms`]'s clock) asks for
    /// [`Input::Timeout`] at that time, replacing any earlier request; `None` cancels it.
    Timeout(Option<u64>),
}
