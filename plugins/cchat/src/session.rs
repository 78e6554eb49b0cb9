//! One cchat connection as a sans-IO state machine.
//!
//! ```text
//!   Opened ──▶ ExpectJoin ──join──▶ Joining (Alias → Authenticate → EnterRoom)
//!                 │                    │ refused: error, close
//!      join timeout: 0x7, close        ▼
//!                                   InRoom ──leave──▶ Leaving ──▶ 0x0, close
//!                                      │ kicked: 0x6, shutdown: 0xc; close
//! ```
//!
//! In the room, every `keyxchg_1` sent waits in `steps` for its `keyxchg_2` (answers
//! come in order). The client's key is ready once it has answered them all and the last
//! was a final step; only then are its `message_0`s sent on. Events that overtake the
//! answer to `EnterRoom` wait in `early`, so `keyxchg_0` always comes first.

use crate::group::{Group, GENERATOR};
use crate::wire::{self, ErrCode, Refusal, Request};
use crate::{Config, SCHEME_MESSAGE};
use hub_plugin_sdk::{
    fire_and_forget, Address, Answer, Awaiting, CloseReason, Content, CoreError, CorrelationId,
    Delivery, HubEvent, Input, KeyAgreement, KeyStep, LogLevel, Now, Op, Output, OutputQueue,
    Session, Transmit, UserRef, WsMessage,
};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;

/// What an outstanding command was for.
#[derive(Debug)]
enum Purpose {
    Alias,
    Authenticate,
    Enter,
    Send,
    Exit,
}

/// Where the connection is.
#[derive(Debug)]
enum State {
    /// Waiting for `join`.
    ExpectJoin,
    /// `join` received; the core is making the identity and entering the room.
    Joining { room: String },
    /// Present in the room.
    InRoom { room: String },
    /// `leave` received; waiting for the core to confirm.
    Leaving,
    /// Closed or closing: nothing more is sent.
    Closed,
}

/// Events that may arrive before the answer to `EnterRoom` (bounded).
const EARLY_LIMIT: usize = 4096;

/// One cchat session.
pub struct CchatSession {
    config: Arc<Config>,
    group: Arc<Group>,
    out: OutputQueue,
    state: State,
    inflight: Awaiting<Purpose>,
    /// `message_0`s sent to the core and not yet answered.
    sends: usize,
    /// For each `keyxchg_1` sent and not answered: was it a final step?
    steps: VecDeque<bool>,
    /// Every step answered, the last one final.
    key_ready: bool,
    /// The join acknowledgement waits for the first `keyxchg_1`.
    ack_pending: bool,
    early: Vec<HubEvent>,
    /// The client's last message was binary: answer in binary.
    binary: bool,
    join_deadline: Option<u64>,
}

impl CchatSession {
    /// A new session.
    pub fn new(config: Arc<Config>, group: Arc<Group>) -> Self {
        CchatSession {
            config,
            group,
            out: OutputQueue::new(),
            state: State::ExpectJoin,
            inflight: Awaiting::new(),
            sends: 0,
            steps: VecDeque::new(),
            key_ready: false,
            ack_pending: false,
            early: Vec::new(),
            binary: false,
            join_deadline: None,
        }
    }

    fn send(&mut self, value: Value) {
        if matches!(self.state, State::Closed) {
            return;
        }
        let text = value.to_string();
        let message = if self.binary {
            WsMessage::Binary(text.into_bytes())
        } else {
            WsMessage::Text(text)
        };
        self.out
            .push_back(Output::Transmit(Transmit::Message(message)));
    }

    fn error(&mut self, code: ErrCode, detail: &str) {
        self.send(wire::error(code, detail));
    }

    fn log(&mut self, level: LogLevel, message: impl Into<String>) {
        self.out.push_back(Output::Log {
            level,
            message: message.into(),
        });
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.log(
            LogLevel::Debug,
            format!("refused with {}: {}", refusal.code.text(), refusal.detail),
        );
        self.error(refusal.code, &refusal.detail);
    }

