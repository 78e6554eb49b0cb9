//! End to end: the P2P protocol between real hub processes (each a node on its own
//! loopback IP), and between a hub and the fake remote node of
//! `hub_tests::p2p_client` (written from the spec, WIRE-FACTS and docs/protocols/p2p.md,
//! never from the plugin's code), plus the browser GUI driven by headless Chromium.
//!
//! Every test uses its own loopback addresses (127.0.N.x) so that tests running in
//! parallel never compete for a pinned address across a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hub_tests::harness::{Hub, HubOptions};
use hub_tests::json_client::JsonClient;
use hub_tests::p2p_client::{
    get_page, get_ping, gui_login_raw, history_request, http_request, is_key, now_unix,
    ping_request, post_form_via, post_json, post_json_via, post_raw, random_key, resend_request,
    sample_message_form, send_request, status_of, Behavior, Contact, ConvMessage, FakeNode, Gui,
    KeyCheck, WireMessage,
};
use serde_json::{json, Value};

const OWNER_PW: &str = "owner-pw";
/// Waits for things that take a few ping rounds.
const T: Duration = Duration::from_secs(15);
/// Waits that include a node's restart and its peers noticing it.
const RESTART_T: Duration = Duration::from_secs(25);

/// One hub process as a P2P node (with the JSON plugin for users of another protocol).
struct Node {
    hub: Hub,
    owner: &'static str,
    address: String,
}

impl Node {
    /// Starts a node on `ip` with owner `owner` (created before the first launch), fast
    /// intervals (`ping_secs` 1, `request_timeout_ms` 500) and `extra` config (later
    /// entries win), and pins its addresses for restarts.
    fn start(ip: &str, owner: &'static str, extra: &[(&str, &str)]) -> Node {
        let mut options = HubOptions::with(&["p2p", "json"])
            .env("HUB__PLUGINS__P2P__OWNER", owner)
            .env("HUB__PLUGINS__P2P__LISTEN__MAIN", &format!("{ip}:0"))
            .env("HUB__PLUGINS__JSON__LISTEN__MAIN", &format!("{ip}:0"))
            .env("HUB__PLUGINS__P2P__PING_SECS", "1")
            .env("HUB__PLUGINS__P2P__REQUEST_TIMEOUT_MS", "500");
        for (key, value) in extra {
            options = options.env(key, value);
        }
        let mut hub = Hub::start_after(options, |hub| {
            let (ok, out, err) = hub.cli(
                &["user", "add", owner, "--hash", "sha256"],
                &format!("{OWNER_PW}\n"),
            );
            assert!(ok, "creating the owner {owner} failed: {out} {err}");
        });
        hub.keep_addresses();
        let address = hub.addr("p2p", "main").to_string();
        assert!(
            address.starts_with(&format!("{ip}:")),
            "the node listens on {address}, not on {ip}"
        );
        Node {
            hub,
            owner,
            address,
        }
    }

    fn address(&self) -> String {
        self.address.clone()
    }

    fn p2p(&self) -> SocketAddr {
        self.address.parse().expect("node address")
    }

    fn json(&self) -> SocketAddr {
        self.hub.addr("json", "main")
    }

    /// A fresh GUI session of the owner.
    fn gui(&self) -> Gui {
        Gui::login(self.p2p(), self.owner, OWNER_PW)
            .unwrap_or_else(|e| panic!("owner login on {} failed: {e}", self.address))
    }

    /// SIGTERM, clean exit.
    fn stop(&mut self) {
        assert!(
            self.hub.terminate(),
            "node {} did not exit cleanly on SIGTERM; log:\n{}",
            self.address,
            self.hub.log()
        );
    }

    /// Start again (after `stop`, or SIGKILL + start when running) on the same address.
    fn start_again(&mut self) {
        self.hub.restart();
        assert_eq!(
            self.hub.addr("p2p", "main").to_string(),
            self.address,
            "a restarted node must keep its address"
        );
    }
}

