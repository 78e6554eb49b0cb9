//! The XDR session as a state machine: a scripted client doing the real crypto, core
//! answers fed by hand, no sockets. (One RSA key serves as both the server's and the
//! client's: key generation is slow and the roles do not interfere.)

use super::*;
use crate::crypto::tests::{private_pem, public_pem, sign};
use crate::crypto::{Cipher, ClientKey};
use crate::xdr::{Reader, Writer};
use hub_plugin_sdk::testing::{commands, session_info, Harness};
use hub_plugin_sdk::{
    Address, Answer, CloseReason, Content, CoreError, CorrelationId, Delivery, EventBody, EventId,
    EventRecord, HubEvent, Input, Op, Origin, Output, PublicKey, Seq, Target, Transmit, UserId,
    UserRef, WsMessage,
};
use serde_json::{json, Value};

const CLIENT_AES: [u8; 32] = [0x11; 32];

fn protocol(extra: Value) -> Xdr {
    let mut config = json!({"$keys": {"server": private_pem()}, "enabled": true});
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    Xdr::from_config(&config).unwrap()
}

fn alice() -> UserRef {
    UserRef {
        id: UserId(5),
        handle: "alice".into(),
    }
}

fn answer(id: CorrelationId, result: Result<Answer, CoreError>) -> Input {
    Input::Event(HubEvent::Answer { id, result })
}

fn binaries(outputs: &[Output]) -> Vec<Vec<u8>> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Transmit(Transmit::Message(WsMessage::Binary(b))) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

fn close_code(outputs: &[Output]) -> Option<u16> {
    outputs.iter().find_map(|o| match o {
        Output::Close(CloseReason { code, .. }) => *code,
        _ => None,
    })
}

fn hello(id: &str, last_seen_order: i64) -> Vec<u8> {
    let mut w = Writer::new();
    w.opaque(id.as_bytes())
        .hyper(last_seen_order)
        .opaque(&CLIENT_AES)
        .uint(2);
    ClientKey::from_pem(&public_pem())
        .unwrap()
        .encrypt(&w.into_bytes())
        .unwrap()
}

fn message(bytes: Vec<u8>) -> Input {
    Input::Message(WsMessage::Binary(bytes))
}

/// A live session after a full handshake; returns it with the server's AES key.
fn live(last_seen_order: i64, last_seen_sequence: i64) -> (Harness<XdrSession>, Cipher) {
    live_with(json!({}), last_seen_order, last_seen_sequence)
}

fn live_with(
    extra: Value,
    last_seen_order: i64,
    last_seen_sequence: i64,
) -> (Harness<XdrSession>, Cipher) {
    let mut h = Harness::new(protocol(extra).open(session_info(Transport::WebSocket)));
    h.input(Input::Opened);
    let outs = h.input(message(hello("alice", last_seen_order)));
    let find = &commands(&outs)[0];
    assert_eq!(
        find.op,
        Op::FindAlias {
            namespace: "xdr".into(),
            native: "alice".into()
        }
    );
    let outs = h.input(answer(find.id, Ok(Answer::User(alice()))));
    let keys = &commands(&outs)[0];
    let key = PublicKey {
        kind: session::CLIENT_KEY_KIND.into(),
        bytes: public_pem().into_bytes(),
    };
    let outs = h.input(answer(keys.id, Ok(Answer::Keys(vec![key]))));
    let load = &commands(&outs)[0];
    let stored = last_seen_sequence.to_be_bytes().to_vec();
    let outs = h.input(answer(load.id, Ok(Answer::Value(Some(stored)))));
    let challenge = binaries(&outs).pop().expect("a challenge");
    let plain = ServerKey::from_pem(&private_pem())
        .unwrap()
        .decrypt(&challenge)
        .expect("the challenge decrypts with the client key");
    let mut r = Reader::new(&plain);
    let data_to_sign = r.opaque().unwrap().to_vec();
    assert_eq!(r.hyper(), Ok(last_seen_sequence));
    let server_aes = r.opaque().unwrap().to_vec();
    r.finish().unwrap();
    let outs = h.input(message(sign(&data_to_sign, 190)));
    let bind = &commands(&outs)[0];
    assert_eq!(
        bind.op,
        Op::Bind {
            user: UserId(5),
            exclusive: true,
            resume_after: u64::try_from(last_seen_order).ok().map(Seq),
        }
    );
    let bound = Answer::Bound {
        user: alice(),
        cursor: Seq(u64::try_from(last_seen_order).unwrap_or(0)),
    };
    h.input(answer(bind.id, Ok(bound)));
    (h, Cipher::new(&server_aes).unwrap())
}

