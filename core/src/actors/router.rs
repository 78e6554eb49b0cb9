//! The router: owns the maps of live room and call actors, who is online and who is in
//! a call, and forwards every message to the actor that owns its subject. User actors
//! are reached through the [`UserDirectory`] (defined here, shared with every sender);
//! the router retires idle ones.

use super::call::{CallActor, CallMsg};
use super::room::{RetireRoom, RoomActor, RoomMsg};
use super::user::{Retire, UserActor};
use super::{SessionAddr, SessionMsg, Shared, ToUserActor, UserMsg};
use actix::prelude::*;
use hub_plugin_sdk::{
    Answer, CallId, CoreError, HubEvent, Origin, RoomId, RoomRef, UserId, UserRef,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use tokio::sync::oneshot;

struct RoomEntry {
    addr: Addr<RoomActor>,
    /// Messages forwarded to this actor; compared with what it reports having handled.
    routed: u64,
}

struct UserEntry {
    addr: Addr<UserActor>,
    /// Messages queued to this actor; compared with what it reports having handled.
    routed: AtomicU64,
}

impl UserEntry {
    /// Counts and queues `msg` if the actor is still running; gives it back otherwise.
    // The message comes back by value: boxing it would allocate on every send.
    #[allow(clippy::result_large_err)]
    fn queue(&self, msg: UserMsg) -> Result<(), UserMsg> {
        if !self.addr.connected() {
            return Err(msg);
        }
        self.routed.fetch_add(1, Relaxed);
        self.addr.do_send(ToUserActor(msg));
        Ok(())
    }
}

/// The live user actors, one per user at most. Whoever sends to a user goes through
/// here: straight to the live actor, or, if there is none, starting it (on the user
/// arbiters, round robin) and queuing the message before anyone else can see the new
/// actor. No sender waits for another actor's mailbox, and the router's thread is not a
/// hand-over on every message.
///
/// Why no message is lost or reordered:
/// - a sender looks up, counts (`routed`) and queues its message while holding a lock
///   (read for a live actor, write to start one), so one sender's messages to a user are
///   queued in the order sent, all to the same actor;
/// - an idle actor is retired (by the router, on its report) only under the write lock
///   and only if `routed` equals what it reported having handled, so an actor with a
///   message in flight is never retired; once retired it is unreachable, and the next
///   message starts a fresh actor.
pub struct UserDirectory {
    actors: RwLock<HashMap<UserId, UserEntry>>,
    shared: Arc<Shared>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
}

impl UserDirectory {
    /// A directory whose actors run on `arbiters` (round robin; none: the caller's).
    pub fn new(shared: Arc<Shared>, arbiters: Vec<ArbiterHandle>) -> Self {
        UserDirectory {
            actors: RwLock::new(HashMap::new()),
            shared,
            arbiters,
            next_arbiter: AtomicUsize::new(0),
        }
    }

    /// Queues `msg` to `user`'s actor, starting the actor (reporting to `router`) if
    /// none is live.
    pub fn send(&self, user: &UserRef, msg: UserMsg, router: &Addr<Router>) {
        let msg = {
            let actors = self.actors.read().unwrap_or_else(PoisonError::into_inner);
            match actors.get(&user.id) {
                Some(entry) => match entry.queue(msg) {
                    Ok(()) => return,
                    Err(msg) => msg,
                },
                None => msg,
            }
        };
        let mut actors = self.actors.write().unwrap_or_else(PoisonError::into_inner);
        // Another sender may have started it meanwhile.
        let msg = match actors.get(&user.id) {
            Some(entry) => match entry.queue(msg) {
                Ok(()) => return,
                Err(msg) => {
                    // Stopped on its own (its arbiter is gone): start another.
                    actors.remove(&user.id);
                    msg
                }
            },
            None => msg,
        };
        let actor = match UserActor::new(user.clone(), self.shared.clone(), router.clone()) {
            Ok(actor) => actor,
            Err(e) => {
                tracing::error!(user = %user.id, error = %e, "starting a user actor failed");
                return fail_user_msg(msg, "the user's stream is unavailable");
            }
        };
        let addr = if self.arbiters.is_empty() {
            actor.start()
        } else {
            let n = self.next_arbiter.fetch_add(1, Relaxed);
            UserActor::start_in_arbiter(&self.arbiters[n % self.arbiters.len()], move |_| actor)
        };
        addr.do_send(ToUserActor(msg));
        actors.insert(
            user.id,
            UserEntry {
                addr,
                routed: AtomicU64::new(1),
            },
        );
    }

    /// Retires `user`'s actor if it has handled all `seen` messages sent to it.
    fn retire_if_idle(&self, user: UserId, seen: u64) {
        let mut actors = self.actors.write().unwrap_or_else(PoisonError::into_inner);
        if actors
            .get(&user)
            .is_some_and(|e| e.routed.load(Relaxed) == seen)
        {
            if let Some(entry) = actors.remove(&user) {
                entry.addr.do_send(Retire);
            }
        }
    }
}

/// Messages to the router.
#[derive(Message)]
#[rtype(result = "()")]
pub enum RouterMsg {
    /// Forward to a user's actor (started if needed).
    ToUser {
        /// The user.
        user: UserRef,
        /// The message.
        msg: UserMsg,
    },
    /// A user actor has had nothing to do for a while.
    UserIdle {
        /// The user.
        user: UserId,
        /// Messages it has handled.
        seen: u64,
    },
    /// A user's first session attached or last one left.
    SetOnline {
        /// The user.
        user: UserRef,
        /// Online now?
        online: bool,
        /// The user's accepted contacts (told about the change).
        contacts: Vec<UserId>,
    },
    /// Send `to` the presence of those `contacts` that are online.
    PresenceSnapshot {
        /// Contacts to report on.
        contacts: Vec<UserId>,
        /// The session to tell.
        to: SessionAddr,
    },
    /// Two users just became contacts: if both are online, tell each about the other.
    ContactsLinked {
        /// One side.
        a: UserRef,
        /// The other side.
        b: UserRef,
    },
    /// Which of `ids` are online.
    OnlineAmong {
        /// Users to check.
        ids: Vec<UserId>,
        /// Answered with the online subset.
        reply: oneshot::Sender<Vec<UserId>>,
    },
    /// Forward to a room's actor (started if needed).
    ToRoom {
        /// The room.
        room: RoomRef,
        /// The message.
        msg: RoomMsg,
    },
    /// A room actor has had nothing to do for a while.
    RoomIdle {
        /// The room.
        room: RoomId,
        /// Messages it has handled.
        seen: u64,
    },
    /// Start a call.
    CallStart {
        /// Caller.
        from: UserRef,
        /// Callee.
        to: UserRef,
        /// Opaque offer.
        data: Vec<u8>,
        /// Where the command came from.
        origin: Origin,
        /// Answered with the call id once the ring is stored.
        reply: oneshot::Sender<Result<Answer, CoreError>>,
    },
    /// Forward to a call's actor.
    ToCall {
        /// The call.
        call: CallId,
        /// The message.
        msg: CallMsg,
    },
    /// A call is over; its parties are free.
    CallOver {
        /// The call.
        call: CallId,
        /// Its parties.
        parties: [UserId; 2],
    },
}

/// The router actor.
pub struct Router {
    shared: Arc<Shared>,
    users: Arc<UserDirectory>,
    online: HashMap<UserId, UserRef>,
    rooms: HashMap<RoomId, RoomEntry>,
    calls: HashMap<CallId, Addr<CallActor>>,
    in_call: HashMap<UserId, CallId>,
    next_call: u64,
}

impl Router {
    /// A router that reaches user actors through `users`.
    pub fn new(shared: Arc<Shared>, users: Arc<UserDirectory>) -> Self {
        Router {
            shared,
            users,
            online: HashMap::new(),
            rooms: HashMap::new(),
            calls: HashMap::new(),
            in_call: HashMap::new(),
            next_call: 1,
        }
    }

    fn route_to_user(&mut self, user: &UserRef, msg: UserMsg, ctx: &mut Context<Self>) {
        self.users.send(user, msg, &ctx.address());
    }
}

/// Answers the reply channel a message carries with an internal error.
fn fail_user_msg(msg: UserMsg, why: &str) {
    match msg {
        UserMsg::Append {
            reply: Some(reply), ..
        } => {
            let _ = reply.send(Err(CoreError::Internal(why.into())));
        }
        UserMsg::Attach { reply, .. } => {
            let _ = reply.send(Err(CoreError::Internal(why.into())));
        }
        UserMsg::History { reply, .. } => {
            let _ = reply.send(Err(CoreError::Internal(why.into())));
        }
        _ => {}
    }
}

impl Actor for Router {
    type Context = Context<Self>;
}

impl Handler<RouterMsg> for Router {
    type Result = ();

    fn handle(&mut self, msg: RouterMsg, ctx: &mut Context<Self>) {
        match msg {
            RouterMsg::ToUser { user, msg } => self.route_to_user(&user, msg, ctx),
            RouterMsg::UserIdle { user, seen } => self.users.retire_if_idle(user, seen),
            RouterMsg::SetOnline {
                user,
                online,
                contacts,
            } => {
                if online {
                    self.online.insert(user.id, user.clone());
                } else {
                    self.online.remove(&user.id);
                    // A user who vanished cannot stay in a call.
                    if let Some(call) = self.in_call.get(&user.id).copied() {
                        if let Some(addr) = self.calls.get(&call) {
                            addr.do_send(CallMsg::PartyGone { user: user.id });
                        }
                    }
                }
                tracing::debug!(user = %user.id, online, "presence");
                for contact in contacts {
                    if let Some(contact_ref) = self.online.get(&contact).cloned() {
                        let msg = UserMsg::Presence {
                            contact: user.clone(),
                            online,
                        };
                        self.route_to_user(&contact_ref, msg, ctx);
                    }
                }
            }
            RouterMsg::PresenceSnapshot { contacts, to } => {
                for contact in contacts {
                    if let Some(user) = self.online.get(&contact) {
                        let _ = to.try_send(SessionMsg::Event(HubEvent::Presence {
                            user: user.clone(),
                            online: true,
                        }));
                    }
                }
            }
            RouterMsg::ContactsLinked { a, b } => {
                if self.online.contains_key(&a.id) && self.online.contains_key(&b.id) {
                    let to_a = UserMsg::Presence {
                        contact: b.clone(),
                        online: true,
                    };
                    let to_b = UserMsg::Presence {
                        contact: a.clone(),
                        online: true,
                    };
                    self.route_to_user(&a, to_a, ctx);
                    self.route_to_user(&b, to_b, ctx);
                }
            }
            RouterMsg::OnlineAmong { ids, reply } => {
                let online = ids
                    .into_iter()
                    .filter(|id| self.online.contains_key(id))
                    .collect();
                let _ = reply.send(online);
            }
            RouterMsg::ToRoom { room, msg } => {
                let entry = self.rooms.entry(room.id).or_insert_with(|| RoomEntry {
                    addr: RoomActor::new(room.clone(), self.shared.clone(), ctx.address()).start(),
                    routed: 0,
                });
                entry.routed += 1;
                entry.addr.do_send(msg);
            }
            RouterMsg::RoomIdle { room, seen } => {
                if self.rooms.get(&room).is_some_and(|e| e.routed == seen) {
                    if let Some(entry) = self.rooms.remove(&room) {
                        entry.addr.do_send(RetireRoom);
                    }
                }
            }
            RouterMsg::CallStart {
                from,
                to,
                data,
                origin,
                reply,
            } => {
                if !self.online.contains_key(&to.id) {
                    let _ = reply.send(Err(CoreError::Offline));
                    return;
                }
                if from.id == to.id {
                    let _ = reply.send(Err(CoreError::Invalid("cannot call yourself".into())));
                    return;
                }
                if self.in_call.contains_key(&from.id) || self.in_call.contains_key(&to.id) {
                    let _ = reply.send(Err(CoreError::Busy));
                    return;
                }
                let call = CallId(self.next_call);
                self.next_call += 1;
                self.in_call.insert(from.id, call);
                self.in_call.insert(to.id, call);
                let actor =
                    CallActor::new(call, from, to, origin, self.shared.clone(), ctx.address());
                let addr = actor.start();
                addr.do_send(CallMsg::Ring { data, reply });
                self.calls.insert(call, addr);
            }
            RouterMsg::ToCall { call, msg } => match self.calls.get(&call) {
                Some(addr) => addr.do_send(msg),
                None => msg.refuse(CoreError::NoSuchCall),
            },
            RouterMsg::CallOver { call, parties } => {
                self.calls.remove(&call);
                for party in parties {
                    if self.in_call.get(&party) == Some(&call) {
                        self.in_call.remove(&party);
                    }
                }
            }
        }
    }
}
