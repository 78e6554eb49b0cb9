//! P2P: messages per second between two federated nodes (a JSON user on one writing to
//! the owner of the other, through the P2P network), and the time to drain 1 000
//! undelivered messages once a stopped node returns.

use crate::report::Row;
use hub_tests::harness::{Hub, HubOptions};
use hub_tests::json_client::JsonClient;
use hub_tests::p2p_client::Gui;
use serde_json::json;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

fn node(ip: &str, owner: &str) -> Hub {
    let options = HubOptions::with(&["p2p", "json"])
        .env("HUB__LOG__LEVEL", "warn,hub=info")
        .env("HUB__PLUGINS__P2P__LISTEN__MAIN", &format!("{ip}:0"))
        .env("HUB__PLUGINS__P2P__OWNER", owner)
        .env("HUB__PLUGINS__P2P__PING_SECS", "1");
    let owner = owner.to_owned();
    let mut hub = Hub::start_after(options, move |hub| {
        let (ok, _, err) = hub.cli(&["user", "add", &owner, "--hash", "sha256"], "pw\n");
        assert!(ok, "user add: {err}");
    });
    hub.keep_addresses();
    hub
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + T;
    while !done() {
        assert!(Instant::now() < end, "{what} did not happen in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A JSON client signed in as `user`; subscribed if `subscribe`.
fn json_user(hub: &Hub, user: &str, subscribe: bool) -> (JsonClient, String) {
    let mut client = JsonClient::connect(hub.addr("json", "main")).expect("connect");
    let reply = client.signin(user, "pw").expect("signin");
    let token = reply["session"].as_str().expect("a session").to_owned();
    if subscribe {
        assert_eq!(client.subscribe(&token).expect("subscribe")["resp_code"], 0);
    }
    (client, token)
}

/// Sends `count` messages from alice to `dest`, keeping `window` unacknowledged.
fn send_all(
    client: &mut JsonClient,
    token: &str,
    dest: &str,
    count: usize,
    window: usize,
    tag: &str,
) {
    let mut in_flight = 0;
    for n in 0..count {
        if in_flight >= window {
            client.recv_type("ack", T).expect("ack");
            in_flight -= 1;
        }
        let message = json!({"type": "message", "session": token, "source": "alice", "dest": dest, "message": format!("{tag} {n}"), "id": n});
        client.send(&message).expect("send");
        in_flight += 1;
    }
    for _ in 0..in_flight {
        client.recv_type("ack", T).expect("ack");
    }
}

/// Runs both measurements.
pub fn run(messages: usize, backlog: usize) -> Vec<Row> {
    let a = node("127.0.0.2", "alice");
    let mut b = node("127.0.0.3", "bob");
    let (a_addr, b_addr) = (a.addr("p2p", "main"), b.addr("p2p", "main"));
    let gui = Gui::login(a_addr, "alice", "pw").expect("GUI login");
    gui.add_contact(&b_addr.to_string(), Some("bob"), None)
        .expect("add contact");
    wait("the handshake", || {
        gui.contact(&b_addr.to_string())
            .ok()
            .flatten()
            .is_some_and(|c| c.acked)
    });

    // Throughput: alice (a JSON user on A) writes to B's address; bob (B's owner, a
    // JSON user on B) receives.
    let (mut alice, token) = json_user(&a, "alice", false);
    let (mut bob, _) = json_user(&b, "bob", true);
    let dest = b_addr.to_string();
    let began = Instant::now();
    send_all(&mut alice, &token, &dest, messages, 64, "live");
    for _ in 0..messages {
        bob.recv_type("message", T)
            .expect("a message through the network");
    }
    let live = began.elapsed().as_secs_f64();

    // Drain: B stops, `backlog` messages wait on A, B returns.
    drop(bob);
    assert!(b.terminate(), "B stops cleanly");
    send_all(&mut alice, &token, &dest, backlog, 64, "waiting");
    let started = Instant::now();
    b.restart();
    let (mut bob, _) = json_user(&b, "bob", true);
    for _ in 0..backlog {
        bob.recv_type("message", T).expect("a waiting message");
    }
    let drain = started.elapsed().as_secs_f64();
    vec![
        Row {
            label: "2 nodes, live".into(),
            figures: vec![
                ("messages", messages as f64),
                ("seconds", live),
                ("msgs_per_sec", messages as f64 / live),
            ],
        },
        Row {
            label: format!("drain {backlog} on return"),
            figures: vec![
                ("messages", backlog as f64),
                ("seconds", drain),
                ("msgs_per_sec", backlog as f64 / drain),
            ],
        },
    ]
}
