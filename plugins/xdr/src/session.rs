//! One XDR connection as a sans-IO state machine.
//!
//! ```text
//!   ExpectHello ──hello──▶ LookingUp (FindAlias → PublicKeys → Load sequence)
//!                              │ unknown client: close 4002
//!                              ▼ challenge sent
//!                        ExpectSignature ──signature ok──▶ Binding (Bind exclusive,
//!                              │ bad: close 4003            resume after the order)
//!                              │                                │ taken: close 4000
//!                              ▼                                ▼
//!                           closed   ◀── fatal: ERROR, close ── Live
//!   (handshake not done in time: close 4006)
//! ```
//!
//! Live, every client frame is decrypted, parsed (either layout), its signature checked
//! and, for INBOX, its sequence checked before the payload is carried out. A sequence
//! counts as processed once its outcome is known (done, or refused with a stored
//! `MessageRefused`); the highest contiguous one is stored for the next handshake.

use crate::crypto::{self, Cipher, ClientKey, ServerKey};
use crate::frame::{self, ClientKind, Hello, ServerFrame};
use crate::payload::{self, Inbox, Rpc};
use crate::Config;
use hub_plugin_sdk::receipt::Receipts;
use hub_plugin_sdk::{
    fire_and_forget, Address, Answer, Awaiting, CloseReason, Content, CoreError, Delivery,
    HubEvent, Input, LogLevel, Now, Op, Output, OutputQueue, Seq, Session, Transmit, UserId,
    UserRef, UserStatus, WsMessage,
};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Frames kept while the bind is answered, at most.
const EARLY_FRAMES: usize = 64;

/// The key kind client public keys are stored under (by `hub xdr add-client`).
pub const CLIENT_KEY_KIND: &str = "xdr/rsa-public-pem";

/// Close codes (see the doc's tables).
mod close {
    pub const CONCURRENT: u16 = 4000;
    pub const SEQUENCE: u16 = 4001;
    pub const UNKNOWN_CLIENT: u16 = 4002;
    pub const HANDSHAKE: u16 = 4003;
    pub const FRAME: u16 = 4004;
    pub const PAYLOAD: u16 = 4005;
    pub const HANDSHAKE_TIMEOUT: u16 = 4006;
    pub const SLOW_READER: u16 = 4008;
    pub const RATE_LIMIT: u16 = 4009;
    pub const RESTART: u16 = 1012;
}

/// What an outstanding command was for.
#[derive(Debug)]
enum Purpose {
    FindClient,
    ClientKeys,
    LoadSequence,
    Bind,
    /// An INBOX request with this sequence.
    Inbox(i64),
    /// The stored refusal of this sequence.
    Refusal(i64),
    /// An RPC request.
    Rpc {
        request_id: i64,
        kind: RpcKind,
    },
    /// One handle of a presence request.
    PresenceResolve {
        query: u64,
        index: usize,
    },
    /// The status query of a presence request.
    PresenceStatus {
        query: u64,
    },
}

/// What to answer an RPC with, once the core has answered.
#[derive(Debug, Clone)]
enum RpcKind {
    History { limit: u32 },
    RoomHistory { limit: u32 },
    Contacts,
    RoomMembers { room: String },
}

/// A presence request being resolved handle by handle.
#[derive(Debug)]
struct PresenceQuery {
    request_id: i64,
    handles: Vec<String>,
    ids: Vec<Option<UserId>>,
    waiting: usize,
}

/// What the handshake learnt so far.
struct Handshake {
    hello: Hello,
    user: Option<UserRef>,
    key: Option<ClientKey>,
    data_to_sign: [u8; 32],
    server_aes_key: [u8; 32],
    last_seen_sequence: i64,
}

enum State {
    ExpectHello,
    LookingUp(Box<Handshake>),
    ExpectSignature(Box<Handshake>),
    Binding(Box<Handshake>),
    Live,
    Closed,
}

/// A live connection's keys and counters.
struct Link {
    user: UserRef,
    key: ClientKey,
    client: Cipher,
    server: Cipher,
    /// The sequence the next INBOX message must carry.
    expected: i64,
    /// Highest sequence stored as processed (everything up to it is).
    marked: i64,
    /// Processed sequences above `marked`.
    done: BTreeSet<i64>,
    /// The order of the last event sent.
    delivered: u64,
}

