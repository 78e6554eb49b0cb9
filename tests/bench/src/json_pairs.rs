//! 1:1 throughput: N pairs of JSON clients; each sender sends M 100-byte messages with
//! an `id`, keeping W unacknowledged, and the hub acknowledges each once it is stored
//! (durably, in flush mode). Measured from the start signal until every receiver has
//! every message.
//!
//! The same clients also run against the minimal relay ([`Target::Relay`], "the limit"),
//! and [`baselines`] puts the hub beside the relay and a peer broker (`crate::peer`).

use crate::common::{account, join_pairs, json_hub, percentile, StartLine};
use crate::relay::Relay;
use crate::report::Row;
use hub_tests::harness::{metric_in, process_cpu, Hub};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Scenario parameters.
pub struct Params {
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Messages per sender.
    pub messages: usize,
    /// Unacknowledged messages a sender keeps in flight.
    pub window: usize,
    /// `flush` or `interval` (hub only).
    pub durability: &'static str,
}

/// What the clients talk to.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The real hub with the JSON plugin, in `Params::durability` mode.
    Hub,
    /// The minimal relay of `crate::relay` (`Params::durability` is not used).
    Relay,
}

const T: Duration = Duration::from_secs(60);

/// Messages per sender in the baselines (and `all`): each target runs for a second or
/// more. (The 2-3x swings once seen with 1000 were the clock starting late, not the
/// targets: see `common::StartLine`.)
pub const MESSAGES: usize = 3000;

/// Runs one configuration against the hub.
pub fn run(params: Params) -> Row {
    run_on(Target::Hub, params)
}

/// Runs one configuration against `target`.
pub fn run_on(target: Target, params: Params) -> Row {
    match target {
        Target::Hub => {
            let hub = json_hub(&[("HUB__STORE__DURABILITY", params.durability)]);
            let run = drive(hub.addr("json", "main"), &params, Some(&hub));
            let total = (params.pairs * params.messages) as f64;
            let generator = run.generator_us_per_msg(total);
            let label = format!("{} pairs, {}", params.pairs, params.durability);
            let mut row = row(
                label,
                &params,
                run.elapsed,
                run.latencies,
                hub.start_time,
                run.cpu,
            );
            row.figures.push(("bench_cpu_us_per_msg", generator));
            let [acks, flushes, waiters, records] = run.counters;
            // Proofs of receipt (each a cursor write) and group commits per message.
            row.figures.push(("acks_per_msg", acks / total));
            row.figures.push(("msgs_per_flush", total / flushes));
            row.figures.push(("waiters_per_flush", waiters / flushes));
            // Messages per store record: how much a user actor's bursts batch.
            row.figures.push(("msgs_per_record", total / records));
            row
        }
        Target::Relay => {
            let relay = Relay::start();
            let run = drive(relay.addr, &params, None);
            let label = format!("{} pairs, limit (relay)", params.pairs);
            let total = (params.pairs * params.messages) as f64;
            let generator = run.generator_us_per_msg(total);
            let mut row = row(
                label,
                &params,
                run.elapsed,
                run.latencies,
                relay.start_time,
                None,
            );
            row.figures.push(("bench_cpu_us_per_msg", generator));
            row
        }
    }
}

/// The hub (flush and interval), the relay and mosquitto on the same workload, each row
/// with its throughput as a percentage of the relay's (`pct_of_limit`).
///
/// One run of the relay lasts about a second, and a shared machine adds its noise: every
/// target runs `rounds` times, interleaved (hub, hub, relay, peer, then again), and each
/// row is its target's median run by throughput, with the spread of its runs
/// (`spread_pct`: (max - min) / median).
pub fn baselines(pairs: usize, messages: usize, window: usize, rounds: usize) -> Vec<Row> {
    let params = |durability| Params {
        pairs,
        messages,
        window,
        durability,
    };
    let rounds = rounds.max(1);
    let mut runs: Vec<Vec<Row>> = (0..4).map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        runs[0].push(run_on(Target::Hub, params("flush")));
        runs[1].push(run_on(Target::Hub, params("interval")));
        runs[2].push(run_on(Target::Relay, params("flush")));
        runs[3].push(crate::peer::run(crate::peer::Params {
            pairs,
            messages,
            window,
        }));
    }
    let mut rows: Vec<Row> = runs.into_iter().map(median_run).collect();
    let limit = rows[2].figure("msgs_per_sec");
    for row in &mut rows {
        let pct = 100.0 * row.figure("msgs_per_sec") / limit;
        row.figures.push(("pct_of_limit", pct));
    }
    rows
}

