//! Blocking test client, GUI helpers and a fake remote node for the hub's P2P protocol
//! (node-to-node HTTP/1.1 with JSON `action` objects), written only from
//! `shared/specs/p2p.txt`, `shared/specs/WIRE-FACTS.md` ("P2P") and
//! `docs/protocols/p2p.md`, never from the hub's code.
//!
//! Layers, each usable on its own:
//!
//! - [`http_request`] and friends ([`post_json`], [`get_ping`], [`get_page`],
//!   [`post_form`]): a small blocking HTTP/1.1 client (one request per connection,
//!   `Connection: close`, bounded by a deadline) that reads `Content-Length`, chunked and
//!   read-to-end bodies.
//! - Pure wire builders: [`WireMessage`], [`handshake_request`], [`send_request`],
//!   [`resend_request`], [`history_request`], [`ping_request`], [`form_encode`] /
//!   [`form_decode`], [`random_key`].
//! - [`Gui`]: the GUI actions of `POST /` (`login`, `contacts`, `add_contact`,
//!   `set_contact`, `conversation`, `post`) with typed replies ([`Contact`],
//!   [`ConvMessage`]).
//! - [`FakeNode`]: a tiny HTTP/1.1 server on a loopback address that answers the P2P
//!   actions as a well-behaved node would, records every request, checks the keys it gave
//!   out, and can be told to misbehave ([`Behavior`], scripted `history` answers, `resend`
//!   refusals). It also acts as a client (its own handshakes and sends to a hub).
//!
//! Readings of the documents this client relies on (where they leave a choice):
//!
//! - **Which key a request carries.** p2p.md "Keys": the key a node presents to a peer is
//!   the one that peer drew and sent in its handshake. So the fake node accepts a keyed
//!   request when its `key` is one the fake node itself handed out (and records to whom),
//!   and presents, in its own requests to a node, the key that node sent it. The phrase
//!   "pinged (with our key)" in "What a node does" could be read as the `our_key` field;
//!   the "Keys" section rules that out, and the fake node records a ping carrying any
//!   other key as an anomaly.
//! - **A key-less ping** is answered (`pong`); a ping with a wrong key gets 403 and
//!   `{"status": 0}`.
//! - **A relayed message** (a `send`/`history` whose `from` is not the requester) is
//!   accepted on the relay's key: the key identifies the requester, `from` the author.
//! - **Duplicate detection** is by `id`; a message without `id` is identified by
//!   `from`, `to`, `timestamp` and `message` (the doc's SHA-256 of these fields does not
//!   say how they are joined, so the fake node does not compute it; it compares fields).
//! - **`history` answers** are one status per message, in order; a scripted answer shorter
//!   than the batch is padded with 1s, a longer one cut.
//! - **Timestamps** are integers; decimal strings are read too (the hub reads both, and
//!   the spec shows a string).
//! - **HTTP status of refusals.** p2p.md gives 403 for a missing/bad key or session and
//!   413 for an oversized body; other refusals (`status` 0 for an unknown recipient, a
//!   refused handshake) have no stated HTTP status: the client returns whatever came.
//!
//! Helper conventions (not from the docs): GUI helpers fail with
//! [`P2pError::Refused`] when the reply's `status` is not 1; raw variants return
//! `(http status, JSON)` as received. Every network wait is bounded.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How long one HTTP exchange of the helpers may take (connect, write, read).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the fake node keeps an idle keep-alive connection open.
pub const FAKE_IDLE: Duration = Duration::from_secs(15);
/// How long a [`Behavior::Hang`] request is held at most before the connection is closed.
pub const FAKE_MAX_HANG: Duration = Duration::from_secs(30);
/// Largest request head or body the fake node reads (the hub's default `max_frame`).
pub const FAKE_MAX_BODY: usize = 1 << 20;

pub type Result<T> = std::result::Result<T, P2pError>;

/// Everything that can go wrong talking to a node.
#[derive(Debug)]
pub enum P2pError {
    /// Socket-level failure (connection refused, reset...).
    Io(io::Error),
    /// No complete answer within the deadline.
    Timeout,
    /// The peer sent something that is not valid HTTP or not the JSON asked for.
    Protocol(String),
    /// A GUI helper got a reply whose `status` is not 1.
    Refused { http: u16, reply: Value },
}

impl fmt::Display for P2pError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            P2pError::Io(e) => write!(f, "I/O error: {e}"),
            P2pError::Timeout => write!(f, "timed out"),
            P2pError::Protocol(msg) => write!(f, "protocol violation: {msg}"),
            P2pError::Refused { http, reply } => write!(f, "refused (HTTP {http}): {reply}"),
        }
    }
}

impl std::error::Error for P2pError {}

impl From<io::Error> for P2pError {
    fn from(e: io::Error) -> Self {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            P2pError::Timeout
        } else {
            P2pError::Io(e)
        }
    }
}

// ----- small pure helpers ---------------------------------------------------------------

/// Unix seconds now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A fresh access key as the doc describes them: 32 random bytes, lower-case hex.
pub fn random_key() -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` looks like a key of the doc's shape (64 hex digits, either case).
pub fn is_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The node part of an address: `handle@host:port` and `#room@host:port` give
/// `host:port`; a bare node address is returned as is.
pub fn node_of(address: &str) -> &str {
    match address.rfind('@') {
        Some(at) => &address[at + 1..],
        None => address,
    }
}

/// The host of a node address (`127.0.0.2:8000` → `127.0.0.2`, `[fc00::1]:8000` →
/// `[fc00::1]`).
pub fn host_of(address: &str) -> &str {
    let node = node_of(address);
    match node.rfind(':') {
        Some(colon) if !node[colon..].contains(']') => &node[..colon],
        _ => node,
    }
}

/// Resolve a node address (`host:port`) to a socket address.
pub fn socket_of(address: &str) -> Result<SocketAddr> {
    node_of(address)
        .to_socket_addrs()
        .map_err(|e| P2pError::Protocol(format!("bad node address {address:?}: {e}")))?
        .next()
        .ok_or_else(|| P2pError::Protocol(format!("node address {address:?} resolves to nothing")))
}

/// `application/x-www-form-urlencoded` encoding (as browsers do it: unreserved bytes
/// `A-Z a-z 0-9 * - . _` kept, space as `+`, every other byte `%XX`).
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(name, &mut out);
        out.push('=');
        enc(value, &mut out);
    }
    out
}

