//! Asking the core: commands a session emits and the answers and events it receives.

use crate::event::{Address, Content, Delivery, RoomRef, UserRef};
use crate::ids::{CallId, CorrelationId, Seq, UserId};
use serde::{Deserialize, Serialize};

/// How a new account's password is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PasswordScheme {
    /// Argon2id (the default).
    Argon2id,
    /// PBKDF2-HMAC-SHA256 with a per-user salt (what JSON clients call "sha256").
    Pbkdf2Sha256,
}

/// A request to the core. The answer arrives as [`HubEvent::Answer`] with the same `id`
/// (unless `id` is [`CorrelationId::NONE`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Chosen by the plugin, echoed in the answer.
    pub id: CorrelationId,
    /// What to do.
    pub op: Op,
}

/// The operations the core offers to plugins.
///
/// Operations "as the session's user" need the session to be bound to a user first
/// ([`Op::Bind`]); otherwise they are answered with [`CoreError::NotBound`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Create an account and a session token. Answer: [`Answer::Session`].
    Signup {
        /// Unique handle.
        handle: String,
        /// Password in clear (hashed by the core, never stored).
        password: String,
        /// How to store it.
        scheme: PasswordScheme,
    },
    /// Check a password and issue a session token. Answer: [`Answer::Session`].
    Signin {
        /// Handle.
        handle: String,
        /// Password in clear.
        password: String,
    },
    /// Look up a session token. Answer: [`Answer::Session`] (same token).
    CheckToken {
        /// The token as the client sent it.
        token: String,
    },
    /// Make `user` this connection's acting identity, without subscribing to deliveries
    /// (for clients that send before they subscribe). A connection has at most one
    /// identity: another user is refused with [`CoreError::Forbidden`]. Answer:
    /// [`Answer::User`].
    Authenticate {
        /// The user, as proven by the plugin (token, signature...).
        user: UserId,
    },
    /// Bind this connection to a user: from now on the core delivers the user's stream
    /// (stored events after the user's delivery cursor first, then live ones) and presence
    /// to this session, and the user is online. Answer: [`Answer::Bound`].
    Bind {
        /// The user, as proven by the plugin (token, signature...).
        user: UserId,
        /// Refuse with [`CoreError::AlreadyConnected`] if the user already has a bound
        /// session (protocols that allow one login at a time).
        exclusive: bool,
        /// Start after this position instead of the delivery cursor, for protocols whose
        /// clients say where they are (XDR's last seen order). It is also proof of
        /// receipt: the cursor moves up to it (never past what is durable).
        resume_after: Option<Seq>,
    },
    /// Is this single-use registration key valid (not spent)? Answer: [`Answer::Done`] or
    /// [`CoreError::BadRegkey`]. Does not spend it.
    CheckRegkey {
        /// The 32 raw key bytes.
        regkey: Vec<u8>,
    },
    /// A fresh user id no account uses. Answer: [`Answer::Reserved`].
    ReserveUserId,
    /// Spend a registration key and create a key-only account with this id, handle and
    /// public keys, atomically. Answer: [`Answer::User`]; [`CoreError::BadRegkey`] if the
    /// key is spent or unknown (nothing is created).
    RegisterWithKeys {
        /// The 32 raw key bytes.
        regkey: Vec<u8>,
        /// The id from [`Op::ReserveUserId`].
        user: UserId,
        /// Handle for the account.
        handle: String,
        /// Public keys to store.
        keys: Vec<PublicKey>,
    },
    /// A user's stored public keys. Answer: [`Answer::Keys`]; [`CoreError::NoSuchUser`].
    PublicKeys {
        /// The user.
        user: UserId,
    },
    /// Record a login nonce for `user`; refused with [`CoreError::Replay`] if it was used
    /// before (nonces are remembered for at least a day). Answer: [`Answer::Done`].
    UseNonce {
        /// The user.
        user: UserId,
        /// The nonce.
        nonce: Vec<u8>,
    },
    /// Online / offline / unknown for each id. Answer: [`Answer::Statuses`].
    Status {
        /// The users.
        users: Vec<UserId>,
    },
    /// Which user is logged in (bound) through `plugin` from this IP address, most recent
    /// first; for servers that authorize by address (Retro's file server). Answer:
    /// [`Answer::User`]; [`CoreError::NotBound`] if none.
    PeerUser {
        /// The plugin whose sessions count.
        plugin: String,
        /// The peer's IP address (no port).
        ip: String,
    },
    /// Start storing a file owned by the acting user. Answer: [`Answer::Done`];
    /// [`CoreError::Invalid`] if the id is in use.
    FileBegin {
        /// Opaque file id.
        file_id: Vec<u8>,
        /// Exact size that will follow.
        size: u64,
        /// Remove it this long after upload, at the latest.
        ttl_ms: u64,
        /// Remove it after this many complete downloads by users other than the owner.
        downloads: u32,
    },
    /// Append to the file being stored (in order). Answer: [`Answer::Done`];
    /// [`CoreError::Invalid`] past the announced size.
    FileWrite {
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The announced size has been written: make the file durable and available. Answer:
    /// [`Answer::Done`]. A connection that closes before this leaves nothing behind.
    FileFinish,
    /// Open a stored file for reading. Answer: [`Answer::File`]; [`CoreError::NoSuchFile`].
    FileOpen {
        /// Opaque file id.
        file_id: Vec<u8>,
    },
    /// Read the next bytes of the open file. Answer: [`Answer::Bytes`], empty at the end
    /// (the download then counts as complete).
    FileRead {
        /// At most this many bytes.
        max: u32,
    },
    /// Make `to` an accepted contact of the bound user at once, both ways (protocols
    /// whose "friends" need no consent, e.g. Retro). Answer: [`Answer::Done`].
    Befriend {
        /// The other user.
        to: Address,
    },
    /// Resolve an address to a user or room. Answer: [`Answer::User`] or [`Answer::Room`].
    Resolve {
        /// What to look up.
        address: Address,
    },
    /// Send a message as the bound user. Answer: [`Answer::Accepted`] once the event is
    /// durably stored for every recipient.
    Send {
        /// User or room.
        to: Address,
        /// The content.
        content: Content,
    },
    /// Proof of receipt: the client has everything in the bound user's stream up to and
    /// including `through`. No answer.
    Ack {
        /// Last received position.
        through: Seq,
    },
    /// Ask `to` to become a contact (accepts a pending request from `to`). Answer:
    /// [`Answer::Done`].
    Invite {
        /// The other user.
        to: Address,
    },
    /// Answer a contact request from `to`. Answer: [`Answer::Done`].
    InviteReply {
        /// The user who asked.
        to: Address,
        /// Accept or reject.
        accept: bool,
    },
    /// The bound user's contacts. Answer: [`Answer::Contacts`].
    Contacts,
    /// Join a room (created if it does not exist). Answer: [`Answer::Room`].
    JoinRoom {
        /// Room name without `#`.
        room: String,
    },
    /// Leave a room. Answer: [`Answer::Done`].
    LeaveRoom {
        /// Room name without `#`.
        room: String,
    },
    /// Ring `to`. Answer: [`Answer::Call`]; errors [`CoreError::Offline`],
    /// [`CoreError::Busy`].
    CallStart {
        /// Callee.
        to: Address,
        /// Opaque offer.
        data: Vec<u8>,
    },
    /// Accept or reject a ringing call. Answer: [`Answer::Done`].
    CallReply {
        /// The call.
        call: CallId,
        /// Accept or reject.
        accept: bool,
        /// Opaque answer data.
        data: Vec<u8>,
    },
    /// Relay opaque data to the other party of an established call. Answer: [`Answer::Done`].
    CallSignal {
        /// The call.
        call: CallId,
        /// Opaque data.
        data: Vec<u8>,
    },
    /// Hang up (or cancel a ringing call). Answer: [`Answer::Done`].
    CallHangup {
        /// The call.
        call: CallId,
    },
    /// The user behind a protocol's native identity (a cchat client id, an XDR client
    /// id, a P2P address), created on first use as a key-less, password-less account
    /// with the first of `handles` that is free. Answer: [`Answer::User`];
    /// [`CoreError::HandleTaken`] if the identity is new and every handle is taken.
    Alias {
        /// Which protocol's identities, e.g. `cchat`.
        namespace: String,
        /// The identity as that protocol writes it.
        native: String,
        /// Handles for a new account, tried in order.
        handles: Vec<String>,
    },
    /// The user behind a protocol identity, if there is one (see [`Op::Alias`]), without
    /// creating it. Answer: [`Answer::User`]; [`CoreError::NoSuchUser`].
    FindAlias {
        /// Which protocol's identities.
        namespace: String,
        /// The identity as that protocol writes it.
        native: String,
    },
    /// A value this plugin stored under `key` (see [`Op::Store`]). Answer:
    /// [`Answer::Value`].
    Load {
        /// The key (at most 1024 bytes), in this plugin's own key space.
        key: Vec<u8>,
    },
    /// Stores (or, with `None`, removes) a small value under `key` in this plugin's own
    /// key space of the core's store: state a plugin must keep across restarts (a
    /// protocol's sequence counters, peer lists). Answer: [`Answer::Done`] once durable.
    Store {
        /// The key (at most 1024 bytes).
        key: Vec<u8>,
        /// The value (at most 65536 bytes), or `None` to remove it.
        value: Option<Vec<u8>>,
    },
    /// Up to `limit` entries of this plugin's key space whose keys start with `prefix`
    /// and come after `after` (exclusive; `None`: from the start), in key order. Answer:
    /// [`Answer::Entries`].
    Scan {
        /// Key prefix.
        prefix: Vec<u8>,
        /// Resume after this key.
        after: Option<Vec<u8>>,
        /// At most this many (capped at 1024).
        limit: u32,
    },
    /// Append an event to the acting user's own stream (from and to: the user),
    /// delivered to all its sessions, this one included: an outcome the client must
    /// learn even across a reconnect. Answer: [`Answer::Accepted`] once durable.
    Notify {
        /// What to tell.
        content: Content,
    },
    /// The bound user's stream before `before` (exclusive), newest first, at most
    /// `limit` (capped at 1000) events, only what is durable. Answer:
    /// [`Answer::History`].
    History {
        /// Position to page back from (`Seq(u64::MAX)`: the newest).
        before: Seq,
        /// Page size.
        limit: u32,
    },
    /// A room's history before `before`, newest first, at most `limit` (capped at 1000),
    /// for a member of the room or a connection present in it. Answer:
    /// [`Answer::History`]; [`CoreError::NotMember`], [`CoreError::NoSuchRoom`].
    RoomHistory {
        /// Room name without `#`.
        room: String,
        /// Position to page back from (`Seq(u64::MAX)`: the newest).
        before: Seq,
        /// Page size.
        limit: u32,
    },
    /// Who is in a room: stored members and connections present. Answer:
    /// [`Answer::Members`]; [`CoreError::NoSuchRoom`].
    RoomMembers {
        /// Room name without `#`.
        room: String,
    },
    /// Carry `user`'s stream on this connection as well as its own identity's: its events
    /// arrive as [`HubEvent::PuppetDeliver`] (stored ones after its cursor first, then live
    /// ones), acknowledged with [`Op::PuppetAck`]. Only for users behind this plugin's
    /// own aliases ([`Op::Alias`] with the plugin's name as the namespace): the bridge's
    /// puppets. Answer: [`Answer::Bound`]; [`CoreError::Forbidden`] for other users.
    Puppet {
        /// The puppet.
        user: UserId,
    },
    /// Stop carrying a puppet's stream (it is delivered again from its cursor on the next
    /// [`Op::Puppet`]). Answer: [`Answer::Done`].
    Unpuppet {
        /// The puppet.
        user: UserId,
    },
    /// Proof of receipt for a puppet's stream (see [`Op::Ack`]). No answer.
    PuppetAck {
        /// The puppet.
        user: UserId,
        /// Last position received.
        through: Seq,
    },
    /// A page of a puppet's stream (see [`Op::History`]) and its delivery cursor.
    /// Answer: [`Answer::PuppetPage`]; [`CoreError::Forbidden`] for other users.
    PuppetHistory {
        /// The puppet.
        user: UserId,
        /// Position to page back from (`Seq(u64::MAX)`: the newest).
        before: Seq,
        /// Page size (capped at 1000).
        limit: u32,
    },
    /// [`Op::Send`] at most once per `key` and recipient (a user's stream or a room): a
    /// repeat is answered with the first one's event and changes nothing. As the acting
    /// user, or as `from`, one of this plugin's own alias users (a puppet writing). A
    /// puppet writing to a room it is not in becomes a member. Answer:
    /// [`Answer::Accepted`].
    SendOnce {
        /// The idempotency key (at most 256 bytes).
        key: Vec<u8>,
        /// The author, if not the acting user.
        from: Option<UserId>,
        /// User or room.
        to: Address,
        /// The content.
        content: Content,
    },
    /// Sends `data` to this plugin's service session ([`crate::Manifest::service`]) as
    /// [`HubEvent::Signal`]: how a request session tells the background one that
    /// something changed. No answer.
    Signal {
        /// What to tell (at most 4096 bytes).
        data: Vec<u8>,
    },
    /// Be present in a room through this connection, as the acting user, until
    /// [`Op::ExitRoom`] or the connection closes: the room's messages are pushed to this
    /// session as [`HubEvent::RoomDeliver`] (the session's own included), and, with
    /// `key_agreement`, the session takes part in the room's group key negotiation
    /// ([`HubEvent::KeyStep`]). Presence is not membership: nothing is stored for the
    /// user while it is away. Answer: [`Answer::Room`]; [`CoreError::AlreadyInRoom`] if
    /// the user is present in the room on another connection, [`CoreError::RoomFull`].
    EnterRoom {
        /// Room name without `#` (created if it does not exist).
        room: String,
        /// Take part in the group key negotiation.
        key_agreement: Option<KeyAgreement>,
    },
    /// Stop being present in a room (see [`Op::EnterRoom`]). Answer: [`Answer::Done`];
    /// [`CoreError::NotMember`] if this connection is not present in it.
    ExitRoom {
        /// Room name without `#`.
        room: String,
    },
    /// The client's answer to the oldest unanswered [`HubEvent::KeyStep`] of this room
    /// (empty when that step had `rounds_left` 0). No answer.
    KeyReply {
        /// Room name without `#`.
        room: String,
        /// The computed intermediate.
        intermediate: Vec<u8>,
    },
}

