//! The core's actors and the messages between them.
//!
//! ```text
//!  connection actors (hub/)          core actors (this module)
//!  ───────────────────────          ───────────────────────────────────────────
//!   Core::execute ──UserMsg─▶ UserDirectory ──────────▶ UserActor ──▶ store
//!                 ──ToRoom──────▶ Router ──RoomMsg──▶ RoomActor ──ToUser─▶ Router
//!                 ──CallStart───▶   │    ──CallMsg──▶ CallActor ──ToUser─▶ Router
//!                                   └──(presence, ToUser)──▶ UserDirectory
//!   SessionMsg ◀──────────────────────────────────── UserActor (deliveries, presence)
//! ```
//!
//! Every message to a user actor goes through the [`router::UserDirectory`], from the
//! sender's own thread: it queues to the live actor or starts one. Its counting keeps
//! per-sender order (actix mailboxes are FIFO) and lets the router retire an idle user
//! actor without losing a message in flight. The directory's lock is the only one
//! between actors, held for a map lookup and a queue push; the store is shared and
//! internally concurrent.

pub mod call;
pub mod room;
pub mod router;
pub mod user;

use crate::accounts::AccountPolicy;
use crate::metrics::Metrics;
use crate::store::Storage;
use actix::prelude::*;
use hub_plugin_sdk::{ConnId, CoreError, EventId, EventRecord, HubEvent, Seq, UserId, UserRef};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Tunables of the core (from config).
#[derive(Clone, Debug)]
pub struct CoreSettings {
    /// Credential policy.
    pub accounts: AccountPolicy,
    /// How long a call rings before it is missed.
    pub ring_timeout: Duration,
    /// How long a user actor with no sessions lingers before it is retired.
    pub user_idle: Duration,
    /// Events per backlog page sent to a session before it asks for more.
    pub backlog_page: usize,
    /// Number of arbiters (threads) user actors are spread over.
    pub user_threads: usize,
    /// Where file content is stored.
    pub files_dir: std::path::PathBuf,
    /// Bytes of events queued to one session and not yet reported consumed before it is
    /// dropped as a slow reader.
    pub session_queue_bytes: usize,
    /// How long a present member may leave a key step unanswered before it is removed
    /// from the room.
    pub key_timeout: Duration,
    /// Connections present in one room at most.
    pub max_present: usize,
}

impl Default for CoreSettings {
    fn default() -> Self {
        CoreSettings {
            accounts: AccountPolicy::default(),
            ring_timeout: Duration::from_secs(30),
            user_idle: Duration::from_secs(60),
            backlog_page: 256,
            user_threads: 2,
            files_dir: std::path::PathBuf::from("data/files"),
            session_queue_bytes: 4 * 1024 * 1024,
            key_timeout: Duration::from_secs(20),
            max_present: 1024,
        }
    }
}

/// What every core actor shares.
pub struct Shared {
    /// The store.
    pub store: Arc<dyn Storage>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub settings: CoreSettings,
}

/// What the core sends to a connection actor.
// `PageDone` is rare and tiny; boxing `Event` would cost an allocation per delivery.
#[allow(clippy::large_enum_variant)]
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum SessionMsg {
    /// Feed this to the plugin session.
    Event(HubEvent),
    /// The last backlog page of `user`'s stream (the session's own, or a puppet's) has
    /// been sent; answer with [`UserMsg::MoreBacklog`] once it is written (flow control:
    /// one page in flight per session and stream).
    PageDone {
        /// Whose stream.
        user: UserId,
    },
}

/// A connection actor's address as the core holds it.
pub type SessionAddr = Recipient<SessionMsg>;

/// What an append stored (or, for a repeated idempotency key, what it had stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Position in the stream.
    pub seq: Seq,
    /// The event stored there.
    pub event: EventId,
}

/// Reply channel for an append: resolved once the event is durable.
pub type AppendReply = oneshot::Sender<Result<Appended, CoreError>>;

