//! A user actor whose burst write fails: the senders in it get an error, nothing is
//! acknowledged or delivered that is not stored, and the stream's later records neither
//! overlap nor skip what is stored. The store is the real `SledStore` behind a wrapper
//! that makes `append` fail on demand, either before writing (the usual failure) or
//! after (sled can report an error once the insert took effect).

mod common;

use common::{conn, signup, Conn};
use hub_core::metrics::Metrics;
use hub_core::store::{
    Account, ContactPair, Durability, Durable, FileMeta, Once, SledStore, Storage, StoreError,
    StoreResult, TokenRecord,
};
use hub_core::{Core, CoreSettings, SessionMsg};
use hub_plugin_sdk::{
    Address, Answer, ContactState, Content, CoreError, Delivery, EventBody, EventId, EventRecord,
    HubEvent, Op, RoomId, Seq, UserId, UserRef,
};
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// How the next appends go.
const WORK: u8 = 0;
/// Fail without writing.
const FAIL_BEFORE: u8 = 1;
/// Write, then report a failure.
const FAIL_AFTER: u8 = 2;

struct FailingStore {
    inner: SledStore,
    appends: AtomicU8,
}

fn injected() -> StoreError {
    StoreError::Io {
        path: "injected".into(),
        source: std::io::Error::other("injected append failure"),
    }
}

/// Methods passed to the inner store unchanged.
macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> $ret { self.inner.$name($($arg),*) })*
    };
}

impl Storage for FailingStore {
    fn append(&self, user: UserId, first: Seq, events: &[&EventRecord]) -> StoreResult<()> {
        match self.appends.load(SeqCst) {
            FAIL_BEFORE => Err(injected()),
            FAIL_AFTER => self.inner.append(user, first, events).and(Err(injected())),
            _ => self.inner.append(user, first, events),
        }
    }

    forward! {
        create_account(handle: &str, credential: &str, now_unix_ms: u64) -> StoreResult<Account>;
        account(id: UserId) -> StoreResult<Option<Account>>;
        account_by_handle(handle: &str) -> StoreResult<Option<Account>>;
        user_by_handle(handle: &str) -> StoreResult<Option<UserId>>;
        accounts() -> StoreResult<Vec<Account>>;
        set_disabled(id: UserId, disabled: bool) -> StoreResult<bool>;
        put_token(token_hash: [u8; 32], record: &TokenRecord) -> StoreResult<()>;
        token(token_hash: [u8; 32]) -> StoreResult<Option<TokenRecord>>;
        add_regkey(key: [u8; 32], now_unix_ms: u64) -> StoreResult<()>;
        take_regkey(key: [u8; 32]) -> StoreResult<bool>;
        regkey_exists(key: [u8; 32]) -> StoreResult<bool>;
        unused_user_id() -> StoreResult<UserId>;
        register_with_keys(regkey: [u8; 32], id: UserId, handle: &str, keys: &[(String, Vec<u8>)], now_unix_ms: u64) -> StoreResult<Account>;
        put_public_key(id: UserId, kind: &str, bytes: &[u8]) -> StoreResult<()>;
        public_keys(id: UserId) -> StoreResult<Vec<(String, Vec<u8>)>>;
        use_nonce(user: UserId, nonce: &[u8], now_unix_ms: u64, keep_ms: u64) -> StoreResult<bool>;
        contact(owner: UserId, other: UserId) -> StoreResult<Option<ContactState>>;
        contacts(owner: UserId) -> StoreResult<Vec<(UserId, ContactState)>>;
        transition_contacts(a: UserId, b: UserId, decide: &dyn Fn(Option<ContactState>, Option<ContactState>) -> Option<ContactPair>) -> StoreResult<Option<ContactPair>>;
        next_event_id() -> StoreResult<EventId>;
        last_seq(user: UserId) -> StoreResult<Seq>;
        append_once(user: UserId, seq: Seq, event: &EventRecord, key: &[u8]) -> StoreResult<Once>;
        events_after(user: UserId, after: Seq, through: Seq, limit: usize) -> StoreResult<Vec<Delivery>>;
        events_before(user: UserId, before: Seq, limit: usize) -> StoreResult<Vec<Delivery>>;
        cursor(user: UserId) -> StoreResult<Seq>;
        advance_cursor(user: UserId, through: Seq) -> StoreResult<()>;
        room_by_name(name: &str) -> StoreResult<Option<RoomId>>;
        ensure_room(name: &str) -> StoreResult<RoomId>;
        room_name(room: RoomId) -> StoreResult<Option<String>>;
        room_members(room: RoomId) -> StoreResult<Vec<UserId>>;
        set_member(room: RoomId, user: UserId, member: bool) -> StoreResult<bool>;
        alias_namespace(user: UserId) -> StoreResult<Option<String>>;
        alias(namespace: &str, native: &str) -> StoreResult<Option<UserId>>;
        create_alias_account(namespace: &str, native: &str, handles: &[String], now_unix_ms: u64) -> StoreResult<Account>;
        plugin_value(plugin: &str, key: &[u8]) -> StoreResult<Option<Vec<u8>>>;
        put_plugin_value(plugin: &str, key: &[u8], value: Option<&[u8]>) -> StoreResult<()>;
        plugin_values(plugin: &str, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>>;
        room_last_seq(room: RoomId) -> StoreResult<Seq>;
        room_append(room: RoomId, seq: Seq, event: &EventRecord) -> StoreResult<()>;
        room_append_once(room: RoomId, seq: Seq, event: &EventRecord, key: &[u8]) -> StoreResult<Once>;
        room_events_before(room: RoomId, before: Seq, limit: usize) -> StoreResult<Vec<Delivery>>;
        put_file_meta(id: [u8; 16], meta: &FileMeta) -> StoreResult<()>;
        file_meta(id: [u8; 16]) -> StoreResult<Option<FileMeta>>;
        remove_file_meta(id: [u8; 16]) -> StoreResult<()>;
        file_metas() -> StoreResult<Vec<([u8; 16], FileMeta)>>;
        durable() -> Durable;
        flush_now() -> StoreResult<()>;
    }
}

/// Sends `texts` to `to` at once (one burst) and returns the answers in order.
async fn send_burst(core: &Core, from: &mut Conn, to: &UserRef, texts: &[&str]) -> Vec<bool> {
    let pending: Vec<_> = texts
        .iter()
        .map(|text| {
            let op = Op::Send {
                to: Address::User(to.id),
                content: Content::Text((*text).into()),
            };
            core.execute(&mut from.ctx, op)
        })
        .collect();
    let mut accepted = Vec::new();
    for p in pending {
        match p.await {
            Ok(Answer::Accepted { .. }) => accepted.push(true),
            Err(CoreError::Internal(_)) => accepted.push(false),
            other => panic!("{other:?}"),
        }
    }
    accepted
}

/// Binds `conn` to `user` and reads its stream until 300 ms pass without an event:
/// (seq, text) of each delivery.
async fn stream_of(core: &Core, conn: &mut Conn, user: &UserRef) -> Vec<(u64, String)> {
    let op = Op::Bind {
        user: user.id,
        exclusive: false,
        resume_after: None,
    };
    core.execute(&mut conn.ctx, op).await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), conn.rx.recv()).await
    {
        match msg {
            SessionMsg::Event(HubEvent::Deliver(d)) => match d.event.body {
                EventBody::Message(Content::Text(text)) => got.push((d.seq.0, text)),
                other => panic!("{other:?}"),
            },
            SessionMsg::PageDone { user } => core.more_backlog(&conn.ctx, user),
            SessionMsg::Event(other) => panic!("{other:?}"),
        }
    }
    got
}

