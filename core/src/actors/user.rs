//! One actor per active user: its event stream (sequence numbers, durable delivery),
//! its sessions and its presence.
//!
//! ```text
//!  Append ──▶ seq = last+1, store.append ──▶ pending ──(group commit)──▶ durable
//!                                                          │
//!                       reply to sender ◀──────────────────┤
//!                       push to live sessions ◀────────────┘
//!
//!  session:  Attach ──▶ catching up (backlog pages from the store, one page in
//!            flight) ──▶ live (pushed as events become durable) ──▶ Detach
//! ```
//!
//! Nothing is pushed before it is durable, and events reach each session in sequence
//! order. The delivery cursor moves only on [`UserMsg::Ack`] (proof of receipt).
//!
//! Appends are written to the store as a burst: the events appended while the mailbox
//! is drained are stored as one record just before the one durability request that
//! covers them (or sooner, before [`BURST_EVENTS`] or [`BURST_WEIGHT`] would be passed, or
//! before an append with an idempotency key, which is stored alone).

use super::router::{Router, RouterMsg};
use super::{SessionAddr, SessionMsg, Shared, ToUserActor, UserMsg};
use crate::store::Once;
use actix::prelude::*;
use hub_plugin_sdk::{ConnId, CoreError, Delivery, EventRecord, HubEvent, Seq, UserRef};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Wait before retrying a failed group commit.
const FLUSH_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Most events stored as one record: a burst beyond it is written in several.
pub const BURST_EVENTS: usize = 64;
/// Most weight ([`super::event_size`]) stored as one record, unless one event alone
/// weighs more (it is then a record of its own, as every event was before bursts). A
/// sled leaf holds up to 17 records and is rewritten whole: 17 × 64 KiB stays below a
/// quarter of sled's 8 MiB segments, past which sled writes a node to a blob file
/// instead of its log (`store/sled_store.rs`), so bursts make no node bigger than the
/// largest events (the plugins' 64 KiB frames) already could.
pub const BURST_WEIGHT: usize = 64 * 1024;

struct Pending {
    seq: Seq,
    event: EventRecord,
    skip_conn: Option<ConnId>,
    reply: Option<super::AppendReply>,
}

struct SessionSlot {
    conn: ConnId,
    addr: SessionAddr,
    /// Highest seq handed to this session.
    sent_through: Seq,
    /// Caught up: new durable events are pushed as they come.
    live: bool,
    /// A backlog page is in flight (waiting for `MoreBacklog`).
    page_in_flight: bool,
    /// Bytes pushed and not yet reported consumed (`delivery_size`).
    queued_bytes: usize,
    /// A bridge carrying this stream for a puppet: deliveries are tagged with the user;
    /// it does not make the user online or block an exclusive bind.
    puppet: bool,
}

/// The user actor.
pub struct UserActor {
    user: UserRef,
    shared: Arc<Shared>,
    router: Addr<Router>,
    last_seq: Seq,
    durable_through: Seq,
    pending: VecDeque<Pending>,
    /// The last `unwritten` entries of `pending` are not in the store yet: they are
    /// written as one record before the durability request that covers them.
    unwritten: usize,
    /// Their weight ([`super::event_size`]), at most [`BURST_WEIGHT`] unless one event
    /// alone weighs more.
    unwritten_weight: usize,
    /// A durability request is scheduled and not yet made: appends until it is made are
    /// covered by it (one group-commit wait per batch of mailbox messages, not per event).
    durable_scheduled: bool,
    sessions: Vec<SessionSlot>,
    /// Messages handled, reported to the router when idle.
    handled: u64,
    idle_timer: Option<SpawnHandle>,
}

impl UserActor {
    /// Creates the actor; fails if the store cannot tell the stream's position.
    pub fn new(
        user: UserRef,
        shared: Arc<Shared>,
        router: Addr<Router>,
    ) -> Result<Self, crate::store::StoreError> {
        let last_seq = shared.store.last_seq(user.id)?;
        Ok(UserActor {
            user,
            shared,
            router,
            last_seq,
            durable_through: last_seq,
            pending: VecDeque::new(),
            unwritten: 0,
            unwritten_weight: 0,
            durable_scheduled: false,
            sessions: Vec::new(),
            handled: 0,
            idle_timer: None,
        })
    }

