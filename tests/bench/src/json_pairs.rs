//! 1:1 throughput: N pairs of JSON clients; each sender sends M 100-byte messages with
//! an `id`, keeping W unacknowledged, and the hub acknowledges each once it is stored
//! (durably, in flush mode). Measured from the start signal until every receiver has
//! every message.

use crate::report::Row;
use hub_tests::harness::{Hub, HubOptions};
use hub_tests::json_client::JsonClient;
use serde_json::json;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Scenario parameters.
pub struct Params {
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Messages per sender.
    pub messages: usize,
    /// Unacknowledged messages a sender keeps in flight.
    pub window: usize,
    /// `flush` or `interval`.
    pub durability: &'static str,
}

const T: Duration = Duration::from_secs(60);

fn account(hub: &Hub, name: &str) -> (JsonClient, String) {
    let mut client = JsonClient::connect(hub.addr("json", "main")).expect("connect");
    let reply = client.signup(name, "pw", "sha256").expect("signup");
    let token = reply["session"].as_str().expect("token").to_owned();
    (client, token)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs one configuration.
pub fn run(params: Params) -> Row {
    let hub = Hub::start(
        HubOptions::with(&["json"])
            .env("HUB__STORE__DURABILITY", params.durability)
            .env("HUB__LOG__LEVEL", "warn,hub=info"),
    );
    let payload = "x".repeat(100);
    let start = Arc::new(Barrier::new(params.pairs * 2 + 1));
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for pair in 0..params.pairs {
        let (mut rx, rx_token) = account(&hub, &format!("r{pair}"));
        assert_eq!(rx.subscribe(&rx_token).expect("subscribe")["resp_code"], 0);
        let (tx, tx_token) = account(&hub, &format!("s{pair}"));
        let barrier = start.clone();
        let count = params.messages;
        receivers.push(std::thread::spawn(move || {
            barrier.wait();
            for _ in 0..count {
                rx.recv_type("message", T).expect("message");
            }
            Instant::now()
        }));
        let barrier = start.clone();
        let (window, payload) = (params.window, payload.clone());
        senders.push(std::thread::spawn(move || {
            let mut tx = tx;
            let mut latencies = Vec::with_capacity(count);
            let mut sent_at = std::collections::VecDeque::new();
            barrier.wait();
            let (source, dest) = (format!("s{pair}"), format!("r{pair}"));
            for n in 0..count {
                while sent_at.len() >= window {
                    tx.recv_type("ack", T).expect("ack");
                    let t: Instant = sent_at.pop_front().expect("in flight");
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
                let request = json!({"type": "message", "session": tx_token, "source": source, "dest": dest, "message": payload, "id": n});
                tx.send(&request).expect("send");
                sent_at.push_back(Instant::now());
            }
            while let Some(t) = sent_at.pop_front() {
                tx.recv_type("ack", T).expect("ack");
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
            }
            latencies
        }));
    }
    start.wait();
    let began = Instant::now();
    let mut latencies: Vec<f64> = senders
        .into_iter()
        .flat_map(|s| s.join().expect("sender"))
        .collect();
    let acked = began.elapsed();
    let done = receivers
        .into_iter()
        .map(|r| r.join().expect("receiver"))
        .max()
        .unwrap_or(began);
    let elapsed = done.duration_since(began).max(acked);
    latencies.sort_by(f64::total_cmp);
    let total = (params.pairs * params.messages) as f64;
    Row {
        label: format!("{} pairs, {}", params.pairs, params.durability),
        figures: vec![
            ("messages", total),
            ("seconds", elapsed.as_secs_f64()),
            ("msgs_per_sec", total / elapsed.as_secs_f64()),
            ("ack_p50_ms", percentile(&latencies, 0.5)),
            ("ack_p99_ms", percentile(&latencies, 0.99)),
            ("hub_start_ms", hub.start_time.as_secs_f64() * 1e3),
        ],
    }
}
