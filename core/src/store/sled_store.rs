//! The sled backend of [`Storage`].

use super::codec::{be_u64, decode, decode_many, encode, encode_many, pair_key};
use super::commit::{CommitHandle, Durability, Durable, GroupCommit};
use super::{Account, ContactPair, FileMeta, Once, Storage, StoreError, StoreResult, TokenRecord};
use crate::metrics::Metrics;
use hub_plugin_sdk::{ContactState, Delivery, EventId, EventRecord, RoomId, Seq, UserId};
use ring::rand::{SecureRandom, SystemRandom};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Schema version of the trees below. Bump on any incompatible change.
///
/// 2: a record of `events` may hold several events (a burst appended at once), keyed by
/// the last one's sequence number. Every record of version 1 (one event under its own
/// sequence number) is such a record of one, so a version-1 store is upgraded by
/// recording the new version; a hub that knows only version 1 then refuses the store
/// instead of misreading it.
pub const SCHEMA_VERSION: u32 = 2;

/// The sled store: one tree per kind of record.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    accounts: sled::Tree,
    handles: sled::Tree,
    tokens: sled::Tree,
    regkeys: sled::Tree,
    contacts: sled::Tree,
    events: sled::Tree,
    cursors: sled::Tree,
    rooms: sled::Tree,
    room_names: sled::Tree,
    members: sled::Tree,
    keys: sled::Tree,
    nonces: sled::Tree,
    files: sled::Tree,
    /// `namespace 0x00 native` → user id.
    aliases: sled::Tree,
    /// `(room, seq)` → event: each room's history.
    room_events: sled::Tree,
    /// `plugin 0x00 key` → value: plugins' own durable state.
    plugin_kv: sled::Tree,
    /// user id → `namespace 0x00 native`: which identity an alias account stands for.
    alias_of: sled::Tree,
    /// `u|r ‖ id ‖ key` → `seq ‖ event id`: idempotency keys of user streams and rooms.
    dedup: sled::Tree,
    /// Lock-free side of the group commit, used on the message path.
    commit: CommitHandle,
    /// The flusher thread, behind a Mutex only so that `close()` can stop it (never
    /// touched on the message path).
    flusher: Mutex<Option<GroupCommit>>,
    /// sled's data file, fsynced after flushes.
    data_file: std::path::PathBuf,
    rng: SystemRandom,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, durability: Durability, metrics: Arc<Metrics>) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // Flushing is ours (group commit), not sled's timer.
            .flush_every_ms(None)
            // Items over segment_size/4 go to separate blob files, which the group
            // commit does not fsync (the vendored sled fsyncs each as it writes it).
            // 8 MiB segments keep nodes of events up to the plugins' usual frame limit
            // (64 KiB) inline in the data file the group commit fsyncs.
            .segment_size(8 * 1024 * 1024)
            .open()?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema")? {
            Some(bytes) => {
                let found = be_u64("meta", &bytes, 0)? as u32;
                if found == 1 {
                    meta.insert("schema", &(SCHEMA_VERSION as u64).to_be_bytes())?;
                    tracing::info!(
                        from = found,
                        to = SCHEMA_VERSION,
                        "store schema upgraded (no record rewritten)"
                    );
                } else if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema {
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
            None => {
                meta.insert("schema", &(SCHEMA_VERSION as u64).to_be_bytes())?;
            }
        }
        let data_file = dir.join("db");
        // The group commit fsyncs this file; it must exist once sled has opened.
        let file = std::fs::File::open(&data_file).map_err(|source| StoreError::Io {
            path: data_file.display().to_string(),
            source,
        })?;
        let (flusher, commit) = GroupCommit::start(db.clone(), file, durability, metrics);
        Ok(SledStore {
            meta,
            accounts: db.open_tree("accounts")?,
            handles: db.open_tree("handles")?,
            tokens: db.open_tree("tokens")?,
            regkeys: db.open_tree("regkeys")?,
            contacts: db.open_tree("contacts")?,
            events: db.open_tree("events")?,
            cursors: db.open_tree("cursors")?,
            rooms: db.open_tree("rooms")?,
            room_names: db.open_tree("room_names")?,
            members: db.open_tree("members")?,
            keys: db.open_tree("keys")?,
            nonces: db.open_tree("nonces")?,
            files: db.open_tree("files")?,
            aliases: db.open_tree("aliases")?,
            room_events: db.open_tree("room_events")?,
            plugin_kv: db.open_tree("plugin_kv")?,
            alias_of: db.open_tree("alias_of")?,
            dedup: db.open_tree("dedup")?,
            commit,
            flusher: Mutex::new(Some(flusher)),
            data_file,
            rng: SystemRandom::new(),
            db,
        })
    }

    /// Stops the flusher after a last flush. Later `durable()` calls fail.
    pub fn close(&self) {
        if let Ok(mut flusher) = self.flusher.lock() {
            if let Some(mut flusher) = flusher.take() {
                flusher.stop();
            }
        }
    }

    fn random_u64(&self) -> u64 {
        let mut bytes = [0u8; 8];
        // The OS CSPRNG does not fail on Linux once booted.
        self.rng.fill(&mut bytes).expect("system random source");
        u64::from_be_bytes(bytes)
    }

    fn counter(&self, name: &str) -> StoreResult<u64> {
        let next = self.meta.update_and_fetch(name, |old| {
            let n = old
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        // update_and_fetch with a closure that always returns Some yields Some.
        be_u64("meta", &next.expect("counter value"), 0)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Key in a namespaced tree (aliases, plugin values): the namespace, a zero byte, the
/// key within it.
fn alias_key(namespace: &str, native: impl AsRef<[u8]>) -> Vec<u8> {
    let native = native.as_ref();
    let mut key = Vec::with_capacity(namespace.len() + 1 + native.len());
    key.extend_from_slice(namespace.as_bytes());
    key.push(0);
    key.extend_from_slice(native);
    key
}

/// Key of an idempotency key: scope (`u`ser or `r`oom), its id, the key.
fn dedup_key(scope: u8, id: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.push(scope);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Stores `event` under `event_key` in `tree` unless `key` is in `dedup`, atomically.
fn once(
    tree: &sled::Tree,
    dedup: &sled::Tree,
    key: Vec<u8>,
    event_key: [u8; 16],
    seq: Seq,
    event: &EventRecord,
) -> StoreResult<Once> {
    let value = encode(event);
    let mut mark = seq.0.to_be_bytes().to_vec();
    mark.extend_from_slice(&event.id.0.to_be_bytes());
    let result = (tree, dedup).transaction(|(tree, dedup)| {
        if let Some(first) = dedup.get(&key)? {
            let first_seq =
                be_u64("dedup", &first, 0).map_err(ConflictableTransactionError::Abort)?;
            let first_id =
                be_u64("dedup", &first, 8).map_err(ConflictableTransactionError::Abort)?;
            return Ok(Once::Duplicate(Seq(first_seq), EventId(first_id)));
        }
        tree.insert(&event_key[..], value.clone())?;
        dedup.insert(&key[..], &mark[..])?;
        Ok(Once::Stored)
    });
    unwrap_tx(result)
}

/// A record of a user's stream: the sequence number of its first event, and its events
/// in order (the key holds the last one's).
fn stream_record((key, value): (sled::IVec, sled::IVec)) -> StoreResult<(u64, Vec<EventRecord>)> {
    let last = be_u64("events", &key, 8)?;
    let events: Vec<EventRecord> = decode_many("events", &value)?;
    // decode_many never yields an empty record; a record cannot begin before seq 1.
    let first = (last + 1)
        .checked_sub(events.len() as u64)
        .filter(|first| *first >= 1)
        .ok_or_else(|| StoreError::Corrupt {
            tree: "events",
            detail: format!("{} events ending at seq {last}", events.len()),
        })?;
    Ok((first, events))
}

fn unwrap_tx<T>(result: Result<T, TransactionError<StoreError>>) -> StoreResult<T> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    })
}

impl Storage for SledStore {
    fn create_account(
        &self,
        handle: &str,
        credential: &str,
        now_unix_ms: u64,
    ) -> StoreResult<Account> {
        loop {
            let id = self.random_u64();
            if id == 0 || self.accounts.contains_key(id.to_be_bytes())? {
                continue;
            }
            let account = Account {
                id: UserId(id),
                handle: handle.to_owned(),
                credential: credential.to_owned(),
                created_unix_ms: now_unix_ms,
                disabled: false,
            };
            let value = encode(&account);
            let result = (&self.handles, &self.accounts).transaction(|(handles, accounts)| {
                if handles.get(handle.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(StoreError::HandleTaken));
                }
                handles.insert(handle.as_bytes(), &id.to_be_bytes())?;
                accounts.insert(&id.to_be_bytes(), value.clone())?;
                Ok(())
            });
            unwrap_tx(result)?;
            return Ok(account);
        }
    }

    fn account(&self, id: UserId) -> StoreResult<Option<Account>> {
        self.accounts
            .get(id.0.to_be_bytes())?
            .map(|v| decode("accounts", &v))
            .transpose()
    }

    fn account_by_handle(&self, handle: &str) -> StoreResult<Option<Account>> {
        match self.handles.get(handle.as_bytes())? {
            Some(id) => self.account(UserId(be_u64("handles", &id, 0)?)),
            None => Ok(None),
        }
    }

    fn user_by_handle(&self, handle: &str) -> StoreResult<Option<UserId>> {
        match self.handles.get(handle.as_bytes())? {
            Some(id) => Ok(Some(UserId(be_u64("handles", &id, 0)?))),
            None => Ok(None),
        }
    }

    fn accounts(&self) -> StoreResult<Vec<Account>> {
        self.accounts
            .iter()
            .map(|entry| decode("accounts", &entry?.1))
            .collect()
    }

    fn set_disabled(&self, id: UserId, disabled: bool) -> StoreResult<bool> {
        let Some(mut account) = self.account(id)? else {
            return Ok(false);
        };
        account.disabled = disabled;
        self.accounts.insert(id.0.to_be_bytes(), encode(&account))?;
        Ok(true)
    }

    fn put_token(&self, token_hash: [u8; 32], record: &TokenRecord) -> StoreResult<()> {
        self.tokens.insert(token_hash, encode(record))?;
        Ok(())
    }

    fn token(&self, token_hash: [u8; 32]) -> StoreResult<Option<TokenRecord>> {
        self.tokens
            .get(token_hash)?
            .map(|v| decode("tokens", &v))
            .transpose()
    }

    fn add_regkey(&self, key: [u8; 32], now_unix_ms: u64) -> StoreResult<()> {
        self.regkeys.insert(key, &now_unix_ms.to_be_bytes())?;
        Ok(())
    }

    fn take_regkey(&self, key: [u8; 32]) -> StoreResult<bool> {
        Ok(self.regkeys.remove(key)?.is_some())
    }

    fn regkey_exists(&self, key: [u8; 32]) -> StoreResult<bool> {
        Ok(self.regkeys.contains_key(key)?)
    }

    fn unused_user_id(&self) -> StoreResult<UserId> {
        loop {
            let id = self.random_u64();
            if id != 0 && !self.accounts.contains_key(id.to_be_bytes())? {
                return Ok(UserId(id));
            }
        }
    }

    fn register_with_keys(
        &self,
        regkey: [u8; 32],
        id: UserId,
        handle: &str,
        keys: &[(String, Vec<u8>)],
        now_unix_ms: u64,
    ) -> StoreResult<Account> {
        let account = Account {
            id,
            handle: handle.to_owned(),
            credential: String::new(),
            created_unix_ms: now_unix_ms,
            disabled: false,
        };
        let value = encode(&account);
        let id_key = id.0.to_be_bytes();
        let result = (&self.regkeys, &self.handles, &self.accounts, &self.keys).transaction(
            |(regkeys, handles, accounts, key_tree)| {
                let abort = ConflictableTransactionError::Abort;
                if regkeys.remove(&regkey[..])?.is_none() {
                    return Err(abort(StoreError::BadRegkey));
                }
                if accounts.get(&id_key[..])?.is_some() {
                    return Err(abort(StoreError::IdTaken));
                }
                if handles.get(handle.as_bytes())?.is_some() {
                    return Err(abort(StoreError::HandleTaken));
                }
                handles.insert(handle.as_bytes(), &id_key[..])?;
                accounts.insert(&id_key[..], value.clone())?;
                for (kind, bytes) in keys {
                    let mut key = id_key.to_vec();
                    key.extend_from_slice(kind.as_bytes());
                    key_tree.insert(key, bytes.clone())?;
                }
                Ok(())
            },
        );
        unwrap_tx(result)?;
        Ok(account)
    }

    fn put_public_key(&self, id: UserId, kind: &str, bytes: &[u8]) -> StoreResult<()> {
        let mut key = id.0.to_be_bytes().to_vec();
        key.extend_from_slice(kind.as_bytes());
        self.keys.insert(key, bytes)?;
        Ok(())
    }

    fn public_keys(&self, id: UserId) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.keys
            .scan_prefix(id.0.to_be_bytes())
            .map(|entry| {
                let (key, value) = entry?;
                Ok((
                    String::from_utf8_lossy(&key[8..]).into_owned(),
                    value.to_vec(),
                ))
            })
            .collect()
    }

    fn use_nonce(
        &self,
        user: UserId,
        nonce: &[u8],
        now_unix_ms: u64,
        keep_ms: u64,
    ) -> StoreResult<bool> {
        let mut key = user.0.to_be_bytes().to_vec();
        key.extend_from_slice(nonce);
        let fresh = self
            .nonces
            .compare_and_swap(
                &key,
                None as Option<&[u8]>,
                Some(&now_unix_ms.to_be_bytes()[..]),
            )?
            .is_ok();
        if fresh {
            // Forget this user's nonces older than keep_ms (bounded work: one prefix scan
            // per login, over at most the logins of that window).
            let cutoff = now_unix_ms.saturating_sub(keep_ms);
            for entry in self.nonces.scan_prefix(user.0.to_be_bytes()) {
                let (old_key, at) = entry?;
                if be_u64("nonces", &at, 0)? < cutoff {
                    self.nonces.remove(old_key)?;
                }
            }
        }
        Ok(fresh)
    }

    fn contact(&self, owner: UserId, other: UserId) -> StoreResult<Option<ContactState>> {
        self.contacts
            .get(pair_key(owner.0, other.0))?
            .map(|v| decode("contacts", &v))
            .transpose()
    }

    fn contacts(&self, owner: UserId) -> StoreResult<Vec<(UserId, ContactState)>> {
        self.contacts
            .scan_prefix(owner.0.to_be_bytes())
            .map(|entry| {
                let (key, value) = entry?;
                Ok((
                    UserId(be_u64("contacts", &key, 8)?),
                    decode("contacts", &value)?,
                ))
            })
            .collect()
    }

    fn transition_contacts(
        &self,
        a: UserId,
        b: UserId,
        decide: &dyn Fn(Option<ContactState>, Option<ContactState>) -> Option<ContactPair>,
    ) -> StoreResult<Option<ContactPair>> {
        let key_ab = pair_key(a.0, b.0);
        let key_ba = pair_key(b.0, a.0);
        let result = self.contacts.transaction(|tree| {
            let read = |key: &[u8; 16]| -> Result<
                Option<ContactState>,
                ConflictableTransactionError<StoreError>,
            > {
                match tree.get(key)? {
                    Some(v) => decode("contacts", &v)
                        .map(Some)
                        .map_err(ConflictableTransactionError::Abort),
                    None => Ok(None),
                }
            };
            let (state_a, state_b) = (read(&key_ab)?, read(&key_ba)?);
            let Some((new_a, new_b)) = decide(state_a, state_b) else {
                return Ok(None);
            };
            tree.insert(&key_ab, encode(&new_a))?;
            tree.insert(&key_ba, encode(&new_b))?;
            Ok(Some((new_a, new_b)))
        });
        unwrap_tx(result)
    }

    fn next_event_id(&self) -> StoreResult<EventId> {
        // sled's id generator is monotonic across restarts and cheap (batched reservations).
        Ok(EventId(self.db.generate_id()? + 1))
    }

    fn last_seq(&self, user: UserId) -> StoreResult<Seq> {
        match self.events.scan_prefix(user.0.to_be_bytes()).next_back() {
            Some(entry) => Ok(Seq(be_u64("events", &entry?.0, 8)?)),
            None => Ok(Seq(0)),
        }
    }

    fn append(&self, user: UserId, first: Seq, events: &[&EventRecord]) -> StoreResult<()> {
        let Some(count) = (events.len() as u64).checked_sub(1) else {
            return Ok(());
        };
        self.events
            .insert(pair_key(user.0, first.0 + count), encode_many(events))?;
        Ok(())
    }

    fn events_after(
        &self,
        user: UserId,
        after: Seq,
        through: Seq,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let mut out = Vec::new();
        if through <= after || limit == 0 {
            return Ok(out);
        }
        // Records are keyed by their last event: the first one at or after `after + 1`
        // holds it, wherever in the record it is.
        for record in self
            .events
            .range(pair_key(user.0, after.0 + 1)..=pair_key(user.0, u64::MAX))
        {
            let (first, events) = stream_record(record?)?;
            if first > through.0 {
                break;
            }
            for (seq, event) in (first..).zip(events) {
                if seq <= after.0 {
                    continue;
                }
                if seq > through.0 || out.len() == limit {
                    return Ok(out);
                }
                out.push(Delivery {
                    seq: Seq(seq),
                    event,
                });
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn events_before(&self, user: UserId, before: Seq, limit: usize) -> StoreResult<Vec<Delivery>> {
        let mut out = Vec::new();
        if before.0 == 0 || limit == 0 {
            return Ok(out);
        }
        // Records keyed below `before` lie wholly before it; the first record keyed at or
        // after it may begin before it.
        let straddling = self
            .events
            .range(pair_key(user.0, before.0)..=pair_key(user.0, u64::MAX))
            .next();
        let below = self
            .events
            .range(pair_key(user.0, 0)..pair_key(user.0, before.0))
            .rev();
        for record in straddling.into_iter().chain(below) {
            let (first, events) = stream_record(record?)?;
            for (offset, event) in events.into_iter().enumerate().rev() {
                let seq = first + offset as u64;
                if seq >= before.0 {
                    continue;
                }
                out.push(Delivery {
                    seq: Seq(seq),
                    event,
                });
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    fn cursor(&self, user: UserId) -> StoreResult<Seq> {
        match self.cursors.get(user.0.to_be_bytes())? {
            Some(v) => Ok(Seq(be_u64("cursors", &v, 0)?)),
            None => Ok(Seq(0)),
        }
    }

    fn advance_cursor(&self, user: UserId, through: Seq) -> StoreResult<()> {
        self.cursors.fetch_and_update(user.0.to_be_bytes(), |old| {
            let old = old
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some(old.max(through.0).to_be_bytes().to_vec())
        })?;
        Ok(())
    }

    fn room_by_name(&self, name: &str) -> StoreResult<Option<RoomId>> {
        self.room_names
            .get(name.as_bytes())?
            .map(|v| be_u64("room_names", &v, 0).map(RoomId))
            .transpose()
    }

    fn ensure_room(&self, name: &str) -> StoreResult<RoomId> {
        if let Some(id) = self.room_by_name(name)? {
            return Ok(id);
        }
        let id = self.counter("room_counter")?;
        let result = (&self.room_names, &self.rooms).transaction(|(names, rooms)| {
            if let Some(existing) = names.get(name.as_bytes())? {
                return be_u64("room_names", &existing, 0)
                    .map(RoomId)
                    .map_err(ConflictableTransactionError::Abort);
            }
            names.insert(name.as_bytes(), &id.to_be_bytes())?;
            rooms.insert(&id.to_be_bytes(), encode(&name.to_owned()))?;
            Ok(RoomId(id))
        });
        unwrap_tx(result)
    }

    fn room_name(&self, room: RoomId) -> StoreResult<Option<String>> {
        self.rooms
            .get(room.0.to_be_bytes())?
            .map(|v| decode("rooms", &v))
            .transpose()
    }

    fn room_members(&self, room: RoomId) -> StoreResult<Vec<UserId>> {
        self.members
            .scan_prefix(room.0.to_be_bytes())
            .map(|entry| Ok(UserId(be_u64("members", &entry?.0, 8)?)))
            .collect()
    }

    fn set_member(&self, room: RoomId, user: UserId, member: bool) -> StoreResult<bool> {
        let key = pair_key(room.0, user.0);
        let changed = if member {
            self.members.insert(key, &[])?.is_none()
        } else {
            self.members.remove(key)?.is_some()
        };
        Ok(changed)
    }

    fn alias(&self, namespace: &str, native: &str) -> StoreResult<Option<UserId>> {
        self.aliases
            .get(alias_key(namespace, native))?
            .map(|v| be_u64("aliases", &v, 0).map(UserId))
            .transpose()
    }

    fn create_alias_account(
        &self,
        namespace: &str,
        native: &str,
        handles: &[String],
        now_unix_ms: u64,
    ) -> StoreResult<Account> {
        let key = alias_key(namespace, native);
        let id = loop {
            let id = self.random_u64();
            if id != 0 && !self.accounts.contains_key(id.to_be_bytes())? {
                break id;
            }
        };
        let id_key = id.to_be_bytes();
        let result = (&self.aliases, &self.handles, &self.accounts, &self.alias_of).transaction(
            |(aliases, handle_tree, accounts, alias_of)| {
                let abort = ConflictableTransactionError::Abort;
                if let Some(existing) = aliases.get(&key)? {
                    let existing = be_u64("aliases", &existing, 0).map_err(abort)?;
                    let account = accounts
                        .get(existing.to_be_bytes())?
                        .ok_or(StoreError::Corrupt {
                            tree: "aliases",
                            detail: format!("alias of missing account {existing}"),
                        })
                        .and_then(|v| decode::<Account>("accounts", &v))
                        .map_err(abort)?;
                    return Ok(account);
                }
                if accounts.get(&id_key[..])?.is_some() {
                    return Err(abort(StoreError::IdTaken));
                }
                let mut free = None;
                for handle in handles {
                    if handle_tree.get(handle.as_bytes())?.is_none() {
                        free = Some(handle);
                        break;
                    }
                }
                let Some(handle) = free else {
                    return Err(abort(StoreError::HandleTaken));
                };
                let account = Account {
                    id: UserId(id),
                    handle: handle.clone(),
                    credential: String::new(),
                    created_unix_ms: now_unix_ms,
                    disabled: false,
                };
                handle_tree.insert(handle.as_bytes(), &id_key[..])?;
                accounts.insert(&id_key[..], encode(&account))?;
                aliases.insert(&key[..], &id_key[..])?;
                alias_of.insert(&id_key[..], &key[..])?;
                Ok(account)
            },
        );
        unwrap_tx(result)
    }

    fn plugin_value(&self, plugin: &str, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .plugin_kv
            .get(alias_key(plugin, key))?
            .map(|v| v.to_vec()))
    }

    fn put_plugin_value(&self, plugin: &str, key: &[u8], value: Option<&[u8]>) -> StoreResult<()> {
        let key = alias_key(plugin, key);
        match value {
            Some(value) => self.plugin_kv.insert(key, value)?,
            None => self.plugin_kv.remove(key)?,
        };
        Ok(())
    }

    fn plugin_values(
        &self,
        plugin: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        let space = alias_key(plugin, b"").len();
        let start = alias_key(plugin, prefix);
        let from = match after {
            Some(after) => Bound::Excluded(alias_key(plugin, after)),
            None => Bound::Included(start.clone()),
        };
        let mut entries = Vec::new();
        for entry in self.plugin_kv.range::<Vec<u8>, _>((from, Bound::Unbounded)) {
            let (key, value) = entry?;
            if !key.starts_with(&start) || entries.len() >= limit {
                break;
            }
            entries.push((key[space..].to_vec(), value.to_vec()));
        }
        Ok(entries)
    }

    fn alias_namespace(&self, user: UserId) -> StoreResult<Option<String>> {
        Ok(self.alias_of.get(user.0.to_be_bytes())?.map(|key| {
            let end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
            String::from_utf8_lossy(&key[..end]).into_owned()
        }))
    }

    fn append_once(
        &self,
        user: UserId,
        seq: Seq,
        event: &EventRecord,
        key: &[u8],
    ) -> StoreResult<Once> {
        once(
            &self.events,
            &self.dedup,
            dedup_key(b'u', user.0, key),
            pair_key(user.0, seq.0),
            seq,
            event,
        )
    }

    fn room_append_once(
        &self,
        room: RoomId,
        seq: Seq,
        event: &EventRecord,
        key: &[u8],
    ) -> StoreResult<Once> {
        once(
            &self.room_events,
            &self.dedup,
            dedup_key(b'r', room.0, key),
            pair_key(room.0, seq.0),
            seq,
            event,
        )
    }

    fn room_last_seq(&self, room: RoomId) -> StoreResult<Seq> {
        match self
            .room_events
            .scan_prefix(room.0.to_be_bytes())
            .next_back()
        {
            Some(entry) => Ok(Seq(be_u64("room_events", &entry?.0, 8)?)),
            None => Ok(Seq(0)),
        }
    }

    fn room_append(&self, room: RoomId, seq: Seq, event: &EventRecord) -> StoreResult<()> {
        self.room_events
            .insert(pair_key(room.0, seq.0), encode(event))?;
        Ok(())
    }

    fn room_events_before(
        &self,
        room: RoomId,
        before: Seq,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        self.room_events
            .range(pair_key(room.0, 0)..pair_key(room.0, before.0))
            .rev()
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                Ok(Delivery {
                    seq: Seq(be_u64("room_events", &key, 8)?),
                    event: decode("room_events", &value)?,
                })
            })
            .collect()
    }

    fn put_file_meta(&self, id: [u8; 16], meta: &FileMeta) -> StoreResult<()> {
        self.files.insert(id, encode(meta))?;
        Ok(())
    }

    fn file_meta(&self, id: [u8; 16]) -> StoreResult<Option<FileMeta>> {
        self.files.get(id)?.map(|v| decode("files", &v)).transpose()
    }

    fn remove_file_meta(&self, id: [u8; 16]) -> StoreResult<()> {
        self.files.remove(id)?;
        Ok(())
    }

    fn file_metas(&self) -> StoreResult<Vec<([u8; 16], FileMeta)>> {
        self.files
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                let id: [u8; 16] = key.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    tree: "files",
                    detail: format!("key of {} bytes", key.len()),
                })?;
                Ok((id, decode("files", &value)?))
            })
            .collect()
    }

    fn durable(&self) -> Durable {
        self.commit.durable()
    }

    fn flush_now(&self) -> StoreResult<()> {
        self.db.flush()?;
        std::fs::File::open(&self.data_file)
            .and_then(|file| file.sync_data())
            .map_err(|source| StoreError::Io {
                path: self.data_file.display().to_string(),
                source,
            })?;
        Ok(())
    }
}
