//! "The store alone": the hub's own store (`hub_core::store::SledStore`, the same sled
//! configuration and group commit) driven without the hub. `pairs` streams append the
//! same 100-byte message records the 1:1 workload stores, each keeping `window` appends
//! waiting for durability, spread over as many threads as the hub has user threads
//! (2). What the hub adds beyond this is the cost of everything but storage.

use crate::report::Row;
use hub_core::metrics::Metrics;
use hub_core::store::{Durability, SledStore, Storage};
use hub_plugin_sdk::{
    Content, EventBody, EventId, EventRecord, Origin, Seq, Target, UserId, UserRef,
};
use std::collections::VecDeque;
use std::sync::{Arc, Barrier};
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

/// Runs one configuration on a fresh store in a temporary directory.
pub fn run(params: Params) -> Row {
    let dir = tempfile::tempdir().expect("temporary directory");
    let durability = match params.durability {
        "flush" => Durability::Flush,
        // The hub's default flush_interval_ms.
        _ => Durability::Interval(Duration::from_millis(5)),
    };
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(SledStore::open(dir.path(), durability, metrics.clone()).expect("open"));
    let payload = "x".repeat(100);
    let start = Arc::new(Barrier::new(THREADS + 1));
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
    start.wait();
    let began = Instant::now();
    for thread in threads {
        thread.join().expect("store thread");
    }
    let elapsed = began.elapsed().as_secs_f64();
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

/// Appends `messages` records to stream `pair`, `window` waiting at most.
async fn stream(store: &SledStore, pair: usize, messages: usize, window: usize, text: &str) {
    let from = UserRef {
        id: UserId(1_000_000 + pair as u64),
        handle: format!("s{pair}"),
    };
    let to = UserRef {
        id: UserId(pair as u64 + 1),
        handle: format!("r{pair}"),
    };
    let mut waiting = VecDeque::with_capacity(window);
    for n in 0..messages {
        if waiting.len() >= window {
            let durable: hub_core::store::Durable = waiting.pop_front().expect("waiting");
            durable.await.expect("durable");
        }
        let event = record(n as u64, &from, &to, text);
        store
            .append(to.id, Seq(n as u64 + 1), &event)
            .expect("append");
        waiting.push_back(store.durable());
    }
    for durable in waiting {
        durable.await.expect("durable");
    }
}
