//! End to end: the cchat protocol against the real `hub` binary, with the independent
//! client (`hub_tests::cchat_client`, written from the spec, WIRE-FACTS and
//! docs/protocols/cchat.md, never from the plugin's code): group key negotiation in rooms
//! that grow and shrink, every error code, frame kinds, abrupt drops and bridging with
//! the JSON protocol.
//!
//! Randomised scenarios use a seeded SplitMix64 (seed printed; `CCHAT_TEST_SEED=<n>`
//! replays one).

use hub_tests::cchat_client::{
    base64_of, build_join, build_keyxchg_2, build_message, expected_message_1, parse_hex,
    random_bytes, sha1_hex, CchatClient, CchatError, ChatMessage, FrameKind, KeyAnswer, KeyXchg1,
    RFC2409_GROUP1_HEX, RFC3526_GROUP14_HEX,
};
use hub_tests::harness::{Hub, HubOptions};
use hub_tests::json_client::JsonClient;
use num_bigint::BigUint;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The bound on every wait (generous for a loaded 2-core machine; only reached on failure).
const T: Duration = Duration::from_secs(8);

// ----- helpers -----------------------------------------------------------------------------

fn hub(env: &[(&str, &str)]) -> Hub {
    let mut options = HubOptions::with(&["cchat", "json"]);
    for (k, v) in env {
        options = options.env(k, v);
    }
    Hub::start(options)
}

fn addr(hub: &Hub) -> SocketAddr {
    hub.addr("cchat", "main")
}

/// A deterministic RNG (SplitMix64) so that a failing scenario replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<X>(&mut self, v: &mut [X]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn seed(default: u64) -> u64 {
    std::env::var("CCHAT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Member {
    name: String,
    id: String,
    c: CchatClient,
}

/// Connects (frames of `kind`), sets the changesecret behaviour and joins `room`.
fn join_member(hub: &Hub, name: &str, room: &str, kind: FrameKind, honour: bool) -> Member {
    let c = CchatClient::connect_with(addr(hub), kind).unwrap();
    c.set_honour_changesecret(honour);
    let id = sha1_hex(name);
    c.join(&id, room)
        .unwrap_or_else(|e| panic!("{name} joining: {e}"));
    Member {
        name: name.to_owned(),
        id,
        c,
    }
}

fn member(hub: &Hub, name: &str, room: &str) -> Member {
    join_member(hub, name, room, FrameKind::Binary, false)
}

/// Joins `names` (binary frames) one by one, letting the room settle after each join.
fn grow(hub: &Hub, names: &[&str], room: &str) -> (Vec<Member>, BigUint) {
    let mut members: Vec<Member> = Vec::new();
    let mut key = None;
    for name in names {
        let mut before = key_counts(&members.iter().collect::<Vec<_>>());
        before.push(0);
        members.push(member(hub, name, room));
        key = Some(settle(&members.iter().collect::<Vec<_>>(), &before));
    }
    (members, key.expect("at least one member"))
}

fn key_counts(members: &[&Member]) -> Vec<usize> {
    members.iter().map(|m| m.c.key_count()).collect()
}

/// Waits until every member is settled with a key newer than `before[i]`, then asserts
/// that they all hold the same key; returns it.
fn settle(members: &[&Member], before: &[usize]) -> BigUint {
    assert_eq!(members.len(), before.len());
    for (m, &b) in members.iter().zip(before) {
        m.c.wait_settled_since(b, T)
            .unwrap_or_else(|e| panic!("{} settling: {e}", m.name));
    }
    let key = members[0].c.key().expect("a settled member has a key");
    for m in members {
        assert_eq!(
            m.c.key().as_ref(),
            Some(&key),
            "{} holds the same key as {}",
            m.name,
            members[0].name
        );
        assert!(m.c.negotiation_finished(), "{} still settled", m.name);
    }
    key
}

/// No anomaly (deviation from the documented wire profile) and no error but `0x0`.
fn assert_clean(members: &[&Member]) {
    for m in members {
        assert_eq!(
            m.c.anomalies(),
            Vec::<String>::new(),
            "{}: anomalies",
            m.name
        );
        assert_eq!(
            m.c.unexpected_errors(),
            Vec::new(),
            "{}: unexpected errors",
            m.name
        );
    }
}

fn round_of(m: &ChatMessage) -> Option<u64> {
    m.raw.get("round").and_then(Value::as_u64)
}

