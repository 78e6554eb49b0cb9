//! Idle connections: `count` JSON clients connected, subscribed and silent; the hub's
//! resident memory per connection (growth from the freshly started hub to the hub
//! holding them all, divided by the count).
//!
//! Each client is one file descriptor in the hub and one in this process, and the
//! machine allows 20,000 per process (hard limit): `max` asks for as many as fit under
//! that limit, keeping `RESERVED` descriptors for everything else.

use crate::common::{json_hub, raise_open_files, rss};
use crate::report::Row;
use hub_tests::json_client::JsonClient;
use std::time::{Duration, Instant};

/// Descriptors kept for what is not a client connection (sled's files, listeners,
/// plugins, epoll, pipes, the bench's own).
pub const RESERVED: u64 = 300;

/// The largest client count the open-file limit allows.
pub fn max_clients() -> usize {
    raise_open_files().saturating_sub(RESERVED) as usize
}

/// Connects `count` idle clients and measures, in three steps: connected only (the
/// WebSocket handshake done), signed up (an account and a session token), subscribed
/// (the user's actor attached and the stream live).
pub fn run(count: usize) -> Row {
    let limit = raise_open_files();
    assert!(
        count as u64 + RESERVED <= limit,
        "{count} clients do not fit under the open-file limit of {limit}"
    );
    let hub = json_hub(&[]);
    let addr = hub.addr("json", "main");
    std::thread::sleep(Duration::from_millis(500));
    let before = rss(&hub);
    let began = Instant::now();
    let mut clients = in_parallel((0..count).map(|_| None).collect(), |n, _| {
        Some((
            JsonClient::connect(addr).expect("connect"),
            String::new(),
            n,
        ))
    });
    settle();
    let connected = rss(&hub);
    clients = in_parallel(clients, |n, client| {
        let (mut client, _, _) = client.expect("connected");
        let reply = client
            .signup(&format!("idle{n}"), "pw", "sha256")
            .expect("signup");
        assert_eq!(reply["resp_code"], 0, "signup: {reply}");
        let token = reply["session"].as_str().expect("token").to_owned();
        Some((client, token, n))
    });
    settle();
    let signed_up = rss(&hub);
    clients = in_parallel(clients, |_, client| {
        let (mut client, token, n) = client.expect("signed up");
        let reply = client.subscribe(&token).expect("subscribe");
        assert_eq!(reply["resp_code"], 0, "subscribe: {reply}");
        Some((client, token, n))
    });
    let connect_secs = began.elapsed().as_secs_f64();
    settle();
    let after = rss(&hub);
    let per_conn = |from: u64, to: u64| to.saturating_sub(from) as f64 / count as f64 / 1024.0;
    let user_actors = hub.metric("hub_user_actors").unwrap_or(f64::NAN);
    drop(clients);
    Row {
        label: format!("{count} idle clients"),
        figures: vec![
            ("clients", count as f64),
            ("setup_secs", connect_secs),
            ("rss_before_mib", before as f64 / 1048576.0),
            ("rss_after_mib", after as f64 / 1048576.0),
            ("kib_per_conn", per_conn(before, after)),
            ("kib_connected", per_conn(before, connected)),
            ("kib_signed_up", per_conn(connected, signed_up)),
            ("kib_subscribed", per_conn(signed_up, after)),
            ("user_actors", user_actors),
        ],
    }
}

type Slot = Option<(JsonClient, String, usize)>;

/// Applies `step` to every slot, 16 threads at once; slot n stays at index n.
fn in_parallel(slots: Vec<Slot>, step: impl Fn(usize, Slot) -> Slot + Sync) -> Vec<Slot> {
    const THREADS: usize = 16;
    let mut chunks: Vec<Vec<(usize, Slot)>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (n, slot) in slots.into_iter().enumerate() {
        chunks[n % THREADS].push((n, slot));
    }
    let step = &step;
    let mut done: Vec<(usize, Slot)> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|(n, slot)| (n, step(n, slot)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("idle client thread"))
            .collect()
    });
    done.sort_by_key(|(n, _)| *n);
    done.into_iter().map(|(_, slot)| slot).collect()
}

/// Lets the hub finish what the last step started (presence, flushes).
fn settle() {
    std::thread::sleep(Duration::from_secs(2));
}
