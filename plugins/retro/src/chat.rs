//! One Retro chat-server connection as a sans-IO state machine.
//!
//! ```text
//!  Anonymous ──REGISTER(regkey)──▶ [CheckRegkey, ReserveUserId] ──SUCCESS(id)──▶
//!  AwaitPubkey{regkey,id} ──PUBKEY(pems) | REGISTER(pems)──▶ [RegisterWithKeys] ──SUCCESS──▶ Anonymous
//!  Anonymous ──HELLO(id,nonce,sig)──▶ [PublicKeys, verify, UseNonce, Bind exclusive] ──SUCCESS──▶ LoggedIn
//!  LoggedIn: GET_PUBKEY, FRIENDS, CHATMSG, FILEMSG, calls, GOODBYE
//! ```
//!
//! Packets that need several core answers (REGISTER, PUBKEY, HELLO, GET_PUBKEY, FRIENDS)
//! run one at a time, the others wait in a bounded queue, so replies keep request order.
//! Every reply carries the version of the packet it answers; pushed packets carry the
//! version of the client's latest packet.

use crate::frame::{Decoder, Kind, Packet};
use crate::keys::{parse_pubkey_payload, verify, KIND_ED25519, KIND_PEM};
use crate::outbox::Outbox;
use crate::Config;
use hub_plugin_sdk::{
    Address, Answer, CallId, CallNotice, Content, CoreError, CorrelationId, Delivery, EventBody,
    HubEvent, Input, LogLevel, Now, Op, Output, PublicKey, Seq, Session, UserId, UserStatus,
};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Sealed-content scheme of a CHATMSG (header ‖ signature ‖ body, after from/to).
pub const SCHEME_CHAT: &str = "retro/chatmsg";
/// Sealed-content scheme of a FILEMSG.
pub const SCHEME_FILE: &str = "retro/filemsg";

/// Length of a HELLO payload: user id, nonce, Ed25519 signature.
const HELLO_LEN: usize = 8 + 32 + 64;
/// from(8) ‖ to(8) ‖ header(256) ‖ signature(64): the fixed part of CHATMSG/FILEMSG.
const MSG_FIXED: usize = 8 + 8 + 256 + 64;

#[derive(Debug)]
enum State {
    Anonymous,
    AwaitPubkey { regkey: Vec<u8>, user: UserId },
    LoggedIn { user: UserId },
}

/// The serialized operation in progress and what its next answer means.
#[derive(Debug)]
enum Step {
    RegisterCheck {
        regkey: Vec<u8>,
    },
    RegisterReserve {
        regkey: Vec<u8>,
    },
    RegisterKeys,
    HelloKeys {
        user: UserId,
        nonce: Vec<u8>,
        signature: Vec<u8>,
    },
    HelloNonce {
        user: UserId,
    },
    HelloBind {
        user: UserId,
    },
    GetPubkey {
        friend: UserId,
    },
    GetPubkeyStatus {
        friend: UserId,
        reply: Vec<u8>,
    },
    Friends,
}

/// Answers that are not part of a serialized step.
#[derive(Debug)]
enum Detached {
    Send,
    CallStart { peer: UserId },
    CallOp,
}

/// One Retro chat-server session.
pub struct ChatSession {
    config: Arc<Config>,
    decoder: Decoder,
    io: Outbox,
    version: u16,
    state: State,
    queue: VecDeque<Packet>,
    step: Option<(u64, u16, Step)>,
    detached: HashMap<u64, (u16, Detached)>,
    binding: bool,
    early: Vec<HubEvent>,
    delivered_through: Seq,
    acked_through: Seq,
    calls: HashMap<UserId, CallId>,
    deadline: Option<u64>,
    /// The hub's monotonic clock at the latest input (deadlines are absolute on it).
    now_ms: u64,
}