    fn append(
        &mut self,
        ctx: &mut Context<Self>,
        event: EventRecord,
        skip_conn: Option<ConnId>,
        reply: Option<super::AppendReply>,
        dedup: Option<Vec<u8>>,
    ) {
        let Some(key) = dedup else {
            // Written with the rest of the burst (`write_burst`), before it is made
            // durable; the burst so far first if this event would take it over a bound.
            let weight = super::event_size(&event);
            if self.unwritten == BURST_EVENTS || self.unwritten_weight + weight > BURST_WEIGHT {
                self.write_burst();
            }
            self.last_seq = Seq(self.last_seq.0 + 1);
            self.unwritten += 1;
            self.unwritten_weight += weight;
            self.pending.push_back(Pending {
                seq: self.last_seq,
                event,
                skip_conn,
                reply,
            });
            self.await_durable(ctx);
            return;
        };
        // Stored alone, in a transaction with its key: the burst before it goes first, so
        // the stream's records stay in sequence order.
        self.write_burst();
        let seq = Seq(self.last_seq.0 + 1);
        let store = &self.shared.store;
        match store.append_once(self.user.id, seq, &event, &key) {
            Err(e) => {
                tracing::error!(user = %self.user.id, error = %e, "storing an event failed");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(CoreError::Internal(e.to_string())));
                }
                return;
            }
            Ok(Once::Duplicate(seq, event)) => {
                // Stored before: answer as the first time, once that is durable too (a
                // flush now covers every earlier write).
                if let Some(reply) = reply {
                    let durable = store.durable();
                    actix::spawn(async move {
                        let result = durable.await.map_err(CoreError::Internal);
                        let _ = reply.send(result.map(|()| super::Appended { seq, event }));
                    });
                }
                return;
            }
            Ok(Once::Stored) => {}
        }
        self.last_seq = seq;
        self.count_record(1);
        self.pending.push_back(Pending {
            seq,
            event,
            skip_conn,
            reply,
        });
        self.await_durable(ctx);
    }

    /// Counts one record of `events` written, now waiting for durability.
    fn count_record(&self, events: usize) {
        let metrics = &self.shared.metrics;
        metrics.stored.fetch_add(events as u64, Relaxed);
        metrics.stored_records.fetch_add(1, Relaxed);
        metrics.pending_durable.fetch_add(events as i64, Relaxed);
    }

    /// Stores the appends not yet written as one record. If that fails they are
    /// answered with the error and forgotten. Their sequence numbers are used again
    /// only if the record is not in the store: sled can report an error after the
    /// insert took effect, and a record reusing them would then overlap it. (Such an
    /// event is stored though its sender was told it failed: delivered, at worst twice
    /// if the sender sends it again.)
    fn write_burst(&mut self) {
        let count = std::mem::take(&mut self.unwritten);
        self.unwritten_weight = 0;
        if count == 0 {
            return;
        }
        let start = self.pending.len() - count;
        let first = self.pending[start].seq;
        let events: Vec<&EventRecord> = self.pending.range(start..).map(|p| &p.event).collect();
        match self.shared.store.append(self.user.id, first, &events) {
            Ok(()) => self.count_record(count),
            Err(e) => {
                tracing::error!(user = %self.user.id, events = count, error = %e, "storing events failed");
                for failed in self.pending.drain(start..) {
                    if let Some(reply) = failed.reply {
                        let _ = reply.send(Err(CoreError::Internal(e.to_string())));
                    }
                }
                let attempted = self.last_seq;
                self.last_seq = match self.shared.store.last_seq(self.user.id) {
                    Ok(stored) => stored.max(Seq(first.0 - 1)),
                    // Unknown: leave the numbers unused (a gap) rather than risk an overlap.
                    Err(_) => attempted,
                };
            }
        }
    }

    /// Schedules one durability request for everything appended so far and until the
    /// request is made: actix polls the spawned future after the messages waiting in
    /// the mailbox, so a burst of appends shares one wait. The request is made (and the
    /// sequence number it covers taken) only when the future first runs, after those
    /// writes.
    fn await_durable(&mut self, ctx: &mut Context<Self>) {
        if self.durable_scheduled {
            return;
        }
        self.durable_scheduled = true;
        ctx.spawn(fut::ready(()).into_actor(self).then(|(), act, _ctx| {
            act.durable_scheduled = false;
            act.write_burst();
            let through = act.last_seq;
            act.shared
                .store
                .durable()
                .into_actor(act)
                .map(move |result, act, ctx| act.on_durable(ctx, through, result))
        }));
    }

    fn on_durable(&mut self, ctx: &mut Context<Self>, seq: Seq, result: Result<(), String>) {
        if let Err(e) = result {
            // Not durable: deliver nothing and answer nobody yet; try the flush again.
            // (After shutdown closed the store this repeats harmlessly until exit.)
            tracing::error!(user = %self.user.id, error = %e, "events not confirmed durable; retrying the flush");
            ctx.run_later(FLUSH_RETRY, |act, ctx| act.await_durable(ctx));
            return;
        }
        // A flush covers every write made before it: everything up to `seq` is done.
        while self.pending.front().is_some_and(|p| p.seq <= seq) {
            let Some(done) = self.pending.pop_front() else {
                break;
            };
            self.shared.metrics.pending_durable.fetch_sub(1, Relaxed);
            self.durable_through = done.seq;
            if let Some(reply) = done.reply {
                let _ = reply.send(Ok(super::Appended {
                    seq: done.seq,
                    event: done.event.id,
                }));
            }
            let delivery = Delivery {
                seq: done.seq,
                event: done.event,
            };
            let mut slow = Vec::new();
            for slot in self.sessions.iter_mut().filter(|s| s.live) {
                if slot.sent_through >= delivery.seq {
                    continue;
                }
                slot.sent_through = delivery.seq;
                if Some(slot.conn) == done.skip_conn {
                    continue;
                }
                slot.queued_bytes += super::delivery_size(&delivery);
                let over = slot.queued_bytes > self.shared.settings.session_queue_bytes;
                let message = delivery_msg(slot.puppet, self.user.id, delivery.clone());
                if over || !push(&self.shared, &slot.addr, message) {
                    slow.push(slot.conn);
                }
            }
            for conn in slow {
                self.drop_slow(conn);
            }
        }
        if self.pending.is_empty() {
            // A burst of appends is delivered: an idle user keeps no room for the next.
            self.pending.shrink_to_fit();
        }
    }

    /// Sends the next backlog page to a catching-up session, or makes it live.
    fn pump(&mut self, conn: ConnId) {
        let page = self.shared.settings.backlog_page;
        let Some(slot) = self.sessions.iter_mut().find(|s| s.conn == conn) else {
            return;
        };
        if slot.live || slot.page_in_flight {
            return;
        }
        let events = match self.shared.store.events_after(
            self.user.id,
            slot.sent_through,
            self.durable_through,
            page,
        ) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(user = %self.user.id, error = %e, "reading the backlog failed");
                let _ = slot.addr.try_send(SessionMsg::Event(HubEvent::Kicked {
                    reason: "internal error reading stored events".into(),
                }));
                return;
            }
        };
        let mut full = events.len() == page;
        // A page also ends at half the byte bound: big events come in smaller pages.
        let byte_budget = self.shared.settings.session_queue_bytes / 2;
        let mut ok = true;
        for delivery in events {
            if slot.queued_bytes >= byte_budget {
                full = true;
                break;
            }
            slot.sent_through = delivery.seq;
            slot.queued_bytes += super::delivery_size(&delivery);
            let message = delivery_msg(slot.puppet, self.user.id, delivery);
            if !push(&self.shared, &slot.addr, message) {
                ok = false;
                break;
            }
        }
        if full && ok {
            slot.page_in_flight = true;
            ok &= push(
                &self.shared,
                &slot.addr,
                SessionMsg::PageDone { user: self.user.id },
            );
        } else {
            // Caught up with everything durable; later events are pushed as they land.
            slot.live = true;
        }
        if !ok {
            self.drop_slow(conn);
        }
    }

    /// Sessions that make the user online (not bridges carrying a puppet).
    fn online_sessions(&self) -> usize {
        self.sessions.iter().filter(|s| !s.puppet).count()
    }

    fn drop_slow(&mut self, conn: ConnId) {
        if let Some(index) = self.sessions.iter().position(|s| s.conn == conn) {
            let slot = self.sessions.remove(index);
            self.shared.metrics.slow_readers.fetch_add(1, Relaxed);
            tracing::warn!(user = %self.user.id, conn = %conn, "session dropped as a slow reader; undelivered events wait in the store");
            // do_send ignores the mailbox bound: the kick must arrive even when full.
            slot.addr.do_send(SessionMsg::Event(HubEvent::Kicked {
                reason: "too slow reading events".into(),
            }));
            if !slot.puppet && self.online_sessions() == 0 {
                self.went_offline();
            }
        }
    }

    fn contact_ids(&self) -> Vec<hub_plugin_sdk::UserId> {
        match self.shared.store.contacts(self.user.id) {
            Ok(contacts) => contacts
                .into_iter()
                .filter(|(_, state)| *state == hub_plugin_sdk::ContactState::Accepted)
                .map(|(id, _)| id)
                .collect(),
            Err(e) => {
                tracing::error!(user = %self.user.id, error = %e, "reading contacts failed");
                Vec::new()
            }
        }
    }

    fn went_offline(&mut self) {
        self.router.do_send(RouterMsg::SetOnline {
            user: self.user.clone(),
            online: false,
            contacts: self.contact_ids(),
        });
    }

    fn schedule_idle_check(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.idle_timer.take() {
            ctx.cancel_future(timer);
        }
        let idle = self.shared.settings.user_idle;
        self.idle_timer = Some(ctx.run_later(idle, |act, ctx| {
            act.idle_timer = None;
            if !act.sessions.is_empty() {
                // The last session's Detach arms the check again.
                return;
            }
            if act.pending.is_empty() {
                act.router.do_send(RouterMsg::UserIdle {
                    user: act.user.id,
                    seen: act.handled,
                });
            } else {
                // Appends still waiting for durability: look again later, or an actor
                // that nothing else reaches would never be retired.
                act.schedule_idle_check(ctx);
            }
        }));
    }
}

