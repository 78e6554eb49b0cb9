//! Blocking test client for the hub's cchat protocol (WebSocket, one JSON object per
//! message, a group Diffie-Hellman key negotiation orchestrated by the hub), written only
//! from `shared/specs/cchat.txt`, `shared/specs/WIRE-FACTS.md` ("cchat") and
//! `docs/protocols/cchat.md`, never from the hub's code.
//!
//! Every client has a background reader thread that owns the socket: it parses every
//! incoming message, records it, answers every `keyxchg_1` by itself with the documented
//! client rule ([`KeyRule`]) and writes what the test thread asks it to write (through a
//! channel, so one thread ever touches the WebSocket). All helpers take `&self`, so one
//! client can be shared between scoped threads (concurrent senders).
//!
//! Readings of the documents this client relies on (where they leave a choice):
//!
//! - **Which prime.** Each `keyxchg_1` carries `prime`; the client uses it (WIRE-FACTS:
//!   real clients read it from there) and falls back to `keyxchg_0`'s `number` only when
//!   it is missing, which is recorded as an anomaly (the doc says it is always there).
//! - **The secret** is 256 bits from the OS CSPRNG, drawn at the first `keyxchg_1`; it is
//!   drawn again on `changesecret: true` only when [`CchatClient::set_honour_changesecret`]
//!   asked for it (real clients ignore the flag, so that is the default).
//! - **Settled** means: every `keyxchg_1` received has been answered and the last one had
//!   `roundleft` 0 (the doc's condition for `message_0` being accepted), and a key exists.
//!   A client cannot know whether the *room's* negotiation is over, only its own part.
//! - **Frame kind.** The hub answers "in the frame kind of the client's most recent
//!   message"; the client checks that only while it has sent a single kind (text when it
//!   has sent nothing yet) and records a mismatch as an anomaly. With mixed kinds, tests
//!   look at [`Received::kind`] themselves.
//! - **Anomalies** (things the doc rules out, recorded instead of panicking in the reader
//!   thread): a `ver` other than the integer 1, hex that is not lower case or has an odd
//!   number of digits, a `keyxchg_1` without `prime` / `changesecret` or whose `prime`
//!   differs from `keyxchg_0`'s, an `errcode` that is not a `0x`-prefixed lower-case hex
//!   string, `content` that is not base64, an unknown `type`, a frame that is not a JSON
//!   object, a binary frame that is not UTF-8. Tests assert [`CchatClient::anomalies`] is
//!   empty.
//! - **A bogus intermediate** ([`KeyAnswer::Bogus`] and friends) replaces only answers to
//!   `keyxchg_1` with `roundleft` > 0: for `roundleft` 0 the doc says the hub ignores the
//!   intermediate, so there is nothing to provoke there.
//!
//! Helper conventions (not from the docs): `wait_error` and `wait_message(s)` take the
//! first matching record not yet taken by an earlier wait (so one provocation is matched
//! by one answer); the lists returned by [`CchatClient::errors`] / [`CchatClient::messages`]
//! / [`CchatClient::log`] always hold everything. `join` and `leave` take the first error
//! object that arrives after their request was written.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use num_bigint::BigUint;
use num_traits::{One, Zero};
use serde_json::{Map, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::{HandshakeError, Message, WebSocket};

/// How long the protocol helpers without an explicit timeout wait.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting (TCP + WebSocket handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may block (a server that stops reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the reader thread looks at its command channel while no data arrives.
const POLL: Duration = Duration::from_millis(4);

/// RFC 3526 group 14: the hub's default 2048-bit safe prime (generator 2), lower case.
pub const RFC3526_GROUP14_HEX: &str = concat!(
    "ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd1",
    "29024e088a67cc74020bbea63b139b22514a08798e3404dd",
    "ef9519b3cd3a431b302b0a6df25f14374fe1356d6d51c245",
    "e485b576625e7ec6f44c42e9a637ed6b0bff5cb6f406b7ed",
    "ee386bfb5a899fa5ae9f24117c4b1fe649286651ece45b3d",
    "c2007cb8a163bf0598da48361c55d39a69163fa8fd24cf5f",
    "83655d23dca3ad961c62f356208552bb9ed529077096966d",
    "670c354e4abc9804f1746c08ca18217c32905e462e36ce3b",
    "e39e772c180e86039b2783a2ec07a28fb5c55df06f4c52c9",
    "de2bcbf6955817183995497cea956ae515d2261898fa0510",
    "15728e5a8aacaa68ffffffffffffffff",
);

/// RFC 2409 (Oakley) group 1: a 768-bit safe prime, small enough to make tests cheap and
/// above the hub's 256-bit minimum for `plugins.cchat.prime_hex`. Lower case.
pub const RFC2409_GROUP1_HEX: &str = concat!(
    "ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd1",
    "29024e088a67cc74020bbea63b139b22514a08798e3404dd",
    "ef9519b3cd3a431b302b0a6df25f14374fe1356d6d51c245",
    "e485b576625e7ec6f44c42e9a63a3620ffffffffffffffff",
);

pub type Result<T> = std::result::Result<T, CchatError>;

/// The kind of WebSocket data frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Text,
    Binary,
}

/// How the client answers `keyxchg_1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyAnswer {
    /// Follow the documented client rule (default).
    Answer,
    /// Do not answer; every `keyxchg_1` is kept pending (answered in order when the mode
    /// changes back to another one).
    Silent,
    /// Answer `roundleft` > 0 steps with this string as `keyintrmdt` (e.g. `"01"`, `"zz"`).
    Bogus(String),
    /// Answer `roundleft` > 0 steps with `P − k` in hex (`k` = 1: `P − 1`; 0: `P`).
    BogusPrimeMinus(u32),
}

/// An error object from the hub.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerError {
    /// `errcode` as sent (`"0x10"`); a non-string code is kept as its JSON text.
    pub code: String,
    /// `errdetail` as sent (empty when missing).
    pub detail: String,
    pub raw: Value,
}

/// A `message_1` received.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub raw: Value,
    /// `content` decoded from base64 (`None` if missing or not base64).
    pub content: Option<Vec<u8>>,
}

/// A `keyxchg_1` received (only well-formed ones are recorded here).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyXchg1 {
    pub roundleft: u64,
    pub keyintrmdt: String,
    pub prime: Option<String>,
    pub changesecret: Option<bool>,
    pub raw: Value,
}

/// One message received, in arrival order.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// `type`, or `"<invalid>"` for a frame that is not a JSON object with a string type.
    pub ty: String,
    /// The parsed object (`Value::Null` when not JSON).
    pub raw: Value,
    /// The frame's text.
    pub text: String,
    pub kind: FrameKind,
}

/// One message the client wrote (the test's and the reader's own `keyxchg_2`), in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    pub kind: FrameKind,
    /// The payload (lossy UTF-8 for binary payloads that are not UTF-8).
    pub text: String,
}

/// Everything that can go wrong talking to the hub.
#[derive(Debug)]
pub enum CchatError {
    Io(io::Error),
    /// WebSocket-level failure (handshake, write).
    Ws(String),
    /// What was waited for did not happen in time (the text says what, and what came).
    Timeout(String),
    /// The connection is over: the server's close code and reason, or `None` when it
    /// closed without a code or the TCP connection ended without a close frame.
    Closed(Option<(u16, String)>),
    /// The hub answered with an error object.
    Server(ServerError),
    Protocol(String),
}

impl fmt::Display for CchatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CchatError::Io(e) => write!(f, "I/O error: {e}"),
            CchatError::Ws(e) => write!(f, "WebSocket error: {e}"),
            CchatError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            CchatError::Closed(None) => write!(f, "connection closed (no code)"),
            CchatError::Closed(Some((code, reason))) => {
                write!(f, "connection closed: {code} {reason:?}")
            }
            CchatError::Server(e) => write!(f, "hub error {} ({:?})", e.code, e.detail),
            CchatError::Protocol(msg) => write!(f, "protocol violation: {msg}"),
        }
    }
}

