//! The core as connection actors see it: [`Core::execute`] turns a plugin's
//! [`Op`] into store work and actor messages and returns the answer as a future.
//!
//! Everything that must happen in command order (enqueueing to the router) happens
//! synchronously inside `execute`; only the waiting is in the returned future. So two
//! commands from one connection reach their actors in the order the plugin emitted them.

use crate::accounts;
use crate::actors::call::CallMsg;
use crate::actors::room::RoomMsg;
use crate::actors::router::{Router, RouterMsg, UserDirectory};
use crate::actors::{make_event, CoreSettings, SessionAddr, SessionMsg, Shared, UserMsg};
use crate::files::{Download, FileDir, Upload};
use crate::metrics::Metrics;
use crate::store::{Storage, StoreError};
use actix::prelude::*;
use hub_plugin_sdk::{
    Address, Answer, ConnId, ContactEntry, ContactNotice, ContactState, Content, CoreError,
    EventBody, HubEvent, Op, Origin, RoomRef, Target, UserRef,
};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The future [`Core::execute`] returns.
pub type Pending = Pin<Box<dyn Future<Output = Result<Answer, CoreError>> + Send>>;

/// What the core knows about one connection. Owned by its connection actor.
pub struct ConnContext {
    /// The connection.
    pub conn: ConnId,
    /// The plugin serving it.
    pub plugin: String,
    /// The peer's IP address.
    pub peer_ip: String,
    /// Its acting user, once authenticated.
    pub identity: Option<UserRef>,
    /// Where deliveries go (`None` for one-shot HTTP sessions, which cannot bind).
    pub addr: Option<SessionAddr>,
    /// Attached to its user's stream (after `Bind`).
    pub attached: bool,
    /// Rooms this connection is present in (`EnterRoom`), left when it closes.
    present: Vec<RoomRef>,
    /// Puppets whose streams this connection carries (`Puppet`), detached when it closes.
    puppets: Vec<UserRef>,
    upload: Option<Upload>,
    download: Option<Download>,
    /// Users this connection recently sent to by handle, newest last (at most
    /// [`RECENT_HANDLES`]): handles are never renamed or freed, so a resolved handle
    /// stays right and a chat's every message need not read the handles tree.
    recent: Vec<UserRef>,
}

/// Handles a connection's send path remembers resolved.
const RECENT_HANDLES: usize = 8;

impl ConnContext {
    /// A new connection's context.
    pub fn new(conn: ConnId, plugin: &str, peer_ip: &str, addr: Option<SessionAddr>) -> Self {
        ConnContext {
            conn,
            plugin: plugin.to_owned(),
            peer_ip: peer_ip.to_owned(),
            identity: None,
            addr,
            attached: false,
            present: Vec::new(),
            puppets: Vec::new(),
            upload: None,
            download: None,
            recent: Vec::new(),
        }
    }

    fn origin(&self) -> Origin {
        Origin {
            plugin: self.plugin.clone(),
            conn: Some(self.conn),
        }
    }

    fn me(&self) -> Result<UserRef, CoreError> {
        self.identity.clone().ok_or(CoreError::NotBound)
    }
}

/// Bound sessions by (plugin, peer IP): for servers that authorize by address. Touched
/// on bind and disconnect only, never per message.
type PeerMap = Arc<Mutex<HashMap<(String, String), Vec<(ConnId, UserRef)>>>>;

/// Service sessions by plugin, for `Op::Signal`. Touched when a service session starts
/// or stops, and read (not on the message path) per signal.
type ServiceMap = Arc<Mutex<HashMap<String, Vec<(ConnId, SessionAddr)>>>>;

/// Handle to the running core (cheap to clone, `Send + Sync`).
#[derive(Clone)]
pub struct Core {
    shared: Arc<Shared>,
    router: Addr<Router>,
    /// The live user actors, for sending to them without the router hop.
    users: Arc<UserDirectory>,
    files: FileDir,
    peers: PeerMap,
    services: ServiceMap,
    /// Bounds concurrent password hashing (argon2 takes ~19 MiB and tens of ms each):
    /// a flood of signins queues here instead of exhausting memory and threads.
    hashing: Arc<tokio::sync::Semaphore>,
}

/// How long login nonces are remembered (replays within it are refused).
const NONCE_MEMORY_MS: u64 = 48 * 3600 * 1000;

/// How often expired files are swept.
const FILE_SWEEP: std::time::Duration = std::time::Duration::from_secs(600);

/// Largest `Op::Status` query.
const MAX_STATUS_QUERY: usize = 4096;

/// Rooms one connection may be present in at once.
const MAX_PRESENT_PER_CONN: usize = 64;

/// Longest alias namespace or native identity, in bytes.
const MAX_ALIAS_BYTES: usize = 512;

/// Longest key of a plugin's own key space.
const MAX_PLUGIN_KEY: usize = 1024;

/// Largest value a plugin may store under one key.
const MAX_PLUGIN_VALUE: usize = 64 * 1024;

/// Largest page of history or of a plugin's key space.
const MAX_PAGE: usize = 1000;

/// Largest `Op::Signal` payload.
const MAX_SIGNAL: usize = 4096;

/// Largest idempotency key of `Op::SendOnce`.
const MAX_DEDUP_KEY: usize = 256;

/// Puppets one connection may carry.
const MAX_PUPPETS: usize = 4096;

fn check_plugin_key(key: &[u8]) -> Result<(), CoreError> {
    if key.len() > MAX_PLUGIN_KEY {
        return Err(CoreError::Invalid(format!(
            "a stored key is at most {MAX_PLUGIN_KEY} bytes"
        )));
    }
    Ok(())
}