/// How a session takes part in a room's group key negotiation.
///
/// The core orchestrates a group Diffie-Hellman exchange among the room's present
/// members with key agreement: it relays opaque intermediates and never computes on
/// them, so it never learns the key. Each member computes `intermediate^secret` for
/// every [`KeyStep`] and answers it with [`Op::KeyReply`]; a step with `rounds_left` 0
/// makes the result the member's new secret and group key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAgreement {
    /// The group's generator as big-endian bytes (the first intermediate of every
    /// negotiation), e.g. `[2]`.
    pub base: Vec<u8>,
}

/// One step of a group key negotiation for one member (see [`KeyAgreement`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStep {
    /// 0: the result is the new group key. Otherwise the number of exponentiations
    /// (this one included) before the value reaches its final recipients.
    pub rounds_left: u32,
    /// Draw a fresh secret before computing (members may ignore it and still agree).
    pub fresh: bool,
    /// The intermediate to raise to the member's secret, big-endian bytes.
    pub intermediate: Vec<u8>,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// A valid session token.
    Session {
        /// The token (give it to the client).
        token: String,
        /// Its user.
        user: UserRef,
        /// Expiry, milliseconds since the Unix epoch.
        expires_unix_ms: u64,
    },
    /// The connection is bound; stored events follow as [`HubEvent::Deliver`].
    Bound {
        /// The user.
        user: UserRef,
        /// The user's delivery cursor: events after it follow.
        cursor: Seq,
    },
    /// A resolved user.
    User(UserRef),
    /// A resolved or joined room.
    Room(RoomRef),
    /// The event is durably stored for every recipient.
    Accepted {
        /// Its id.
        event: crate::ids::EventId,
    },
    /// A call was started and is ringing.
    Call {
        /// The call.
        call: CallId,
    },
    /// The bound user's contacts.
    Contacts(Vec<ContactEntry>),
    /// A reserved user id.
    Reserved {
        /// The id.
        user: UserId,
    },
    /// A user's public keys.
    Keys(Vec<PublicKey>),
    /// Presence of the asked users, in the order asked.
    Statuses(Vec<UserStatus>),
    /// An opened file.
    File {
        /// Its size.
        size: u64,
    },
    /// Bytes read.
    Bytes(Vec<u8>),
    /// A stored value ([`Op::Load`]), `None` if there is none.
    Value(Option<Vec<u8>>),
    /// Key/value entries of the plugin's key space ([`Op::Scan`]), in key order.
    Entries(Vec<(Vec<u8>, Vec<u8>)>),
    /// A page of a stream or a room's history, newest first.
    History(Vec<Delivery>),
    /// A page of a puppet's stream, newest first, and its delivery cursor.
    PuppetPage {
        /// The page.
        page: Vec<Delivery>,
        /// Everything up to it is proven received.
        cursor: Seq,
    },
    /// Who is in a room.
    Members {
        /// Stored members.
        members: Vec<UserRef>,
        /// Users present through a connection (cchat clients...).
        present: Vec<UserRef>,
    },
    /// Done, nothing to report.
    Done,
}

