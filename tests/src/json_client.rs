//! Blocking test client for the hub's JSON protocol (WebSocket, one JSON object per text
//! frame), written only from `shared/specs/json.txt`, `shared/specs/WIRE-FACTS.md`
//! ("JSON") and `docs/protocols/json.md`, never from the hub's code.
//!
//! Ambiguities in those documents, and what this client assumes:
//!
//! - **signin reply type.** `json.txt` shows the signin reply (and its errors 5 and 6) with
//!   `"type":"signin"`; WIRE-FACTS and `json.md` say the hub answers with `"type":"signup"`
//!   plus `"request":"signin"`. `json.md` is the authority: [`JsonClient::signin`] waits for
//!   an object of type `signup` (for errors too) and does not check `request` (tests do).
//! - **Type of error replies to input that has no usable `type`** (not JSON, not an object,
//!   `type` missing or not a string) is not stated. "Errors are always replied as
//!   `{"type":"<request type>",...}`" cannot apply; binary frames are "answered with an
//!   `error` (code 7)", which we read as `{"type":"error","resp_code":7,...}`. For an
//!   unknown `type` (code 8) it is not said whether the reply's `type` is the unknown type
//!   or `error`. The client assumes neither: tests of malformed input use [`JsonClient::recv`].
//! - **Replies for the no-session requests on failure** (e.g. `identification` with another
//!   `version`, `protocol.standard` with odd `standards`) are not described; the helpers
//!   just return whatever object of the request's type comes back.
//! - **Order of the subscribe reply relative to stored events and presence** is not
//!   stated explicitly; helpers never depend on order: they wait for their reply type and
//!   queue everything else (see below).
//! - **When a connection "belongs" to a user** (code 1: "the connection already belongs to
//!   another user") is not defined (first acting request? signup/signin? subscribe?). The
//!   client does not care, but tests that use two users should use two connections.
//! - **Subscribing is "not required" before acting requests**, yet a connection that has
//!   not subscribed within `handshake_timeout_secs` (120 s) is closed: a request-only
//!   connection therefore lives at most 120 s. Tests here are far shorter.
//! - **Keep-alive / receipt pings are only answered while the client reads** (the hub's
//!   ping is a frame like any other and this client is blocking). A test that does not call
//!   any receiving method for longer than `ws_idle_secs` (60 s) would be closed with 1001.
//! - **`id`** may be any JSON value; [`JsonClient::request_acked`] uses string ids only.
//!
//! Helper conventions chosen here (not from the docs):
//!
//! - Objects that arrive while a helper (or [`JsonClient::recv_type`]) waits for something
//!   else are queued, in arrival order, and returned by later `recv` calls; `recv_type` and
//!   the helpers look in that queue first.
//! - While a protocol helper waits for its reply, a newly arriving object of type `error`
//!   (the hub's connection-level errors: binary frame, oversize, handshake timeout, slow
//!   reader) makes it fail fast with [`ClientError::Protocol`] instead of timing out; the
//!   object is also queued so `recv` can still return it.
//! - [`JsonClient::expect_silence`] also fails if objects are already queued and unread:
//!   an object the test never looked at must not let a "nothing arrives" check pass.
//! - A TCP end without a close frame, or a close frame without a code, is reported as
//!   `Closed(None)`. tungstenite reports a close code that RFC 6455 forbids on the wire as
//!   1002 "Protocol violation".

// `ClientError::Ws(tungstenite::Error)` is part of the required API; tungstenite's error is
// large, so every `Result` here trips `clippy::result_large_err`. Boxing would change the API.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::{HandshakeError, Message, WebSocket};

/// How long protocol helpers wait for their reply.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting (TCP + WebSocket handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a single write may block (a server that stops reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`JsonClient::close`] waits for the server's close reply.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The protocol version this client speaks.
pub const PROTOCOL_VERSION: &str = "1.0.0";

pub type Result<T> = std::result::Result<T, ClientError>;