/// Polls `f` every 100 ms until it gives `Ok`; panics with its last `Err` after `timeout`.
fn eventually<R>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<R, String>) -> R {
    let end = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= end {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The owner of `a` adds `b` (GUI `add_contact`); waits until both list each other with
/// the handshake accepted both ways.
fn befriend(a: &Node, b: &Node) {
    let ga = a.gui();
    ga.add_contact(&b.address(), Some(&format!("{}'s node", b.owner)), None)
        .unwrap();
    let gb = b.gui();
    eventually(
        &format!("{} and {} to be contacts both ways", a.address, b.address),
        T,
        || {
            let ca = ga.contact(&b.address()).map_err(|e| e.to_string())?;
            let cb = gb.contact(&a.address()).map_err(|e| e.to_string())?;
            match (&ca, &cb) {
                (Some(x), Some(y)) if x.acked && y.acked => Ok(()),
                _ => Err(format!("a sees {ca:?}, b sees {cb:?}")),
            }
        },
    );
}

/// The owner of a hub adds a fake node; waits until the hub's handshake arrived and the
/// fake node's answering handshake was accepted. Returns the key the hub gave the fake.
fn befriend_fake(node: &Node, fake: &FakeNode) -> String {
    node.gui()
        .add_contact(&fake.address(), Some("fake"), None)
        .unwrap();
    let key = fake
        .wait_key_from(&node.address(), T)
        .expect("the hub's handshake reaches the fake node");
    assert!(
        fake.wait_handshake_accepted(&node.address(), T),
        "the hub accepts the fake node's answering handshake: {:?}",
        fake.outbound()
    );
    let gui = node.gui();
    eventually("the fake node's contact to be acked", T, || {
        match gui.contact(&fake.address()).map_err(|e| e.to_string())? {
            Some(c) if c.acked => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    key
}

/// The conversation's messages of one direction, waiting out transient errors.
fn conv(gui: &Gui, with: &str) -> Vec<ConvMessage> {
    gui.conversation(with, Some(200))
        .unwrap_or_else(|e| panic!("conversation with {with}: {e}"))
}

fn texts(messages: &[ConvMessage], direction: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.direction == direction)
        .map(|m| m.message.clone())
        .collect()
}

/// JSON user: signs up on the node's JSON listener and subscribes.
fn json_user(node: &Node, name: &str) -> (JsonClient, String) {
    let mut c = JsonClient::connect(node.json()).unwrap();
    let reply = c.signup(name, &format!("pw-{name}"), "sha256").unwrap();
    assert_eq!(reply["resp_code"], 0, "{reply}");
    let token = reply["session"].as_str().unwrap().to_owned();
    assert_eq!(c.subscribe(&token).unwrap()["resp_code"], 0);
    (c, token)
}

/// Checks a plain-text JSON delivery's four fields.
fn assert_json_message(m: &Value, source: &str, dest: &str, text: &str) {
    assert_eq!(
        (
            m["type"].as_str(),
            m["source"].as_str(),
            m["dest"].as_str(),
            m["message"].as_str()
        ),
        (Some("message"), Some(source), Some(dest), Some(text)),
        "{m}"
    );
}

// ----- real hubs federating ---------------------------------------------------------------

#[test]
fn two_nodes_make_friends_and_exchange_messages_both_ways_gui_and_json() {
    let a = Node::start("127.0.1.2", "alice", &[]);
    let b = Node::start("127.0.1.3", "bob", &[]);
    let (ga, gb) = (a.gui(), b.gui());
    let (own, list) = ga.contacts_full().unwrap();
    assert_eq!(own, a.address(), "contacts names this node's address");
    assert!(list.is_empty(), "a new node has no contacts: {list:?}");

    // One add_contact completes the handshake both ways.
    befriend(&a, &b);
    let ca = ga.contact(&b.address()).unwrap().unwrap();
    assert_eq!(ca.nick, "bob's node", "the nick the owner gave");
    assert_eq!(ca.can_resend, 1, "default can_resend");
    let cb = gb.contact(&a.address()).unwrap().unwrap();
    assert_eq!(
        cb.can_resend, 1,
        "default_can_resend for a handshake's contact"
    );
    eventually("both contacts online with a last_connect", T, || {
        let ca = ga.contact(&b.address()).unwrap().unwrap();
        let cb = gb.contact(&a.address()).unwrap().unwrap();
        let fresh = |c: &Contact| {
            c.online
                && c.last_connect.is_some_and(|t| (now_unix() - t).abs() < 60)
                && c.last_online.is_some_and(|t| (now_unix() - t).abs() < 60)
        };
        if fresh(&ca) && fresh(&cb) {
            Ok(())
        } else {
            Err(format!("{ca:?} / {cb:?}"))
        }
    });

    // GUI post A → B.
    let id = ga.post(&b.address(), "hello bob").unwrap();
    assert!(
        id.starts_with(&format!("{}/", a.address())),
        "message ids are <origin node address>/<number>: {id}"
    );
    let got = eventually("B's owner to get A's message", T, || {
        let c = conv(&gb, &a.address());
        c.into_iter()
            .find(|m| m.message == "hello bob")
            .ok_or_else(|| "not yet".to_string())
    });
    assert_eq!(
        (
            got.id.as_str(),
            got.from.as_str(),
            got.to.as_str(),
            got.direction.as_str(),
            got.enctype.as_str()
        ),
        (
            id.as_str(),
            a.address.as_str(),
            b.address.as_str(),
            "in",
            ""
        )
    );
    assert!((now_unix() - got.timestamp).abs() < 60, "{got:?}");
    eventually("A to see its message delivered", T, || {
        let c = conv(&ga, &b.address());
        match c.iter().find(|m| m.id == id) {
            Some(m) if m.direction == "out" && m.delivered == Some(true) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // GUI post B → A.
    let id_back = gb.post(&a.address(), "hello alice").unwrap();
    assert!(
        id_back.starts_with(&format!("{}/", b.address())),
        "{id_back}"
    );
    eventually("A's owner to get B's reply", T, || {
        let c = conv(&ga, &b.address());
        if texts(&c, "in") == ["hello alice"] && texts(&c, "out") == ["hello bob"] {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });

    // A JSON user on A writes to the remote address as `dest`; B's owner gets it from
    // carol@A, and answers her.
    let (mut carol, carol_token) = json_user(&a, "carol");
    let ack = carol
        .request_acked(
            "message",
            &carol_token,
            "carol",
            &b.address(),
            json!({"message": "carol says hi"}),
            "c1",
        )
        .unwrap();
    assert_eq!(
        (ack["type"].as_str(), ack["resp_code"].as_i64()),
        (Some("ack"), Some(0)),
        "{ack}"
    );
    let carol_addr = format!("carol@{}", a.address());
    let from_carol = eventually("B's owner to get carol's message", T, || {
        conv(&gb, &carol_addr)
            .into_iter()
            .find(|m| m.message == "carol says hi")
            .ok_or_else(|| "not yet".to_string())
    });
    assert_eq!(from_carol.from, carol_addr);
    assert_eq!(from_carol.to, b.address());
    gb.post(&carol_addr, "hi carol").unwrap();
    let m = carol.recv_type("message", T).unwrap();
    assert_json_message(&m, &b.address(), "carol", "hi carol");

    // A's owner writes to a JSON user of B (handle@address), who answers A's owner.
    let (mut dave, dave_token) = json_user(&b, "dave");
    let dave_addr = format!("dave@{}", b.address());
    ga.post(&dave_addr, "hi dave").unwrap();
    let m = dave.recv_type("message", T).unwrap();
    assert_json_message(&m, &a.address(), "dave", "hi dave");
    dave.request_acked(
        "message",
        &dave_token,
        "dave",
        &a.address(),
        json!({"message": "dave answers"}),
        "d1",
    )
    .unwrap();
    eventually("A's owner to get dave's answer", T, || {
        let c = conv(&ga, &dave_addr);
        match c.iter().find(|m| m.message == "dave answers") {
            Some(m) if m.from == dave_addr && m.direction == "in" => Ok(()),
            other => Err(format!("{other:?} in {c:?}")),
        }
    });
    // Nothing came twice.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(texts(&conv(&gb, &a.address()), "in"), ["hello bob"]);
    assert_eq!(texts(&conv(&ga, &b.address()), "in"), ["hello alice"]);
    carol.expect_silence(Duration::from_millis(300)).unwrap();
    dave.expect_silence(Duration::from_millis(300)).unwrap();
}

#[test]
fn messages_to_a_stopped_node_arrive_once_and_in_order_when_it_returns() {
    let mut a = Node::start(
        "127.0.2.2",
        "alice",
        &[("HUB__PLUGINS__P2P__ONLINE_SECS", "3")],
    );
    let mut b = Node::start("127.0.2.3", "bob", &[]);
    befriend(&a, &b);
    b.stop();
    let mut ids = Vec::new();
    let mut want = Vec::new();
    let ga = a.gui();
    for n in 0..10 {
        let text = format!("while down {n:02}");
        ids.push(ga.post(&b.address(), &text).unwrap());
        want.push(text);
    }
    // The sender crashes and comes back: what it acknowledged is still queued.
    a.hub.restart();
    let ga = a.gui();
    for n in 10..20 {
        let text = format!("while down {n:02}");
        ids.push(ga.post(&b.address(), &text).unwrap());
        want.push(text);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        20,
        "distinct ids, also across a restart: {ids:?}"
    );
    eventually("A to hold 20 undelivered and see B offline", T, || {
        let c = ga.contact(&b.address()).unwrap().unwrap();
        if c.undelivered == 20 && !c.online {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });
    let undelivered = conv(&ga, &b.address());
    assert!(
        undelivered
            .iter()
            .all(|m| m.direction == "out" && m.delivered == Some(false)),
        "{undelivered:?}"
    );

    b.start_again();
    let gb = b.gui();
    eventually("B to receive all 20", RESTART_T, || {
        let got = texts(&conv(&gb, &a.address()), "in");
        if got.len() >= want.len() {
            Ok(())
        } else {
            Err(format!("{} so far: {got:?}", got.len()))
        }
    });
    eventually("A to see all 20 delivered", T, || {
        let c = conv(&ga, &b.address());
        let contact = ga.contact(&b.address()).unwrap().unwrap();
        if c.iter().filter(|m| m.delivered == Some(true)).count() == 20
            && contact.undelivered == 0
            && contact.online
        {
            Ok(())
        } else {
            Err(format!("{contact:?}; {c:?}"))
        }
    });
    // Retries of batches must not duplicate anything: once, in order, with their ids.
    std::thread::sleep(Duration::from_secs(2));
    let got = conv(&gb, &a.address());
    assert_eq!(texts(&got, "in"), want, "once each, in the order written");
    let got_ids: Vec<String> = got.iter().map(|m| m.id.clone()).collect();
    assert_eq!(got_ids, ids, "ids kept end to end");
}

#[test]
fn a_message_relayed_through_a_third_node_reaches_an_offline_node_exactly_once() {
    let mut a = Node::start("127.0.0.2", "alice", &[("HUB__PLUGINS__P2P__RELAYS", "2")]);
    let mut b = Node::start("127.0.0.3", "bob", &[]);
    let c = Node::start("127.0.0.4", "carol", &[]);
    befriend(&a, &b);
    befriend(&a, &c);
    befriend(&c, &b);
    b.stop();

    let ga = a.gui();
    let id = ga.post(&b.address(), "through the relay").unwrap();
    // The relay takes it with `resend`; the only sign a GUI gives of that is the relay's
    // undelivered count for B (if it counts relayed messages: the doc does not say), so
    // wait for that a while, then leave some time for the resend anyway.
    let gc = c.gui();
    let end = Instant::now() + Duration::from_secs(6);
    let mut seen_at_relay = false;
    while Instant::now() < end {
        if gc
            .contact(&b.address())
            .unwrap()
            .is_some_and(|x| x.undelivered >= 1)
        {
            seen_at_relay = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !seen_at_relay {
        eprintln!("note: the relay's contacts never showed undelivered >= 1 for B");
    }
    std::thread::sleep(Duration::from_secs(2));
    a.stop();

    b.start_again();
    let gb = b.gui();
    let got = eventually("B to get the message from the relay", RESTART_T, || {
        let c = conv(&gb, &a.address());
        c.into_iter()
            .find(|m| m.message == "through the relay")
            .ok_or_else(|| "not yet".to_string())
    });
    assert_eq!(
        (got.id.as_str(), got.from.as_str(), got.to.as_str()),
        (id.as_str(), a.address.as_str(), b.address.as_str()),
        "the relay keeps from, to and id"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(texts(&conv(&gb, &a.address()), "in"), ["through the relay"]);

    // The author returns and flushes its own copy: B answers 1 (already had) and still
    // shows it once.
    a.start_again();
    let ga = a.gui();
    eventually("the author to see its message delivered", RESTART_T, || {
        let c = conv(&ga, &b.address());
        match c.iter().find(|m| m.id == id) {
            Some(m) if m.delivered == Some(true) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        texts(&conv(&gb, &a.address()), "in"),
        ["through the relay"],
        "exactly once at the destination"
    );
    eventually("the relay's queue for B to drain", T, || {
        let x = gc.contact(&b.address()).unwrap().unwrap();
        if x.undelivered == 0 {
            Ok(())
        } else {
            Err(format!("{x:?}"))
        }
    });
}

#[test]
fn wrong_or_missing_keys_are_refused_with_403_and_nothing_is_stored() {
    let a = Node::start("127.0.3.2", "alice", &[]);
    let b = Node::start("127.0.3.3", "bob", &[]);
    befriend(&a, &b);
    let (mut dave, _) = json_user(&b, "dave");
    let forged = |text: &str, to: &str| {
        WireMessage::new(&a.address(), to, text).with_id(&format!(
            "{}/999{}",
            a.address(),
            text.len()
        ))
    };
    let to_owner = forged("forged", &b.address());
    let to_dave = forged("forged for dave", &format!("dave@{}", b.address()));
    for (what, body) in [
        (
            "send with a wrong key",
            send_request(&to_owner, Some(&random_key())),
        ),
        ("send without a key", send_request(&to_owner, None)),
        (
            "send to a user with a wrong key",
            send_request(&to_dave, Some(&random_key())),
        ),
        (
            "resend with a wrong key",
            resend_request(&to_owner, Some(&random_key())),
        ),
        (
            "ping with a wrong key",
            ping_request(Some((&a.address(), &random_key()))),
        ),
    ] {
        // From A's own IP: only the key is wrong.
        let (code, reply) = post_json_via(Some(a.p2p().ip()), b.p2p(), &body).unwrap();
        assert_eq!((code, status_of(&reply)), (403, Some(0)), "{what}: {reply}");
    }
    let (code, reply) = post_json_via(
        Some(a.p2p().ip()),
        b.p2p(),
        &history_request(
            &a.address(),
            Some(&random_key()),
            std::slice::from_ref(&to_owner),
        ),
    )
    .unwrap();
    assert_eq!(
        (code, reply["status"].clone()),
        (403, json!(0)),
        "history with a wrong key: {reply}"
    );
    let form = sample_message_form(&forged("forged form", &b.address()), Some(&random_key()));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let (code, reply) = post_form_via(Some(a.p2p().ip()), b.p2p(), "/messages/", &pairs).unwrap();
    assert_eq!(
        (code, reply["received"].as_i64()),
        (403, Some(0)),
        "{reply}"
    );

    // The real path still works, and only it shows.
    a.gui().post(&b.address(), "genuine").unwrap();
    let gb = b.gui();
    eventually("the genuine message", T, || {
        let got = texts(&conv(&gb, &a.address()), "in");
        if got.contains(&"genuine".to_string()) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    assert_eq!(texts(&conv(&gb, &a.address()), "in"), ["genuine"]);
    dave.expect_silence(Duration::from_millis(500)).unwrap();
}

// ----- a hub and the fake node --------------------------------------------------------------

#[test]
fn the_hub_presents_the_key_the_fake_node_gave_it_and_sends_ids() {
    let h = Node::start("127.0.4.2", "alice", &[]);
    let f = FakeNode::start("127.0.4.5").unwrap();
    let g = h.gui();
    g.add_contact(&f.address(), Some("fake"), None).unwrap();
    let hs = f
        .wait_request(T, |r| r.action.as_deref() == Some("handshake"))
        .expect("the hub's handshake");
    assert_eq!(hs.field("from"), Some(h.address.as_str()), "{:?}", hs.json);
    let hub_key = hs.field("key").unwrap_or_default().to_owned();
    assert!(
        is_key(&hub_key),
        "a key is 32 random bytes in hex: {hub_key:?}"
    );
    assert_eq!(
        hs.content_type
            .as_deref()
            .map(|c| c.starts_with("application/json")),
        Some(true)
    );
    assert!(
        f.wait_handshake_accepted(&h.address(), T),
        "{:?}",
        f.outbound()
    );
    let fake_key = f.key_given_to(&h.address()).unwrap();
    eventually("the contact to be acked", T, || {
        match g.contact(&f.address()).unwrap() {
            Some(c) if c.acked => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    let id1 = g.post(&f.address(), "first").unwrap();
    let id2 = g.post(&f.address(), "second").unwrap();
    assert_ne!(id1, id2);
    for id in [&id1, &id2] {
        assert!(id.starts_with(&format!("{}/", h.address())), "{id}");
    }
    assert!(f.wait_stored(T, |s| s.len() >= 2), "{:?}", f.requests());
    let stored = f.stored();
    let texts: Vec<&str> = stored.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(texts, ["first", "second"], "in the order written");
    for (m, id) in stored.iter().zip([&id1, &id2]) {
        assert_eq!(
            m.from,
            h.address(),
            "the owner's messages leave with the bare address"
        );
        assert_eq!(m.to, f.address());
        assert_eq!(m.enctype, "");
        assert_eq!(m.id.as_deref(), Some(id.as_str()));
        assert!((now_unix() - m.timestamp).abs() < 60, "{m:?}");
    }
    eventually("both delivered in the GUI", T, || {
        let c = conv(&g, &f.address());
        if c.len() == 2
            && c.iter()
                .all(|m| m.direction == "out" && m.delivered == Some(true))
        {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });

    // A JSON user of the hub writes to the fake node: from = carol@hub.
    let (mut carol, token) = json_user(&h, "carol");
    carol
        .request_acked(
            "message",
            &token,
            "carol",
            &f.address(),
            json!({"message": "from carol"}),
            "c1",
        )
        .unwrap();
    assert!(f.wait_stored(T, |s| s.len() >= 3));
    let m = f.stored()[2].clone();
    assert_eq!(
        (m.from.as_str(), m.message.as_str()),
        (format!("carol@{}", h.address()).as_str(), "from carol")
    );

    // The hub pings with the key too (ping_secs 1).
    let keyed_ping = f.wait_request(Duration::from_secs(6), |r| {
        r.action.as_deref() == Some("ping") && r.key.is_some()
    });
    let keyed_ping = keyed_ping.expect("a keyed ping within a few ping rounds");
    assert_eq!(keyed_ping.field("from"), Some(h.address.as_str()));
    // Every request of the hub came from its own IP and every keyed one carried exactly
    // the key the fake node gave it.
    for r in f.requests() {
        assert_eq!(r.peer.map(|p| p.ip()), Some(h.p2p().ip()), "{r:?}");
        match r.action.as_deref() {
            Some("handshake") => continue,
            Some("ping") => assert_ne!(r.key_check, KeyCheck::Unknown, "{:?}", r.json),
            _ => assert_eq!(
                r.key_check,
                KeyCheck::GivenTo(h.address()),
                "request {} {:?}",
                r.seq,
                r.json
            ),
        }
        if let Some(k) = &r.key {
            assert_ne!(
                k, &hub_key,
                "the hub must not present the key it drew itself"
            );
            assert_eq!(k, &fake_key);
        }
    }
    assert!(f.anomalies().is_empty(), "{:?}", f.anomalies());
}

#[test]
fn the_hub_checks_inbound_keys_dedups_by_id_and_answers_pings() {
    let h = Node::start("127.0.5.2", "alice", &[]);
    let f = FakeNode::start("127.0.5.5").unwrap();
    f.set_nick("fake five");
    // The fake node makes friends; the hub answers with its own handshake.
    let (code, reply) = f.handshake(&h.address()).unwrap();
    assert_eq!((code, status_of(&reply)), (200, Some(1)), "{reply}");
    let hub_key = f
        .wait_key_from(&h.address(), T)
        .expect("the hub's handshake");
    assert!(is_key(&hub_key));
    let hs = f
        .wait_request(T, |r| r.action.as_deref() == Some("handshake"))
        .unwrap();
    assert_eq!(hs.field("from"), Some(h.address.as_str()));
    let g = h.gui();
    eventually("the stranger to be a contact", T, || {
        match g.contact(&f.address()).unwrap() {
            Some(c) if c.acked && c.nick == "fake five" && c.can_resend == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let (mut dave, _) = json_user(&h, "dave");

    let m1 = f
        .message(&h.address(), "keyed")
        .with_id(&format!("{}/1", f.address()));
    for attempt in 0..2 {
        let (code, reply) = f.send_to(&h.address(), &m1).unwrap();
        assert_eq!(
            (code, status_of(&reply)),
            (200, Some(1)),
            "attempt {attempt}: {reply}"
        );
    }
    let bad = f
        .message(&h.address(), "wrong key")
        .with_id(&format!("{}/2", f.address()));
    let (code, reply) = f
        .post(&h.address(), &send_request(&bad, Some(&random_key())))
        .unwrap();
    assert_eq!((code, status_of(&reply)), (403, Some(0)), "{reply}");
    let (code, reply) = f.post(&h.address(), &send_request(&bad, None)).unwrap();
    assert_eq!((code, status_of(&reply)), (403, Some(0)), "{reply}");
    // The key of the other direction (the one the fake node gave the hub) is wrong too:
    // only the key the hub drew for this contact is accepted.
    let fake_key = f.key_given_to(&h.address()).unwrap();
    let (code, _) = f
        .post(&h.address(), &send_request(&bad, Some(&fake_key)))
        .unwrap();
    assert_eq!(
        code, 403,
        "only the key the hub drew for this contact is valid"
    );
    // Without an id, twice with the same fields: stored once.
    let no_id = f.message(&h.address(), "no id");
    for _ in 0..2 {
        let (code, reply) = f.send_to(&h.address(), &no_id).unwrap();
        assert_eq!((code, status_of(&reply)), (200, Some(1)), "{reply}");
    }
    // To a user of the hub, plain and with an enctype; to nobody.
    let dave_addr = format!("dave@{}", h.address());
    let (_, reply) = f
        .send_to(&h.address(), &f.message(&dave_addr, "for dave"))
        .unwrap();
    assert_eq!(status_of(&reply), Some(1), "{reply}");
    let m = dave.recv_type("message", T).unwrap();
    assert_json_message(&m, &f.address(), "dave", "for dave");
    let mut secret = f.message(&dave_addr, "c2VjcmV0");
    secret.enctype = "x-test".into();
    let (_, reply) = f.send_to(&h.address(), &secret).unwrap();
    assert_eq!(status_of(&reply), Some(1), "{reply}");
    let m = dave.recv_type("message", T).unwrap();
    assert_json_message(&m, &f.address(), "dave", "[encrypted with x-test]");
    let (_, reply) = f
        .send_to(
            &h.address(),
            &f.message(&format!("nobody@{}", h.address()), "lost"),
        )
        .unwrap();
    assert_eq!(status_of(&reply), Some(0), "unknown recipient: {reply}");
    let (_, reply) = f
        .send_to(&h.address(), &f.message("127.0.5.9:1", "elsewhere"))
        .unwrap();
    assert_eq!(status_of(&reply), Some(0), "`to` is not this node: {reply}");

    std::thread::sleep(Duration::from_secs(1));
    let c = conv(&g, &f.address());
    assert_eq!(texts(&c, "in"), ["keyed", "no id"], "each once: {c:?}");
    assert_eq!(c[0].id, m1.id.clone().unwrap(), "the sender's id is kept");
    assert_eq!(c[0].from, f.address());
    dave.expect_silence(Duration::from_millis(300)).unwrap();

    // Pings: bare, keyed, wrongly keyed.
    let (code, pong) = post_json(h.p2p(), &ping_request(None)).unwrap();
    assert_eq!(code, 200);
    assert_eq!(pong["action"], "pong", "{pong}");
    assert_eq!(pong["addr"], json!(h.address()), "{pong}");
    assert!(
        (now_unix() - pong["timestamp"].as_i64().unwrap_or(0)).abs() < 60,
        "{pong}"
    );
    let (code, pong) = f
        .post(&h.address(), &ping_request(Some((&f.address(), &hub_key))))
        .unwrap();
    assert_eq!(
        (code, pong["action"].as_str()),
        (200, Some("pong")),
        "{pong}"
    );
    let (code, reply) = f
        .post(
            &h.address(),
            &ping_request(Some((&f.address(), &random_key()))),
        )
        .unwrap();
    assert_eq!((code, status_of(&reply)), (403, Some(0)), "{reply}");
    assert!(f.anomalies().is_empty(), "{:?}", f.anomalies());
}

#[test]
fn a_remote_node_writes_to_a_room_of_the_hub() {
    let h = Node::start("127.0.15.2", "alice", &[]);
    let f = FakeNode::start("127.0.15.5").unwrap();
    let (_, reply) = f.handshake(&h.address()).unwrap();
    assert_eq!(status_of(&reply), Some(1), "{reply}");
    f.wait_key_from(&h.address(), T).unwrap();
    let (mut dave, token) = json_user(&h, "dave");
    dave.request("room.join", &token, "dave", "#lobby", json!({}))
        .unwrap();
    let joined = dave.recv_type("room.join", T).unwrap();
    assert_eq!(joined["resp_code"], 0, "{joined}");
    let room = format!("#lobby@{}", h.address());
    let (_, reply) = f
        .send_to(&h.address(), &f.message(&room, "hello room"))
        .unwrap();
    assert_eq!(status_of(&reply), Some(1), "{reply}");
    let m = dave.recv_type("message", T).unwrap();
    assert_json_message(&m, &f.address(), "#lobby", "hello room");
    let (_, reply) = f
        .send_to(
            &h.address(),
            &f.message(&format!("#nowhere@{}", h.address()), "lost"),
        )
        .unwrap();
    assert_eq!(status_of(&reply), Some(0), "no such room: {reply}");
    // Whether writing to a room makes the remote node a member that gets the room's
    // messages is not said; if it gets them, they must have the documented shape.
    dave.request_acked(
        "message",
        &token,
        "dave",
        "#lobby",
        json!({"message": "hi all"}),
        "r1",
    )
    .unwrap();
    let got = f.wait_request(Duration::from_secs(3), |r| {
        r.messages().iter().any(|m| m.message == "hi all")
    });
    match got {
        Some(r) => {
            let m = r
                .messages()
                .into_iter()
                .find(|m| m.message == "hi all")
                .unwrap();
            assert_eq!(m.from, format!("dave@{}", h.address()), "{r:?}");
            assert_eq!(m.room.as_deref(), Some(room.as_str()), "{r:?}");
            assert_eq!(r.key_check, KeyCheck::GivenTo(h.address()));
        }
        None => eprintln!("note: a remote node that wrote to #lobby does not get its messages"),
    }
    assert!(f.anomalies().is_empty(), "{:?}", f.anomalies());
}

#[test]
fn history_entries_answered_zero_are_sent_again_later() {
    let h = Node::start("127.0.6.2", "alice", &[]);
    let f = FakeNode::start("127.0.6.5").unwrap();
    befriend_fake(&h, &f);
    let g = h.gui();
    f.set_behavior(Behavior::Drop);
    let ids: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .map(|t| g.post(&f.address(), t).unwrap())
        .collect();
    eventually("3 undelivered", T, || {
        let c = g.contact(&f.address()).unwrap().unwrap();
        if c.undelivered == 3 {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });
    let switched = f.requests().len();
    f.script_history(vec![vec![1, 0, 1]]);
    f.set_behavior(Behavior::Normal);
    assert!(
        f.wait_stored(T, |s| s.len() >= 3),
        "all three arrive in the end: {:?}",
        f.requests()
    );
    let after: Vec<_> = f.requests().into_iter().skip(switched).collect();
    let carrying: Vec<_> = after.iter().filter(|r| !r.messages().is_empty()).collect();
    let first = carrying.first().expect("a request with messages");
    assert_eq!(
        first.action.as_deref(),
        Some("history"),
        "flushing uses history: {:?}",
        first.json
    );
    let first_ids: Vec<Option<String>> = first.messages().into_iter().map(|m| m.id).collect();
    assert_eq!(
        first_ids,
        ids.iter().cloned().map(Some).collect::<Vec<_>>(),
        "oldest first, one batch"
    );
    assert_eq!(
        first.reply.as_ref().map(|r| r.1.clone()),
        Some(json!({"status": [1, 0, 1]}))
    );
    let later: Vec<_> = carrying.iter().filter(|r| r.seq > first.seq).collect();
    assert!(
        later
            .iter()
            .any(|r| r.accepted() && r.messages().iter().any(|m| m.id.as_ref() == Some(&ids[1]))),
        "the entry answered 0 is sent again: {later:?}"
    );
    assert!(
        !later
            .iter()
            .any(|r| r.messages().iter().any(|m| m.id.as_ref() == Some(&ids[0]))),
        "an acknowledged message is never sent again"
    );
    eventually("all delivered in the GUI", T, || {
        let c = conv(&g, &f.address());
        let contact = g.contact(&f.address()).unwrap().unwrap();
        if c.iter().all(|m| m.delivered == Some(true)) && contact.undelivered == 0 {
            Ok(())
        } else {
            Err(format!("{contact:?} {c:?}"))
        }
    });

    // A send answered status 0 stays undelivered and goes out again later.
    f.set_send_answer(0);
    let id4 = g.post(&f.address(), "h4").unwrap();
    let refused = f
        .wait_request(T, |r| {
            r.action.as_deref() == Some("send") && r.field("id") == Some(id4.as_str())
        })
        .expect("the hub sends h4");
    assert_eq!(
        refused.reply.as_ref().map(|r| r.1.clone()),
        Some(json!({"status": 0}))
    );
    f.set_send_answer(1);
    assert!(
        f.wait_stored(T, |s| s
            .iter()
            .any(|m| m.id.as_deref() == Some(id4.as_str()))),
        "h4 is sent again: {:?}",
        f.requests()
    );
    let count = f
        .stored()
        .iter()
        .filter(|m| m.id.as_deref() == Some(id4.as_str()))
        .count();
    assert_eq!(count, 1);
    assert!(f.anomalies().is_empty(), "{:?}", f.anomalies());
}

#[test]
fn a_contact_that_answers_resend_with_zero_is_not_asked_again() {
    let h = Node::start("127.0.7.2", "alice", &[("HUB__PLUGINS__P2P__RELAYS", "2")]);
    let refuser = FakeNode::start("127.0.7.5").unwrap();
    let opted_out = FakeNode::start("127.0.7.6").unwrap();
    let dest = FakeNode::start("127.0.7.7").unwrap();
    for f in [&refuser, &opted_out, &dest] {
        befriend_fake(&h, f);
    }
    refuser.set_resend_answer(0);
    let g = h.gui();
    g.set_contact(&opted_out.address(), None, Some(0)).unwrap();
    g.set_contact(&refuser.address(), Some("refuser"), None)
        .unwrap();
    let contact = g.contact(&opted_out.address()).unwrap().unwrap();
    assert_eq!(contact.can_resend, 0, "set by the owner: {contact:?}");
    assert_eq!(
        g.contact(&refuser.address()).unwrap().unwrap().nick,
        "refuser"
    );

    dest.set_behavior(Behavior::Drop);
    let id1 = g.post(&dest.address(), "p1").unwrap();
    let asked = refuser
        .wait_request(T, |r| r.action.as_deref() == Some("resend"))
        .expect("the hub asks a relay when the destination does not answer");
    let m = asked.messages().pop().expect("resend carries the message");
    assert_eq!(
        (
            m.from.as_str(),
            m.to.as_str(),
            m.message.as_str(),
            m.id.as_deref()
        ),
        (
            h.address.as_str(),
            dest.address().as_str(),
            "p1",
            Some(id1.as_str())
        )
    );
    assert_eq!(asked.key_check, KeyCheck::GivenTo(h.address()));
    eventually("can_resend 0 for the refuser", T, || {
        let c = g.contact(&refuser.address()).unwrap().unwrap();
        if c.can_resend == 0 {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });
    g.post(&dest.address(), "p2").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        refuser.requests_with("resend").len(),
        1,
        "a node that refused to relay is not asked again"
    );
    assert!(
        opted_out.requests_with("resend").is_empty(),
        "a contact with can_resend 0 is never asked"
    );
    let to_dest = dest.requests_with("resend").len();
    if to_dest > 0 {
        eprintln!("note: the hub asked the destination itself to relay ({to_dest} times)");
    }
    for f in [&refuser, &opted_out] {
        assert!(f.anomalies().is_empty(), "{:?}", f.anomalies());
    }
}

#[test]
fn the_hub_relays_for_a_contact_keeping_the_message_and_presenting_its_own_key() {
    let h = Node::start("127.0.8.2", "alice", &[]);
    let author = FakeNode::start("127.0.8.5").unwrap();
    let dest = FakeNode::start("127.0.8.6").unwrap();
    befriend_fake(&h, &author);
    befriend_fake(&h, &dest);
    dest.set_behavior(Behavior::Drop);
    let mut m = author
        .message(&dest.address(), "relay me")
        .with_id(&format!("{}/42", author.address()));
    m.timestamp = 1_600_000_000;
    m.enctype = "x-test".into();
    let (code, reply) = author
        .request(
            &h.address(),
            resend_request(&m, author.key_from(&h.address()).as_deref()),
        )
        .unwrap();
    assert_eq!((code, status_of(&reply)), (200, Some(1)), "{reply}");
    let stranger = WireMessage::new(&author.address(), "127.0.8.9:1", "to a stranger");
    let (_, reply) = author
        .request(
            &h.address(),
            resend_request(&stranger, author.key_from(&h.address()).as_deref()),
        )
        .unwrap();
    assert_eq!(
        status_of(&reply),
        Some(0),
        "no relaying to a non-contact: {reply}"
    );
    let (code, reply) = author
        .post(&h.address(), &resend_request(&m, Some(&random_key())))
        .unwrap();
    assert_eq!((code, status_of(&reply)), (403, Some(0)), "{reply}");

    dest.set_behavior(Behavior::Normal);
    assert!(
        dest.wait_stored(T, |s| s.iter().any(|x| x.id == m.id)),
        "the relay delivers when the destination answers: {:?}",
        dest.requests()
    );
    let got = dest.stored().into_iter().find(|x| x.id == m.id).unwrap();
    assert_eq!(got, m, "from, to, message, timestamp, enctype and id kept");
    let carrier = dest
        .requests()
        .into_iter()
        .find(|r| r.accepted() && r.messages().iter().any(|x| x.id == m.id))
        .unwrap();
    assert_eq!(
        carrier.key_check,
        KeyCheck::GivenTo(h.address()),
        "the relay presents its own key"
    );
    // A history request names the requester (the relay); a send names the author.
    let want_from = if carrier.action.as_deref() == Some("history") {
        h.address()
    } else {
        author.address()
    };
    assert_eq!(
        carrier.field("from"),
        Some(want_from.as_str()),
        "{:?}",
        carrier.json
    );
    assert!(dest.anomalies().is_empty(), "{:?}", dest.anomalies());
}

#[test]
fn strangers_are_refused_when_handshakes_are_closed_and_relaying_is_off() {
    let h = Node::start(
        "127.0.9.2",
        "alice",
        &[
            ("HUB__PLUGINS__P2P__ACCEPT_HANDSHAKES", "false"),
            ("HUB__PLUGINS__P2P__RELAY", "false"),
        ],
    );
    let stranger = FakeNode::start("127.0.9.5").unwrap();
    let friend = FakeNode::start("127.0.9.6").unwrap();
    let (_, reply) = stranger.handshake(&h.address()).unwrap();
    assert_eq!(status_of(&reply), Some(0), "{reply}");
    assert!(reply["error"].is_string(), "{reply}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        stranger.key_from(&h.address()).is_none(),
        "no handshake back"
    );
    let g = h.gui();
    assert!(g.contact(&stranger.address()).unwrap().is_none());
    // A contact the owner added is accepted, and the hub retries its handshake until it
    // gets status 1.
    let friend2 = FakeNode::start("127.0.9.7").unwrap();
    befriend_fake(&h, &friend2);
    friend.set_behavior(Behavior::Drop);
    g.add_contact(&friend.address(), None, None).unwrap();
    assert!(
        friend.wait_requests(T, |rs| rs
            .iter()
            .filter(|r| r.action.as_deref() == Some("handshake"))
            .count()
            >= 2),
        "the handshake is retried: {:?}",
        friend.requests()
    );
    assert!(!g.contact(&friend.address()).unwrap().unwrap().acked);
    friend.set_behavior(Behavior::Normal);
    assert!(friend.wait_key_from(&h.address(), T).is_some());
    assert!(
        friend.wait_handshake_accepted(&h.address(), T),
        "{:?}",
        friend.outbound()
    );
    eventually("the friend acked", T, || {
        match g.contact(&friend.address()).unwrap() {
            Some(c) if c.acked => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // Relaying is off: even to a contact with a key.
    let m = friend.message(&friend2.address(), "relay please");
    let (_, reply) = friend
        .request(
            &h.address(),
            resend_request(&m, friend.key_from(&h.address()).as_deref()),
        )
        .unwrap();
    assert_eq!(status_of(&reply), Some(0), "relaying is off: {reply}");
    assert!(friend2.stored().is_empty());
}

#[test]
fn the_contact_list_is_bounded_by_max_contacts() {
    let h = Node::start(
        "127.0.13.2",
        "alice",
        &[("HUB__PLUGINS__P2P__MAX_CONTACTS", "2")],
    );
    let f1 = FakeNode::start("127.0.13.5").unwrap();
    let f2 = FakeNode::start("127.0.13.6").unwrap();
    let f3 = FakeNode::start("127.0.13.7").unwrap();
    let f4 = FakeNode::start("127.0.13.8").unwrap();
    befriend_fake(&h, &f1);
    let (_, reply) = f2.handshake(&h.address()).unwrap();
    assert_eq!(status_of(&reply), Some(1), "{reply}");
    assert!(f2.wait_key_from(&h.address(), T).is_some());
    let (_, reply) = f3.handshake(&h.address()).unwrap();
    assert_eq!(
        status_of(&reply),
        Some(0),
        "a third contact is refused: {reply}"
    );
    let g = h.gui();
    let added = g.add_contact(&f4.address(), None, None);
    std::thread::sleep(Duration::from_millis(1500));
    let list = g.contacts().unwrap();
    let listed: Vec<&str> = list.iter().map(|c| c.address.as_str()).collect();
    assert_eq!(list.len(), 2, "max_contacts 2: {listed:?}");
    assert!(
        f3.key_from(&h.address()).is_none(),
        "no handshake to a refused stranger"
    );
    assert!(
        added.is_err(),
        "the owner cannot add a third either: add_contact answered {added:?}, f4 got {:?}",
        f4.requests_with("handshake")
    );
}

#[test]
fn an_unanswered_send_times_out_and_goes_to_at_most_relays_contacts() {
    let h = Node::start("127.0.14.2", "alice", &[("HUB__PLUGINS__P2P__RELAYS", "1")]);
    let relays: Vec<FakeNode> = (5..=7)
        .map(|n| FakeNode::start(&format!("127.0.14.{n}")).unwrap())
        .collect();
    let dest = FakeNode::start("127.0.14.8").unwrap();
    for f in relays.iter().chain([&dest]) {
        befriend_fake(&h, f);
    }
    let g = h.gui();
    dest.set_behavior(Behavior::Hang);
    let count = |relays: &[FakeNode], dest: &FakeNode| {
        relays
            .iter()
            .chain([dest])
            .map(|f| f.requests_with("resend").len())
            .sum::<usize>()
    };
    let id = g.post(&dest.address(), "hanging").unwrap();
    let sent = dest
        .wait_request(T, |r| r.action.as_deref() == Some("send"))
        .expect("the hub sends to the destination");
    assert_eq!(sent.field("id"), Some(id.as_str()));
    let asked = eventually("one relay to be asked", T, || {
        relays
            .iter()
            .find_map(|f| f.requests_with("resend").pop())
            .ok_or_else(|| "none yet".to_string())
    });
    let waited = asked.at.duration_since(sent.at);
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(4),
        "request_timeout_ms 500: the relay is asked after the send timed out ({waited:?})"
    );
    g.post(&dest.address(), "hanging too").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let total = count(&relays, &dest);
    assert!(
        total <= 2,
        "relays 1: at most one relay per undelivered message, {total} resends"
    );
    dest.set_behavior(Behavior::Normal);
    assert!(
        dest.wait_stored(T, |s| s.len() >= 2),
        "{:?}",
        dest.requests()
    );
    for f in &relays {
        assert!(f.anomalies().is_empty(), "{:?}", f.anomalies());
    }
}

#[test]
fn sample_dialect_http_surface_limits_and_gui_sessions() {
    let h = Node::start(
        "127.0.10.2",
        "alice",
        &[("HUB__PLUGINS__P2P__MAX_FRAME", "4096")],
    );
    let f = FakeNode::start("127.0.10.5").unwrap();
    f.handshake(&h.address()).unwrap();
    let key = f.wait_key_from(&h.address(), T).unwrap();

    // GET /ping.
    let (code, v) = get_ping(h.p2p()).unwrap();
    assert_eq!(code, 200, "{v}");
    assert!(
        (now_unix() - v["timestamp"].as_i64().unwrap_or(0)).abs() < 60,
        "{v}"
    );
    let addr = v["addr"].as_str().unwrap_or_default();
    eprintln!("note: GET /ping answered addr {addr:?}");
    assert!(
        addr == "127.0.10.2" || addr == h.address(),
        "addr is this node's host (or address): {v}"
    );
    // POST /messages/ and /messages with the key; without or with a wrong one: 403.
    let send_form = |path: &str, text: &str, key: Option<&str>| {
        let m = f.message(&h.address(), text);
        f.post_form(&h.address(), path, &sample_message_form(&m, key))
            .unwrap()
    };
    let (code, v) = send_form("/messages/", "form one", Some(&key));
    assert_eq!(code, 200, "{v}");
    assert!(
        (now_unix() - v["received"].as_i64().unwrap_or(0)).abs() < 60,
        "{v}"
    );
    let (code, v) = send_form("/messages", "form two", Some(&key));
    assert_eq!(code, 200, "{v}");
    let (code, v) = send_form("/messages/", "form no key", None);
    assert_eq!((code, v["received"].as_i64()), (403, Some(0)), "{v}");
    assert!(v["error"].is_string(), "{v}");
    let (code, v) = send_form("/messages/", "form bad key", Some(&random_key()));
    assert_eq!((code, v["received"].as_i64()), (403, Some(0)), "{v}");
    let g = h.gui();
    eventually("the two form messages", T, || {
        let got = texts(&conv(&g, &f.address()), "in");
        if got.len() >= 2 {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    });
    let c = conv(&g, &f.address());
    assert_eq!(texts(&c, "in"), ["form one", "form two"]);
    assert!(c
        .iter()
        .all(|m| m.enctype.is_empty() && m.from == f.address()));

    // The page, other paths and methods, the body limit, a JSON body of another type.
    let page = get_page(h.p2p()).unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap_or_default()
            .starts_with("text/html"),
        "{:?}",
        page.headers
    );
    let html = page.text();
    for id in [
        "login-user",
        "login-password",
        "login-button",
        "status",
        "node-address",
        "contacts",
        "add-address",
        "add-nick",
        "add-button",
        "conversation",
        "message-input",
        "send-button",
    ] {
        assert!(html.contains(id), "the page mentions #{id}");
    }
    for external in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "@import",
    ] {
        assert!(
            !html.contains(external),
            "no external resources ({external})"
        );
    }
    let r = http_request(h.p2p(), "GET", "/nowhere", &[], b"", Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 404);
    let r = post_raw(
        h.p2p(),
        "/nowhere",
        "application/json",
        br#"{"action":"ping"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 404);
    let r = http_request(h.p2p(), "PUT", "/", &[], b"{}", Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 405);
    let big = json!({"action": "ping", "pad": "x".repeat(5000)}).to_string();
    let r = post_raw(h.p2p(), "/", "application/json", big.as_bytes()).unwrap();
    assert_eq!(r.status, 413, "over max_frame");
    let r = post_raw(h.p2p(), "/", "text/plain", br#"{"action":"ping"}"#).unwrap();
    assert_eq!(
        (r.status, r.json().unwrap()["action"].clone()),
        (200, json!("pong"))
    );

    // GUI sessions: the owner only, with the right password; actions need a session.
    let (_, reply) = gui_login_raw(h.p2p(), "alice", "wrong").unwrap();
    assert_eq!(status_of(&reply), Some(0), "{reply}");
    let (mut mallory, _) = json_user(&h, "mallory");
    let (_, reply) = gui_login_raw(h.p2p(), "mallory", "pw-mallory").unwrap();
    assert_eq!(
        status_of(&reply),
        Some(0),
        "only the owner signs in: {reply}"
    );
    for body in [
        json!({"action": "contacts"}),
        json!({"action": "contacts", "session": "nope"}),
        json!({"action": "post", "session": "nope", "to": f.address(), "message": "x"}),
    ] {
        let (code, reply) = post_json(h.p2p(), &body).unwrap();
        assert_eq!((code, status_of(&reply)), (403, Some(0)), "{body}: {reply}");
    }
    let bad = Gui {
        node: h.p2p(),
        session: "00000000-0000-0000-0000-000000000000".into(),
    };
    assert!(bad.contacts().is_err());
    mallory.expect_silence(Duration::from_millis(100)).unwrap();
}

#[test]
fn history_batches_are_limited_both_ways() {
    let h = Node::start(
        "127.0.11.2",
        "alice",
        &[("HUB__PLUGINS__P2P__HISTORY_BATCH", "2")],
    );
    let f = FakeNode::start("127.0.11.5").unwrap();
    befriend_fake(&h, &f);
    let g = h.gui();
    // Inbound: three in one request; the third is refused.
    let msgs: Vec<WireMessage> = (1..=3)
        .map(|n| {
            f.message(&h.address(), &format!("in {n}"))
                .with_id(&format!("{}/{n}", f.address()))
        })
        .collect();
    let key = f.key_from(&h.address()).unwrap();
    let (code, reply) = f
        .post(
            &h.address(),
            &history_request(&f.address(), Some(&key), &msgs),
        )
        .unwrap();
    assert_eq!(
        (code, reply.clone()),
        (200, json!({"status": [1, 1, 0]})),
        "{reply}"
    );
    let (code, reply) = f
        .post(
            &h.address(),
            &history_request(&f.address(), Some(&random_key()), &msgs),
        )
        .unwrap();
    assert_eq!(
        (code, reply["status"].clone()),
        (403, json!(0)),
        "history with a bad key: a plain status 0, not a list: {reply}"
    );
    assert_eq!(texts(&conv(&g, &f.address()), "in"), ["in 1", "in 2"]);

    // Outbound: five undelivered go out two at a time, in order.
    f.set_behavior(Behavior::Drop);
    let ids: Vec<String> = (1..=5)
        .map(|n| g.post(&f.address(), &format!("out {n}")).unwrap())
        .collect();
    eventually("5 undelivered", T, || {
        let c = g.contact(&f.address()).unwrap().unwrap();
        if c.undelivered == 5 {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });
    f.set_behavior(Behavior::Normal);
    assert!(f.wait_stored(T, |s| s.len() >= 5), "{:?}", f.requests());
    let got: Vec<Option<String>> = f.stored().into_iter().map(|m| m.id).collect();
    assert_eq!(
        got,
        ids.into_iter().map(Some).collect::<Vec<_>>(),
        "in order"
    );
    for r in f.requests_with("history") {
        assert!(r.messages().len() <= 2, "history_batch 2: {:?}", r.json);
    }
    assert!(f.anomalies().is_empty(), "{:?}", f.anomalies());
}

// ----- the browser GUI ---------------------------------------------------------------------

fn gui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gui")
}

/// Fails (never skips) with what to install when the browser test cannot run.
fn gui_prerequisites() -> PathBuf {
    let chromium = PathBuf::from(
        std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    let how = "install them with: apt-get install -y chromium nodejs npm && \
               (cd tests/gui && npm ci)   # playwright-core only, no browser download";
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the GUI test needs Node.js (`node` on PATH); {how}"
    );
    assert!(
        chromium.exists(),
        "the GUI test needs Chromium at {} (or CHROMIUM_PATH); {how}",
        chromium.display()
    );
    assert!(
        gui_dir()
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "the GUI test needs tests/gui/node_modules/playwright-core; {how}"
    );
    chromium
}

#[test]
fn gui_in_a_headless_browser_sends_and_receives() {
    let chromium = gui_prerequisites();
    let a = Node::start("127.0.12.2", "alice", &[]);
    let b = Node::start("127.0.12.3", "bob", &[]);
    befriend(&b, &a);
    let sent = "typed in the browser";
    let reply = "answer from the other node";
    let out_dir = tempfile::tempdir().unwrap();
    let stdout_path = out_dir.path().join("stdout.txt");
    let stderr_path = out_dir.path().join("stderr.txt");
    let shot = std::env::var("P2P_GUI_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| out_dir.path().join("page.png"));
    let mut child = Command::new("node")
        .arg(gui_dir().join("p2p_gui.mjs"))
        .arg(format!("http://{}/", a.address()))
        .arg(a.owner)
        .arg(OWNER_PW)
        .arg(b.address())
        .arg(sent)
        .arg(reply)
        .env("CHROMIUM_PATH", &chromium)
        .env("GUI_SCREENSHOT", &shot)
        .current_dir(gui_dir())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("running node");
    let gb = b.gui();
    let end = Instant::now() + Duration::from_secs(120);
    let mut replied = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if !replied {
            if let Ok(c) = gb.conversation(&a.address(), None) {
                if c.iter().any(|m| m.message == sent && m.direction == "in") {
                    gb.post(&a.address(), reply).unwrap();
                    replied = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let report = format!(
        "browser script stdout:\n{out}\nstderr:\n{err}\nscreenshot: {}",
        shot.display()
    );
    assert!(
        replied,
        "the browser's message never reached the other node; {report}"
    );
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("the browser script failed ({s}); {report}"),
        None => panic!("the browser script timed out; {report}"),
    }
    let ga = a.gui();
    eventually("A's contact B with nothing undelivered", T, || {
        let c = ga.contact(&b.address()).unwrap().unwrap();
        if c.undelivered == 0 {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });
    let c = conv(&gb, &a.address());
    assert_eq!(texts(&c, "in"), [sent], "once");
    let inbound = c.iter().find(|m| m.direction == "in").unwrap();
    assert_eq!(inbound.from, a.address());
    // Oldest first (by timestamp: the doc does not say how messages of the same second
    // are ordered).
    assert!(
        c.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
        "oldest first: {c:?}"
    );
    if std::env::var("P2P_GUI_SCREENSHOT").is_ok() {
        eprintln!("browser script output:\n{out}");
    }
}
