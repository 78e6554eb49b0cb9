//! One JSON-protocol connection as a sans-IO state machine.
//!
//! ```text
//!   Opened ──▶ Anonymous ──(signup / signin: token)──▶ Anonymous
//!                 │
//!                 ├─(first request with a valid session token)──▶ Authenticated(user)
//!                 │
//!                 └─(subscribe: token ok, Bind)──▶ Subscribed(user) ── deliveries ──▶
//!   no subscribe within handshake_timeout ──▶ closed
//! ```
//!
//! Requests that carry a session token are checked once per token (`CheckToken`); the
//! requests that arrive meanwhile wait in `blocked`, so replies keep request order.
//! Deliveries are acknowledged to the core with a WebSocket ping carrying the last
//! delivered sequence number: the client's pong proves it read everything before it.

use crate::render::{event_text, presence_object, SCHEME_KEY_EXCHANGE, SCHEME_MESSAGE};
use crate::wire::{refusal_object, success, Refusal, Request, RespCode};
use crate::Config;
use hub_plugin_sdk::receipt::Receipts;
use hub_plugin_sdk::{
    fire_and_forget, Address, Answer, Awaiting, CallId, CloseReason, Content, CoreError,
    CorrelationId, HubEvent, Input, LogLevel, Now, Op, Output, OutputQueue, PasswordScheme,
    Session, Transmit, UserRef, WsMessage,
};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What an outstanding command was for.
#[derive(Debug)]
enum Purpose {
    Signup {
        id: Option<Value>,
    },
    Signin {
        id: Option<Value>,
    },
    /// A token check for requests waiting in `blocked`.
    TokenCheck {
        token: String,
    },
    /// Subscribe: first the token, then the bind.
    SubscribeToken {
        id: Option<Value>,
        token: String,
    },
    SubscribeBind {
        id: Option<Value>,
    },
    /// Any other request: reply according to its kind.
    Request {
        kind: &'static str,
        id: Option<Value>,
    },
}

/// Tokens this connection has seen checked (bounded).
const TOKEN_CACHE: usize = 16;

/// One JSON-protocol session.
pub struct JsonSession {
    config: Arc<Config>,
    out: OutputQueue,
    inflight: Awaiting<Purpose>,
    /// Checked tokens: the user, or `None` for a refused token.
    tokens: HashMap<String, Option<UserRef>>,
    identity: Option<UserRef>,
    subscribed: bool,
    /// A subscribe is being checked or bound.
    subscribing: bool,
    /// A `Bind` is in flight: deliveries that overtake its answer wait here, so the
    /// client always sees the subscribe reply before its events.
    binding: bool,
    early: Vec<HubEvent>,
    /// Requests waiting for a token check, in arrival order.
    blocked: VecDeque<Request>,
    checking: bool,
    /// Proof of receipt by ping/pong.
    receipts: Receipts,
    now_ms: u64,
    deadline: Option<u64>,
    closed: bool,
}

impl JsonSession {
    /// A new session.
    pub fn new(config: Arc<Config>) -> Self {
        let receipts = Receipts::with_gap(config.receipt_gap_ms);
        JsonSession {
            config,
            out: OutputQueue::new(),
            inflight: Awaiting::new(),
            tokens: HashMap::new(),
            identity: None,
            subscribed: false,
            subscribing: false,
            binding: false,
            early: Vec::new(),
            blocked: VecDeque::new(),
            checking: false,
            receipts,
            now_ms: 0,
            deadline: None,
            closed: false,
        }
    }

    fn send(&mut self, value: Value) {
        self.send_text(crate::render::to_text(&value));
    }

    fn send_text(&mut self, text: String) {
        self.out
            .push_back(Output::Transmit(Transmit::Message(WsMessage::Text(text))));
    }

    fn log(&mut self, level: LogLevel, message: impl Into<String>) {
        self.out.push_back(Output::Log {
            level,
            message: message.into(),
        });
    }