fn regkey_bytes(regkey: &[u8]) -> Result<[u8; 32], CoreError> {
    regkey.try_into().map_err(|_| {
        CoreError::Invalid(format!(
            "a registration key is 32 bytes, not {}",
            regkey.len()
        ))
    })
}

fn valid_room_name(name: &str) -> Result<(), CoreError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(CoreError::Invalid(
            "room name must be 1-128 printable bytes".into(),
        ));
    }
    Ok(())
}

fn download_size(download: &Download) -> u64 {
    download.size()
}

fn internal(e: StoreError) -> CoreError {
    CoreError::Internal(e.to_string())
}

fn ready(result: Result<Answer, CoreError>) -> Pending {
    Box::pin(std::future::ready(result))
}

fn await_reply(rx: oneshot::Receiver<Result<Answer, CoreError>>) -> Pending {
    Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| Err(CoreError::Internal("the core is shutting down".into())))
    })
}

impl Core {
    /// Sends `msg` to `user`'s actor, straight from this thread (see `UserDirectory`).
    fn to_user(&self, user: UserRef, msg: UserMsg) {
        self.users.send(&user, msg, &self.router);
    }

    /// Starts the router (and user arbiters). Call inside a running actix system.
    pub fn start(store: Arc<dyn Storage>, metrics: Arc<Metrics>, settings: CoreSettings) -> Core {
        let files = FileDir(settings.files_dir.clone());
        files.clean_partials();
        let arbiters = (0..settings.user_threads.max(1))
            .map(|_| Arbiter::new().handle())
            .collect();
        let shared = Arc::new(Shared {
            store,
            metrics,
            settings,
        });
        let router_shared = shared.clone();
        let users = Arc::new(UserDirectory::new(shared.clone(), arbiters));
        let router_users = users.clone();
        let router = Router::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            Router::new(router_shared, router_users)
        });
        let (sweep_files, sweep_shared) = (files.clone(), shared.clone());
        actix::spawn(async move {
            loop {
                match sweep_files.sweep(sweep_shared.store.as_ref(), crate::actors::unix_ms()) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "expired files removed"),
                    Err(error) => tracing::error!(%error, "file sweep failed"),
                }
                tokio::time::sleep(FILE_SWEEP).await;
            }
        });
        Core {
            shared,
            router,
            users,
            files,
            peers: Arc::new(Mutex::new(HashMap::new())),
            services: Arc::new(Mutex::new(HashMap::new())),
            hashing: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.shared.store
    }

    /// The core's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    fn resolve_user(&self, address: &Address) -> Result<UserRef, CoreError> {
        match address {
            // A handle names its account exactly (handles are never renamed), so the id
            // is all that needs looking up.
            Address::Handle(handle) => {
                let id = self.shared.store.user_by_handle(handle).map_err(internal)?;
                Ok(UserRef {
                    id: id.ok_or(CoreError::NoSuchUser)?,
                    handle: handle.clone(),
                })
            }
            Address::User(id) => {
                let account = self.shared.store.account(*id).map_err(internal)?;
                let account = account.ok_or(CoreError::NoSuchUser)?;
                Ok(UserRef {
                    id: account.id,
                    handle: account.handle,
                })
            }
            Address::Room(_) => Err(CoreError::NoSuchUser),
        }
    }

    /// [`Core::resolve_user`] through the connection's recently used handles.
    fn resolve_recent(
        &self,
        ctx: &mut ConnContext,
        address: &Address,
    ) -> Result<UserRef, CoreError> {
        let Address::Handle(handle) = address else {
            return self.resolve_user(address);
        };
        if let Some(user) = ctx.recent.iter().find(|u| &u.handle == handle) {
            return Ok(user.clone());
        }
        let user = self.resolve_user(address)?;
        if ctx.recent.len() >= RECENT_HANDLES {
            ctx.recent.remove(0);
        }
        ctx.recent.push(user.clone());
        Ok(user)
    }

    fn resolve_room(&self, name: &str) -> Result<RoomRef, CoreError> {
        let id = self
            .shared
            .store
            .room_by_name(name)
            .map_err(internal)?
            .ok_or(CoreError::NoSuchRoom)?;
        Ok(RoomRef {
            id,
            name: name.to_owned(),
        })
    }

    fn blocking(
        &self,
        work: impl FnOnce(&dyn Storage, &accounts::AccountPolicy) -> Result<Answer, CoreError>
            + Send
            + 'static,
    ) -> Pending {
        let (shared, hashing) = (self.shared.clone(), self.hashing.clone());
        Box::pin(async move {
            let _permit = hashing
                .acquire_owned()
                .await
                .map_err(|_| CoreError::Internal("hashing closed".into()))?;
            tokio::task::spawn_blocking(move || {
                work(shared.store.as_ref(), &shared.settings.accounts)
            })
            .await
            .unwrap_or_else(|e| Err(CoreError::Internal(format!("hashing task: {e}"))))
        })
    }

    /// Appends one event to one user's stream; the future resolves once it is durable.
    fn append_to(&self, ctx: &ConnContext, to: UserRef, from: UserRef, body: EventBody) -> Pending {
        let skip = Self::skip_for(ctx, &to, &from);
        self.append(ctx, to, from, body, skip, None)
    }

    /// The connection an event is not pushed to: the one it came from, unless that is the
    /// recipient's own (then the event is part of the stream the connection reads, and
    /// skipping it would leave a hole in the positions a client resumes from).
    fn skip_for(ctx: &ConnContext, to: &UserRef, from: &UserRef) -> Option<ConnId> {
        (to.id != from.id).then_some(ctx.conn)
    }

    /// [`Core::append_to`] with the connection the event is not pushed to (`None`: all)
    /// and an optional idempotency key.
    fn append(
        &self,
        ctx: &ConnContext,
        to: UserRef,
        from: UserRef,
        body: EventBody,
        skip_conn: Option<ConnId>,
        dedup: Option<Vec<u8>>,
    ) -> Pending {
        let event = match make_event(
            &self.shared,
            ctx.origin(),
            from,
            Target::User(to.clone()),
            body,
        ) {
            Ok(event) => event,
            Err(e) => return ready(Err(e)),
        };
        self.shared.metrics.routed.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        self.to_user(
            to,
            UserMsg::Append {
                event,
                skip_conn,
                reply: Some(tx),
                dedup,
            },
        );
        Box::pin(async move {
            match rx.await {
                Ok(Ok(appended)) => Ok(Answer::Accepted {
                    event: appended.event,
                }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(CoreError::Internal("the core is shutting down".into())),
            }
        })
    }

    /// Carries out one command for connection `ctx`.
    pub fn execute(&self, ctx: &mut ConnContext, op: Op) -> Pending {
        let now = crate::actors::unix_ms();
        match op {
            Op::Signup {
                handle,
                password,
                scheme,
            } => self.blocking(move |store, policy| {
                accounts::signup(store, &handle, &password, scheme, now, policy)
            }),
            Op::Signin { handle, password } => self.blocking(move |store, policy| {
                accounts::signin(store, &handle, &password, now, policy)
            }),
            Op::CheckToken { token } => ready(accounts::check_token(
                self.shared.store.as_ref(),
                &token,
                now,
            )),
            Op::Authenticate { user } => ready(self.authenticate(ctx, user).map(Answer::User)),
            Op::Bind {
                user,
                exclusive,
                resume_after,
            } => {
                let user = match self.authenticate(ctx, user) {
                    Ok(user) => user,
                    Err(e) => return ready(Err(e)),
                };
                if ctx.attached {
                    return ready(Err(CoreError::Invalid("already subscribed".into())));
                }
                let Some(addr) = ctx.addr.clone() else {
                    return ready(Err(CoreError::Invalid(
                        "this transport cannot subscribe".into(),
                    )));
                };
                ctx.attached = true;
                let (tx, rx) = oneshot::channel();
                self.to_user(
                    user.clone(),
                    UserMsg::Attach {
                        conn: ctx.conn,
                        exclusive,
                        resume_after,
                        puppet: false,
                        addr,
                        reply: tx,
                    },
                );
                let (peers, key, conn) = (
                    self.peers.clone(),
                    (ctx.plugin.clone(), ctx.peer_ip.clone()),
                    ctx.conn,
                );
                Box::pin(async move {
                    match rx.await {
                        Ok(Ok(cursor)) => {
                            if let Ok(mut peers) = peers.lock() {
                                peers.entry(key).or_default().push((conn, user.clone()));
                            }
                            Ok(Answer::Bound { user, cursor })
                        }
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(CoreError::Internal("the core is shutting down".into())),
                    }
                })
            }
            Op::Resolve { address } => ready(match &address {
                Address::Room(name) => self.resolve_room(name).map(Answer::Room),
                _ => self.resolve_user(&address).map(Answer::User),
            }),
            Op::Send { to, content } => {
                let me = match ctx.me() {
                    Ok(me) => me,
                    Err(e) => return ready(Err(e)),
                };
                match to {
                    Address::Room(name) => self.send_to_room(ctx, &name, me, content, None, false),
                    address => match self.resolve_recent(ctx, &address) {
                        Ok(to) => self.append_to(ctx, to, me, EventBody::Message(content)),
                        Err(e) => ready(Err(e)),
                    },
                }
            }
            Op::Ack { through } => {
                if let (Some(me), true) = (&ctx.identity, ctx.attached) {
                    self.to_user(me.clone(), UserMsg::Ack { through });
                }
                ready(Ok(Answer::Done))
            }
            Op::Invite { to } => self.contact_change(ctx, to, None),
            Op::InviteReply { to, accept } => self.contact_change(ctx, to, Some(accept)),
            Op::Contacts => self.contacts(ctx),
            Op::JoinRoom { room } => self.room_op(ctx, room, true),
            Op::LeaveRoom { room } => self.room_op(ctx, room, false),
            Op::CallStart { to, data } => {
                let (me, to) = match ctx.me().and_then(|me| Ok((me, self.resolve_user(&to)?))) {
                    Ok(pair) => pair,
                    Err(e) => return ready(Err(e)),
                };
                let (reply, rx) = oneshot::channel();
                self.router.do_send(RouterMsg::CallStart {
                    from: me,
                    to,
                    data,
                    origin: ctx.origin(),
                    reply,
                });
                await_reply(rx)
            }
            Op::CallReply { call, accept, data } => {
                self.call_op(ctx, call, |by, reply| CallMsg::Reply {
                    by,
                    accept,
                    data,
                    reply,
                })
            }
            Op::CallSignal { call, data } => {
                self.call_op(ctx, call, |by, reply| CallMsg::Signal { by, data, reply })
            }
            Op::CallHangup { call } => {
                self.call_op(ctx, call, |by, reply| CallMsg::Hangup { by, reply })
            }
            Op::Alias {
                namespace,
                native,
                handles,
            } => ready(self.alias(&namespace, &native, &handles, now)),
            Op::EnterRoom {
                room,
                key_agreement,
            } => self.enter_room(ctx, room, key_agreement),
            Op::FindAlias { namespace, native } => ready((|| {
                let store = self.shared.store.as_ref();
                let id = store
                    .alias(&namespace, &native)
                    .map_err(internal)?
                    .ok_or(CoreError::NoSuchUser)?;
                self.resolve_user(&Address::User(id)).map(Answer::User)
            })()),
            Op::Load { key } => ready(
                check_plugin_key(&key)
                    .and_then(|()| {
                        self.shared
                            .store
                            .plugin_value(&ctx.plugin, &key)
                            .map_err(internal)
                    })
                    .map(Answer::Value),
            ),
            Op::Store { key, value } => {
                if let Err(e) = check_plugin_key(&key) {
                    return ready(Err(e));
                }
                if value.as_ref().is_some_and(|v| v.len() > MAX_PLUGIN_VALUE) {
                    return ready(Err(CoreError::Invalid(format!(
                        "a stored value is at most {MAX_PLUGIN_VALUE} bytes"
                    ))));
                }
                let store = self.shared.store.clone();
                if let Err(e) = store.put_plugin_value(&ctx.plugin, &key, value.as_deref()) {
                    return ready(Err(internal(e)));
                }
                Box::pin(async move {
                    store
                        .durable()
                        .await
                        .map(|()| Answer::Done)
                        .map_err(CoreError::Internal)
                })
            }
            Op::Scan {
                prefix,
                after,
                limit,
            } => ready(
                self.shared
                    .store
                    .plugin_values(
                        &ctx.plugin,
                        &prefix,
                        after.as_deref(),
                        limit.min(MAX_PAGE as u32) as usize,
                    )
                    .map(Answer::Entries)
                    .map_err(internal),
            ),
            Op::Notify { content } => match ctx.me() {
                Ok(me) => self.append(ctx, me.clone(), me, EventBody::Message(content), None, None),
                Err(e) => ready(Err(e)),
            },
            Op::Puppet { user } => self.puppet(ctx, user),
            Op::Unpuppet { user } => {
                if let Some(index) = ctx.puppets.iter().position(|p| p.id == user) {
                    let puppet = ctx.puppets.remove(index);
                    self.to_user(puppet, UserMsg::Detach { conn: ctx.conn });
                }
                ready(Ok(Answer::Done))
            }
            Op::PuppetAck { user, through } => {
                if let Some(puppet) = ctx.puppets.iter().find(|p| p.id == user) {
                    self.to_user(puppet.clone(), UserMsg::Ack { through });
                }
                ready(Ok(Answer::Done))
            }
            Op::PuppetHistory {
                user,
                before,
                limit,
            } => {
                let puppet = match self.puppet_user(ctx, user) {
                    Ok(puppet) => puppet,
                    Err(e) => return ready(Err(e)),
                };
                let cursor = match self.shared.store.cursor(user) {
                    Ok(cursor) => cursor,
                    Err(e) => return ready(Err(internal(e))),
                };
                let page = self.history(puppet, before, limit as usize);
                Box::pin(async move { page.await.map(|page| Answer::PuppetPage { page, cursor }) })
            }
            Op::SendOnce {
                key,
                from,
                to,
                content,
            } => self.send_once(ctx, key, from, to, content),
            Op::Signal { data } => {
                if data.len() > MAX_SIGNAL {
                    return ready(Err(CoreError::Invalid(format!(
                        "a signal is at most {MAX_SIGNAL} bytes"
                    ))));
                }
                if let Ok(services) = self.services.lock() {
                    for (_, addr) in services.get(&ctx.plugin).into_iter().flatten() {
                        let _ = addr
                            .try_send(SessionMsg::Event(HubEvent::Signal { data: data.clone() }));
                    }
                }
                ready(Ok(Answer::Done))
            }
            Op::History { before, limit } => {
                let me = match ctx.me() {
                    Ok(me) => me,
                    Err(e) => return ready(Err(e)),
                };
                let page = self.history(me, before, limit as usize);
                Box::pin(async move { page.await.map(Answer::History) })
            }
            Op::RoomHistory {
                room,
                before,
                limit,
            } => {
                let (me, room) = match ctx.me().and_then(|me| Ok((me, self.resolve_room(&room)?))) {
                    Ok(pair) => pair,
                    Err(e) => return ready(Err(e)),
                };
                let (reply, rx) = oneshot::channel();
                self.router.do_send(RouterMsg::ToRoom {
                    room,
                    msg: RoomMsg::History {
                        user: me.id,
                        before,
                        limit: (limit as usize).min(MAX_PAGE),
                        reply,
                    },
                });
                Box::pin(async move {
                    rx.await
                        .unwrap_or_else(|_| {
                            Err(CoreError::Internal("the core is shutting down".into()))
                        })
                        .map(Answer::History)
                })
            }
            Op::RoomMembers { room } => {
                let room = match self.resolve_room(&room) {
                    Ok(room) => room,
                    Err(e) => return ready(Err(e)),
                };
                let (reply, rx) = oneshot::channel();
                self.router.do_send(RouterMsg::ToRoom {
                    room,
                    msg: RoomMsg::Members { reply },
                });
                await_reply(rx)
            }
            Op::ExitRoom { room } => {
                let Some(index) = ctx.present.iter().position(|r| r.name == room) else {
                    return ready(Err(CoreError::NotMember));
                };
                let room = ctx.present.remove(index);
                let (reply, rx) = oneshot::channel();
                self.router.do_send(RouterMsg::ToRoom {
                    room,
                    msg: RoomMsg::Exit {
                        conn: ctx.conn,
                        reply: Some(reply),
                    },
                });
                await_reply(rx)
            }
            Op::KeyReply { room, intermediate } => {
                if let Some(room) = ctx.present.iter().find(|r| r.name == room) {
                    self.router.do_send(RouterMsg::ToRoom {
                        room: room.clone(),
                        msg: RoomMsg::KeyReply {
                            conn: ctx.conn,
                            intermediate,
                        },
                    });
                }
                ready(Ok(Answer::Done))
            }
            Op::CheckRegkey { regkey } => ready(regkey_bytes(&regkey).and_then(|key| {
                match self.shared.store.regkey_exists(key).map_err(internal)? {
                    true => Ok(Answer::Done),
                    false => Err(CoreError::BadRegkey),
                }
            })),
            Op::ReserveUserId => ready(
                self.shared
                    .store
                    .unused_user_id()
                    .map(|user| Answer::Reserved { user })
                    .map_err(internal),
            ),
            Op::RegisterWithKeys {
                regkey,
                user,
                handle,
                keys,
            } => ready(self.register_with_keys(&regkey, user, &handle, keys, now)),
            Op::PublicKeys { user } => ready(self.public_keys(user)),
            Op::UseNonce { user, nonce } => ready(
                match self
                    .shared
                    .store
                    .use_nonce(user, &nonce, now, NONCE_MEMORY_MS)
                {
                    Ok(true) => Ok(Answer::Done),
                    Ok(false) => Err(CoreError::Replay),
                    Err(e) => Err(internal(e)),
                },
            ),
            Op::Status { users } => self.status(users),
            Op::Befriend { to } => ready(self.befriend(ctx, &to)),
            Op::PeerUser { plugin, ip } => ready(self.peer_user(&plugin, &ip)),
            Op::FileBegin {
                file_id,
                size,
                ttl_ms,
                downloads,
            } => ready((|| {
                let me = ctx.me()?;
                if let Some(old) = ctx.upload.take() {
                    FileDir::abandon(old);
                }
                let store = self.shared.store.as_ref();
                let upload = self
                    .files
                    .begin(store, me.id, &file_id, size, ttl_ms, downloads, now)?;
                ctx.upload = Some(upload);
                Ok(Answer::Done)
            })()),
            Op::FileWrite { bytes } => ready(match ctx.upload.as_mut() {
                Some(upload) => FileDir::write(upload, &bytes).map(|()| Answer::Done),
                None => Err(CoreError::Invalid("no upload in progress".into())),
            }),
            Op::FileFinish => match ctx.upload.take() {
                Some(upload) => {
                    let (files, shared) = (self.files.clone(), self.shared.clone());
                    Box::pin(async move {
                        tokio::task::spawn_blocking(move || {
                            files
                                .finish(shared.store.as_ref(), upload)
                                .map(|()| Answer::Done)
                        })
                        .await
                        .unwrap_or_else(|e| Err(CoreError::Internal(format!("file task: {e}"))))
                    })
                }
                None => ready(Err(CoreError::Invalid("no upload in progress".into()))),
            },
            Op::FileOpen { file_id } => ready((|| {
                let me = ctx.me()?;
                let download = self
                    .files
                    .open(self.shared.store.as_ref(), me.id, &file_id, now)?;
                let size = download_size(&download);
                ctx.download = Some(download);
                Ok(Answer::File { size })
            })()),
            Op::FileRead { max } => ready(match ctx.download.as_mut() {
                Some(download) => self
                    .files
                    .read(self.shared.store.as_ref(), download, max.min(1 << 20))
                    .map(Answer::Bytes),
                None => Err(CoreError::Invalid("no download in progress".into())),
            }),
        }
    }

    fn register_with_keys(
        &self,
        regkey: &[u8],
        user: hub_plugin_sdk::UserId,
        handle: &str,
        keys: Vec<hub_plugin_sdk::PublicKey>,
        now: u64,
    ) -> Result<Answer, CoreError> {
        let regkey = regkey_bytes(regkey)?;
        accounts::validate_handle(handle)?;
        let keys: Vec<(String, Vec<u8>)> = keys.into_iter().map(|k| (k.kind, k.bytes)).collect();
        match self
            .shared
            .store
            .register_with_keys(regkey, user, handle, &keys, now)
        {
            Ok(account) => Ok(Answer::User(UserRef {
                id: account.id,
                handle: account.handle,
            })),
            Err(StoreError::BadRegkey) => Err(CoreError::BadRegkey),
            Err(StoreError::HandleTaken) => Err(CoreError::HandleTaken),
            Err(StoreError::IdTaken) => Err(CoreError::Invalid("user id taken".into())),
            Err(e) => Err(internal(e)),
        }
    }

    fn public_keys(&self, user: hub_plugin_sdk::UserId) -> Result<Answer, CoreError> {
        if self.shared.store.account(user).map_err(internal)?.is_none() {
            return Err(CoreError::NoSuchUser);
        }
        let keys = self.shared.store.public_keys(user).map_err(internal)?;
        Ok(Answer::Keys(
            keys.into_iter()
                .map(|(kind, bytes)| hub_plugin_sdk::PublicKey { kind, bytes })
                .collect(),
        ))
    }

    fn status(&self, users: Vec<hub_plugin_sdk::UserId>) -> Pending {
        if users.len() > MAX_STATUS_QUERY {
            return ready(Err(CoreError::Invalid(format!(
                "at most {MAX_STATUS_QUERY} users per status query"
            ))));
        }
        let mut known = Vec::with_capacity(users.len());
        for user in &users {
            match self.shared.store.account(*user) {
                Ok(account) => known.push(account.is_some()),
                Err(e) => return ready(Err(internal(e))),
            }
        }
        let (reply, rx) = oneshot::channel();
        self.router.do_send(RouterMsg::OnlineAmong {
            ids: users.clone(),
            reply,
        });
        Box::pin(async move {
            let online = rx.await.unwrap_or_default();
            Ok(Answer::Statuses(
                users
                    .into_iter()
                    .zip(known)
                    .map(|(user, known)| match (known, online.contains(&user)) {
                        (false, _) => hub_plugin_sdk::UserStatus::Unknown(user),
                        (true, true) => hub_plugin_sdk::UserStatus::Online(user),
                        (true, false) => hub_plugin_sdk::UserStatus::Offline(user),
                    })
                    .collect(),
            ))
        })
    }

    fn befriend(&self, ctx: &ConnContext, to: &Address) -> Result<Answer, CoreError> {
        let me = ctx.me()?;
        let other = self.resolve_user(to)?;
        if me.id == other.id {
            return Ok(Answer::Done);
        }
        use ContactState::Accepted;
        let decide = |mine: Option<ContactState>, theirs: Option<ContactState>| {
            (mine != Some(Accepted) || theirs != Some(Accepted)).then_some((Accepted, Accepted))
        };
        let changed = self
            .shared
            .store
            .transition_contacts(me.id, other.id, &decide)
            .map_err(internal)?;
        if changed.is_some() {
            self.router
                .do_send(RouterMsg::ContactsLinked { a: me, b: other });
        }
        Ok(Answer::Done)
    }

    fn authenticate(
        &self,
        ctx: &mut ConnContext,
        user: hub_plugin_sdk::UserId,
    ) -> Result<UserRef, CoreError> {
        if let Some(me) = &ctx.identity {
            return if me.id == user {
                Ok(me.clone())
            } else {
                Err(CoreError::Forbidden)
            };
        }
        let account = self
            .shared
            .store
            .account(user)
            .map_err(internal)?
            .ok_or(CoreError::NoSuchUser)?;
        if account.disabled {
            return Err(CoreError::Disabled);
        }
        let me = UserRef {
            id: account.id,
            handle: account.handle,
        };
        ctx.identity = Some(me.clone());
        Ok(me)
    }

    fn contact_change(&self, ctx: &ConnContext, to: Address, reply: Option<bool>) -> Pending {
        let (me, other) = match ctx.me().and_then(|me| Ok((me, self.resolve_user(&to)?))) {
            Ok(pair) => pair,
            Err(e) => return ready(Err(e)),
        };
        if me.id == other.id {
            return ready(Err(CoreError::Invalid("cannot invite yourself".into())));
        }
        use ContactState::*;
        let decide =
            move |mine: Option<ContactState>, _theirs: Option<ContactState>| match (reply, mine) {
                // Already contacts: nothing to do.
                (None, Some(Accepted)) => None,
                // Inviting someone who invited me accepts their invite.
                (None, Some(Incoming)) | (Some(true), Some(Incoming)) => Some((Accepted, Accepted)),
                (None, _) => Some((Outgoing, Incoming)),
                (Some(false), Some(Incoming)) => Some((Rejected, Rejected)),
                (Some(_), _) => None,
            };
        let before = self.shared.store.contact(me.id, other.id);
        let result = self
            .shared
            .store
            .transition_contacts(me.id, other.id, &decide);
        let notice = match (result, reply) {
            (Err(e), _) => return ready(Err(internal(e))),
            (Ok(None), None) => return ready(Ok(Answer::Done)),
            (Ok(None), Some(_)) => {
                return ready(Err(CoreError::Invalid(format!(
                    "no pending invite from {}",
                    other.handle
                ))))
            }
            (Ok(Some((Accepted, _))), _) => {
                self.router.do_send(RouterMsg::ContactsLinked {
                    a: me.clone(),
                    b: other.clone(),
                });
                ContactNotice::Accepted
            }
            (Ok(Some((Rejected, _))), _) => ContactNotice::Rejected,
            (Ok(Some(_)), _) => ContactNotice::Requested,
        };
        tracing::debug!(from = %me.id, to = %other.id, ?notice, was = ?before.ok().flatten(), "contact change");
        let pending = self.append_to(ctx, other, me, EventBody::Contact(notice));
        Box::pin(async move { pending.await.map(|_| Answer::Done) })
    }

    fn contacts(&self, ctx: &ConnContext) -> Pending {
        let me = match ctx.me() {
            Ok(me) => me,
            Err(e) => return ready(Err(e)),
        };
        let list = match self.shared.store.contacts(me.id) {
            Ok(list) => list,
            Err(e) => return ready(Err(internal(e))),
        };
        let mut entries = Vec::new();
        for (id, state) in list {
            match self.shared.store.account(id) {
                Ok(Some(account)) => entries.push(ContactEntry {
                    user: UserRef {
                        id,
                        handle: account.handle,
                    },
                    state,
                    online: false,
                }),
                Ok(None) => {}
                Err(e) => return ready(Err(internal(e))),
            }
        }
        let (reply, rx) = oneshot::channel();
        self.router.do_send(RouterMsg::OnlineAmong {
            ids: entries.iter().map(|e| e.user.id).collect(),
            reply,
        });
        Box::pin(async move {
            let online = rx.await.unwrap_or_default();
            for entry in &mut entries {
                entry.online =
                    entry.state == ContactState::Accepted && online.contains(&entry.user.id);
            }
            Ok(Answer::Contacts(entries))
        })
    }

    fn room_op(&self, ctx: &ConnContext, name: String, join: bool) -> Pending {
        let me = match ctx.me() {
            Ok(me) => me,
            Err(e) => return ready(Err(e)),
        };
        if let Err(e) = valid_room_name(&name) {
            return ready(Err(e));
        }
        let room = if join {
            match self.shared.store.ensure_room(&name) {
                Ok(id) => RoomRef { id, name },
                Err(e) => return ready(Err(internal(e))),
            }
        } else {
            match self.resolve_room(&name) {
                Ok(room) => room,
                Err(e) => return ready(Err(e)),
            }
        };
        let (reply, rx) = oneshot::channel();
        let origin = ctx.origin();
        let msg = if join {
            RoomMsg::Join {
                user: me,
                origin,
                reply,
            }
        } else {
            RoomMsg::Leave {
                user: me,
                origin,
                reply,
            }
        };
        self.router.do_send(RouterMsg::ToRoom { room, msg });
        await_reply(rx)
    }

    fn alias(
        &self,
        namespace: &str,
        native: &str,
        handles: &[String],
        now: u64,
    ) -> Result<Answer, CoreError> {
        let bounded = |text: &str| !text.is_empty() && text.len() <= MAX_ALIAS_BYTES;
        if !bounded(namespace) || !bounded(native) || namespace.contains('\0') {
            return Err(CoreError::Invalid(format!(
                "an alias namespace and identity are 1-{MAX_ALIAS_BYTES} bytes"
            )));
        }
        let store = self.shared.store.as_ref();
        let account = match store.alias(namespace, native).map_err(internal)? {
            Some(id) => store
                .account(id)
                .map_err(internal)?
                .ok_or_else(|| CoreError::Internal(format!("alias of missing account {id}")))?,
            None => {
                let handles: Vec<String> = handles
                    .iter()
                    .filter(|h| accounts::validate_handle(h).is_ok())
                    .cloned()
                    .collect();
                match store.create_alias_account(namespace, native, &handles, now) {
                    Ok(account) => {
                        tracing::info!(namespace, user = %account.id, handle = %account.handle, "account made for a protocol identity");
                        account
                    }
                    Err(StoreError::HandleTaken) => return Err(CoreError::HandleTaken),
                    Err(e) => return Err(internal(e)),
                }
            }
        };
        if account.disabled {
            return Err(CoreError::Disabled);
        }
        Ok(Answer::User(UserRef {
            id: account.id,
            handle: account.handle,
        }))
    }

    fn enter_room(
        &self,
        ctx: &mut ConnContext,
        name: String,
        key_agreement: Option<hub_plugin_sdk::KeyAgreement>,
    ) -> Pending {
        let me = match ctx.me() {
            Ok(me) => me,
            Err(e) => return ready(Err(e)),
        };
        let Some(addr) = ctx.addr.clone() else {
            return ready(Err(CoreError::Invalid(
                "this transport cannot be present in a room".into(),
            )));
        };
        if let Err(e) = valid_room_name(&name) {
            return ready(Err(e));
        }
        if ctx.present.len() >= MAX_PRESENT_PER_CONN && !ctx.present.iter().any(|r| r.name == name)
        {
            return ready(Err(CoreError::Invalid(format!(
                "at most {MAX_PRESENT_PER_CONN} rooms per connection"
            ))));
        }
        let room = match self.shared.store.ensure_room(&name) {
            Ok(id) => RoomRef { id, name },
            Err(e) => return ready(Err(internal(e))),
        };
        if !ctx.present.contains(&room) {
            // Recorded before the answer so that a close meanwhile still exits the room.
            ctx.present.push(room.clone());
        }
        let (reply, rx) = oneshot::channel();
        self.router.do_send(RouterMsg::ToRoom {
            room,
            msg: RoomMsg::Enter {
                user: me,
                origin: ctx.origin(),
                addr,
                key_agreement,
                reply,
            },
        });
        await_reply(rx)
    }

    /// The user behind one of this plugin's own aliases (a puppet), or `Forbidden`.
    fn puppet_user(
        &self,
        ctx: &ConnContext,
        user: hub_plugin_sdk::UserId,
    ) -> Result<UserRef, CoreError> {
        let namespace = self.shared.store.alias_namespace(user).map_err(internal)?;
        if namespace.as_deref() != Some(ctx.plugin.as_str()) {
            return Err(CoreError::Forbidden);
        }
        self.resolve_user(&Address::User(user))
    }

    fn puppet(&self, ctx: &mut ConnContext, user: hub_plugin_sdk::UserId) -> Pending {
        let puppet = match self.puppet_user(ctx, user) {
            Ok(puppet) => puppet,
            Err(e) => return ready(Err(e)),
        };
        let Some(addr) = ctx.addr.clone() else {
            return ready(Err(CoreError::Invalid(
                "this transport cannot carry a stream".into(),
            )));
        };
        if ctx.puppets.iter().any(|p| p.id == user) {
            return ready(Err(CoreError::Invalid("already carried".into())));
        }
        if ctx.puppets.len() >= MAX_PUPPETS {
            return ready(Err(CoreError::Invalid(format!(
                "at most {MAX_PUPPETS} puppets per connection"
            ))));
        }
        ctx.puppets.push(puppet.clone());
        let (tx, rx) = oneshot::channel();
        self.to_user(
            puppet.clone(),
            UserMsg::Attach {
                conn: ctx.conn,
                exclusive: false,
                resume_after: None,
                puppet: true,
                addr,
                reply: tx,
            },
        );
        Box::pin(async move {
            match rx.await {
                Ok(Ok(cursor)) => Ok(Answer::Bound {
                    user: puppet,
                    cursor,
                }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(CoreError::Internal("the core is shutting down".into())),
            }
        })
    }

    /// A page of `user`'s stream before `before` (at most `MAX_PAGE`), from its user
    /// actor.
    fn history(
        &self,
        user: UserRef,
        before: hub_plugin_sdk::Seq,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<hub_plugin_sdk::Delivery>, CoreError>> + Send + 'static
    {
        let (reply, rx) = oneshot::channel();
        self.to_user(
            user,
            UserMsg::History {
                before,
                limit: limit.min(MAX_PAGE),
                reply,
            },
        );
        async move {
            rx.await
                .unwrap_or_else(|_| Err(CoreError::Internal("the core is shutting down".into())))
        }
    }

    /// A message from `from` to room `name`, through its room actor: `dedup` is an
    /// idempotency key, `join` makes a puppet author a member first.
    fn send_to_room(
        &self,
        ctx: &ConnContext,
        name: &str,
        from: UserRef,
        content: Content,
        dedup: Option<Vec<u8>>,
        join: bool,
    ) -> Pending {
        let room = match self.resolve_room(name) {
            Ok(room) => room,
            Err(e) => return ready(Err(e)),
        };
        let (reply, rx) = oneshot::channel();
        self.router.do_send(RouterMsg::ToRoom {
            room,
            msg: RoomMsg::Send {
                from,
                origin: ctx.origin(),
                content,
                reply,
                dedup,
                join,
            },
        });
        await_reply(rx)
    }

    fn send_once(
        &self,
        ctx: &ConnContext,
        key: Vec<u8>,
        from: Option<hub_plugin_sdk::UserId>,
        to: Address,
        content: Content,
    ) -> Pending {
        if key.is_empty() || key.len() > MAX_DEDUP_KEY {
            return ready(Err(CoreError::Invalid(format!(
                "an idempotency key is 1-{MAX_DEDUP_KEY} bytes"
            ))));
        }
        let author = match from {
            None => ctx.me(),
            Some(user) => self.puppet_user(ctx, user),
        };
        let author = match author {
            Ok(author) => author,
            Err(e) => return ready(Err(e)),
        };
        match to {
            Address::Room(name) => {
                let join = from.is_some();
                self.send_to_room(ctx, &name, author, content, Some(key), join)
            }
            address => match self.resolve_user(&address) {
                Ok(to) => {
                    let skip = Self::skip_for(ctx, &to, &author);
                    self.append(
                        ctx,
                        to,
                        author,
                        EventBody::Message(content),
                        skip,
                        Some(key),
                    )
                }
                Err(e) => ready(Err(e)),
            },
        }
    }

    /// Registers a plugin's service session for `Op::Signal` (the hub calls this when it
    /// opens one); it is forgotten when the connection closes.
    pub fn register_service(&self, plugin: &str, conn: ConnId, addr: SessionAddr) {
        if let Ok(mut services) = self.services.lock() {
            services
                .entry(plugin.to_owned())
                .or_default()
                .push((conn, addr));
        }
    }

    /// The session handed `bytes` of a room's pushes to its transport.
    pub fn room_consumed(&self, ctx: &ConnContext, room: &RoomRef, bytes: usize) {
        if ctx.present.contains(room) {
            self.router.do_send(RouterMsg::ToRoom {
                room: room.clone(),
                msg: RoomMsg::Consumed {
                    conn: ctx.conn,
                    bytes,
                },
            });
        }
    }

    fn call_op(
        &self,
        ctx: &ConnContext,
        call: hub_plugin_sdk::CallId,
        make: impl FnOnce(hub_plugin_sdk::UserId, crate::actors::call::CallReply) -> CallMsg,
    ) -> Pending {
        let me = match ctx.me() {
            Ok(me) => me,
            Err(e) => return ready(Err(e)),
        };
        let (reply, rx) = oneshot::channel();
        self.router.do_send(RouterMsg::ToCall {
            call,
            msg: make(me.id, reply),
        });
        await_reply(rx)
    }

    /// The stream `user` this connection carries: its own (bound) or a puppet's.
    fn carried(ctx: &ConnContext, user: hub_plugin_sdk::UserId) -> Option<UserRef> {
        match &ctx.identity {
            Some(me) if ctx.attached && me.id == user => Some(me.clone()),
            _ => ctx.puppets.iter().find(|p| p.id == user).cloned(),
        }
    }

    /// The session handed `bytes` (as `delivery_size` counts) of `user`'s deliveries to
    /// its transport: they no longer count against its byte bound.
    pub fn consumed(&self, ctx: &ConnContext, user: hub_plugin_sdk::UserId, bytes: usize) {
        if let Some(user) = Self::carried(ctx, user) {
            self.to_user(
                user,
                UserMsg::Consumed {
                    conn: ctx.conn,
                    bytes,
                },
            );
        }
    }

    /// The session wrote the last backlog page of `user`'s stream and wants the next.
    pub fn more_backlog(&self, ctx: &ConnContext, user: hub_plugin_sdk::UserId) {
        if let Some(user) = Self::carried(ctx, user) {
            self.to_user(user, UserMsg::MoreBacklog { conn: ctx.conn });
        }
    }

    fn peer_user(&self, plugin: &str, ip: &str) -> Result<Answer, CoreError> {
        let peers = self
            .peers
            .lock()
            .map_err(|_| CoreError::Internal("peer map poisoned".into()))?;
        peers
            .get(&(plugin.to_owned(), ip.to_owned()))
            .and_then(|sessions| sessions.last())
            .map(|(_, user)| Answer::User(user.clone()))
            .ok_or(CoreError::NotBound)
    }

    /// The connection is gone: detach it from its user's stream.
    pub fn disconnect(&self, ctx: &mut ConnContext) {
        if let Some(upload) = ctx.upload.take() {
            FileDir::abandon(upload);
        }
        ctx.download = None;
        if ctx.attached {
            if let Ok(mut peers) = self.peers.lock() {
                let key = (ctx.plugin.clone(), ctx.peer_ip.clone());
                if let Some(sessions) = peers.get_mut(&key) {
                    sessions.retain(|(conn, _)| *conn != ctx.conn);
                    if sessions.is_empty() {
                        peers.remove(&key);
                    }
                }
            }
        }
        if let (Some(me), true) = (&ctx.identity, ctx.attached) {
            self.to_user(me.clone(), UserMsg::Detach { conn: ctx.conn });
        }
        ctx.attached = false;
        for puppet in ctx.puppets.drain(..) {
            self.to_user(puppet, UserMsg::Detach { conn: ctx.conn });
        }
        if let Ok(mut services) = self.services.lock() {
            for sessions in services.values_mut() {
                sessions.retain(|(conn, _)| *conn != ctx.conn);
            }
        }
        for room in ctx.present.drain(..) {
            self.router.do_send(RouterMsg::ToRoom {
                room,
                msg: RoomMsg::Exit {
                    conn: ctx.conn,
                    reply: None,
                },
            });
        }
    }
}
