//! Storage: the narrow trait the core talks to, and its sled implementation.
//!
//! Only this module touches sled. Keys are big-endian integers so that sled's byte order
//! is numeric order; values are postcard with a leading format-version byte
//! ([`codec`]); the `meta` tree holds the schema version, checked at open.

mod codec;
pub mod commit;
mod sled_store;
#[cfg(test)]
mod tests;

pub use commit::{Durability, Durable};
pub use sled_store::SledStore;

use hub_plugin_sdk::{ContactState, Delivery, EventId, EventRecord, RoomId, Seq, UserId};
use serde::{Deserialize, Serialize};

/// Errors of the storage layer (all of them faults of the hub's own, never the peer's).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value did not decode.
    #[error("corrupt record in tree {tree}: {detail}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The data directory was written by an incompatible schema.
    #[error("data directory has schema version {found}, this hub understands {expected}")]
    Schema {
        /// Found on disk.
        found: u32,
        /// Understood by this build.
        expected: u32,
    },
    /// A handle is taken (account creation).
    #[error("handle taken")]
    HandleTaken,
    /// An account with that id exists (account creation with a chosen id).
    #[error("user id taken")]
    IdTaken,
    /// The registration key is unknown or spent.
    #[error("unknown or spent registration key")]
    BadRegkey,
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Result alias for storage operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// What an append with an idempotency key did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Once {
    /// The event is stored.
    Stored,
    /// The key was used before: nothing stored; the first event's position and id.
    Duplicate(Seq, EventId),
}

/// A stored account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Hub-wide id.
    pub id: UserId,
    /// Unique handle.
    pub handle: String,
    /// Password hash in PHC string form (empty for key-only accounts).
    pub credential: String,
    /// Creation time, Unix milliseconds.
    pub created_unix_ms: u64,
    /// Disabled by an operator.
    pub disabled: bool,
}

/// A stored session token (the key is the SHA-256 of the token, never the token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its user.
    pub user: UserId,
    /// Expiry, Unix milliseconds.
    pub expires_unix_ms: u64,
}

/// Metadata of a stored file (content lives in the data directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Who uploaded it.
    pub owner: UserId,
    /// Size in bytes.
    pub size: u64,
    /// Removed at this time at the latest, Unix milliseconds.
    pub expires_unix_ms: u64,
    /// Complete downloads by others before it is removed.
    pub downloads_left: u32,
}

/// What a contact-pair transition decided: the new state from each side.
pub type ContactPair = (ContactState, ContactState);

