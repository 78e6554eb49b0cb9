//! End to end: the JSON protocol against the real `hub` binary, with the independent
//! client (`hub_tests::json_client`, written from the spec and docs/protocols/json.md).

use hub_tests::harness::{Hub, HubOptions};
use hub_tests::json_client::{ClientError, JsonClient};
use hub_tests::json_crypto::{initiate, respond, Identity};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn hub() -> Hub {
    Hub::start(HubOptions::with(&["json"]))
}

/// Connects, signs up (`sha256` scheme) and returns the client and its token.
fn signup(hub: &Hub, name: &str) -> (JsonClient, String) {
    let mut client = JsonClient::connect(hub.addr("json", "main")).unwrap();
    let reply = client
        .signup(name, &format!("pw-{name}"), "sha256")
        .unwrap();
    assert_eq!(reply["resp_code"], 0, "{reply}");
    let token = reply["session"].as_str().unwrap().to_owned();
    (client, token)
}

/// Signs up and subscribes.
fn online(hub: &Hub, name: &str) -> (JsonClient, String) {
    let (mut client, token) = signup(hub, name);
    let reply = client.subscribe(&token).unwrap();
    assert_eq!(reply, json!({"type": "subscribe", "resp_code": 0}));
    (client, token)
}

fn befriend(
    a: &mut JsonClient,
    a_name: &str,
    a_token: &str,
    b: &mut JsonClient,
    b_name: &str,
    b_token: &str,
) {
    a.request("invite.request", a_token, a_name, b_name, json!({}))
        .unwrap();
    let invite = b.recv_type("invite.request", T).unwrap();
    assert_eq!(
        invite,
        json!({"type": "invite.request", "source": a_name, "dest": b_name})
    );
    b.request("invite.accept", b_token, b_name, a_name, json!({}))
        .unwrap();
    let accept = a.recv_type("invite.accept", T).unwrap();
    assert_eq!(
        accept,
        json!({"type": "invite.accept", "source": b_name, "dest": a_name})
    );
}

/// After a client has read its events (and answered the hub's receipt pings while
/// waiting), a new subscription receives nothing again.
fn nothing_is_delivered_twice(hub: &Hub, mut client: JsonClient, token: &str) {
    client.expect_silence(Duration::from_millis(500)).unwrap();
    client.close().unwrap();
    let mut again = JsonClient::connect(hub.addr("json", "main")).unwrap();
    assert_eq!(again.subscribe(token).unwrap()["resp_code"], 0);
    again.expect_silence(Duration::from_millis(700)).unwrap();
}

