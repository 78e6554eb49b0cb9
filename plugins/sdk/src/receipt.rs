//! Proof of receipt by WebSocket ping/pong, for protocols without an acknowledgement of
//! their own: after deliveries the session sends a ping whose payload is the last
//! delivered sequence (8 bytes, big-endian); the client's pong proves it read everything
//! before the ping (TCP and WebSocket keep order), so the session can send
//! [`crate::Op::Ack`]. One ping is outstanding at a time; an unanswered one is sent
//! again after a while (a client may answer only the latest of several pings, so a pong
//! can be lost to the hub's own keep-alive ping).

use crate::ids::Seq;

/// Milliseconds before an unanswered receipt ping is sent again.
pub const RETRY_MS: u64 = 5_000;

/// The receipt-ping state of one session.
#[derive(Clone, Debug)]
pub struct Receipts {
    delivered: Seq,
    acked: Seq,
    outstanding: bool,
    retry_at: Option<u64>,
    /// Least milliseconds between two receipt pings (0: one as soon as the last is
    /// answered).
    gap_ms: u64,
    last_ping_at: Option<u64>,
}

impl Default for Receipts {
    fn default() -> Self {
        Receipts::new()
    }
}

impl Receipts {
    /// Fresh state: a ping as soon as the last one is answered.
    pub fn new() -> Receipts {
        Receipts::with_gap(0)
    }

    /// Fresh state, with at least `gap_ms` between two pings: under a steady stream of
    /// events one pong (and one cursor write) then covers everything delivered in that
    /// time instead of the few events since the last pong.
    pub fn with_gap(gap_ms: u64) -> Receipts {
        Receipts {
            delivered: Seq(0),
            acked: Seq(0),
            outstanding: false,
            retry_at: None,
            gap_ms,
            last_ping_at: None,
        }
    }

    /// Everything up to `position` counts as received already (the stream starts there).
    pub fn start_at(&mut self, position: Seq) {
        self.delivered = self.delivered.max(position);
        self.acked = self.acked.max(position);
    }

    /// `seq` was handed to the client.
    pub fn delivered(&mut self, seq: Seq) {
        self.delivered = self.delivered.max(seq);
    }

    /// The last sequence handed to the client.
    pub fn last_delivered(&self) -> Seq {
        self.delivered
    }

    /// The payload of a ping to send now, if one is due (call after deliveries and on
    /// timeouts).
    pub fn poll_ping(&mut self, now_ms: u64) -> Option<Vec<u8>> {
        if self.retry_at.is_some_and(|at| at <= now_ms) {
            self.outstanding = false;
            self.retry_at = None;
        }
        if self.outstanding || self.delivered <= self.acked {
            return None;
        }
        if self.next_ping_at().is_some_and(|at| now_ms < at) {
            return None;
        }
        self.outstanding = true;
        self.retry_at = Some(now_ms + RETRY_MS);
        self.last_ping_at = Some(now_ms);
        Some(self.delivered.0.to_be_bytes().to_vec())
    }

    /// The earliest time the gap allows the next ping.
    fn next_ping_at(&self) -> Option<u64> {
        self.last_ping_at
            .filter(|_| self.gap_ms > 0)
            .map(|at| at.saturating_add(self.gap_ms))
    }

    /// A pong arrived: the position it proves, if it is one of ours and new.
    pub fn on_pong(&mut self, payload: &[u8]) -> Option<Seq> {
        // Not one of ours (e.g. the hub's own keep-alive) unless it is 8 bytes.
        let bytes = <[u8; 8]>::try_from(payload).ok()?;
        let through = Seq(u64::from_be_bytes(bytes));
        self.outstanding = false;
        self.retry_at = None;
        if through > self.acked && through <= self.delivered {
            self.acked = through;
            Some(through)
        } else {
            None
        }
    }

    /// When [`Receipts::poll_ping`] should be called next: an unanswered ping is due
    /// again, or the gap that holds back a ping for events already delivered ends.
    pub fn deadline(&self) -> Option<u64> {
        if self.outstanding {
            self.retry_at
        } else if self.delivered > self.acked {
            self.next_ping_at()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ping_at_a_time_proves_what_was_delivered_and_is_retried() {
        let mut r = Receipts::new();
        r.start_at(Seq(3));
        assert_eq!(r.poll_ping(0), None, "nothing new delivered");
        r.delivered(Seq(5));
        let ping = r.poll_ping(0).unwrap();
        assert_eq!(ping, 5u64.to_be_bytes());
        r.delivered(Seq(6));
        assert_eq!(r.poll_ping(1), None, "one outstanding");
        assert_eq!(r.on_pong(b""), None, "a keep-alive pong");
        assert_eq!(r.on_pong(&ping), Some(Seq(5)));
        assert_eq!(r.on_pong(&ping), None, "nothing new");
        let ping = r.poll_ping(2).unwrap();
        assert_eq!(r.deadline(), Some(2 + RETRY_MS));
        assert_eq!(r.poll_ping(2 + RETRY_MS), Some(ping), "sent again");
        assert_eq!(
            r.on_pong(&99u64.to_be_bytes()),
            None,
            "beyond what was sent"
        );
    }

    #[test]
    fn a_gap_holds_the_next_ping_back_and_says_when_it_may_go() {
        let mut r = Receipts::with_gap(10);
        r.delivered(Seq(1));
        let first = r.poll_ping(100).unwrap();
        assert_eq!(r.on_pong(&first), Some(Seq(1)));
        assert_eq!(r.deadline(), None, "nothing unproven");
        r.delivered(Seq(2));
        assert_eq!(r.poll_ping(104), None, "within the gap");
        assert_eq!(r.deadline(), Some(110), "the gap's end");
        r.delivered(Seq(7));
        let second = r.poll_ping(110).unwrap();
        assert_eq!(second, 7u64.to_be_bytes().to_vec(), "one ping for all five");
        assert_eq!(r.deadline(), Some(110 + RETRY_MS), "outstanding: the retry");
        assert_eq!(r.on_pong(&second), Some(Seq(7)));
        // Without a gap, the next ping goes at once.
        let mut eager = Receipts::new();
        eager.delivered(Seq(1));
        let ping = eager.poll_ping(0).unwrap();
        eager.on_pong(&ping);
        eager.delivered(Seq(2));
        assert!(eager.poll_ping(0).is_some());
    }
}
