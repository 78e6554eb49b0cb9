//! Reconnect storm: `clients` subscribed JSON clients; then within `window_secs` every
//! one drops its connection (no close handshake) and reconnects and subscribes again
//! with its session token, while senders keep sending acknowledged messages to them.
//!
//! - settle time: from the first drop until every client is subscribed again and has
//!   every message whose `ack` its sender got (read from either connection);
//! - peak memory: the hub's highest resident set size during the storm, against its
//!   steady state (all clients connected, before the storm);
//! - lost: acknowledged messages never delivered (must be 0).
//!
//! The clients do not read until the storm is over, so nothing a client received on its
//! first connection is proven received (no pong), and the hub delivers it again on the
//! second: counting distinct messages per client is what tells if one is missing.

use crate::common::{account, json_hub, many_subscribed, raise_open_files, rss};
use crate::common::{MemorySampler, StartLine, Subscribed};
use crate::report::Row;
use hub_tests::json_client::JsonClient;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
/// Threads that drop and reconnect the clients.
const WORKERS: usize = 16;
/// Clients sending during the storm.
const SENDERS: usize = 4;

/// One run's shape.
pub struct Params {
    /// Subscribed clients.
    pub clients: usize,
    /// Every client reconnects within this many seconds.
    pub window_secs: f64,
    /// Messages sent (in total, round-robin over the clients) during the storm.
    pub messages: usize,
}