fn user_id(bytes: &[u8]) -> Option<UserId> {
    bytes
        .get(..8)?
        .try_into()
        .ok()
        .map(u64::from_be_bytes)
        .map(UserId)
}

impl ChatSession {
    /// A new session.
    pub fn new(config: Arc<Config>) -> Self {
        ChatSession {
            decoder: Decoder::new(config.max_payload),
            config,
            io: Outbox::new(),
            version: 1,
            state: State::Anonymous,
            queue: VecDeque::new(),
            step: None,
            detached: HashMap::new(),
            binding: false,
            early: Vec::new(),
            delivered_through: Seq(0),
            acked_through: Seq(0),
            calls: HashMap::new(),
            deadline: None,
            now_ms: 0,
        }
    }

    fn me(&self) -> Option<UserId> {
        match self.state {
            State::LoggedIn { user } => Some(user),
            _ => None,
        }
    }

    fn start_step(&mut self, version: u16, op: Op, step: Step) {
        let id = self.io.command(op);
        self.step = Some((id, version, step));
    }

    fn detach(&mut self, version: u16, op: Op, what: Detached) {
        let id = self.io.command(op);
        self.detached.insert(id, (version, what));
    }

    fn on_bytes(&mut self, now: Now, bytes: &[u8]) {
        self.decoder.push(bytes);
        loop {
            if self.io.closed {
                return;
            }
            match self.decoder.next_packet() {
                Ok(Some(packet)) => {
                    if self.queue.len() >= self.config.max_queue {
                        self.io.error(packet.version, "too many requests in flight");
                        return self.io.close("request queue full");
                    }
                    self.queue.push_back(packet);
                }
                Ok(None) => break,
                Err(error) => return self.io.frame_error(error),
            }
        }
        self.run_queue(now);
    }

    fn run_queue(&mut self, now: Now) {
        while self.step.is_none() && !self.io.closed {
            let Some(packet) = self.queue.pop_front() else {
                break;
            };
            self.on_packet(now, packet);
        }
    }

    fn on_packet(&mut self, now: Now, packet: Packet) {
        self.version = packet.version;
        let version = packet.version;
        // DESIGN's rule where a protocol has no acknowledgement of its own: a packet the
        // client sends after events were written proves they arrived.
        if self.delivered_through > self.acked_through {
            self.acked_through = self.delivered_through;
            self.io.fire_and_forget(Op::Ack {
                through: self.delivered_through,
            });
        }
        let Some(kind) = Kind::from_wire(packet.kind) else {
            return self
                .io
                .error(version, &format!("unknown packet type {}", packet.kind));
        };
        let payload = packet.payload;
        match (&self.state, kind) {
            (_, Kind::Goodbye) => self.io.close("goodbye"),
            (State::Anonymous, Kind::Register) => {
                if payload.len() != 32 {
                    return self
                        .io
                        .error(version, "REGISTER carries a 32-byte registration key");
                }
                self.start_step(
                    version,
                    Op::CheckRegkey {
                        regkey: payload.clone(),
                    },
                    Step::RegisterCheck { regkey: payload },
                );
            }
            (State::AwaitPubkey { .. }, Kind::Pubkey | Kind::Register) => {
                self.register_keys(version, &payload)
            }
            (State::Anonymous, Kind::Pubkey) => self.io.error(version, "PUBKEY before REGISTER"),
            (State::AwaitPubkey { .. }, _) => self
                .io
                .error(version, "registration in progress: send PUBKEY"),
            (State::Anonymous, Kind::Hello) => self.hello(version, &payload),
            (State::Anonymous, _) => self.io.error(version, "not logged in"),
            (State::LoggedIn { .. }, Kind::Hello | Kind::Register | Kind::Pubkey) => {
                self.io.error(version, "already logged in")
            }
            (State::LoggedIn { user }, kind) => {
                let user = *user;
                self.logged_in(now, version, user, kind, payload)
            }
        }
    }

