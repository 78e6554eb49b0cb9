//! "The store alone": the hub's own store (`hub_core::store::SledStore`, the same sled
//! configuration and group commit) driven without the hub. `pairs` streams append the
//! same 100-byte message records the 1:1 workload stores, each keeping `window` appends
//! waiting for durability and storing what it may append at once as one record (as a
//! user actor stores a burst), spread over as many threads as the hub has user threads
//! (2). What the hub adds beyond this is the cost of everything but storage.
//!
//! [`open_loop`] is the same store under the latency scenario's schedule: how long an
//! append waits for its group commit when appends arrive at a fixed rate, the part of
//! the hub's durable latency that storage alone costs.

use crate::common::{percentile, StartLine};
use crate::latency::{flush_figures, FLUSH_COLUMNS, FLUSH_COUNTERS};
use crate::report::Row;
use hub_core::metrics::Metrics;
use hub_core::store::{Durability, SledStore, Storage};
use hub_plugin_sdk::{
    Content, EventBody, EventId, EventRecord, Origin, Seq, Target, UserId, UserRef,
};
use hub_tests::harness::metric_in;
use std::collections::VecDeque;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The hub's default `core.user_threads`.
const THREADS: usize = 2;

/// One run's size.
#[derive(Clone, Copy)]
pub struct Params {
    /// Streams (one per recipient, as in the 1:1 workload).
    pub pairs: usize,
    /// Appends per stream.
    pub messages: usize,
    /// Appends per stream waiting for durability at once.
    pub window: usize,
    /// `flush` or `interval`.
    pub durability: &'static str,
}

fn record(n: u64, from: &UserRef, to: &UserRef, text: &str) -> EventRecord {
    EventRecord {
        id: EventId(n),
        at_unix_ms: 1_700_000_000_000 + n,
        origin: Origin {
            plugin: "json".into(),
            conn: None,
        },
        from: from.clone(),
        to: Target::User(to.clone()),
        body: EventBody::Message(Content::Text(text.to_owned())),
    }
}

fn durability(name: &str) -> Durability {
    match name {
        "flush" => Durability::Flush,
        // The hub's default flush_interval_ms.
        _ => Durability::Interval(Duration::from_millis(5)),
    }
}

/// Runs one configuration on a fresh store in a temporary directory.
pub fn run(params: Params) -> Row {
    let dir = tempfile::tempdir().expect("temporary directory");
    let durability = durability(params.durability);
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(SledStore::open(dir.path(), durability, metrics.clone()).expect("open"));
    let payload = "x".repeat(100);
    let start = StartLine::new(THREADS);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, start, payload) = (store.clone(), start.clone(), payload.clone());
            let streams: Vec<usize> = (0..params.pairs).filter(|p| p % THREADS == t).collect();
            let (messages, window) = (params.messages, params.window);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                start.wait();
                local.block_on(&runtime, async move {
                    let tasks: Vec<_> = streams
                        .into_iter()
                        .map(|pair| {
                            let (store, payload) = (store.clone(), payload.clone());
                            tokio::task::spawn_local(async move {
                                stream(&store, pair, messages, window, &payload).await
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("stream task");
                    }
                });
            })
        })
        .collect();
    start.release();
    for thread in threads {
        thread.join().expect("store thread");
    }
    let elapsed = start.began().elapsed().as_secs_f64();
    let total = (params.pairs * params.messages) as f64;
    let flushes = metrics.flushes();
    store.close();
    Row {
        label: format!(
            "{} streams, store alone, {}",
            params.pairs, params.durability
        ),
        figures: vec![
            ("messages", total),
            ("seconds", elapsed),
            ("msgs_per_sec", total / elapsed),
            ("flushes", flushes as f64),
        ],
    }
}

/// The sender and the recipient of stream `pair`.
fn pair_users(pair: usize) -> (UserRef, UserRef) {
    let user = |id: u64, handle: String| UserRef {
        id: UserId(id),
        handle,
    };
    (
        user(1_000_000 + pair as u64, format!("s{pair}")),
        user(pair as u64 + 1, format!("r{pair}")),
    )
}

