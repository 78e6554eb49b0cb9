//! The P2P sessions as state machines: requests answered through scripted core answers,
//! the service's sending, acknowledging and relaying driven by fetch answers. No sockets.

use super::*;
use crate::contact::{Contact, State};
use hub_plugin_sdk::testing::{commands, Harness};
use hub_plugin_sdk::{
    Address, Answer, CoreError, CorrelationId, Delivery, EventBody, EventId, EventRecord,
    FetchRequest, HttpRequest, HttpResponse, HubEvent, Op, Origin, Seq, Target as HubTarget,
    Transmit, UserId, UserRef,
};
use serde_json::{json, Value};

const A: &str = "127.0.0.2:8000";
const B: &str = "127.0.0.3:8000";
const C: &str = "127.0.0.4:8000";

fn protocol() -> P2p {
    P2p::from_config(&json!({"owner": "alice", "ping_secs": 5, "enabled": true})).unwrap()
}

fn info(transport: Transport, peer: &str) -> SessionInfo {
    SessionInfo {
        conn: hub_plugin_sdk::ConnId(1),
        role: "main".into(),
        transport,
        peer: peer.into(),
        local: A.into(),
    }
}

fn request(peer_ip: &str, body: Value) -> Harness<P2pSession> {
    let mut h = Harness::new(protocol().open(info(Transport::Http, &format!("{peer_ip}:5555"))));
    h.input(Input::Opened);
    let now = h.now();
    h.session().handle_input(now, Input::Request(post(body)));
    h
}

fn post(body: Value) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        target: "/".into(),
        headers: vec![],
        body: body.to_string().into_bytes(),
    }
}

/// Drains what the session has queued (after `request`'s direct input).
fn drain(h: &mut Harness<P2pSession>) -> Vec<Output> {
    let mut out = Vec::new();
    loop {
        match h.session().poll_output() {
            Output::Timeout(_) => return out,
            other => out.push(other),
        }
    }
}

fn answer(id: CorrelationId, result: Result<Answer, CoreError>) -> Input {
    Input::Event(HubEvent::Answer { id, result })
}

fn response(outputs: &[Output]) -> Option<(u16, Value)> {
    outputs.iter().find_map(|o| match o {
        Output::Transmit(Transmit::Response(r)) => Some((
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )),
        _ => None,
    })
}

fn user(id: u64, handle: &str) -> UserRef {
    UserRef {
        id: UserId(id),
        handle: handle.into(),
    }
}

fn stored_contact(our_key: &str, key: &str) -> Vec<u8> {
    Contact {
        nick: "b".into(),
        can_resend: 1,
        key: key.into(),
        our_key: our_key.into(),
    }
    .to_bytes()
}

/// Answers the key lookups of an authenticated request from B presenting `ourkey`.
fn authenticate(h: &mut Harness<P2pSession>, outs: Vec<Output>) -> Vec<Output> {
    let load_key = &commands(&outs)[0];
    assert_eq!(
        load_key.op,
        Op::Load {
            key: b"key/ourkey".to_vec()
        }
    );
    let outs = h.input(answer(
        load_key.id,
        Ok(Answer::Value(Some(B.as_bytes().to_vec()))),
    ));
    let load_contact = &commands(&outs)[0];
    h.input(answer(
        load_contact.id,
        Ok(Answer::Value(Some(stored_contact("ourkey", "theirkey")))),
    ))
}

#[test]
fn a_send_with_the_right_key_is_stored_once_for_the_owner() {
    let message = json!({"action":"send","from":B,"to":A,"message":"hi","timestamp":7,"enctype":"","key":"ourkey","id":"127.0.0.3:8000/9"});
    let mut h = request("127.0.0.3", message);
    let outs = drain(&mut h);
    let outs = authenticate(&mut h, outs);
    let cmds = commands(&outs);
    assert!(matches!(&cmds[0].op, Op::Signal { data } if data == b"seen 127.0.0.3:8000"));
    let alias = cmds.last().unwrap();
    assert!(matches!(&alias.op, Op::Alias { native, .. } if native == B));
    let outs = h.input(answer(alias.id, Ok(Answer::User(user(3, B)))));
    let send = commands(&outs).into_iter().next_back().unwrap();
    let Op::SendOnce { key, from, to, .. } = &send.op else {
        panic!("a send: {:?}", send.op)
    };
    assert_eq!(key, b"p2p/127.0.0.3:8000/9");
    assert_eq!(*from, Some(UserId(3)));
    assert_eq!(*to, Address::Handle("alice".into()));
    let outs = h.input(answer(send.id, Ok(Answer::Accepted { event: EventId(1) })));
    assert_eq!(response(&outs), Some((200, json!({"status": 1}))));
}