/// The median of `runs` by throughput, with `spread_pct` added.
pub(crate) fn median_run(runs: Vec<Row>) -> Row {
    crate::report::median_by(runs, "msgs_per_sec", "spread_pct")
}

/// A throughput row: `start` is the start-up time of the server under test (the hub's
/// spawn-to-ready, the relay's bind, mosquitto's spawn-to-accepting), reported in the
/// `hub_start_ms` column the json-pairs table has always had; `cpu` the CPU time the
/// server process used during the run, where it is a process of its own (not the relay,
/// which runs inside the bench: NaN).
pub(crate) fn row(
    label: String,
    params: &Params,
    elapsed: Duration,
    mut latencies: Vec<f64>,
    start: Duration,
    cpu: Option<Duration>,
) -> Row {
    latencies.sort_by(f64::total_cmp);
    let total = (params.pairs * params.messages) as f64;
    Row {
        label,
        figures: vec![
            ("messages", total),
            ("seconds", elapsed.as_secs_f64()),
            ("msgs_per_sec", total / elapsed.as_secs_f64()),
            ("ack_p50_ms", percentile(&latencies, 0.5)),
            ("ack_p99_ms", percentile(&latencies, 0.99)),
            ("hub_start_ms", start.as_secs_f64() * 1e3),
            (
                "cpu_us_per_msg",
                cpu.map_or(f64::NAN, |c| c.as_secs_f64() * 1e6 / total),
            ),
        ],
    }
}

/// The hub's counters [`Run::counters`] holds, as `/metrics` names them.
const COUNTERS: [&str; 4] = [
    "hub_acks_total",
    "hub_store_flush_seconds_count",
    "hub_store_flush_waiters_total",
    "hub_event_records_total",
];

/// What one drive measured.
struct Run {
    /// From the start signal until every message is received and acknowledged.
    elapsed: Duration,
    /// Ack latencies, ms.
    latencies: Vec<f64>,
    /// CPU time the hub used meanwhile (not for the relay).
    cpu: Option<Duration>,
    /// CPU time the bench process used meanwhile: the clients, and for the relay the
    /// relay too (it runs inside the bench).
    generator: Option<Duration>,
    /// How much each of [`COUNTERS`] grew meanwhile (NaN for the relay).
    counters: [f64; 4],
}

impl Run {
    /// The bench process's CPU per message, µs (NaN if it could not be read).
    fn generator_us_per_msg(&self, messages: f64) -> f64 {
        self.generator
            .map_or(f64::NAN, |cpu| cpu.as_secs_f64() * 1e6 / messages)
    }
}

/// The workload against the JSON server at `addr`, which is `hub` unless it is the relay.
fn drive(addr: SocketAddr, params: &Params, hub: Option<&Hub>) -> Run {
    let cpu = || hub.and_then(Hub::pid).and_then(process_cpu);
    let own_cpu = || process_cpu(std::process::id());
    let counters = || {
        let text = hub.map(|h| h.http_get("/metrics").1).unwrap_or_default();
        COUNTERS.map(|name| metric_in(&text, name).unwrap_or(f64::NAN))
    };
    let payload = "x".repeat(100);
    let start = StartLine::new(params.pairs * 2);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for pair in 0..params.pairs {
        let (mut rx, rx_token) = account(addr, &format!("r{pair}"));
        assert_eq!(rx.subscribe(&rx_token).expect("subscribe")["resp_code"], 0);
        let (tx, tx_token) = account(addr, &format!("s{pair}"));
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
            (latencies, Instant::now())
        }));
    }
    let cpu_before = cpu();
    let own_before = own_cpu();
    let counters_before = counters();
    start.release();
    let (latencies, elapsed) = join_pairs(&start, senders, receivers);
    let used = cpu().zip(cpu_before).map(|(after, before)| after - before);
    let generator = own_cpu()
        .zip(own_before)
        .map(|(after, before)| after - before);
    let counters_after = counters();
    Run {
        elapsed,
        latencies,
        cpu: used,
        generator,
        counters: std::array::from_fn(|i| counters_after[i] - counters_before[i]),
    }
}