    /// Sends a last error and closes.
    fn close_with(&mut self, code: ErrCode, detail: &str, close_code: u16) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.error(code, detail);
        self.state = State::Closed;
        self.out.push_back(Output::Close(CloseReason {
            code: Some(close_code),
            reason: detail.into(),
        }));
    }

    fn command(&mut self, op: Op, purpose: Purpose) {
        let output = self.inflight.command(op, purpose);
        self.out.push_back(output);
    }

    fn fire_and_forget(&mut self, op: Op) {
        self.out.push_back(fire_and_forget(op));
    }

    /// The room the client joined (or is joining).
    fn room(&self) -> Option<&str> {
        match &self.state {
            State::Joining { room } | State::InRoom { room } => Some(room),
            _ => None,
        }
    }

    fn on_message(&mut self, bytes: &[u8]) {
        match wire::parse(bytes) {
            Ok(request) => self.on_request(request),
            Err(refusal) => self.refuse(refusal),
        }
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Join {
                client_id,
                chatroom,
            } => {
                if !matches!(self.state, State::ExpectJoin) {
                    return self.refuse(Refusal::new(
                        ErrCode::Malformed,
                        "this connection already joined a chat room",
                    ));
                }
                self.log(
                    LogLevel::Debug,
                    format!("client {client_id} joins room {chatroom}"),
                );
                self.state = State::Joining { room: chatroom };
                self.join_deadline = None;
                let handles = vec![
                    format!("cchat-{}", &client_id[..12]),
                    format!("cchat-{client_id}"),
                ];
                self.command(
                    Op::Alias {
                        namespace: "cchat".into(),
                        native: client_id,
                        handles,
                    },
                    Purpose::Alias,
                );
            }
            Request::KeyReply { intermediate } => self.on_key_reply(&intermediate),
            Request::Message { object, content } => self.on_chat(object, &content),
            Request::Leave => match &self.state {
                State::ExpectJoin => {
                    self.refuse(Refusal::new(ErrCode::NotJoined, "not in a chat room"))
                }
                State::Joining { .. } => {
                    // Not in the room yet: closing leaves whatever the core has begun.
                    self.close_with(ErrCode::Ok, "left", 1000)
                }
                State::InRoom { room } => {
                    let room = room.clone();
                    self.state = State::Leaving;
                    self.command(Op::ExitRoom { room }, Purpose::Exit);
                }
                State::Leaving | State::Closed => {}
            },
        }
    }

    fn on_key_reply(&mut self, hex: &str) {
        let Some(room) = self.room().map(str::to_owned) else {
            return self.refuse(Refusal::new(ErrCode::NotJoined, "not in a chat room"));
        };
        let Some(was_final) = self.steps.pop_front() else {
            return self.refuse(Refusal::new(
                ErrCode::Malformed,
                "keyxchg_2 answers no keyxchg_1",
            ));
        };
        let intermediate = if was_final {
            Vec::new()
        } else {
            match wire::intermediate_bytes(hex).filter(|v| self.group.in_range(v)) {
                Some(value) => value,
                None => {
                    self.log(
                        LogLevel::Warn,
                        "invalid key intermediate: removed from the room",
                    );
                    self.fire_and_forget(Op::ExitRoom { room });
                    return self.close_with(
                        ErrCode::Kicked,
                        "kicked: the key intermediate is not a hex number between 1 and P-1",
                        1008,
                    );
                }
            }
        };
        if was_final && self.steps.is_empty() {
            self.key_ready = true;
        }
        self.fire_and_forget(Op::KeyReply { room, intermediate });
    }

    fn on_chat(&mut self, object: serde_json::Map<String, Value>, content: &str) {
        let room = match &self.state {
            State::ExpectJoin => {
                return self.refuse(Refusal::new(ErrCode::NotJoined, "not in a chat room"))
            }
            State::InRoom { room } if self.key_ready => room.clone(),
            State::Joining { .. } | State::InRoom { .. } => {
                return self.refuse(Refusal::new(
                    ErrCode::KeyUnfinished,
                    "key negotiation not finished",
                ))
            }
            State::Leaving | State::Closed => return,
        };
        if self.sends >= self.config.max_pending {
            return self.refuse(Refusal::new(
                ErrCode::Refused,
                "too many messages in flight; slow down",
            ));
        }
        self.sends += 1;
        let fallback = wire::readable(content);
        let bytes = Value::Object(object).to_string().into_bytes();
        self.command(
            Op::Send {
                to: Address::Room(room),
                content: Content::Native {
                    scheme: SCHEME_MESSAGE.into(),
                    bytes,
                    fallback,
                },
            },
            Purpose::Send,
        );
    }

    fn on_answer(&mut self, id: CorrelationId, result: Result<Answer, CoreError>) {
        let Some(purpose) = self.inflight.answered(id) else {
            return;
        };
        match (purpose, result) {
            (Purpose::Alias, Ok(Answer::User(user))) => {
                self.command(Op::Authenticate { user: user.id }, Purpose::Authenticate)
            }
            (Purpose::Authenticate, Ok(Answer::User(UserRef { handle, .. }))) => {
                let Some(room) = self.room().map(str::to_owned) else {
                    return;
                };
                self.log(LogLevel::Debug, format!("acting as {handle}"));
                self.command(
                    Op::EnterRoom {
                        room,
                        key_agreement: Some(KeyAgreement {
                            base: GENERATOR.to_vec(),
                        }),
                    },
                    Purpose::Enter,
                );
            }
            (Purpose::Enter, Ok(Answer::Room(room))) => self.entered(room.name),
            (Purpose::Enter, Err(CoreError::AlreadyInRoom)) => self.close_with(
                ErrCode::DuplicateClient,
                "this client id is already in the chat room",
                1008,
            ),
            (Purpose::Alias | Purpose::Authenticate | Purpose::Enter, result) => {
                let detail = match result {
                    Err(CoreError::RoomFull) => "the chat room is full".to_owned(),
                    Err(e) => format!("cannot join: {e}"),
                    Ok(other) => format!("cannot join: unexpected answer {other:?}"),
                };
                self.log(LogLevel::Info, detail.clone());
                self.close_with(ErrCode::Refused, &detail, 1008);
            }
            (Purpose::Send, result) => {
                self.sends -= 1;
                match result {
                    Ok(_) => {}
                    Err(CoreError::NotMember) => {
                        self.refuse(Refusal::new(ErrCode::NotJoined, "not in the chat room"))
                    }
                    Err(e) => self.refuse(Refusal::new(
                        ErrCode::Refused,
                        format!("message not accepted: {e}"),
                    )),
                }
            }
            (Purpose::Exit, _) => self.close_with(ErrCode::Ok, "left", 1000),
        }
    }

    fn entered(&mut self, room: String) {
        if !matches!(&self.state, State::Joining { room: joining } if *joining == room) {
            return;
        }
        self.state = State::InRoom { room };
        self.send(wire::prime(self.group.prime_hex()));
        self.ack_pending = true;
        for event in std::mem::take(&mut self.early) {
            self.on_event(event);
        }
    }

    fn on_event(&mut self, event: HubEvent) {
        if matches!(self.state, State::Joining { .. })
            && matches!(event, HubEvent::KeyStep { .. } | HubEvent::RoomDeliver(_))
        {
            if self.early.len() >= EARLY_LIMIT {
                return self.close_with(ErrCode::Kicked, "too many events before the join", 1008);
            }
            self.early.push(event);
            return;
        }
        match event {
            HubEvent::Answer { id, result } => self.on_answer(id, result),
            HubEvent::KeyStep { step, .. } => self.on_step(step),
            HubEvent::RoomDeliver(delivery) => self.on_room_message(&delivery),
            HubEvent::RoomKicked { reason, .. } => {
                self.close_with(ErrCode::Kicked, &format!("kicked: {reason}"), 1008)
            }
            HubEvent::Kicked { reason } => {
                self.close_with(ErrCode::Kicked, &format!("kicked: {reason}"), 1008)
            }
            HubEvent::Shutdown => self.close_with(ErrCode::Shutdown, "server shutting down", 1001),
            // cchat identities never bind a stream: nothing is delivered or shown online.
            HubEvent::Deliver(_)
            | HubEvent::Presence { .. }
            | HubEvent::PuppetDeliver { .. }
            | HubEvent::Signal { .. } => {}
        }
    }

    fn on_step(&mut self, step: KeyStep) {
        if !matches!(self.state, State::InRoom { .. }) {
            return;
        }
        let message = wire::key_step(
            self.group.prime_hex(),
            step.rounds_left,
            step.fresh,
            &step.intermediate,
        );
        self.send(message);
        self.steps.push_back(step.rounds_left == 0);
        self.key_ready = false;
        if std::mem::take(&mut self.ack_pending) {
            self.error(ErrCode::Ok, "joined");
        }
    }

    fn on_room_message(&mut self, delivery: &Delivery) {
        if !matches!(self.state, State::InRoom { .. }) {
            return;
        }
        let event = &delivery.event;
        let message = match &event.body {
            hub_plugin_sdk::EventBody::Message(content) => match content {
                Content::Native { scheme, bytes, .. } if scheme == SCHEME_MESSAGE => {
                    match serde_json::from_slice::<Value>(bytes) {
                        Ok(Value::Object(object)) => Some(wire::relayed(object)),
                        _ => None,
                    }
                }
                Content::Text(text)
                | Content::Native {
                    fallback: Some(text),
                    ..
                } => Some(wire::bridged(&event.from.handle, text)),
                Content::File(offer) => Some(wire::bridged(
                    &event.from.handle,
                    &format!("[file] {} ({} bytes)", offer.name, offer.size),
                )),
                Content::Sealed { .. } | Content::Native { .. } => None,
            },
            _ => None,
        };
        match message {
            Some(message) => self.send(message),
            None => self.log(
                LogLevel::Debug,
                format!(
                    "room event {} from {} has no form cchat can show; skipped",
                    event.id.0, event.from.handle
                ),
            ),
        }
    }
}

