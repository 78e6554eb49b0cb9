//! The JSON session as a state machine: inputs in, outputs checked, no sockets.

use super::*;
use hub_plugin_sdk::testing::{commands, session_info, Harness, Rng};
use hub_plugin_sdk::{
    Answer, CallId, Content, CoreError, CorrelationId, Delivery, EventBody, EventId, EventRecord,
    HubEvent, Input, Op, Origin, Output, Seq, Target, Transmit, UserId, UserRef, WsMessage,
};
use serde_json::{json, Value};

fn session() -> Harness<JsonSession> {
    session_with(json!({}))
}

/// A session of a plugin configured with `extra` besides the tests' usual keys.
fn session_with(extra: Value) -> Harness<JsonSession> {
    let mut config = json!({"handshake_timeout_secs": 5, "enabled": true});
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let protocol = Json::from_config(&config).unwrap();
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
            _ => None,
        })
        .collect()
}

fn answer(id: CorrelationId, result: Result<Answer, CoreError>) -> Input {
    Input::Event(HubEvent::Answer { id, result })
}

fn alice() -> UserRef {
    UserRef {
        id: UserId(7),
        handle: "alice".into(),
    }
}

fn session_answer() -> Result<Answer, CoreError> {
    Ok(Answer::Session {
        token: "tok".into(),
        user: alice(),
        expires_unix_ms: u64::MAX,
    })
}

#[test]
fn identification_and_standards_are_answered_locally() {
    let mut h = session();
    let out = sent(&h.input(text(json!({"type": "identification", "version": "1.0.0"}))));
    assert_eq!(out[0]["type"], "identification");
    assert_eq!(out[0]["resp_code"], 0);
    assert_eq!(out[0]["invitations"], true);
    let out = sent(&h.input(text(
        json!({"type": "protocol.standard", "standards": "ciphers,hashes"}),
    )));
    assert_eq!(out[0]["hashes"], json!(["argon2id", "sha256"]));
}

#[test]
fn signin_reply_says_signup_and_errors_carry_codes() {
    let mut h = session();
    let outs = h.input(text(
        json!({"type": "signin", "username": "alice", "password": "pw"}),
    ));
    let cmd = &commands(&outs)[0];
    assert_eq!(
        cmd.op,
        Op::Signin {
            handle: "alice".into(),
            password: "pw".into()
        }
    );
    let out = sent(&h.input(answer(cmd.id, session_answer())));
    assert_eq!(
        out[0],
        json!({"type": "signup", "resp_code": 0, "session": "tok", "request": "signin"})
    );

    let outs = h.input(text(
        json!({"type": "signin", "username": "bob", "password": "pw"}),
    ));
    let cmd = &commands(&outs)[0];
    let out = sent(&h.input(answer(cmd.id, Err(CoreError::NoSuchUser))));
    assert_eq!(out[0]["resp_code"], 5);
    assert_eq!(out[0]["session"], "");

    let out = sent(&h.input(text(
        json!({"type": "signup", "username": "x", "password": "y", "hash": "md5"}),
    )));
    assert_eq!(out[0]["resp_code"], 3);
}