#[test]
fn a_wrong_key_is_refused_and_nothing_is_stored() {
    let message = json!({"action":"send","from":B,"to":A,"message":"hi","key":"guess"});
    let mut h = request("127.0.0.3", message);
    let outs = drain(&mut h);
    let lookup = &commands(&outs)[0];
    let outs = h.input(answer(lookup.id, Ok(Answer::Value(None))));
    assert_eq!(response(&outs).map(|r| r.0), Some(403));
    assert!(commands(&outs).is_empty(), "nothing stored");
}

#[test]
fn history_answers_a_status_per_message() {
    let body = json!({"action":"history","from":B,"key":"ourkey","messages":[
        {"from":B,"to":A,"message":"one","id":"x/1"},
        {"bad":true},
        {"from":B,"to":"127.0.0.9:1","message":"not for this node","id":"x/3"}]});
    let mut h = request("127.0.0.3", body);
    let outs = drain(&mut h);
    let outs = authenticate(&mut h, outs);
    let alias = commands(&outs).into_iter().next_back().unwrap();
    let outs = h.input(answer(alias.id, Ok(Answer::User(user(3, B)))));
    let send = commands(&outs).into_iter().next_back().unwrap();
    let outs = h.input(answer(send.id, Ok(Answer::Accepted { event: EventId(1) })));
    assert_eq!(response(&outs), Some((200, json!({"status": [1, 0, 0]}))));
}

#[test]
fn a_handshake_from_a_stranger_makes_a_contact_with_a_key_of_ours() {
    let body = json!({"action":"handshake","from":B,"key":"theirkey","nick":"bee"});
    let mut h = request("127.0.0.3", body);
    let outs = drain(&mut h);
    let load = &commands(&outs)[0];
    let outs = h.input(answer(load.id, Ok(Answer::Value(None))));
    let scan = &commands(&outs)[0];
    let outs = h.input(answer(scan.id, Ok(Answer::Entries(vec![]))));
    let cmds = commands(&outs);
    let store = cmds.last().unwrap();
    let Op::Store {
        key,
        value: Some(value),
    } = &store.op
    else {
        panic!("the contact is stored")
    };
    assert_eq!(key, b"contact/127.0.0.3:8000");
    let contact = Contact::from_bytes(value).unwrap();
    assert_eq!(contact.key, "theirkey");
    assert_eq!(contact.nick, "bee");
    assert_eq!(contact.our_key.len(), 64);
    assert!(cmds.iter().any(|c| c.op
        == Op::Store {
            key: format!("key/{}", contact.our_key).into_bytes(),
            value: Some(B.as_bytes().to_vec())
        }));
    let outs = h.input(answer(store.id, Ok(Answer::Done)));
    assert!(commands(&outs)
        .iter()
        .any(|c| matches!(&c.op, Op::Signal { data } if data == b"contact 127.0.0.3:8000")));
    assert_eq!(response(&outs), Some((200, json!({"status": 1}))));

    // The same handshake from another address is refused.
    let body = json!({"action":"handshake","from":B,"key":"theirkey"});
    let mut h = request("127.0.0.9", body);
    assert_eq!(response(&drain(&mut h)).map(|r| r.0), Some(403));
}

#[test]
fn pings_pages_and_bad_requests_are_answered_at_once() {
    let mut h = request("127.0.0.3", json!({"action":"ping"}));
    let (status, body) = response(&drain(&mut h)).unwrap();
    assert_eq!(
        (status, body["action"].clone(), body["addr"].clone()),
        (200, json!("pong"), json!(A))
    );
    let mut h = request("127.0.0.3", json!({"action":"fly"}));
    assert_eq!(response(&drain(&mut h)).map(|r| r.0), Some(400));
    let mut h = Harness::new(protocol().open(info(Transport::Http, "127.0.0.3:1")));
    let page = HttpRequest {
        method: "GET".into(),
        target: "/".into(),
        headers: vec![],
        body: vec![],
    };
    let outs = h.input(Input::Request(page));
    let Some(Output::Transmit(Transmit::Response(HttpResponse { status, body, .. }))) =
        outs.first()
    else {
        panic!("the page")
    };
    assert_eq!(*status, 200);
    let page = String::from_utf8_lossy(body);
    for id in [
        "login-user",
        "contacts",
        "conversation",
        "message-input",
        "send-button",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "the page has #{id}");
    }
}