impl Session for CchatSession {
    fn handle_input(&mut self, now: Now, input: Input) {
        match input {
            Input::Opened => {
                self.join_deadline = Some(now.mono_ms + self.config.join_timeout_ms());
            }
            Input::Message(WsMessage::Text(text)) => {
                self.binary = false;
                self.on_message(text.as_bytes());
            }
            Input::Message(WsMessage::Binary(bytes)) => {
                self.binary = true;
                self.on_message(&bytes);
            }
            Input::Message(WsMessage::Ping(_) | WsMessage::Pong(_)) => {}
            Input::Event(event) => self.on_event(event),
            Input::Timeout => {
                if self.join_deadline.is_some_and(|d| d <= now.mono_ms)
                    && matches!(self.state, State::ExpectJoin)
                {
                    self.log(LogLevel::Info, "no join in time");
                    self.close_with(ErrCode::NoJoin, "no join after connecting", 1008);
                }
            }
            Input::TooLarge { limit } => {
                self.error(
                    ErrCode::Malformed,
                    &format!("message larger than {limit} bytes"),
                );
                self.state = State::Closed;
            }
            Input::Bytes(_) | Input::Request(_) | Input::Fetched { .. } => self.log(
                LogLevel::Error,
                "cchat speaks WebSocket only; input dropped",
            ),
            Input::Closed { .. } => self.state = State::Closed,
        }
    }

    fn poll_output(&mut self) -> Output {
        if let Some(output) = self.out.pop_front() {
            return output;
        }
        let deadline = match self.state {
            State::ExpectJoin => self.join_deadline,
            _ => None,
        };
        Output::Timeout(deadline)
    }
}