    fn register_keys(&mut self, version: u16, payload: &[u8]) {
        let State::AwaitPubkey { regkey, user } = &self.state else {
            return;
        };
        let (regkey, user) = (regkey.clone(), *user);
        let keys = match parse_pubkey_payload(payload) {
            Ok(keys) => keys,
            Err(why) => return self.io.error(version, &why),
        };
        let op = Op::RegisterWithKeys {
            regkey,
            user,
            handle: format!("retro-{:016x}", user.0),
            keys: vec![
                PublicKey {
                    kind: KIND_PEM.into(),
                    bytes: keys.pem,
                },
                PublicKey {
                    kind: KIND_ED25519.into(),
                    bytes: keys.ed25519.to_vec(),
                },
            ],
        };
        self.start_step(version, op, Step::RegisterKeys);
    }

    fn hello(&mut self, version: u16, payload: &[u8]) {
        if payload.len() != HELLO_LEN {
            return self.io.error(
                version,
                &format!(
                    "HELLO payload must be {HELLO_LEN} bytes, not {}",
                    payload.len()
                ),
            );
        }
        let Some(user) = user_id(payload) else { return };
        let step = Step::HelloKeys {
            user,
            nonce: payload[8..40].to_vec(),
            signature: payload[40..].to_vec(),
        };
        self.start_step(version, Op::PublicKeys { user }, step);
    }

    fn logged_in(&mut self, _now: Now, version: u16, me: UserId, kind: Kind, payload: Vec<u8>) {
        match kind {
            Kind::GetPubkey => {
                let Some(friend) = user_id(&payload).filter(|_| payload.len() == 8) else {
                    return self
                        .io
                        .error(version, "GET_PUBKEY carries an 8-byte user id");
                };
                self.start_step(
                    version,
                    Op::PublicKeys { user: friend },
                    Step::GetPubkey { friend },
                );
            }
            Kind::Friends => {
                if !payload.len().is_multiple_of(8) {
                    return self.io.error(version, "FRIENDS carries 8-byte user ids");
                }
                let users: Vec<UserId> = payload.chunks(8).filter_map(user_id).collect();
                // Friends of a Retro user are contacts: they see each other's presence.
                for friend in &users {
                    if *friend != me {
                        self.io.fire_and_forget(Op::Befriend {
                            to: Address::User(*friend),
                        });
                    }
                }
                self.start_step(version, Op::Status { users }, Step::Friends);
            }
            Kind::ChatMsg | Kind::FileMsg => {
                if payload.len() < MSG_FIXED {
                    return self.io.error(
                        version,
                        &format!("message shorter than its {MSG_FIXED}-byte fixed part"),
                    );
                }
                let (Some(from), Some(to)) = (user_id(&payload), user_id(&payload[8..])) else {
                    return;
                };
                if from != me {
                    return self.io.error(version, "from is not the logged-in user");
                }
                let scheme = if kind == Kind::ChatMsg {
                    SCHEME_CHAT
                } else {
                    SCHEME_FILE
                };
                let op = Op::Send {
                    to: Address::User(to),
                    content: Content::Sealed {
                        scheme: scheme.into(),
                        bytes: payload[16..].to_vec(),
                    },
                };
                self.detach(version, op, Detached::Send);
            }
            Kind::StartCall | Kind::StopCall | Kind::RejectCall | Kind::AcceptCall => {
                self.call(version, me, kind, &payload)
            }
            Kind::FileUpload | Kind::FileDownload => self
                .io
                .error(version, "file transfers go to the file server"),
            Kind::Success
            | Kind::Error
            | Kind::FriendOnline
            | Kind::FriendOffline
            | Kind::FriendUnknown => self
                .io
                .error(version, "a client does not send this packet type"),
            Kind::Hello | Kind::Register | Kind::Pubkey | Kind::Goodbye => {}
        }
    }