/// Decode an `application/x-www-form-urlencoded` body (lenient: a bad `%` escape is kept
/// literally, invalid UTF-8 is replaced).
pub fn form_decode(body: &str) -> Vec<(String, String)> {
    fn dec(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let pair = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                    match pair.and_then(|p| u8::from_str_radix(p, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('=') {
            Some((n, v)) => (dec(n), dec(v)),
            None => (dec(part), String::new()),
        })
        .collect()
}

/// Read an integer timestamp: a JSON integer, or a decimal string.
pub fn timestamp_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

// ----- wire builders --------------------------------------------------------------------

/// One message as it travels between nodes (`send`, `resend`, or an entry of `history`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireMessage {
    pub from: String,
    pub to: String,
    pub message: String,
    pub timestamp: i64,
    pub enctype: String,
    /// The network-wide id (`<origin node>/<number>`); `None`: not sent.
    pub id: Option<String>,
    /// The hub's `room` field (`#name@address`) of room messages.
    pub room: Option<String>,
}

impl WireMessage {
    /// A plain-text message stamped now, without id.
    pub fn new(from: &str, to: &str, message: &str) -> WireMessage {
        WireMessage {
            from: from.into(),
            to: to.into(),
            message: message.into(),
            timestamp: now_unix(),
            enctype: String::new(),
            id: None,
            room: None,
        }
    }

    /// The same with an `id`.
    pub fn with_id(mut self, id: &str) -> WireMessage {
        self.id = Some(id.into());
        self
    }

    /// The message's fields as a JSON object (no `action`, no `key`).
    pub fn fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("from".into(), json!(self.from));
        m.insert("to".into(), json!(self.to));
        m.insert("message".into(), json!(self.message));
        m.insert("timestamp".into(), json!(self.timestamp));
        m.insert("enctype".into(), json!(self.enctype));
        if let Some(id) = &self.id {
            m.insert("id".into(), json!(id));
        }
        if let Some(room) = &self.room {
            m.insert("room".into(), json!(room));
        }
        m
    }

    /// Read a message object (`send`/`resend` request or `history` entry). `from`, `to`,
    /// `message` and `timestamp` are required; `enctype` defaults to empty.
    pub fn from_json(v: &Value) -> std::result::Result<WireMessage, String> {
        let text = |name: &str| -> std::result::Result<String, String> {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("message without a string {name:?}: {v}"))
        };
        let timestamp = v
            .get("timestamp")
            .and_then(timestamp_of)
            .ok_or_else(|| format!("message without an integer timestamp: {v}"))?;
        let enctype = match v.get("enctype") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(format!("enctype is not a string: {other}")),
        };
        let opt = |name: &str| -> std::result::Result<Option<String>, String> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!("{name} is not a string: {other}")),
            }
        };
        Ok(WireMessage {
            from: text("from")?,
            to: text("to")?,
            message: text("message")?,
            timestamp,
            enctype,
            id: opt("id")?,
            room: opt("room")?,
        })
    }

    /// What identifies the message for duplicate detection: its id, else its fields.
    pub fn identity(&self) -> String {
        match &self.id {
            Some(id) => format!("id:{id}"),
            None => format!(
                "fields:{}\u{0}{}\u{0}{}\u{0}{}",
                self.from, self.to, self.timestamp, self.message
            ),
        }
    }
}

fn with_action(action: &str, fields: Map<String, Value>, key: Option<&str>) -> Value {
    let mut m = Map::new();
    m.insert("action".into(), json!(action));
    m.extend(fields);
    if let Some(key) = key {
        m.insert("key".into(), json!(key));
    }
    Value::Object(m)
}

/// `{"action":"handshake","from","key","nick"?}`.
pub fn handshake_request(from: &str, key: &str, nick: Option<&str>) -> Value {
    let mut v = json!({"action": "handshake", "from": from, "key": key});
    if let Some(nick) = nick {
        v["nick"] = json!(nick);
    }
    v
}

/// `{"action":"send", ...message fields, "key"?}`.
pub fn send_request(m: &WireMessage, key: Option<&str>) -> Value {
    with_action("send", m.fields(), key)
}

/// `{"action":"resend", ...message fields, "key"?}` (fields as `send`).
pub fn resend_request(m: &WireMessage, key: Option<&str>) -> Value {
    with_action("resend", m.fields(), key)
}

/// `{"action":"history","from","key"?,"messages":[...]}`.
pub fn history_request(from: &str, key: Option<&str>, messages: &[WireMessage]) -> Value {
    let list: Vec<Value> = messages.iter().map(|m| Value::Object(m.fields())).collect();
    let mut fields = Map::new();
    fields.insert("from".into(), json!(from));
    fields.insert("messages".into(), Value::Array(list));
    with_action("history", fields, key)
}

/// `{"action":"ping"}`, or with `from` and `key`.
pub fn ping_request(from_and_key: Option<(&str, &str)>) -> Value {
    match from_and_key {
        None => json!({"action": "ping"}),
        Some((from, key)) => json!({"action": "ping", "from": from, "key": key}),
    }
}

// ----- HTTP/1.1 -------------------------------------------------------------------------

/// A reader whose every read is bounded by one deadline.
struct DeadlineStream {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        let left = (self.deadline - now).max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// A request or response head: start line and headers (names as sent).
#[derive(Clone, Debug, Default)]
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read a head. `Ok(None)`: the connection ended before any byte of it.
fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut head = Head::default();
    let mut total = 0usize;
    let mut first = true;
    loop {
        let mut line = Vec::new();
        let n = r.take(16 * 1024).read_until(b'\n', &mut line)?;
        if n == 0 {
            if first {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection ended inside a head",
            ));
        }
        total += n;
        if total > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if first {
            // Tolerate stray empty lines between keep-alive messages (RFC 9112 2.2).
            if text.is_empty() {
                continue;
            }
            head.start = text.to_owned();
            first = false;
            continue;
        }
        if text.is_empty() {
            return Ok(Some(head));
        }
        match text.split_once(':') {
            Some((name, value)) => head
                .headers
                .push((name.trim().to_owned(), value.trim().to_owned())),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad header line {text:?}"),
                ))
            }
        }
    }
}

/// Read a body framed by `Content-Length` or chunked coding; without either, read to the
/// end of the connection when `to_eof` (responses), else nothing (requests).
fn read_body<R: BufRead>(r: &mut R, head: &Head, to_eof: bool, max: usize) -> io::Result<Vec<u8>> {
    let too_large = || io::Error::new(io::ErrorKind::InvalidData, "body too large");
    if head
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            r.take(1024).read_line(&mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut t = String::new();
                    let n = r.take(16 * 1024).read_line(&mut t)?;
                    if n == 0 || t.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            if body.len() + size > max {
                return Err(too_large());
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    }
    if let Some(len) = head.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
        if len > max {
            return Err(too_large());
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        return Ok(body);
    }
    if !to_eof {
        return Ok(Vec::new());
    }
    let mut body = Vec::new();
    r.take(max as u64 + 1).read_to_end(&mut body)?;
    if body.len() > max {
        return Err(too_large());
    }
    Ok(body)
}

/// A response as received.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Protocol` error if it is not).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            P2pError::Protocol(format!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            ))
        })
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), bounded by
/// `timeout` in all: `Host` and `Content-Length` are added; `headers` go as given.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse> {
    http_request_via(None, addr, method, path, headers, body, timeout)
}