/// One XDR session.
pub struct XdrSession {
    config: Arc<Config>,
    server_key: Arc<ServerKey>,
    out: OutputQueue,
    state: State,
    link: Option<Link>,
    inflight: Awaiting<Purpose>,
    presence: HashMap<u64, PresenceQuery>,
    next_query: u64,
    /// Events that overtook the answer to `Bind`.
    early: Vec<HubEvent>,
    /// Frames the client sent right after its signature, before `Bind` was answered.
    early_frames: Vec<Vec<u8>>,
    /// Proof of receipt by ping/pong (clients that always resume from −1 rely on it).
    receipts: Receipts,
    now_ms: u64,
    handshake_deadline: Option<u64>,
    next_heartbeat: Option<u64>,
}

impl XdrSession {
    /// A new session.
    pub fn new(config: Arc<Config>, server_key: Arc<ServerKey>) -> Self {
        XdrSession {
            config,
            server_key,
            out: OutputQueue::new(),
            state: State::ExpectHello,
            link: None,
            inflight: Awaiting::new(),
            presence: HashMap::new(),
            next_query: 1,
            early: Vec::new(),
            early_frames: Vec::new(),
            receipts: Receipts::new(),
            now_ms: 0,
            handshake_deadline: None,
            next_heartbeat: None,
        }
    }

    fn log(&mut self, level: LogLevel, message: impl Into<String>) {
        self.out.push_back(Output::Log {
            level,
            message: message.into(),
        });
    }

    fn binary(&mut self, bytes: Vec<u8>) {
        if !matches!(self.state, State::Closed) {
            self.out
                .push_back(Output::Transmit(Transmit::Message(WsMessage::Binary(
                    bytes,
                ))));
        }
    }

    /// Encrypts and sends a frame to the client.
    fn frame(&mut self, frame: ServerFrame<'_>) {
        let Some(link) = &self.link else { return };
        let body = frame::server_body(&frame, self.config.server_frames);
        let sealed = link.server.seal(&body);
        self.binary(sealed);
    }

