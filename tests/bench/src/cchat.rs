//! cchat rooms: how long the group key negotiation takes to settle when a member joins
//! (the real 2048-bit arithmetic, done by the clients, is part of it), and how many
//! messages per second one sender fans out to a room.

use crate::common::percentile;
use crate::report::Row;
use hub_tests::cchat_client::{sha1_hex, CchatClient};
use hub_tests::harness::{Hub, HubOptions};
use serde_json::Value;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn hub() -> Hub {
    Hub::start(HubOptions::with(&["cchat"]).env("HUB__LOG__LEVEL", "warn,hub=info"))
}

fn member(hub: &Hub, name: &str, room: &str) -> CchatClient {
    let client = CchatClient::connect(hub.addr("cchat", "main")).expect("connect");
    client
        .join_within(&sha1_hex(name), &sha1_hex(room), T)
        .expect("join");
    client
}

/// Waits until every member holds a new key (more than `before[i]` keys).
fn settle(members: &[CchatClient], before: &[usize]) {
    for (member, count) in members.iter().zip(before) {
        member.wait_settled_since(*count, T).expect("settled");
    }
}

/// Key settle time: a room of `members - 1` settles, then the last member joins; timed
/// from its join until every member holds the new key. Repeated `rounds` times (the
/// last member leaves and the room settles again between rounds).
pub fn keys(members: usize, rounds: usize) -> Row {
    let hub = hub();
    let room = "bench-keys";
    let mut present: Vec<CchatClient> = Vec::new();
    for n in 0..members - 1 {
        let before: Vec<usize> = present.iter().map(CchatClient::key_count).collect();
        let client = member(&hub, &format!("m{n}"), room);
        present.push(client);
        let mut counts = before;
        counts.push(0);
        settle(&present, &counts);
    }
    let mut times = Vec::new();
    for round in 0..rounds {
        let mut counts: Vec<usize> = present.iter().map(CchatClient::key_count).collect();
        let began = Instant::now();
        let last = member(&hub, &format!("last{round}"), room);
        present.push(last);
        counts.push(0);
        settle(&present, &counts);
        times.push(began.elapsed().as_secs_f64() * 1e3);
        let last = present.pop().expect("the last member");
        let counts: Vec<usize> = present.iter().map(CchatClient::key_count).collect();
        last.leave().expect("leave");
        settle(&present, &counts);
    }
    times.sort_by(f64::total_cmp);
    Row {
        label: format!("{members}th member joins, 2048-bit"),
        figures: vec![
            ("rounds", rounds as f64),
            ("settle_p50_ms", percentile(&times, 0.5)),
            ("settle_max_ms", percentile(&times, 1.0)),
        ],
    }
}

/// Fan-out: one member of a `members`-member room sends `messages` messages, keeping at
/// most `window` whose own copy has not come back; timed until every member has all.
pub fn fanout(members: usize, messages: usize, window: usize) -> Row {
    let hub = hub();
    let room = "bench-fanout";
    let mut present: Vec<CchatClient> = Vec::new();
    for n in 0..members {
        let before: Vec<usize> = present.iter().map(CchatClient::key_count).collect();
        present.push(member(&hub, &format!("f{n}"), room));
        let mut counts = before;
        counts.push(0);
        settle(&present, &counts);
    }
    let payload = vec![b'x'; 100];
    let sender = &present[0];
    let began = Instant::now();
    for n in 0..messages {
        if n >= window {
            sender
                .wait_message_count(n + 1 - window, T)
                .expect("own copies come back");
        }
        sender.send_message(&payload, Value::Null).expect("send");
    }
    for member in &present {
        member
            .wait_message_count(messages, T)
            .expect("every message reaches every member");
    }
    let elapsed = began.elapsed().as_secs_f64();
    Row {
        label: format!("{members} members, 1 sender"),
        figures: vec![
            ("messages", messages as f64),
            ("seconds", elapsed),
            ("msgs_per_sec", messages as f64 / elapsed),
            ("deliveries_per_sec", (messages * members) as f64 / elapsed),
        ],
    }
}