    fn close(&mut self, code: u16, reason: &str) {
        if !self.closed {
            self.closed = true;
            self.out.push_back(Output::Close(CloseReason {
                code: Some(code),
                reason: reason.into(),
            }));
        }
    }

    fn refuse(&mut self, refusal: Refusal) {
        let level = if refusal.code == RespCode::Internal {
            LogLevel::Error
        } else {
            LogLevel::Debug
        };
        self.log(
            level,
            format!("refused {}: {}", refusal.reply_type, refusal.detail),
        );
        self.send(refusal_object(&refusal));
    }

    fn command(&mut self, op: Op, purpose: Purpose) {
        let output = self.inflight.command(op, purpose);
        self.out.push_back(output);
    }

    fn fire_and_forget(&mut self, op: Op) {
        self.out.push_back(fire_and_forget(op));
    }

    fn busy(&self) -> bool {
        self.inflight.len() + self.blocked.len() >= self.config.max_pending
    }

    fn on_text(&mut self, text: String) {
        let request = match Request::parse(text) {
            Ok(request) => request,
            Err(refusal) => return self.refuse(refusal),
        };
        if self.busy() {
            return self
                .refuse(request.refuse(RespCode::Overloaded, "too many requests in flight"));
        }
        if let Err(refusal) = self.on_request(request) {
            self.refuse(refusal);
        }
    }

    fn on_request(&mut self, request: Request) -> Result<(), Refusal> {
        match request.kind() {
            "identification" => {
                let reply = json!({
                    "type": "identification",
                    "version": crate::PROTOCOL_VERSION,
                    "server": self.config.server_name,
                    "invitations": true,
                    "resp_code": 0,
                });
                self.send(reply);
            }
            "protocol.standard" => {
                self.send(success(
                    "protocol.standard",
                    request.id(),
                    json!({
                        "ciphers": ["xchacha-poly1305", "aes256-gcm"],
                        "hashes": ["argon2id", "sha256"],
                    }),
                ));
            }
            "signup" => {
                let handle = request.text("username")?.into_owned();
                let password = request.text("password")?.into_owned();
                let hash = request.opt_text("hash");
                let scheme = match hash.as_deref().unwrap_or("argon2id") {
                    "argon2id" => PasswordScheme::Argon2id,
                    "sha256" => PasswordScheme::Pbkdf2Sha256,
                    other => {
                        return Err(request.refuse(
                            RespCode::HashNotAvailable,
                            format!("hash {other:?} is not offered; use argon2id or sha256"),
                        ))
                    }
                };
                self.command(
                    Op::Signup {
                        handle,
                        password,
                        scheme,
                    },
                    Purpose::Signup { id: request.id() },
                );
            }
            "signin" => {
                let handle = request.text("username")?.into_owned();
                let password = request.text("password")?.into_owned();
                self.command(
                    Op::Signin { handle, password },
                    Purpose::Signin { id: request.id() },
                );
            }
            "subscribe" => {
                let token = request.text("session")?.into_owned();
                if self.subscribed || self.subscribing {
                    return Err(request.refuse(RespCode::Malformed, "already subscribed"));
                }
                self.subscribing = true;
                self.command(
                    Op::CheckToken {
                        token: token.clone(),
                    },
                    Purpose::SubscribeToken {
                        id: request.id(),
                        token,
                    },
                );
            }
            _ => self.authorized(request)?,
        }
        Ok(())
    }

