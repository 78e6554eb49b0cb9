//! One actor per call: ringing, accepted, rejected, missed after a timeout, ended.
//!
//! ```text
//!            accept                 hangup / party gone
//!  Ringing ─────────▶ Active ─────────────────────────▶ over
//!     │  reject ─▶ Rejected to caller ─▶ over
//!     │  hangup by caller ─▶ Ended to callee ─▶ over
//!     │  ring timeout ─▶ Missed to both ─▶ over
//!     └  party gone ─▶ Ended to the other ─▶ over
//! ```
//!
//! Every signal is a hub event in the recipient's stream (stored, then delivered). The
//! router marks both parties busy from start to [`RouterMsg::CallOver`].

use super::router::{Router, RouterMsg};
use super::{all_stored, make_event, Shared, UserMsg};
use actix::prelude::*;
use hub_plugin_sdk::{
    Answer, CallId, CallNotice, CoreError, EventBody, Origin, Target, UserId, UserRef,
};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Reply channel for call operations.
pub type CallReply = oneshot::Sender<Result<Answer, CoreError>>;

/// Messages to a call actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum CallMsg {
    /// Ring the callee (sent once by the router at start).
    Ring {
        /// Opaque offer.
        data: Vec<u8>,
        /// Answered with the call id once the ring is stored.
        reply: CallReply,
    },
    /// The callee accepts or rejects.
    Reply {
        /// Who answers (must be the callee).
        by: UserId,
        /// Accept?
        accept: bool,
        /// Opaque answer.
        data: Vec<u8>,
        /// Answered with `Done`.
        reply: CallReply,
    },
    /// Opaque data for the other party.
    Signal {
        /// Sender (a party).
        by: UserId,
        /// Data.
        data: Vec<u8>,
        /// Answered with `Done`.
        reply: CallReply,
    },
    /// A party hangs up.
    Hangup {
        /// Who.
        by: UserId,
        /// Answered with `Done`.
        reply: CallReply,
    },
    /// A party went offline.
    PartyGone {
        /// Who.
        user: UserId,
    },
}

impl CallMsg {
    /// Answers the message's reply channel (if any) with `error`.
    pub fn refuse(self, error: CoreError) {
        match self {
            CallMsg::Ring { reply, .. }
            | CallMsg::Reply { reply, .. }
            | CallMsg::Signal { reply, .. }
            | CallMsg::Hangup { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            CallMsg::PartyGone { .. } => {}
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Ringing,
    Active,
    Over,
}

/// The call actor.
pub struct CallActor {
    id: CallId,
    caller: UserRef,
    callee: UserRef,
    origin: Origin,
    phase: Phase,
    /// Store futures still running: the actor stops only once they are done, since
    /// stopping drops them and with them the replies they carry.
    inflight: usize,
    shared: Arc<Shared>,
    router: Addr<Router>,
}

impl CallActor {
    /// A new call, not yet ringing.
    pub fn new(
        id: CallId,
        caller: UserRef,
        callee: UserRef,
        origin: Origin,
        shared: Arc<Shared>,
        router: Addr<Router>,
    ) -> Self {
        CallActor {
            id,
            caller,
            callee,
            origin,
            phase: Phase::Ringing,
            inflight: 0,
            shared,
            router,
        }
    }

    fn party(&self, user: UserId) -> Option<(&UserRef, &UserRef)> {
        if user == self.caller.id {
            Some((&self.caller, &self.callee))
        } else if user == self.callee.id {
            Some((&self.callee, &self.caller))
        } else {
            None
        }
    }

    /// Stores `notice` (caused by `from`) in each of `to`'s streams; answers `reply` once
    /// stored.
    fn signal(
        &mut self,
        ctx: &mut Context<Self>,
        from: &UserRef,
        to: &[&UserRef],
        notice: CallNotice,
        answer: Answer,
        reply: Option<CallReply>,
    ) {
        let mut replies = Vec::new();
        for recipient in to {
            let body = EventBody::Call {
                call: self.id,
                notice: notice.clone(),
            };
            let event = match make_event(
                &self.shared,
                self.origin.clone(),
                from.clone(),
                Target::User((*recipient).clone()),
                body,
            ) {
                Ok(event) => event,
                Err(e) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e));
                    }
                    return;
                }
            };
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            self.router.do_send(RouterMsg::ToUser {
                user: (*recipient).clone(),
                msg: UserMsg::Append {
                    event,
                    skip_conn: None,
                    reply: Some(tx),
                    dedup: None,
                },
            });
        }
        self.inflight += 1;
        ctx.spawn(
            async move {
                let result = all_stored(replies).await.map(|()| answer);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            .into_actor(self)
            .map(|(), act, ctx| {
                act.inflight -= 1;
                act.stop_when_done(ctx);
            }),
        );
    }