/// The message that hands `delivery` to a slot: the session's own stream, or a puppet's.
fn delivery_msg(puppet: bool, user: hub_plugin_sdk::UserId, delivery: Delivery) -> SessionMsg {
    SessionMsg::Event(if puppet {
        HubEvent::PuppetDeliver { user, delivery }
    } else {
        HubEvent::Deliver(delivery)
    })
}

/// Pushes a message to a session without waiting; false if its queue is full or gone.
fn push(shared: &Shared, addr: &SessionAddr, msg: SessionMsg) -> bool {
    if matches!(
        msg,
        SessionMsg::Event(HubEvent::Deliver(_) | HubEvent::PuppetDeliver { .. })
    ) {
        shared.metrics.delivered.fetch_add(1, Relaxed);
    }
    match addr.try_send(msg) {
        Ok(()) => true,
        // A closed session is detached by its own Detach; nothing to do here.
        Err(SendError::Closed(_)) => true,
        Err(SendError::Full(_)) => false,
    }
}

impl Actor for UserActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.shared.metrics.user_actors.fetch_add(1, Relaxed);
        self.schedule_idle_check(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.shared.metrics.user_actors.fetch_sub(1, Relaxed);
        // The written ones were counted as waiting for durability; the unwritten tail was not.
        let written = self.pending.len() - self.unwritten;
        self.shared
            .metrics
            .pending_durable
            .fetch_sub(written as i64, Relaxed);
        for pending in self.pending.drain(..) {
            if let Some(reply) = pending.reply {
                let _ = reply.send(Err(CoreError::Internal("hub shutting down".into())));
            }
        }
    }
}

