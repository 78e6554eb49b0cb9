//! The cchat session as a state machine: inputs in, outputs checked, no sockets.

use super::*;
use hub_plugin_sdk::testing::{commands, session_info, Harness, Rng};
use hub_plugin_sdk::{
    Answer, CloseReason, Content, CoreError, CorrelationId, Delivery, EventBody, EventId,
    EventRecord, HubEvent, Input, KeyStep, Op, Origin, Output, RoomId, RoomRef, Seq, Target,
    Transmit, UserId, UserRef, WsMessage,
};
use serde_json::{json, Value};

const CLIENT: &str = "89e495e7941cf9e40e6980d14a16bf023ccd4c91";
const ROOM: &str = "5f4dcc3b5aa765d61d8327deb882cf99aabbccdd";

/// A small (256-bit) safe prime keeps the tests quick.
const SMALL_P: &str = "c998ff967972196995c8de6284b5bf11a36ae4d26bd3767468e33bd0e61a5a7f";

fn session() -> Harness<CchatSession> {
    let protocol = Cchat::from_config(&json!({
        "join_timeout_secs": 5, "prime_hex": SMALL_P, "enabled": true,
        "listen": {"main": "127.0.0.1:0"}
    }))
    .unwrap();
    let mut harness = Harness::new(protocol.open(session_info(Transport::WebSocket)));
    assert!(harness.input(Input::Opened).is_empty());
    harness
}

fn text(value: Value) -> Input {
    Input::Message(WsMessage::Text(value.to_string()))
}

fn sent(outputs: &[Output]) -> Vec<Value> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Transmit(Transmit::Message(WsMessage::Text(t))) => {
                Some(serde_json::from_str(t).unwrap())
            }
            Output::Transmit(Transmit::Message(WsMessage::Binary(b))) => {
                Some(serde_json::from_slice(b).unwrap())
            }
            _ => None,
        })
        .collect()
}

fn closes(outputs: &[Output]) -> Vec<u16> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Close(CloseReason { code, .. }) => *code,
            _ => None,
        })
        .collect()
}

fn answer(id: CorrelationId, result: Result<Answer, CoreError>) -> Input {
    Input::Event(HubEvent::Answer { id, result })
}

fn user() -> UserRef {
    UserRef {
        id: UserId(7),
        handle: "cchat-89e495e7941c".into(),
    }
}

fn room() -> RoomRef {
    RoomRef {
        id: RoomId(3),
        name: ROOM.into(),
    }
}

fn key_step(rounds_left: u32, fresh: bool, intermediate: Vec<u8>) -> Input {
    Input::Event(HubEvent::KeyStep {
        room: room(),
        step: KeyStep {
            rounds_left,
            fresh,
            intermediate,
        },
    })
}

fn join_msg() -> Value {
    json!({"ver": 1, "type": "join", "clientid": CLIENT, "chatroom": ROOM})
}

/// Joins through the three core commands; returns what the Enter answer produced.
fn joined(h: &mut Harness<CchatSession>) -> Vec<Output> {
    let outs = h.input(text(join_msg()));
    let alias = &commands(&outs)[0];
    assert_eq!(
        alias.op,
        Op::Alias {
            namespace: "cchat".into(),
            native: CLIENT.into(),
            handles: vec!["cchat-89e495e7941c".into(), format!("cchat-{CLIENT}")],
        }
    );
    let outs = h.input(answer(alias.id, Ok(Answer::User(user()))));
    let auth = &commands(&outs)[0];
    assert_eq!(auth.op, Op::Authenticate { user: UserId(7) });
    let outs = h.input(answer(auth.id, Ok(Answer::User(user()))));
    let enter = &commands(&outs)[0];
    assert_eq!(
        enter.op,
        Op::EnterRoom {
            room: ROOM.into(),
            key_agreement: Some(hub_plugin_sdk::KeyAgreement { base: vec![2] }),
        }
    );
    h.input(answer(enter.id, Ok(Answer::Room(room()))))
}

fn room_message(seq: u64, from: UserRef, content: Content) -> Input {
    Input::Event(HubEvent::RoomDeliver(Delivery {
        seq: Seq(seq),
        event: EventRecord {
            id: EventId(seq + 100),
            at_unix_ms: 1,
            origin: Origin {
                plugin: "json".into(),
                conn: None,
            },
            from,
            to: Target::Room(room()),
            body: EventBody::Message(content),
        },
    }))
}

/// A session that joined, got its first (final) step and answered it.
fn keyed() -> Harness<CchatSession> {
    let mut h = session();
    joined(&mut h);
    h.input(key_step(0, true, vec![2]));
    let outs = h.input(text(
        json!({"ver":1,"type":"keyxchg_2","roundleft":0,"keyintrmdt":""}),
    ));
    assert_eq!(
        commands(&outs)[0].op,
        Op::KeyReply {
            room: ROOM.into(),
            intermediate: vec![]
        }
    );
    h
}