    /// Requests that act as a user: check the token (once per token), then `source`.
    fn authorized(&mut self, request: Request) -> Result<(), Refusal> {
        let Some(kind) = KNOWN_ACTIONS.iter().copied().find(|k| *k == request.kind()) else {
            return Err(request.refuse(
                RespCode::UnknownType,
                format!("unknown message type {:?}", request.kind()),
            ));
        };
        if self.checking {
            self.blocked.push_back(request);
            return Ok(());
        }
        let token = request.text("session")?;
        match self.tokens.get(&*token) {
            None => {
                // This is always the earliest waiting request (fresh ones only arrive here
                // when nothing waits; unblock() re-runs them front first): it goes back
                // to the front so replies keep request order.
                let token = token.into_owned();
                self.checking = true;
                self.blocked.push_front(request);
                self.command(
                    Op::CheckToken {
                        token: token.clone(),
                    },
                    Purpose::TokenCheck { token },
                );
                Ok(())
            }
            Some(None) => Err(request.refuse(RespCode::BadToken, "unknown or expired session")),
            Some(Some(user)) => {
                if self.identity.as_ref().is_some_and(|me| me.id != user.id) {
                    return Err(request.refuse(
                        RespCode::BadToken,
                        "this connection belongs to another user",
                    ));
                }
                let source = request.text("source")?;
                if *source != *user.handle {
                    return Err(request.refuse(
                        RespCode::BadToken,
                        format!("source {source:?} does not match the session's user"),
                    ));
                }
                if self.identity.is_none() {
                    let user = user.clone();
                    self.fire_and_forget(Op::Authenticate { user: user.id });
                    self.identity = Some(user);
                }
                self.act(kind, request)
            }
        }
    }

    fn remember_token(&mut self, token: String, user: Option<UserRef>) {
        if self.tokens.len() >= TOKEN_CACHE {
            self.tokens.clear();
        }
        self.tokens.insert(token, user);
    }

    /// Turns an authorized request of `kind` (one of [`KNOWN_ACTIONS`]) into a core
    /// command.
    fn act(&mut self, kind: &'static str, request: Request) -> Result<(), Refusal> {
        let purpose = Purpose::Request {
            kind,
            id: request.id(),
        };
        let op = match kind {
            "invite.request" => Op::Invite {
                to: Address::Handle(request.text("dest")?.into_owned()),
            },
            "invite.accept" | "invite.reject" => Op::InviteReply {
                to: Address::Handle(request.text("dest")?.into_owned()),
                accept: kind == "invite.accept",
            },
            "message" => {
                let to = destination(&request.text("dest")?);
                let has_nonce = request.opt_text("nonce").is_some_and(|n| !n.is_empty());
                let content = if has_nonce {
                    Content::Sealed {
                        scheme: SCHEME_MESSAGE.into(),
                        bytes: forwardable(&request),
                    }
                } else {
                    Content::Text(request.text("message")?.into_owned())
                };
                Op::Send { to, content }
            }
            "key_exchange.initiate" | "key_exchange.responder" => {
                let dest = request.text("dest")?;
                if dest.starts_with('#') {
                    return Err(
                        request.refuse(RespCode::Malformed, "key exchange is between two users")
                    );
                }
                Op::Send {
                    to: Address::Handle(dest.into_owned()),
                    content: Content::Sealed {
                        scheme: format!("{SCHEME_KEY_EXCHANGE}{}", &kind["key_exchange.".len()..]),
                        bytes: forwardable(&request),
                    },
                }
            }
            "room.join" | "room.leave" => {
                let dest = request.text("dest")?;
                let Some(room) = dest.strip_prefix('#') else {
                    return Err(request.refuse(RespCode::Malformed, "a room is written #name"));
                };
                if kind == "room.join" {
                    Op::JoinRoom {
                        room: room.to_owned(),
                    }
                } else {
                    Op::LeaveRoom {
                        room: room.to_owned(),
                    }
                }
            }
            "contacts" => Op::Contacts,
            "call.start" => Op::CallStart {
                to: Address::Handle(request.text("dest")?.into_owned()),
                data: call_data(&request),
            },
            "call.accept" | "call.reject" => Op::CallReply {
                call: call_id(&request)?,
                accept: kind == "call.accept",
                data: call_data(&request),
            },
            "call.signal" => Op::CallSignal {
                call: call_id(&request)?,
                data: call_data(&request),
            },
            "call.hangup" => Op::CallHangup {
                call: call_id(&request)?,
            },
            // KNOWN_ACTIONS and this match list the same kinds.
            _ => return Err(request.refuse(RespCode::UnknownType, "unknown message type")),
        };
        self.command(op, purpose);
        Ok(())
    }