#[test]
fn gui_actions_need_the_owners_session() {
    let mut h = request("127.0.0.1", json!({"action":"contacts","session":"tok"}));
    let outs = drain(&mut h);
    let check = &commands(&outs)[0];
    let bob = Answer::Session {
        token: "tok".into(),
        user: user(8, "bob"),
        expires_unix_ms: u64::MAX,
    };
    let outs = h.input(answer(check.id, Ok(bob)));
    assert_eq!(
        response(&outs).map(|r| r.0),
        Some(403),
        "bob is not the owner"
    );
    let mut h = request(
        "127.0.0.1",
        json!({"action":"login","user":"bob","password":"x"}),
    );
    assert_eq!(response(&drain(&mut h)).map(|r| r.0), Some(403));
}

// ----- the service -------------------------------------------------------------------

fn delivery(seq: u64, text: &str) -> Delivery {
    Delivery {
        seq: Seq(seq),
        event: EventRecord {
            id: EventId(100 + seq),
            at_unix_ms: 1_700_000_000_000,
            origin: Origin {
                plugin: "json".into(),
                conn: None,
            },
            from: user(1, "alice"),
            to: HubTarget::User(user(3, B)),
            body: EventBody::Message(hub_plugin_sdk::Content::Text(text.into())),
        },
    }
}