fn start(dir: &std::path::Path) -> (Core, Arc<FailingStore>) {
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(FailingStore {
        inner: SledStore::open(dir, Durability::Flush, metrics.clone()).unwrap(),
        appends: AtomicU8::new(WORK),
    });
    let mut settings = CoreSettings::default();
    settings.accounts.pbkdf2_iterations = 1;
    settings.files_dir = dir.join("files");
    (Core::start(store.clone(), metrics, settings), store)
}

/// Connection 1 signed in as alice, connection 2 signed up as bob, and bob.
async fn sender_and_bob(core: &Core) -> (Conn, Conn, UserRef) {
    let (mut a, mut b) = (conn(1), conn(2));
    let alice = signup(core, &mut a, "alice").await;
    let bob = signup(core, &mut b, "bob").await;
    core.execute(&mut a.ctx, Op::Authenticate { user: alice.id })
        .await
        .unwrap();
    (a, b, bob)
}

fn numbered(seqs_and_texts: &[(u64, &str)]) -> Vec<(u64, String)> {
    seqs_and_texts
        .iter()
        .map(|(seq, text)| (*seq, (*text).to_owned()))
        .collect()
}

#[actix_rt::test]
async fn a_burst_that_fails_before_it_is_written_is_refused_and_its_numbers_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (core, store) = start(dir.path());
    let (mut a, mut b, bob) = sender_and_bob(&core).await;
    assert_eq!(
        send_burst(&core, &mut a, &bob, &["a", "b"]).await,
        [true, true]
    );
    store.appends.store(FAIL_BEFORE, SeqCst);
    assert_eq!(
        send_burst(&core, &mut a, &bob, &["lost1", "lost2"]).await,
        [false, false],
        "a failed write is refused to every sender in it"
    );
    store.appends.store(WORK, SeqCst);
    assert_eq!(send_burst(&core, &mut a, &bob, &["c"]).await, [true]);
    assert_eq!(
        stream_of(&core, &mut b, &bob).await,
        numbered(&[(1, "a"), (2, "b"), (3, "c")]),
        "nothing refused is delivered, and the numbers go on without a gap"
    );
}

#[actix_rt::test]
async fn a_burst_stored_despite_an_error_is_not_overwritten_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (core, store) = start(dir.path());
    let (mut a, mut b, bob) = sender_and_bob(&core).await;
    assert_eq!(send_burst(&core, &mut a, &bob, &["a"]).await, [true]);
    store.appends.store(FAIL_AFTER, SeqCst);
    assert_eq!(
        send_burst(&core, &mut a, &bob, &["x1", "x2"]).await,
        [false, false]
    );
    store.appends.store(WORK, SeqCst);
    assert_eq!(
        send_burst(&core, &mut a, &bob, &["c", "d", "e"]).await,
        [true, true, true]
    );
    // The refused events are in the store (the error came after the write): they are
    // delivered once, in order, and the next burst takes the numbers after them.
    assert_eq!(
        stream_of(&core, &mut b, &bob).await,
        numbered(&[(1, "a"), (2, "x1"), (3, "x2"), (4, "c"), (5, "d"), (6, "e")])
    );
}