    fn unblock(&mut self) {
        while !self.checking {
            let Some(request) = self.blocked.pop_front() else {
                break;
            };
            if let Err(refusal) = self.authorized(request) {
                self.refuse(refusal);
            }
        }
        if self.blocked.is_empty() {
            // Nothing waits any more: an idle session keeps no room for requests.
            self.blocked.shrink_to_fit();
        }
    }

    fn on_answer(&mut self, id: CorrelationId, result: Result<Answer, CoreError>) {
        let Some(purpose) = self.inflight.answered(id) else {
            return; // answers to fire-and-forget commands
        };
        match purpose {
            Purpose::Signup { id } => self.on_account_answer("signup", id, result),
            Purpose::Signin { id } => self.on_account_answer("signin", id, result),
            Purpose::TokenCheck { token } => {
                self.checking = false;
                match result {
                    Ok(Answer::Session { user, .. }) => self.remember_token(token, Some(user)),
                    _ => self.remember_token(token, None),
                }
                self.unblock();
            }
            Purpose::SubscribeToken { id, token } => match result {
                Ok(Answer::Session { user, .. }) => {
                    if self.identity.as_ref().is_some_and(|me| me.id != user.id) {
                        return self.subscribe_failed(id, CoreError::Forbidden);
                    }
                    self.remember_token(token, Some(user.clone()));
                    self.identity = Some(user.clone());
                    self.binding = true;
                    self.command(
                        Op::Bind {
                            user: user.id,
                            exclusive: false,
                            resume_after: None,
                        },
                        Purpose::SubscribeBind { id },
                    );
                }
                Ok(other) => {
                    self.subscribing = false;
                    self.unexpected(&other)
                }
                Err(error) => self.subscribe_failed(id, error),
            },
            Purpose::SubscribeBind { id } => {
                self.binding = false;
                self.subscribing = false;
                match result {
                    Ok(Answer::Bound { user, cursor }) => {
                        self.subscribed = true;
                        self.deadline = None;
                        // Positions only move forward: an early delivery may be past it.
                        self.receipts.start_at(cursor);
                        self.log(
                            LogLevel::Debug,
                            format!("subscribed as {} from seq {}", user.handle, cursor.0),
                        );
                        self.send(success("subscribe", id, json!({})));
                        for event in std::mem::take(&mut self.early) {
                            self.on_event(event);
                        }
                    }
                    Ok(other) => self.unexpected(&other),
                    Err(error) => self.subscribe_failed(id, error),
                }
            }
            Purpose::Request { kind, id } => self.on_request_answer(kind, id, result),
        }
    }

    fn on_request_answer(
        &mut self,
        kind: &'static str,
        id: Option<Value>,
        result: Result<Answer, CoreError>,
    ) {
        match result {
            Err(error) => {
                let code = RespCode::from_core(&error);
                self.refuse(Refusal {
                    reply_type: kind.into(),
                    code,
                    detail: error.to_string(),
                    id,
                });
            }
            Ok(answer) => match (kind, answer) {
                ("call.start", Answer::Call { call }) => {
                    self.send(success(
                        "call.start",
                        id,
                        json!({ "call": call.0.to_string() }),
                    ));
                }
                ("contacts", Answer::Contacts(entries)) => {
                    let list: Vec<Value> = entries
                        .iter()
                        .map(|e| {
                            json!({
                                "user": e.user.handle,
                                "state": format!("{:?}", e.state).to_lowercase(),
                                "online": e.online,
                            })
                        })
                        .collect();
                    self.send(success("contacts", id, json!({ "contacts": list })));
                }
                ("room.join" | "room.leave", answer) => {
                    let mut extra = json!({});
                    if let Answer::Room(room) = answer {
                        extra = json!({ "dest": format!("#{}", room.name) });
                    }
                    self.send(success(kind, id, extra));
                }
                (call, _) if call.starts_with("call.") => {
                    self.send(success(kind, id, json!({})));
                }
                (_, answer) => {
                    // Spec messages get no reply of their own; a client that sent an "id"
                    // gets an "ack" once the hub has stored the event (hub extension).
                    if let Some(id) = id {
                        let event = match answer {
                            Answer::Accepted { event } => Some(event.0),
                            _ => None,
                        };
                        self.send_text(crate::render::ack_text(kind, &id, event));
                    }
                }
            },
        }
    }