/// A client frame in the spec layout (`spec`) or the 0.3 layout.
fn client_frame(kind: i32, id: i64, payload: &Value, spec: bool) -> Vec<u8> {
    let json = payload.to_string();
    let mut data = Writer::new();
    if spec {
        data.hyper(id).opaque(json.as_bytes());
    } else {
        data.int(kind).hyper(id).opaque(json.as_bytes());
    }
    let data = data.into_bytes();
    let mut body = Writer::new();
    body.opaque(&sign(&data, 190));
    if spec {
        body.int(kind);
    }
    body.opaque(&data);
    Cipher::new(&CLIENT_AES).unwrap().seal(&body.into_bytes())
}

/// Decrypts a server frame: (type, fields reader bytes) in the spec layout.
fn server_frame(cipher: &Cipher, sealed: &[u8]) -> (i32, Vec<u8>) {
    let body = cipher.open(sealed).expect("a server frame decrypts");
    let mut r = Reader::new(&body);
    let kind = r.int().unwrap();
    let data = r.opaque().unwrap().to_vec();
    r.finish().unwrap();
    (kind, data)
}

fn outbox(cipher: &Cipher, sealed: &[u8]) -> (i64, f64, Value) {
    let (kind, data) = server_frame(cipher, sealed);
    assert_eq!(kind, 1);
    let mut r = Reader::new(&data);
    let order = r.hyper().unwrap();
    let ts = r.double().unwrap();
    let json = serde_json::from_slice(r.opaque().unwrap()).unwrap();
    (order, ts, json)
}

fn error_text(cipher: &Cipher, sealed: &[u8]) -> String {
    let (kind, data) = server_frame(cipher, sealed);
    assert_eq!(kind, 3);
    let mut r = Reader::new(&data);
    String::from_utf8(r.opaque().unwrap().to_vec()).unwrap()
}

fn delivery(seq: u64, text: &str) -> Input {
    Input::Event(HubEvent::Deliver(Delivery {
        seq: Seq(seq),
        event: EventRecord {
            id: EventId(100 + seq),
            at_unix_ms: 1_700_000_000_500,
            origin: Origin {
                plugin: "json".into(),
                conn: None,
            },
            from: UserRef {
                id: UserId(9),
                handle: "bob".into(),
            },
            to: Target::User(alice()),
            body: EventBody::Message(Content::Text(text.into())),
        },
    }))
}

#[test]
fn the_handshake_binds_from_the_last_seen_order_and_the_stream_follows() {
    let (mut h, server) = live(41, 0);
    let outs = h.input(delivery(42, "hello"));
    let (order, ts, payload) = outbox(&server, &binaries(&outs)[0]);
    assert_eq!(order, 42);
    assert_eq!(ts, 1_700_000_000.5);
    assert_eq!(
        payload,
        json!({"@type":"Message","from":"bob","to":"alice","text":"hello","event_id":142})
    );
    // A heartbeat every 2 s.
    assert_eq!(h.deadline(), Some(2000));
    assert_eq!(binaries(&h.advance(2000)), vec![vec![0u8]]);
}

#[test]
fn a_negative_last_seen_order_resumes_from_the_cursor() {
    // `live` checks the Bind: no resume position, so the core starts at the cursor.
    let (mut h, server) = live(-1, 0);
    let outs = h.input(delivery(1, "first"));
    assert_eq!(outbox(&server, &binaries(&outs)[0]).0, 1);
}

