//! One actor per active room: membership, history, fan-out, live presence and the
//! room's group key negotiation.
//!
//! ```text
//!  Send ──▶ history append (room seq) ──(group commit)──▶ push RoomDeliver to every
//!    │                                                    present connection, in order
//!    └──▶ one copy per member's stream (but the sender's) ──▶ Accepted once all durable
//!
//!  Enter/Exit (a connection present while it lives) ──▶ keyx::Coordinator ──▶ KeyStep
//! ```
//!
//! *Members* are stored: a message to the room lands in each member's stream, delivered
//! when they come back. *Present* connections (cchat clients) are live only: they get
//! the room's messages as they happen (their own included), and those with key
//! agreement take part in the group key negotiation. Every message is first appended to
//! the room's history, whose order is the one every present connection sees.

mod keyx;

use super::router::{Router, RouterMsg};
use super::{all_stored, make_event, SessionAddr, SessionMsg, Shared, UserMsg};
use actix::prelude::*;
use hub_plugin_sdk::{
    Answer, ConnId, Content, CoreError, Delivery, EventBody, EventRecord, HubEvent, KeyAgreement,
    Origin, RoomNotice, RoomRef, Seq, Target, UserId, UserRef,
};
use keyx::{Coordinator, Outbound};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Reply channel for room operations.
pub type RoomReply = oneshot::Sender<Result<Answer, CoreError>>;

/// Wait before retrying a failed group commit of the history.
const FLUSH_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Messages to a room actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum RoomMsg {
    /// Add a member (idempotent).
    Join {
        /// The user.
        user: UserRef,
        /// Where it came from.
        origin: Origin,
        /// Answered with the room.
        reply: RoomReply,
    },
    /// Remove a member.
    Leave {
        /// The user.
        user: UserRef,
        /// Where it came from.
        origin: Origin,
        /// Answered with `Done`.
        reply: RoomReply,
    },
    /// Fan a message out to the members and the present connections.
    Send {
        /// The sender (must be a member or present).
        from: UserRef,
        /// Where it came from.
        origin: Origin,
        /// Content.
        content: Content,
        /// Answered with `Accepted` once every copy is durable.
        reply: RoomReply,
        /// Post at most once per this key in the room's history.
        dedup: Option<Vec<u8>>,
        /// Make the sender a member if it is not one (a bridge's puppet writing).
        join: bool,
    },
    /// A connection becomes present.
    Enter {
        /// Its acting user.
        user: UserRef,
        /// Where it came from (its connection).
        origin: Origin,
        /// The connection's address for pushes.
        addr: SessionAddr,
        /// Take part in the key negotiation.
        key_agreement: Option<KeyAgreement>,
        /// Answered with the room.
        reply: RoomReply,
    },
    /// A connection is no longer present (asked, or closed: then `reply` is `None`).
    Exit {
        /// The connection.
        conn: ConnId,
        /// Answered with `Done`.
        reply: Option<RoomReply>,
    },
    /// A present connection answers its oldest key step.
    KeyReply {
        /// The connection.
        conn: ConnId,
        /// The intermediate.
        intermediate: Vec<u8>,
    },
    /// A page of the room's history, for a member or a present connection.
    History {
        /// Who asks.
        user: UserId,
        /// Exclusive upper bound.
        before: Seq,
        /// Page size.
        limit: usize,
        /// Answered with the page (only what is durable).
        reply: oneshot::Sender<Result<Vec<Delivery>, CoreError>>,
    },
    /// Who is in the room.
    Members {
        /// Answered with members and present users.
        reply: RoomReply,
    },
    /// A present connection handed this many bytes of pushes to its transport.
    Consumed {
        /// The connection.
        conn: ConnId,
        /// Bytes, as counted by `delivery_size`.
        bytes: usize,
    },
}

/// A connection present in the room.
struct Present {
    conn: ConnId,
    user: UserRef,
    origin: Origin,
    addr: SessionAddr,
    /// Bytes pushed and not reported consumed.
    queued_bytes: usize,
}

/// A history entry waiting for its group commit.
struct Logged {
    seq: Seq,
    event: EventRecord,
    done: Option<oneshot::Sender<()>>,
}

