//! Hub events: what the core stores and delivers to recipients.
//!
//! Every message, invite, room change and call signal is an [`EventRecord`]. The core
//! stores one copy per recipient under that recipient's next [`Seq`] before anyone is
//! told the event was accepted, then hands it to the recipient's sessions as
//! [`crate::HubEvent::Deliver`].

use crate::ids::{CallId, ConnId, EventId, RoomId, Seq, UserId};
use serde::{Deserialize, Serialize};

/// A user as plugins see one: the hub-wide id plus the unique handle.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserRef {
    /// Hub-wide id.
    pub id: UserId,
    /// Unique handle (what JSON and XDR clients see).
    pub handle: String,
}

/// A room as plugins see one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoomRef {
    /// Hub-wide id.
    pub id: RoomId,
    /// Room name without the `#` (a cchat room's name is its SHA-1 hex id).
    pub name: String,
}

/// Who or what a command addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Address {
    /// A user by handle.
    Handle(String),
    /// A user by hub-wide id.
    User(UserId),
    /// A room by name (created on first join).
    Room(String),
}

/// Where an event came from: the bridge never sends an event back to its origin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Name of the plugin whose session produced it (`core` for the hub's own).
    pub plugin: String,
    /// The connection it came in on, if any.
    pub conn: Option<ConnId>,
}

/// Message content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// Plain UTF-8 text the hub can read (and bridge).
    Text(String),
    /// End-to-end ciphertext the hub forwards untouched between clients of one
    /// ecosystem. `scheme` names the format, e.g. `json/x3dh-xchacha20`.
    Sealed {
        /// Format name, `<plugin>/<scheme>`.
        scheme: String,
        /// The sealed bytes, as the sending plugin produced them.
        bytes: Vec<u8>,
    },
    /// A file offer.
    File(FileOffer),
    /// A message in its sender protocol's own form, kept whole for clients of that
    /// protocol (`scheme`, e.g. `cchat/message`), with the plain text the sending plugin
    /// could read out of it for everyone else (`None`: nothing readable, e.g. ciphertext).
    Native {
        /// Format name, `<plugin>/<format>`.
        scheme: String,
        /// The message as the sending plugin received it.
        bytes: Vec<u8>,
        /// Readable text for clients of other protocols.
        fallback: Option<String>,
    },
}

/// A file that a recipient can fetch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// Opaque file id (Retro: 16 bytes).
    pub file_id: Vec<u8>,
    /// File name as the sender gave it.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Sealed details (key, etc.) in the sending plugin's format.
    pub sealed: Option<Vec<u8>>,
}

/// A change in the contact relation between the event's `from` and its recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContactNotice {
    /// `from` asks the recipient to become a contact.
    Requested,
    /// `from` accepted the recipient's request.
    Accepted,
    /// `from` rejected the recipient's request.
    Rejected,
}

/// A change in a room's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomNotice {
    /// `from` joined the room.
    Joined,
    /// `from` left the room.
    Left,
}

/// A call signal. `from` is the user whose action caused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallNotice {
    /// `from` is calling the recipient. `data` is opaque (offer/SDP).
    Ring {
        /// Opaque call data from the caller.
        data: Vec<u8>,
    },
    /// `from` accepted the call.
    Accepted {
        /// Opaque call data from the callee.
        data: Vec<u8>,
    },
    /// `from` rejected the call.
    Rejected,
    /// `from` hung up (or dropped); the call is over.
    Ended,
    /// Nobody answered before the ring timeout; the call is over.
    Missed,
    /// Opaque data relayed during an established call (ICE candidates etc.).
    Signal {
        /// Opaque call data.
        data: Vec<u8>,
    },
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    /// A chat message.
    Message(Content),
    /// An invite / contact change.
    Contact(ContactNotice),
    /// A room membership change.
    Room(RoomNotice),
    /// A call signal.
    Call {
        /// The call.
        call: CallId,
        /// The signal.
        notice: CallNotice,
    },
}

/// The target an event was addressed to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Sent to one user (the recipient).
    User(UserRef),
    /// Sent to a room the recipient is a member of.
    Room(RoomRef),
}

/// One stored hub event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Persistent id, the same in every recipient's copy.
    pub id: EventId,
    /// Wall-clock time the hub accepted it, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Where it came from.
    pub origin: Origin,
    /// Who caused it.
    pub from: UserRef,
    /// What it was addressed to.
    pub to: Target,
    /// What happened.
    pub body: EventBody,
}

/// One event in one recipient's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Position in the recipient's stream.
    pub seq: Seq,
    /// The event.
    pub event: EventRecord,
}