/// Messages to a user actor (always through [`router::UserDirectory`]).
// Most traffic is `Append`, the large variant: boxing it would allocate per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum UserMsg {
    /// Store an event in the user's stream; deliver it once durable.
    Append {
        /// The event.
        event: EventRecord,
        /// Not delivered to this connection (the one it came from).
        skip_conn: Option<ConnId>,
        /// Answered once durable.
        reply: Option<AppendReply>,
        /// Store at most once per this key in the stream (a repeat is answered with the
        /// first event and stores nothing).
        dedup: Option<Vec<u8>>,
    },
    /// Attach a session for delivery and presence.
    Attach {
        /// The connection.
        conn: ConnId,
        /// Refuse if another session is attached.
        exclusive: bool,
        /// Start after this position (proof of receipt up to it) instead of the cursor.
        resume_after: Option<Seq>,
        /// A puppet: deliveries are tagged with the user, and it does not count for
        /// presence or exclusive binds.
        puppet: bool,
        /// Its address.
        addr: SessionAddr,
        /// Answered with the delivery cursor.
        reply: oneshot::Sender<Result<Seq, CoreError>>,
    },
    /// Detach a session (connection closed).
    Detach {
        /// The connection.
        conn: ConnId,
    },
    /// The session wrote the last backlog page; send the next.
    MoreBacklog {
        /// The connection.
        conn: ConnId,
    },
    /// The session handed this many bytes of deliveries to its transport.
    Consumed {
        /// The connection.
        conn: ConnId,
        /// Bytes, as counted by [`delivery_size`].
        bytes: usize,
    },
    /// The client proved receipt up to `through`.
    Ack {
        /// Last received position.
        through: Seq,
    },
    /// A page of the stream before `before`, newest first, only what is durable.
    History {
        /// Exclusive upper bound.
        before: Seq,
        /// Page size.
        limit: usize,
        /// Answered with the page.
        reply: oneshot::Sender<Result<Vec<hub_plugin_sdk::Delivery>, CoreError>>,
    },
    /// A contact's presence changed.
    Presence {
        /// The contact.
        contact: UserRef,
        /// Online now?
        online: bool,
    },
}

/// Router → user actor envelope (counted, so the router knows what the actor has seen).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ToUserActor(pub UserMsg);

/// A user actor's id and handle plus the shared state, given at start.
pub(crate) fn user_ref(id: UserId, handle: &str) -> UserRef {
    UserRef {
        id,
        handle: handle.to_owned(),
    }
}

/// What a delivery weighs for the per-session byte bound: its content plus a fixed
/// allowance for the envelope. The core and the connection actors count the same way.
pub fn delivery_size(delivery: &hub_plugin_sdk::Delivery) -> usize {
    event_size(&delivery.event)
}

/// What an event weighs: its content plus a fixed allowance for the envelope (the
/// per-session byte bound, and how much of a burst a user actor stores as one record).
pub fn event_size(event: &hub_plugin_sdk::EventRecord) -> usize {
    use hub_plugin_sdk::{CallNotice, Content, EventBody};
    let content = match &event.body {
        EventBody::Message(Content::Text(text)) => text.len(),
        EventBody::Message(Content::Sealed { bytes, .. }) => bytes.len(),
        EventBody::Message(Content::File(offer)) => {
            offer.name.len() + offer.file_id.len() + offer.sealed.as_ref().map_or(0, Vec::len)
        }
        EventBody::Message(Content::Native {
            bytes, fallback, ..
        }) => bytes.len() + fallback.as_ref().map_or(0, String::len),
        EventBody::Call { notice, .. } => match notice {
            CallNotice::Ring { data }
            | CallNotice::Accepted { data }
            | CallNotice::Signal { data } => data.len(),
            _ => 0,
        },
        EventBody::Contact(_) | EventBody::Room(_) => 0,
    };
    content + 256
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Builds a new event with a fresh persistent id.
pub(crate) fn make_event(
    shared: &Shared,
    origin: hub_plugin_sdk::Origin,
    from: UserRef,
    to: hub_plugin_sdk::Target,
    body: hub_plugin_sdk::EventBody,
) -> Result<EventRecord, CoreError> {
    let id = shared
        .store
        .next_event_id()
        .map_err(|e| CoreError::Internal(e.to_string()))?;
    Ok(EventRecord {
        id,
        at_unix_ms: unix_ms(),
        origin,
        from,
        to,
        body,
    })
}

/// Waits for every append reply; the first failure wins.
pub(crate) async fn all_stored(
    replies: Vec<oneshot::Receiver<Result<Appended, CoreError>>>,
) -> Result<(), CoreError> {
    for reply in replies {
        reply
            .await
            .map_err(|_| CoreError::Internal("event store unavailable".into()))??;
    }
    Ok(())
}