/// The room actor.
pub struct RoomActor {
    room: RoomRef,
    shared: Arc<Shared>,
    router: Addr<Router>,
    members: HashMap<UserId, UserRef>,
    present: Vec<Present>,
    /// Last position used in the room's history.
    history_seq: Seq,
    /// History entries not yet durable, in order.
    history: VecDeque<Logged>,
    keys: Option<Coordinator>,
    /// The negotiation was settled after the last key event (for the log).
    key_settled: bool,
    key_timer: Option<SpawnHandle>,
    started: Instant,
    /// Messages handled, reported to the router when idle.
    handled: u64,
    /// Fan-outs still waiting for their copies to be stored: the actor is not retired
    /// while any runs (retiring would drop their replies).
    inflight: usize,
    idle_timer: Option<SpawnHandle>,
}

impl RoomActor {
    /// A room actor; members and the history position are loaded when it starts.
    pub fn new(room: RoomRef, shared: Arc<Shared>, router: Addr<Router>) -> Self {
        RoomActor {
            room,
            shared,
            router,
            members: HashMap::new(),
            present: Vec::new(),
            history_seq: Seq(0),
            history: VecDeque::new(),
            keys: None,
            key_settled: false,
            key_timer: None,
            started: Instant::now(),
            handled: 0,
            inflight: 0,
            idle_timer: None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Appends `event` to every member's stream but `except`'s; the receivers resolve
    /// once each copy is durable.
    fn to_members(
        &self,
        event: &EventRecord,
        except: UserId,
        skip_conn: Option<ConnId>,
    ) -> Vec<oneshot::Receiver<Result<super::Appended, CoreError>>> {
        let mut replies = Vec::new();
        for member in self.members.values().filter(|m| m.id != except) {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            self.router.do_send(RouterMsg::ToUser {
                user: member.clone(),
                msg: UserMsg::Append {
                    event: event.clone(),
                    skip_conn,
                    reply: Some(tx),
                    dedup: None,
                },
            });
        }
        replies
    }

    /// Tells the members (not the present connections) about a membership change; the
    /// answer, if any, comes once every copy is durable.
    fn notice(
        &mut self,
        ctx: &mut Context<Self>,
        origin: Origin,
        user: UserRef,
        notice: RoomNotice,
        answer: Answer,
        reply: Option<RoomReply>,
    ) {
        let except = user.id;
        let event = match make_event(
            &self.shared,
            origin.clone(),
            user,
            Target::Room(self.room.clone()),
            EventBody::Room(notice),
        ) {
            Ok(event) => event,
            Err(e) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e));
                }
                return;
            }
        };
        let replies = self.to_members(&event, except, origin.conn);
        self.inflight += 1;
        ctx.spawn(
            async move {
                let result = all_stored(replies).await.map(|()| answer);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            .into_actor(self)
            .map(|(), act, _ctx| act.inflight -= 1),
        );
    }

    /// A message: into the history (pushed to present connections once durable) and
    /// every member's stream; accepted once all of it is durable.
    fn post(
        &mut self,
        ctx: &mut Context<Self>,
        origin: Origin,
        from: UserRef,
        content: Content,
        reply: RoomReply,
        dedup: Option<Vec<u8>>,
    ) {
        let except = from.id;
        let event = match make_event(
            &self.shared,
            origin.clone(),
            from,
            Target::Room(self.room.clone()),
            EventBody::Message(content),
        ) {
            Ok(event) => event,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let seq = Seq(self.history_seq.0 + 1);
        let store = &self.shared.store;
        let stored = match &dedup {
            Some(key) => store.room_append_once(self.room.id, seq, &event, key),
            None => store
                .room_append(self.room.id, seq, &event)
                .map(|()| crate::store::Once::Stored),
        };
        match stored {
            Err(e) => {
                tracing::error!(room = %self.room.id, error = %e, "storing room history failed");
                let _ = reply.send(Err(CoreError::Internal(e.to_string())));
                return;
            }
            Ok(crate::store::Once::Duplicate(_, event)) => {
                // Posted before: answer as then, once durable; nobody is told again.
                let durable = store.durable();
                actix::spawn(async move {
                    let result = durable.await.map_err(CoreError::Internal);
                    let _ = reply.send(result.map(|()| Answer::Accepted { event }));
                });
                return;
            }
            Ok(crate::store::Once::Stored) => {}
        }
        self.history_seq = seq;
        self.shared.metrics.routed.fetch_add(1, Relaxed);
        self.shared.metrics.stored.fetch_add(1, Relaxed);
        self.shared.metrics.stored_records.fetch_add(1, Relaxed);
        let (logged_tx, logged_rx) = oneshot::channel();
        let replies = self.to_members(&event, except, origin.conn);
        let id = event.id;
        self.history.push_back(Logged {
            seq,
            event,
            done: Some(logged_tx),
        });
        self.await_history(ctx, seq);
        self.inflight += 1;
        ctx.spawn(
            async move {
                let logged = logged_rx
                    .await
                    .map_err(|_| CoreError::Internal("room history unavailable".into()));
                let result = match logged {
                    Ok(()) => all_stored(replies).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(result.map(|()| Answer::Accepted { event: id }));
            }
            .into_actor(self)
            .map(|(), act, _ctx| act.inflight -= 1),
        );
    }

    fn await_history(&mut self, ctx: &mut Context<Self>, seq: Seq) {
        let durable = self.shared.store.durable();
        ctx.spawn(
            durable
                .into_actor(self)
                .map(move |result, act, ctx| act.on_history_durable(ctx, seq, result)),
        );
    }

    fn on_history_durable(
        &mut self,
        ctx: &mut Context<Self>,
        seq: Seq,
        result: Result<(), String>,
    ) {
        if let Err(e) = result {
            tracing::error!(room = %self.room.id, error = %e, "room history not confirmed durable; retrying the flush");
            ctx.run_later(FLUSH_RETRY, move |act, ctx| act.await_history(ctx, seq));
            return;
        }
        // A flush covers every write before it: push in history order.
        let mut slow = Vec::new();
        while self.history.front().is_some_and(|l| l.seq <= seq) {
            let Some(mut logged) = self.history.pop_front() else {
                break;
            };
            if let Some(done) = logged.done.take() {
                let _ = done.send(());
            }
            let delivery = Delivery {
                seq: logged.seq,
                event: logged.event,
            };
            let size = super::delivery_size(&delivery);
            let bound = self.shared.settings.session_queue_bytes;
            for present in &mut self.present {
                present.queued_bytes += size;
                let message = SessionMsg::Event(HubEvent::RoomDeliver(delivery.clone()));
                if present.queued_bytes > bound || !push(&present.addr, message) {
                    slow.push(present.conn);
                }
            }
        }
        for conn in slow {
            self.kick(ctx, conn, "too slow reading the room's messages");
        }
    }

    fn enter(
        &mut self,
        ctx: &mut Context<Self>,
        user: UserRef,
        origin: Origin,
        addr: SessionAddr,
        key_agreement: Option<KeyAgreement>,
    ) -> Result<Answer, CoreError> {
        let conn = origin
            .conn
            .ok_or_else(|| CoreError::Invalid("only a connection can be present".into()))?;
        if let Some(present) = self.present.iter().find(|p| p.user.id == user.id) {
            return if present.conn == conn {
                Ok(Answer::Room(self.room.clone()))
            } else {
                Err(CoreError::AlreadyInRoom)
            };
        }
        if self.present.len() >= self.shared.settings.max_present {
            return Err(CoreError::RoomFull);
        }
        if let Some(agreement) = &key_agreement {
            let timeout = self.shared.settings.key_timeout.as_millis() as u64;
            let keys = self
                .keys
                .get_or_insert_with(|| Coordinator::new(agreement.base.clone(), timeout));
            if keys.base() != agreement.base.as_slice() {
                return Err(CoreError::Invalid(
                    "the room negotiates its key in another group".into(),
                ));
            }
        }
        self.present.push(Present {
            conn,
            user: user.clone(),
            origin: origin.clone(),
            addr,
            queued_bytes: 0,
        });
        self.shared.metrics.room_present.fetch_add(1, Relaxed);
        tracing::debug!(room = %self.room.id, conn = %conn, user = %user.id, "present in room");
        if key_agreement.is_some() {
            let now = self.now_ms();
            let steps = self
                .keys
                .as_mut()
                .map(|k| k.join(conn, now))
                .unwrap_or_default();
            self.route_steps(ctx, steps);
        }
        if !self.members.contains_key(&user.id) {
            self.notice(ctx, origin, user, RoomNotice::Joined, Answer::Done, None);
        }
        Ok(Answer::Room(self.room.clone()))
    }

    /// Removes a present connection; the key negotiation goes on without it.
    fn exit(&mut self, ctx: &mut Context<Self>, conn: ConnId) -> bool {
        let Some(index) = self.present.iter().position(|p| p.conn == conn) else {
            return false;
        };
        let present = self.present.remove(index);
        self.shared.metrics.room_present.fetch_sub(1, Relaxed);
        tracing::debug!(room = %self.room.id, conn = %conn, "no longer present in room");
        let now = self.now_ms();
        let steps = self
            .keys
            .as_mut()
            .map(|k| k.leave(conn, now))
            .unwrap_or_default();
        if self.keys.as_ref().is_some_and(Coordinator::is_empty) {
            self.keys = None;
        }
        self.route_steps(ctx, steps);
        if !self.members.contains_key(&present.user.id) {
            self.notice(
                ctx,
                present.origin,
                present.user,
                RoomNotice::Left,
                Answer::Done,
                None,
            );
        }
        true
    }

    /// Removes a present connection and tells it why.
    fn kick(&mut self, ctx: &mut Context<Self>, conn: ConnId, reason: &str) {
        if let Some(present) = self.present.iter().find(|p| p.conn == conn) {
            tracing::warn!(room = %self.room.id, conn = %conn, reason, "removed from room");
            // do_send ignores the mailbox bound: the notice must arrive even when full.
            present
                .addr
                .do_send(SessionMsg::Event(HubEvent::RoomKicked {
                    room: self.room.clone(),
                    reason: reason.into(),
                }));
        }
        self.exit(ctx, conn);
    }

    /// Sends key steps to their connections, and re-arms the key timer.
    fn route_steps(&mut self, ctx: &mut Context<Self>, steps: Vec<Outbound>) {
        let mut slow = Vec::new();
        for Outbound { conn, step } in steps {
            let Some(present) = self.present.iter().find(|p| p.conn == conn) else {
                continue;
            };
            let message = SessionMsg::Event(HubEvent::KeyStep {
                room: self.room.clone(),
                step,
            });
            if !push(&present.addr, message) {
                slow.push(conn);
            }
        }
        for conn in slow {
            self.kick(ctx, conn, "too slow reading the key negotiation");
        }
        let settled = self.keys.as_ref().is_some_and(Coordinator::is_settled);
        if settled && !self.key_settled {
            let members = self.keys.as_ref().map_or(0, Coordinator::len);
            tracing::debug!(room = %self.room.id, members, "room key negotiation settled");
        }
        self.key_settled = settled;
        self.arm_key_timer(ctx);
    }

    fn arm_key_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.key_timer.take() {
            ctx.cancel_future(timer);
        }
        let Some(deadline) = self.keys.as_ref().and_then(Coordinator::deadline) else {
            return;
        };
        let wait = std::time::Duration::from_millis(deadline.saturating_sub(self.now_ms()));
        self.key_timer = Some(ctx.run_later(wait, |act, ctx| {
            act.key_timer = None;
            let now = act.now_ms();
            let overdue = act
                .keys
                .as_ref()
                .map(|k| k.overdue(now))
                .unwrap_or_default();
            for conn in overdue {
                act.kick(ctx, conn, "did not answer the key negotiation in time");
            }
            act.arm_key_timer(ctx);
        }));
    }

    /// Asks the router to retire this actor after `user_idle` without messages.
    fn schedule_idle_check(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.idle_timer.take() {
            ctx.cancel_future(timer);
        }
        let idle = self.shared.settings.user_idle;
        self.idle_timer = Some(ctx.run_later(idle, |act, ctx| {
            act.idle_timer = None;
            if act.inflight == 0 && act.present.is_empty() && act.history.is_empty() {
                act.router.do_send(RouterMsg::RoomIdle {
                    room: act.room.id,
                    seen: act.handled,
                });
            } else {
                act.schedule_idle_check(ctx);
            }
        }));
    }
}