/// One message from a random member with extra fields (reaches everyone, sender included,
/// unchanged), then several members sending concurrently (everyone sees one order).
fn traffic(members: &[&Member], rng: &mut Rng, round: &mut u64) {
    let errors_before: Vec<usize> = members.iter().map(|m| m.c.errors().len()).collect();
    *round += 1;
    let r = *round;
    let s = rng.below(members.len());
    let len = 1 + rng.below(64);
    let content = rng.bytes(len);
    let extra = json!({
        "round": r,
        "from": members[s].name,
        "nonce": hex(&rng.bytes(12)),
        "meta": {"list": [1, "two", null, true], "nested": {"x": -7}},
    });
    let sent = members[s].c.send_message(&content, extra).unwrap();
    let want = expected_message_1(&sent);
    for m in members {
        let got =
            m.c.wait_message(|msg| round_of(msg) == Some(r), T)
                .unwrap_or_else(|e| panic!("{} waiting for round {r}: {e}", m.name));
        assert_eq!(
            got.raw, want,
            "{} got the message with its extra fields",
            m.name
        );
        assert_eq!(got.content.as_deref(), Some(&content[..]));
    }

    *round += 1;
    let r = *round;
    let mut senders: Vec<usize> = (0..members.len()).collect();
    rng.shuffle(&mut senders);
    senders.truncate(members.len().min(3));
    let per_sender = 3;
    let contents: Vec<Vec<Vec<u8>>> = senders
        .iter()
        .map(|_| {
            (0..per_sender)
                .map(|_| {
                    let len = 1 + rng.below(40);
                    rng.bytes(len)
                })
                .collect()
        })
        .collect();
    std::thread::scope(|scope| {
        for (&i, mine) in senders.iter().zip(&contents) {
            let m = members[i];
            scope.spawn(move || {
                for (j, content) in mine.iter().enumerate() {
                    m.c.send_message(content, json!({"round": r, "from": m.name, "j": j}))
                        .unwrap();
                }
            });
        }
    });
    let total = senders.len() * per_sender;
    let orders: Vec<Vec<Value>> = members
        .iter()
        .map(|m| {
            m.c.wait_messages(|msg| round_of(msg) == Some(r), total, T)
                .unwrap_or_else(|e| panic!("{} waiting for round {r}: {e}", m.name))
                .into_iter()
                .map(|msg| msg.raw)
                .collect()
        })
        .collect();
    for (m, order) in members.iter().zip(&orders) {
        assert_eq!(
            order, &orders[0],
            "{} sees the same order as {}",
            m.name, members[0].name
        );
    }
    let mut seen: Vec<(String, u64, Value)> = orders[0]
        .iter()
        .map(|v| {
            (
                v["from"].as_str().unwrap().to_owned(),
                v["j"].as_u64().unwrap(),
                v["content"].clone(),
            )
        })
        .collect();
    seen.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut expected: Vec<(String, u64, Value)> = senders
        .iter()
        .zip(&contents)
        .flat_map(|(&i, mine)| {
            mine.iter()
                .enumerate()
                .map(move |(j, c)| (members[i].name.clone(), j as u64, json!(base64_of(c))))
        })
        .collect();
    expected.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(seen, expected, "every concurrent message arrived once");
    for (m, &n) in members.iter().zip(&errors_before) {
        assert_eq!(
            m.c.errors()[n..],
            [],
            "{}: errors during the traffic",
            m.name
        );
        assert_eq!(
            m.c.anomalies(),
            Vec::<String>::new(),
            "{}: anomalies",
            m.name
        );
    }
}

/// (roundleft, keyintrmdt, changesecret) of keyxchg_1 messages.
fn shapes(kx: &[KeyXchg1]) -> Vec<(u64, String, Option<bool>)> {
    kx.iter()
        .map(|k| (k.roundleft, k.keyintrmdt.clone(), k.changesecret))
        .collect()
}

