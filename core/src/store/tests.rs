//! Model test: random operations, including restarts, checked against a `BTreeMap`.

use super::*;
use crate::metrics::Metrics;
use hub_plugin_sdk::testing::Rng;
use hub_plugin_sdk::{Content, EventBody, Origin, Target, UserRef};
use std::collections::BTreeMap;
use std::sync::Arc;

fn event(id: u64, text: String) -> EventRecord {
    let user = UserRef {
        id: UserId(1),
        handle: "a".into(),
    };
    EventRecord {
        id: EventId(id),
        at_unix_ms: id,
        origin: Origin {
            plugin: "test".into(),
            conn: None,
        },
        from: user.clone(),
        to: Target::User(user),
        body: EventBody::Message(Content::Text(text)),
    }
}

fn open(dir: &std::path::Path) -> SledStore {
    // A reopen in the same process can race sled's background threads still releasing
    // the previous handle's file lock (seen under a loaded machine): retry briefly.
    let mut tries = 0;
    loop {
        match SledStore::open(dir, Durability::Flush, Arc::new(Metrics::default())) {
            Ok(store) => return store,
            Err(e) if tries < 50 => {
                tries += 1;
                eprintln!("reopen attempt {tries} failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopening the store: {e}"),
        }
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn streams_and_cursors_match_a_model_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut model: BTreeMap<(u64, u64), EventRecord> = BTreeMap::new();
    let mut cursors: BTreeMap<u64, u64> = BTreeMap::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ids = std::collections::HashSet::new();
    for step in 0..3000 {
        let user = 1 + rng.below(4);
        match rng.below(100) {
            0..=54 => {
                // A burst of one to five events, stored as one record.
                let first = store.last_seq(UserId(user)).unwrap().0 + 1;
                let mut records = Vec::new();
                for n in 0..1 + rng.below(5) {
                    let id = store.next_event_id().unwrap();
                    assert!(ids.insert(id), "event id {id:?} repeated");
                    records.push(event(id.0, format!("step {step}.{n}")));
                }
                let refs: Vec<&EventRecord> = records.iter().collect();
                store.append(UserId(user), Seq(first), &refs).unwrap();
                block_on(store.durable()).unwrap();
                for (seq, record) in (first..).zip(records) {
                    model.insert((user, seq), record);
                }
            }
            55..=59 => {
                // An event with an idempotency key: a record of its own between bursts.
                let seq = store.last_seq(UserId(user)).unwrap().0 + 1;
                let id = store.next_event_id().unwrap();
                assert!(ids.insert(id), "event id {id:?} repeated");
                let record = event(id.0, format!("step {step} once"));
                let key = format!("k{step}");
                let stored = store
                    .append_once(UserId(user), Seq(seq), &record, key.as_bytes())
                    .unwrap();
                assert_eq!(stored, Once::Stored);
                block_on(store.durable()).unwrap();
                model.insert((user, seq), record);
            }
            60..=74 => {
                let last = model
                    .range((user, 0)..(user + 1, 0))
                    .next_back()
                    .map_or(0, |(k, _)| k.1);
                let through = rng.below(last + 2);
                store.advance_cursor(UserId(user), Seq(through)).unwrap();
                let c = cursors.entry(user).or_insert(0);
                *c = (*c).max(through);
            }
            75..=94 => {
                // Anywhere in the stream, so that pages begin and end inside records.
                let last = model
                    .range((user, 0)..(user + 1, 0))
                    .next_back()
                    .map_or(0, |(k, _)| k.1);
                let after = rng.below(last + 3);
                let through = after + rng.below(40);
                let limit = 1 + rng.below(10) as usize;
                let got = store
                    .events_after(UserId(user), Seq(after), Seq(through), limit)
                    .unwrap();
                let want: Vec<_> = model
                    .range((user, after + 1)..(user, through + 1))
                    .take(limit)
                    .map(|(k, v)| Delivery {
                        seq: Seq(k.1),
                        event: v.clone(),
                    })
                    .collect();
                assert_eq!(
                    got, want,
                    "events_after({user}, {after}, {through}, {limit}) at step {step}"
                );
                let before = rng.below(last + 3);
                let got = store
                    .events_before(UserId(user), Seq(before), limit)
                    .unwrap();
                let want: Vec<_> = model
                    .range((user, 0)..(user, before))
                    .rev()
                    .take(limit)
                    .map(|(k, v)| Delivery {
                        seq: Seq(k.1),
                        event: v.clone(),
                    })
                    .collect();
                assert_eq!(got, want, "events_before at step {step}");
            }
            _ => {
                // Restart: everything acknowledged (durable) must still be there.
                drop(store);
                store = open(dir.path());
            }
        }
        let last = model
            .range((user, 0)..(user + 1, 0))
            .next_back()
            .map_or(0, |(k, _)| k.1);
        assert_eq!(
            store.last_seq(UserId(user)).unwrap(),
            Seq(last),
            "last_seq at step {step}"
        );
        assert_eq!(
            store.cursor(UserId(user)).unwrap(),
            Seq(cursors.get(&user).copied().unwrap_or(0)),
            "cursor at step {step}"
        );
    }
}

#[test]
fn accounts_handles_tokens_and_regkeys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let alice = store.create_account("alice", "$x", 5).unwrap();
    assert!(matches!(
        store.create_account("alice", "$y", 6),
        Err(StoreError::HandleTaken)
    ));
    assert_eq!(
        store.account_by_handle("alice").unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.account(alice.id).unwrap(), Some(alice.clone()));
    assert!(store.set_disabled(alice.id, true).unwrap());
    assert!(store.account(alice.id).unwrap().unwrap().disabled);
    assert!(!store.set_disabled(UserId(12345), true).unwrap());

    let record = TokenRecord {
        user: alice.id,
        expires_unix_ms: 99,
    };
    store.put_token([7; 32], &record).unwrap();
    assert_eq!(store.token([7; 32]).unwrap(), Some(record));
    assert_eq!(store.token([8; 32]).unwrap(), None);

    store.add_regkey([1; 32], 0).unwrap();
    assert!(store.take_regkey([1; 32]).unwrap());
    assert!(
        !store.take_regkey([1; 32]).unwrap(),
        "a regkey is single-use"
    );
}

#[test]
fn contact_transitions_are_atomic_per_pair_and_rooms_keep_members() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (UserId(1), UserId(2));
    let pair = store
        .transition_contacts(a, b, &|x, y| {
            assert_eq!((x, y), (None, None));
            Some((ContactState::Outgoing, ContactState::Incoming))
        })
        .unwrap();
    assert_eq!(pair, Some((ContactState::Outgoing, ContactState::Incoming)));
    assert_eq!(store.contact(b, a).unwrap(), Some(ContactState::Incoming));
    assert_eq!(
        store.contacts(a).unwrap(),
        vec![(b, ContactState::Outgoing)]
    );
    assert_eq!(store.transition_contacts(a, b, &|_, _| None).unwrap(), None);

    let room = store.ensure_room("lobby").unwrap();
    assert_eq!(store.ensure_room("lobby").unwrap(), room);
    assert_ne!(store.ensure_room("other").unwrap(), room);
    assert_eq!(store.room_name(room).unwrap().as_deref(), Some("lobby"));
    assert!(store.set_member(room, a, true).unwrap());
    assert!(!store.set_member(room, a, true).unwrap());
    assert!(store.set_member(room, b, true).unwrap());
    assert_eq!(store.room_members(room).unwrap(), vec![a, b]);
    assert!(store.set_member(room, a, false).unwrap());
    assert_eq!(store.room_members(room).unwrap(), vec![b]);
}