/// Connect to `addr`, from the local IP `local` if given (a node on its own loopback IP
/// talks from that IP, so that a peer sees the source address its `from` names).
pub fn connect_via(
    local: Option<IpAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream> {
    let Some(ip) = local else {
        return Ok(TcpStream::connect_timeout(&addr, timeout)?);
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    socket.connect_timeout(&SockAddr::from(addr), timeout)?;
    Ok(TcpStream::from(socket))
}

/// [`http_request`] from the local IP `local` (see [`connect_via`]).
pub fn http_request_via(
    local: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let stream = connect_via(local, addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut writer = &stream;
    writer.write_all(head.as_bytes())?;
    writer.write_all(body)?;
    writer.flush()?;
    let mut reader = BufReader::new(DeadlineStream {
        stream: stream.try_clone()?,
        deadline,
    });
    loop {
        let head = read_head(&mut reader)?.ok_or_else(|| {
            P2pError::Protocol(format!("{addr} closed the connection without a response"))
        })?;
        let mut parts = head.start.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| P2pError::Protocol(format!("bad status line {:?}", head.start)))?;
        if !version.starts_with("HTTP/1.") {
            return Err(P2pError::Protocol(format!(
                "not an HTTP/1.x response: {:?}",
                head.start
            )));
        }
        if (100..200).contains(&status) {
            continue; // 100 Continue and friends: the real response follows.
        }
        let body = if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
            Vec::new()
        } else {
            read_body(&mut reader, &head, true, 16 << 20)?
        };
        let _ = stream.shutdown(Shutdown::Both);
        return Ok(HttpResponse {
            status,
            headers: head.headers,
            body,
        });
    }
}

/// Parse a response body as JSON; an empty body is `null`.
fn json_reply(resp: HttpResponse) -> Result<(u16, Value)> {
    if resp.body.iter().all(u8::is_ascii_whitespace) {
        return Ok((resp.status, Value::Null));
    }
    let v = resp.json()?;
    Ok((resp.status, v))
}

/// `POST /` with a JSON body → (HTTP status, JSON reply).
pub fn post_json(addr: SocketAddr, body: &Value) -> Result<(u16, Value)> {
    post_json_via(None, addr, body)
}

/// [`post_json`] from the local IP `local` (see [`connect_via`]).
pub fn post_json_via(
    local: Option<IpAddr>,
    addr: SocketAddr,
    body: &Value,
) -> Result<(u16, Value)> {
    json_reply(http_request_via(
        local,
        addr,
        "POST",
        "/",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
        REQUEST_TIMEOUT,
    )?)
}

/// `POST path` with any body and content type, the response as is.
pub fn post_raw(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<HttpResponse> {
    http_request(
        addr,
        "POST",
        path,
        &[("Content-Type", content_type)],
        body,
        REQUEST_TIMEOUT,
    )
}

/// `GET /ping` (the sample dialect) → (HTTP status, JSON reply).
pub fn get_ping(addr: SocketAddr) -> Result<(u16, Value)> {
    json_reply(http_request(
        addr,
        "GET",
        "/ping",
        &[],
        b"",
        REQUEST_TIMEOUT,
    )?)
}

/// `GET /` (the GUI page), the response as is.
pub fn get_page(addr: SocketAddr) -> Result<HttpResponse> {
    http_request(addr, "GET", "/", &[], b"", REQUEST_TIMEOUT)
}

/// `POST path` (`/messages/` or `/messages`) with a form body → (HTTP status, JSON).
pub fn post_form(addr: SocketAddr, path: &str, fields: &[(&str, &str)]) -> Result<(u16, Value)> {
    post_form_via(None, addr, path, fields)
}

/// [`post_form`] from the local IP `local` (see [`connect_via`]).
pub fn post_form_via(
    local: Option<IpAddr>,
    addr: SocketAddr,
    path: &str,
    fields: &[(&str, &str)],
) -> Result<(u16, Value)> {
    let body = form_encode(fields);
    json_reply(http_request_via(
        local,
        addr,
        "POST",
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
        REQUEST_TIMEOUT,
    )?)
}

/// The sample dialect's `POST /messages/` form of a message (`text` = `message`).
pub fn sample_message_form(m: &WireMessage, key: Option<&str>) -> Vec<(String, String)> {
    let mut fields = vec![
        ("from".to_owned(), m.from.clone()),
        ("to".to_owned(), m.to.clone()),
        ("text".to_owned(), m.message.clone()),
        ("timestamp".to_owned(), m.timestamp.to_string()),
    ];
    if let Some(key) = key {
        fields.push(("key".to_owned(), key.to_owned()));
    }
    fields
}

/// The `status` of a reply as an integer (`None` if absent or not an integer).
pub fn status_of(reply: &Value) -> Option<i64> {
    reply.get("status").and_then(Value::as_i64)
}

// ----- GUI actions ----------------------------------------------------------------------

/// `{"action":"login","user","password"}` → (HTTP status, reply), as received.
pub fn gui_login_raw(node: SocketAddr, user: &str, password: &str) -> Result<(u16, Value)> {
    post_json(
        node,
        &json!({"action": "login", "user": user, "password": password}),
    )
}

/// One entry of the `contacts` GUI reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Contact {
    pub address: String,
    pub nick: String,
    pub online: bool,
    /// Unix seconds; `None` when sent as `null` (never seen).
    pub last_online: Option<i64>,
    pub last_connect: Option<i64>,
    pub can_resend: i64,
    pub acked: bool,
    pub undelivered: i64,
    /// The entry as received.
    pub raw: Value,
}

impl Contact {
    /// Read an entry, strict on the documented types.
    pub fn from_json(v: &Value) -> std::result::Result<Contact, String> {
        let s = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("contact without a string {name:?}: {v}"))
        };
        let b = |name: &str| {
            v.get(name)
                .and_then(Value::as_bool)
                .ok_or_else(|| format!("contact without a boolean {name:?}: {v}"))
        };
        let i = |name: &str| {
            v.get(name)
                .and_then(Value::as_i64)
                .ok_or_else(|| format!("contact without an integer {name:?}: {v}"))
        };
        let t = |name: &str| match v.get(name) {
            Some(Value::Null) => Ok(None),
            Some(x) => timestamp_of(x)
                .map(Some)
                .ok_or_else(|| format!("contact {name:?} is not Unix seconds: {v}")),
            None => Err(format!("contact without {name:?}: {v}")),
        };
        let nick = match v.get("nick") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(n)) => n.clone(),
            Some(_) => return Err(format!("contact nick is not a string: {v}")),
        };
        Ok(Contact {
            address: s("address")?,
            nick,
            online: b("online")?,
            last_online: t("last_online")?,
            last_connect: t("last_connect")?,
            can_resend: i("can_resend")?,
            acked: b("acked")?,
            undelivered: i("undelivered")?,
            raw: v.clone(),
        })
    }
}

/// One entry of the `conversation` GUI reply.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvMessage {
    pub id: String,
    pub from: String,
    pub to: String,
    pub message: String,
    pub timestamp: i64,
    pub enctype: String,
    /// `"in"` or `"out"`.
    pub direction: String,
    /// For `out`: whether the contact accepted it. `None` for `in`.
    pub delivered: Option<bool>,
    pub raw: Value,
}

impl ConvMessage {
    /// Read an entry, strict on the documented types.
    pub fn from_json(v: &Value) -> std::result::Result<ConvMessage, String> {
        let s = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("conversation message without a string {name:?}: {v}"))
        };
        let direction = s("direction")?;
        if direction != "in" && direction != "out" {
            return Err(format!("direction is neither in nor out: {v}"));
        }
        let delivered = match v.get("delivered") {
            Some(Value::Bool(b)) => Some(*b),
            None | Some(Value::Null) if direction == "in" => None,
            _ => return Err(format!("an out message without a boolean delivered: {v}")),
        };
        let enctype = match v.get("enctype") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(e)) => e.clone(),
            Some(_) => return Err(format!("enctype is not a string: {v}")),
        };
        Ok(ConvMessage {
            id: s("id")?,
            from: s("from")?,
            to: s("to")?,
            message: s("message")?,
            timestamp: v
                .get("timestamp")
                .and_then(timestamp_of)
                .ok_or_else(|| format!("conversation message without a timestamp: {v}"))?,
            enctype,
            direction,
            delivered,
            raw: v.clone(),
        })
    }
}

/// The owner's GUI session on one node.
#[derive(Clone, Debug)]
pub struct Gui {
    pub node: SocketAddr,
    pub session: String,
}

impl Gui {
    /// `login`; fails unless the reply is status 1 with a string `session`.
    pub fn login(node: SocketAddr, user: &str, password: &str) -> Result<Gui> {
        let (http, reply) = gui_login_raw(node, user, password)?;
        match (
            status_of(&reply),
            reply.get("session").and_then(Value::as_str),
        ) {
            (Some(1), Some(session)) if !session.is_empty() => Ok(Gui {
                node,
                session: session.to_owned(),
            }),
            _ => Err(P2pError::Refused { http, reply }),
        }
    }

    /// Any action with this session added (`fields` must be an object or null), the
    /// reply as received.
    pub fn call(&self, action: &str, fields: Value) -> Result<(u16, Value)> {
        post_json(self.node, &gui_request(action, &self.session, fields))
    }

    /// Like [`call`](Self::call), failing unless the reply's status is 1.
    pub fn call_ok(&self, action: &str, fields: Value) -> Result<Value> {
        let (http, reply) = self.call(action, fields)?;
        if status_of(&reply) == Some(1) {
            Ok(reply)
        } else {
            Err(P2pError::Refused { http, reply })
        }
    }

