//! Latency at fixed rates, open loop: every sender has a schedule (message k of pair p
//! is due at `t0 + (k + p/pairs) / rate`) and sends when it is due whatever happened to
//! earlier messages; latency is measured from the scheduled time, so a stall shows up
//! in the figures instead of silently slowing the senders down.
//!
//! The text of each message carries its scheduled time (microseconds since the run's
//! base instant, in this process); the receiver computes delivery latency on arrival.
//! Acknowledgements (`id` set, so the hub answers once the message is durable) are read
//! by a thread of their own and give the ack latency, also from the scheduled time.
//!
//! The rates are fractions of the hub's maximum 1:1 throughput measured at the start of
//! the same run, and the relay ("the limit") is driven at the very same rates.

use crate::common::{account, json_hub, percentile};
use crate::relay::Relay;
use crate::report::Row;
use hub_tests::harness::{process_context_switches, process_cpu};
use hub_tests::json_client::ClientError;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// One run's shape.
#[derive(Clone, Copy)]
pub struct Params {
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Offered load, messages per second over all pairs.
    pub rate: f64,
    /// How long the senders send.
    pub seconds: f64,
}

/// Latencies of one run, milliseconds.
struct Measured {
    delivery: Vec<f64>,
    ack: Vec<f64>,
    sent: usize,
    /// Messages the server refused as overloaded (JSON code 14): the offered load was
    /// more than it could take.
    refused: usize,
}

/// Pairs by default. Open loop costs the load generator three thread wake-ups per
/// message (sender, ack reader, receiver); with 100 pairs on a 2-core machine the
/// generator alone starves the hub at half its closed-loop maximum, and the figures
/// would measure the generator.
pub const PAIRS: usize = 20;

const T: Duration = Duration::from_secs(60);

/// The text of message `k`, due at `due_us` after the base: 100 bytes like the 1:1
/// workload's.
fn text(k: usize, due_us: u64) -> String {
    let mut s = format!("{k}:{due_us}:");
    s.extend(std::iter::repeat_n('x', 100usize.saturating_sub(s.len())));
    s
}

fn due_of(text: &str) -> Option<u64> {
    text.split(':').nth(1)?.parse().ok()
}

/// Drives `params` against the JSON server at `addr`.
fn drive(addr: SocketAddr, params: Params, tag: &str) -> Measured {
    let per_pair = params.rate / params.pairs as f64;
    let count = (per_pair * params.seconds).ceil().max(1.0) as usize;
    let gap = Duration::from_secs_f64(1.0 / per_pair);
    let mut clients = Vec::new();
    for pair in 0..params.pairs {
        let (rx_name, tx_name) = (format!("{tag}r{pair}"), format!("{tag}s{pair}"));
        let (mut rx, rx_token) = account(addr, &rx_name);
        assert_eq!(rx.subscribe(&rx_token).expect("subscribe")["resp_code"], 0);
        let (tx, tx_token) = account(addr, &tx_name);
        clients.push((rx, tx, tx_token, tx_name, rx_name));
    }
    // Every thread is running before the first message is due.
    let base = Instant::now() + Duration::from_millis(200);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut ack_readers = Vec::new();
    for (pair, (mut rx, mut tx, tx_token, tx_name, rx_name)) in clients.into_iter().enumerate() {
        let refused = Arc::new(AtomicUsize::new(0));
        let refused_seen = refused.clone();
        receivers.push(std::thread::spawn(move || {
            let mut latencies = Vec::with_capacity(count);
            // A message the hub refused (code 14, overloaded) never arrives: stop once
            // everything was either received or refused.
            let mut last_progress = Instant::now();
            while latencies.len() + refused_seen.load(Relaxed) < count {
                let message = match rx.recv_type("message", Duration::from_millis(200)) {
                    Ok(message) => message,
                    Err(ClientError::Timeout) if last_progress.elapsed() < T => continue,
                    Err(e) => panic!("pair {pair}: message {} of {count}: {e}", latencies.len()),
                };
                last_progress = Instant::now();
                let now = Instant::now().saturating_duration_since(base).as_micros() as u64;
                let due = message["message"]
                    .as_str()
                    .and_then(due_of)
                    .expect("scheduled time in the text");
                latencies.push(now.saturating_sub(due) as f64 / 1e3);
            }
            latencies
        }));
        // The sender writes through its own handle on the socket and sleeps until each
        // message is due (a precise sleep); a second thread reads the acks. One thread
        // doing both would wait for acks with socket timeouts, which the kernel rounds
        // to its tick and would make messages leave late.
        let mut writer = WebSocket::from_raw_socket(
            tx.try_clone_stream().expect("second handle on the socket"),
            Role::Client,
            None,
        );
        let phase = gap.mul_f64(pair as f64 / params.pairs as f64);
        let due = move |k: usize| phase + gap * k as u32;
        senders.push(std::thread::spawn(move || {
            for k in 0..count {
                if let Some(wait) =
                    due(k).checked_sub(Instant::now().saturating_duration_since(base))
                {
                    std::thread::sleep(wait);
                }
                let due_us = due(k).as_micros() as u64;
                let request = json!({"type": "message", "session": tx_token,
                    "source": tx_name, "dest": rx_name, "message": text(k, due_us), "id": k});
                writer
                    .send(Message::Text(request.to_string()))
                    .unwrap_or_else(|e| panic!("sender {pair}: {e}"));
            }
            count
        }));
        ack_readers.push(std::thread::spawn(move || {
            let mut acks = Vec::with_capacity(count);
            for got in 0..count {
                let reply = tx
                    .recv(T)
                    .unwrap_or_else(|e| panic!("pair {pair}: ack {got}: {e}"));
                let k = reply.get("id").and_then(Value::as_u64).expect("reply id") as usize;
                if reply["type"] != "ack" {
                    assert_eq!(reply["resp_code"], 14, "pair {pair}: {reply}");
                    refused.fetch_add(1, Relaxed);
                    continue;
                }
                let late = Instant::now()
                    .saturating_duration_since(base)
                    .saturating_sub(due(k));
                acks.push(late.as_secs_f64() * 1e3);
            }
            acks
        }));
    }
    let sent: usize = senders.into_iter().map(|s| s.join().expect("sender")).sum();
    let mut ack: Vec<f64> = ack_readers
        .into_iter()
        .flat_map(|r| r.join().expect("ack reader"))
        .collect();
    let refused = sent - ack.len();
    let mut delivery: Vec<f64> = receivers
        .into_iter()
        .flat_map(|r| r.join().expect("receiver"))
        .collect();
    delivery.sort_by(f64::total_cmp);
    ack.sort_by(f64::total_cmp);
    Measured {
        delivery,
        ack,
        sent,
        refused,
    }
}