#[test]
fn two_users_sign_up_befriend_exchange_keys_and_encrypted_messages_both_ways() {
    let hub = hub();
    let mut alice = JsonClient::connect(hub.addr("json", "main")).unwrap();
    let id = alice.identify().unwrap();
    assert_eq!(
        (id["type"].clone(), id["resp_code"].clone()),
        (json!("identification"), json!(0))
    );
    let standards = alice.standards().unwrap();
    assert!(standards["hashes"]
        .as_array()
        .unwrap()
        .contains(&json!("sha256")));
    assert_eq!(
        alice.signup("alice", "pw-alice", "argon2id").unwrap()["resp_code"],
        0
    );
    // Sign in on a fresh connection: the reply says "signup" (what real clients expect).
    let mut alice = JsonClient::connect(hub.addr("json", "main")).unwrap();
    let signin = alice.signin("alice", "pw-alice").unwrap();
    assert_eq!(
        (signin["type"].clone(), signin["resp_code"].clone()),
        (json!("signup"), json!(0))
    );
    let a_token = signin["session"].as_str().unwrap().to_owned();
    assert_eq!(alice.subscribe(&a_token).unwrap()["resp_code"], 0);
    let (mut bob, b_token) = online(&hub, "bob");

    befriend(&mut alice, "alice", &a_token, &mut bob, "bob", &b_token);
    // Accepted contacts see each other online.
    let status = alice.recv_type("status", T).unwrap();
    assert_eq!(
        status,
        json!({"type": "status", "source": "bob", "status": "online"})
    );

    // X3DH through the hub, then XChaCha20 content both ways.
    let (alice_id, bob_id) = (Identity::new(), Identity::new());
    let (initiator, init_fields) = initiate(&alice_id);
    alice
        .request(
            "key_exchange.initiate",
            &a_token,
            "alice",
            "bob",
            init_fields.clone(),
        )
        .unwrap();
    let relayed = bob.recv_type("key_exchange.initiate", T).unwrap();
    assert_eq!(relayed["source"], "alice");
    assert!(
        relayed.get("session").is_none(),
        "the token is never forwarded"
    );
    for key in ["ik", "spk", "opk"] {
        assert_eq!(relayed[key], init_fields[key], "{key} relayed unchanged");
    }
    let (bob_key, resp_fields) = respond(&bob_id, &relayed);
    bob.request(
        "key_exchange.responder",
        &b_token,
        "bob",
        "alice",
        resp_fields,
    )
    .unwrap();
    let relayed = alice.recv_type("key_exchange.responder", T).unwrap();
    let alice_key = initiator.complete(&relayed);
    assert_eq!(
        alice_key.0, bob_key.0,
        "both sides derived one key through the hub"
    );

    for n in 0..5 {
        let (nonce, ct) = alice_key.seal(&format!("hello bob {n}"));
        alice
            .request(
                "message",
                &a_token,
                "alice",
                "bob",
                json!({"nonce": nonce, "message": ct}),
            )
            .unwrap();
        let (nonce, ct) = bob_key.seal(&format!("hello alice {n}"));
        bob.request(
            "message",
            &b_token,
            "bob",
            "alice",
            json!({"nonce": nonce, "message": ct}),
        )
        .unwrap();
    }
    for n in 0..5 {
        let m = bob.recv_type("message", T).unwrap();
        assert_eq!(
            (m["source"].clone(), m["dest"].clone()),
            (json!("alice"), json!("bob"))
        );
        let text = bob_key.open(m["nonce"].as_str().unwrap(), m["message"].as_str().unwrap());
        assert_eq!(text.as_deref(), Some(format!("hello bob {n}").as_str()));
        let m = alice.recv_type("message", T).unwrap();
        let text = alice_key.open(m["nonce"].as_str().unwrap(), m["message"].as_str().unwrap());
        assert_eq!(text.as_deref(), Some(format!("hello alice {n}").as_str()));
    }

    // A message with an id is acknowledged once stored.
    let ack = alice
        .request_acked(
            "message",
            &a_token,
            "alice",
            "bob",
            json!({"message": "plain"}),
            "m-1",
        )
        .unwrap();
    assert_eq!(
        (
            ack["type"].clone(),
            ack["request"].clone(),
            ack["resp_code"].clone()
        ),
        (json!("ack"), json!("message"), json!(0))
    );
    let m = bob.recv_type("message", T).unwrap();
    assert_eq!(
        m,
        json!({"type": "message", "source": "alice", "dest": "bob", "message": "plain"})
    );

    // Bob leaves cleanly: alice sees him go offline.
    bob.close().unwrap();
    let status = alice.recv_type("status", T).unwrap();
    assert_eq!(
        status,
        json!({"type": "status", "source": "bob", "status": "offline"})
    );
}

#[test]
fn messages_to_an_offline_user_arrive_on_subscribe_in_order_once() {
    let hub = hub();
    let (mut alice, a_token) = online(&hub, "alice");
    let (bob, b_token) = signup(&hub, "bob");
    drop(bob);
    for n in 0..30 {
        let ack = alice
            .request_acked(
                "message",
                &a_token,
                "alice",
                "bob",
                json!({"message": format!("m{n}")}),
                &format!("id{n}"),
            )
            .unwrap();
        assert_eq!(ack["resp_code"], 0);
    }
    let mut bob = JsonClient::connect(hub.addr("json", "main")).unwrap();
    assert_eq!(bob.subscribe(&b_token).unwrap()["resp_code"], 0);
    for n in 0..30 {
        assert_eq!(
            bob.recv_type("message", T).unwrap()["message"],
            format!("m{n}")
        );
    }
    nothing_is_delivered_twice(&hub, bob, &b_token);
}

#[test]
fn an_acknowledged_message_survives_sigkill_and_is_delivered_once_after_restart() {
    let mut hub = hub();
    let (mut alice, a_token) = online(&hub, "alice");
    let (bob, b_token) = signup(&hub, "bob");
    drop(bob);
    let ack = alice
        .request_acked(
            "message",
            &a_token,
            "alice",
            "bob",
            json!({"message": "before the crash"}),
            "k1",
        )
        .unwrap();
    assert_eq!(ack["resp_code"], 0);
    drop(alice);

    hub.kill(); // SIGKILL: no shutdown, no final flush
    hub.restart();

    let mut bob = JsonClient::connect(hub.addr("json", "main")).unwrap();
    assert_eq!(
        bob.subscribe(&b_token).unwrap()["resp_code"],
        0,
        "the session token survived too"
    );
    let m = bob.recv_type("message", T).unwrap();
    assert_eq!(
        m,
        json!({"type": "message", "source": "alice", "dest": "bob", "message": "before the crash"})
    );
    nothing_is_delivered_twice(&hub, bob, &b_token);
}