/// Runs the storm.
pub fn run(params: Params) -> Row {
    let limit = raise_open_files();
    // Each worker closes a client's connection before opening its new one, so the
    // count of descriptors stays about the same (the hub may hold a closed one a
    // moment longer: RESERVED covers that).
    assert!(
        (params.clients + SENDERS) as u64 + crate::idle::RESERVED <= limit,
        "a storm of {} clients does not fit under the open-file limit of {limit}",
        params.clients
    );
    let hub = json_hub(&[]);
    let addr = hub.addr("json", "main");
    let clients = many_subscribed(addr, "storm", params.clients, 16);
    let names: Vec<String> = clients.iter().map(|c| c.name.clone()).collect();
    let senders: Vec<(JsonClient, String, String)> = (0..SENDERS)
        .map(|n| {
            let name = format!("storm-sender{n}");
            let (client, token) = account(addr, &name);
            (client, token, name)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let steady = rss(&hub);

    let sampler = MemorySampler::start(&hub);
    let start = StartLine::new(WORKERS + SENDERS);
    // Worker w owns clients w, w + WORKERS, ...; client i reconnects at i/clients of
    // the window.
    let mut slices: Vec<Vec<(usize, Subscribed)>> = (0..WORKERS).map(|_| Vec::new()).collect();
    for (i, client) in clients.into_iter().enumerate() {
        slices[i % WORKERS].push((i, client));
    }
    let window = Duration::from_secs_f64(params.window_secs);
    let total = params.clients;
    let workers: Vec<_> = slices
        .into_iter()
        .map(|slice| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let began = Instant::now();
                let mut fresh = Vec::with_capacity(slice.len());
                for (i, old) in slice {
                    let due = window.mul_f64(i as f64 / total as f64);
                    if let Some(wait) = due.checked_sub(began.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let Subscribed {
                        client,
                        token,
                        name,
                    } = old;
                    let unread = client.queued();
                    client.drop_abruptly();
                    let mut client = JsonClient::connect(addr).expect("reconnect");
                    let reply = client.subscribe(&token).expect("subscribe again");
                    assert_eq!(reply["resp_code"], 0, "resubscribe {name}: {reply}");
                    fresh.push((i, client, unread));
                }
                fresh
            })
        })
        .collect();
    let per_sender = params.messages.div_ceil(SENDERS);
    let sending: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, (mut client, token, name))| {
            let (start, names) = (start.clone(), names.clone());
            std::thread::spawn(move || {
                start.wait();
                let began = Instant::now();
                let gap = window.div_f64(per_sender as f64);
                let mut in_flight: VecDeque<(usize, usize)> = VecDeque::new();
                let mut acked = Vec::with_capacity(per_sender);
                let mut take_ack = |client: &mut JsonClient, in_flight: &mut VecDeque<_>| {
                    let ack = client.recv_type("ack", T).expect("ack");
                    assert_eq!(ack["resp_code"], 0, "{ack}");
                    acked.push(in_flight.pop_front().expect("in flight"));
                };
                for k in 0..per_sender {
                    // Spread over the storm window, unless acks are slower than that.
                    if let Some(wait) = gap.mul_f64(k as f64).checked_sub(began.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    while in_flight.len() >= 32 {
                        take_ack(&mut client, &mut in_flight);
                    }
                    let to = (k * SENDERS + s) % names.len();
                    let id = format!("{s}-{k}");
                    let request = json!({"type": "message", "session": token, "source": name,
                        "dest": names[to], "message": id, "id": k});
                    client.send(&request).expect("send");
                    in_flight.push_back((to, k));
                }
                while !in_flight.is_empty() {
                    take_ack(&mut client, &mut in_flight);
                }
                acked
                    .into_iter()
                    .map(|(to, k)| (to, format!("{s}-{k}")))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    start.release();
    let reconnected: Vec<Vec<(usize, JsonClient, Vec<Value>)>> = workers
        .into_iter()
        .map(|w| w.join().expect("storm worker"))
        .collect();
    let began = start.began();
    let reconnect_secs = began.elapsed().as_secs_f64();
    let mut expected: HashMap<usize, HashSet<String>> = HashMap::new();
    let mut acked_total = 0;
    for sender in sending {
        for (to, id) in sender.join().expect("sender") {
            expected.entry(to).or_default().insert(id);
            acked_total += 1;
        }
    }
    let expected = Arc::new(expected);
    // Every client reads until it has every acknowledged message sent to it.
    let readers: Vec<_> = reconnected
        .into_iter()
        .map(|slice| {
            let expected = expected.clone();
            std::thread::spawn(move || {
                let mut lost = 0;
                let mut clients = Vec::with_capacity(slice.len());
                for (i, mut client, unread) in slice {
                    let want = expected.get(&i).cloned().unwrap_or_default();
                    let mut got: HashSet<String> = unread
                        .iter()
                        .filter(|v| v["type"] == "message")
                        .filter_map(|v| v["message"].as_str().map(str::to_owned))
                        .collect();
                    while !want.is_subset(&got) {
                        match client.recv_type("message", Duration::from_secs(10)) {
                            Ok(v) => {
                                if let Some(id) = v["message"].as_str() {
                                    got.insert(id.to_owned());
                                }
                            }
                            Err(_) => {
                                lost += want.difference(&got).count();
                                break;
                            }
                        }
                    }
                    clients.push(client);
                }
                (lost, clients)
            })
        })
        .collect();
    let mut lost = 0;
    let mut still_connected = Vec::new();
    for reader in readers {
        let (l, clients) = reader.join().expect("reader");
        lost += l;
        still_connected.extend(clients);
    }
    let settle_secs = began.elapsed().as_secs_f64();
    let peak = sampler.stop();
    let after = rss(&hub);
    if lost > 0 {
        eprintln!("STORM LOST {lost} ACKNOWLEDGED MESSAGES");
    }
    drop(still_connected);
    Row {
        label: format!(
            "{} clients reconnect in {} s",
            params.clients, params.window_secs
        ),
        figures: vec![
            ("clients", params.clients as f64),
            ("acked_msgs", acked_total as f64),
            ("reconnect_secs", reconnect_secs),
            ("settle_secs", settle_secs),
            ("steady_mib", steady as f64 / 1048576.0),
            ("peak_mib", peak as f64 / 1048576.0),
            ("peak_ratio", peak as f64 / steady as f64),
            ("after_mib", after as f64 / 1048576.0),
            ("lost", lost as f64),
        ],
    }
}
