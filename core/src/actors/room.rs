//! One actor per active room: membership (kept in the store) and fan-out.
//!
//! A message to a room becomes one event, appended to every member's stream but the
//! sender's; it is accepted once every copy is durable. Members see joins and leaves.

use super::router::{Router, RouterMsg};
use super::{all_stored, make_event, Shared, UserMsg};
use actix::prelude::*;
use hub_plugin_sdk::{
    Answer, Content, CoreError, EventBody, Origin, RoomNotice, RoomRef, Target, UserId, UserRef,
};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Reply channel for room operations.
pub type RoomReply = oneshot::Sender<Result<Answer, CoreError>>;

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
    /// Fan a message out to the members.
    Send {
        /// The sender (must be a member).
        from: UserRef,
        /// Where it came from.
        origin: Origin,
        /// Content.
        content: Content,
        /// Answered with `Accepted` once every copy is durable.
        reply: RoomReply,
    },
}

/// The room actor.
pub struct RoomActor {
    room: RoomRef,
    shared: Arc<Shared>,
    router: Addr<Router>,
    members: HashMap<UserId, UserRef>,
    /// Messages handled, reported to the router when idle.
    handled: u64,
    /// Fan-outs still waiting for their copies to be stored: the actor is not retired
    /// while any runs (retiring would drop their replies).
    inflight: usize,
    idle_timer: Option<SpawnHandle>,
}

impl RoomActor {
    /// A room actor; members are loaded from the store when it starts.
    pub fn new(room: RoomRef, shared: Arc<Shared>, router: Addr<Router>) -> Self {
        RoomActor {
            room,
            shared,
            router,
            members: HashMap::new(),
            handled: 0,
            inflight: 0,
            idle_timer: None,
        }
    }

    /// Appends `body` to every member's stream except the sender's (`from`), then
    /// answers `reply` with `answer` once all copies are durable.
    fn fan_out(
        &mut self,
        ctx: &mut Context<Self>,
        origin: Origin,
        from: UserRef,
        body: EventBody,
        answer: impl FnOnce(hub_plugin_sdk::EventId) -> Answer + 'static,
        reply: RoomReply,
    ) {
        let except = from.id;
        let event = match make_event(
            &self.shared,
            origin.clone(),
            from,
            Target::Room(self.room.clone()),
            body,
        ) {
            Ok(event) => event,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.shared.metrics.routed.fetch_add(1, Relaxed);
        let mut replies = Vec::new();
        for member in self.members.values().filter(|m| m.id != except) {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            self.router.do_send(RouterMsg::ToUser {
                user: member.clone(),
                msg: UserMsg::Append {
                    event: event.clone(),
                    skip_conn: origin.conn,
                    reply: Some(tx),
                },
            });
        }
        let id = event.id;
        self.inflight += 1;
        ctx.spawn(
            async move {
                let _ = reply.send(all_stored(replies).await.map(|()| answer(id)));
            }
            .into_actor(self)
            .map(|(), act, _ctx| act.inflight -= 1),
        );
    }

    /// Asks the router to retire this actor after `user_idle` without messages.
    fn schedule_idle_check(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.idle_timer.take() {
            ctx.cancel_future(timer);
        }
        let idle = self.shared.settings.user_idle;
        self.idle_timer = Some(ctx.run_later(idle, |act, ctx| {
            act.idle_timer = None;
            if act.inflight == 0 {
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
                    let room = self.room.clone();
                    self.fan_out(
                        ctx,
                        origin,
                        user,
                        EventBody::Room(RoomNotice::Joined),
                        move |_| Answer::Room(room),
                        reply,
                    );
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
                    self.fan_out(
                        ctx,
                        origin,
                        user,
                        EventBody::Room(RoomNotice::Left),
                        |_| Answer::Done,
                        reply,
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
            } => {
                if !self.members.contains_key(&from.id) {
                    let _ = reply.send(Err(CoreError::NotMember));
                    return;
                }
                self.fan_out(
                    ctx,
                    origin,
                    from,
                    EventBody::Message(content),
                    |event| Answer::Accepted { event },
                    reply,
                );
            }
        }
    }
}