#[test]
fn message_checks_token_once_then_source_and_keeps_order() {
    let mut h = session();
    let msg = |n: u32| {
        text(
            json!({"type": "message", "session": "tok", "source": "alice", "dest": "bob", "nonce": "n", "message": format!("m{n}")}),
        )
    };
    let outs = h.input(msg(1));
    let check = &commands(&outs)[0];
    assert_eq!(
        check.op,
        Op::CheckToken {
            token: "tok".into()
        }
    );
    // A second request while the check is out waits behind the first.
    assert!(commands(&h.input(msg(2))).is_empty());
    let outs = h.input(answer(check.id, session_answer()));
    let cmds = commands(&outs);
    assert_eq!(cmds[0].op, Op::Authenticate { user: UserId(7) });
    let bodies: Vec<Value> = cmds[1..]
        .iter()
        .map(|c| match &c.op {
            Op::Send {
                to,
                content: Content::Sealed { scheme, bytes },
            } => {
                assert_eq!(to, &hub_plugin_sdk::Address::Handle("bob".into()));
                assert_eq!(scheme, "json/message");
                serde_json::from_slice(bytes).unwrap()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(bodies[0]["message"], "m1");
    assert_eq!(bodies[1]["message"], "m2");
    assert!(
        bodies[0].get("session").is_none(),
        "the token is never forwarded"
    );

    // Spoofed source: refused with BAD_TOKEN, nothing sent to the core.
    let outs = h.input(text(json!({"type": "message", "session": "tok", "source": "mallory", "dest": "bob", "message": "x"})));
    assert!(commands(&outs).is_empty());
    assert_eq!(sent(&outs)[0]["resp_code"], 1);
}

#[test]
fn bad_input_gets_resp_codes_and_the_session_survives() {
    let mut h = session();
    let out = sent(&h.input(Input::Message(WsMessage::Text("{not json".into()))));
    assert_eq!(
        (out[0]["type"].clone(), out[0]["resp_code"].clone()),
        (json!("error"), json!(7))
    );
    let out = sent(&h.input(text(json!({"type": "teleport", "session": "t"}))));
    assert_eq!(out[0]["resp_code"], 8);
    let out = sent(&h.input(text(json!([1, 2]))));
    assert_eq!(out[0]["resp_code"], 7);
    let out = sent(&h.input(text(json!({"type": "signup", "username": 5}))));
    assert_eq!(out[0]["resp_code"], 7);
    let outs = h.input(Input::TooLarge { limit: 10 });
    assert_eq!(sent(&outs)[0]["resp_code"], 10);
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Close(c) if c.code == Some(1009))));
}

fn subscribed() -> Harness<JsonSession> {
    subscribed_from(session())
}

fn subscribed_from(mut h: Harness<JsonSession>) -> Harness<JsonSession> {
    let outs = h.input(text(json!({"type": "subscribe", "session": "tok"})));
    let check = commands(&outs)[0].clone();
    let outs = h.input(answer(check.id, session_answer()));
    let bind = commands(&outs)[0].clone();
    assert_eq!(
        bind.op,
        Op::Bind {
            user: UserId(7),
            exclusive: false,
            resume_after: None
        }
    );
    let out = sent(&h.input(answer(
        bind.id,
        Ok(Answer::Bound {
            user: alice(),
            cursor: Seq(3),
        }),
    )));
    assert_eq!(out[0], json!({"type": "subscribe", "resp_code": 0}));
    h
}

fn delivery(seq: u64, body: EventBody) -> Input {
    Input::Event(HubEvent::Deliver(Delivery {
        seq: Seq(seq),
        event: EventRecord {
            id: EventId(100 + seq),
            at_unix_ms: 0,
            origin: Origin {
                plugin: "json".into(),
                conn: None,
            },
            from: UserRef {
                id: UserId(8),
                handle: "bob".into(),
            },
            to: Target::User(alice()),
            body,
        },
    }))
}

#[test]
fn deliveries_are_acknowledged_by_pong_not_before() {
    let mut h = subscribed();
    let outs = h.input(delivery(4, EventBody::Message(Content::Text("hi".into()))));
    assert_eq!(
        sent(&outs)[0],
        json!({"type": "message", "source": "bob", "dest": "alice", "message": "hi"})
    );
    assert!(commands(&outs).is_empty(), "no ack before proof of receipt");
    let ping = outs.iter().find_map(|o| match o {
        Output::Transmit(Transmit::Message(WsMessage::Ping(p))) => Some(p.clone()),
        _ => None,
    });
    assert_eq!(ping, Some(4u64.to_be_bytes().to_vec()));
    // More deliveries while the ping is out: no second ping yet.
    let outs = h.input(delivery(
        5,
        EventBody::Contact(hub_plugin_sdk::ContactNotice::Requested),
    ));
    assert_eq!(
        sent(&outs)[0],
        json!({"type": "invite.request", "source": "bob", "dest": "alice"})
    );
    assert!(!outs
        .iter()
        .any(|o| matches!(o, Output::Transmit(Transmit::Message(WsMessage::Ping(_))))));
    let outs = h.input(Input::Message(WsMessage::Pong(4u64.to_be_bytes().to_vec())));
    assert_eq!(commands(&outs)[0].op, Op::Ack { through: Seq(4) });
    assert!(outs.iter().any(|o| matches!(o, Output::Transmit(Transmit::Message(WsMessage::Ping(p))) if p == &5u64.to_be_bytes().to_vec())));
    // A pong that never comes (the client answered a later keep-alive ping instead):
    // the receipt ping is sent again.
    let outs = h.advance(5_000);
    assert!(outs.iter().any(|o| matches!(o, Output::Transmit(Transmit::Message(WsMessage::Ping(p))) if p == &5u64.to_be_bytes().to_vec())));
    // A close, even a clean one, proves nothing: seq 5 stays unacknowledged.
    let outs = h.input(Input::Closed { clean: true });
    assert!(commands(&outs).is_empty());
}