    fn subscribe_failed(&mut self, id: Option<Value>, error: CoreError) {
        self.subscribing = false;
        self.early.clear();
        let code = RespCode::from_core(&error);
        self.refuse(Refusal {
            reply_type: "subscribe".into(),
            code,
            detail: error.to_string(),
            id,
        });
        // The spec: a bad token is answered with code 1, then the client is
        // disconnected. Other failures (the hub's own) leave the connection open.
        if code == RespCode::BadToken {
            self.close(1008, "subscribe refused");
        }
    }

    fn unexpected(&mut self, answer: &Answer) {
        self.log(
            LogLevel::Error,
            format!("unexpected core answer {answer:?}"),
        );
        self.send(json!({"type": "error", "resp_code": RespCode::Internal as u8, "error": "internal error"}));
    }

    /// Replies to signup and signin. Real clients expect every signin reply to say
    /// `"type": "signup"` (WIRE-FACTS), so both do; the extra `request` field tells a
    /// spec-following client which request it answers.
    fn on_account_answer(
        &mut self,
        request: &str,
        id: Option<Value>,
        result: Result<Answer, CoreError>,
    ) {
        let mut reply = match result {
            Ok(Answer::Session { token, .. }) => success("signup", id, json!({ "session": token })),
            Ok(other) => return self.unexpected(&other),
            Err(error) => {
                self.log(LogLevel::Debug, format!("{request} refused: {error}"));
                refusal_object(&Refusal {
                    reply_type: "signup".into(),
                    code: RespCode::from_core(&error),
                    detail: error.to_string(),
                    id,
                })
            }
        };
        reply["request"] = json!(request);
        self.send(reply);
    }

    fn on_event(&mut self, event: HubEvent) {
        if self.binding && matches!(event, HubEvent::Deliver(_) | HubEvent::Presence { .. }) {
            self.early.push(event);
            return;
        }
        match event {
            HubEvent::Answer { id, result } => self.on_answer(id, result),
            HubEvent::Deliver(delivery) => {
                match event_text(&delivery.event) {
                    Ok(text) => self.send_text(text),
                    Err(why) => self.log(
                        LogLevel::Warn,
                        format!("event {} not shown: {why}", delivery.event.id.0),
                    ),
                }
                self.receipts.delivered(delivery.seq);
                self.ping_for_receipt();
            }
            HubEvent::Presence { user, online } => self.send(presence_object(&user, online)),
            HubEvent::Shutdown => self.close(1001, "server shutting down"),
            HubEvent::Kicked { reason } => {
                self.send(json!({"type": "error", "resp_code": RespCode::Overloaded as u8, "error": reason}));
                self.close(1013, "dropped by the server");
            }
            // JSON clients are room members, never merely present: rooms reach them
            // through their stream.
            HubEvent::RoomDeliver(_)
            | HubEvent::KeyStep { .. }
            | HubEvent::RoomKicked { .. }
            | HubEvent::PuppetDeliver { .. }
            | HubEvent::Signal { .. } => {}
        }
    }

    /// Asks the client for a pong carrying the last delivered seq (one ping in flight).
    fn ping_for_receipt(&mut self) {
        if let Some(payload) = self.receipts.poll_ping(self.now_ms) {
            self.out
                .push_back(Output::Transmit(Transmit::Message(WsMessage::Ping(
                    payload,
                ))));
        }
    }