#[test]
fn join_sends_the_prime_then_the_first_step_then_the_acknowledgement() {
    let mut h = session();
    let out = sent(&joined(&mut h));
    assert_eq!(
        out,
        vec![json!({"ver":1,"type":"keyxchg_0","number":SMALL_P})]
    );
    let out = sent(&h.input(key_step(1, true, vec![2])));
    assert_eq!(out[0]["type"], "keyxchg_1");
    assert_eq!(out[0]["roundleft"], 1);
    assert_eq!(out[0]["keyintrmdt"], "02");
    assert_eq!(out[0]["prime"], SMALL_P);
    assert_eq!(out[0]["changesecret"], true);
    assert_eq!(
        out[1],
        json!({"ver":1,"type":"error","errcode":"0x0","errdetail":"joined"})
    );
    // Later steps carry no acknowledgement.
    assert_eq!(sent(&h.input(key_step(0, false, vec![5]))).len(), 1);
}

#[test]
fn steps_that_overtake_the_enter_answer_wait_for_the_prime() {
    let mut h = session();
    let outs = h.input(text(join_msg()));
    let alias = commands(&outs)[0].id;
    let outs = h.input(answer(alias, Ok(Answer::User(user()))));
    let auth = commands(&outs)[0].id;
    let outs = h.input(answer(auth, Ok(Answer::User(user()))));
    let enter = commands(&outs)[0].id;
    assert!(sent(&h.input(key_step(0, true, vec![2]))).is_empty());
    let out = sent(&h.input(answer(enter, Ok(Answer::Room(room())))));
    let types: Vec<&str> = out.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["keyxchg_0", "keyxchg_1", "error"]);
}

#[test]
fn messages_wait_for_the_key_and_keep_their_fields() {
    let mut h = session();
    joined(&mut h);
    h.input(key_step(1, true, vec![2]));
    let msg = json!({"ver":1,"type":"message_0","content":"aGk=","nick":"bob"});
    let out = sent(&h.input(text(msg.clone())));
    assert_eq!(out[0]["errcode"], "0x10");
    // A non-final step is answered with an intermediate; still not ready.
    let outs = h.input(text(
        json!({"ver":1,"type":"keyxchg_2","roundleft":1,"keyintrmdt":"0abc"}),
    ));
    assert_eq!(
        commands(&outs)[0].op,
        Op::KeyReply {
            room: ROOM.into(),
            intermediate: vec![0x0a, 0xbc]
        }
    );
    assert_eq!(sent(&h.input(text(msg.clone())))[0]["errcode"], "0x10");
    h.input(key_step(0, false, vec![9]));
    h.input(text(
        json!({"ver":1,"type":"keyxchg_2","roundleft":0,"keyintrmdt":""}),
    ));
    let outs = h.input(text(msg.clone()));
    let Op::Send { to, content } = &commands(&outs)[0].op else {
        panic!("a send");
    };
    assert_eq!(*to, hub_plugin_sdk::Address::Room(ROOM.into()));
    let Content::Native {
        scheme,
        bytes,
        fallback,
    } = content
    else {
        panic!("native content");
    };
    assert_eq!(scheme, SCHEME_MESSAGE);
    assert_eq!(fallback.as_deref(), Some("hi"));
    let stored: Value = serde_json::from_slice(bytes).unwrap();
    assert_eq!(stored, msg);
    // Relayed back (to the sender too) as message_1 with the extra field.
    let out = sent(&h.input(room_message(1, user(), content.clone())));
    assert_eq!(
        out,
        vec![json!({"ver":1,"type":"message_1","content":"aGk=","nick":"bob"})]
    );
}

#[test]
fn foreign_text_arrives_with_the_senders_handle() {
    let mut h = keyed();
    let alice = UserRef {
        id: UserId(9),
        handle: "alice".into(),
    };
    let out = sent(&h.input(room_message(2, alice.clone(), Content::Text("hi".into()))));
    assert_eq!(out[0]["content"], "YWxpY2U6IGhp");
    let sealed = Content::Sealed {
        scheme: "json/message".into(),
        bytes: vec![1, 2],
    };
    assert!(sent(&h.input(room_message(3, alice, sealed))).is_empty());
}

#[test]
fn every_error_code_the_session_gives() {
    let mut h = session();
    let code =
        |h: &mut Harness<CchatSession>, v: Value| sent(&h.input(text(v)))[0]["errcode"].clone();
    assert_eq!(
        code(&mut h, json!({"ver":1,"type":"message_0","content":"aGk="})),
        "0x5"
    );
    assert_eq!(code(&mut h, json!({"ver":1,"type":"leave"})), "0x5");
    assert_eq!(
        code(&mut h, json!({"ver":1,"type":"keyxchg_2","keyintrmdt":""})),
        "0x5"
    );
    assert_eq!(code(&mut h, json!({"ver":1,"type":"dance"})), "0x8");
    assert_eq!(code(&mut h, json!({"ver":2,"type":"join"})), "0xa");
    assert_eq!(
        code(&mut h, json!({"ver":1,"type":"join","clientid":"x"})),
        "0x9"
    );
    let out = sent(&h.input(Input::Message(WsMessage::Text("{".into()))));
    assert_eq!(out[0]["errcode"], "0x9");
    // Still usable: a proper join goes ahead.
    joined(&mut h);
    assert_eq!(code(&mut h, join_msg()), "0x9", "a second join");
    assert_eq!(
        code(
            &mut h,
            json!({"ver":1,"type":"keyxchg_2","keyintrmdt":"05"})
        ),
        "0x9",
        "answers no step"
    );
}