/// The intermediate of the last `keyxchg_2` with roundleft > 0 that the member wrote.
fn last_answer(m: &Member) -> String {
    m.c.sent_keyxchg_2()
        .iter()
        .rev()
        .find(|v| v["roundleft"].as_u64() != Some(0))
        .and_then(|v| v["keyintrmdt"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{} answered no roundleft > 0 step", m.name))
}

fn g14() -> BigUint {
    parse_hex(RFC3526_GROUP14_HEX).unwrap()
}

// ----- key negotiation ---------------------------------------------------------------------

#[test]
fn join_and_leave_follow_the_documented_orchestration_on_the_default_2048_bit_prime() {
    let hub = hub(&[]);
    let room = sha1_hex("orchestration");
    let a = member(&hub, "orch-a", &room);

    // First member: keyxchg_0 (RFC 3526 group 14), keyxchg_1 {0, "02", true}, then 0x0.
    let log = a.c.log();
    assert_eq!(a.c.received_types(), ["keyxchg_0", "keyxchg_1", "error"]);
    let number = log[0].raw["number"].as_str().unwrap();
    assert_eq!(number.len(), 512);
    assert!(number.starts_with("ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd1"));
    assert!(number.ends_with("15728e5a8aacaa68ffffffffffffffff"));
    assert_eq!(number, RFC3526_GROUP14_HEX);
    assert_eq!(
        log[0].raw,
        json!({"ver": 1, "type": "keyxchg_0", "number": RFC3526_GROUP14_HEX})
    );
    assert_eq!(
        log[1].raw,
        json!({"ver": 1, "type": "keyxchg_1", "roundleft": 0, "keyintrmdt": "02",
               "prime": RFC3526_GROUP14_HEX, "changesecret": true})
    );
    assert_eq!(log[2].raw["errcode"], "0x0");
    assert_eq!(log[2].raw["ver"], 1);
    let k_a = a.c.wait_settled(T).unwrap();
    assert_eq!(a.c.prime(), Some(g14()));
    assert_eq!(a.c.sent_keyxchg_2(), [build_keyxchg_2(0, "")]);

    // B joins: B gets {1, "02", true}, A (the existing member) {1, "02", false}; each
    // one's answer is relayed unchanged to the other as {0, answer}.
    let b = member(&hub, "orch-b", &room);
    let b_types = b.c.received_types();
    assert_eq!(&b_types[..2], ["keyxchg_0", "keyxchg_1"]);
    let k_ab = settle(&[&a, &b], &[1, 0]);
    assert_ne!(k_ab, k_a);
    let b_kx = b.c.keyxchgs();
    let a_kx = a.c.keyxchgs()[1..].to_vec();
    assert_eq!(
        shapes(&b_kx),
        [
            (1, "02".into(), Some(true)),
            (0, last_answer(&a), b_kx[1].changesecret)
        ],
        "the newcomer: its part first, then the existing member's g^K"
    );
    assert_eq!(
        shapes(&a_kx),
        [
            (1, "02".into(), Some(false)),
            (0, last_answer(&b), a_kx[1].changesecret)
        ],
        "the existing member: asked for g^K, then the newcomer's g^xN"
    );
    let ack = b_types.iter().position(|t| t == "error").expect("join ack");
    assert!(
        ack >= 2,
        "the join ack follows the first keyxchg_1: {b_types:?}"
    );

    // C joins: C {1,"02",true} then {0, A's g^K}; A {1,"02",false} then {0, C's g^xC};
    // B only {0, C's g^xC}.
    let (na, nb) = (a.c.keyxchg_count(), b.c.keyxchg_count());
    let c = member(&hub, "orch-c", &room);
    let k_abc = settle(&[&a, &b, &c], &[2, 1, 0]);
    assert_ne!(k_abc, k_ab);
    let c_kx = c.c.keyxchgs();
    let a_kx = a.c.keyxchgs()[na..].to_vec();
    let b_kx = b.c.keyxchgs()[nb..].to_vec();
    assert_eq!(
        shapes(&c_kx),
        [
            (1, "02".into(), Some(true)),
            (0, last_answer(&a), c_kx[1].changesecret)
        ]
    );
    assert_eq!(
        shapes(&a_kx),
        [
            (1, "02".into(), Some(false)),
            (0, last_answer(&c), a_kx[1].changesecret)
        ]
    );
    assert_eq!(shapes(&b_kx), [(0, last_answer(&c), b_kx[0].changesecret)]);

    // A (the longest present) leaves: F = B gets {1,"02",true}, E = C {1,"02",false};
    // C gets {0, B's answer}, B {0, C's answer}.
    let (nb, nc) = (b.c.keyxchg_count(), c.c.keyxchg_count());
    let before = key_counts(&[&b, &c]);
    let close = a.c.leave().unwrap();
    assert_eq!(
        close.map(|(code, _)| code),
        Some(1000),
        "leave closes with 1000"
    );
    let k_bc = settle(&[&b, &c], &before);
    assert_ne!(k_bc, k_abc);
    let b_kx = b.c.keyxchgs()[nb..].to_vec();
    let c_kx = c.c.keyxchgs()[nc..].to_vec();
    assert_eq!(
        shapes(&b_kx),
        [
            (1, "02".into(), Some(true)),
            (0, last_answer(&c), b_kx[1].changesecret)
        ]
    );
    assert_eq!(
        shapes(&c_kx),
        [
            (1, "02".into(), Some(false)),
            (0, last_answer(&b), c_kx[1].changesecret)
        ]
    );

    // B leaves: C alone gets {0, "02", true}; ignoring changesecret, its key is 2^K.
    let nc = c.c.keyxchg_count();
    let before = key_counts(&[&c]);
    assert_eq!(b.c.leave().unwrap().map(|(code, _)| code), Some(1000));
    let k_c = settle(&[&c], &before);
    assert_eq!(
        shapes(&c.c.keyxchgs()[nc..]),
        [(0, "02".to_string(), Some(true))]
    );
    assert_eq!(k_c, BigUint::from(2u32).modpow(&k_bc, &g14()));
    let mut rng = Rng(1);
    traffic(&[&c], &mut rng, &mut 0);
    assert_clean(&[&a, &b, &c]);
}

/// Members join one by one and leave in a random order; after every change everyone
/// settles on one new key and messages flow.
fn grow_and_shrink(hub: &Hub, n: usize, prime: &BigUint, default_seed: u64) {
    let seed = seed(default_seed);
    eprintln!("room of {n}: seed {seed} (CCHAT_TEST_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let room = sha1_hex(&format!("room-{n}-{seed}"));
    let mut members: Vec<Member> = Vec::new();
    let mut last: Option<BigUint> = None;
    let mut round = 0u64;
    for i in 0..n {
        let mut before = key_counts(&members.iter().collect::<Vec<_>>());
        before.push(0);
        let kind = if rng.below(2) == 0 {
            FrameKind::Text
        } else {
            FrameKind::Binary
        };
        let honour = rng.below(3) == 0;
        let m = join_member(hub, &format!("m{i}-{n}-{seed}"), &room, kind, honour);
        assert_eq!(
            m.c.prime().as_ref(),
            Some(prime),
            "keyxchg_0 carries the prime"
        );
        members.push(m);
        let all: Vec<&Member> = members.iter().collect();
        let key = settle(&all, &before);
        assert_ne!(
            Some(&key),
            last.as_ref(),
            "the key changed when m{i} joined"
        );
        traffic(&all, &mut rng, &mut round);
        last = Some(key);
    }
    let mut order: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    rng.shuffle(&mut order);
    for name in order {
        let pos = members.iter().position(|m| m.name == name).unwrap();
        let leaver = members.remove(pos);
        let all: Vec<&Member> = members.iter().collect();
        let before = key_counts(&all);
        let close = leaver
            .c
            .leave()
            .unwrap_or_else(|e| panic!("{name} leaving: {e}"));
        assert_eq!(
            close.map(|(code, _)| code),
            Some(1000),
            "{name}: leave closes with 1000"
        );
        assert_clean(&[&leaver]);
        if all.is_empty() {
            break;
        }
        let key = settle(&all, &before);
        assert_ne!(
            Some(&key),
            last.as_ref(),
            "the key changed when {name} left"
        );
        traffic(&all, &mut rng, &mut round);
        last = Some(key);
    }
}

#[test]
fn room_of_2_grows_and_shrinks_with_a_common_new_key_after_every_change() {
    let hub = hub(&[]);
    grow_and_shrink(&hub, 2, &g14(), 0x2c4a_7001);
}

#[test]
fn room_of_3_grows_and_shrinks_with_a_common_new_key_after_every_change() {
    let hub = hub(&[]);
    grow_and_shrink(&hub, 3, &g14(), 0x3c4a_7002);
}

#[test]
fn room_of_8_grows_and_shrinks_on_a_configured_768_bit_prime() {
    let hub = hub(&[("HUB__PLUGINS__CCHAT__PRIME_HEX", RFC2409_GROUP1_HEX)]);
    grow_and_shrink(
        &hub,
        8,
        &parse_hex(RFC2409_GROUP1_HEX).unwrap(),
        0x8c4a_7003,
    );
}

#[test]
fn two_rooms_keep_their_messages_and_negotiations_apart() {
    let hub = hub(&[]);
    let (r1, r2) = (sha1_hex("apart-1"), sha1_hex("apart-2"));
    let a = member(&hub, "apart-a", &r1);
    let b = member(&hub, "apart-b", &r1);
    let k1 = settle(&[&a, &b], &[1, 0]);
    let c = member(&hub, "apart-c", &r2);
    let d = member(&hub, "apart-d", &r2);
    let k2 = settle(&[&c, &d], &[1, 0]);
    assert_ne!(k1, k2);
    let (kx_c, kx_d) = (c.c.keyxchg_count(), d.c.keyxchg_count());

    // A join in room 1 renegotiates room 1 only.
    let e = member(&hub, "apart-e", &r1);
    let k1b = settle(&[&a, &b, &e], &[2, 1, 0]);
    assert_ne!(k1b, k1);
    // Messages in both rooms; each reaches its own room only.
    let m1 = a.c.send_message(b"in room 1", json!({"room": 1})).unwrap();
    let m2 = c.c.send_message(b"in room 2", json!({"room": 2})).unwrap();
    for m in [&a, &b, &e] {
        assert_eq!(
            m.c.wait_message(|x| x.raw["room"] == 1, T).unwrap().raw,
            expected_message_1(&m1)
        );
    }
    for m in [&c, &d] {
        assert_eq!(
            m.c.wait_message(|x| x.raw["room"] == 2, T).unwrap().raw,
            expected_message_1(&m2)
        );
    }
    // A leave in room 2 renegotiates room 2 only.
    let before = key_counts(&[&c]);
    let (kx_a, kx_b, kx_e) = (
        a.c.keyxchg_count(),
        b.c.keyxchg_count(),
        e.c.keyxchg_count(),
    );
    assert_eq!(d.c.leave().unwrap().map(|x| x.0), Some(1000));
    let k2b = settle(&[&c], &before);
    assert_ne!(k2b, k2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.c.keyxchg_count(),
        kx_c + 1,
        "room 2 saw only its own leave"
    );
    assert_eq!(
        d.c.keyxchg_count(),
        kx_d,
        "room 2 saw nothing of room 1's join"
    );
    assert_eq!(
        (
            a.c.keyxchg_count(),
            b.c.keyxchg_count(),
            e.c.keyxchg_count()
        ),
        (kx_a, kx_b, kx_e),
        "room 1 saw nothing of room 2's leave"
    );
    assert_eq!(
        (a.c.key(), b.c.key(), e.c.key()),
        (Some(k1b.clone()), Some(k1b.clone()), Some(k1b))
    );
    for m in [&a, &b, &e] {
        assert!(
            m.c.messages().iter().all(|x| x.raw["room"] == 1),
            "{}",
            m.name
        );
    }
    for m in [&c, &d] {
        assert!(
            m.c.messages().iter().all(|x| x.raw["room"] == 2),
            "{}",
            m.name
        );
    }
    assert_clean(&[&a, &b, &c, &d, &e]);
}

#[test]
fn an_abrupt_drop_makes_the_rest_renegotiate() {
    let hub = hub(&[]);
    let room = sha1_hex("drops");
    let mut rng = Rng(seed(0xd209));
    let mut round = 0;
    let (members, k4) = grow(&hub, &["drop-a", "drop-b", "drop-c", "drop-d"], &room);
    let [a, b, c, d] = <[Member; 4]>::try_from(members).ok().unwrap();
    // The longest present member drops (the roles F and E move on), then a middle one.
    let before = key_counts(&[&b, &c, &d]);
    a.c.drop_abruptly();
    let k3 = settle(&[&b, &c, &d], &before);
    assert_ne!(k3, k4);
    traffic(&[&b, &c, &d], &mut rng, &mut round);
    let before = key_counts(&[&b, &d]);
    c.c.drop_abruptly();
    let k2 = settle(&[&b, &d], &before);
    assert_ne!(k2, k3);
    traffic(&[&b, &d], &mut rng, &mut round);
    assert_clean(&[&a, &b, &c, &d]);
}

// ----- error codes -------------------------------------------------------------------------

#[test]
fn a_duplicate_client_id_in_a_room_gets_0x4_and_close_but_another_room_is_fine() {
    let hub = hub(&[]);
    let room = sha1_hex("dup");
    let id = sha1_hex("dup-client");
    // Ids and rooms are compared in lower case: join with upper-case hex first.
    let a = CchatClient::connect(addr(&hub)).unwrap();
    a.join(&id.to_uppercase(), &room).unwrap();
    let a = Member {
        name: "dup-a".into(),
        id: id.clone(),
        c: a,
    };
    a.c.wait_settled(T).unwrap();
    let kx_a = a.c.keyxchg_count();

    let b = CchatClient::connect(addr(&hub)).unwrap();
    match b.join(&id, &room) {
        Err(CchatError::Server(e)) => assert_eq!(e.code, "0x4", "{e:?}"),
        other => panic!("a duplicate id must get 0x4, got {other:?}"),
    }
    assert_eq!(b.wait_closed(T).unwrap().map(|x| x.0), Some(1008));
    assert_eq!(b.anomalies(), Vec::<String>::new());
    assert_eq!(b.keyxchg_count(), 0, "a refused join gets no key exchange");

    // The same id in another room, on another connection: allowed (checked per room).
    let c = CchatClient::connect(addr(&hub)).unwrap();
    c.join(&id, &sha1_hex("dup-other-room")).unwrap();
    c.wait_settled(T).unwrap();

    // The refused duplicate never was a member: A's negotiation did not move.
    assert_eq!(
        a.c.keyxchg_count(),
        kx_a,
        "the refused duplicate changed nothing"
    );
    assert!(a.c.negotiation_finished());

    // The room in upper case is the same room: A renegotiates with D.
    let before = key_counts(&[&a]);
    let d = CchatClient::connect(addr(&hub)).unwrap();
    d.join(&sha1_hex("dup-d"), &room.to_uppercase()).unwrap();
    let d = Member {
        name: "dup-d".into(),
        id: sha1_hex("dup-d"),
        c: d,
    };
    settle(&[&a, &d], &[before[0], 0]);
    let mut rng = Rng(seed(0xd0b));
    traffic(&[&a, &d], &mut rng, &mut 0);
    assert_clean(&[&a, &d]);
    assert_eq!(c.unexpected_errors(), Vec::new());
}

#[test]
fn requests_before_join_get_0x5_and_the_connection_stays_usable() {
    let hub = hub(&[]);
    let c = CchatClient::connect(addr(&hub)).unwrap();
    c.send_message(b"too early", json!({})).unwrap();
    c.wait_error("0x5", T).unwrap();
    c.send_json(&build_keyxchg_2(1, "02")).unwrap();
    c.wait_error("0x5", T).unwrap();
    c.send_json(&json!({"ver": 1, "type": "leave"})).unwrap();
    c.wait_error("0x5", T).unwrap();
    assert_eq!(c.close_info(), None, "0x5 does not close");
    let m = Member {
        name: "early".into(),
        id: sha1_hex("early"),
        c,
    };
    m.c.join(&m.id, &sha1_hex("early-room")).unwrap();
    settle(&[&m], &[0]);
    traffic(&[&m], &mut Rng(5), &mut 0);
    assert_eq!(m.c.errors().len(), 4, "three 0x5 and the join ack");
    assert_eq!(m.c.anomalies(), Vec::<String>::new());
}

#[test]
fn unknown_types_get_0x8_before_and_after_join() {
    let hub = hub(&[]);
    let m = Member {
        name: "types".into(),
        id: sha1_hex("types"),
        c: CchatClient::connect(addr(&hub)).unwrap(),
    };
    m.c.send_json(&json!({"ver": 1, "type": "hello"})).unwrap();
    m.c.wait_error("0x8", T).unwrap();
    m.c.join(&m.id, &sha1_hex("types-room")).unwrap();
    m.c.wait_settled(T).unwrap();
    for ty in ["hello", "message_1", "keyxchg_0", "keyxchg_1", "error"] {
        m.c.send_json(&json!({"ver": 1, "type": ty, "content": "aGk="}))
            .unwrap();
        m.c.wait_error("0x8", T)
            .unwrap_or_else(|e| panic!("type {ty:?}: {e}"));
    }
    assert_eq!(m.c.close_info(), None, "0x8 does not close");
    assert!(
        m.c.messages().is_empty(),
        "a client's message_1 is not relayed"
    );
    traffic(&[&m], &mut Rng(8), &mut 0);
    assert_eq!(
        m.c.errors().len(),
        7,
        "one 0x8 per unknown type, and the join ack"
    );
    assert_eq!(m.c.anomalies(), Vec::<String>::new());
}

#[test]
fn malformed_input_gets_0x9_and_the_connection_stays_usable() {
    let hub = hub(&[]);
    let room = sha1_hex("malformed");
    // Before join: bad joins.
    let c = CchatClient::connect(addr(&hub)).unwrap();
    let good = sha1_hex("malformed-client");
    let bad_joins = [
        json!({"ver": 1, "type": "join", "clientid": "xyz", "chatroom": room}),
        json!({"ver": 1, "type": "join", "clientid": &good[..39], "chatroom": room}),
        json!({"ver": 1, "type": "join", "clientid": format!("{good}0"), "chatroom": room}),
        json!({"ver": 1, "type": "join", "clientid": format!("0x{}", &good[..38]), "chatroom": room}),
        json!({"ver": 1, "type": "join", "clientid": good, "chatroom": format!("{}g", &room[..39])}),
        json!({"ver": 1, "type": "join", "clientid": good}),
        json!({"ver": 1, "type": "join", "chatroom": room}),
        json!({"ver": 1, "type": "join", "clientid": 12345, "chatroom": room}),
    ];
    for bad in &bad_joins {
        c.send_json(bad).unwrap();
        c.wait_error("0x9", T)
            .unwrap_or_else(|e| panic!("{bad}: {e}"));
    }
    let m = Member {
        name: "malformed".into(),
        id: good.clone(),
        c,
    };
    m.c.join(&m.id, &room).unwrap();
    m.c.wait_settled(T).unwrap();

    // After join: not JSON, not objects, missing or mistyped fields, a second join, a
    // keyxchg_2 that answers nothing.
    let raw = [
        "{",
        "not json at all",
        "[1,2]",
        "\"a string\"",
        "42",
        r#"{"ver":1}"#,
        r#"{"ver":1,"type":7}"#,
        r#"{"ver":1,"type":"message_0"}"#,
        r#"{"ver":1,"type":"message_0","content":5}"#,
    ];
    for text in raw {
        m.c.send_raw_text(text).unwrap();
        m.c.wait_error("0x9", T)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    m.c.send_raw_binary(b"\xff\xfe not utf-8").unwrap();
    m.c.wait_error("0x9", T).unwrap();
    m.c.send_json(&build_join(&m.id, &room)).unwrap();
    m.c.wait_error("0x9", T).unwrap();
    m.c.send_json(&build_keyxchg_2(1, "02")).unwrap();
    m.c.wait_error("0x9", T).unwrap();
    assert_eq!(m.c.close_info(), None, "0x9 does not close");
    // Still a settled member: messages flow, no renegotiation was started by any of it.
    assert!(m.c.negotiation_finished());
    traffic(&[&m], &mut Rng(9), &mut 0);
    let nines = m.c.errors().iter().filter(|e| e.code == "0x9").count();
    assert_eq!(
        nines,
        bad_joins.len() + raw.len() + 3,
        "one 0x9 per bad message"
    );
    assert_eq!(m.c.anomalies(), Vec::<String>::new());
}

#[test]
fn a_wrong_ver_gets_0xa_and_the_string_1_is_accepted() {
    let hub = hub(&[]);
    let room = sha1_hex("ver");
    let c = CchatClient::connect_with(addr(&hub), FrameKind::Text).unwrap();
    let id = sha1_hex("ver-client");
    for ver in [json!(2), json!("2"), json!(0), json!("one")] {
        c.send_json(&json!({"ver": ver, "type": "join", "clientid": id, "chatroom": room}))
            .unwrap();
        c.wait_error("0xa", T)
            .unwrap_or_else(|e| panic!("ver {ver}: {e}"));
    }
    // A missing ver is malformed (the doc: 0x9), not an unsupported version.
    c.send_json(&json!({"type": "join", "clientid": id, "chatroom": room}))
        .unwrap();
    c.wait_error("0x9", T).unwrap();
    assert!(
        !c.errors().iter().skip(4).any(|e| e.code == "0xa"),
        "a missing ver is not answered 0xa"
    );
    assert_eq!(c.close_info(), None, "0xa and 0x9 do not close");

    // "ver": "1" is accepted, in join and message_0; the relay says ver 1.
    c.send_json(&json!({"ver": "1", "type": "join", "clientid": id, "chatroom": room}))
        .unwrap();
    c.wait_error("0x0", T).unwrap();
    c.wait_settled(T).unwrap();
    let mut msg = build_message(b"string ver", json!({"tag": "v"})).unwrap();
    msg["ver"] = json!("1");
    c.send_json(&msg).unwrap();
    let got = c.wait_message(|m| m.raw["tag"] == "v", T).unwrap();
    assert_eq!(got.raw, expected_message_1(&msg));
    assert_eq!(got.raw["ver"], json!(1));
    assert_eq!(c.anomalies(), Vec::<String>::new());
}

#[test]
fn messages_during_an_unfinished_negotiation_get_0x10_and_are_dropped() {
    let hub = hub(&[]);
    // A first member that has not answered its keyxchg_1 yet.
    let room = sha1_hex("unfinished");
    let a = CchatClient::connect(addr(&hub)).unwrap();
    a.set_key_answer(KeyAnswer::Silent);
    a.join(&sha1_hex("unfinished-a"), &room).unwrap();
    a.wait_keyxchg(1, T).unwrap();
    assert!(!a.negotiation_finished());
    a.send_message(b"dropped", json!({"drop": true})).unwrap();
    a.wait_error("0x10", T).unwrap();
    a.set_key_answer(KeyAnswer::Answer);
    let a = Member {
        name: "unfinished-a".into(),
        id: sha1_hex("unfinished-a"),
        c: a,
    };
    settle(&[&a], &[0]);

    // A second member that stops answering: it and the existing member (asked for g^K,
    // waiting for the newcomer's contribution) both get 0x10.
    let b = CchatClient::connect_with(addr(&hub), FrameKind::Text).unwrap();
    b.set_key_answer(KeyAnswer::Silent);
    let kx_a = a.c.keyxchg_count();
    let before = key_counts(&[&a]);
    b.join(&sha1_hex("unfinished-b"), &room).unwrap();
    b.wait_keyxchg(1, T).unwrap();
    b.send_message(b"dropped", json!({"drop": true})).unwrap();
    b.wait_error("0x10", T).unwrap();
    let asked = a.c.wait_keyxchg(kx_a + 1, T).unwrap();
    assert_eq!(
        asked.roundleft, 1,
        "the existing member is asked for its part first"
    );
    assert!(!a.c.negotiation_finished());
    a.c.send_message(b"dropped", json!({"drop": true})).unwrap();
    a.c.wait_error("0x10", T).unwrap();

    // Once B answers, both settle; nothing dropped was ever relayed.
    b.set_key_answer(KeyAnswer::Answer);
    let b = Member {
        name: "unfinished-b".into(),
        id: sha1_hex("unfinished-b"),
        c: b,
    };
    settle(&[&a, &b], &[before[0], 0]);
    let sent = b.c.send_message(b"now", json!({"drop": false})).unwrap();
    for m in [&a, &b] {
        let got = m.c.wait_message(|x| x.raw["drop"] == false, T).unwrap();
        assert_eq!(got.raw, expected_message_1(&sent));
        assert!(
            m.c.messages().iter().all(|x| x.raw["drop"] == false),
            "{}",
            m.name
        );
    }
    for m in [&a, &b] {
        let codes: Vec<String> =
            m.c.unexpected_errors()
                .into_iter()
                .map(|e| e.code)
                .collect();
        assert!(codes.iter().all(|c| c == "0x10"), "{}: {codes:?}", m.name);
        assert_eq!(m.c.anomalies(), Vec::<String>::new());
    }
    assert_eq!(a.c.unexpected_errors().len(), 2);
}

#[test]
fn no_join_within_the_join_timeout_gets_0x7_and_close() {
    let hub = hub(&[("HUB__PLUGINS__CCHAT__JOIN_TIMEOUT_SECS", "1")]);
    let started = Instant::now();
    let idle = CchatClient::connect(addr(&hub)).unwrap();
    let joined = member(&hub, "in-time", &sha1_hex("join-timeout"));
    let e = idle.wait_error("0x7", T).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    assert_eq!(idle.wait_closed(T).unwrap().map(|x| x.0), Some(1008));
    // It had sent nothing: the hub's message is a text frame.
    let log = idle.log();
    let entry = log.iter().find(|r| r.raw == e.raw).unwrap();
    assert_eq!(entry.kind, FrameKind::Text);
    assert_eq!(idle.anomalies(), Vec::<String>::new());
    // A member that joined in time is not affected.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(joined.c.close_info(), None);
    joined.c.wait_settled(T).unwrap();
    traffic(&[&joined], &mut Rng(7), &mut 0);
}

#[test]
fn a_member_that_stops_answering_is_kicked_with_0x6_and_the_rest_settle() {
    let hub = hub(&[("HUB__ROOMS__KEY_TIMEOUT_SECS", "1")]);
    let room = sha1_hex("kick");
    let a = member(&hub, "kick-a", &room);
    let b = member(&hub, "kick-b", &room);
    let k_ab = settle(&[&a, &b], &[1, 0]);
    let before = key_counts(&[&a, &b]);

    let c = CchatClient::connect(addr(&hub)).unwrap();
    c.set_key_answer(KeyAnswer::Silent);
    let started = Instant::now();
    c.join(&sha1_hex("kick-c"), &room).unwrap();
    // D joins while C stalls the negotiation: its join waits for it (at most the timeout).
    let d = CchatClient::connect(addr(&hub)).unwrap();
    d.join_within(&sha1_hex("kick-d"), &room, T).unwrap();
    let d = Member {
        name: "kick-d".into(),
        id: sha1_hex("kick-d"),
        c: d,
    };
    c.wait_error("0x6", T).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the key timeout"
    );
    assert_eq!(c.wait_closed(T).unwrap().map(|x| x.0), Some(1008));
    assert_eq!(c.anomalies(), Vec::<String>::new());

    let key = settle(&[&a, &b, &d], &[before[0], before[1], 0]);
    assert_ne!(key, k_ab);
    traffic(&[&a, &b, &d], &mut Rng(seed(0x6)), &mut 0);
    assert!(c.messages().is_empty());
}

#[test]
fn bogus_intermediates_get_0x6_and_are_never_relayed() {
    let hub = hub(&[]);
    let room = sha1_hex("bogus");
    let a = member(&hub, "bogus-a", &room);
    a.c.wait_settled(T).unwrap();
    let p = g14();
    let mut last = a.c.key().unwrap();
    for (i, mode) in [
        KeyAnswer::Bogus("01".into()),
        KeyAnswer::Bogus("00".into()),
        KeyAnswer::Bogus("zz".into()),
        KeyAnswer::Bogus("0x02".into()),
        KeyAnswer::BogusPrimeMinus(1),
        KeyAnswer::BogusPrimeMinus(0),
    ]
    .into_iter()
    .enumerate()
    {
        let before = key_counts(&[&a]);
        let b = CchatClient::connect(addr(&hub)).unwrap();
        b.set_key_answer(mode.clone());
        // The 0x6 may come before or after the join acknowledgement: no join helper.
        b.send_json(&build_join(&sha1_hex(&format!("bogus-b{i}")), &room))
            .unwrap();
        b.wait_error("0x6", T)
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(
            b.wait_closed(T).unwrap().map(|x| x.0),
            Some(1008),
            "{mode:?}"
        );
        assert_eq!(b.anomalies(), Vec::<String>::new());
        let key = settle(&[&a], &before);
        assert_ne!(key, last, "{mode:?}: A renegotiated");
        last = key;
    }
    // Every intermediate relayed to A passed the range check 1 < v < P - 1.
    let one = BigUint::from(1u32);
    for kx in a.c.keyxchgs() {
        let v = parse_hex(&kx.keyintrmdt).unwrap();
        assert!(v > one && v < (&p - &one), "relayed {}", kx.keyintrmdt);
    }
    traffic(&[&a], &mut Rng(0xb09), &mut 0);
}

#[test]
fn an_oversized_message_gets_0x9_and_close_1009() {
    let hub = hub(&[]);
    let a = member(&hub, "big-a", &sha1_hex("big"));
    a.c.wait_settled(T).unwrap();
    // Under the 65 536-byte limit: relayed.
    let content = random_bytes(45_000);
    let sent =
        a.c.send_message(&content, json!({"size": "large"}))
            .unwrap();
    assert!(sent.to_string().len() < 65_536);
    let got = a.c.wait_message(|m| m.raw["size"] == "large", T).unwrap();
    assert_eq!(got.content.as_deref(), Some(&content[..]));
    // Over it: error 0x9, then close 1009.
    let content = random_bytes(52_000);
    let msg = build_message(&content, Value::Null).unwrap();
    assert!(msg.to_string().len() > 65_536);
    let _ = a.c.send_json(&msg);
    a.c.wait_error("0x9", T).unwrap();
    assert_eq!(a.c.wait_closed(T).unwrap().map(|x| x.0), Some(1009));
    assert_eq!(a.c.anomalies(), Vec::<String>::new());
}

// ----- transport ---------------------------------------------------------------------------

#[test]
fn text_and_binary_frames_are_both_accepted_and_answered_in_kind() {
    let hub = hub(&[]);
    let room = sha1_hex("frames");
    let t = join_member(&hub, "frames-text", &room, FrameKind::Text, false);
    t.c.wait_settled(T).unwrap();
    let b = join_member(&hub, "frames-binary", &room, FrameKind::Binary, false);
    settle(&[&t, &b], &[1, 0]);
    // Any request path is accepted.
    let p = CchatClient::connect_path(addr(&hub), FrameKind::Text, "/some/path?x=1").unwrap();
    p.join(&sha1_hex("frames-path"), &room).unwrap();
    let p = Member {
        name: "frames-path".into(),
        id: sha1_hex("frames-path"),
        c: p,
    };
    settle(&[&t, &b, &p], &[2, 1, 0]);
    traffic(&[&t, &b, &p], &mut Rng(0xf4), &mut 0);
    assert!(t.c.log().iter().all(|r| r.kind == FrameKind::Text));
    assert!(b.c.log().iter().all(|r| r.kind == FrameKind::Binary));
    assert!(t.c.sent().iter().all(|s| s.kind == FrameKind::Text));
    assert!(b.c.sent().iter().all(|s| s.kind == FrameKind::Binary));
    assert_clean(&[&t, &b, &p]);

    // One client switching kinds: each reply comes in the kind of the request.
    let n = t.c.log().len();
    t.c.send_json_as(&json!({"ver": 1, "type": "nope"}), FrameKind::Binary)
        .unwrap();
    t.c.wait_error("0x8", T).unwrap();
    let reply = t.c.log()[n..]
        .iter()
        .find(|r| r.ty == "error")
        .cloned()
        .unwrap();
    assert_eq!(reply.kind, FrameKind::Binary);
    let n = t.c.log().len();
    t.c.send_json_as(&json!({"ver": 1, "type": "nope"}), FrameKind::Text)
        .unwrap();
    t.c.wait_error("0x8", T).unwrap();
    let reply = t.c.log()[n..]
        .iter()
        .find(|r| r.ty == "error")
        .cloned()
        .unwrap();
    assert_eq!(reply.kind, FrameKind::Text);
}

// ----- bridging ----------------------------------------------------------------------------

#[test]
fn a_json_user_and_cchat_members_talk_through_the_room() {
    let hub = hub(&[]);
    let room = sha1_hex("bridge");
    let dest = format!("#{room}");
    let mut alice = JsonClient::connect(hub.addr("json", "main")).unwrap();
    let reply = alice.signup("alice", "pw-alice", "sha256").unwrap();
    assert_eq!(reply["resp_code"], 0, "{reply}");
    let token = reply["session"].as_str().unwrap().to_owned();
    assert_eq!(alice.subscribe(&token).unwrap()["resp_code"], 0);
    alice
        .request("room.join", &token, "alice", &dest, json!({}))
        .unwrap();
    let joined = alice.recv_type("room.join", T).unwrap();
    assert_eq!(joined["resp_code"], 0, "{joined}");

    let a = member(&hub, "bridge-a", &room);
    let b = join_member(&hub, "bridge-b", &room, FrameKind::Text, false);
    settle(&[&a, &b], &[1, 0]);

    // JSON → cchat: base64("<handle>: <text>"), no extra fields.
    alice
        .request(
            "message",
            &token,
            "alice",
            &dest,
            json!({"message": "hello cchat"}),
        )
        .unwrap();
    let want = json!({"ver": 1, "type": "message_1", "content": base64_of(b"alice: hello cchat")});
    for m in [&a, &b] {
        let got = m.c.wait_message(|x| x.content.is_some(), T).unwrap();
        assert_eq!(got.raw, want, "{}", m.name);
        assert_eq!(got.content.as_deref(), Some(&b"alice: hello cchat"[..]));
    }

    // cchat → JSON: UTF-8 content shown as text from cchat-<first 12 hex of the id>.
    let handle = format!("cchat-{}", &a.id[..12]);
    let sent =
        a.c.send_message("hi json, ça va?".as_bytes(), Value::Null)
            .unwrap();
    assert_eq!(
        alice.recv_type("message", T).unwrap(),
        json!({"type": "message", "source": handle, "dest": dest, "message": "hi json, ça va?"})
    );
    for m in [&a, &b] {
        let got =
            m.c.wait_message(|x| x.raw == expected_message_1(&sent), T)
                .unwrap();
        assert_eq!(got.content.as_deref(), Some("hi json, ça va?".as_bytes()));
    }
    // Content that is not UTF-8 reaches the cchat members only.
    let opaque = [0xffu8, 0xfe, 0x00, 0x80, 0xc3];
    a.c.send_message(&opaque, json!({"opaque": true})).unwrap();
    b.c.wait_message(|x| x.raw["opaque"] == true, T).unwrap();
    a.c.send_message(b"second", Value::Null).unwrap();
    let next = alice.recv_type("message", T).unwrap();
    assert_eq!(
        next["message"], "second",
        "the opaque message was not shown: {next}"
    );
    assert_eq!(next["source"], json!(handle));
    assert_clean(&[&a, &b]);
}