    fn call(&mut self, version: u16, me: UserId, kind: Kind, payload: &[u8]) {
        let (Some(from), Some(peer)) = (user_id(payload), payload.get(8..).and_then(user_id))
        else {
            return self
                .io
                .error(version, "call packets start with from(8) and to(8)");
        };
        if from != me {
            return self.io.error(version, "from is not the logged-in user");
        }
        let data = payload[16..].to_vec();
        if kind == Kind::StartCall {
            let op = Op::CallStart {
                to: Address::User(peer),
                data,
            };
            return self.detach(version, op, Detached::CallStart { peer });
        }
        let Some(call) = self.calls.get(&peer).copied() else {
            return self.io.error(version, "no call with that user");
        };
        let op = match kind {
            Kind::AcceptCall => Op::CallReply {
                call,
                accept: true,
                data,
            },
            Kind::RejectCall => Op::CallReply {
                call,
                accept: false,
                data,
            },
            _ => Op::CallHangup { call },
        };
        if kind != Kind::AcceptCall {
            self.calls.remove(&peer);
        }
        self.detach(version, op, Detached::CallOp);
    }

    fn on_answer(&mut self, now: Now, id: CorrelationId, result: Result<Answer, CoreError>) {
        if let Some((version, what)) = self.detached.remove(&id.0) {
            return self.on_detached(version, what, result);
        }
        let Some((step_id, version, step)) = self.step.take() else {
            return;
        };
        if step_id != id.0 {
            self.step = Some((step_id, version, step));
            return;
        }
        self.on_step(version, step, result);
        self.run_queue(now);
    }

    fn on_step(&mut self, version: u16, step: Step, result: Result<Answer, CoreError>) {
        match (step, result) {
            (Step::RegisterCheck { regkey }, Ok(_)) => {
                self.start_step(version, Op::ReserveUserId, Step::RegisterReserve { regkey });
            }
            (Step::RegisterReserve { regkey }, Ok(Answer::Reserved { user })) => {
                self.state = State::AwaitPubkey { regkey, user };
                self.deadline = Some(self.now_ms + self.config.register_timeout_ms);
                self.io
                    .packet(version, Kind::Success, &user.0.to_be_bytes());
            }
            (Step::RegisterKeys, Ok(_)) => {
                self.state = State::Anonymous;
                self.deadline = Some(self.now_ms + self.config.login_timeout_ms);
                self.io.packet(version, Kind::Success, &[]);
            }
            (
                Step::HelloKeys {
                    user,
                    nonce,
                    signature,
                },
                Ok(Answer::Keys(keys)),
            ) => {
                let ed25519 = keys.iter().find(|k| k.kind == KIND_ED25519);
                match ed25519 {
                    Some(key) if verify(&key.bytes, &nonce, &signature) => {
                        self.start_step(
                            version,
                            Op::UseNonce { user, nonce },
                            Step::HelloNonce { user },
                        );
                    }
                    Some(_) => self.io.error(version, "signature verification failed"),
                    None => self.io.error(version, "unknown user"),
                }
            }
            (Step::HelloNonce { user }, Ok(_)) => {
                self.binding = true;
                self.start_step(
                    version,
                    Op::Bind {
                        user,
                        exclusive: true,
                        resume_after: None,
                    },
                    Step::HelloBind { user },
                );
            }
            (Step::HelloBind { user }, Ok(Answer::Bound { cursor, .. })) => {
                self.binding = false;
                self.state = State::LoggedIn { user };
                self.deadline = None;
                self.delivered_through = self.delivered_through.max(cursor);
                self.acked_through = self.acked_through.max(cursor);
                self.io.packet(version, Kind::Success, &[]);
                for event in std::mem::take(&mut self.early) {
                    self.on_event(event);
                }
            }
            (Step::GetPubkey { friend }, Ok(Answer::Keys(keys))) => {
                let Some(pem) = keys.into_iter().find(|k| k.kind == KIND_PEM) else {
                    return self.io.error(version, "that user has no Retro keys");
                };
                let mut reply = friend.0.to_be_bytes().to_vec();
                reply.extend_from_slice(&pem.bytes);
                self.io.fire_and_forget(Op::Befriend {
                    to: Address::User(friend),
                });
                self.start_step(
                    version,
                    Op::Status {
                        users: vec![friend],
                    },
                    Step::GetPubkeyStatus { friend, reply },
                );
            }
            (Step::GetPubkeyStatus { friend, reply }, Ok(Answer::Statuses(statuses))) => {
                self.io.packet(version, Kind::Pubkey, &reply);
                let status = statuses
                    .first()
                    .copied()
                    .unwrap_or(UserStatus::Unknown(friend));
                self.status_packet(version, status);
            }
            (Step::Friends, Ok(Answer::Statuses(statuses))) => {
                for status in statuses {
                    self.status_packet(version, status);
                }
            }
            (step, Err(error)) => self.step_failed(version, step, &error),
            (step, Ok(answer)) => {
                self.io.log(
                    LogLevel::Error,
                    format!("unexpected core answer {answer:?} in {step:?}"),
                );
                self.io.error(version, "internal error");
            }
        }
    }