#[test]
fn inbox_messages_need_the_next_sequence_in_either_layout() {
    let (mut h, server) = live(0, 6);
    let send = json!({"@type":"SendMessage","to":"bob","text":"hi","mood":"calm"});
    let outs = h.input(message(client_frame(1, 7, &send, true)));
    let cmd = &commands(&outs)[0];
    let Op::Send { to, content } = &cmd.op else {
        panic!("a send")
    };
    assert_eq!(*to, Address::Handle("bob".into()));
    assert!(matches!(content, Content::Native { fallback: Some(t), .. } if t == "hi"));
    // Done: the sequence is stored as processed.
    let outs = h.input(answer(cmd.id, Ok(Answer::Accepted { event: EventId(1) })));
    assert_eq!(
        commands(&outs)[0].op,
        Op::Store {
            key: [b"seq/".as_slice(), &5u64.to_be_bytes()].concat(),
            value: Some(7i64.to_be_bytes().to_vec())
        }
    );
    // The real client's layout works too; a refusal goes into the stream.
    let join = json!({"@type":"JoinRoom","room":"#lobby"});
    let outs = h.input(message(client_frame(1, 8, &join, false)));
    let cmd = &commands(&outs)[0];
    assert_eq!(
        cmd.op,
        Op::JoinRoom {
            room: "lobby".into()
        }
    );
    let outs = h.input(answer(cmd.id, Err(CoreError::Invalid("x".into()))));
    let notify = &commands(&outs)[0];
    let Op::Notify {
        content: Content::Native { bytes, .. },
    } = &notify.op
    else {
        panic!("a notice")
    };
    let notice: Value = serde_json::from_slice(bytes).unwrap();
    assert_eq!(notice["@type"], "MessageRefused");
    assert_eq!(notice["sequence"], 8);
    h.input(answer(
        notify.id,
        Ok(Answer::Accepted { event: EventId(2) }),
    ));
    // A gap closes with 4001 after an ERROR frame.
    let outs = h.input(message(client_frame(1, 10, &join, true)));
    assert_eq!(close_code(&outs), Some(4001));
    assert!(error_text(&server, &binaries(&outs)[0]).contains("expected 9"));
}

#[test]
fn a_repeated_sequence_closes_with_4001() {
    let (mut h, _) = live(0, 0);
    let join = json!({"@type":"JoinRoom","room":"r"});
    let frame = client_frame(1, 1, &join, true);
    h.input(message(frame.clone()));
    assert_eq!(close_code(&h.input(message(frame))), Some(4001));
}