#[test]
fn with_a_receipt_gap_the_next_ping_waits_for_it() {
    let mut h = subscribed_from(session_with(json!({"receipt_gap_ms": 10})));
    let is_ping = |seq: u64| move |o: &Output| matches!(o, Output::Transmit(Transmit::Message(WsMessage::Ping(p))) if p == &seq.to_be_bytes().to_vec());
    let outs = h.input(delivery(4, EventBody::Message(Content::Text("a".into()))));
    assert!(outs.iter().any(is_ping(4)), "the first ping goes at once");
    let outs = h.input(Input::Message(WsMessage::Pong(4u64.to_be_bytes().to_vec())));
    assert_eq!(commands(&outs)[0].op, Op::Ack { through: Seq(4) });
    let outs = h.input(delivery(5, EventBody::Message(Content::Text("b".into()))));
    assert!(
        !outs.iter().any(is_ping(5)),
        "within 10 ms of the last ping"
    );
    let outs = h.input(delivery(6, EventBody::Message(Content::Text("c".into()))));
    assert!(!outs.iter().any(is_ping(6)));
    assert!(!h.advance(9).iter().any(is_ping(6)));
    assert!(
        h.advance(1).iter().any(is_ping(6)),
        "one ping for both, at the gap's end"
    );
}

#[test]
fn deliveries_that_overtake_the_subscribe_answer_wait_for_it() {
    let mut h = session();
    let outs = h.input(text(json!({"type": "subscribe", "session": "tok"})));
    let check = commands(&outs)[0].clone();
    let bind = commands(&h.input(answer(check.id, session_answer())))[0].clone();
    // The backlog's first event arrives before the bind answer.
    assert!(h
        .input(delivery(
            4,
            EventBody::Message(Content::Text("early".into()))
        ))
        .is_empty());
    let outs = h.input(answer(
        bind.id,
        Ok(Answer::Bound {
            user: alice(),
            cursor: Seq(3),
        }),
    ));
    let objects = sent(&outs);
    assert_eq!(objects[0], json!({"type": "subscribe", "resp_code": 0}));
    assert_eq!(objects[1]["message"], "early");
    let outs = h.input(Input::Message(WsMessage::Pong(4u64.to_be_bytes().to_vec())));
    assert_eq!(commands(&outs)[0].op, Op::Ack { through: Seq(4) });
}

#[test]
fn calls_map_to_core_commands_and_events() {
    let mut h = subscribed();
    let outs = h.input(text(json!({"type": "call.start", "session": "tok", "source": "alice", "dest": "bob", "data": {"sdp": "x"}})));
    let cmd = commands(&outs)[0].clone();
    assert_eq!(
        cmd.op,
        Op::CallStart {
            to: hub_plugin_sdk::Address::Handle("bob".into()),
            data: br#"{"sdp":"x"}"#.to_vec()
        }
    );
    let out = sent(&h.input(answer(cmd.id, Err(CoreError::Busy))));
    assert_eq!(out[0]["resp_code"], 12);
    let outs = h.input(delivery(
        6,
        EventBody::Call {
            call: CallId(3),
            notice: hub_plugin_sdk::CallNotice::Ring {
                data: br#"{"sdp":"y"}"#.to_vec(),
            },
        },
    ));
    assert_eq!(
        sent(&outs)[0],
        json!({"type": "call.ring", "call": "3", "source": "bob", "dest": "alice", "data": {"sdp": "y"}})
    );
}

#[test]
fn unsubscribed_connections_time_out() {
    let mut h = session();
    assert_eq!(h.deadline(), Some(5000));
    assert!(h.advance(4999).is_empty());
    let outs = h.advance(1);
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Close(c) if c.code == Some(1008))));
}