#[test]
fn bad_input_gets_its_resp_code_and_the_hub_keeps_serving_everyone_else() {
    let hub = hub();
    let (mut alice, a_token) = online(&hub, "alice");
    let (mut bob, b_token) = online(&hub, "bob");
    let addr = hub.addr("json", "main");

    let mut c = JsonClient::connect(addr).unwrap();
    let reply = c.signin("alice", "wrong").unwrap();
    assert_eq!(
        (reply["type"].clone(), reply["resp_code"].clone()),
        (json!("signup"), json!(6))
    );
    let reply = c.signin("nobody", "x").unwrap();
    assert_eq!(reply["resp_code"], 5);
    let reply = c.signup("alice", "x", "sha256").unwrap();
    assert_eq!(reply["resp_code"], 2);
    let reply = c.signup("carol", "x", "md5").unwrap();
    assert_eq!(reply["resp_code"], 3);

    // Malformed JSON and unknown types are answered; the connection stays usable.
    c.send_text("{this is not json").unwrap();
    let reply = c.recv(T).unwrap();
    assert_eq!(
        (reply["type"].clone(), reply["resp_code"].clone()),
        (json!("error"), json!(7))
    );
    c.send(&json!({"type": "teleport"})).unwrap();
    assert_eq!(c.recv(T).unwrap()["resp_code"], 8);

    // Bad session on a request, then a spoofed source with a valid token.
    c.request(
        "message",
        "not-a-token",
        "alice",
        "bob",
        json!({"message": "x"}),
    )
    .unwrap();
    let reply = c.recv_type("message", T).unwrap();
    assert_eq!(reply["resp_code"], 1);
    c.request(
        "message",
        &a_token,
        "bob",
        "alice",
        json!({"message": "spoofed"}),
    )
    .unwrap();
    let reply = c.recv_type("message", T).unwrap();
    assert_eq!(reply["resp_code"], 1);
    alice.expect_silence(Duration::from_millis(300)).unwrap();

    // Unknown destination.
    bob.request(
        "message",
        &b_token,
        "bob",
        "nobody",
        json!({"message": "x"}),
    )
    .unwrap();
    assert_eq!(bob.recv_type("message", T).unwrap()["resp_code"], 5);

    // A bad subscribe token: code 1, then the hub disconnects.
    let mut d = JsonClient::connect(addr).unwrap();
    assert_eq!(d.subscribe("bogus").unwrap()["resp_code"], 1);
    assert!(d.wait_closed(T).is_ok());

    // An oversized frame: code 10, close 1009, before the hub buffers it.
    let mut e = JsonClient::connect(addr).unwrap();
    let big = format!(
        "{{\"type\":\"identification\",\"pad\":\"{}\"}}",
        "x".repeat(70_000)
    );
    let _ = e.send_text(&big);
    let reply = e.recv(T).unwrap();
    assert_eq!(
        (reply["type"].clone(), reply["resp_code"].clone()),
        (json!("error"), json!(10))
    );
    match e.wait_closed(T) {
        Ok(Some((code, _))) => assert_eq!(code, 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }

    // Binary frames are refused politely.
    let mut f = JsonClient::connect(addr).unwrap();
    f.send_binary(b"\x00\x01").unwrap();
    assert_eq!(f.recv(T).unwrap()["resp_code"], 7);

    // Everyone else is still served.
    bob.request(
        "message",
        &b_token,
        "bob",
        "alice",
        json!({"message": "still here"}),
    )
    .unwrap();
    assert_eq!(
        alice.recv_type("message", T).unwrap()["message"],
        "still here"
    );
    assert_eq!(hub.http_get("/health").0, 200);
}

#[test]
fn voice_calls_ring_accept_reject_hang_up_miss_and_busy() {
    let hub = Hub::start(HubOptions::with(&["json"]).env("HUB__CALLS__RING_TIMEOUT_SECS", "1"));
    let (mut alice, a) = online(&hub, "alice");
    let (mut bob, b) = online(&hub, "bob");
    let (mut carol, c) = online(&hub, "carol");

    let start = |client: &mut JsonClient, token: &str, from: &str, to: &str| -> Value {
        client
            .request(
                "call.start",
                token,
                from,
                to,
                json!({"data": {"sdp": "offer"}}),
            )
            .unwrap();
        client.recv_type("call.start", T).unwrap()
    };
    let reply = start(&mut alice, &a, "alice", "bob");
    assert_eq!(reply["resp_code"], 0);
    let call = reply["call"].as_str().unwrap().to_owned();
    let ring = bob.recv_type("call.ring", T).unwrap();
    assert_eq!(
        ring,
        json!({"type": "call.ring", "call": call, "source": "alice", "dest": "bob", "data": {"sdp": "offer"}})
    );
    // Busy while the call is on.
    assert_eq!(start(&mut carol, &c, "carol", "bob")["resp_code"], 12);
    bob.request(
        "call.accept",
        &b,
        "bob",
        "",
        json!({"call": call, "data": {"sdp": "answer"}}),
    )
    .unwrap();
    assert_eq!(bob.recv_type("call.accept", T).unwrap()["resp_code"], 0);
    let accepted = alice.recv_type("call.accepted", T).unwrap();
    assert_eq!(accepted["data"], json!({"sdp": "answer"}));
    alice
        .request("call.hangup", &a, "alice", "", json!({"call": call}))
        .unwrap();
    assert_eq!(bob.recv_type("call.ended", T).unwrap()["call"], call);

    // Rejected.
    let call = start(&mut carol, &c, "carol", "alice")["call"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.recv_type("call.ring", T).unwrap();
    alice
        .request("call.reject", &a, "alice", "", json!({"call": call}))
        .unwrap();
    assert_eq!(
        carol.recv_type("call.rejected", T).unwrap()["source"],
        "alice"
    );

    // Unanswered: both are told it was missed after the ring timeout (1 s here).
    let call = start(&mut bob, &b, "bob", "carol")["call"]
        .as_str()
        .unwrap()
        .to_owned();
    carol.recv_type("call.ring", T).unwrap();
    assert_eq!(bob.recv_type("call.missed", T).unwrap()["call"], call);
    assert_eq!(carol.recv_type("call.missed", T).unwrap()["call"], call);

    // Offline callee.
    let (_dave, _) = signup(&hub, "dave");
    assert_eq!(start(&mut alice, &a, "alice", "dave")["resp_code"], 11);
    // Accepting a call that is not ringing for you.
    alice
        .request("call.accept", &a, "alice", "", json!({"call": call}))
        .unwrap();
    assert_eq!(alice.recv_type("call.accept", T).unwrap()["resp_code"], 9);
}

#[test]
fn rooms_fan_out_to_members_and_sigterm_says_goodbye() {
    let mut hub = hub();
    let (mut alice, a) = online(&hub, "alice");
    let (mut bob, b) = online(&hub, "bob");
    let (mut carol, c) = online(&hub, "carol");
    for (client, token, name) in [(&mut alice, &a, "alice"), (&mut bob, &b, "bob")] {
        client
            .request("room.join", token, name, "#lobby", json!({}))
            .unwrap();
        assert_eq!(
            client.recv_type("room.join", T).unwrap(),
            json!({"type": "room.join", "resp_code": 0, "dest": "#lobby"})
        );
    }
    assert_eq!(
        alice.recv_type("room.join", T).unwrap(),
        json!({"type": "room.join", "source": "bob", "dest": "#lobby"})
    );
    carol
        .request(
            "message",
            &c,
            "carol",
            "#lobby",
            json!({"message": "let me in"}),
        )
        .unwrap();
    assert_eq!(carol.recv_type("message", T).unwrap()["resp_code"], 9);
    bob.request(
        "message",
        &b,
        "bob",
        "#lobby",
        json!({"message": "hi room"}),
    )
    .unwrap();
    assert_eq!(
        alice.recv_type("message", T).unwrap(),
        json!({"type": "message", "source": "bob", "dest": "#lobby", "message": "hi room"})
    );
    bob.expect_silence(Duration::from_millis(300)).unwrap();

    assert!(hub.terminate(), "the hub exits cleanly on SIGTERM");
    match alice.wait_closed(T) {
        Ok(Some((code, _))) => assert_eq!(code, 1001),
        Ok(None) | Err(ClientError::Closed(None)) => {}
        other => panic!("expected a goodbye, got {other:?}"),
    }
    // Written before the exit, read by the harness's own thread: wait, do not race it.
    assert!(
        hub.wait_log("flushing the store", Duration::from_secs(5)),
        "{}",
        hub.log()
    );
}
