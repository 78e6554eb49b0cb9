//! Idle connections: `count` JSON clients connected, subscribed and silent; the hub's
//! resident memory per connection (growth from the freshly started hub to the hub
//! holding them all, divided by the count).
//!
//! Each client is one file descriptor in the hub and one in this process, and the
//! machine allows 20,000 per process (hard limit): `max` asks for as many as fit under
//! that limit, keeping `RESERVED` descriptors for everything else.

use crate::common::{json_hub, many_subscribed, raise_open_files, rss};
use crate::report::Row;
use std::time::{Duration, Instant};

/// Descriptors kept for what is not a client connection (sled's files, listeners,
/// plugins, epoll, pipes, the bench's own).
pub const RESERVED: u64 = 300;

/// The largest client count the open-file limit allows.
pub fn max_clients() -> usize {
    raise_open_files().saturating_sub(RESERVED) as usize
}

/// Connects `count` idle clients and measures.
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
    let clients = many_subscribed(addr, "idle", count, 16);
    let connect_secs = began.elapsed().as_secs_f64();
    // Let the hub finish what the connects started (presence, flushes).
    std::thread::sleep(Duration::from_secs(2));
    let after = rss(&hub);
    let per_conn = after.saturating_sub(before) as f64 / count as f64;
    let user_actors = hub.metric("hub_user_actors").unwrap_or(f64::NAN);
    drop(clients);
    Row {
        label: format!("{count} idle clients"),
        figures: vec![
            ("clients", count as f64),
            ("connect_secs", connect_secs),
            ("rss_before_mib", before as f64 / 1048576.0),
            ("rss_after_mib", after as f64 / 1048576.0),
            ("kib_per_conn", per_conn / 1024.0),
            ("user_actors", user_actors),
        ],
    }
}