/// A stored public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// What it is, e.g. `retro/rsa-spki-pem`, `retro/ed25519-spki-pem`.
    pub kind: String,
    /// The key as the client gave it.
    pub bytes: Vec<u8>,
}

/// Presence of one user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserStatus {
    /// Has a bound session.
    Online(UserId),
    /// Exists, no session.
    Offline(UserId),
    /// No such user.
    Unknown(UserId),
}

/// One contact of the bound user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactEntry {
    /// The other user.
    pub user: UserRef,
    /// Relation from the bound user's side.
    pub state: ContactState,
    /// Whether the other user is online now (only for accepted contacts).
    pub online: bool,
}

/// Contact relation as seen by one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContactState {
    /// I asked, no answer yet.
    Outgoing,
    /// They asked, I have not answered.
    Incoming,
    /// Both agreed: presence flows.
    Accepted,
    /// The request was rejected.
    Rejected,
}

/// Why the core refused a command. Plugins map these to their protocol's error form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoreError {
    /// The handle is taken.
    HandleTaken,
    /// The handle is not acceptable (empty, too long, control characters, leading `#`).
    BadHandle,
    /// No such user.
    NoSuchUser,
    /// No such room.
    NoSuchRoom,
    /// Wrong password.
    BadPassword,
    /// The account is disabled by an operator.
    Disabled,
    /// Unknown or expired session token.
    BadToken,
    /// The session has no bound user.
    NotBound,
    /// The bound user may not do this.
    Forbidden,
    /// The other user is not online.
    Offline,
    /// The user is already in a call.
    Busy,
    /// No such call, or not a party of it.
    NoSuchCall,
    /// Not a member of the room.
    NotMember,
    /// The request is malformed (detail for logs and error texts).
    Invalid(String),
    /// A fault of the hub's own (storage...): the client may retry.
    Internal(String),
    /// The registration key is unknown or spent.
    BadRegkey,
    /// The nonce was used before (a replayed login).
    Replay,
    /// The user already has a session and the bind was exclusive.
    AlreadyConnected,
    /// No such file (or it expired).
    NoSuchFile,
    /// The user is already present in the room on another connection.
    AlreadyInRoom,
    /// The room has as many present members as the hub allows.
    RoomFull,
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreError::HandleTaken => f.write_str("handle taken"),
            CoreError::BadHandle => f.write_str("handle not acceptable"),
            CoreError::NoSuchUser => f.write_str("no such user"),
            CoreError::NoSuchRoom => f.write_str("no such room"),
            CoreError::BadPassword => f.write_str("wrong password"),
            CoreError::Disabled => f.write_str("account disabled"),
            CoreError::BadToken => f.write_str("unknown or expired session"),
            CoreError::NotBound => f.write_str("not signed in"),
            CoreError::Forbidden => f.write_str("forbidden"),
            CoreError::Offline => f.write_str("user offline"),
            CoreError::Busy => f.write_str("user busy"),
            CoreError::NoSuchCall => f.write_str("no such call"),
            CoreError::NotMember => f.write_str("not a member of the room"),
            CoreError::Invalid(d) => write!(f, "invalid request: {d}"),
            CoreError::Internal(d) => write!(f, "internal error: {d}"),
            CoreError::BadRegkey => f.write_str("unknown or spent registration key"),
            CoreError::Replay => f.write_str("nonce already used"),
            CoreError::AlreadyConnected => f.write_str("already logged in"),
            CoreError::NoSuchFile => f.write_str("unknown file"),
            CoreError::AlreadyInRoom => f.write_str("already present in the room"),
            CoreError::RoomFull => f.write_str("room full"),
        }
    }
}