    fn step_failed(&mut self, version: u16, step: Step, error: &CoreError) {
        let text = match (&step, error) {
            (Step::RegisterCheck { .. } | Step::RegisterKeys, CoreError::BadRegkey) => {
                "invalid registration key".to_owned()
            }
            (Step::HelloKeys { .. }, CoreError::NoSuchUser) => "unknown user".to_owned(),
            (Step::HelloNonce { .. }, CoreError::Replay) => "nonce already used".to_owned(),
            (Step::HelloBind { .. }, CoreError::AlreadyConnected) => {
                "already logged in elsewhere".to_owned()
            }
            (Step::GetPubkey { .. }, CoreError::NoSuchUser) => "unknown user".to_owned(),
            (_, error) => error.to_string(),
        };
        if matches!(step, Step::HelloBind { .. }) {
            self.binding = false;
            self.early.clear();
        }
        if matches!(step, Step::RegisterKeys) {
            // The key was not spent; the client may try again with a new REGISTER.
            self.state = State::Anonymous;
        }
        self.io.error(version, &text);
    }

    fn on_detached(&mut self, version: u16, what: Detached, result: Result<Answer, CoreError>) {
        match (what, result) {
            (Detached::CallStart { peer }, Ok(Answer::Call { call })) => {
                self.calls.insert(peer, call);
            }
            (_, Ok(_)) => {}
            (Detached::Send, Err(CoreError::NoSuchUser)) => {
                self.io.error(version, "unknown recipient")
            }
            (Detached::CallStart { .. }, Err(CoreError::Offline | CoreError::NoSuchUser)) => {
                self.io.error(version, "user offline")
            }
            (Detached::CallStart { .. }, Err(CoreError::Busy)) => {
                self.io.error(version, "user busy")
            }
            (_, Err(error)) => self.io.error(version, &error.to_string()),
        }
    }

    fn status_packet(&mut self, version: u16, status: UserStatus) {
        let (kind, user) = match status {
            UserStatus::Online(user) => (Kind::FriendOnline, user),
            UserStatus::Offline(user) => (Kind::FriendOffline, user),
            UserStatus::Unknown(user) => (Kind::FriendUnknown, user),
        };
        self.io.packet(version, kind, &user.0.to_be_bytes());
    }