/// Appends `messages` records to stream `pair`, `window` waiting at most. As a user
/// actor does, whatever may be appended at once (the room in the window, at most
/// `BURST_EVENTS`) is stored as one record with one wait for durability.
async fn stream(store: &SledStore, pair: usize, messages: usize, window: usize, text: &str) {
    use hub_core::actors::user::BURST_EVENTS;
    let (from, to) = pair_users(pair);
    // Bursts waiting for durability, with their sizes.
    let mut waiting: VecDeque<(usize, hub_core::store::Durable)> = VecDeque::new();
    let mut in_flight = 0;
    let mut n = 0;
    while n < messages {
        if in_flight >= window {
            let (count, durable) = waiting.pop_front().expect("waiting");
            durable.await.expect("durable");
            in_flight -= count;
        }
        let count = (window - in_flight).min(messages - n).min(BURST_EVENTS);
        let events: Vec<EventRecord> = (n..n + count)
            .map(|i| record(i as u64, &from, &to, text))
            .collect();
        let refs: Vec<&EventRecord> = events.iter().collect();
        store
            .append(to.id, Seq(n as u64 + 1), &refs)
            .expect("append");
        waiting.push_back((count, store.durable()));
        in_flight += count;
        n += count;
    }
    for (_, durable) in waiting {
        durable.await.expect("durable");
    }
}

/// The store alone open loop: `rate` appends a second for `seconds`, append `i` due at
/// `i / rate` and made to stream `i mod pairs`, on one thread that sleeps until each is
/// due (as the latency scenario's sender does); a second thread waits for each append's
/// group commit in order (a commit covers every append made before it) and times it
/// from the scheduled time. The row has the latency scenario's columns: `ack_p99_ms` is
/// the same wait as the delivery columns, and the flush columns come from the store's
/// own metrics.
pub fn open_loop(pairs: usize, rate: f64, seconds: f64, durability_name: &'static str) -> Row {
    let dir = tempfile::tempdir().expect("temporary directory");
    let metrics = Arc::new(Metrics::default());
    let store =
        SledStore::open(dir.path(), durability(durability_name), metrics.clone()).expect("open");
    // As many appends as the latency scenario sends at this rate.
    let total = ((rate / pairs as f64 * seconds).ceil().max(1.0) as usize) * pairs;
    let gap = 1.0 / rate;
    let due = move |i: usize| Duration::from_secs_f64(i as f64 * gap);
    let payload = "x".repeat(100);
    let users: Vec<(UserRef, UserRef)> = (0..pairs).map(pair_users).collect();
    let (tx, rx) = mpsc::channel::<(Duration, hub_core::store::Durable)>();
    let base = Instant::now() + Duration::from_millis(100);
    let waiter = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut waits = Vec::with_capacity(total);
        for (due, durable) in rx {
            runtime.block_on(durable).expect("durable");
            let late = Instant::now()
                .saturating_duration_since(base)
                .saturating_sub(due);
            waits.push(late.as_secs_f64() * 1e3);
        }
        waits
    });
    for i in 0..total {
        let at = due(i);
        if let Some(wait) = at.checked_sub(Instant::now().saturating_duration_since(base)) {
            std::thread::sleep(wait);
        }
        let (from, to) = &users[i % pairs];
        let seq = (i / pairs) as u64 + 1;
        store
            .append(to.id, Seq(seq), &[&record(i as u64, from, to, &payload)])
            .expect("append");
        tx.send((at, store.durable())).expect("waiter thread");
    }
    drop(tx);
    let mut waits = waiter.join().expect("waiter thread");
    waits.sort_by(f64::total_cmp);
    let mut text = String::new();
    metrics.render(&mut text);
    let flush =
        flush_figures(FLUSH_COUNTERS.map(|name| metric_in(&text, name).unwrap_or(f64::NAN)));
    store.close();
    let mut figures = vec![
        ("rate_per_sec", rate),
        ("messages", total as f64),
        ("p50_ms", percentile(&waits, 0.5)),
        ("p99_ms", percentile(&waits, 0.99)),
        ("p999_ms", percentile(&waits, 0.999)),
        ("ack_p99_ms", percentile(&waits, 0.99)),
        ("refused", 0.0),
        ("cpu_us_per_msg", f64::NAN),
        ("switches_per_msg", f64::NAN),
    ];
    figures.extend(FLUSH_COLUMNS.into_iter().zip(flush));
    Row {
        label: format!("store alone ({durability_name}) at the same rate"),
        figures,
    }
}