    /// `contacts` → (this node's address, the contacts).
    pub fn contacts_full(&self) -> Result<(String, Vec<Contact>)> {
        let reply = self.call_ok("contacts", Value::Null)?;
        let address = reply
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| P2pError::Protocol(format!("contacts reply without address: {reply}")))?
            .to_owned();
        let list = reply
            .get("contacts")
            .and_then(Value::as_array)
            .ok_or_else(|| P2pError::Protocol(format!("contacts reply without a list: {reply}")))?;
        let contacts = list
            .iter()
            .map(Contact::from_json)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(P2pError::Protocol)?;
        Ok((address, contacts))
    }

    /// `contacts` → the contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        Ok(self.contacts_full()?.1)
    }

    /// The contact with this address, if listed.
    pub fn contact(&self, address: &str) -> Result<Option<Contact>> {
        Ok(self.contacts()?.into_iter().find(|c| c.address == address))
    }

    /// `add_contact` (the node then sends its handshake).
    pub fn add_contact(
        &self,
        address: &str,
        nick: Option<&str>,
        can_resend: Option<i64>,
    ) -> Result<()> {
        self.call_ok("add_contact", contact_fields(address, nick, can_resend))
            .map(|_| ())
    }

    /// `set_contact` (`nick` and/or `can_resend`).
    pub fn set_contact(
        &self,
        address: &str,
        nick: Option<&str>,
        can_resend: Option<i64>,
    ) -> Result<()> {
        self.call_ok("set_contact", contact_fields(address, nick, can_resend))
            .map(|_| ())
    }

    /// `conversation` with an address, oldest first.
    pub fn conversation(&self, with: &str, limit: Option<u32>) -> Result<Vec<ConvMessage>> {
        let mut fields = json!({"with": with});
        if let Some(limit) = limit {
            fields["limit"] = json!(limit);
        }
        let reply = self.call_ok("conversation", fields)?;
        reply
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                P2pError::Protocol(format!("conversation reply without messages: {reply}"))
            })?
            .iter()
            .map(ConvMessage::from_json)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(P2pError::Protocol)
    }

    /// `post` → the message id.
    pub fn post(&self, to: &str, message: &str) -> Result<String> {
        let reply = self.call_ok("post", json!({"to": to, "message": message}))?;
        reply
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| P2pError::Protocol(format!("post reply without a string id: {reply}")))
    }
}

/// `{action, session, ...fields}` (fields must be an object or null; others are ignored).
pub fn gui_request(action: &str, session: &str, fields: Value) -> Value {
    let mut m = Map::new();
    m.insert("action".into(), json!(action));
    m.insert("session".into(), json!(session));
    if let Value::Object(extra) = fields {
        m.extend(extra);
    }
    Value::Object(m)
}

fn contact_fields(address: &str, nick: Option<&str>, can_resend: Option<i64>) -> Value {
    let mut v = json!({"address": address});
    if let Some(nick) = nick {
        v["nick"] = json!(nick);
    }
    if let Some(can_resend) = can_resend {
        v["can_resend"] = json!(can_resend);
    }
    v
}

// ----- the fake remote node -------------------------------------------------------------

/// How the fake node answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// As a well-behaved node (subject to the scripted answers).
    Normal,
    /// Reads each request, records it, then closes the connection without an answer
    /// (an unreachable node, as far as the requester can tell).
    Drop,
    /// Reads each request, records it, and never answers: the connection is held until
    /// the behaviour changes (or [`FAKE_MAX_HANG`]), then closed.
    Hang,
    /// Answers every request with `{"status": 0}` (HTTP 200).
    StatusZero,
}

/// Whether a request's key is one the fake node gave out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// The request had no `key`.
    Missing,
    /// It is the key given to this peer (its address).
    GivenTo(String),
    /// Not a key the fake node gave anyone.
    Unknown,
}

/// One request the fake node received.
#[derive(Clone)]
pub struct Recorded {
    /// Order of arrival (0, 1, ...).
    pub seq: usize,
    pub at: Instant,
    /// The TCP peer (a node talks from its own IP).
    pub peer: Option<SocketAddr>,
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// The body as JSON, when it is.
    pub json: Option<Value>,
    /// The body as a form, for `application/x-www-form-urlencoded`.
    pub form: Option<Vec<(String, String)>>,
    /// `action` of a JSON body.
    pub action: Option<String>,
    pub key: Option<String>,
    pub key_check: KeyCheck,
    /// What was answered: `None` when dropped or held ([`Behavior::Drop`] / `Hang`).
    pub reply: Option<(u16, Value)>,
}

impl fmt::Debug for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body as text, not bytes: these end up in assertion messages.
        f.debug_struct("Recorded")
            .field("seq", &self.seq)
            .field("peer", &self.peer)
            .field("request", &format_args!("{} {}", self.method, self.path))
            .field("content_type", &self.content_type)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("key_check", &self.key_check)
            .field("reply", &self.reply)
            .finish()
    }
}

