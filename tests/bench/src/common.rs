//! What the JSON scenarios share: a hub configured for load, accounts, many clients at
//! once, percentiles, and a memory sampler.

use hub_tests::harness::{process_memory, Hub, HubOptions};
use hub_tests::json_client::JsonClient;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A hub with the JSON plugin for load: warnings only in the log; one PBKDF2 iteration
/// (the scenarios measure messaging, not password hashing, and some create 20,000
/// accounts); a keep-alive idle limit of an hour (idle clients in the bench do not read,
/// so they answer no pings). `env` adds to / overrides that.
pub fn json_hub(env: &[(&str, &str)]) -> Hub {
    let mut options = HubOptions::with(&["json"])
        .env("HUB__LOG__LEVEL", "warn,hub=info")
        .env("HUB__ACCOUNTS__PBKDF2_ITERATIONS", "1")
        .env("HUB__LIMITS__WS_IDLE_SECS", "3600");
    for (key, value) in env {
        options = options.env(key, value);
    }
    Hub::start(options)
}

/// A connection with a fresh account `name`: (client, session token).
pub fn account(addr: SocketAddr, name: &str) -> (JsonClient, String) {
    let mut client = JsonClient::connect(addr).expect("connect");
    let reply = client.signup(name, "pw", "sha256").expect("signup");
    assert_eq!(reply["resp_code"], 0, "signup {name}: {reply}");
    let token = reply["session"].as_str().expect("token").to_owned();
    (client, token)
}

/// A subscribed connection with a fresh account `name`.
pub fn subscribed(addr: SocketAddr, name: &str) -> Subscribed {
    let (mut client, token) = account(addr, name);
    let reply = client.subscribe(&token).expect("subscribe");
    assert_eq!(reply["resp_code"], 0, "subscribe {name}: {reply}");
    Subscribed {
        client,
        token,
        name: name.to_owned(),
    }
}

/// One subscribed client.
pub struct Subscribed {
    /// The connection.
    pub client: JsonClient,
    /// Its session token (to subscribe again after a reconnect).
    pub token: String,
    /// Its username.
    pub name: String,
}

/// `count` subscribed clients named `<prefix><n>`, created by `threads` threads at once,
/// in order of `n`.
pub fn many_subscribed(
    addr: SocketAddr,
    prefix: &str,
    count: usize,
    threads: usize,
) -> Vec<Subscribed> {
    let threads = threads.clamp(1, count.max(1));
    let handles: Vec<JoinHandle<Vec<(usize, Subscribed)>>> = (0..threads)
        .map(|t| {
            let prefix = prefix.to_owned();
            std::thread::spawn(move || {
                (t..count)
                    .step_by(threads)
                    .map(|n| (n, subscribed(addr, &format!("{prefix}{n}"))))
                    .collect()
            })
        })
        .collect();
    let mut all: Vec<(usize, Subscribed)> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    all.sort_by_key(|(n, _)| *n);
    all.into_iter().map(|(_, s)| s).collect()
}

/// Where a run's worker threads wait for each other and for the conductor (the thread
/// that measures), and when the run began: the moment the first worker left the line.
///
/// The conductor's own clock is not that moment. On two cores with hundreds of worker
/// threads released at once, the conductor can stay descheduled after the release while
/// the workers run, for a large part of a short run: an `Instant::now()` it takes after
/// `Barrier::wait` starts the clock late and shows a throughput the run never had
/// (seen: 2.8 million msgs/s from a relay that does about 185,000, and the relay's
/// "fast mode" in the 2026-12-07 results). So the conductor reads whatever it needs
/// before the work (CPU times, counters) and then [`StartLine::release`]s the workers,
/// and [`StartLine::began`] is the earliest time a worker noted on leaving.
pub struct StartLine {
    barrier: Barrier,
    first: Mutex<Option<Instant>>,
}

impl StartLine {
    /// A line for `workers` threads and one conductor.
    pub fn new(workers: usize) -> Arc<StartLine> {
        Arc::new(StartLine {
            barrier: Barrier::new(workers + 1),
            first: Mutex::new(None),
        })
    }

    /// A worker waits here, then notes when it left; its work starts after this returns.
    pub fn wait(&self) {
        self.barrier.wait();
        let now = Instant::now();
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        *first = Some(first.map_or(now, |t| t.min(now)));
    }

    /// The conductor releases the workers (once every one of them waits).
    pub fn release(&self) {
        self.barrier.wait();
    }

    /// When the first worker left the line. Call once a worker is known to have left (for
    /// instance after joining one): panics if none has.
    pub fn began(&self) -> Instant {
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expect("a worker has left the start line")
    }
}

/// Joins a released closed-loop run: `senders` return their ack latencies (ms) and when
/// their last ack came, `receivers` when their last message came. Returns every
/// latency and how long the run took, from the start line to the last of those.
pub fn join_pairs(
    start: &StartLine,
    senders: Vec<JoinHandle<(Vec<f64>, Instant)>>,
    receivers: Vec<JoinHandle<Instant>>,
) -> (Vec<f64>, Duration) {
    let mut latencies = Vec::new();
    let mut done = None;
    for sender in senders {
        let (sent, acked) = sender.join().expect("sender");
        latencies.extend(sent);
        done = done.max(Some(acked));
    }
    for receiver in receivers {
        done = done.max(Some(receiver.join().expect("receiver")));
    }
    let began = start.began();
    (latencies, done.unwrap_or(began).duration_since(began))
}

/// The value at quantile `p` of ascending `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Samples a hub's resident memory every 20 ms in a thread, keeping the highest.
pub struct MemorySampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MemorySampler {
    /// Starts sampling `hub` (by pid: the hub must stay running while sampling).
    pub fn start(hub: &Hub) -> MemorySampler {
        let pid = hub.pid().expect("the hub is running");
        let peak = Arc::new(AtomicU64::new(rss_of(pid).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    if let Some(rss) = rss_of(pid) {
                        peak.fetch_max(rss, Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        MemorySampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the highest resident set size seen, bytes.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Relaxed)
    }
}

fn rss_of(pid: u32) -> Option<u64> {
    process_memory(pid).map(|m| m.rss)
}

/// The hub's resident set size now, bytes.
pub fn rss(hub: &Hub) -> u64 {
    hub.memory().expect("hub memory from /proc").rss
}

/// Raises this process's soft open-file limit to the hard one; returns it.
pub fn raise_open_files() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-file limit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_begins_when_its_first_worker_leaves_not_when_the_conductor_looks() {
        let line = StartLine::new(3);
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let line = line.clone();
                std::thread::spawn(move || {
                    line.wait();
                    Instant::now()
                })
            })
            .collect();
        let before = Instant::now();
        line.release();
        // A conductor descheduled after the release, as on a loaded machine.
        std::thread::sleep(Duration::from_millis(300));
        let late = Instant::now();
        let left: Vec<Instant> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        let began = line.began();
        assert!(began >= before);
        assert!(left.iter().all(|t| began <= *t));
        assert!(
            began < late,
            "the workers left long before the conductor looked"
        );
    }
}