    fn on_pong(&mut self, payload: &[u8]) {
        if let Some(through) = self.receipts.on_pong(payload) {
            self.fire_and_forget(Op::Ack { through });
        }
        self.ping_for_receipt();
    }
}

/// Request kinds that act as a signed-in user.
const KNOWN_ACTIONS: &[&str] = &[
    "invite.request",
    "invite.accept",
    "invite.reject",
    "message",
    "key_exchange.initiate",
    "key_exchange.responder",
    "room.join",
    "room.leave",
    "contacts",
    "call.start",
    "call.accept",
    "call.reject",
    "call.signal",
    "call.hangup",
];

/// `#name` is a room, anything else a user's handle.
fn destination(dest: &str) -> Address {
    match dest.strip_prefix('#') {
        Some(room) => Address::Room(room.to_owned()),
        None => Address::Handle(dest.to_owned()),
    }
}

/// The request as forwarded to the recipient: everything but `session` and `id`.
fn forwardable(request: &Request) -> Vec<u8> {
    let mut body = request.body.to_map();
    body.remove("session");
    body.remove("id");
    crate::render::to_text(&Value::Object(body)).into_bytes()
}

fn call_id(request: &Request) -> Result<CallId, Refusal> {
    let parsed = match request.body.get("call") {
        Some(Value::String(s)) => s.parse().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    parsed
        .map(CallId)
        .ok_or_else(|| request.refuse(RespCode::Malformed, "missing call id \"call\""))
}

fn call_data(request: &Request) -> Vec<u8> {
    request
        .body
        .get("data")
        .map(|d| crate::render::to_text(&d).into_bytes())
        .unwrap_or_default()
}

impl Session for JsonSession {
    fn handle_input(&mut self, now: Now, input: Input) {
        self.now_ms = now.mono_ms;
        match input {
            Input::Opened => {
                self.deadline = Some(now.mono_ms + self.config.handshake_timeout_ms);
            }
            Input::Message(WsMessage::Text(text)) => {
                if !self.closed {
                    self.on_text(text);
                }
            }
            Input::Message(WsMessage::Pong(payload)) => self.on_pong(&payload),
            Input::Message(WsMessage::Binary(_)) => self.refuse(Refusal {
                reply_type: "error".into(),
                code: RespCode::Malformed,
                detail: "binary frames are not accepted: send JSON in text frames".into(),
                id: None,
            }),
            Input::Message(WsMessage::Ping(_)) => {}
            Input::Event(event) => self.on_event(event),
            Input::Timeout => {
                if !self.closed {
                    self.ping_for_receipt();
                }
                if self.deadline.is_some_and(|d| d <= now.mono_ms) {
                    self.deadline = None;
                    self.refuse(Refusal {
                        reply_type: "error".into(),
                        code: RespCode::BadToken,
                        detail: "no subscribe in time".into(),
                        id: None,
                    });
                    self.close(1008, "no subscribe in time");
                }
            }
            Input::TooLarge { limit } => {
                self.refuse(Refusal {
                    reply_type: "error".into(),
                    code: RespCode::TooLarge,
                    detail: format!("frame larger than {limit} bytes"),
                    id: None,
                });
                self.close(1009, "frame too large");
            }
            Input::Closed { .. } => {
                // Not a proof of receipt, even when clean: a client's close frame can cross
                // events still in flight, which the client then never reads. What was not
                // acknowledged by a pong is delivered again on the next subscribe.
                self.closed = true;
            }
            Input::Bytes(_) | Input::Request(_) | Input::Fetched { .. } => {
                self.log(LogLevel::Error, "JSON plugin fed a non-WebSocket input");
                self.close(1011, "internal error");
            }
        }
    }

    fn poll_output(&mut self) -> Output {
        let next = match (self.deadline, self.receipts.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.out.pop_front().unwrap_or(Output::Timeout(next))
    }
}