#[test]
fn aliases_map_identities_once_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.create_account("taken", "$x", 1).unwrap();
    let handles = vec!["taken".to_owned(), "cchat-abc".to_owned()];
    assert_eq!(store.alias("cchat", "abc").unwrap(), None);
    let made = store
        .create_alias_account("cchat", "abc", &handles, 5)
        .unwrap();
    assert_eq!(made.handle, "cchat-abc", "the first free handle is used");
    assert_eq!(made.credential, "", "alias accounts have no password");
    let again = store
        .create_alias_account("cchat", "abc", &["other".to_owned()], 6)
        .unwrap();
    assert_eq!(
        again, made,
        "an existing alias is returned, nothing created"
    );
    assert_eq!(store.account_by_handle("other").unwrap(), None);
    // The same native identity in another namespace is another user.
    assert!(matches!(
        store.create_alias_account("xdr", "abc", &handles, 7),
        Err(StoreError::HandleTaken)
    ));
    assert_eq!(
        store.alias("xdr", "abc").unwrap(),
        None,
        "nothing half-made"
    );
    drop(store);
    store = open(dir.path());
    assert_eq!(store.alias("cchat", "abc").unwrap(), Some(made.id));
    assert_eq!(store.account(made.id).unwrap(), Some(made));
}

#[test]
fn room_history_pages_newest_first_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let (lobby, other) = (RoomId(1), RoomId(2));
    assert_eq!(store.room_last_seq(lobby).unwrap(), Seq(0));
    for n in 1..=5u64 {
        store
            .room_append(lobby, Seq(n), &event(n, format!("m{n}")))
            .unwrap();
    }
    store
        .room_append(other, Seq(1), &event(9, "elsewhere".into()))
        .unwrap();
    block_on(store.durable()).unwrap();
    drop(store);
    store = open(dir.path());
    assert_eq!(store.room_last_seq(lobby).unwrap(), Seq(5));
    assert_eq!(store.room_last_seq(other).unwrap(), Seq(1));
    let page: Vec<u64> = store
        .room_events_before(lobby, Seq(5), 2)
        .unwrap()
        .iter()
        .map(|d| d.seq.0)
        .collect();
    assert_eq!(page, vec![4, 3]);
    let all = store.room_events_before(lobby, Seq(u64::MAX), 100).unwrap();
    assert_eq!(all.len(), 5, "other rooms' history does not leak in");
    assert_eq!(all[0].event, event(5, "m5".into()));
}