#[test]
fn bad_signatures_and_tampered_frames_close_with_4004() {
    let (mut h, server) = live(0, 0);
    let mut frame = client_frame(1, 1, &json!({"@type":"JoinRoom","room":"r"}), true);
    let last = frame.len() - 1;
    frame[last] ^= 1;
    let outs = h.input(message(frame));
    assert_eq!(close_code(&outs), Some(4004));
    assert!(!error_text(&server, &binaries(&outs)[0]).is_empty());

    let (mut h, _) = live(0, 0);
    // A valid frame whose signature covers other data.
    let mut data = Writer::new();
    data.hyper(1).opaque(br#"{"@type":"JoinRoom","room":"r"}"#);
    let mut body = Writer::new();
    body.opaque(&sign(b"something else", 190))
        .int(1)
        .opaque(&data.into_bytes());
    let sealed = Cipher::new(&CLIENT_AES).unwrap().seal(&body.into_bytes());
    assert_eq!(close_code(&h.input(message(sealed))), Some(4004));
}

#[test]
fn an_unknown_type_closes_with_4005_and_counts_as_processed() {
    let (mut h, server) = live(0, 0);
    let outs = h.input(message(client_frame(
        1,
        1,
        &json!({"@type":"PlaceBuyFoKOrder"}),
        true,
    )));
    assert_eq!(close_code(&outs), Some(4005));
    assert!(error_text(&server, &binaries(&outs)[0]).contains("PlaceBuyFoKOrder"));
    assert!(matches!(
        &commands(&outs)[0].op,
        Op::Store { value: Some(v), .. } if v == &1i64.to_be_bytes().to_vec()
    ));
}

#[test]
fn rpc_requests_are_answered_with_their_request_id() {
    let (mut h, server) = live(0, 0);
    let outs = h.input(message(client_frame(
        2,
        77,
        &json!({"@type":"WhoAmIRequest"}),
        false,
    )));
    let (kind, data) = server_frame(&server, &binaries(&outs)[0]);
    assert_eq!(kind, 2);
    let mut r = Reader::new(&data);
    assert_eq!(r.hyper(), Ok(77));
    let reply: Value = serde_json::from_slice(r.opaque().unwrap()).unwrap();
    assert_eq!(reply["user"], "alice");

    let outs = h.input(message(client_frame(
        2,
        78,
        &json!({"@type":"RoomHistoryRequest","room":"nowhere"}),
        true,
    )));
    let cmd = &commands(&outs)[0];
    let outs = h.input(answer(cmd.id, Err(CoreError::NoSuchRoom)));
    let (_, data) = server_frame(&server, &binaries(&outs)[0]);
    let mut r = Reader::new(&data);
    assert_eq!(r.hyper(), Ok(78));
    let reply: Value = serde_json::from_slice(r.opaque().unwrap()).unwrap();
    assert_eq!(reply["@type"], "Error");
    assert_eq!(reply["code"], "NoSuchRoom");

    // Presence: each handle resolved, then one status query.
    let outs = h.input(message(client_frame(
        2,
        79,
        &json!({"@type":"PresenceRequest","users":["bob","nobody"]}),
        true,
    )));
    let resolves = commands(&outs);
    assert_eq!(resolves.len(), 2);
    let bob = UserRef {
        id: UserId(9),
        handle: "bob".into(),
    };
    h.input(answer(resolves[0].id, Ok(Answer::User(bob))));
    let outs = h.input(answer(resolves[1].id, Err(CoreError::NoSuchUser)));
    let status = &commands(&outs)[0];
    assert_eq!(
        status.op,
        Op::Status {
            users: vec![UserId(9)]
        }
    );
    let outs = h.input(answer(
        status.id,
        Ok(Answer::Statuses(vec![hub_plugin_sdk::UserStatus::Online(
            UserId(9),
        )])),
    ));
    let (_, data) = server_frame(&server, &binaries(&outs)[0]);
    let mut r = Reader::new(&data);
    r.hyper().unwrap();
    let reply: Value = serde_json::from_slice(r.opaque().unwrap()).unwrap();
    assert_eq!(reply["users"], json!({"bob":"online","nobody":"unknown"}));
}

#[test]
fn handshake_refusals_close_without_frames() {
    let p = protocol(json!({}));
    // Garbage instead of a hello.
    let mut h = Harness::new(p.open(session_info(Transport::WebSocket)));
    h.input(Input::Opened);
    let outs = h.input(message(vec![7; 256]));
    assert_eq!(close_code(&outs), Some(4003));
    assert!(binaries(&outs).is_empty());
    // An unknown client id.
    let mut h = Harness::new(p.open(session_info(Transport::WebSocket)));
    h.input(Input::Opened);
    let outs = h.input(message(hello("mallory", 0)));
    let outs = h.input(answer(commands(&outs)[0].id, Err(CoreError::NoSuchUser)));
    assert_eq!(close_code(&outs), Some(4002));
    // A concurrent connection.
    let mut h = Harness::new(p.open(session_info(Transport::WebSocket)));
    h.input(Input::Opened);
    let outs = h.input(message(hello("alice", 0)));
    let outs = h.input(answer(commands(&outs)[0].id, Ok(Answer::User(alice()))));
    let key = PublicKey {
        kind: session::CLIENT_KEY_KIND.into(),
        bytes: public_pem().into_bytes(),
    };
    let outs = h.input(answer(commands(&outs)[0].id, Ok(Answer::Keys(vec![key]))));
    let outs = h.input(answer(commands(&outs)[0].id, Ok(Answer::Value(None))));
    let challenge = binaries(&outs).pop().unwrap();
    let plain = ServerKey::from_pem(&private_pem())
        .unwrap()
        .decrypt(&challenge)
        .unwrap();
    let data_to_sign = Reader::new(&plain).opaque().unwrap().to_vec();
    // A wrong signature first fails on another session; here the right one binds.
    let outs = h.input(message(sign(&data_to_sign, 0)));
    let outs = h.input(answer(
        commands(&outs)[0].id,
        Err(CoreError::AlreadyConnected),
    ));
    assert_eq!(close_code(&outs), Some(4000));
    // The handshake times out.
    let mut h = Harness::new(p.open(session_info(Transport::WebSocket)));
    h.input(Input::Opened);
    assert_eq!(close_code(&h.advance(10_000)), Some(4006));
}

#[test]
fn a_bad_handshake_signature_closes_with_4003() {
    let p = protocol(json!({}));
    let mut h = Harness::new(p.open(session_info(Transport::WebSocket)));
    h.input(Input::Opened);
    let outs = h.input(message(hello("alice", 0)));
    let outs = h.input(answer(commands(&outs)[0].id, Ok(Answer::User(alice()))));
    let key = PublicKey {
        kind: session::CLIENT_KEY_KIND.into(),
        bytes: public_pem().into_bytes(),
    };
    let outs = h.input(answer(commands(&outs)[0].id, Ok(Answer::Keys(vec![key]))));
    h.input(answer(commands(&outs)[0].id, Ok(Answer::Value(None))));
    let outs = h.input(message(sign(b"not the challenge", 190)));
    assert_eq!(close_code(&outs), Some(4003));
}

#[test]
fn inline_server_frames_put_the_fields_after_the_type() {
    let (mut h, server) = live_with(json!({"server_frames": "inline"}), 0, 0);
    let outs = h.input(delivery(1, "x"));
    let body = server.open(&binaries(&outs)[0]).unwrap();
    let mut r = Reader::new(&body);
    assert_eq!(r.int(), Ok(1));
    assert_eq!(r.hyper(), Ok(1));
    r.double().unwrap();
    let payload: Value = serde_json::from_slice(r.opaque().unwrap()).unwrap();
    assert_eq!(payload["text"], "x");
    r.finish().unwrap();
}

#[test]
fn presence_carries_the_last_order_and_shutdown_closes_with_1012() {
    let (mut h, server) = live(3, 0);
    let outs = h.input(Input::Event(HubEvent::Presence {
        user: UserRef {
            id: UserId(9),
            handle: "bob".into(),
        },
        online: true,
    }));
    let (order, _, payload) = outbox(&server, &binaries(&outs)[0]);
    assert_eq!(order, 3);
    assert_eq!(
        payload,
        json!({"@type":"Presence","user":"bob","online":true})
    );
    let outs = h.input(Input::Event(HubEvent::Shutdown));
    assert_eq!(close_code(&outs), Some(1012));
    assert!(binaries(&outs).is_empty());
}

#[test]
fn config_needs_the_server_key_and_sane_values() {
    assert!(Xdr::from_config(&json!({})).is_err());
    let keys = json!({"server": private_pem()});
    assert!(Xdr::from_config(&json!({"$keys": keys, "server_frames": "sideways"})).is_err());
    assert!(Xdr::from_config(&json!({"$keys": keys, "max_pending": 0})).is_err());
    assert!(Xdr::from_config(&json!({"$keys": keys, "server_frames": "inline"})).is_ok());
}

#[test]
fn deliveries_are_proven_by_a_receipt_ping_and_its_pong() {
    let (mut h, _) = live(0, 0);
    let outs = h.input(delivery(1, "a"));
    let ping = outs
        .iter()
        .find_map(|o| match o {
            Output::Transmit(Transmit::Message(WsMessage::Ping(p))) => Some(p.clone()),
            _ => None,
        })
        .expect("a receipt ping after the delivery");
    assert_eq!(ping, 1u64.to_be_bytes());
    let outs = h.input(Input::Message(WsMessage::Pong(ping)));
    assert_eq!(commands(&outs)[0].op, Op::Ack { through: Seq(1) });
    // The hub's own keep-alive pong proves nothing.
    assert!(commands(&h.input(Input::Message(WsMessage::Pong(vec![])))).is_empty());
}

#[test]
fn frames_right_after_the_signature_wait_for_the_bind() {
    let p = protocol(json!({}));
    let mut h = Harness::new(p.open(session_info(Transport::WebSocket)));
    h.input(Input::Opened);
    let outs = h.input(message(hello("alice", 0)));
    let outs = h.input(answer(commands(&outs)[0].id, Ok(Answer::User(alice()))));
    let key = PublicKey {
        kind: session::CLIENT_KEY_KIND.into(),
        bytes: public_pem().into_bytes(),
    };
    let outs = h.input(answer(commands(&outs)[0].id, Ok(Answer::Keys(vec![key]))));
    let outs = h.input(answer(commands(&outs)[0].id, Ok(Answer::Value(None))));
    let challenge = binaries(&outs).pop().unwrap();
    let plain = ServerKey::from_pem(&private_pem())
        .unwrap()
        .decrypt(&challenge)
        .unwrap();
    let mut r = Reader::new(&plain);
    let data_to_sign = r.opaque().unwrap().to_vec();
    r.hyper().unwrap();
    let server = Cipher::new(r.opaque().unwrap()).unwrap();
    let outs = h.input(message(sign(&data_to_sign, 190)));
    let bind = commands(&outs)[0].id;
    // Sent at once, before the bind is answered: kept, not refused.
    let outs = h.input(message(client_frame(
        2,
        9,
        &json!({"@type":"WhoAmIRequest"}),
        true,
    )));
    assert_eq!(close_code(&outs), None);
    let outs = h.input(answer(
        bind,
        Ok(Answer::Bound {
            user: alice(),
            cursor: Seq(0),
        }),
    ));
    let (kind, _) = server_frame(&server, &binaries(&outs)[0]);
    assert_eq!(kind, 2, "the early RPC is answered once live");
}