impl Handler<ToUserActor> for UserActor {
    type Result = ();

    fn handle(&mut self, ToUserActor(msg): ToUserActor, ctx: &mut Context<Self>) {
        self.handled += 1;
        match msg {
            UserMsg::Append {
                event,
                skip_conn,
                reply,
                dedup,
            } => self.append(ctx, event, skip_conn, reply, dedup),
            UserMsg::Attach {
                conn,
                exclusive,
                resume_after,
                puppet,
                addr,
                reply,
            } => {
                if exclusive && self.sessions.iter().any(|s| s.conn != conn && !s.puppet) {
                    let _ = reply.send(Err(CoreError::AlreadyConnected));
                    return;
                }
                let mut cursor = match self.shared.store.cursor(self.user.id) {
                    Ok(cursor) => cursor,
                    Err(e) => {
                        let _ = reply.send(Err(CoreError::Internal(e.to_string())));
                        return;
                    }
                };
                if let Some(position) = resume_after {
                    // The client's own position is its proof of receipt: the cursor moves
                    // up to it (never past what is durable), and delivery starts there.
                    let position = position.min(self.durable_through);
                    if position > cursor {
                        if let Err(e) = self.shared.store.advance_cursor(self.user.id, position) {
                            let _ = reply.send(Err(CoreError::Internal(e.to_string())));
                            return;
                        }
                    }
                    cursor = position;
                }
                let first = !puppet && self.online_sessions() == 0;
                self.sessions.retain(|s| s.conn != conn);
                // Most users have one or two sessions: room for exactly those, not the
                // four a first push would make.
                self.sessions.reserve_exact(1);
                self.sessions.push(SessionSlot {
                    conn,
                    addr: addr.clone(),
                    sent_through: cursor,
                    live: false,
                    page_in_flight: false,
                    queued_bytes: 0,
                    puppet,
                });
                if first {
                    self.router.do_send(RouterMsg::SetOnline {
                        user: self.user.clone(),
                        online: true,
                        contacts: self.contact_ids(),
                    });
                }
                // Tell the new session which contacts are online right now.
                if !puppet {
                    self.router.do_send(RouterMsg::PresenceSnapshot {
                        contacts: self.contact_ids(),
                        to: addr,
                    });
                }
                // Answer only now: whatever the client does after its bind is answered
                // reaches the router after "online" did (FIFO mailbox, causal order).
                let _ = reply.send(Ok(cursor));
                self.pump(conn);
            }
            UserMsg::Detach { conn } => {
                let before = self.online_sessions();
                self.sessions.retain(|s| s.conn != conn);
                if before > 0 && self.online_sessions() == 0 {
                    self.went_offline();
                }
                if self.sessions.is_empty() {
                    self.schedule_idle_check(ctx);
                }
            }
            UserMsg::MoreBacklog { conn } => {
                if let Some(slot) = self.sessions.iter_mut().find(|s| s.conn == conn) {
                    // While catching up only pages are pushed, and the session has
                    // handled the whole page before asking for more.
                    slot.page_in_flight = false;
                    slot.queued_bytes = 0;
                }
                self.pump(conn);
            }
            UserMsg::Consumed { conn, bytes } => {
                if let Some(slot) = self.sessions.iter_mut().find(|s| s.conn == conn) {
                    slot.queued_bytes = slot.queued_bytes.saturating_sub(bytes);
                }
            }
            UserMsg::Ack { through } => {
                self.shared.metrics.acks.fetch_add(1, Relaxed);
                // Never past what is durable: an ack cannot prove more than exists.
                let through = through.min(self.durable_through);
                if let Err(e) = self.shared.store.advance_cursor(self.user.id, through) {
                    tracing::error!(user = %self.user.id, error = %e, "moving the cursor failed");
                }
            }
            UserMsg::History {
                before,
                limit,
                reply,
            } => {
                let before = before.min(Seq(self.durable_through.0.saturating_add(1)));
                let page = self
                    .shared
                    .store
                    .events_before(self.user.id, before, limit)
                    .map_err(|e| CoreError::Internal(e.to_string()));
                let _ = reply.send(page);
            }
            UserMsg::Presence { contact, online } => {
                let mut slow = Vec::new();
                for slot in self.sessions.iter().filter(|s| !s.puppet) {
                    let event = HubEvent::Presence {
                        user: contact.clone(),
                        online,
                    };
                    if !push(&self.shared, &slot.addr, SessionMsg::Event(event)) {
                        slow.push(slot.conn);
                    }
                }
                for conn in slow {
                    self.drop_slow(conn);
                }
            }
        }
        if self.sessions.is_empty() && self.idle_timer.is_none() {
            self.schedule_idle_check(ctx);
        }
    }
}

/// Router → user actor: stop now (the router has removed it from its map, so nothing
/// new can arrive).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

impl Handler<Retire> for UserActor {
    type Result = ();
    fn handle(&mut self, _msg: Retire, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
