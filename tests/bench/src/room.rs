//! Room fan-out with JSON clients: `members` subscribed members of `#bench`, one of them
//! sends `messages` 100-byte messages to the room keeping `window` unacknowledged (the
//! hub acknowledges once every member's copy is durable); timed from the first send
//! until every other member has every message.

use crate::common::{json_hub, many_subscribed, Subscribed};
use crate::report::Row;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);
const ROOM: &str = "#bench";

fn join(member: &mut Subscribed) {
    let request = json!({"type": "room.join", "session": member.token,
        "source": member.name, "dest": ROOM});
    member.client.send(&request).expect("send room.join");
    let reply = member
        .client
        .recv_where(
            |v| v["type"] == "room.join" && v.get("resp_code").is_some(),
            T,
        )
        .expect("room.join reply");
    assert_eq!(reply["resp_code"], 0, "room.join: {reply}");
}

/// Runs one room size.
pub fn run(members: usize, messages: usize, window: usize) -> Row {
    let hub = json_hub(&[]);
    let addr = hub.addr("json", "main");
    let mut clients = many_subscribed(addr, &format!("m{members}-"), members, 8);
    for member in &mut clients {
        join(member);
    }
    let mut sender = clients.remove(0);
    let start = Arc::new(Barrier::new(clients.len() + 1));
    let receivers: Vec<_> = clients
        .into_iter()
        .map(|mut member| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..messages {
                    member
                        .client
                        .recv_where(|v| v["type"] == "message" && v["dest"] == ROOM, T)
                        .expect("room message");
                }
                Instant::now()
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let payload = "x".repeat(100);
    let mut in_flight = VecDeque::new();
    let mut acks = Vec::with_capacity(messages);
    let await_ack = |sender: &mut Subscribed, sent: Instant| -> f64 {
        let ack = sender.client.recv_type("ack", T).expect("ack");
        assert_eq!(ack["resp_code"], 0, "{ack}");
        assert!(ack.get("id").and_then(Value::as_u64).is_some());
        sent.elapsed().as_secs_f64() * 1e3
    };
    for n in 0..messages {
        if in_flight.len() >= window {
            let sent = in_flight.pop_front().expect("in flight");
            acks.push(await_ack(&mut sender, sent));
        }
        let request = json!({"type": "message", "session": sender.token,
            "source": sender.name, "dest": ROOM, "message": payload, "id": n});
        sender.client.send(&request).expect("send");
        in_flight.push_back(Instant::now());
    }
    while let Some(sent) = in_flight.pop_front() {
        acks.push(await_ack(&mut sender, sent));
    }
    let done = receivers
        .into_iter()
        .map(|r| r.join().expect("receiver"))
        .max()
        .unwrap_or(began);
    let elapsed = done.duration_since(began).as_secs_f64();
    acks.sort_by(f64::total_cmp);
    let copies = (messages * (members - 1)) as f64;
    Row {
        label: format!("room of {members}, 1 sender"),
        figures: vec![
            ("messages", messages as f64),
            ("seconds", elapsed),
            ("msgs_per_sec", messages as f64 / elapsed),
            ("deliveries_per_sec", copies / elapsed),
            ("ack_p50_ms", crate::common::percentile(&acks, 0.5)),
            ("ack_p99_ms", crate::common::percentile(&acks, 0.99)),
        ],
    }
}