#[test]
fn plugin_values_are_kept_per_plugin_paged_by_key_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    for n in 0..5u8 {
        store
            .put_plugin_value("p2p", &[b'c', n], Some(&[n, n]))
            .unwrap();
    }
    store
        .put_plugin_value("p2p", b"d", Some(b"other prefix"))
        .unwrap();
    store
        .put_plugin_value("xdr", b"c\x01", Some(b"xdr's"))
        .unwrap();
    block_on(store.durable()).unwrap();
    drop(store);
    store = open(dir.path());
    assert_eq!(
        store.plugin_value("p2p", b"c\x01").unwrap(),
        Some(vec![1, 1])
    );
    assert_eq!(
        store.plugin_value("xdr", b"c\x01").unwrap(),
        Some(b"xdr's".to_vec())
    );
    let keys = |after: Option<&[u8]>, limit| -> Vec<Vec<u8>> {
        store
            .plugin_values("p2p", b"c", after, limit)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(keys(None, 2), vec![b"c\x00".to_vec(), b"c\x01".to_vec()]);
    assert_eq!(keys(Some(b"c\x01"), 10).len(), 3, "after is exclusive");
    assert_eq!(keys(None, 100).len(), 5, "another prefix is not listed");
    store.put_plugin_value("p2p", b"c\x00", None).unwrap();
    assert_eq!(store.plugin_value("p2p", b"c\x00").unwrap(), None);
}