#[test]
fn a_duplicate_client_id_is_refused_and_closed() {
    let mut h = session();
    let outs = h.input(text(join_msg()));
    let outs = h.input(answer(commands(&outs)[0].id, Ok(Answer::User(user()))));
    let outs = h.input(answer(commands(&outs)[0].id, Ok(Answer::User(user()))));
    let outs = h.input(answer(commands(&outs)[0].id, Err(CoreError::AlreadyInRoom)));
    assert_eq!(sent(&outs)[0]["errcode"], "0x4");
    assert_eq!(closes(&outs), vec![1008]);
}

#[test]
fn out_of_range_intermediates_get_the_client_kicked() {
    for bad in ["", "01", "00", "zz", SMALL_P, "ff".repeat(40).as_str()] {
        let mut h = session();
        joined(&mut h);
        h.input(key_step(1, true, vec![2]));
        let outs = h.input(text(
            json!({"ver":1,"type":"keyxchg_2","roundleft":1,"keyintrmdt":bad}),
        ));
        assert_eq!(sent(&outs)[0]["errcode"], "0x6", "value {bad:?}");
        assert_eq!(closes(&outs), vec![1008]);
        assert_eq!(commands(&outs)[0].op, Op::ExitRoom { room: ROOM.into() });
    }
}

#[test]
fn no_join_in_time_closes_with_0x7() {
    let mut h = session();
    assert_eq!(h.deadline(), Some(5000));
    assert!(h.advance(4999).is_empty());
    let outs = h.advance(1);
    assert_eq!(sent(&outs)[0]["errcode"], "0x7");
    assert_eq!(closes(&outs), vec![1008]);
    // A joined session has no deadline.
    let mut h = session();
    joined(&mut h);
    assert_eq!(h.deadline(), None);
}

#[test]
fn leave_is_acknowledged_then_closed_and_kicks_and_shutdown_close() {
    let mut h = keyed();
    let outs = h.input(text(json!({"ver":1,"type":"leave"})));
    let exit = &commands(&outs)[0];
    assert_eq!(exit.op, Op::ExitRoom { room: ROOM.into() });
    let outs = h.input(answer(exit.id, Ok(Answer::Done)));
    assert_eq!(sent(&outs)[0]["errcode"], "0x0");
    assert_eq!(closes(&outs), vec![1000]);

    let mut h = keyed();
    let outs = h.input(Input::Event(HubEvent::RoomKicked {
        room: room(),
        reason: "did not answer".into(),
    }));
    assert_eq!(sent(&outs)[0]["errcode"], "0x6");
    let mut h = keyed();
    let outs = h.input(Input::Event(HubEvent::Shutdown));
    assert_eq!(sent(&outs)[0]["errcode"], "0xc");
    assert_eq!(closes(&outs), vec![1001]);
}

#[test]
fn replies_mirror_the_clients_frame_kind() {
    let mut h = session();
    let outs = h.input(Input::Message(WsMessage::Binary(
        br#"{"ver":1,"type":"leave"}"#.to_vec(),
    )));
    assert!(matches!(
        outs[..],
        [
            ..,
            Output::Transmit(Transmit::Message(WsMessage::Binary(_)))
        ]
    ));
}

#[test]
fn config_is_validated() {
    assert!(Cchat::from_config(&json!({"prime_bits": 1024})).is_err());
    assert!(
        Cchat::from_config(&json!({"prime_hex": "0b"})).is_err(),
        "too small"
    );
    assert!(Cchat::from_config(&json!({"max_pending": 0})).is_err());
    assert!(Cchat::from_config(&json!({"no_such_key": 1})).is_err());
    assert!(Cchat::from_config(&json!({})).is_ok());
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = Rng(0xcc4a7);
    let samples = [
        join_msg().to_string(),
        json!({"ver":1,"type":"message_0","content":"aGk=","x":[1,{"y":null}]}).to_string(),
        json!({"ver":1,"type":"keyxchg_2","roundleft":1,"keyintrmdt":"abcdef"}).to_string(),
        json!({"ver":1,"type":"leave"}).to_string(),
    ];
    for _ in 0..20_000 {
        let mut h = keyed();
        h.input(key_step(1, false, vec![7]));
        let mut bytes = samples[rng.below(samples.len() as u64) as usize]
            .clone()
            .into_bytes();
        for _ in 0..rng.below(4) {
            let at = rng.below(bytes.len() as u64) as usize;
            match rng.below(3) {
                0 => bytes[at] = rng.next_u64() as u8,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, rng.next_u64() as u8),
            }
        }
        h.input(Input::Message(WsMessage::Binary(bytes)));
    }
}