/// Arbitrary and mutated frames never panic the session, and every text frame that is
/// not a known request is answered (the session never goes silent on garbage).
#[test]
fn random_and_mutated_frames_never_panic() {
    let seeds = [
        json!({"type": "message", "session": "tok", "source": "alice", "dest": "bob", "nonce": "n", "message": "m"}),
        json!({"type": "signup", "username": "u", "password": "p", "hash": "sha256"}),
        json!({"type": "call.accept", "session": "tok", "source": "alice", "call": "7", "data": {"a": [1, 2]}}),
        json!({"type": "room.join", "session": "tok", "source": "alice", "dest": "#r"}),
        json!({"type": "subscribe", "session": "tok"}),
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut h = subscribed();
    for round in 0..20_000 {
        let seed = seeds[(rng.next_u64() % seeds.len() as u64) as usize].to_string();
        let mut bytes = seed.into_bytes();
        for _ in 0..(rng.next_u64() % 6) {
            let at = (rng.next_u64() % bytes.len() as u64) as usize;
            match rng.next_u64() % 3 {
                0 => bytes[at] = rng.next_u64() as u8,
                1 => {
                    bytes.remove(at);
                }
                _ => {
                    let alphabet = b"{}[]\":,\\0u";
                    bytes.insert(
                        at,
                        alphabet[(rng.next_u64() % alphabet.len() as u64) as usize],
                    );
                }
            }
            if bytes.is_empty() {
                bytes.push(b'{');
            }
        }
        let input = match String::from_utf8(bytes) {
            Ok(text) => Input::Message(WsMessage::Text(text)),
            Err(e) => Input::Message(WsMessage::Binary(e.into_bytes())),
        };
        let outs = h.input(input);
        // Answer every command with a random core outcome, as the hub would.
        for command in commands(&outs) {
            let result = match rng.next_u64() % 4 {
                0 => session_answer(),
                1 => Err(CoreError::NoSuchUser),
                2 => Ok(Answer::Done),
                _ => Ok(Answer::Accepted {
                    event: EventId(round),
                }),
            };
            h.input(answer(command.id, result));
        }
    }
}

#[test]
fn a_second_subscribe_while_the_first_binds_is_code_7_and_keeps_the_connection() {
    let mut h = session();
    let outs = h.input(text(json!({"type": "subscribe", "session": "tok"})));
    assert_eq!(commands(&outs).len(), 1);
    let outs = h.input(text(json!({"type": "subscribe", "session": "tok"})));
    assert!(commands(&outs).is_empty());
    assert_eq!(sent(&outs)[0]["resp_code"], 7);
    assert!(!outs.iter().any(|o| matches!(o, Output::Close(_))));
}

#[test]
fn requests_behind_token_checks_keep_their_order() {
    let mut h = session();
    let msg = |token: &str, text: &str| {
        let source = if token == "tok" { "alice" } else { "bob" };
        text_input(
            json!({"type": "message", "session": token, "source": source, "dest": "carol", "message": text}),
        )
    };
    fn text_input(v: Value) -> Input {
        text(v)
    }
    let check_a = commands(&h.input(msg("tok", "r1")))[0].clone();
    assert!(commands(&h.input(msg("tok2", "r2"))).is_empty());
    assert!(commands(&h.input(msg("tok", "r3"))).is_empty());
    let outs = h.input(answer(check_a.id, session_answer()));
    let cmds = commands(&outs);
    // r1 goes out; r2 needs its own token check and r3 waits behind it.
    assert!(matches!(&cmds[1].op, Op::Send { content: Content::Text(t), .. } if t == "r1"));
    assert_eq!(
        cmds[2].op,
        Op::CheckToken {
            token: "tok2".into()
        }
    );
    assert_eq!(cmds.len(), 3);
    let bob = Ok(Answer::Session {
        token: "tok2".into(),
        user: UserRef {
            id: UserId(9),
            handle: "bob".into(),
        },
        expires_unix_ms: u64::MAX,
    });
    let outs = h.input(answer(cmds[2].id, bob));
    // r2's token belongs to another user than the connection's: refused, then r3 goes.
    assert_eq!(sent(&outs)[0]["resp_code"], 1);
    assert!(
        matches!(&commands(&outs)[0].op, Op::Send { content: Content::Text(t), .. } if t == "r3")
    );
}