#[test]
fn appends_with_a_key_happen_once_per_stream_and_aliases_know_their_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let user = UserId(4);
    let first = event(10, "once".into());
    assert_eq!(
        store.append_once(user, Seq(1), &first, b"k1").unwrap(),
        Once::Stored
    );
    let again = event(11, "once again".into());
    assert_eq!(
        store.append_once(user, Seq(2), &again, b"k1").unwrap(),
        Once::Duplicate(Seq(1), EventId(10))
    );
    assert_eq!(
        store.last_seq(user).unwrap(),
        Seq(1),
        "nothing stored the second time"
    );
    // The same key in another stream or a room is another key.
    assert_eq!(
        store.append_once(UserId(5), Seq(1), &again, b"k1").unwrap(),
        Once::Stored
    );
    assert_eq!(
        store
            .room_append_once(RoomId(4), Seq(1), &again, b"k1")
            .unwrap(),
        Once::Stored
    );
    let made = store
        .create_alias_account("p2p", "10.0.0.1:8000", &["10.0.0.1:8000".to_owned()], 1)
        .unwrap();
    block_on(store.durable()).unwrap();
    drop(store);
    store = open(dir.path());
    assert_eq!(
        store.append_once(user, Seq(2), &again, b"k1").unwrap(),
        Once::Duplicate(Seq(1), EventId(10)),
        "keys survive a restart"
    );
    assert_eq!(
        store.alias_namespace(made.id).unwrap().as_deref(),
        Some("p2p")
    );
    assert_eq!(store.alias_namespace(UserId(4)).unwrap(), None);
}

#[test]
fn a_version_1_store_is_upgraded_in_place_and_its_events_read_as_records_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let old = event(3, "written by schema 1".into());
    {
        // What a hub of schema version 1 left: one event per record, keyed by its seq.
        let db = raw_sled(dir.path());
        let meta = db.open_tree("meta").unwrap();
        meta.insert("schema", &1u64.to_be_bytes()).unwrap();
        let events = db.open_tree("events").unwrap();
        for seq in 1..=2u64 {
            events
                .insert(super::codec::pair_key(7, seq), super::codec::encode(&old))
                .unwrap();
        }
        db.flush().unwrap();
    }
    let mut store = open(dir.path());
    let user = UserId(7);
    assert_eq!(store.last_seq(user).unwrap(), Seq(2));
    let more = [event(4, "four".into()), event(5, "five".into())];
    store.append(user, Seq(3), &[&more[0], &more[1]]).unwrap();
    block_on(store.durable()).unwrap();
    drop(store);
    store = open(dir.path());
    let seqs = |list: Vec<Delivery>| list.iter().map(|d| d.seq.0).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.events_after(user, Seq(0), Seq(9), 10).unwrap()),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        seqs(store.events_before(user, Seq(4), 10).unwrap()),
        vec![3, 2, 1]
    );
    assert_eq!(
        store.events_after(user, Seq(1), Seq(3), 10).unwrap()[0].event,
        old
    );
    drop(store);
    let db = raw_sled(dir.path());
    let schema = db
        .open_tree("meta")
        .unwrap()
        .get("schema")
        .unwrap()
        .unwrap();
    assert_eq!(
        schema.as_ref(),
        &2u64.to_be_bytes(),
        "the new version is recorded"
    );
}

/// The store's sled database opened directly, with the configuration `SledStore` uses.
fn raw_sled(dir: &std::path::Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .segment_size(8 * 1024 * 1024)
        .open()
        .unwrap()
}

/// Big events (P2P takes bodies up to 1 MiB) make leaves bigger than sled writes to its
/// log: such nodes go to blob files (fsynced by the vendored sled, `HUB-PATCH.md`),
/// and read back after a restart like any other.
#[test]
fn big_events_that_push_nodes_into_blob_files_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let user = UserId(3);
    let big = |n: u64| event(n, format!("{n}:{}", "b".repeat(300 * 1024)));
    for seq in 1..=24u64 {
        store.append(user, Seq(seq), &[&big(seq)]).unwrap();
        block_on(store.durable()).unwrap();
    }
    drop(store);
    let blobs = std::fs::read_dir(dir.path().join("blobs"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert!(
        blobs > 0,
        "no node went to a blob file: the test tests nothing"
    );
    store = open(dir.path());
    let all = store.events_after(user, Seq(0), Seq(99), 99).unwrap();
    assert_eq!(all.len(), 24);
    for (n, delivery) in (1..).zip(&all) {
        assert_eq!(delivery.seq, Seq(n));
        assert_eq!(delivery.event, big(n));
    }
}
