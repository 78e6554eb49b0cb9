//! Latency at fixed rates, open loop: every sender has a schedule (message k of pair p
//! is due at `t0 + (k + p/pairs) / rate`) and sends when it is due whatever happened to
//! earlier messages; latency is measured from the scheduled time, so a stall shows up
//! in the figures instead of silently slowing the senders down.
//!
//! The text of each message carries its scheduled time (microseconds since the run's
//! base instant, in this process); the receiver computes delivery latency on arrival.
//! Acknowledgements (`id` set, so the hub answers once the message is durable) give the
//! ack latency, also from the scheduled time. The generator is two threads whatever the
//! number of pairs (see [`drive`]).
//!
//! The rates are fractions of the hub's maximum 1:1 throughput measured at the start of
//! the same run, and the relay ("the limit") is driven at the very same rates.

use crate::common::{account, json_hub, percentile};
use crate::relay::Relay;
use crate::report::{self, Row};
use hub_tests::harness::{metric_in, process_context_switches, process_cpu};
use mio::{Events, Interest, Poll, Token};
use serde_json::Value;
use std::io;
use std::net::{SocketAddr, TcpStream};
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

/// Pairs by default: the closed-loop maximum the rates are fractions of is measured
/// with as many pairs, and 20 keep the setup (40 accounts) short.
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

/// Which end of a pair a socket in the reader belongs to.
#[derive(Clone, Copy)]
enum End {
    /// The receiver's subscribed connection: `message` events.
    Receiver,
    /// The sender's connection: an `ack` (or a refusal) per message, by `id`.
    Sender { pair: usize },
}

/// Writes `message`; on a full socket buffer (the server is not reading) waits and
/// retries, so the message leaves late and its latency, counted from the schedule,
/// shows the stall.
fn send_all(ws: &mut WebSocket<TcpStream>, message: Message, pair: usize) {
    let mut result = ws.send(message);
    loop {
        match result {
            Ok(()) => return,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(50));
                result = ws.flush();
            }
            Err(e) => panic!("sender {pair}: {e}"),
        }
    }
}