impl Recorded {
    /// A string field of the JSON body.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.json.as_ref()?.get(name)?.as_str()
    }

    /// The messages it carries: one for `send`/`resend`, the list of `history`
    /// (entries that do not parse are skipped).
    pub fn messages(&self) -> Vec<WireMessage> {
        let Some(v) = &self.json else {
            return Vec::new();
        };
        match self.action.as_deref() {
            Some("send") | Some("resend") => WireMessage::from_json(v).into_iter().collect(),
            Some("history") => v
                .get("messages")
                .and_then(Value::as_array)
                .map(|l| {
                    l.iter()
                        .filter_map(|m| WireMessage::from_json(m).ok())
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Whether it was answered with a 2xx and JSON status 1 (an accepted request).
    pub fn accepted(&self) -> bool {
        matches!(&self.reply, Some((200..=299, v)) if status_of(v) == Some(1)
            || v.get("action").and_then(Value::as_str) == Some("pong"))
    }
}

/// A message that reached the fake node (every copy, duplicates included).
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The request that carried it.
    pub seq: usize,
    /// `send`, `history`, `resend` or `form` (the sample dialect).
    pub via: String,
    pub message: WireMessage,
    /// The per-message status answered (1 taken, 0 not taken).
    pub status: i64,
    /// Whether it was already stored (a repeat).
    pub repeat: bool,
}

/// What a handshake of the fake node's own (answering one) produced.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub to: String,
    pub request: Value,
    pub result: std::result::Result<(u16, Value), String>,
}

struct State {
    behavior: Behavior,
    history_script: VecDeque<Vec<i64>>,
    send_answer: i64,
    resend_answer: i64,
    auto_handshake: bool,
    nick: String,
    /// Keys we gave: peer address → key (it presents these to us).
    keys_given: HashMap<String, String>,
    /// Keys we were given: peer address → key (we present these to it).
    keys_received: HashMap<String, String>,
    requests: Vec<Recorded>,
    deliveries: Vec<Delivery>,
    /// Messages taken for delivery here (`send`/`history`/form), each identity once.
    stored: Vec<WireMessage>,
    /// Messages taken for relaying (`resend` answered 1), each identity once.
    relayed: Vec<WireMessage>,
    outbound: Vec<Outbound>,
    anomalies: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    address: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fake remote P2P node on a loopback address (see the module doc).
pub struct FakeNode {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl fmt::Debug for FakeNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeNode")
            .field("addr", &self.addr)
            .field("requests", &self.shared.lock().requests.len())
            .finish()
    }
}

/// What handling one request decided.
enum Outcome {
    Reply(u16, Value),
    Drop,
    Hang,
}

impl FakeNode {
    /// Start on `ip` (e.g. `"127.0.0.5"`), an ephemeral port.
    pub fn start(ip: &str) -> io::Result<FakeNode> {
        let listener = TcpListener::bind((ip, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                behavior: Behavior::Normal,
                history_script: VecDeque::new(),
                send_answer: 1,
                resend_answer: 1,
                auto_handshake: true,
                nick: format!("fake {addr}"),
                keys_given: HashMap::new(),
                keys_received: HashMap::new(),
                requests: Vec::new(),
                deliveries: Vec::new(),
                stored: Vec::new(),
                relayed: Vec::new(),
                outbound: Vec::new(),
                anomalies: Vec::new(),
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            address: addr.to_string(),
        });
        let for_thread = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(listener, for_thread));
        Ok(FakeNode {
            shared,
            addr,
            accept: Some(accept),
        })
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its node address (`host:port`), as it names itself in `from`.
    pub fn address(&self) -> String {
        self.shared.address.clone()
    }

    // --- steering ---

    /// Change how it answers from now on.
    pub fn set_behavior(&self, behavior: Behavior) {
        self.shared.lock().behavior = behavior;
        self.shared.changed.notify_all();
    }

    /// The next `history` requests get these status lists, one list per request, in
    /// order (then all 1s again).
    pub fn script_history(&self, answers: Vec<Vec<i64>>) {
        self.shared.lock().history_script.extend(answers);
    }

    /// The status answered to (well-keyed) `send` requests; 0 means "not taken".
    pub fn set_send_answer(&self, status: i64) {
        self.shared.lock().send_answer = status;
    }

    /// The status answered to (well-keyed) `resend` requests; 0 means "I do not relay".
    pub fn set_resend_answer(&self, status: i64) {
        self.shared.lock().resend_answer = status;
    }

    /// Whether a handshake from a peer it has given no key yet is answered with its own
    /// handshake (default true, as the doc's nodes do).
    pub fn set_auto_handshake(&self, on: bool) {
        self.shared.lock().auto_handshake = on;
    }

    /// The nick it sends in its handshakes.
    pub fn set_nick(&self, nick: &str) {
        self.shared.lock().nick = nick.into();
    }

    // --- observation ---

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The requests with this `action`.
    pub fn requests_with(&self, action: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.action.as_deref() == Some(action))
            .cloned()
            .collect()
    }

    /// Every message copy that arrived (duplicates included).
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.lock().deliveries.clone()
    }

    /// The messages taken for this node, each once, in the order taken.
    pub fn stored(&self) -> Vec<WireMessage> {
        self.shared.lock().stored.clone()
    }

    /// The messages taken for relaying (`resend` answered 1), each once.
    pub fn relayed(&self) -> Vec<WireMessage> {
        self.shared.lock().relayed.clone()
    }

    /// The fake node's own handshakes and their results.
    pub fn outbound(&self) -> Vec<Outbound> {
        self.shared.lock().outbound.clone()
    }

    /// Things a well-behaved requester would not have done (bad keys, malformed
    /// requests, unknown actions, wrong content type). Tests that do not provoke them
    /// expect none.
    pub fn anomalies(&self) -> Vec<String> {
        self.shared.lock().anomalies.clone()
    }

    /// The key `peer` gave us in its handshake (we present it to `peer`).
    pub fn key_from(&self, peer: &str) -> Option<String> {
        self.shared.lock().keys_received.get(peer).cloned()
    }

    /// The key we gave `peer` (it must present it to us).
    pub fn key_given_to(&self, peer: &str) -> Option<String> {
        self.shared.lock().keys_given.get(peer).cloned()
    }

    /// Waits until `cond` holds for the current requests; returns whether it did. The
    /// node is locked while `cond` runs: it must not call this node's methods.
    pub fn wait_requests(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&[Recorded]) -> bool,
    ) -> bool {
        self.wait_state(timeout, |s| cond(&s.requests))
    }

    /// Waits for the first request (from the start) matching `pred`.
    pub fn wait_request(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Recorded) -> bool,
    ) -> Option<Recorded> {
        let mut found = None;
        self.wait_state(timeout, |s| {
            found = s.requests.iter().find(|r| pred(r)).cloned();
            found.is_some()
        });
        found
    }

    /// Waits until `cond` holds for the stored messages; returns whether it did.
    pub fn wait_stored(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&[WireMessage]) -> bool,
    ) -> bool {
        self.wait_state(timeout, |s| cond(&s.stored))
    }

    /// Waits until we hold a key from `peer` (its handshake arrived).
    pub fn wait_key_from(&self, peer: &str, timeout: Duration) -> Option<String> {
        let mut key = None;
        self.wait_state(timeout, |s| {
            key = s.keys_received.get(peer).cloned();
            key.is_some()
        });
        key
    }

    /// Waits until our own handshake to `peer` was answered with status 1.
    pub fn wait_handshake_accepted(&self, peer: &str, timeout: Duration) -> bool {
        self.wait_state(timeout, |s| {
            s.outbound
                .iter()
                .any(|o| o.to == peer && matches!(&o.result, Ok((_, v)) if status_of(v) == Some(1)))
        })
    }

    /// Waits until `cond` holds (the state is locked meanwhile: `cond` must not call
    /// methods of this fake node).
    fn wait_state(&self, timeout: Duration, mut cond: impl FnMut(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if cond(&state) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    // --- acting as a client ---

    /// Send our handshake to `node` (drawing our key for it if we have none yet).
    pub fn handshake(&self, node: &str) -> Result<(u16, Value)> {
        let (key, nick) = {
            let mut s = self.shared.lock();
            let key = s
                .keys_given
                .entry(node.to_owned())
                .or_insert_with(random_key)
                .clone();
            (key, s.nick.clone())
        };
        let request = handshake_request(&self.shared.address, &key, Some(&nick));
        let result = self.post(node, &request);
        self.shared.lock().outbound.push(Outbound {
            to: node.to_owned(),
            request,
            result: match &result {
                Ok(r) => Ok(r.clone()),
                Err(e) => Err(e.to_string()),
            },
        });
        self.shared.changed.notify_all();
        result
    }

    /// POST a JSON action to `node`, adding `from` (our address) and `key` (the key
    /// `node` gave us) when the body has none; a body with `"key": null` is sent without
    /// a key.
    pub fn request(&self, node: &str, body: Value) -> Result<(u16, Value)> {
        let mut body = body;
        if let Value::Object(m) = &mut body {
            m.entry("from")
                .or_insert_with(|| json!(self.shared.address));
            match m.get("key") {
                Some(Value::Null) => {
                    m.remove("key");
                }
                Some(_) => {}
                None => {
                    if let Some(key) = self.key_from(node) {
                        m.insert("key".into(), json!(key));
                    }
                }
            }
        }
        self.post(node, &body)
    }

    /// POST a JSON body to `node` exactly as given, from our own IP.
    pub fn post(&self, node: &str, body: &Value) -> Result<(u16, Value)> {
        post_json_via(Some(self.addr.ip()), socket_of(node)?, body)
    }

    /// POST a form (the sample dialect) to `node`'s `path`, from our own IP.
    pub fn post_form(
        &self,
        node: &str,
        path: &str,
        fields: &[(String, String)],
    ) -> Result<(u16, Value)> {
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        post_form_via(Some(self.addr.ip()), socket_of(node)?, path, &pairs)
    }

    /// `send` a message to `node` with the key `node` gave us.
    pub fn send_to(&self, node: &str, m: &WireMessage) -> Result<(u16, Value)> {
        let key = self.key_from(node);
        self.post(node, &send_request(m, key.as_deref()))
    }

    /// A message from this node (`from` = our address) to `to`, stamped now.
    pub fn message(&self, to: &str, text: &str) -> WireMessage {
        WireMessage::new(&self.shared.address, to, text)
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                std::thread::spawn(move || serve_connection(stream, shared));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Status",
    }
}

fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(FAKE_IDLE));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let peer = stream.peer_addr().ok();
    let mut reader = BufReader::new(read_half);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let head = match read_head(&mut reader) {
            Ok(Some(head)) => head,
            _ => break,
        };
        if head
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            let mut w = &stream;
            let _ = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let body = match read_body(&mut reader, &head, false, FAKE_MAX_BODY) {
            Ok(body) => body,
            Err(_) => {
                write_response(&stream, 413, &json!({"status": 0}), true);
                break;
            }
        };
        let closing = head
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
            || head.start.ends_with("HTTP/1.0");
        match handle_request(&shared, peer, &head, body) {
            Outcome::Reply(code, v) => {
                if !write_response(&stream, code, &v, closing) || closing {
                    break;
                }
            }
            Outcome::Drop => break,
            Outcome::Hang => {
                let deadline = Instant::now() + FAKE_MAX_HANG;
                let mut s = shared.lock();
                while s.behavior == Behavior::Hang
                    && !shared.stop.load(Ordering::SeqCst)
                    && Instant::now() < deadline
                {
                    s = shared
                        .changed
                        .wait_timeout(s, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn write_response(stream: &TcpStream, code: u16, body: &Value, closing: bool) -> bool {
    let text = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        reason(code),
        text.len(),
        if closing { "Connection: close\r\n" } else { "" }
    );
    let mut w = stream;
    w.write_all(head.as_bytes()).is_ok()
        && w.write_all(text.as_bytes()).is_ok()
        && w.flush().is_ok()
}

/// Record the request, decide the answer (the fake node's protocol logic).
fn handle_request(
    shared: &Arc<Shared>,
    peer: Option<SocketAddr>,
    head: &Head,
    body: Vec<u8>,
) -> Outcome {
    let mut parts = head.start.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let content_type = head.header("content-type").map(str::to_owned);
    let is_form = content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let form = is_form.then(|| form_decode(&String::from_utf8_lossy(&body)));
    let action = json
        .as_ref()
        .and_then(|v| v.get("action"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let key = match (&json, &form) {
        (Some(v), _) => v.get("key").and_then(Value::as_str).map(str::to_owned),
        (None, Some(f)) => f.iter().find(|(n, _)| n == "key").map(|(_, v)| v.clone()),
        _ => None,
    };

    let mut s = shared.lock();
    let key_check = match &key {
        None => KeyCheck::Missing,
        Some(k) => s
            .keys_given
            .iter()
            .find(|(_, given)| *given == k)
            .map(|(peer, _)| KeyCheck::GivenTo(peer.clone()))
            .unwrap_or(KeyCheck::Unknown),
    };
    let seq = s.requests.len();
    s.requests.push(Recorded {
        seq,
        at: Instant::now(),
        peer,
        method: method.clone(),
        path: path.clone(),
        content_type: content_type.clone(),
        body: body.clone(),
        json: json.clone(),
        form: form.clone(),
        action: action.clone(),
        key,
        key_check: key_check.clone(),
        reply: None,
    });
    let outcome = decide(
        shared,
        &mut s,
        seq,
        &method,
        &path,
        &content_type,
        json,
        form,
        key_check,
    );
    if let Outcome::Reply(code, v) = &outcome {
        s.requests[seq].reply = Some((*code, v.clone()));
    }
    drop(s);
    shared.changed.notify_all();
    outcome
}

#[allow(clippy::too_many_arguments)]
fn decide(
    shared: &Arc<Shared>,
    s: &mut State,
    seq: usize,
    method: &str,
    path: &str,
    content_type: &Option<String>,
    json: Option<Value>,
    form: Option<Vec<(String, String)>>,
    key_check: KeyCheck,
) -> Outcome {
    match s.behavior {
        Behavior::Drop => return Outcome::Drop,
        Behavior::Hang => return Outcome::Hang,
        Behavior::StatusZero => return Outcome::Reply(200, json!({"status": 0})),
        Behavior::Normal => {}
    }
    let refuse = |s: &mut State, what: &str| {
        s.anomalies.push(format!("request {seq}: {what}"));
        Outcome::Reply(403, json!({"status": 0, "error": what}))
    };
    match (method, path) {
        ("GET", "/ping") => {
            return Outcome::Reply(
                200,
                json!({"timestamp": now_unix(), "addr": host_of(&shared.address)}),
            )
        }
        ("POST", "/messages/") | ("POST", "/messages") => {
            let fields = form.unwrap_or_default();
            let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            if !matches!(key_check, KeyCheck::GivenTo(_)) {
                s.anomalies
                    .push(format!("request {seq}: form message with a bad key"));
                return Outcome::Reply(403, json!({"received": 0, "error": "bad key"}));
            }
            let m = WireMessage {
                from: get("from").unwrap_or_default(),
                to: get("to").unwrap_or_default(),
                message: get("text").unwrap_or_default(),
                timestamp: get("timestamp").and_then(|t| t.parse().ok()).unwrap_or(0),
                enctype: String::new(),
                id: None,
                room: None,
            };
            take_message(s, seq, "form", m, 1);
            return Outcome::Reply(200, json!({"received": now_unix()}));
        }
        ("POST", "/") => {}
        ("POST", _) | ("GET", _) => {
            s.anomalies.push(format!("request {seq}: {method} {path}"));
            return Outcome::Reply(404, json!({"status": 0, "error": "not found"}));
        }
        _ => {
            s.anomalies.push(format!("request {seq}: method {method}"));
            return Outcome::Reply(405, json!({"status": 0, "error": "method"}));
        }
    }
    if !content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/json"))
    {
        s.anomalies.push(format!(
            "request {seq}: POST / with Content-Type {content_type:?}"
        ));
    }
    let Some(v) = json.filter(Value::is_object) else {
        s.anomalies
            .push(format!("request {seq}: body is not a JSON object"));
        return Outcome::Reply(400, json!({"status": 0, "error": "not a JSON object"}));
    };
    let action = v.get("action").and_then(Value::as_str).unwrap_or_default();
    let keyed = matches!(key_check, KeyCheck::GivenTo(_));
    match action {
        "handshake" => {
            let (Some(from), Some(key)) = (
                v.get("from").and_then(Value::as_str),
                v.get("key").and_then(Value::as_str),
            ) else {
                s.anomalies
                    .push(format!("request {seq}: handshake without from/key"));
                return Outcome::Reply(200, json!({"status": 0, "error": "from and key"}));
            };
            if !is_key(key) {
                s.anomalies.push(format!(
                    "request {seq}: handshake key is not 32 bytes of hex: {key:?}"
                ));
            }
            s.keys_received.insert(from.to_owned(), key.to_owned());
            if s.auto_handshake && !s.keys_given.contains_key(from) {
                let our_key = random_key();
                s.keys_given.insert(from.to_owned(), our_key.clone());
                let request = handshake_request(&shared.address, &our_key, Some(&s.nick));
                let to = from.to_owned();
                let shared = shared.clone();
                std::thread::spawn(move || answer_handshake(shared, to, request));
            }
            Outcome::Reply(200, json!({"status": 1}))
        }
        "ping" => match key_check {
            KeyCheck::Missing => Outcome::Reply(
                200,
                json!({"action": "pong", "timestamp": now_unix(), "addr": shared.address}),
            ),
            KeyCheck::GivenTo(_) => Outcome::Reply(
                200,
                json!({"action": "pong", "timestamp": now_unix(), "addr": shared.address}),
            ),
            KeyCheck::Unknown => refuse(s, "ping with a key we never gave"),
        },
        "send" => {
            if !keyed {
                return refuse(s, "send without a key we gave");
            }
            let m = match WireMessage::from_json(&v) {
                Ok(m) => m,
                Err(e) => {
                    s.anomalies.push(format!("request {seq}: {e}"));
                    return Outcome::Reply(200, json!({"status": 0, "error": e}));
                }
            };
            let status = s.send_answer;
            take_message(s, seq, "send", m, status);
            Outcome::Reply(200, json!({"status": status}))
        }
        "resend" => {
            if !keyed {
                return refuse(s, "resend without a key we gave");
            }
            let m = match WireMessage::from_json(&v) {
                Ok(m) => m,
                Err(e) => {
                    s.anomalies.push(format!("request {seq}: {e}"));
                    return Outcome::Reply(200, json!({"status": 0, "error": e}));
                }
            };
            let status = s.resend_answer;
            let repeat = s.relayed.iter().any(|r| r.identity() == m.identity());
            s.deliveries.push(Delivery {
                seq,
                via: "resend".into(),
                message: m.clone(),
                status,
                repeat,
            });
            if status == 1 && !repeat {
                s.relayed.push(m);
            }
            Outcome::Reply(200, json!({"status": status}))
        }
        "history" => {
            if !keyed {
                s.anomalies
                    .push(format!("request {seq}: history without a key we gave"));
                return Outcome::Reply(403, json!({"status": 0}));
            }
            let Some(list) = v.get("messages").and_then(Value::as_array) else {
                s.anomalies
                    .push(format!("request {seq}: history without messages"));
                return Outcome::Reply(200, json!({"status": 0, "error": "messages"}));
            };
            let mut script = s.history_script.pop_front().unwrap_or_default();
            script.resize(list.len(), 1);
            let mut statuses = Vec::with_capacity(list.len());
            for (entry, scripted) in list.iter().zip(script) {
                match WireMessage::from_json(entry) {
                    Ok(m) => {
                        take_message(s, seq, "history", m, scripted);
                        statuses.push(scripted);
                    }
                    Err(e) => {
                        s.anomalies.push(format!("request {seq}: {e}"));
                        statuses.push(0);
                    }
                }
            }
            Outcome::Reply(200, json!({"status": statuses}))
        }
        other => {
            s.anomalies
                .push(format!("request {seq}: unknown action {other:?}"));
            Outcome::Reply(200, json!({"status": 0, "error": "unknown action"}))
        }
    }
}

/// Record a delivery; store it when `status` is 1 and it is new.
fn take_message(s: &mut State, seq: usize, via: &str, m: WireMessage, status: i64) {
    let repeat = s.stored.iter().any(|x| x.identity() == m.identity());
    s.deliveries.push(Delivery {
        seq,
        via: via.into(),
        message: m.clone(),
        status,
        repeat,
    });
    if status == 1 && !repeat {
        s.stored.push(m);
    }
}

/// Our own handshake in answer to a peer's (a few tries, as a node retries until 1).
fn answer_handshake(shared: Arc<Shared>, to: String, request: Value) {
    // Let the reply to the peer's handshake go out first.
    std::thread::sleep(Duration::from_millis(50));
    for attempt in 0..10 {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let local = socket_of(&shared.address).ok().map(|a| a.ip());
        let result = socket_of(&to)
            .and_then(|addr| post_json_via(local, addr, &request))
            .map_err(|e| e.to_string());
        let done = matches!(&result, Ok((_, v)) if status_of(v) == Some(1));
        shared.lock().outbound.push(Outbound {
            to: to.clone(),
            request: request.clone(),
            result,
        });
        shared.changed.notify_all();
        if done {
            return;
        }
        std::thread::sleep(Duration::from_millis(200 * (attempt + 1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn p2p_form_encoding_round_trips() {
        let fields = [
            ("from", "127.0.0.2:8000"),
            ("text", "hello, wörld & more=1+1 100%"),
            ("empty", ""),
        ];
        let enc = form_encode(&fields);
        assert_eq!(
            enc,
            "from=127.0.0.2%3A8000&text=hello%2C+w%C3%B6rld+%26+more%3D1%2B1+100%25&empty="
        );
        let dec = form_decode(&enc);
        let want: Vec<(String, String)> = fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(dec, want);
        // Lenient decoding: a bare name, a bad escape, a trailing %.
        assert_eq!(
            form_decode("a&b=%zz&c=%4"),
            vec![
                ("a".into(), "".into()),
                ("b".into(), "%zz".into()),
                ("c".into(), "%4".into())
            ]
        );
    }

    #[test]
    fn p2p_wire_builders_have_the_doc_shapes() {
        let m = WireMessage {
            from: "127.0.0.2:8000".into(),
            to: "bob@127.0.0.3:8000".into(),
            message: "hi".into(),
            timestamp: 1_700_000_000,
            enctype: String::new(),
            id: Some("127.0.0.2:8000/1".into()),
            room: None,
        };
        assert_eq!(
            send_request(&m, Some("k")),
            json!({"action": "send", "from": "127.0.0.2:8000", "to": "bob@127.0.0.3:8000",
                   "message": "hi", "timestamp": 1_700_000_000, "enctype": "",
                   "id": "127.0.0.2:8000/1", "key": "k"})
        );
        assert_eq!(resend_request(&m, None)["action"], "resend");
        assert!(resend_request(&m, None).get("key").is_none());
        let h = history_request("127.0.0.2:8000", Some("k"), &[m.clone(), m.clone()]);
        assert_eq!(h["action"], "history");
        assert_eq!(h["messages"].as_array().unwrap().len(), 2);
        assert!(h["messages"][0].get("action").is_none());
        assert_eq!(
            handshake_request("a:1", "k", Some("n")),
            json!({"action": "handshake", "from": "a:1", "key": "k", "nick": "n"})
        );
        assert_eq!(ping_request(None), json!({"action": "ping"}));
        assert_eq!(
            ping_request(Some(("a:1", "k"))),
            json!({"action": "ping", "from": "a:1", "key": "k"})
        );
        // Parsing: timestamps as strings, enctype missing.
        let parsed = WireMessage::from_json(
            &json!({"from": "a:1", "to": "b:2", "message": "x", "timestamp": "12"}),
        )
        .unwrap();
        assert_eq!((parsed.timestamp, parsed.enctype.as_str()), (12, ""));
        assert!(WireMessage::from_json(&json!({"from": "a:1", "to": "b:2"})).is_err());
        assert_eq!(
            WireMessage::from_json(&Value::Object(m.fields())).unwrap(),
            m
        );
        let form = sample_message_form(&m, Some("k"));
        assert_eq!(form[2], ("text".to_owned(), "hi".to_owned()));
        assert_eq!(form[4], ("key".to_owned(), "k".to_owned()));
        assert_eq!(
            gui_request("post", "s", json!({"to": "a:1"})),
            json!({"action": "post", "session": "s", "to": "a:1"})
        );
    }

    #[test]
    fn p2p_addresses_and_keys() {
        assert_eq!(node_of("bob@127.0.0.3:8000"), "127.0.0.3:8000");
        assert_eq!(node_of("#room@[fc00::1]:8000"), "[fc00::1]:8000");
        assert_eq!(node_of("127.0.0.3:8000"), "127.0.0.3:8000");
        assert_eq!(host_of("bob@127.0.0.3:8000"), "127.0.0.3");
        assert_eq!(host_of("[fc00::1]:8000"), "[fc00::1]");
        assert_eq!(socket_of("a@127.0.0.1:9").unwrap().port(), 9);
        let k = random_key();
        assert!(is_key(&k), "{k}");
        assert_ne!(k, random_key());
        assert!(!is_key("abc"));
        assert_eq!(timestamp_of(&json!("17")), Some(17));
        assert_eq!(timestamp_of(&json!(17)), Some(17));
        assert_eq!(timestamp_of(&json!(true)), None);
    }

    #[test]
    fn p2p_gui_reply_parsing_is_strict_on_types() {
        let c = Contact::from_json(&json!({"address": "a:1", "nick": "n", "online": true,
            "last_online": 5, "last_connect": null, "can_resend": 1, "acked": false,
            "undelivered": 2}))
        .unwrap();
        assert_eq!((c.online, c.last_connect, c.undelivered), (true, None, 2));
        assert!(Contact::from_json(&json!({"address": "a:1", "online": "yes"})).is_err());
        let m = ConvMessage::from_json(&json!({"id": "a:1/1", "from": "a:1", "to": "b:2",
            "message": "x", "timestamp": 3, "enctype": "", "direction": "out",
            "delivered": false}))
        .unwrap();
        assert_eq!(m.delivered, Some(false));
        let inbound = json!({"id": "a:1/1", "from": "a:1", "to": "b:2", "message": "x",
            "timestamp": 3, "enctype": "", "direction": "in"});
        assert_eq!(ConvMessage::from_json(&inbound).unwrap().delivered, None);
        let mut out = inbound.clone();
        out["direction"] = json!("out");
        assert!(ConvMessage::from_json(&out).is_err(), "out needs delivered");
    }

    #[test]
    fn p2p_http_client_reads_chunked_and_keeps_to_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            // 1: chunked JSON after a 100 Continue.
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let head = read_head(&mut r).unwrap().unwrap();
            assert_eq!(head.start, "POST / HTTP/1.1");
            assert_eq!(head.header("content-type"), Some("application/json"));
            let body = read_body(&mut r, &head, false, 1024).unwrap();
            assert_eq!(body, br#"{"action":"ping"}"#);
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1,\r\n6\r\n\"b\":2}\r\n0\r\n\r\n").unwrap();
            drop(s);
            // 2: body to EOF.
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            read_head(&mut r).unwrap().unwrap();
            s.write_all(b"HTTP/1.1 404 Not Found\r\n\r\n{\"status\":0}")
                .unwrap();
            s.shutdown(Shutdown::Both).unwrap();
            // 3: never answer.
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop(s);
        });
        let (code, v) = post_json(addr, &json!({"action": "ping"})).unwrap();
        assert_eq!((code, v), (200, json!({"a": 1, "b": 2})));
        let (code, v) = get_ping(addr).unwrap();
        assert_eq!((code, v), (404, json!({"status": 0})));
        let started = Instant::now();
        let r = http_request(addr, "GET", "/", &[], b"", Duration::from_millis(300));
        assert!(matches!(r, Err(P2pError::Timeout)), "{r:?}");
        assert!(started.elapsed() < Duration::from_millis(700));
        server.join().unwrap();
    }

    /// Two fake nodes make friends, then exercise keys, dedup, history and misbehaviour.
    #[test]
    fn p2p_fake_nodes_handshake_check_keys_and_dedup() {
        let a = FakeNode::start("127.0.0.7").unwrap();
        let b = FakeNode::start("127.0.0.8").unwrap();
        let (code, reply) = a.handshake(&b.address()).unwrap();
        assert_eq!((code, status_of(&reply)), (200, Some(1)));
        // b stored a's key and answered with its own handshake.
        let key_for_b = a.key_given_to(&b.address()).unwrap();
        assert_eq!(b.key_from(&a.address()), Some(key_for_b.clone()));
        let key_for_a = a.wait_key_from(&b.address(), T).expect("b's handshake");
        assert!(is_key(&key_for_a));
        assert_eq!(b.key_given_to(&a.address()), Some(key_for_a));
        assert!(b.wait_handshake_accepted(&a.address(), T));
        assert!(matches!(&b.outbound()[0].result, Ok((200, v)) if status_of(v) == Some(1)));

        // A send with the key b gave a: taken; checked as b's key for a.
        let m = a
            .message(&b.address(), "one")
            .with_id(&format!("{}/1", a.address()));
        let (code, reply) = a.send_to(&b.address(), &m).unwrap();
        assert_eq!((code, status_of(&reply)), (200, Some(1)));
        let last = b.requests().pop().unwrap();
        assert_eq!(last.action.as_deref(), Some("send"));
        assert_eq!(last.key_check, KeyCheck::GivenTo(a.address()));
        // A fake node talks from its own IP.
        assert_eq!(last.peer.map(|p| p.ip()), Some(a.addr().ip()));
        // A repeat: answered 1, stored once.
        let (_, reply) = a.send_to(&b.address(), &m).unwrap();
        assert_eq!(status_of(&reply), Some(1));
        assert_eq!(b.stored(), vec![m.clone()]);
        assert_eq!(b.deliveries().len(), 2);
        assert!(b.deliveries()[1].repeat);
        // Wrong key and no key: 403, status 0, nothing stored, recorded as anomalies.
        let bad = send_request(&a.message(&b.address(), "bad"), Some(&random_key()));
        let (code, reply) = post_json(b.addr(), &bad).unwrap();
        assert_eq!((code, status_of(&reply)), (403, Some(0)));
        let (code, _) = a
            .request(
                &b.address(),
                json!({"action": "send", "key": null, "to": b.address(),
                "message": "nokey", "timestamp": 1}),
            )
            .unwrap();
        assert_eq!(code, 403);
        assert_eq!(b.stored().len(), 1);
        assert_eq!(b.anomalies().len(), 2, "{:?}", b.anomalies());
        // Pings: bare, keyed, wrongly keyed.
        let (code, pong) = post_json(b.addr(), &ping_request(None)).unwrap();
        assert_eq!((code, pong["action"].as_str()), (200, Some("pong")));
        assert_eq!(pong["addr"], json!(b.address()));
        let (_, pong) = a.request(&b.address(), json!({"action": "ping"})).unwrap();
        assert_eq!(pong["action"], "pong");
        let (code, _) = post_json(b.addr(), &ping_request(Some(("x:1", "nope")))).unwrap();
        assert_eq!(code, 403);
        // Sample dialect.
        let (code, v) = get_ping(b.addr()).unwrap();
        assert_eq!((code, v["addr"].as_str()), (200, Some("127.0.0.8")));
        let key = a.key_from(&b.address()).unwrap();
        let fm = a.message(&b.address(), "via form");
        let form = sample_message_form(&fm, Some(&key));
        let pairs: Vec<(&str, &str)> = form.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let (code, v) = post_form(b.addr(), "/messages/", &pairs).unwrap();
        assert_eq!(code, 200);
        assert!(v["received"].as_i64().unwrap() > 0);
        assert_eq!(b.stored().last().unwrap().message, "via form");
    }

    #[test]
    fn p2p_fake_node_history_script_resend_and_misbehaviour() {
        let a = FakeNode::start("127.0.0.1").unwrap();
        let b = FakeNode::start("127.0.0.1").unwrap();
        a.handshake(&b.address()).unwrap();
        a.wait_key_from(&b.address(), T).unwrap();
        let key = a.key_from(&b.address()).unwrap();
        let msgs: Vec<WireMessage> = (1..=3)
            .map(|n| {
                a.message(&b.address(), &format!("m{n}"))
                    .with_id(&format!("{}/{n}", a.address()))
            })
            .collect();
        b.script_history(vec![vec![1, 0]]);
        let (code, reply) =
            post_json(b.addr(), &history_request(&a.address(), Some(&key), &msgs)).unwrap();
        assert_eq!((code, reply), (200, json!({"status": [1, 0, 1]})));
        let texts: Vec<String> = b.stored().into_iter().map(|m| m.message).collect();
        assert_eq!(texts, ["m1", "m3"]);
        // Unscripted now: all taken, repeats once.
        let (_, reply) =
            post_json(b.addr(), &history_request(&a.address(), Some(&key), &msgs)).unwrap();
        assert_eq!(reply, json!({"status": [1, 1, 1]}));
        assert_eq!(b.stored().len(), 3);
        // A bad key: {"status": 0}, 403.
        let (code, reply) =
            post_json(b.addr(), &history_request(&a.address(), Some("x"), &msgs)).unwrap();
        assert_eq!((code, reply), (403, json!({"status": 0})));
        // resend answered 0.
        b.set_resend_answer(0);
        let (_, reply) = a
            .request(&b.address(), resend_request(&msgs[0], Some(&key)))
            .unwrap();
        assert_eq!(status_of(&reply), Some(0));
        assert!(b.relayed().is_empty());
        // Misbehaviour: status 0, drop, hang.
        b.set_behavior(Behavior::StatusZero);
        let (_, reply) = post_json(b.addr(), &ping_request(None)).unwrap();
        assert_eq!(reply, json!({"status": 0}));
        b.set_behavior(Behavior::Drop);
        assert!(post_json(b.addr(), &ping_request(None)).is_err());
        b.set_behavior(Behavior::Hang);
        let started = Instant::now();
        let r = http_request(
            b.addr(),
            "POST",
            "/",
            &[("Content-Type", "application/json")],
            br#"{"action":"ping"}"#,
            Duration::from_millis(300),
        );
        assert!(matches!(r, Err(P2pError::Timeout)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        b.set_behavior(Behavior::Normal);
        let (_, reply) = post_json(b.addr(), &ping_request(None)).unwrap();
        assert_eq!(reply["action"], "pong");
        // Every request was recorded, answered or not.
        let reqs = b.requests();
        assert!(reqs.iter().filter(|r| r.reply.is_none()).count() >= 2);
        assert!(reqs.last().unwrap().accepted());
    }
}