impl std::error::Error for CchatError {}

impl From<io::Error> for CchatError {
    fn from(e: io::Error) -> Self {
        CchatError::Io(e)
    }
}

// ----- pure helpers ----------------------------------------------------------------------

/// SHA-1 of the UTF-8 string, 40 lower-case hex digits (client and room ids).
pub fn sha1_hex(s: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(s.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses "hex ASCII" strictly: one or more hex digits of either case, no prefix, sign,
/// separator or space. An odd number of digits is fine (`"abc"` is 0xabc).
pub fn parse_hex(s: &str) -> Option<BigUint> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    BigUint::parse_bytes(s.as_bytes(), 16)
}

/// Lower-case hex with an even number of digits (the hub's own form): 2 → `"02"`.
pub fn to_hex(n: &BigUint) -> String {
    let hex = format!("{n:x}");
    if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    }
}

/// Whether a hex string is in the hub's documented output form (lower case, even length).
fn is_canonical_hex(s: &str) -> bool {
    !s.is_empty()
        && s.len() & 1 == 0
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh 256-bit secret from the OS CSPRNG (never 0 or 1).
pub fn random_secret() -> BigUint {
    use rand_core::{OsRng, RngCore};
    loop {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let n = BigUint::from_bytes_be(&bytes);
        if n > BigUint::one() {
            return n;
        }
    }
}

/// Random bytes from the OS CSPRNG (message contents, nonces).
pub fn random_bytes(len: usize) -> Vec<u8> {
    use rand_core::{OsRng, RngCore};
    let mut bytes = vec![0u8; len];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// Miller-Rabin with the first twelve primes as bases (a probable-prime test for checks of
/// the hub's prime; not constant time, not for production).
pub fn is_probable_prime(n: &BigUint) -> bool {
    let two = BigUint::from(2u32);
    if *n < two {
        return false;
    }
    let small = [2u32, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    for p in small {
        let p = BigUint::from(p);
        if *n == p {
            return true;
        }
        if (n % &p).is_zero() {
            return false;
        }
    }
    let n_minus_1 = n - BigUint::one();
    let mut d = n_minus_1.clone();
    let mut s = 0u32;
    while (&d % &two).is_zero() {
        d /= &two;
        s += 1;
    }
    'witness: for a in small {
        let mut x = BigUint::from(a).modpow(&d, n);
        if x.is_one() || x == n_minus_1 {
            continue;
        }
        for _ in 1..s {
            x = x.modpow(&two, n);
            if x == n_minus_1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// `{"ver":1,"type":"join","clientid":...,"chatroom":...}`.
pub fn build_join(clientid: &str, chatroom: &str) -> Value {
    serde_json::json!({"ver": 1, "type": "join", "clientid": clientid, "chatroom": chatroom})
}

/// `{"ver":1,"type":"leave"}`.
pub fn build_leave() -> Value {
    serde_json::json!({"ver": 1, "type": "leave"})
}

/// `{"ver":1,"type":"keyxchg_2","roundleft":n,"keyintrmdt":hex}`.
pub fn build_keyxchg_2(roundleft: u64, keyintrmdt: &str) -> Value {
    serde_json::json!({"ver": 1, "type": "keyxchg_2", "roundleft": roundleft, "keyintrmdt": keyintrmdt})
}

/// `{"ver":1,"type":"message_0","content":base64(content), ...extra}`. `extra` must be an
/// object (its fields are added last, so they win over the three named ones) or `null`.
pub fn build_message(content: &[u8], extra: Value) -> Result<Value> {
    let mut obj = Map::new();
    obj.insert("ver".into(), Value::from(1));
    obj.insert("type".into(), Value::from("message_0"));
    obj.insert("content".into(), Value::from(BASE64.encode(content)));
    match extra {
        Value::Null => {}
        Value::Object(fields) => obj.extend(fields),
        other => {
            return Err(CchatError::Protocol(format!(
                "message extra fields must be a JSON object, not {other}"
            )))
        }
    }
    Ok(Value::Object(obj))
}

/// The `message_1` the doc promises for a `message_0`: the same object with `type`
/// `message_1` and `ver` 1, everything else unchanged.
pub fn expected_message_1(message_0: &Value) -> Value {
    let mut v = message_0.clone();
    if let Value::Object(obj) = &mut v {
        obj.insert("type".into(), Value::from("message_1"));
        obj.insert("ver".into(), Value::from(1));
    }
    v
}

/// Base64 (standard alphabet, padded) of bytes: what `content` holds.
pub fn base64_of(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// The documented client rule for `keyxchg_1`, without any I/O.
#[derive(Clone, Debug, Default)]
pub struct KeyRule {
    secret: Option<BigUint>,
    key: Option<BigUint>,
    /// Draw a fresh secret on `changesecret: true` (real clients do not).
    pub honour_changesecret: bool,
}

impl KeyRule {
    pub fn new(honour_changesecret: bool) -> KeyRule {
        KeyRule {
            honour_changesecret,
            ..KeyRule::default()
        }
    }

    /// One `keyxchg_1`: draws the secret (first step, or `changesecret` when honoured),
    /// computes r = intermediate^secret mod prime; for `roundleft` 0, r replaces the
    /// secret and becomes the key. Returns the `keyxchg_2` answer: (`roundleft`,
    /// `keyintrmdt`) — `""` for `roundleft` 0, else r in even-length lower-case hex.
    pub fn step(
        &mut self,
        roundleft: u64,
        intermediate: &BigUint,
        prime: &BigUint,
        changesecret: bool,
        draw: &mut dyn FnMut() -> BigUint,
    ) -> std::result::Result<(u64, String), String> {
        if *prime < BigUint::from(3u32) {
            return Err(format!("prime {prime:x} is too small"));
        }
        let secret = match &self.secret {
            Some(s) if !(self.honour_changesecret && changesecret) => s.clone(),
            _ => draw(),
        };
        let r = intermediate.modpow(&secret, prime);
        if roundleft == 0 {
            self.secret = Some(r.clone());
            self.key = Some(r);
            Ok((0, String::new()))
        } else {
            self.secret = Some(secret);
            Ok((roundleft, to_hex(&r)))
        }
    }

    /// The group key (None until the first `roundleft` 0 step).
    pub fn key(&self) -> Option<&BigUint> {
        self.key.as_ref()
    }

    /// The current secret (the key, after a `roundleft` 0 step).
    pub fn secret(&self) -> Option<&BigUint> {
        self.secret.as_ref()
    }
}

// ----- shared state ----------------------------------------------------------------------

#[derive(Default)]
struct State {
    prime0: Option<BigUint>,
    rule: KeyRule,
    mode: Option<KeyAnswer>,
    /// Every well-formed `keyxchg_1`, in order.
    kx: Vec<KeyXchg1>,
    /// How many of them were answered (always a prefix).
    answered: usize,
    /// Indices of `kx` not answered yet (silent mode).
    pending: VecDeque<usize>,
    /// Every group key, in order.
    keys: Vec<BigUint>,
    messages: Vec<ChatMessage>,
    messages_taken: Vec<bool>,
    errors: Vec<ServerError>,
    errors_taken: Vec<bool>,
    log: Vec<Received>,
    sent: Vec<Sent>,
    sent_text: usize,
    sent_binary: usize,
    anomalies: Vec<String>,
    /// `Some(..)` once the server sent a close frame or the connection ended.
    closed: Option<Option<(u16, String)>>,
    /// The reader thread is done (connection over).
    ended: bool,
}

impl State {
    fn finished(&self) -> bool {
        !self.kx.is_empty()
            && self.answered == self.kx.len()
            && self.kx.last().is_some_and(|k| k.roundleft == 0)
    }

    fn mode(&self) -> KeyAnswer {
        self.mode.clone().unwrap_or(KeyAnswer::Answer)
    }

    fn summary(&self) -> String {
        let recent: Vec<&str> = self
            .log
            .iter()
            .rev()
            .take(12)
            .map(|r| r.text.as_str())
            .collect();
        format!(
            "{} received (latest first: {}); keyxchg_1 {} answered {}; closed {:?}",
            self.log.len(),
            recent.join(" | "),
            self.kx.len(),
            self.answered,
            self.closed
        )
    }
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

enum Command {
    Send(Payload, SyncSender<std::result::Result<(), String>>),
    AnswerPending,
    Close(u16, String),
}

// ----- the client ------------------------------------------------------------------------

/// A blocking cchat client over one WebSocket connection, with its reader thread.
pub struct CchatClient {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    raw: TcpStream,
    kind: FrameKind,
    _reader: JoinHandle<()>,
}

impl fmt::Debug for CchatClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("CchatClient")
            .field("peer", &self.raw.peer_addr().ok())
            .field("kind", &self.kind)
            .field("received", &st.log.len())
            .field("keys", &st.keys.len())
            .field("closed", &st.closed)
            .finish()
    }
}

impl CchatClient {
    /// Connect to `ws://addr/`; the client sends binary frames (the spec's mode).
    pub fn connect(addr: SocketAddr) -> Result<CchatClient> {
        CchatClient::connect_with(addr, FrameKind::Binary)
    }

    /// Connect to `ws://addr/`, sending frames of `kind`.
    pub fn connect_with(addr: SocketAddr, kind: FrameKind) -> Result<CchatClient> {
        CchatClient::connect_path(addr, kind, "/")
    }

    /// Connect to `ws://addr<path>` (the hub accepts any path), sending frames of `kind`.
    pub fn connect_path(addr: SocketAddr, kind: FrameKind, path: &str) -> Result<CchatClient> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let raw = stream.try_clone()?;
        let url = format!("ws://{addr}{path}");
        let (ws, _response) = match tungstenite::client(url.as_str(), stream) {
            Ok(done) => done,
            Err(HandshakeError::Interrupted(_)) => {
                return Err(CchatError::Timeout("the WebSocket handshake".into()))
            }
            Err(HandshakeError::Failure(e)) => return Err(CchatError::Ws(e.to_string())),
        };
        ws.get_ref().set_read_timeout(Some(POLL))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        });
        let (commands, rx) = mpsc::channel();
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("cchat-reader-{addr}"))
                .spawn(move || {
                    Reader {
                        ws,
                        shared,
                        rx,
                        kind,
                    }
                    .run()
                })?
        };
        Ok(CchatClient {
            shared,
            commands,
            raw,
            kind,
            _reader: reader,
        })
    }

    /// The frame kind this client sends.
    pub fn frame_kind(&self) -> FrameKind {
        self.kind
    }

    // ----- options ---------------------------------------------------------------------

    /// How to answer `keyxchg_1` from now on. Leaving [`KeyAnswer::Silent`] answers the
    /// pending ones, in order, in the new mode.
    pub fn set_key_answer(&self, mode: KeyAnswer) {
        self.shared.lock().mode = Some(mode);
        // A closed channel means the connection is over: nothing left to answer.
        let _ = self.commands.send(Command::AnswerPending);
    }

    /// Honour `changesecret: true` (draw a fresh secret) or ignore it (default, like real
    /// clients).
    pub fn set_honour_changesecret(&self, honour: bool) {
        self.shared.lock().rule.honour_changesecret = honour;
    }

    // ----- sending ---------------------------------------------------------------------

    /// Send a JSON value in this client's frame kind; returns once it is written.
    pub fn send_json(&self, value: &Value) -> Result<()> {
        self.send_json_as(value, self.kind)
    }

    /// Send a JSON value in the given frame kind.
    pub fn send_json_as(&self, value: &Value, kind: FrameKind) -> Result<()> {
        let text = value.to_string();
        match kind {
            FrameKind::Text => self.send_payload(Payload::Text(text)),
            FrameKind::Binary => self.send_payload(Payload::Binary(text.into_bytes())),
        }
    }

    /// Send a raw text frame (malformed input).
    pub fn send_raw_text(&self, text: &str) -> Result<()> {
        self.send_payload(Payload::Text(text.to_owned()))
    }

    /// Send a raw binary frame (malformed input).
    pub fn send_raw_binary(&self, bytes: &[u8]) -> Result<()> {
        self.send_payload(Payload::Binary(bytes.to_vec()))
    }

    fn send_payload(&self, payload: Payload) -> Result<()> {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.commands.send(Command::Send(payload, done_tx)).is_err() {
            return Err(self.closed_error());
        }
        match done_rx.recv_timeout(WRITE_TIMEOUT + Duration::from_secs(2)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CchatError::Ws(e)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(CchatError::Timeout("a write".into())),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.closed_error()),
        }
    }

    fn closed_error(&self) -> CchatError {
        CchatError::Closed(self.shared.lock().closed.clone().flatten())
    }

    // ----- protocol helpers ------------------------------------------------------------

    /// `join`; waits (up to [`HELPER_TIMEOUT`]) for the next error object: `Ok` for code
    /// `0x0` (the join acknowledgement), `Err(Server)` for any other code.
    pub fn join(&self, clientid_hex: &str, chatroom_hex: &str) -> Result<()> {
        self.join_within(clientid_hex, chatroom_hex, HELPER_TIMEOUT)
    }

    /// [`join`](Self::join) with its own timeout (a join may wait for a running
    /// negotiation, up to the hub's key timeout).
    pub fn join_within(
        &self,
        clientid_hex: &str,
        chatroom_hex: &str,
        timeout: Duration,
    ) -> Result<()> {
        let reply = self.request_error(&build_join(clientid_hex, chatroom_hex), timeout, "join")?;
        if reply.code == "0x0" {
            Ok(())
        } else {
            Err(CchatError::Server(reply))
        }
    }

    /// `message_0` with `content` (base64-encoded here) and `extra` fields (an object or
    /// `null`); returns the object sent. Acceptance shows as the sender's own `message_1`.
    pub fn send_message(&self, content: &[u8], extra: Value) -> Result<Value> {
        let msg = build_message(content, extra)?;
        self.send_json(&msg)?;
        Ok(msg)
    }

    /// `leave`; waits for the acknowledgement (`0x0`, else `Err(Server)`) and then for the
    /// hub to close; returns the close code and reason.
    pub fn leave(&self) -> Result<Option<(u16, String)>> {
        let reply = self.request_error(&build_leave(), HELPER_TIMEOUT, "leave")?;
        if reply.code != "0x0" {
            return Err(CchatError::Server(reply));
        }
        self.wait_closed(HELPER_TIMEOUT)
    }

    /// Send `req` and take the first error object that arrives after it was written.
    fn request_error(&self, req: &Value, timeout: Duration, what: &str) -> Result<ServerError> {
        let from = self.shared.lock().errors.len();
        self.send_json(req)?;
        self.wait_for(timeout, &format!("the hub's answer to {what}"), |st| {
            let i = (from..st.errors.len()).find(|&i| !st.errors_taken[i])?;
            st.errors_taken[i] = true;
            Some(st.errors[i].clone())
        })
    }

    /// Wait for an error object with this `errcode` (e.g. `"0x10"`) not taken before.
    pub fn wait_error(&self, code: &str, timeout: Duration) -> Result<ServerError> {
        self.wait_for(timeout, &format!("error {code}"), |st| {
            let i =
                (0..st.errors.len()).find(|&i| !st.errors_taken[i] && st.errors[i].code == code)?;
            st.errors_taken[i] = true;
            Some(st.errors[i].clone())
        })
    }

    /// Wait for a `message_1` matching `pred` not taken before.
    pub fn wait_message(
        &self,
        pred: impl Fn(&ChatMessage) -> bool,
        timeout: Duration,
    ) -> Result<ChatMessage> {
        let mut got = self.wait_messages(pred, 1, timeout)?;
        Ok(got.remove(0))
    }

    /// Wait until `count` `message_1` matching `pred` (not taken before) have arrived;
    /// returns the first `count` of them in arrival order.
    pub fn wait_messages(
        &self,
        pred: impl Fn(&ChatMessage) -> bool,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ChatMessage>> {
        self.wait_for(timeout, &format!("{count} matching message_1"), |st| {
            let hits: Vec<usize> = (0..st.messages.len())
                .filter(|&i| !st.messages_taken[i] && pred(&st.messages[i]))
                .take(count)
                .collect();
            if hits.len() < count {
                return None;
            }
            Some(
                hits.into_iter()
                    .map(|i| {
                        st.messages_taken[i] = true;
                        st.messages[i].clone()
                    })
                    .collect(),
            )
        })
    }

    /// Wait until this client's negotiation is finished and it holds a key; returns it.
    pub fn wait_settled(&self, timeout: Duration) -> Result<BigUint> {
        self.wait_settled_since(0, timeout)
    }

    /// Like [`wait_settled`](Self::wait_settled), with more than `key_count` keys so far
    /// (take [`key_count`](Self::key_count) before a change to wait for the next key).
    pub fn wait_settled_since(&self, key_count: usize, timeout: Duration) -> Result<BigUint> {
        self.wait_for(
            timeout,
            &format!("a settled negotiation with more than {key_count} keys"),
            |st| {
                if st.finished() && st.keys.len() > key_count {
                    st.keys.last().cloned()
                } else {
                    None
                }
            },
        )
    }

    /// Wait until at least `count` `keyxchg_1` have arrived; returns the `count`-th.
    pub fn wait_keyxchg(&self, count: usize, timeout: Duration) -> Result<KeyXchg1> {
        let count = count.max(1);
        self.wait_for(timeout, &format!("{count} keyxchg_1"), |st| {
            st.kx.get(count - 1).cloned()
        })
    }

    /// Wait until the server has closed (close frame, or the end of the connection);
    /// returns its close code and reason (`None`: no code / no close frame).
    pub fn wait_closed(&self, timeout: Duration) -> Result<Option<(u16, String)>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(info) = &st.closed {
                return Ok(info.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CchatError::Timeout(format!(
                    "the server to close within {timeout:?}; {}",
                    st.summary()
                )));
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A clean WebSocket close (code 1000) without `leave`; waits for the end of the
    /// connection and returns the server's close reply.
    pub fn close(&self, timeout: Duration) -> Result<Option<(u16, String)>> {
        if self
            .commands
            .send(Command::Close(1000, String::new()))
            .is_err()
        {
            return Ok(self.shared.lock().closed.clone().flatten());
        }
        self.wait_closed(timeout)
    }

    /// Shut the TCP connection down without a WebSocket close.
    pub fn drop_abruptly(&self) {
        let _ = self.raw.shutdown(Shutdown::Both);
    }

    /// Waits while `check` returns `None`: for a state change, the end of the connection
    /// (`Err(Closed)`, after a last check) or the timeout.
    fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(v) = check(&mut st) {
                return Ok(v);
            }
            if st.ended {
                return Err(CchatError::Closed(st.closed.clone().flatten()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CchatError::Timeout(format!(
                    "{what} within {timeout:?}; {}",
                    st.summary()
                )));
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    // ----- records ---------------------------------------------------------------------

    /// The current group key (None until the first `roundleft` 0 step).
    pub fn key(&self) -> Option<BigUint> {
        self.shared.lock().keys.last().cloned()
    }

    /// Every group key so far, in order.
    pub fn keys(&self) -> Vec<BigUint> {
        self.shared.lock().keys.clone()
    }

    /// How many `message_1` have arrived so far.
    pub fn message_count(&self) -> usize {
        self.shared.lock().messages.len()
    }

    /// Waits until at least `count` `message_1` have arrived in all (taken or not).
    pub fn wait_message_count(&self, count: usize, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, &format!("{count} message_1 in all"), |st| {
            (st.messages.len() >= count).then_some(())
        })
    }

    /// How many group keys so far.
    pub fn key_count(&self) -> usize {
        self.shared.lock().keys.len()
    }

    /// Every `keyxchg_1` answered and the last one had `roundleft` 0.
    pub fn negotiation_finished(&self) -> bool {
        self.shared.lock().finished()
    }

    /// The prime of `keyxchg_0`.
    pub fn prime(&self) -> Option<BigUint> {
        self.shared.lock().prime0.clone()
    }

    /// Every well-formed `keyxchg_1` received.
    pub fn keyxchgs(&self) -> Vec<KeyXchg1> {
        self.shared.lock().kx.clone()
    }

    /// How many `keyxchg_1` received.
    pub fn keyxchg_count(&self) -> usize {
        self.shared.lock().kx.len()
    }

    /// Every `message_1` received.
    pub fn messages(&self) -> Vec<ChatMessage> {
        self.shared.lock().messages.clone()
    }

    /// Every error object received.
    pub fn errors(&self) -> Vec<ServerError> {
        self.shared.lock().errors.clone()
    }

    /// Error objects with a code other than `0x0`.
    pub fn unexpected_errors(&self) -> Vec<ServerError> {
        self.errors()
            .into_iter()
            .filter(|e| e.code != "0x0")
            .collect()
    }

    /// Everything received, in order.
    pub fn log(&self) -> Vec<Received> {
        self.shared.lock().log.clone()
    }

    /// The `type` of everything received, in order.
    pub fn received_types(&self) -> Vec<String> {
        self.shared
            .lock()
            .log
            .iter()
            .map(|r| r.ty.clone())
            .collect()
    }

    /// Everything written, in order (the reader's `keyxchg_2` answers included).
    pub fn sent(&self) -> Vec<Sent> {
        self.shared.lock().sent.clone()
    }

    /// The `keyxchg_2` objects written, in order.
    pub fn sent_keyxchg_2(&self) -> Vec<Value> {
        self.sent()
            .iter()
            .filter_map(|s| serde_json::from_str::<Value>(&s.text).ok())
            .filter(|v| v["type"] == "keyxchg_2")
            .collect()
    }

    /// Deviations from the documented wire profile seen so far.
    pub fn anomalies(&self) -> Vec<String> {
        self.shared.lock().anomalies.clone()
    }

    /// `Some(close info)` once the server has closed or the connection ended.
    pub fn close_info(&self) -> Option<Option<(u16, String)>> {
        self.shared.lock().closed.clone()
    }

    /// Whether the reader thread has ended (the connection is over).
    pub fn is_ended(&self) -> bool {
        self.shared.lock().ended
    }
}

// ----- the reader thread -----------------------------------------------------------------

struct Reader {
    ws: WebSocket<TcpStream>,
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    kind: FrameKind,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Reader {
    fn run(mut self) {
        loop {
            // Commands first: writes keep the order in which the test asked for them.
            loop {
                match self.rx.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        // The client handle is gone: say goodbye and stop.
                        let _ = self.ws.close(None);
                        let _ = self.ws.flush();
                        let _ = self.ws.get_ref().shutdown(Shutdown::Both);
                        self.end();
                        return;
                    }
                }
            }
            match self.ws.read() {
                Ok(msg) => self.incoming(msg),
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {}
                Err(_) => {
                    // ConnectionClosed after a close handshake, a reset, EOF...
                    self.end();
                    return;
                }
            }
        }
    }

    fn end(&self) {
        let mut st = self.shared.lock();
        st.ended = true;
        if st.closed.is_none() {
            st.closed = Some(None);
        }
        self.shared.cond.notify_all();
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Send(payload, done) => {
                let result = self.write(payload);
                let _ = done.send(result);
            }
            Command::AnswerPending => {
                while self.shared.lock().mode() != KeyAnswer::Silent {
                    let next = self.shared.lock().pending.pop_front();
                    match next {
                        Some(i) => self.answer(i),
                        None => break,
                    }
                }
            }
            Command::Close(code, reason) => {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                let _ = self.ws.close(Some(frame));
                let _ = self.ws.flush();
            }
        }
    }

    fn write(&mut self, payload: Payload) -> std::result::Result<(), String> {
        let (kind, text, msg) = match payload {
            Payload::Text(t) => (FrameKind::Text, t.clone(), Message::Text(t)),
            Payload::Binary(b) => (
                FrameKind::Binary,
                String::from_utf8_lossy(&b).into_owned(),
                Message::Binary(b),
            ),
        };
        match self.ws.send(msg) {
            Ok(()) => {
                let mut st = self.shared.lock();
                match kind {
                    FrameKind::Text => st.sent_text += 1,
                    FrameKind::Binary => st.sent_binary += 1,
                }
                st.sent.push(Sent { kind, text });
                self.shared.cond.notify_all();
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn write_json(&mut self, v: &Value) {
        let text = v.to_string();
        let payload = match self.kind {
            FrameKind::Text => Payload::Text(text),
            FrameKind::Binary => Payload::Binary(text.into_bytes()),
        };
        if let Err(e) = self.write(payload) {
            self.shared
                .lock()
                .anomalies
                .push(format!("could not write {v}: {e}"));
        }
    }

    fn incoming(&mut self, msg: Message) {
        match msg {
            Message::Text(t) => self.frame(t, FrameKind::Text),
            Message::Binary(b) => match String::from_utf8(b) {
                Ok(t) => self.frame(t, FrameKind::Binary),
                Err(e) => {
                    let bytes = e.into_bytes();
                    let mut st = self.shared.lock();
                    st.anomalies.push(format!(
                        "binary frame of {} bytes is not UTF-8",
                        bytes.len()
                    ));
                    st.log.push(Received {
                        ty: "<invalid>".into(),
                        raw: Value::Null,
                        text: String::from_utf8_lossy(&bytes).into_owned(),
                        kind: FrameKind::Binary,
                    });
                    self.shared.cond.notify_all();
                }
            },
            Message::Close(frame) => {
                let info = frame.map(|f| (u16::from(f.code), f.reason.into_owned()));
                // tungstenite queued the close reply; the next read flushes it.
                let _ = self.ws.flush();
                let mut st = self.shared.lock();
                st.closed = Some(info);
                self.shared.cond.notify_all();
            }
            // tungstenite answers pings by itself (flushed by the next read).
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    fn frame(&mut self, text: String, kind: FrameKind) {
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let mut st = self.shared.lock();
        // Frame kind: the hub mirrors the kind of the client's most recent message.
        let expected = match (st.sent_text, st.sent_binary) {
            (0, 0) => Some(FrameKind::Text),
            (_, 0) => Some(FrameKind::Text),
            (0, _) => Some(FrameKind::Binary),
            _ => None,
        };
        if let Some(want) = expected {
            if want != kind {
                st.anomalies
                    .push(format!("{kind:?} frame where {want:?} was due: {text}"));
            }
        }
        let Some(v) = parsed.filter(Value::is_object) else {
            st.anomalies.push(format!("not a JSON object: {text:?}"));
            st.log.push(Received {
                ty: "<invalid>".into(),
                raw: serde_json::from_str(&text).unwrap_or(Value::Null),
                text,
                kind,
            });
            self.shared.cond.notify_all();
            return;
        };
        if v.get("ver").and_then(Value::as_u64) != Some(1) {
            st.anomalies
                .push(format!("ver is not the integer 1: {text}"));
        }
        let ty = match v.get("type").and_then(Value::as_str) {
            Some(t) => t.to_owned(),
            None => {
                st.anomalies.push(format!("no string type: {text}"));
                "<invalid>".to_owned()
            }
        };
        st.log.push(Received {
            ty: ty.clone(),
            raw: v.clone(),
            text: text.clone(),
            kind,
        });
        let mut answer_now = None;
        match ty.as_str() {
            "keyxchg_0" => match v.get("number").and_then(Value::as_str) {
                Some(n) => {
                    if !is_canonical_hex(n) {
                        st.anomalies
                            .push(format!("keyxchg_0 number not canonical hex: {n:?}"));
                    }
                    match parse_hex(n) {
                        Some(p) => st.prime0 = Some(p),
                        None => st
                            .anomalies
                            .push(format!("keyxchg_0 number not hex: {n:?}")),
                    }
                }
                None => st
                    .anomalies
                    .push(format!("keyxchg_0 without a number: {text}")),
            },
            "keyxchg_1" => {
                if let Some(kx) = check_keyxchg_1(&v, &mut st) {
                    let idx = st.kx.len();
                    st.kx.push(kx);
                    if st.mode() == KeyAnswer::Silent || !st.pending.is_empty() {
                        st.pending.push_back(idx);
                    } else {
                        answer_now = Some(idx);
                    }
                }
            }
            "message_1" => {
                let content = match v.get("content").and_then(Value::as_str) {
                    Some(c) => {
                        let decoded = BASE64.decode(c).ok();
                        if decoded.is_none() {
                            st.anomalies
                                .push(format!("message_1 content not base64: {c:?}"));
                        }
                        decoded
                    }
                    None => {
                        st.anomalies
                            .push(format!("message_1 without string content: {text}"));
                        None
                    }
                };
                st.messages.push(ChatMessage { raw: v, content });
                st.messages_taken.push(false);
            }
            "error" => {
                let code = match v.get("errcode") {
                    Some(Value::String(s)) => {
                        let hex_ok = s.strip_prefix("0x").is_some_and(|h| {
                            !h.is_empty()
                                && h.bytes()
                                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                        });
                        if !hex_ok {
                            st.anomalies.push(format!("errcode not 0x-hex: {s:?}"));
                        }
                        s.clone()
                    }
                    other => {
                        st.anomalies.push(format!("errcode not a string: {text}"));
                        other.map(Value::to_string).unwrap_or_default()
                    }
                };
                let detail = match v.get("errdetail") {
                    Some(Value::String(s)) => s.clone(),
                    _ => {
                        st.anomalies.push(format!("errdetail not a string: {text}"));
                        String::new()
                    }
                };
                st.errors.push(ServerError {
                    code,
                    detail,
                    raw: v,
                });
                st.errors_taken.push(false);
            }
            other => st
                .anomalies
                .push(format!("unexpected type {other:?} from the hub: {text}")),
        }
        self.shared.cond.notify_all();
        drop(st);
        if let Some(idx) = answer_now {
            self.answer(idx);
        }
    }

    /// Answer `kx[idx]` in the current mode (the reader thread's only computation).
    fn answer(&mut self, idx: usize) {
        let reply = {
            let mut st = self.shared.lock();
            let kx = st.kx[idx].clone();
            let prime = match kx.prime.as_deref().and_then(parse_hex) {
                Some(p) => Some(p),
                None => st.prime0.clone(),
            };
            let (Some(prime), Some(inter)) = (prime, parse_hex(&kx.keyintrmdt)) else {
                st.anomalies.push(format!(
                    "cannot answer keyxchg_1 (no prime or bad hex): {}",
                    kx.raw
                ));
                return;
            };
            let mode = st.mode();
            let changesecret = kx.changesecret.unwrap_or(false);
            let step = st.rule.step(
                kx.roundleft,
                &inter,
                &prime,
                changesecret,
                &mut random_secret,
            );
            match step {
                Ok((rl, hex)) => {
                    if rl == 0 {
                        let key = st
                            .rule
                            .key()
                            .cloned()
                            .expect("a roundleft 0 step sets the key");
                        st.keys.push(key);
                        build_keyxchg_2(0, "")
                    } else {
                        let hex = match mode {
                            KeyAnswer::Bogus(s) => s,
                            KeyAnswer::BogusPrimeMinus(k) => {
                                let k = BigUint::from(k);
                                if prime >= k {
                                    to_hex(&(&prime - k))
                                } else {
                                    "00".into()
                                }
                            }
                            KeyAnswer::Answer | KeyAnswer::Silent => hex,
                        };
                        build_keyxchg_2(rl, &hex)
                    }
                }
                Err(e) => {
                    st.anomalies.push(format!("cannot answer {}: {e}", kx.raw));
                    return;
                }
            }
        };
        self.write_json(&reply);
        let mut st = self.shared.lock();
        st.answered += 1;
        self.shared.cond.notify_all();
    }
}

/// Validates a `keyxchg_1` against the doc, recording anomalies; `None` if unusable.
fn check_keyxchg_1(v: &Value, st: &mut State) -> Option<KeyXchg1> {
    let text = v.to_string();
    let Some(roundleft) = v.get("roundleft").and_then(Value::as_u64) else {
        st.anomalies.push(format!(
            "keyxchg_1 roundleft not a non-negative integer: {text}"
        ));
        return None;
    };
    let Some(keyintrmdt) = v.get("keyintrmdt").and_then(Value::as_str) else {
        st.anomalies
            .push(format!("keyxchg_1 without string keyintrmdt: {text}"));
        return None;
    };
    if parse_hex(keyintrmdt).is_none() {
        st.anomalies
            .push(format!("keyxchg_1 keyintrmdt not hex: {text}"));
        return None;
    }
    if !is_canonical_hex(keyintrmdt) {
        st.anomalies.push(format!(
            "keyxchg_1 keyintrmdt not even-length lower-case hex: {text}"
        ));
    }
    let prime = v.get("prime").and_then(Value::as_str).map(str::to_owned);
    match &prime {
        None => st
            .anomalies
            .push(format!("keyxchg_1 without prime: {text}")),
        Some(p) => {
            if !is_canonical_hex(p) {
                st.anomalies
                    .push(format!("keyxchg_1 prime not canonical hex: {text}"));
            }
            match (&st.prime0, parse_hex(p)) {
                (_, None) => st
                    .anomalies
                    .push(format!("keyxchg_1 prime not hex: {text}")),
                (None, Some(_)) => st
                    .anomalies
                    .push(format!("keyxchg_1 before any keyxchg_0: {text}")),
                (Some(p0), Some(p1)) if *p0 != p1 => st
                    .anomalies
                    .push(format!("keyxchg_1 prime differs from keyxchg_0's: {text}")),
                _ => {}
            }
        }
    }
    let changesecret = v.get("changesecret").and_then(Value::as_bool);
    if changesecret.is_none() {
        st.anomalies
            .push(format!("keyxchg_1 without boolean changesecret: {text}"));
    }
    Some(KeyXchg1 {
        roundleft,
        keyintrmdt: keyintrmdt.to_owned(),
        prime,
        changesecret,
        raw: v.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p768() -> BigUint {
        parse_hex(RFC2409_GROUP1_HEX).unwrap()
    }

    fn two() -> BigUint {
        BigUint::from(2u32)
    }

    #[test]
    fn hex_parsing_is_strict_and_accepts_odd_length() {
        assert_eq!(parse_hex("2"), Some(BigUint::from(2u32)));
        assert_eq!(parse_hex("02"), Some(BigUint::from(2u32)));
        assert_eq!(parse_hex("abc"), Some(BigUint::from(0xabcu32)));
        assert_eq!(parse_hex("ABC"), Some(BigUint::from(0xabcu32)));
        assert_eq!(parse_hex("0102"), Some(BigUint::from(0x102u32)));
        for bad in ["", "0x12", "1_0", "+1", " 1", "1 ", "g", "-1"] {
            assert_eq!(parse_hex(bad), None, "{bad:?}");
        }
        assert_eq!(to_hex(&BigUint::from(2u32)), "02");
        assert_eq!(to_hex(&BigUint::from(0x123u32)), "0123");
        assert_eq!(to_hex(&BigUint::from(0xabcdu32)), "abcd");
        assert_eq!(to_hex(&BigUint::zero()), "00");
        assert!(is_canonical_hex("02ab") && !is_canonical_hex("2ab") && !is_canonical_hex("02AB"));
    }

    #[test]
    fn sha1_ids() {
        assert_eq!(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(sha1_hex("").len(), 40);
    }

    #[test]
    fn reference_primes_are_safe_primes() {
        assert_eq!(RFC3526_GROUP14_HEX.len(), 512);
        assert!(RFC3526_GROUP14_HEX.starts_with("ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd1"));
        assert!(RFC3526_GROUP14_HEX.ends_with("15728e5a8aacaa68ffffffffffffffff"));
        for hex in [RFC2409_GROUP1_HEX, RFC3526_GROUP14_HEX] {
            let p = parse_hex(hex).unwrap();
            assert!(is_probable_prime(&p), "{hex}");
            let q = (&p - BigUint::one()) / two();
            assert!(is_probable_prime(&q), "(p-1)/2 of {hex}");
        }
        assert_eq!(p768().bits(), 768);
        assert!(
            !is_probable_prime(&BigUint::from(561u32)),
            "Carmichael number"
        );
        assert!(is_probable_prime(&BigUint::from(65537u32)));
    }

    /// A counter-backed secret source: each draw is a distinct, known value.
    fn drawer(counter: &mut u32) -> impl FnMut() -> BigUint + '_ {
        move || {
            *counter += 1;
            BigUint::from(1_000_003u32) * BigUint::from(*counter) + BigUint::from(17u32)
        }
    }

    #[test]
    fn two_party_join_as_documented_gives_equal_keys() {
        let p = p768();
        let mut draws = 0;
        let mut draw = drawer(&mut draws);
        let (mut a, mut b) = (KeyRule::new(false), KeyRule::new(false));
        // A alone: {roundleft 0, "02"}.
        assert_eq!(
            a.step(0, &two(), &p, true, &mut draw).unwrap(),
            (0, String::new())
        );
        let k_a = a.key().unwrap().clone();
        // B joins: B and A get {1, "02"}; each one's answer goes to the other with roundleft 0.
        let (rl, from_b) = b.step(1, &two(), &p, true, &mut draw).unwrap();
        assert_eq!(rl, 1);
        let (_, from_a) = a.step(1, &two(), &p, false, &mut draw).unwrap();
        assert_eq!(
            a.step(0, &parse_hex(&from_b).unwrap(), &p, false, &mut draw)
                .unwrap()
                .1,
            ""
        );
        b.step(0, &parse_hex(&from_a).unwrap(), &p, false, &mut draw)
            .unwrap();
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), Some(&k_a), "the key changed");
        // The key is g^(xB·K): what the doc says.
        let x_b = BigUint::from(1_000_003u32) * BigUint::from(2u32) + BigUint::from(17u32);
        let expected = two().modpow(&(x_b * &k_a), &p);
        assert_eq!(a.key(), Some(&expected));
        drop(draw);
        assert_eq!(draws, 2, "each party drew its secret once");
    }

    /// Runs the doc's "N joins a room whose members share K" step: `members[0]` is E.
    fn join_step(
        members: &mut [KeyRule],
        newcomer: &mut KeyRule,
        p: &BigUint,
        draw: &mut dyn FnMut() -> BigUint,
    ) {
        let (_, from_n) = newcomer.step(1, &two(), p, true, draw).unwrap();
        let (_, from_e) = members[0].step(1, &two(), p, false, draw).unwrap();
        for m in members.iter_mut() {
            m.step(0, &parse_hex(&from_n).unwrap(), p, false, draw)
                .unwrap();
        }
        newcomer
            .step(0, &parse_hex(&from_e).unwrap(), p, false, draw)
            .unwrap();
    }

    /// The doc's leave step: F = `rest[0]` re-added, E = `rest[1]`.
    fn leave_step(rest: &mut [KeyRule], p: &BigUint, draw: &mut dyn FnMut() -> BigUint) {
        if rest.len() == 1 {
            rest[0].step(0, &two(), p, true, draw).unwrap();
            return;
        }
        let (_, from_f) = rest[0].step(1, &two(), p, true, draw).unwrap();
        let (_, from_e) = rest[1].step(1, &two(), p, false, draw).unwrap();
        for m in rest[1..].iter_mut() {
            m.step(0, &parse_hex(&from_f).unwrap(), p, false, draw)
                .unwrap();
        }
        rest[0]
            .step(0, &parse_hex(&from_e).unwrap(), p, false, draw)
            .unwrap();
    }

    fn all_equal(members: &[KeyRule]) -> BigUint {
        let k = members[0].key().unwrap().clone();
        for m in members {
            assert_eq!(m.key(), Some(&k));
        }
        k
    }

    #[test]
    fn joins_and_leaves_with_mixed_changesecret_clients_agree() {
        let p = p768();
        let mut draw = random_secret;
        let mut room = vec![KeyRule::new(false)];
        room[0].step(0, &two(), &p, true, &mut draw).unwrap();
        let mut keys = vec![all_equal(&room)];
        for i in 1..6 {
            let mut n = KeyRule::new(i % 2 == 0);
            join_step(&mut room, &mut n, &p, &mut draw);
            room.push(n);
            keys.push(all_equal(&room));
        }
        while room.len() > 1 {
            room.remove(room.len() / 2);
            leave_step(&mut room, &p, &mut draw);
            keys.push(all_equal(&room));
        }
        // A single remaining member that ignores changesecret: key = 2^K_old.
        let mut single = vec![KeyRule::new(false)];
        single[0].step(0, &two(), &p, true, &mut draw).unwrap();
        let old = single[0].key().unwrap().clone();
        leave_step(&mut single, &p, &mut draw);
        assert_eq!(single[0].key(), Some(&two().modpow(&old, &p)));
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "every change made a new key");
    }

    #[test]
    fn secret_is_drawn_once_unless_changesecret_is_honoured() {
        let p = p768();
        let mut draws = 0;
        {
            let mut draw = drawer(&mut draws);
            let mut r = KeyRule::new(false);
            r.step(1, &two(), &p, true, &mut draw).unwrap();
            r.step(1, &two(), &p, true, &mut draw).unwrap();
            r.step(0, &two(), &p, true, &mut draw).unwrap();
            r.step(1, &two(), &p, true, &mut draw).unwrap();
        }
        assert_eq!(draws, 1);
        let mut draws = 0;
        {
            let mut draw = drawer(&mut draws);
            let mut r = KeyRule::new(true);
            r.step(1, &two(), &p, true, &mut draw).unwrap();
            r.step(1, &two(), &p, false, &mut draw).unwrap();
            r.step(1, &two(), &p, true, &mut draw).unwrap();
        }
        assert_eq!(draws, 2);
        // Same secret, same answer; the roundleft 0 result replaces the secret.
        let mut r = KeyRule::new(false);
        let mut fixed = || BigUint::from(5u32);
        assert_eq!(r.step(1, &two(), &p, false, &mut fixed).unwrap().1, "20");
        assert_eq!(
            r.step(0, &BigUint::from(3u32), &p, false, &mut fixed)
                .unwrap(),
            (0, String::new())
        );
        assert_eq!(r.key(), Some(&BigUint::from(243u32)));
        assert_eq!(
            r.step(1, &two(), &p, false, &mut fixed).unwrap().1,
            to_hex(&two().modpow(&BigUint::from(243u32), &p))
        );
        assert!(r
            .step(1, &two(), &BigUint::from(2u32), false, &mut fixed)
            .is_err());
    }

    #[test]
    fn message_building() {
        let m = build_message(b"hi", json!({"nonce": "n1", "meta": {"k": [1, 2]}})).unwrap();
        assert_eq!(
            m,
            json!({"ver": 1, "type": "message_0", "content": "aGk=", "nonce": "n1", "meta": {"k": [1, 2]}})
        );
        assert_eq!(
            expected_message_1(&m),
            json!({"ver": 1, "type": "message_1", "content": "aGk=", "nonce": "n1", "meta": {"k": [1, 2]}})
        );
        let mut string_ver = build_message(b"", Value::Null).unwrap();
        string_ver["ver"] = json!("1");
        assert_eq!(expected_message_1(&string_ver)["ver"], json!(1));
        assert!(build_message(b"x", json!([1])).is_err());
        assert_eq!(
            build_join("aa", "bb"),
            json!({"ver": 1, "type": "join", "clientid": "aa", "chatroom": "bb"})
        );
        assert_eq!(
            build_keyxchg_2(0, ""),
            json!({"ver": 1, "type": "keyxchg_2", "roundleft": 0, "keyintrmdt": ""})
        );
        assert_eq!(build_leave(), json!({"ver": 1, "type": "leave"}));
    }

    // ----- loopback tests against a scripted server ------------------------------------

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

    /// Reads the next data frame: (kind, JSON).
    fn read_json(ws: &mut WebSocket<TcpStream>) -> (FrameKind, Value) {
        loop {
            match ws.read().unwrap() {
                Message::Text(t) => return (FrameKind::Text, serde_json::from_str(&t).unwrap()),
                Message::Binary(b) => {
                    return (FrameKind::Binary, serde_json::from_slice(&b).unwrap())
                }
                _ => {}
            }
        }
    }

    fn send(ws: &mut WebSocket<TcpStream>, kind: FrameKind, v: Value) {
        let msg = match kind {
            FrameKind::Text => Message::Text(v.to_string()),
            FrameKind::Binary => Message::Binary(v.to_string().into_bytes()),
        };
        ws.send(msg).unwrap();
    }

    fn kx1(roundleft: u64, inter: &str, prime: &str, changesecret: bool) -> Value {
        json!({"ver": 1, "type": "keyxchg_1", "roundleft": roundleft, "keyintrmdt": inter,
               "prime": prime, "changesecret": changesecret})
    }

    #[test]
    fn loopback_negotiation_messages_errors_and_close() {
        let (addr, server) = scripted_server(|mut ws| {
            let b = FrameKind::Binary;
            let (kind, join) = read_json(&mut ws);
            assert_eq!(kind, b, "the default client sends binary frames");
            assert_eq!(join, build_join(&sha1_hex("me"), &sha1_hex("room")));
            send(
                &mut ws,
                b,
                json!({"ver": 1, "type": "keyxchg_0", "number": RFC2409_GROUP1_HEX}),
            );
            send(&mut ws, b, kx1(1, "02", RFC2409_GROUP1_HEX, true));
            send(
                &mut ws,
                b,
                json!({"ver": 1, "type": "error", "errcode": "0x0", "errdetail": "joined"}),
            );
            let (_, reply) = read_json(&mut ws);
            assert_eq!(
                (reply["type"].clone(), reply["roundleft"].clone()),
                (json!("keyxchg_2"), json!(1))
            );
            let g_x = parse_hex(reply["keyintrmdt"].as_str().unwrap()).unwrap();
            // Our "other member" has secret s: the client's key must be (2^x)^s.
            let p = parse_hex(RFC2409_GROUP1_HEX).unwrap();
            let s = BigUint::from(123_456_789u64);
            let g_s = BigUint::from(2u32).modpow(&s, &p);
            send(&mut ws, b, kx1(0, &to_hex(&g_s), RFC2409_GROUP1_HEX, false));
            let (_, reply) = read_json(&mut ws);
            assert_eq!(reply, build_keyxchg_2(0, ""));
            let (_, msg) = read_json(&mut ws);
            assert_eq!(msg["type"], "message_0");
            send(&mut ws, b, expected_message_1(&msg));
            send(
                &mut ws,
                b,
                json!({"ver": 1, "type": "key", "key": to_hex(&g_x.modpow(&s, &p))}),
            );
            send(
                &mut ws,
                b,
                json!({"ver": 1, "type": "error", "errcode": "0x10", "errdetail": "wait"}),
            );
            let (_, leave) = read_json(&mut ws);
            assert_eq!(leave, build_leave());
            send(
                &mut ws,
                b,
                json!({"ver": 1, "type": "error", "errcode": "0x0", "errdetail": "left"}),
            );
            ws.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .unwrap();
            while ws.read().is_ok() {}
        });
        let c = CchatClient::connect(addr).unwrap();
        c.join(&sha1_hex("me"), &sha1_hex("room")).unwrap();
        let key = c.wait_settled(Duration::from_secs(5)).unwrap();
        assert_eq!(c.prime(), Some(p768()));
        assert_eq!(c.key(), Some(key.clone()));
        assert_eq!(c.keyxchg_count(), 2);
        let sent = c.send_message(b"hello", json!({"x": 1})).unwrap();
        let got = c
            .wait_message(|m| m.raw["x"] == 1, Duration::from_secs(5))
            .unwrap();
        assert_eq!(got.raw, expected_message_1(&sent));
        assert_eq!(got.content.as_deref(), Some(&b"hello"[..]));
        c.wait_error("0x10", Duration::from_secs(5)).unwrap();
        // The scripted server told us the key it expects (an unknown type: an anomaly).
        let told = c
            .log()
            .into_iter()
            .find(|r| r.ty == "key")
            .map(|r| r.raw["key"].as_str().unwrap().to_owned())
            .unwrap();
        assert_eq!(told, to_hex(&key), "the client's key is (2^x)^s");
        assert_eq!(c.leave().unwrap(), Some((1000, "bye".to_string())));
        let anomalies = c.anomalies();
        assert_eq!(anomalies.len(), 1, "{anomalies:?}");
        assert!(anomalies[0].contains("unexpected type"));
        assert_eq!(
            c.received_types(),
            [
                "keyxchg_0",
                "keyxchg_1",
                "error",
                "keyxchg_1",
                "message_1",
                "key",
                "error",
                "error"
            ]
        );
        assert!(c.log().iter().all(|r| r.kind == FrameKind::Binary));
        assert_eq!(c.sent_keyxchg_2().len(), 2);
        assert!(matches!(
            c.send_raw_text("x"),
            Err(CchatError::Closed(_) | CchatError::Ws(_))
        ));
        server.join().unwrap();
    }

    #[test]
    fn loopback_silent_resume_bogus_and_anomalies() {
        let (addr, server) = scripted_server(|mut ws| {
            let t = FrameKind::Text;
            let p = RFC2409_GROUP1_HEX;
            let (kind, _join) = read_json(&mut ws);
            assert_eq!(kind, t);
            send(
                &mut ws,
                t,
                json!({"ver": 1, "type": "keyxchg_0", "number": p}),
            );
            send(&mut ws, t, kx1(0, "02", p, true));
            send(
                &mut ws,
                t,
                json!({"ver": 1, "type": "error", "errcode": "0x0", "errdetail": "joined"}),
            );
            // Silent: the next thing the client writes is its message, not an answer.
            let (_, msg) = read_json(&mut ws);
            assert_eq!(msg["type"], "message_0");
            send(
                &mut ws,
                t,
                json!({"ver": 1, "type": "error", "errcode": "0x10", "errdetail": "no"}),
            );
            // Resumed: the pending answer comes.
            let (_, reply) = read_json(&mut ws);
            assert_eq!(reply, build_keyxchg_2(0, ""));
            // Bogus mode (the client says when it is set): roundleft 1 gets the bogus
            // value, roundleft 0 the normal "".
            assert_eq!(read_json(&mut ws).1["type"], "message_0");
            send(&mut ws, t, kx1(1, "02", p, false));
            assert_eq!(read_json(&mut ws).1, build_keyxchg_2(1, "01"));
            // The client switches mode, then says so with a message.
            assert_eq!(read_json(&mut ws).1["type"], "message_0");
            send(&mut ws, t, kx1(1, "02", p, false));
            let minus_one = to_hex(&(parse_hex(p).unwrap() - BigUint::one()));
            assert_eq!(read_json(&mut ws).1, build_keyxchg_2(1, &minus_one));
            send(&mut ws, t, kx1(0, "0abc", p, false));
            assert_eq!(read_json(&mut ws).1, build_keyxchg_2(0, ""));
            // Things the doc rules out: odd hex, missing prime, number errcode, binary frame.
            send(
                &mut ws,
                t,
                json!({"ver": 1, "type": "keyxchg_1", "roundleft": 0, "keyintrmdt": "abc", "changesecret": false}),
            );
            assert_eq!(read_json(&mut ws).1, build_keyxchg_2(0, ""));
            send(
                &mut ws,
                t,
                json!({"ver": 1, "type": "error", "errcode": 8, "errdetail": "x"}),
            );
            send(
                &mut ws,
                FrameKind::Binary,
                json!({"ver": 1, "type": "error", "errcode": "0x8", "errdetail": "y"}),
            );
            // Then the client drops the TCP connection.
            assert!(ws.read().is_err());
        });
        let c = CchatClient::connect_with(addr, FrameKind::Text).unwrap();
        c.set_key_answer(KeyAnswer::Silent);
        c.join(&sha1_hex("a"), &sha1_hex("r")).unwrap();
        c.wait_keyxchg(1, Duration::from_secs(5)).unwrap();
        assert!(!c.negotiation_finished());
        assert_eq!(c.key(), None);
        c.send_message(b"early", Value::Null).unwrap();
        c.wait_error("0x10", Duration::from_secs(5)).unwrap();
        c.set_key_answer(KeyAnswer::Answer);
        let k1 = c.wait_settled(Duration::from_secs(5)).unwrap();
        assert!(k1 > BigUint::one() && k1 < p768());
        c.set_key_answer(KeyAnswer::Bogus("01".into()));
        c.send_message(b"bogus now", Value::Null).unwrap();
        c.wait_keyxchg(2, Duration::from_secs(5)).unwrap();
        // Switch once the bogus answer is out, then tell the server (commands keep order).
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.sent_keyxchg_2().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        c.set_key_answer(KeyAnswer::BogusPrimeMinus(1));
        c.send_message(b"switched", Value::Null).unwrap();
        let k2 = c.wait_settled_since(1, Duration::from_secs(5)).unwrap();
        assert_ne!(k1, k2);
        c.wait_settled_since(2, Duration::from_secs(5)).unwrap();
        c.wait_error("0x8", Duration::from_secs(5)).unwrap();
        assert_eq!(c.errors().len(), 4);
        let anomalies = c.anomalies().join("\n");
        assert!(anomalies.contains("not even-length"), "{anomalies}");
        assert!(anomalies.contains("without prime"), "{anomalies}");
        assert!(anomalies.contains("errcode not a string"), "{anomalies}");
        assert!(
            anomalies.contains("Binary frame where Text was due"),
            "{anomalies}"
        );
        assert_eq!(c.unexpected_errors().len(), 3);
        c.drop_abruptly();
        assert_eq!(c.wait_closed(Duration::from_secs(5)).unwrap(), None);
        server.join().unwrap();
    }

    #[test]
    fn connect_to_nothing_fails() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(CchatClient::connect(addr).is_err());
    }

    #[test]
    fn errors_display() {
        let e = CchatError::Closed(Some((1009, "too big".into())));
        assert!(e.to_string().contains("1009"));
        let e = CchatError::Server(ServerError {
            code: "0x10".into(),
            detail: "wait".into(),
            raw: Value::Null,
        });
        assert!(e.to_string().contains("0x10"));
    }
}