/// Everything that can go wrong talking to the hub.
#[derive(Debug)]
pub enum ClientError {
    /// Socket-level failure (connect, timeouts settings...).
    Io(std::io::Error),
    /// WebSocket-level failure not covered by the other variants.
    Ws(tungstenite::Error),
    /// Nothing (of what was asked for) arrived in time.
    Timeout,
    /// The server closed the connection: its close code and reason, or `None` when it sent
    /// a close frame without a code or ended the TCP connection without a close frame.
    Closed(Option<(u16, String)>),
    /// The server sent something the protocol does not allow (or a check failed).
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "I/O error: {e}"),
            ClientError::Ws(e) => write!(f, "WebSocket error: {e}"),
            ClientError::Timeout => write!(f, "timed out"),
            ClientError::Closed(None) => write!(f, "connection closed by the server (no code)"),
            ClientError::Closed(Some((code, reason))) => {
                write!(f, "connection closed by the server: {code} {reason:?}")
            }
            ClientError::Protocol(msg) => write!(f, "protocol violation: {msg}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            ClientError::Ws(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// Is this I/O error a read/write timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` expiry)?
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Is this I/O error the peer going away?
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// The `type` of a JSON object, if it has a string one.
fn type_of(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

/// Build `{type, session, source, dest, ...extra}`. `extra` must be an object (its fields
/// are added last and so win over the four named ones) or `null` (nothing added).
pub fn build_request(
    ty: &str,
    session: &str,
    source: &str,
    dest: &str,
    extra: Value,
) -> Result<Value> {
    let mut obj = Map::new();
    obj.insert("type".into(), Value::String(ty.into()));
    obj.insert("session".into(), Value::String(session.into()));
    obj.insert("source".into(), Value::String(source.into()));
    obj.insert("dest".into(), Value::String(dest.into()));
    match extra {
        Value::Null => {}
        Value::Object(fields) => obj.extend(fields),
        other => {
            return Err(ClientError::Protocol(format!(
                "request extra fields must be a JSON object, not {other}"
            )))
        }
    }
    Ok(Value::Object(obj))
}

/// A blocking client of the hub's JSON protocol over one WebSocket connection.
pub struct JsonClient {
    ws: WebSocket<TcpStream>,
    /// Objects received but not yet returned (they did not match what was waited for).
    queue: VecDeque<Value>,
    /// Payloads of every ping received, in order.
    pings: Vec<Vec<u8>>,
    /// `Some(info)` once the server has closed the connection.
    closed: Option<Option<(u16, String)>>,
}

impl fmt::Debug for JsonClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonClient")
            .field("peer", &self.ws.get_ref().peer_addr().ok())
            .field("queued", &self.queue.len())
            .field("pings", &self.pings.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl JsonClient {
    /// Connect to `ws://addr/` (plain TCP, no TLS).
    pub fn connect(addr: SocketAddr) -> Result<JsonClient> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let url = format!("ws://{addr}/");
        let (ws, _response) = match tungstenite::client(url.as_str(), stream) {
            Ok(done) => done,
            Err(HandshakeError::Interrupted(_)) => return Err(ClientError::Timeout),
            Err(HandshakeError::Failure(e)) => return Err(map_ws_error(e)),
        };
        Ok(JsonClient {
            ws,
            queue: VecDeque::new(),
            pings: Vec::new(),
            closed: None,
        })
    }

    /// Send one JSON value as one text frame.
    pub fn send(&mut self, value: &Value) -> Result<()> {
        let text = serde_json::to_string(value)
            .map_err(|e| ClientError::Protocol(format!("cannot serialise request: {e}")))?;
        self.send_message(Message::Text(text))
    }

    /// Send a raw text frame (for malformed-input tests).
    pub fn send_text(&mut self, raw: &str) -> Result<()> {
        self.send_message(Message::Text(raw.to_owned()))
    }

    /// Send a binary frame (the hub answers with an `error`, code 7).
    pub fn send_binary(&mut self, bytes: &[u8]) -> Result<()> {
        self.send_message(Message::Binary(bytes.to_vec()))
    }

    fn send_message(&mut self, msg: Message) -> Result<()> {
        if let Some(info) = &self.closed {
            return Err(ClientError::Closed(info.clone()));
        }
        // A write error does not mark the connection closed: the server's close frame may
        // still be waiting to be read, and a later recv/wait_closed reports it.
        self.ws.send(msg).map_err(map_ws_error)
    }

    /// The next JSON object (queued ones first). Pings are answered and skipped.
    /// `Err(Closed(..))` once the server has closed, `Err(Timeout)` if nothing came in time,
    /// `Err(Protocol)` for a binary frame or a text frame that is not a JSON object.
    pub fn recv(&mut self, timeout: Duration) -> Result<Value> {
        if let Some(v) = self.queue.pop_front() {
            return Ok(v);
        }
        self.read_object(Instant::now() + timeout)
    }

    /// The next object whose `type` is `ty` (looking in the queue first); other objects are
    /// queued in order for later `recv` calls.
    pub fn recv_type(&mut self, ty: &str, timeout: Duration) -> Result<Value> {
        self.recv_where(|v| type_of(v) == Some(ty), timeout)
    }

    /// The next object for which `pred` holds (looking in the queue first); other objects
    /// are queued in order for later `recv` calls.
    pub fn recv_where(
        &mut self,
        mut pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value> {
        if let Some(v) = self.take_queued_where(&mut pred) {
            return Ok(v);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.read_object(deadline)?;
            if pred(&v) {
                return Ok(v);
            }
            self.queue.push_back(v);
        }
    }

    /// `Ok(())` if no JSON object arrives within `dur` (pings are fine). Fails with
    /// `Protocol` if one arrives (it is queued, not lost) or if unread objects are already
    /// queued; with `Closed` if the server closes meanwhile.
    pub fn expect_silence(&mut self, dur: Duration) -> Result<()> {
        if !self.queue.is_empty() {
            let queued: Vec<String> = self.queue.iter().map(Value::to_string).collect();
            return Err(ClientError::Protocol(format!(
                "expected silence but unread objects are queued: {}",
                queued.join(", ")
            )));
        }
        match self.read_object(Instant::now() + dur) {
            Ok(v) => {
                let text = v.to_string();
                self.queue.push_back(v);
                Err(ClientError::Protocol(format!(
                    "expected silence for {dur:?} but received {text}"
                )))
            }
            Err(ClientError::Timeout) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Read until the server closes; returns its close code and reason (`None`: no code,
    /// or no close frame). Objects read meanwhile are queued; bad frames are skipped.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Option<(u16, String)>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_object(deadline) {
                Ok(v) => self.queue.push_back(v),
                Err(ClientError::Closed(info)) => return Ok(info),
                Err(ClientError::Protocol(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Clean close: send a close frame (1000) and wait for the server's close reply and
    /// the end of the TCP connection. `Ok` if the server had already closed.
    pub fn close(mut self) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        match self.ws.close(Some(frame)) {
            Ok(()) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(())
            }
            Err(e) => return Err(map_ws_error(e)),
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            self.set_read_deadline(deadline)?;
            match self.ws.read() {
                // Data, pings and the close reply itself: keep reading until the TCP end.
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(())
                }
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => {
                    return Err(ClientError::Protocol(
                        "server ended the TCP connection without answering our close frame".into(),
                    ))
                }
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {
                    return Err(ClientError::Timeout)
                }
                Err(e) => return Err(map_ws_error(e)),
            }
        }
    }

    /// Shut the TCP connection down (both directions) without a close frame.
    pub fn drop_abruptly(self) {
        let _ = self.ws.get_ref().shutdown(Shutdown::Both);
    }

    /// A second handle on the connection's socket (a `dup`), for a writer thread that
    /// frames its own messages (`tungstenite::WebSocket::from_raw_socket`, client role)
    /// while this client keeps reading. Frames written through it and any pong this
    /// client sends could interleave: use it only where the server sends no pings.
    pub fn try_clone_stream(&self) -> io::Result<TcpStream> {
        self.ws.get_ref().try_clone()
    }

    /// Payloads of all pings received so far (keep-alive pings are empty; receipt pings
    /// carry an 8-byte big-endian event sequence number).
    pub fn pings_seen(&self) -> Vec<Vec<u8>> {
        self.pings.clone()
    }

    /// The sequence numbers of the receipt pings seen so far (pings with 8-byte payloads).
    pub fn receipt_pings(&self) -> Vec<u64> {
        self.pings
            .iter()
            .filter_map(|p| <[u8; 8]>::try_from(p.as_slice()).ok())
            .map(u64::from_be_bytes)
            .collect()
    }

    /// Objects received but not yet returned, in order.
    pub fn queued(&self) -> Vec<Value> {
        self.queue.iter().cloned().collect()
    }

    /// Remove and return all queued objects, in order.
    pub fn take_queued(&mut self) -> Vec<Value> {
        self.queue.drain(..).collect()
    }

    /// The server's close code and reason once it has closed (`Some(None)`: closed without
    /// a code), `None` while the connection is open as far as the client knows.
    pub fn close_info(&self) -> Option<Option<(u16, String)>> {
        self.closed.clone()
    }

    // ----- protocol helpers -------------------------------------------------------------

    /// `identification` → the `identification` reply.
    pub fn identify(&mut self) -> Result<Value> {
        let req = serde_json::json!({
            "type": "identification",
            "version": PROTOCOL_VERSION,
            "client": "hub-tests",
        });
        self.send(&req)?;
        self.await_reply("identification", |v| type_of(v) == Some("identification"))
    }

    /// `protocol.standard` (ciphers and hashes) → the `protocol.standard` reply.
    pub fn standards(&mut self) -> Result<Value> {
        let req = serde_json::json!({"type": "protocol.standard", "standards": "ciphers,hashes"});
        self.send(&req)?;
        self.await_reply("protocol.standard", |v| {
            type_of(v) == Some("protocol.standard")
        })
    }

    /// `signup` (with `hash` sent as given) → the `signup` reply.
    pub fn signup(&mut self, username: &str, password: &str, hash: &str) -> Result<Value> {
        let req = serde_json::json!({
            "type": "signup",
            "username": username,
            "password": password,
            "hash": hash,
        });
        self.send(&req)?;
        self.await_reply("signup", |v| type_of(v) == Some("signup"))
    }

    /// `signin` → the reply, whose type is `signup` (documented quirk).
    pub fn signin(&mut self, username: &str, password: &str) -> Result<Value> {
        let req = serde_json::json!({
            "type": "signin",
            "username": username,
            "password": password,
        });
        self.send(&req)?;
        self.await_reply("signup (answer to signin)", |v| {
            type_of(v) == Some("signup")
        })
    }

    /// `subscribe` → the `subscribe` reply (a bad token is followed by close 1008).
    pub fn subscribe(&mut self, session: &str) -> Result<Value> {
        let req = serde_json::json!({"type": "subscribe", "session": session});
        self.send(&req)?;
        self.await_reply("subscribe", |v| type_of(v) == Some("subscribe"))
    }

    /// Send `{type, session, source, dest, ...extra}` and return at once (the spec's
    /// requests get no reply on success without an `id`).
    pub fn request(
        &mut self,
        ty: &str,
        session: &str,
        source: &str,
        dest: &str,
        extra: Value,
    ) -> Result<()> {
        let req = build_request(ty, session, source, dest, extra)?;
        self.send(&req)
    }

    /// Like [`request`](Self::request) with `"id": id` added; waits for the reply carrying
    /// that id: `{"type":"ack",...}` (checked: `request` is `ty`, `resp_code` is 0, and an
    /// integer `event` for `message` / `key_exchange.*`) or an object of type `ty` (an error
    /// reply, or the success reply of a hub-extension request) which is returned as is.
    pub fn request_acked(
        &mut self,
        ty: &str,
        session: &str,
        source: &str,
        dest: &str,
        extra: Value,
        id: &str,
    ) -> Result<Value> {
        let mut req = build_request(ty, session, source, dest, extra)?;
        if let Value::Object(obj) = &mut req {
            obj.insert("id".into(), Value::String(id.into()));
        }
        self.send(&req)?;
        let want_id = Value::String(id.into());
        let reply = self.await_reply(&format!("ack or {ty} reply with id {id:?}"), |v| {
            v.get("id") == Some(&want_id) && (type_of(v) == Some("ack") || type_of(v) == Some(ty))
        })?;
        if type_of(&reply) == Some("ack") {
            if reply.get("request").and_then(Value::as_str) != Some(ty) {
                return Err(ClientError::Protocol(format!(
                    "ack for a {ty} request names another request: {reply}"
                )));
            }
            if reply.get("resp_code").and_then(Value::as_i64) != Some(0) {
                return Err(ClientError::Protocol(format!(
                    "ack without resp_code 0: {reply}"
                )));
            }
            let needs_event = ty == "message" || ty.starts_with("key_exchange.");
            if needs_event && reply.get("event").and_then(Value::as_u64).is_none() {
                return Err(ClientError::Protocol(format!(
                    "ack of {ty} without an integer event number: {reply}"
                )));
            }
        }
        Ok(reply)
    }

    // ----- internals --------------------------------------------------------------------

    /// Remove and return the first queued object matching `pred`.
    fn take_queued_where(&mut self, pred: &mut impl FnMut(&Value) -> bool) -> Option<Value> {
        let pos = self.queue.iter().position(pred)?;
        self.queue.remove(pos)
    }

    /// Wait (up to [`HELPER_TIMEOUT`]) for a reply matching `is_reply`, queueing the rest;
    /// a newly arriving `error` object fails fast (and is queued).
    fn await_reply(
        &mut self,
        what: &str,
        mut is_reply: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        if let Some(v) = self.take_queued_where(&mut is_reply) {
            return Ok(v);
        }
        let deadline = Instant::now() + HELPER_TIMEOUT;
        loop {
            let v = self.read_object(deadline)?;
            if is_reply(&v) {
                return Ok(v);
            }
            let is_error = type_of(&v) == Some("error");
            let text = if is_error {
                v.to_string()
            } else {
                String::new()
            };
            self.queue.push_back(v);
            if is_error {
                return Err(ClientError::Protocol(format!(
                    "waiting for {what}, got an error object: {text}"
                )));
            }
        }
    }

    fn set_read_deadline(&mut self, deadline: Instant) -> Result<()> {
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout);
        }
        // A zero timeout would mean "block forever" to the OS: at least 1 ms.
        let left = (deadline - now).max(Duration::from_millis(1));
        self.ws.get_ref().set_read_timeout(Some(left))?;
        Ok(())
    }

    /// Read from the network (never the queue) until one JSON object arrives, answering
    /// pings on the way.
    fn read_object(&mut self, deadline: Instant) -> Result<Value> {
        loop {
            if let Some(info) = &self.closed {
                return Err(ClientError::Closed(info.clone()));
            }
            self.set_read_deadline(deadline)?;
            let msg = match self.ws.read() {
                Ok(msg) => msg,
                Err(e) => return Err(self.read_error(e)),
            };
            match msg {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(&text).map_err(|e| {
                        ClientError::Protocol(format!("text frame is not JSON ({e}): {text:?}"))
                    })?;
                    if !v.is_object() {
                        return Err(ClientError::Protocol(format!(
                            "text frame is not a JSON object: {text}"
                        )));
                    }
                    return Ok(v);
                }
                Message::Binary(bytes) => {
                    return Err(ClientError::Protocol(format!(
                        "server sent a binary frame ({} bytes); the protocol uses text frames",
                        bytes.len()
                    )))
                }
                Message::Ping(payload) => {
                    // tungstenite has queued the pong (same payload); send it now rather
                    // than at the next read, so receipt is proven as soon as we have read.
                    self.pings.push(payload);
                    if let Err(e) = self.ws.flush() {
                        match e {
                            // Peer gone or slow: the next read reports the real state.
                            tungstenite::Error::Io(_)
                            | tungstenite::Error::ConnectionClosed
                            | tungstenite::Error::AlreadyClosed => {}
                            other => return Err(map_ws_error(other)),
                        }
                    }
                }
                Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(frame) => {
                    let info = frame.map(|f| (u16::from(f.code), f.reason.into_owned()));
                    // Send tungstenite's queued close reply; the server may already be gone.
                    let _ = self.ws.flush();
                    self.closed = Some(info.clone());
                    return Err(ClientError::Closed(info));
                }
            }
        }
    }

    /// Map a read error, recording the end of the connection where there is one.
    fn read_error(&mut self, e: tungstenite::Error) -> ClientError {
        let err = map_ws_error(e);
        if let ClientError::Closed(info) = &err {
            self.closed = Some(info.clone());
        }
        err
    }
}

/// Map a tungstenite error to a client error (timeouts and disconnects get their own
/// variants; `Closed` here never carries a code: a close frame is handled by the reader).
fn map_ws_error(e: tungstenite::Error) -> ClientError {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Io(io) if is_timeout(&io) => ClientError::Timeout,
        tungstenite::Error::Io(io) if is_disconnect(&io) => ClientError::Closed(None),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            ClientError::Closed(None)
        }
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            ClientError::Closed(None)
        }
        other => ClientError::Ws(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn build_request_merges_extra_fields() {
        let v = build_request(
            "message",
            "tok",
            "alice",
            "bob",
            json!({"nonce": "n", "message": "m"}),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "message", "session": "tok", "source": "alice", "dest": "bob",
                   "nonce": "n", "message": "m"})
        );
        let v = build_request("invite.request", "tok", "bob", "alice", Value::Null).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 4);
        assert!(build_request("message", "t", "a", "b", json!([1])).is_err());
    }

    #[test]
    fn connect_to_nothing_fails() {
        // Port 1 on localhost: nothing listens there in the test environment.
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(JsonClient::connect(addr).is_err());
    }

    /// Run `script` as a one-connection WebSocket server on a loopback port.
    fn scripted_server(
        script: impl FnOnce(WebSocket<TcpStream>) + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            script(tungstenite::accept(stream).unwrap());
        });
        (addr, handle)
    }

    fn read_json(ws: &mut WebSocket<TcpStream>) -> Value {
        loop {
            match ws.read().unwrap() {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Binary(b) => return json!({"binary": b.len()}),
                _ => {}
            }
        }
    }

    fn send_json(ws: &mut WebSocket<TcpStream>, v: Value) {
        ws.send(Message::Text(v.to_string())).unwrap();
    }

    #[test]
    fn loopback_queue_ping_and_server_close() {
        let (addr, server) = scripted_server(|mut ws| {
            let req = read_json(&mut ws);
            assert_eq!(req, json!({"type": "subscribe", "session": "tok"}));
            send_json(
                &mut ws,
                json!({"type": "status", "source": "bob", "status": "online"}),
            );
            send_json(&mut ws, json!({"type": "subscribe", "resp_code": 0}));
            ws.send(Message::Ping(7u64.to_be_bytes().to_vec())).unwrap();
            loop {
                if let Message::Pong(p) = ws.read().unwrap() {
                    assert_eq!(p, 7u64.to_be_bytes());
                    break;
                }
            }
            let bye = CloseFrame {
                code: CloseCode::Policy,
                reason: "bye".into(),
            };
            ws.close(Some(bye)).unwrap();
            while ws.read().is_ok() {}
        });
        let mut c = JsonClient::connect(addr).unwrap();
        let reply = c.subscribe("tok").unwrap();
        assert_eq!(reply, json!({"type": "subscribe", "resp_code": 0}));
        let info = c.wait_closed(Duration::from_secs(5)).unwrap();
        assert_eq!(info, Some((1008, "bye".to_string())));
        assert_eq!(c.receipt_pings(), vec![7]);
        assert_eq!(c.pings_seen(), vec![7u64.to_be_bytes().to_vec()]);
        // The status event was queued while the helper waited for its reply.
        let status = c.recv(Duration::from_secs(1)).unwrap();
        assert_eq!(status["type"], "status");
        match c.recv(Duration::from_secs(1)) {
            Err(ClientError::Closed(Some((1008, _)))) => {}
            other => panic!("expected Closed(1008), got {other:?}"),
        }
        assert!(matches!(
            c.send(&json!({"type": "x"})),
            Err(ClientError::Closed(_))
        ));
        c.close().unwrap();
        server.join().unwrap();
    }

    #[test]
    fn loopback_ack_silence_error_and_clean_close() {
        let (addr, server) = scripted_server(|mut ws| {
            let req = read_json(&mut ws);
            assert_eq!(req["type"], "message");
            assert_eq!(req["id"], "m1");
            assert_eq!(req["nonce"], "n");
            send_json(
                &mut ws,
                json!({"type": "message", "source": "bob", "dest": "alice", "message": "hi"}),
            );
            send_json(
                &mut ws,
                json!({"type": "ack", "request": "message", "id": "m1", "resp_code": 0, "event": 3}),
            );
            assert_eq!(read_json(&mut ws), json!({"binary": 3}));
            send_json(
                &mut ws,
                json!({"type": "error", "resp_code": 7, "error": "binary"}),
            );
            assert_eq!(read_json(&mut ws)["type"], "identification");
            // Wait for the client's close; tungstenite answers it.
            loop {
                match ws.read() {
                    Ok(Message::Close(_)) => {}
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let mut c = JsonClient::connect(addr).unwrap();
        let ack = c
            .request_acked(
                "message",
                "tok",
                "alice",
                "bob",
                json!({"nonce": "n", "message": "c"}),
                "m1",
            )
            .unwrap();
        assert_eq!(ack["event"], 3);
        // The delivery that came first is queued: silence must not pass over it.
        assert!(matches!(
            c.expect_silence(Duration::from_millis(50)),
            Err(ClientError::Protocol(_))
        ));
        let queued = c.take_queued();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0]["message"], "hi");
        c.expect_silence(Duration::from_millis(200)).unwrap();
        c.send_binary(&[1, 2, 3]).unwrap();
        match c.identify() {
            Err(ClientError::Protocol(msg)) => assert!(msg.contains("error"), "{msg}"),
            other => panic!("expected fail-fast on the error object, got {other:?}"),
        }
        assert_eq!(c.recv(Duration::from_secs(1)).unwrap()["resp_code"], 7);
        assert!(matches!(
            c.recv(Duration::from_millis(100)),
            Err(ClientError::Timeout)
        ));
        c.close().unwrap();
        server.join().unwrap();
    }

    #[test]
    fn errors_display() {
        let e = ClientError::Closed(Some((1008, "bad token".into())));
        assert!(e.to_string().contains("1008"));
        assert!(ClientError::Timeout.to_string().contains("timed out"));
    }
}