fn row(label: String, params: Params, m: &Measured) -> Row {
    Row {
        label,
        figures: vec![
            ("rate_per_sec", params.rate),
            ("messages", m.sent as f64),
            ("p50_ms", percentile(&m.delivery, 0.5)),
            ("p99_ms", percentile(&m.delivery, 0.99)),
            ("p999_ms", percentile(&m.delivery, 0.999)),
            ("ack_p99_ms", percentile(&m.ack, 0.99)),
            ("refused", m.refused as f64),
        ],
    }
}

/// Measures the hub's maximum (a closed-loop 1:1 run), then the hub and the relay open
/// loop at `fractions` of it.
pub fn run(pairs: usize, seconds: f64, fractions: &[f64], durability: &'static str) -> Vec<Row> {
    let max = crate::json_pairs::run(crate::json_pairs::Params {
        pairs,
        messages: 200,
        window: 32,
        durability,
    });
    let max_rate = max
        .figures
        .iter()
        .find(|(name, _)| *name == "msgs_per_sec")
        .map(|(_, v)| *v)
        .expect("throughput row");
    let mut rows = Vec::new();
    for &fraction in fractions {
        let params = Params {
            pairs,
            rate: max_rate * fraction,
            seconds,
        };
        let pct = (fraction * 100.0).round();
        // No keep-alive pings during the run: the senders write through a second handle
        // on their sockets, and a pong from the reading side could interleave.
        let hub = json_hub(&[
            ("HUB__LIMITS__WS_PING_SECS", "1800"),
            ("HUB__STORE__DURABILITY", durability),
        ]);
        let cpu = || hub.pid().and_then(process_cpu);
        let switches = || hub.pid().and_then(process_context_switches);
        let (cpu_before, switches_before) = (cpu(), switches());
        let measured = drive(hub.addr("json", "main"), params, "h");
        let mut hub_row = row(
            format!("hub ({durability}) at {pct}% of its max"),
            params,
            &measured,
        );
        // The hub's CPU time per message over the whole run (setup included, which is
        // small next to the load).
        if let (Some(before), Some(after)) = (cpu_before, cpu()) {
            let per_msg = (after - before).as_secs_f64() * 1e6 / measured.sent as f64;
            hub_row.figures.push(("cpu_us_per_msg", per_msg));
        }
        // Thread switches per message: what a message costs in hand-overs between
        // threads (each a wake-up), the cost that batching hides at full load.
        if let (Some(before), Some(after)) = (switches_before, switches()) {
            let per_msg = (after - before) as f64 / measured.sent as f64;
            hub_row.figures.push(("switches_per_msg", per_msg));
        }
        rows.push(hub_row);
        drop(hub);
        let relay = Relay::start();
        let measured = drive(relay.addr, params, "l");
        let mut relay_row = row("limit (relay) at the same rate".into(), params, &measured);
        relay_row.figures.push(("cpu_us_per_msg", f64::NAN));
        relay_row.figures.push(("switches_per_msg", f64::NAN));
        rows.push(relay_row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_is_100_bytes_and_carries_its_schedule() {
        let t = text(12, 3_456_789);
        assert_eq!(t.len(), 100);
        assert_eq!(due_of(&t), Some(3_456_789));
    }
}