    /// Closes without an ERROR frame (handshake refusals, shutdown).
    fn close(&mut self, code: u16, reason: &str) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.state = State::Closed;
        self.out.push_back(Output::Close(CloseReason {
            code: Some(code),
            reason: reason.into(),
        }));
    }

    /// An ERROR frame (when the client has a session key), then the close.
    fn fatal(&mut self, code: u16, message: &str) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.log(LogLevel::Warn, format!("closing with {code}: {message}"));
        self.frame(ServerFrame::Error { message });
        self.close(code, message);
    }

    fn command(&mut self, op: Op, purpose: Purpose) {
        let output = self.inflight.command(op, purpose);
        self.out.push_back(output);
    }

    fn fire_and_forget(&mut self, op: Op) {
        self.out.push_back(fire_and_forget(op));
    }

    fn sequence_key(user: UserId) -> Vec<u8> {
        let mut key = b"seq/".to_vec();
        key.extend_from_slice(&user.0.to_be_bytes());
        key
    }

    // ----- handshake -------------------------------------------------------------------

    fn on_hello(&mut self, ciphertext: &[u8]) {
        let hello = match self
            .server_key
            .decrypt(ciphertext)
            .ok_or_else(|| "the hello does not decrypt with the server key".to_owned())
            .and_then(|plain| frame::parse_hello(&plain))
        {
            Ok(hello) => hello,
            Err(why) => {
                self.log(LogLevel::Warn, format!("handshake refused: {why}"));
                return self.close(close::HANDSHAKE, "handshake failed");
            }
        };
        self.log(
            LogLevel::Debug,
            format!(
                "hello from client {:?}, last seen order {}",
                hello.client_id, hello.last_seen_order
            ),
        );
        let op = Op::FindAlias {
            namespace: "xdr".into(),
            native: hello.client_id.clone(),
        };
        self.state = State::LookingUp(Box::new(Handshake {
            hello,
            user: None,
            key: None,
            data_to_sign: crypto::random(),
            server_aes_key: crypto::random(),
            last_seen_sequence: 0,
        }));
        self.command(op, Purpose::FindClient);
    }

    fn on_handshake_answer(&mut self, purpose: Purpose, result: Result<Answer, CoreError>) {
        let mut handshake = match std::mem::replace(&mut self.state, State::ExpectHello) {
            State::LookingUp(handshake) => handshake,
            other => {
                self.state = other;
                return;
            }
        };
        match (purpose, result) {
            (Purpose::FindClient, Ok(Answer::User(user))) => {
                let op = Op::PublicKeys { user: user.id };
                handshake.user = Some(user);
                self.state = State::LookingUp(handshake);
                self.command(op, Purpose::ClientKeys);
            }
            (Purpose::ClientKeys, Ok(Answer::Keys(keys))) => {
                let pem = keys
                    .iter()
                    .find(|k| k.kind == CLIENT_KEY_KIND)
                    .map(|k| String::from_utf8_lossy(&k.bytes).into_owned());
                match pem.map(|pem| ClientKey::from_pem(&pem)) {
                    Some(Ok(key)) => {
                        handshake.key = Some(key);
                        let user = handshake.user.as_ref().map(|u| u.id);
                        self.state = State::LookingUp(handshake);
                        if let Some(user) = user {
                            let key = Self::sequence_key(user);
                            self.command(Op::Load { key }, Purpose::LoadSequence);
                        }
                    }
                    Some(Err(e)) => self.refuse_client(
                        LogLevel::Error,
                        &format!("the registered client key is unusable: {e}"),
                    ),
                    None => self.refuse_client(LogLevel::Info, "the client has no registered key"),
                }
            }
            (Purpose::LoadSequence, Ok(Answer::Value(value))) => {
                handshake.last_seen_sequence = value
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map_or(0, i64::from_be_bytes);
                let reply = frame::challenge(
                    &handshake.data_to_sign,
                    handshake.last_seen_sequence,
                    &handshake.server_aes_key,
                );
                let sealed = handshake.key.as_ref().and_then(|k| k.encrypt(&reply));
                match sealed {
                    Some(sealed) => {
                        self.state = State::ExpectSignature(handshake);
                        self.binary(sealed);
                    }
                    None => {
                        self.log(
                            LogLevel::Warn,
                            "the client key is too small for the challenge",
                        );
                        self.close(close::HANDSHAKE, "handshake failed");
                    }
                }
            }
            (_, Err(CoreError::NoSuchUser | CoreError::Disabled)) => {
                self.refuse_client(LogLevel::Info, "no such client id (or disabled)")
            }
            (_, result) => {
                self.log(
                    LogLevel::Error,
                    format!("handshake lookup failed: {result:?}"),
                );
                self.close(1011, "internal error");
            }
        }
    }

    /// The client cannot be served: close with 4002 (no ERROR: it holds no session key).
    fn refuse_client(&mut self, level: LogLevel, why: &str) {
        self.log(level, format!("handshake refused: {why}"));
        self.close(close::UNKNOWN_CLIENT, "unknown client id");
    }

    fn on_signature(&mut self, signature: &[u8]) {
        let handshake = match std::mem::replace(&mut self.state, State::ExpectHello) {
            State::ExpectSignature(handshake) => handshake,
            other => {
                self.state = other;
                return;
            }
        };
        let verified = handshake
            .key
            .as_ref()
            .is_some_and(|key| key.verify(&handshake.data_to_sign, signature));
        if !verified {
            self.log(
                LogLevel::Warn,
                "handshake refused: bad signature of data_to_sign",
            );
            self.state = State::ExpectHello;
            return self.close(close::HANDSHAKE, "handshake failed");
        }
        let Some(user) = handshake.user.clone() else {
            return self.close(1011, "internal error");
        };
        let order = handshake.hello.last_seen_order;
        self.state = State::Binding(handshake);
        self.command(
            Op::Bind {
                user: user.id,
                exclusive: true,
                resume_after: u64::try_from(order).ok().map(Seq),
            },
            Purpose::Bind,
        );
    }

    fn on_bound(&mut self, result: Result<Answer, CoreError>, now: Now) {
        let handshake = match std::mem::replace(&mut self.state, State::ExpectHello) {
            State::Binding(handshake) => handshake,
            other => {
                self.state = other;
                return;
            }
        };
        match result {
            Ok(Answer::Bound { user, cursor }) => {
                let (Some(key), Some(client), Some(server)) = (
                    handshake.key,
                    Cipher::new(&handshake.hello.aes_key),
                    Cipher::new(&handshake.server_aes_key),
                ) else {
                    return self.close(1011, "internal error");
                };
                self.log(
                    LogLevel::Info,
                    format!("client {:?} is {}", handshake.hello.client_id, user.handle),
                );
                let sequence = handshake.last_seen_sequence;
                self.link = Some(Link {
                    user,
                    key,
                    client,
                    server,
                    expected: sequence + 1,
                    marked: sequence,
                    done: BTreeSet::new(),
                    delivered: cursor.0,
                });
                self.receipts.start_at(cursor);
                self.state = State::Live;
                self.handshake_deadline = None;
                self.next_heartbeat = Some(now.mono_ms + self.config.heartbeat_ms);
                for event in std::mem::take(&mut self.early) {
                    self.on_event(event, now);
                }
                for frame in std::mem::take(&mut self.early_frames) {
                    self.on_frame(&frame);
                }
            }
            Err(CoreError::AlreadyConnected) => {
                self.state = State::ExpectHello;
                self.close(close::CONCURRENT, "concurrent connection");
            }
            other => {
                self.log(LogLevel::Error, format!("bind failed: {other:?}"));
                self.state = State::ExpectHello;
                self.close(1011, "internal error");
            }
        }
    }

    // ----- live ------------------------------------------------------------------------

    fn on_frame(&mut self, sealed: &[u8]) {
        let Some(link) = &self.link else { return };
        let Some(body) = link.client.open(sealed) else {
            return self.fatal(close::FRAME, "frame does not decrypt");
        };
        let frame = match frame::parse_client(&body) {
            Ok(frame) => frame,
            Err(e) => return self.fatal(close::FRAME, &format!("malformed frame: {e}")),
        };
        if !link.key.verify(&frame.signed, &frame.signature) {
            return self.fatal(close::FRAME, "invalid signature");
        }
        if self.inflight.len() >= self.config.max_pending {
            return self.fatal(close::RATE_LIMIT, "rate limit: too many requests in flight");
        }
        match frame.kind {
            ClientKind::Inbox => self.on_inbox(frame.id, &frame.json),
            ClientKind::Rpc => self.on_rpc(frame.id, &frame.json),
        }
    }

    fn on_inbox(&mut self, sequence: i64, json: &[u8]) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if sequence != link.expected {
            let message = format!(
                "invalid sequence: expected {}, got {sequence}",
                link.expected
            );
            return self.fatal(close::SEQUENCE, &message);
        }
        link.expected += 1;
        let request = match payload::parse_inbox(json) {
            Ok(request) => request,
            Err(e) => {
                // A poison message must not come back on every reconnect.
                self.processed(sequence);
                return self.fatal(close::PAYLOAD, &format!("invalid payload: {e}"));
            }
        };
        let op = match request {
            Inbox::SendMessage { to, text, object } => Op::Send {
                to,
                content: Content::Native {
                    scheme: payload::SCHEME_MESSAGE.into(),
                    bytes: serde_json::Value::Object(object).to_string().into_bytes(),
                    fallback: Some(text),
                },
            },
            Inbox::JoinRoom { room } => Op::JoinRoom { room },
            Inbox::LeaveRoom { room } => Op::LeaveRoom { room },
            Inbox::AddContact { user } => Op::Invite {
                to: Address::Handle(user),
            },
            Inbox::AnswerContact { user, accept } => Op::InviteReply {
                to: Address::Handle(user),
                accept,
            },
        };
        self.command(op, Purpose::Inbox(sequence));
    }

    /// Records that `sequence` is processed; stores the highest contiguous one.
    fn processed(&mut self, sequence: i64) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        link.done.insert(sequence);
        let before = link.marked;
        while link.done.remove(&(link.marked + 1)) {
            link.marked += 1;
        }
        if link.marked > before {
            let op = Op::Store {
                key: Self::sequence_key(link.user.id),
                value: Some(link.marked.to_be_bytes().to_vec()),
            };
            self.fire_and_forget(op);
        }
    }

    fn on_rpc(&mut self, request_id: i64, json: &[u8]) {
        let request = match payload::parse_rpc(json) {
            Ok(request) => request,
            Err(e) => return self.fatal(close::PAYLOAD, &format!("invalid payload: {e}")),
        };
        let newest = |before: Option<u64>| Seq(before.unwrap_or(u64::MAX));
        let (op, kind) = match request {
            Rpc::WhoAmI => {
                let Some(link) = &self.link else { return };
                let reply = json!({
                    "@type": "WhoAmIResponse",
                    "user": link.user.handle,
                    "id": link.user.id.0.to_string(),
                });
                return self.respond(request_id, &reply);
            }
            Rpc::History { before, limit } => (
                Op::History {
                    before: newest(before),
                    limit,
                },
                RpcKind::History { limit },
            ),
            Rpc::RoomHistory {
                room,
                before,
                limit,
            } => (
                Op::RoomHistory {
                    room,
                    before: newest(before),
                    limit,
                },
                RpcKind::RoomHistory { limit },
            ),
            Rpc::Contacts => (Op::Contacts, RpcKind::Contacts),
            Rpc::RoomMembers { room } => (
                Op::RoomMembers { room: room.clone() },
                RpcKind::RoomMembers { room },
            ),
            Rpc::Presence { users } => return self.presence_request(request_id, users),
        };
        self.command(op, Purpose::Rpc { request_id, kind });
    }

    fn presence_request(&mut self, request_id: i64, handles: Vec<String>) {
        let query = self.next_query;
        self.next_query += 1;
        if handles.is_empty() {
            let reply = json!({"@type": "PresenceResponse", "users": {}});
            return self.respond(request_id, &reply);
        }
        for (index, handle) in handles.iter().enumerate() {
            let op = Op::Resolve {
                address: Address::Handle(handle.clone()),
            };
            self.command(op, Purpose::PresenceResolve { query, index });
        }
        self.presence.insert(
            query,
            PresenceQuery {
                request_id,
                ids: vec![None; handles.len()],
                waiting: handles.len(),
                handles,
            },
        );
    }

    fn respond(&mut self, request_id: i64, payload: &Value) {
        let json = payload.to_string();
        self.frame(ServerFrame::RpcResponse {
            request_id,
            json: json.as_bytes(),
        });
    }

    fn on_live_answer(&mut self, purpose: Purpose, result: Result<Answer, CoreError>) {
        match purpose {
            Purpose::Inbox(sequence) => match result {
                Ok(_) => self.processed(sequence),
                Err(error) => {
                    self.log(
                        LogLevel::Debug,
                        format!("message {sequence} refused: {error}"),
                    );
                    let notice = payload::refusal(sequence, &error).to_string();
                    self.command(
                        Op::Notify {
                            content: Content::Native {
                                scheme: payload::SCHEME_NOTICE.into(),
                                bytes: notice.into_bytes(),
                                fallback: None,
                            },
                        },
                        Purpose::Refusal(sequence),
                    );
                }
            },
            Purpose::Refusal(sequence) => {
                if let Err(error) = result {
                    self.log(
                        LogLevel::Error,
                        format!("storing a refusal failed: {error}"),
                    );
                }
                self.processed(sequence);
            }
            Purpose::Rpc { request_id, kind } => {
                let reply = match (kind, result) {
                    (RpcKind::History { limit }, Ok(Answer::History(page))) => {
                        payload::history("HistoryResponse", &page, limit, "order")
                    }
                    (RpcKind::RoomHistory { limit }, Ok(Answer::History(page))) => {
                        let room = page.first().map(|d| match &d.event.to {
                            hub_plugin_sdk::Target::Room(room) => format!("#{}", room.name),
                            hub_plugin_sdk::Target::User(user) => user.handle.clone(),
                        });
                        let mut reply =
                            payload::history("RoomHistoryResponse", &page, limit, "position");
                        reply["room"] = json!(room);
                        reply
                    }
                    (RpcKind::Contacts, Ok(Answer::Contacts(entries))) => {
                        payload::contacts(&entries)
                    }
                    (RpcKind::RoomMembers { room }, Ok(Answer::Members { members, present })) => {
                        let handles = |users: &[UserRef]| {
                            users.iter().map(|u| u.handle.clone()).collect::<Vec<_>>()
                        };
                        json!({"@type": "RoomMembersResponse", "room": format!("#{room}"), "members": handles(&members), "present": handles(&present)})
                    }
                    (_, Err(error)) => payload::rpc_error(&error),
                    (_, Ok(other)) => payload::rpc_error(&CoreError::Internal(format!(
                        "unexpected answer {other:?}"
                    ))),
                };
                self.respond(request_id, &reply);
            }
            Purpose::PresenceResolve { query, index } => {
                let Some(pending) = self.presence.get_mut(&query) else {
                    return;
                };
                if let Ok(Answer::User(user)) = result {
                    pending.ids[index] = Some(user.id);
                }
                pending.waiting -= 1;
                if pending.waiting == 0 {
                    let users: Vec<UserId> = pending.ids.iter().flatten().copied().collect();
                    self.command(Op::Status { users }, Purpose::PresenceStatus { query });
                }
            }
            Purpose::PresenceStatus { query } => {
                let Some(pending) = self.presence.remove(&query) else {
                    return;
                };
                let statuses = match result {
                    Ok(Answer::Statuses(statuses)) => statuses,
                    _ => Vec::new(),
                };
                let mut users = serde_json::Map::new();
                for (handle, id) in pending.handles.iter().zip(&pending.ids) {
                    let state = id
                        .and_then(|id| {
                            statuses.iter().find_map(|s| match s {
                                UserStatus::Online(u) if *u == id => Some("online"),
                                UserStatus::Offline(u) if *u == id => Some("offline"),
                                _ => None,
                            })
                        })
                        .unwrap_or("unknown");
                    users.insert(handle.clone(), json!(state));
                }
                let reply = json!({"@type": "PresenceResponse", "users": users});
                self.respond(pending.request_id, &reply);
            }
            Purpose::FindClient | Purpose::ClientKeys | Purpose::LoadSequence | Purpose::Bind => {}
        }
    }

    fn deliver(&mut self, delivery: &Delivery) {
        let json = payload::event(delivery).to_string();
        self.frame(ServerFrame::Outbox {
            order: delivery.seq.0 as i64,
            timestamp: payload::timestamp(delivery),
            json: json.as_bytes(),
        });
        if let Some(link) = self.link.as_mut() {
            link.delivered = link.delivered.max(delivery.seq.0);
        }
        self.receipts.delivered(delivery.seq);
        self.ping_for_receipt();
    }

    fn ping_for_receipt(&mut self) {
        if let Some(payload) = self.receipts.poll_ping(self.now_ms) {
            if !matches!(self.state, State::Closed) {
                self.out
                    .push_back(Output::Transmit(Transmit::Message(WsMessage::Ping(
                        payload,
                    ))));
            }
        }
    }

    fn on_event(&mut self, event: HubEvent, now: Now) {
        if matches!(self.state, State::Binding(_))
            && matches!(event, HubEvent::Deliver(_) | HubEvent::Presence { .. })
        {
            self.early.push(event);
            return;
        }
        match event {
            HubEvent::Answer { id, result } => {
                let Some(purpose) = self.inflight.answered(id) else {
                    return;
                };
                match (&self.state, purpose) {
                    (State::Binding(_), Purpose::Bind) => self.on_bound(result, now),
                    (State::LookingUp(_), purpose) => self.on_handshake_answer(purpose, result),
                    (State::Live, purpose) => self.on_live_answer(purpose, result),
                    _ => {}
                }
            }
            HubEvent::Deliver(delivery) => {
                if matches!(self.state, State::Live) {
                    self.deliver(&delivery);
                }
            }
            HubEvent::Presence { user, online } => {
                let Some(order) = self.link.as_ref().map(|l| l.delivered) else {
                    return;
                };
                let json = payload::presence(&user, online).to_string();
                self.frame(ServerFrame::Outbox {
                    order: order as i64,
                    timestamp: now.unix_ms as f64 / 1000.0,
                    json: json.as_bytes(),
                });
            }
            HubEvent::Shutdown => self.close(close::RESTART, "server restart"),
            HubEvent::Kicked { reason } => {
                self.fatal(close::SLOW_READER, &format!("too slow reading: {reason}"))
            }
            HubEvent::RoomDeliver(_)
            | HubEvent::KeyStep { .. }
            | HubEvent::RoomKicked { .. }
            | HubEvent::PuppetDeliver { .. }
            | HubEvent::Signal { .. } => {}
        }
    }

    fn on_binary(&mut self, bytes: &[u8]) {
        if bytes == [0] {
            return; // the client's heartbeat
        }
        match &self.state {
            State::ExpectHello => self.on_hello(bytes),
            State::ExpectSignature(_) => self.on_signature(bytes),
            State::Live => self.on_frame(bytes),
            // Real clients send at once after their signature: keep what arrives while
            // the bind is answered (bounded), and read it once live.
            State::Binding(_) if self.early_frames.len() < EARLY_FRAMES => {
                self.early_frames.push(bytes.to_vec());
            }
            State::LookingUp(_) | State::Binding(_) => {
                self.log(
                    LogLevel::Warn,
                    "a message before the handshake step it answers",
                );
                self.close(close::HANDSHAKE, "handshake failed");
            }
            State::Closed => {}
        }
    }
}