/// Drives `params` against the JSON server at `addr`.
///
/// The load generator must cost little next to the server on a 2-core machine, or the
/// figures measure it: two threads in all, whatever the number of pairs. One sends
/// every pair's messages on one schedule (message `i` overall is due at `i / rate`, so
/// pair `i % pairs` sends its message `i / pairs`), sleeping precisely until each is
/// due. The other reads every socket through one epoll set (mio) and timestamps each
/// delivery and acknowledgement as it is read. Both work on second handles (`dup`) of
/// the clients' sockets, switched to non-blocking mode.
fn drive(addr: SocketAddr, params: Params, tag: &str) -> Measured {
    let pairs = params.pairs;
    let per_pair = params.rate / pairs as f64;
    let count = (per_pair * params.seconds).ceil().max(1.0) as usize;
    let total = count * pairs;
    let gap = 1.0 / params.rate;
    let due = move |i: usize| Duration::from_secs_f64(i as f64 * gap);
    let mut clients = Vec::new();
    let mut writers = Vec::new();
    let mut sockets = Vec::new();
    for pair in 0..pairs {
        let (rx_name, tx_name) = (format!("{tag}r{pair}"), format!("{tag}s{pair}"));
        let (mut rx, rx_token) = account(addr, &rx_name);
        assert_eq!(rx.subscribe(&rx_token).expect("subscribe")["resp_code"], 0);
        let (tx, tx_token) = account(addr, &tx_name);
        // The readers start from the sockets' next byte: nothing may be left over in
        // the clients' own buffers.
        assert!(rx.queued().is_empty() && tx.queued().is_empty());
        let second = |client: &hub_tests::json_client::JsonClient| {
            let stream = client
                .try_clone_stream()
                .expect("second handle on the socket");
            stream.set_nonblocking(true).expect("non-blocking");
            stream
        };
        // Everything before the message text, as JSON.
        let head = format!(
            r#"{{"type":"message","session":{},"source":{},"dest":{},"message":""#,
            Value::from(tx_token),
            Value::from(tx_name),
            Value::from(rx_name)
        );
        writers.push((
            WebSocket::from_raw_socket(second(&tx), Role::Client, None),
            head,
        ));
        sockets.push((second(&rx), End::Receiver));
        sockets.push((second(&tx), End::Sender { pair }));
        clients.push((rx, tx));
    }
    // Every thread is running before the first message is due.
    let base = Instant::now() + Duration::from_millis(200);
    let sender = std::thread::spawn(move || {
        for i in 0..total {
            let (k, pair) = (i / pairs, i % pairs);
            if let Some(wait) = due(i).checked_sub(Instant::now().saturating_duration_since(base)) {
                std::thread::sleep(wait);
            }
            let (writer, head) = &mut writers[pair];
            let due_us = due(i).as_micros() as u64;
            let request = format!(r#"{head}{}","id":{k}}}"#, text(k, due_us));
            send_all(writer, Message::Text(request), pair);
        }
        total
    });
    let reader = std::thread::spawn(move || read_all(sockets, total, pairs, base, due));
    let sent = sender.join().expect("sender");
    let mut measured = reader.join().expect("reader");
    drop(clients);
    measured.sent = sent;
    measured.delivery.sort_by(f64::total_cmp);
    measured.ack.sort_by(f64::total_cmp);
    measured
}

/// The reader of [`drive`]: reads every socket until each of the `total` messages was
/// either delivered and acknowledged, or refused.
fn read_all(
    sockets: Vec<(TcpStream, End)>,
    total: usize,
    pairs: usize,
    base: Instant,
    due: impl Fn(usize) -> Duration,
) -> Measured {
    let mut poll = Poll::new().expect("epoll");
    let mut ends = Vec::with_capacity(sockets.len());
    for (n, (stream, end)) in sockets.into_iter().enumerate() {
        let mut stream = mio::net::TcpStream::from_std(stream);
        poll.registry()
            .register(&mut stream, Token(n), Interest::READABLE)
            .expect("register");
        ends.push((WebSocket::from_raw_socket(stream, Role::Client, None), end));
    }
    let mut events = Events::with_capacity(256);
    let mut m = Measured {
        delivery: Vec::with_capacity(total),
        ack: Vec::with_capacity(total),
        sent: 0,
        refused: 0,
    };
    let mut last_progress = Instant::now();
    while m.delivery.len() + m.refused < total || m.ack.len() + m.refused < total {
        poll.poll(&mut events, Some(Duration::from_millis(200)))
            .expect("poll");
        assert!(
            last_progress.elapsed() < T,
            "no progress for {T:?}: {} of {total} delivered, {} acknowledged, {} refused",
            m.delivery.len(),
            m.ack.len(),
            m.refused
        );
        for event in &events {
            let (ws, end) = &mut ends[event.token().0];
            // Edge-triggered: read until the socket has nothing more.
            loop {
                let text = match ws.read() {
                    Ok(Message::Text(text)) => text,
                    // Pings are answered by tungstenite itself.
                    Ok(_) => continue,
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        break
                    }
                    Err(e) => panic!("reading: {e}"),
                };
                let now = Instant::now().saturating_duration_since(base);
                last_progress = Instant::now();
                let reply: Value = serde_json::from_str(&text).expect("a JSON frame");
                match *end {
                    End::Receiver if reply["type"] == "message" => {
                        let due_us = reply["message"]
                            .as_str()
                            .and_then(due_of)
                            .expect("scheduled time in the text");
                        let now_us = now.as_micros() as u64;
                        m.delivery.push(now_us.saturating_sub(due_us) as f64 / 1e3);
                    }
                    End::Receiver => {}
                    End::Sender { pair } => {
                        let k = reply.get("id").and_then(Value::as_u64).expect("reply id");
                        if reply["type"] != "ack" {
                            assert_eq!(reply["resp_code"], 14, "pair {pair}: {reply}");
                            m.refused += 1;
                            continue;
                        }
                        let late = now.saturating_sub(due(k as usize * pairs + pair));
                        m.ack.push(late.as_secs_f64() * 1e3);
                    }
                }
            }
        }
    }
    m
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

/// The group-commit series of `/metrics` a hub row reports on.
pub const FLUSH_COUNTERS: [&str; 5] = [
    "hub_store_flush_seconds_count",
    "hub_store_flush_seconds_sum",
    "hub_store_flush_waiters_total",
    "hub_store_flush_seconds_bucket{le=\"0.002\"}",
    "hub_store_flush_seconds_bucket{le=\"0.005\"}",
];

/// The columns [`flush_figures`] fills.
pub const FLUSH_COLUMNS: [&str; 5] = [
    "flushes",
    "flush_ms",
    "waiters_per_flush",
    "flushes_over_2ms",
    "flushes_over_5ms",
];

/// The group commit under a load, from how much each of [`FLUSH_COUNTERS`] grew: how
/// often it flushed, how long a flush took (sled's flush plus the fsync), how many
/// messages one served, and the flush's tail from the histogram (does it explain the
/// latency's?).
pub fn flush_figures([count, seconds, waiters, within_2ms, within_5ms]: [f64; 5]) -> [f64; 5] {
    [
        count,
        seconds * 1e3 / count,
        waiters / count,
        count - within_2ms,
        count - within_5ms,
    ]
}

/// Measures the hub's maximum (a closed-loop 1:1 run), then the hub and the relay open
/// loop at `fractions` of it.
pub fn run(
    pairs: usize,
    seconds: f64,
    fractions: &[f64],
    durability: &'static str,
    rounds: usize,
) -> Vec<Row> {
    // 1000 messages per pair: half a second or more of steady load. With 200 (used
    // first) the maximum swung by a factor of two between runs; that was before the
    // start line (`common::StartLine`), whose absence, a clock started late, may have
    // been the cause rather than a hub not yet warm. Not measured again since.
    let max = crate::json_pairs::run(crate::json_pairs::Params {
        pairs,
        messages: 1000,
        window: 32,
        durability,
    });
    let max_rate = max
        .figures
        .iter()
        .find(|(name, _)| *name == "msgs_per_sec")
        .map(|(_, v)| *v)
        .expect("throughput row");
    let loads: Vec<(f64, String)> = fractions
        .iter()
        .map(|f| (max_rate * f, format!("{}% of its max", (f * 100.0).round())))
        .collect();
    run_at(pairs, seconds, &loads, durability, rounds)
}

/// The hub and the relay open loop at fixed `rates` (messages a second), for comparing
/// two builds at the same load (`hub-bench latency --rate N`).
pub fn run_rates(
    pairs: usize,
    seconds: f64,
    rates: &[f64],
    durability: &'static str,
    rounds: usize,
) -> Vec<Row> {
    let loads: Vec<(f64, String)> = rates.iter().map(|r| (*r, format!("{r} msgs/s"))).collect();
    run_at(pairs, seconds, &loads, durability, rounds)
}

/// The hub, the relay and (in `flush` mode) the store alone at each `(rate, label)`,
/// `rounds` times each, interleaved (hub, relay, store, then again): each row is its
/// target's run with the median p99, with `p99_spread_pct` ((max - min) / median).
/// A run's p99 is set by a few clumps of late messages (a slow fsync, the shared
/// cores), so single runs of the same build differ by half.
fn run_at(
    pairs: usize,
    seconds: f64,
    loads: &[(f64, String)],
    durability: &'static str,
    rounds: usize,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (rate, load) in loads {
        let params = Params {
            pairs,
            rate: *rate,
            seconds,
        };
        let mut runs: [Vec<Row>; 3] = Default::default();
        for _ in 0..rounds.max(1) {
            for (target, row) in round(params, load, durability).into_iter().enumerate() {
                runs[target].push(row);
            }
        }
        for target in runs.into_iter().filter(|r| !r.is_empty()) {
            rows.push(report::median_by(target, "p99_ms", "p99_spread_pct"));
        }
    }
    rows
}

/// One round at one load: the hub's row, the relay's, and in `flush` mode the store
/// alone's.
fn round(params: Params, load: &str, durability: &'static str) -> Vec<Row> {
    let mut rows = Vec::new();
    // No keep-alive pings during the run: the senders write through a second handle
    // on their sockets, and a pong from the reading side could interleave.
    let hub = json_hub(&[
        ("HUB__LIMITS__WS_PING_SECS", "1800"),
        ("HUB__STORE__DURABILITY", durability),
    ]);
    let cpu = || hub.pid().and_then(process_cpu);
    let switches = || hub.pid().and_then(process_context_switches);
    // One scrape for all of them: read one by one while flushes go on, a bucket could
    // grow past the count read before it (a negative "over 5 ms" was seen).
    let flushes = || {
        let text = hub.http_get("/metrics").1;
        FLUSH_COUNTERS.map(|name| metric_in(&text, name).unwrap_or(f64::NAN))
    };
    let acks = || hub.metric("hub_acks_total").unwrap_or(f64::NAN);
    let (cpu_before, switches_before, flushes_before) = (cpu(), switches(), flushes());
    let acks_before = acks();
    let measured = drive(hub.addr("json", "main"), params, "h");
    let flushes_after = flushes();
    let acks_after = acks();
    let mut hub_row = row(format!("hub ({durability}) at {load}"), params, &measured);
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
    // Proofs of receipt (cursor moves) per message: how much the receivers' pongs
    // cost when deliveries come one at a time.
    hub_row.figures.push((
        "acks_per_msg",
        (acks_after - acks_before) / measured.sent as f64,
    ));
    let delta = std::array::from_fn(|i| flushes_after[i] - flushes_before[i]);
    hub_row
        .figures
        .extend(FLUSH_COLUMNS.into_iter().zip(flush_figures(delta)));
    rows.push(hub_row);
    drop(hub);
    let relay = Relay::start();
    let measured = drive(relay.addr, params, "l");
    let mut relay_row = row("limit (relay) at the same rate".into(), params, &measured);
    relay_row.figures.push(("cpu_us_per_msg", f64::NAN));
    relay_row.figures.push(("switches_per_msg", f64::NAN));
    for column in FLUSH_COLUMNS {
        relay_row.figures.push((column, f64::NAN));
    }
    rows.push(relay_row);
    if durability == "flush" {
        // The storage floor under the same schedule: what of the hub's latency is
        // sled and the group commit alone.
        rows.push(crate::store::open_loop(
            params.pairs,
            params.rate,
            params.seconds,
            durability,
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
