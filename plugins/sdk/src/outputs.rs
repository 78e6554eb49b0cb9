//! A session's outputs waiting for `poll_output`, in order.
//!
//! Every session queues what it has to say and hands it out one output at a time. A
//! plain `VecDeque` keeps, for the whole life of the connection, room for as many
//! outputs as it once held at the same time (an output is 160 bytes, and a sign-in
//! queues several), so most idle sessions carried half a kilobyte or more of empty
//! queue. [`OutputQueue`] gives its memory back whenever it runs empty: an idle session
//! holds none, and a busy one allocates once per burst.

use crate::Output;
use std::collections::VecDeque;

/// Outputs waiting to be polled, first in first out; empty, it owns no memory.
#[derive(Debug, Default)]
pub struct OutputQueue {
    queue: VecDeque<Output>,
}

impl OutputQueue {
    /// An empty queue (no allocation).
    pub fn new() -> Self {
        OutputQueue::default()
    }

    /// Queues `output` after the others.
    pub fn push_back(&mut self, output: Output) {
        self.queue.push_back(output);
    }

    /// The oldest output, if any; the queue's memory is released once it is empty.
    pub fn pop_front(&mut self) -> Option<Output> {
        let next = self.queue.pop_front();
        if self.queue.is_empty() {
            self.queue.shrink_to_fit();
        }
        next
    }

    /// Outputs waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_owns_nothing_once_drained() {
        let mut queue = OutputQueue::new();
        assert_eq!(queue.queue.capacity(), 0);
        for n in 0..10 {
            queue.push_back(Output::Timeout(Some(n)));
        }
        assert_eq!(queue.len(), 10);
        for n in 0..9 {
            assert!(matches!(queue.pop_front(), Some(Output::Timeout(Some(m))) if m == n));
            assert!(queue.queue.capacity() >= 1, "kept while not empty");
        }
        assert!(matches!(queue.pop_front(), Some(Output::Timeout(Some(9)))));
        assert!(queue.is_empty());
        assert_eq!(queue.queue.capacity(), 0, "released when drained");
        assert!(queue.pop_front().is_none());
        queue.push_back(Output::Timeout(None));
        assert!(matches!(queue.pop_front(), Some(Output::Timeout(None))));
    }
}