impl Session for XdrSession {
    fn handle_input(&mut self, now: Now, input: Input) {
        self.now_ms = now.mono_ms;
        match input {
            Input::Opened => {
                self.handshake_deadline =
                    Some(now.mono_ms + self.config.handshake_timeout_secs * 1000);
            }
            Input::Message(WsMessage::Binary(bytes)) => self.on_binary(&bytes),
            Input::Message(WsMessage::Text(_)) => {
                if matches!(self.state, State::Live) {
                    self.fatal(close::FRAME, "text messages are not part of the protocol");
                } else {
                    self.close(close::HANDSHAKE, "handshake failed");
                }
            }
            Input::Message(WsMessage::Pong(payload)) => {
                if let Some(through) = self.receipts.on_pong(&payload) {
                    self.fire_and_forget(Op::Ack { through });
                }
                self.ping_for_receipt();
            }
            Input::Message(WsMessage::Ping(_)) => {}
            Input::Event(event) => self.on_event(event, now),
            Input::Timeout => {
                if self.handshake_deadline.is_some_and(|d| d <= now.mono_ms)
                    && !matches!(self.state, State::Live | State::Closed)
                {
                    self.log(LogLevel::Info, "handshake not completed in time");
                    self.close(close::HANDSHAKE_TIMEOUT, "handshake timeout");
                }
                if let Some(next) = self.next_heartbeat {
                    if next <= now.mono_ms && matches!(self.state, State::Live) {
                        self.binary(vec![0]);
                        self.next_heartbeat = Some(now.mono_ms + self.config.heartbeat_ms);
                    }
                }
                if matches!(self.state, State::Live) {
                    self.ping_for_receipt();
                }
            }
            Input::TooLarge { limit } => {
                self.log(LogLevel::Warn, format!("message over {limit} bytes"));
                self.state = State::Closed;
            }
            Input::Bytes(_) | Input::Request(_) | Input::Fetched { .. } => {
                self.log(LogLevel::Error, "XDR speaks WebSocket only; input dropped")
            }
            Input::Closed { .. } => self.state = State::Closed,
        }
    }

    fn poll_output(&mut self) -> Output {
        if let Some(output) = self.out.pop_front() {
            return output;
        }
        let deadline = match self.state {
            State::Live => match (self.next_heartbeat, self.receipts.deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            State::Closed => None,
            _ => self.handshake_deadline,
        };
        Output::Timeout(deadline)
    }
}
