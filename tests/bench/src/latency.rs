//! Latency at fixed rates, open loop: every sender has a schedule (message k of pair p
//! is due at `t0 + (k + p/pairs) / rate`) and sends when it is due whatever happened to
//! earlier messages; latency is measured from the scheduled time, so a stall shows up
//! in the figures instead of silently slowing the senders down.
//!
//! The text of each message carries its scheduled time (microseconds since the run's
//! base instant, in this process); the receiver computes delivery latency on arrival.
//! Acknowledgements (`id` set, so the hub answers once the message is durable) are read
//! by the sender between sends and give the ack latency.
//!
//! The rates are fractions of the hub's maximum 1:1 throughput measured at the start of
//! the same run, and the relay ("the limit") is driven at the very same rates.

use crate::common::{account, json_hub, percentile};
use crate::relay::Relay;
use crate::report::Row;
use hub_tests::json_client::{ClientError, JsonClient};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
}

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
    for (pair, (mut rx, mut tx, tx_token, tx_name, rx_name)) in clients.into_iter().enumerate() {
        receivers.push(std::thread::spawn(move || {
            let mut latencies = Vec::with_capacity(count);
            for _ in 0..count {
                let message = rx.recv_type("message", T).expect("message");
                let now = Instant::now().saturating_duration_since(base).as_micros() as u64;
                let due = message["message"]
                    .as_str()
                    .and_then(due_of)
                    .expect("scheduled time in the text");
                latencies.push(now.saturating_sub(due) as f64 / 1e3);
            }
            latencies
        }));
        senders.push(std::thread::spawn(move || {
            // Pairs are spread over one gap so they do not all send at the same instant.
            let phase = gap.mul_f64(pair as f64 / params.pairs as f64);
            let due = |k: usize| phase + gap * k as u32;
            let elapsed = || Instant::now().saturating_duration_since(base);
            let mut acks = Vec::with_capacity(count);
            let mut next = 0;
            while acks.len() < count {
                let now = elapsed();
                if next < count && now >= due(next) {
                    let due_us = due(next).as_micros() as u64;
                    let request = json!({"type": "message", "session": tx_token,
                        "source": tx_name, "dest": rx_name, "message": text(next, due_us),
                        "id": next});
                    tx.send(&request).expect("send");
                    next += 1;
                    continue;
                }
                let wait = if next < count {
                    due(next).saturating_sub(now).max(Duration::from_micros(50))
                } else {
                    T
                };
                match read_ack(&mut tx, wait) {
                    Ok(Some(k)) => {
                        let late = elapsed().saturating_sub(due(k));
                        acks.push(late.as_secs_f64() * 1e3);
                    }
                    Ok(None) => {}
                    Err(e) => panic!("sender {pair}: {e}"),
                }
            }
            (acks, count)
        }));
    }
    let mut ack = Vec::new();
    let mut sent = 0;
    for sender in senders {
        let (acks, n) = sender.join().expect("sender");
        ack.extend(acks);
        sent += n;
    }
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
    }
}

/// The next ack's id within `wait` (`None`: nothing in time).
fn read_ack(client: &mut JsonClient, wait: Duration) -> Result<Option<usize>, String> {
    match client.recv_type("ack", wait) {
        Ok(ack) => Ok(Some(
            ack.get("id").and_then(Value::as_u64).expect("ack id") as usize
        )),
        Err(ClientError::Timeout) => Ok(None),
        Err(e) => Err(e.to_string()),
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
        ],
    }
}

/// Measures the hub's maximum (a closed-loop 1:1 run), then the hub and the relay open
/// loop at `fractions` of it.
pub fn run(pairs: usize, seconds: f64, fractions: &[f64]) -> Vec<Row> {
    let max = crate::json_pairs::run(crate::json_pairs::Params {
        pairs,
        messages: 200,
        window: 32,
        durability: "flush",
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
        let hub = json_hub(&[]);
        let measured = drive(hub.addr("json", "main"), params, "h");
        rows.push(row(format!("hub at {pct}% of its max"), params, &measured));
        drop(hub);
        let relay = Relay::start();
        let measured = drive(relay.addr, params, "l");
        rows.push(row(
            "limit (relay) at the same rate".into(),
            params,
            &measured,
        ));
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
