//! Counters the core keeps for the admin `/metrics` endpoint (atomics, no locks).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the flush latency histogram buckets.
pub const FLUSH_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1.0];

/// Core metrics.
#[derive(Default, Debug)]
pub struct Metrics {
    /// Messages (and other events) routed, counted once per send.
    pub routed: AtomicU64,
    /// Event copies stored (one per recipient).
    pub stored: AtomicU64,
    /// Records those copies were written in (a user actor stores a burst as one).
    pub stored_records: AtomicU64,
    /// Events pushed to sessions.
    pub delivered: AtomicU64,
    /// Sessions dropped as slow readers.
    pub slow_readers: AtomicU64,
    /// Proofs of receipt (`Op::Ack`) handled by user actors.
    pub acks: AtomicU64,
    /// Active user actors.
    pub user_actors: AtomicI64,
    /// Active room actors.
    pub room_actors: AtomicI64,
    /// Active calls.
    pub calls: AtomicI64,
    /// Connections present in rooms (live room members such as cchat clients).
    pub room_present: AtomicI64,
    /// Events stored but not yet durable (waiting for the group commit).
    pub pending_durable: AtomicI64,
    flushes: AtomicU64,
    flush_micros: AtomicU64,
    flush_buckets: [AtomicU64; 8],
    batched: AtomicU64,
}

impl Metrics {
    /// Records one flush's latency.
    pub fn observe_flush(&self, took: Duration) {
        self.flushes.fetch_add(1, Relaxed);
        self.flush_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
        let secs = took.as_secs_f64();
        for (bucket, bound) in self.flush_buckets.iter().zip(FLUSH_BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
    }

    /// Group-commit flushes so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Relaxed)
    }

    /// Records how many waiters one flush served.
    pub fn add_batch(&self, waiters: usize) {
        self.batched.fetch_add(waiters as u64, Relaxed);
    }

    /// Renders the core's metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let counters = [
            (
                "hub_events_routed_total",
                "Events routed (one per send)",
                self.routed.load(Relaxed),
            ),
            (
                "hub_events_stored_total",
                "Event copies stored, one per recipient",
                self.stored.load(Relaxed),
            ),
            (
                "hub_event_records_total",
                "Store records event copies were written in (a burst to one user is one)",
                self.stored_records.load(Relaxed),
            ),
            (
                "hub_events_delivered_total",
                "Events pushed to sessions",
                self.delivered.load(Relaxed),
            ),
            (
                "hub_slow_readers_total",
                "Sessions dropped as slow readers",
                self.slow_readers.load(Relaxed),
            ),
            (
                "hub_acks_total",
                "Proofs of receipt handled",
                self.acks.load(Relaxed),
            ),
            (
                "hub_store_flush_waiters_total",
                "Acknowledgements served by group commits",
                self.batched.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let gauges = [
            (
                "hub_user_actors",
                "Active user actors",
                self.user_actors.load(Relaxed),
            ),
            (
                "hub_room_actors",
                "Active room actors",
                self.room_actors.load(Relaxed),
            ),
            (
                "hub_room_present",
                "Connections present in rooms",
                self.room_present.load(Relaxed),
            ),
            (
                "hub_calls",
                "Calls ringing or in progress",
                self.calls.load(Relaxed),
            ),
            (
                "hub_store_pending_durable",
                "Events stored but not yet flushed (queue depth)",
                self.pending_durable.load(Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let name = "hub_store_flush_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Store group-commit flush latency\n# TYPE {name} histogram"
        );
        for (bucket, bound) in self.flush_buckets.iter().zip(FLUSH_BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = self.flushes.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.flush_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}