    fn on_event(&mut self, event: HubEvent) {
        if self.binding && matches!(event, HubEvent::Deliver(_) | HubEvent::Presence { .. }) {
            self.early.push(event);
            return;
        }
        let version = self.version;
        match event {
            HubEvent::Answer { .. } => {}
            HubEvent::Deliver(delivery) => {
                self.deliver(version, &delivery);
                self.delivered_through = self.delivered_through.max(delivery.seq);
            }
            HubEvent::Presence { user, online } => {
                let kind = if online {
                    Kind::FriendOnline
                } else {
                    Kind::FriendOffline
                };
                self.io.packet(version, kind, &user.id.0.to_be_bytes());
            }
            HubEvent::Shutdown => self.io.close("server shutting down"),
            HubEvent::Kicked { reason } => {
                self.io.error(version, &reason);
                self.io.close("dropped by the server");
            }
            // Retro has no rooms of live members; it never enters one.
            HubEvent::RoomDeliver(_)
            | HubEvent::KeyStep { .. }
            | HubEvent::RoomKicked { .. }
            | HubEvent::PuppetDeliver { .. }
            | HubEvent::Signal { .. } => {}
        }
    }

    fn deliver(&mut self, version: u16, delivery: &Delivery) {
        let Some(me) = self.me() else { return };
        let event = &delivery.event;
        let mut payload = event.from.id.0.to_be_bytes().to_vec();
        payload.extend_from_slice(&me.0.to_be_bytes());
        match &event.body {
            EventBody::Message(Content::Sealed { scheme, bytes }) if scheme == SCHEME_CHAT || scheme == SCHEME_FILE => {
                payload.extend_from_slice(bytes);
                let kind = if scheme == SCHEME_CHAT { Kind::ChatMsg } else { Kind::FileMsg };
                self.io.packet(version, kind, &payload);
            }
            EventBody::Call { call, notice } => {
                let peer = event.from.id;
                let (kind, data) = match notice {
                    CallNotice::Ring { data } => {
                        self.calls.insert(peer, *call);
                        (Kind::StartCall, data.as_slice())
                    }
                    CallNotice::Accepted { data } => (Kind::AcceptCall, data.as_slice()),
                    CallNotice::Rejected => (Kind::RejectCall, &[][..]),
                    CallNotice::Ended | CallNotice::Missed => (Kind::StopCall, &[][..]),
                    CallNotice::Signal { .. } => {
                        return self.io.log(LogLevel::Debug, "call signal data has no Retro packet; dropped".into())
                    }
                };
                if !matches!(kind, Kind::StartCall | Kind::AcceptCall) {
                    self.calls.retain(|_, c| c != call);
                }
                payload.extend_from_slice(data);
                self.io.packet(version, kind, &payload);
            }
            EventBody::Message(_) => self.io.log(LogLevel::Warn, format!(
                    "event {} from {} is not Retro-sealed content; bridging it to Retro is not implemented yet",
                    event.id.0, event.from.handle
                )),
            EventBody::Contact(_) | EventBody::Room(_) => {}
        }
    }
}

impl Session for ChatSession {
    fn handle_input(&mut self, now: Now, input: Input) {
        self.now_ms = now.mono_ms;
        match input {
            Input::Opened => self.deadline = Some(now.mono_ms + self.config.login_timeout_ms),
            Input::Bytes(bytes) => {
                if !self.io.closed {
                    self.on_bytes(now, &bytes);
                }
            }
            Input::Event(HubEvent::Answer { id, result }) => self.on_answer(now, id, result),
            Input::Event(event) => self.on_event(event),
            Input::Timeout => {
                if let Some(deadline) = self.deadline {
                    if deadline <= now.mono_ms {
                        self.deadline = None;
                        if self.me().is_none() {
                            let version = self.version;
                            self.io.error(version, "login timeout");
                            self.io.close("no login in time");
                        }
                    }
                }
            }
            Input::Closed { .. } => self.io.closed = true,
            Input::TooLarge { .. }
            | Input::Message(_)
            | Input::Request(_)
            | Input::Fetched { .. } => {
                self.io.log(
                    LogLevel::Error,
                    "Retro plugin fed a non-stream input".into(),
                );
                self.io.close("internal error");
            }
        }
    }

    fn poll_output(&mut self) -> Output {
        self.io.poll(self.deadline)
    }
}