    fn finish(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Over;
        self.router.do_send(RouterMsg::CallOver {
            call: self.id,
            parties: [self.caller.id, self.callee.id],
        });
        self.stop_when_done(ctx);
    }

    fn stop_when_done(&mut self, ctx: &mut Context<Self>) {
        if self.phase == Phase::Over && self.inflight == 0 {
            ctx.stop();
        }
    }
}

impl Actor for CallActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        self.shared.metrics.calls.fetch_add(1, Relaxed);
        tracing::debug!(call = %self.id, caller = %self.caller.id, callee = %self.callee.id, "call ringing");
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.shared.metrics.calls.fetch_sub(1, Relaxed);
        tracing::debug!(call = %self.id, "call over");
    }
}

impl Handler<CallMsg> for CallActor {
    type Result = ();

    fn handle(&mut self, msg: CallMsg, ctx: &mut Context<Self>) {
        if self.phase == Phase::Over {
            msg.refuse(CoreError::NoSuchCall);
            return;
        }
        let (caller, callee) = (self.caller.clone(), self.callee.clone());
        match msg {
            CallMsg::Ring { data, reply } => {
                let answer = Answer::Call { call: self.id };
                self.signal(
                    ctx,
                    &caller,
                    &[&callee],
                    CallNotice::Ring { data },
                    answer,
                    Some(reply),
                );
                let timeout = self.shared.settings.ring_timeout;
                ctx.run_later(timeout, move |act, ctx| {
                    if act.phase == Phase::Ringing {
                        let (caller, callee) = (act.caller.clone(), act.callee.clone());
                        act.signal(
                            ctx,
                            &callee,
                            &[&caller, &callee],
                            CallNotice::Missed,
                            Answer::Done,
                            None,
                        );
                        act.finish(ctx);
                    }
                });
            }
            CallMsg::Reply {
                by,
                accept,
                data,
                reply,
            } => {
                if by != callee.id || self.phase != Phase::Ringing {
                    let _ = reply.send(Err(CoreError::NoSuchCall));
                    return;
                }
                if accept {
                    self.phase = Phase::Active;
                    self.signal(
                        ctx,
                        &callee,
                        &[&caller],
                        CallNotice::Accepted { data },
                        Answer::Done,
                        Some(reply),
                    );
                } else {
                    self.signal(
                        ctx,
                        &callee,
                        &[&caller],
                        CallNotice::Rejected,
                        Answer::Done,
                        Some(reply),
                    );
                    self.finish(ctx);
                }
            }
            CallMsg::Signal { by, data, reply } => {
                let Some((from, to)) = self.party(by).map(|(a, b)| (a.clone(), b.clone())) else {
                    let _ = reply.send(Err(CoreError::NoSuchCall));
                    return;
                };
                self.signal(
                    ctx,
                    &from,
                    &[&to],
                    CallNotice::Signal { data },
                    Answer::Done,
                    Some(reply),
                );
            }
            CallMsg::Hangup { by, reply } => {
                let Some((from, to)) = self.party(by).map(|(a, b)| (a.clone(), b.clone())) else {
                    let _ = reply.send(Err(CoreError::NoSuchCall));
                    return;
                };
                // The callee hanging up a ringing call is a rejection.
                let notice = if self.phase == Phase::Ringing && by == callee.id {
                    CallNotice::Rejected
                } else {
                    CallNotice::Ended
                };
                self.signal(ctx, &from, &[&to], notice, Answer::Done, Some(reply));
                self.finish(ctx);
            }
            CallMsg::PartyGone { user } => {
                if let Some((from, to)) = self.party(user).map(|(a, b)| (a.clone(), b.clone())) {
                    self.signal(ctx, &from, &[&to], CallNotice::Ended, Answer::Done, None);
                    self.finish(ctx);
                }
            }
        }
    }
}