/// The storage operations the core needs. sled is the only backend for now; the trait
/// keeps the door open for a distributed one.
pub trait Storage: Send + Sync + 'static {
    /// Creates an account with a fresh random id; fails with [`StoreError::HandleTaken`].
    fn create_account(
        &self,
        handle: &str,
        credential: &str,
        now_unix_ms: u64,
    ) -> StoreResult<Account>;
    /// An account by id.
    fn account(&self, id: UserId) -> StoreResult<Option<Account>>;
    /// An account by handle.
    fn account_by_handle(&self, handle: &str) -> StoreResult<Option<Account>>;
    /// The id of the account with this exact handle (no account record read: the
    /// message path resolves every destination this way).
    fn user_by_handle(&self, handle: &str) -> StoreResult<Option<UserId>>;
    /// Every account, by id.
    fn accounts(&self) -> StoreResult<Vec<Account>>;
    /// Enables or disables an account; false if there is no such account.
    fn set_disabled(&self, id: UserId, disabled: bool) -> StoreResult<bool>;

    /// Stores a session token record under the token's hash.
    fn put_token(&self, token_hash: [u8; 32], record: &TokenRecord) -> StoreResult<()>;
    /// A session token record by the token's hash.
    fn token(&self, token_hash: [u8; 32]) -> StoreResult<Option<TokenRecord>>;

    /// Adds a single-use registration key.
    fn add_regkey(&self, key: [u8; 32], now_unix_ms: u64) -> StoreResult<()>;
    /// Removes a registration key; false if it did not exist (spent or unknown).
    fn take_regkey(&self, key: [u8; 32]) -> StoreResult<bool>;
    /// Whether a registration key exists (not spent).
    fn regkey_exists(&self, key: [u8; 32]) -> StoreResult<bool>;
    /// A random user id no account uses.
    fn unused_user_id(&self) -> StoreResult<UserId>;
    /// Atomically: spends `regkey`, creates a key-only account with `id` and `handle`,
    /// stores its public keys. Fails with [`StoreError::BadRegkey`], `IdTaken` or
    /// `HandleTaken`, changing nothing.
    fn register_with_keys(
        &self,
        regkey: [u8; 32],
        id: UserId,
        handle: &str,
        keys: &[(String, Vec<u8>)],
        now_unix_ms: u64,
    ) -> StoreResult<Account>;
    /// Stores (or replaces) one public key of an existing user.
    fn put_public_key(&self, id: UserId, kind: &str, bytes: &[u8]) -> StoreResult<()>;
    /// A user's public keys: (kind, bytes), by kind.
    fn public_keys(&self, id: UserId) -> StoreResult<Vec<(String, Vec<u8>)>>;
    /// Records a login nonce; false if it was recorded before. Nonces older than
    /// `keep_ms` may be forgotten.
    fn use_nonce(
        &self,
        user: UserId,
        nonce: &[u8],
        now_unix_ms: u64,
        keep_ms: u64,
    ) -> StoreResult<bool>;

    /// The contact relation from `owner`'s side.
    fn contact(&self, owner: UserId, other: UserId) -> StoreResult<Option<ContactState>>;
    /// Every contact of `owner`.
    fn contacts(&self, owner: UserId) -> StoreResult<Vec<(UserId, ContactState)>>;
    /// Atomically moves the relation between `a` and `b`: `decide` gets both sides' current
    /// states and returns the new ones (or `Ok(None)` to change nothing).
    fn transition_contacts(
        &self,
        a: UserId,
        b: UserId,
        decide: &dyn Fn(Option<ContactState>, Option<ContactState>) -> Option<ContactPair>,
    ) -> StoreResult<Option<ContactPair>>;

    /// A fresh, never repeated event id.
    fn next_event_id(&self) -> StoreResult<EventId>;
    /// The last sequence number used in `user`'s stream (0 if empty).
    fn last_seq(&self, user: UserId) -> StoreResult<Seq>;
    /// Stores `events` at `first`, `first + 1`, … in `user`'s stream, all or none (one
    /// record: a burst of appends costs one write). Nothing for an empty slice.
    fn append(&self, user: UserId, first: Seq, events: &[&EventRecord]) -> StoreResult<()>;
    /// Stores one event at `seq` in `user`'s stream, at most once per `key` (atomically
    /// with the event).
    fn append_once(
        &self,
        user: UserId,
        seq: Seq,
        event: &EventRecord,
        key: &[u8],
    ) -> StoreResult<Once>;
    /// Up to `limit` events of `user`'s stream after `after`, up to and including `through`.
    fn events_after(
        &self,
        user: UserId,
        after: Seq,
        through: Seq,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>>;
    /// Up to `limit` events of `user`'s stream before `before`, newest first.
    fn events_before(&self, user: UserId, before: Seq, limit: usize) -> StoreResult<Vec<Delivery>>;
    /// The delivery cursor: everything up to it is proven received.
    fn cursor(&self, user: UserId) -> StoreResult<Seq>;
    /// Moves the cursor forward (never back).
    fn advance_cursor(&self, user: UserId, through: Seq) -> StoreResult<()>;

    /// A room by name.
    fn room_by_name(&self, name: &str) -> StoreResult<Option<RoomId>>;
    /// The room with this name, created if needed.
    fn ensure_room(&self, name: &str) -> StoreResult<RoomId>;
    /// A room's name.
    fn room_name(&self, room: RoomId) -> StoreResult<Option<String>>;
    /// Members of a room.
    fn room_members(&self, room: RoomId) -> StoreResult<Vec<UserId>>;
    /// Adds or removes a member; true if that changed anything.
    fn set_member(&self, room: RoomId, user: UserId, member: bool) -> StoreResult<bool>;

    /// The namespace of the protocol identity a user was made for, if any.
    fn alias_namespace(&self, user: UserId) -> StoreResult<Option<String>>;
    /// The user a protocol identity maps to (see [`Storage::create_alias_account`]).
    fn alias(&self, namespace: &str, native: &str) -> StoreResult<Option<UserId>>;
    /// Atomically: creates a key-less, password-less account with a fresh id and the
    /// first free handle of `handles`, and maps `(namespace, native)` to it. If the alias
    /// already exists, returns its account and creates nothing. Fails with
    /// [`StoreError::HandleTaken`] if every handle is taken.
    fn create_alias_account(
        &self,
        namespace: &str,
        native: &str,
        handles: &[String],
        now_unix_ms: u64,
    ) -> StoreResult<Account>;

    /// A value in `plugin`'s own key space.
    fn plugin_value(&self, plugin: &str, key: &[u8]) -> StoreResult<Option<Vec<u8>>>;
    /// Stores (`Some`) or removes (`None`) a value in `plugin`'s own key space.
    fn put_plugin_value(&self, plugin: &str, key: &[u8], value: Option<&[u8]>) -> StoreResult<()>;
    /// Up to `limit` entries of `plugin`'s key space starting with `prefix`, after
    /// `after` (exclusive), in key order.
    fn plugin_values(
        &self,
        plugin: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>>;

    /// The last position used in a room's history (0 if empty).
    fn room_last_seq(&self, room: RoomId) -> StoreResult<Seq>;
    /// Stores `event` at `seq` in the room's history.
    fn room_append(&self, room: RoomId, seq: Seq, event: &EventRecord) -> StoreResult<()>;
    /// Like [`Storage::room_append`], at most once per `key` in the room's history.
    fn room_append_once(
        &self,
        room: RoomId,
        seq: Seq,
        event: &EventRecord,
        key: &[u8],
    ) -> StoreResult<Once>;
    /// Up to `limit` events of a room's history before `before`, newest first.
    fn room_events_before(
        &self,
        room: RoomId,
        before: Seq,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>>;

    /// Stores a file's metadata.
    fn put_file_meta(&self, id: [u8; 16], meta: &FileMeta) -> StoreResult<()>;
    /// A file's metadata.
    fn file_meta(&self, id: [u8; 16]) -> StoreResult<Option<FileMeta>>;
    /// Forgets a file.
    fn remove_file_meta(&self, id: [u8; 16]) -> StoreResult<()>;
    /// Every stored file.
    fn file_metas(&self) -> StoreResult<Vec<([u8; 16], FileMeta)>>;

    /// A future resolving once every write made before the call is durable.
    fn durable(&self) -> Durable;
    /// Flushes and fsyncs now (shutdown).
    fn flush_now(&self) -> StoreResult<()>;
}