fn fetches(outputs: &[Output]) -> Vec<FetchRequest> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Fetch(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn reply(id: u64, body: Value) -> Input {
    Input::Fetched {
        id,
        result: Ok(HttpResponse {
            status: 200,
            headers: vec![],
            body: body.to_string().into_bytes(),
        }),
    }
}

fn body(fetch: &FetchRequest) -> Value {
    serde_json::from_slice(&fetch.body).unwrap()
}

/// A started service with contacts B and C (both keyed, recently seen) and peer B.
fn service() -> Harness<P2pSession> {
    let mut h = Harness::new(protocol().open(info(Transport::Service, "")));
    let outs = h.input(Input::Opened);
    let scan = &commands(&outs)[0];
    let entries = vec![
        (
            b"contact/127.0.0.3:8000".to_vec(),
            stored_contact("ourB", "keyB"),
        ),
        (
            b"contact/127.0.0.4:8000".to_vec(),
            stored_contact("ourC", "keyC"),
        ),
    ];
    let outs = h.input(answer(scan.id, Ok(Answer::Entries(entries))));
    let scan = &commands(&outs)[0];
    let fresh = State {
        last_online: 1_700_000_000,
        last_connect: 1_700_000_000,
        acked: true,
        relay_refused: false,
    };
    let states = vec![
        (b"state/127.0.0.3:8000".to_vec(), fresh.to_bytes()),
        (b"state/127.0.0.4:8000".to_vec(), fresh.to_bytes()),
    ];
    let outs = h.input(answer(scan.id, Ok(Answer::Entries(states))));
    let scan = &commands(&outs)[0];
    let outs = h.input(answer(
        scan.id,
        Ok(Answer::Entries(vec![(
            b"peer/127.0.0.3:8000".to_vec(),
            vec![],
        )])),
    ));
    let alias = &commands(&outs)[0];
    assert!(matches!(&alias.op, Op::Alias { native, .. } if native == B));
    let outs = h.input(answer(alias.id, Ok(Answer::User(user(3, B)))));
    let puppet = &commands(&outs)[0];
    assert_eq!(puppet.op, Op::Puppet { user: UserId(3) });
    h.input(answer(
        puppet.id,
        Ok(Answer::Bound {
            user: user(3, B),
            cursor: Seq(0),
        }),
    ));
    h
}

fn puppet_delivery(d: Delivery) -> Input {
    Input::Event(HubEvent::PuppetDeliver {
        user: UserId(3),
        delivery: d,
    })
}

#[test]
fn the_service_sends_with_the_contacts_key_and_acknowledges_what_was_taken() {
    let mut h = service();
    let outs = h.input(puppet_delivery(delivery(1, "hello")));
    let send = &fetches(&outs)[0];
    assert_eq!(send.url, "http://127.0.0.3:8000/");
    assert_eq!(send.from_ip.as_deref(), Some("127.0.0.2"));
    let sent = body(send);
    assert_eq!(sent["action"], "send");
    assert_eq!(sent["key"], "keyB");
    assert_eq!(sent["from"], A, "the owner's messages come from the node");
    assert_eq!(sent["id"], "127.0.0.2:8000/101");
    let outs = h.input(reply(send.id, json!({"status": 1})));
    assert!(commands(&outs).iter().any(|c| c.op
        == Op::PuppetAck {
            user: UserId(3),
            through: Seq(1)
        }));
}

#[test]
fn history_statuses_acknowledge_only_a_prefix_and_zeros_are_sent_again() {
    let mut h = service();
    // One in flight, two more queue behind it.
    let outs = h.input(puppet_delivery(delivery(1, "one")));
    let first = fetches(&outs)[0].clone();
    h.input(puppet_delivery(delivery(2, "two")));
    h.input(puppet_delivery(delivery(3, "three")));
    let outs = h.input(reply(first.id, json!({"status": 1})));
    let batch = fetches(&outs)[0].clone();
    assert_eq!(body(&batch)["action"], "history");
    assert_eq!(body(&batch)["messages"].as_array().unwrap().len(), 2);
    // The first of the two is refused, the second taken: nothing new is acknowledged.
    let outs = h.input(reply(batch.id, json!({"status": [0, 1]})));
    assert!(!commands(&outs)
        .iter()
        .any(|c| matches!(c.op, Op::PuppetAck { through, .. } if through > Seq(1))));
}

#[test]
fn an_unreachable_node_gets_its_messages_relayed_once_and_a_refusing_relay_is_not_asked_again() {
    let mut h = service();
    let outs = h.input(puppet_delivery(delivery(1, "for later")));
    let send = fetches(&outs)[0].clone();
    let outs = h.input(Input::Fetched {
        id: send.id,
        result: Err(hub_plugin_sdk::FetchError::Timeout),
    });
    let relay = fetches(&outs)[0].clone();
    assert_eq!(relay.url, format!("http://{C}/"));
    let relayed = body(&relay);
    assert_eq!(relayed["action"], "resend");
    assert_eq!(relayed["key"], "keyC");
    assert_eq!(relayed["to"], B);
    assert_eq!(relayed["id"], "127.0.0.2:8000/101");
    // Not acknowledged: it waits for B.
    assert!(!commands(&outs)
        .iter()
        .any(|c| matches!(c.op, Op::PuppetAck { .. })));
    let outs = h.input(reply(relay.id, json!({"status": 0})));
    let Some(Op::Store {
        key,
        value: Some(value),
    }) = commands(&outs).into_iter().map(|c| c.op).next_back()
    else {
        panic!("the relay's state is stored")
    };
    assert_eq!(key, b"state/127.0.0.4:8000");
    assert!(State::from_bytes(&value).unwrap().relay_refused);
}

#[test]
fn signals_from_requests_bring_contacts_and_peers_in() {
    let mut h = service();
    // B presented its key: a successful exchange.
    let outs = h.input(Input::Event(HubEvent::Signal {
        data: b"seen 127.0.0.3:8000".to_vec(),
    }));
    assert!(commands(&outs)
        .iter()
        .any(|c| matches!(&c.op, Op::Store { key, .. } if key == b"state/127.0.0.3:8000")));
    // A new remote address to carry.
    let outs = h.input(Input::Event(HubEvent::Signal {
        data: b"peer bob@127.0.0.4:8000".to_vec(),
    }));
    assert!(
        matches!(&commands(&outs)[0].op, Op::Alias { native, .. } if native == "bob@127.0.0.4:8000")
    );
}

#[test]
fn config_is_checked() {
    assert!(P2p::from_config(&json!({"address": "example.org:1"})).is_err());
    assert!(P2p::from_config(&json!({"ping_secs": 0})).is_err());
    assert!(P2p::from_config(&json!({"nonsense": 1})).is_err());
    assert!(P2p::from_config(&json!({"address": "[fc00::1]:8000"})).is_ok());
}
