//! Backlog drain: `messages` acknowledged messages stored for one offline recipient
//! (sent by `SENDERS` clients, each keeping a window unacknowledged), then the recipient
//! connects and subscribes; timed from its subscribe until the last message arrives.

use crate::common::{account, json_hub};
use crate::report::Row;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);
const SENDERS: usize = 4;
const WINDOW: usize = 64;

/// 100 bytes, starting with the sender's sequence number.
fn text(k: usize) -> String {
    let mut s = format!("{k}:");
    s.extend(std::iter::repeat_n('x', 100 - s.len()));
    s
}

/// Fills and drains a backlog of `messages`.
pub fn run(messages: usize) -> Row {
    let hub = json_hub(&[]);
    let addr = hub.addr("json", "main");
    let (recipient, token) = account(addr, "backlog-rx");
    recipient.close().expect("close");
    let per_sender = messages.div_ceil(SENDERS);
    let total = per_sender * SENDERS;
    let filling = Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            std::thread::spawn(move || {
                let name = format!("backlog-tx{s}");
                let (mut client, token) = account(addr, &name);
                let mut in_flight = 0;
                for k in 0..per_sender {
                    if in_flight >= WINDOW {
                        client.recv_type("ack", T).expect("ack");
                        in_flight -= 1;
                    }
                    let request = json!({"type": "message", "session": token, "source": name,
                        "dest": "backlog-rx", "message": text(k), "id": k});
                    client.send(&request).expect("send");
                    in_flight += 1;
                }
                for _ in 0..in_flight {
                    client.recv_type("ack", T).expect("ack");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("sender");
    }
    let fill_secs = filling.elapsed().as_secs_f64();

    let mut client = hub_tests::json_client::JsonClient::connect(addr).expect("connect");
    let began = Instant::now();
    let reply = client.subscribe(&token).expect("subscribe");
    assert_eq!(reply["resp_code"], 0, "{reply}");
    // Each sender's messages arrive in the order sent, each once.
    let mut next: HashMap<String, usize> = HashMap::new();
    for _ in 0..total {
        let message = client.recv_type("message", T).expect("backlog message");
        let source = message["source"].as_str().expect("source").to_owned();
        let k = message["message"]
            .as_str()
            .and_then(|t| t.split(':').next()?.parse::<usize>().ok())
            .expect("sequence number in the text");
        let expected = next.entry(source.clone()).or_default();
        assert_eq!(k, *expected, "message {k} from {source} out of order");
        *expected += 1;
    }
    let drain_secs = began.elapsed().as_secs_f64();
    Row {
        label: format!("{total} stored for one recipient"),
        figures: vec![
            ("messages", total as f64),
            ("fill_secs", fill_secs),
            ("fill_per_sec", total as f64 / fill_secs),
            ("drain_secs", drain_secs),
            ("drain_per_sec", total as f64 / drain_secs),
        ],
    }
}