/// Pushes a message to a session without waiting; false if its queue is full.
fn push(addr: &SessionAddr, msg: SessionMsg) -> bool {
    match addr.try_send(msg) {
        Ok(()) => true,
        // A closed session leaves by its own Exit; nothing to do here.
        Err(SendError::Closed(_)) => true,
        Err(SendError::Full(_)) => false,
    }
}

/// Router → room actor: stop now (the router has forgotten it; nothing new arrives).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RetireRoom;

impl Handler<RetireRoom> for RoomActor {
    type Result = ();
    fn handle(&mut self, _msg: RetireRoom, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.shared.metrics.room_actors.fetch_add(1, Relaxed);
        self.schedule_idle_check(ctx);
        let store = &self.shared.store;
        match store.room_last_seq(self.room.id) {
            Ok(seq) => self.history_seq = seq,
            Err(e) => {
                tracing::error!(room = %self.room.id, error = %e, "reading the history position failed")
            }
        }
        match store.room_members(self.room.id) {
            Ok(ids) => {
                for id in ids {
                    match store.account(id) {
                        Ok(Some(account)) => {
                            self.members
                                .insert(id, super::user_ref(id, &account.handle));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(room = %self.room.id, error = %e, "loading a member failed")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(room = %self.room.id, error = %e, "loading members failed"),
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.shared.metrics.room_actors.fetch_sub(1, Relaxed);
        self.shared
            .metrics
            .room_present
            .fetch_sub(self.present.len() as i64, Relaxed);
    }
}

impl Handler<RoomMsg> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RoomMsg, ctx: &mut Context<Self>) {
        self.handled += 1;
        self.schedule_idle_check(ctx);
        match msg {
            RoomMsg::Join {
                user,
                origin,
                reply,
            } => match self.shared.store.set_member(self.room.id, user.id, true) {
                Ok(true) => {
                    self.members.insert(user.id, user.clone());
                    let answer = Answer::Room(self.room.clone());
                    self.notice(ctx, origin, user, RoomNotice::Joined, answer, Some(reply));
                }
                Ok(false) => {
                    let _ = reply.send(Ok(Answer::Room(self.room.clone())));
                }
                Err(e) => {
                    let _ = reply.send(Err(CoreError::Internal(e.to_string())));
                }
            },
            RoomMsg::Leave {
                user,
                origin,
                reply,
            } => match self.shared.store.set_member(self.room.id, user.id, false) {
                Ok(true) => {
                    self.members.remove(&user.id);
                    self.notice(
                        ctx,
                        origin,
                        user,
                        RoomNotice::Left,
                        Answer::Done,
                        Some(reply),
                    );
                }
                Ok(false) => {
                    let _ = reply.send(Err(CoreError::NotMember));
                }
                Err(e) => {
                    let _ = reply.send(Err(CoreError::Internal(e.to_string())));
                }
            },
            RoomMsg::Send {
                from,
                origin,
                content,
                reply,
                dedup,
                join,
            } => {
                let present = self.present.iter().any(|p| p.user.id == from.id);
                if !self.members.contains_key(&from.id) && !present {
                    if !join {
                        let _ = reply.send(Err(CoreError::NotMember));
                        return;
                    }
                    match self.shared.store.set_member(self.room.id, from.id, true) {
                        Ok(_) => {
                            self.members.insert(from.id, from.clone());
                            let notice = RoomNotice::Joined;
                            self.notice(
                                ctx,
                                origin.clone(),
                                from.clone(),
                                notice,
                                Answer::Done,
                                None,
                            );
                        }
                        Err(e) => {
                            let _ = reply.send(Err(CoreError::Internal(e.to_string())));
                            return;
                        }
                    }
                }
                self.post(ctx, origin, from, content, reply, dedup);
            }
            RoomMsg::Enter {
                user,
                origin,
                addr,
                key_agreement,
                reply,
            } => {
                let result = self.enter(ctx, user, origin, addr, key_agreement);
                let _ = reply.send(result);
            }
            RoomMsg::Exit { conn, reply } => {
                let result = if self.exit(ctx, conn) {
                    Ok(Answer::Done)
                } else {
                    Err(CoreError::NotMember)
                };
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            RoomMsg::KeyReply { conn, intermediate } => {
                let now = self.now_ms();
                let Some(keys) = self.keys.as_mut() else {
                    return;
                };
                match keys.reply(conn, intermediate, now) {
                    Ok(steps) => self.route_steps(ctx, steps),
                    Err(error) => {
                        tracing::debug!(room = %self.room.id, conn = %conn, %error, "key reply ignored")
                    }
                }
            }
            RoomMsg::History {
                user,
                before,
                limit,
                reply,
            } => {
                let allowed = self.members.contains_key(&user)
                    || self.present.iter().any(|p| p.user.id == user);
                let page = if allowed {
                    // Up to the last durable entry: pending ones are not yet told to anyone.
                    let durable = self
                        .history
                        .front()
                        .map_or(self.history_seq, |l| Seq(l.seq.0 - 1));
                    let before = before.min(Seq(durable.0.saturating_add(1)));
                    self.shared
                        .store
                        .room_events_before(self.room.id, before, limit)
                        .map_err(|e| CoreError::Internal(e.to_string()))
                } else {
                    Err(CoreError::NotMember)
                };
                let _ = reply.send(page);
            }
            RoomMsg::Members { reply } => {
                let mut members: Vec<UserRef> = self.members.values().cloned().collect();
                members.sort_by(|a, b| a.handle.cmp(&b.handle));
                let present = self.present.iter().map(|p| p.user.clone()).collect();
                let _ = reply.send(Ok(Answer::Members { members, present }));
            }
            RoomMsg::Consumed { conn, bytes } => {
                if let Some(present) = self.present.iter_mut().find(|p| p.conn == conn) {
                    present.queued_bytes = present.queued_bytes.saturating_sub(bytes);
                }
            }
        }
    }
}