impl std::error::Error for CoreError {}

/// What the hub feeds a session besides transport input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HubEvent {
    /// The answer to a [`Command`].
    Answer {
        /// The command's id.
        id: CorrelationId,
        /// Result.
        result: Result<Answer, CoreError>,
    },
    /// The next event of the bound user's stream. Acknowledge with [`Op::Ack`] once the
    /// client has proven receipt.
    Deliver(Delivery),
    /// A contact of the bound user came online or went offline.
    Presence {
        /// The contact.
        user: UserRef,
        /// Online now?
        online: bool,
    },
    /// The hub is shutting down: say goodbye in the protocol's own way.
    Shutdown,
    /// The core dropped this session from delivery (e.g. a slow reader): close it.
    Kicked {
        /// Why, for logs and the goodbye.
        reason: String,
    },
    /// The next message of a room this session is present in ([`Op::EnterRoom`]), in
    /// the room's order; `seq` is its position in the room's history. Live only: not
    /// acknowledged, not delivered again.
    RoomDeliver(Delivery),
    /// A step of the group key negotiation of a room this session is present in with
    /// key agreement. Answer each with [`Op::KeyReply`], in order.
    KeyStep {
        /// The room.
        room: RoomRef,
        /// The step.
        step: KeyStep,
    },
    /// The next event of a puppet's stream ([`Op::Puppet`]). Acknowledge with
    /// [`Op::PuppetAck`].
    PuppetDeliver {
        /// The puppet.
        user: UserId,
        /// The event.
        delivery: Delivery,
    },
    /// Data a session of this plugin sent with [`Op::Signal`].
    Signal {
        /// The data.
        data: Vec<u8>,
    },
    /// The session is no longer present in the room (it stalled the key negotiation, or
    /// read the room's messages too slowly).
    RoomKicked {
        /// The room.
        room: RoomRef,
        /// Why, for logs and the client.
        reason: String,
    },
}

impl From<UserId> for Address {
    fn from(id: UserId) -> Self {
        Address::User(id)
    }
}
