//! Commands a session waits on: each gets the next correlation id, and what the session
//! means to do with the answer is kept under that id until [`Awaiting::answered`] takes
//! it back. Every protocol's session needs exactly this bookkeeping.

use crate::{Command, CorrelationId, Op, Output};
use std::collections::HashMap;

/// The commands in flight of one session, each with `P`: what to do with its answer.
#[derive(Debug)]
pub struct Awaiting<P> {
    next_id: u64,
    waiting: HashMap<u64, P>,
}

impl<P> Default for Awaiting<P> {
    fn default() -> Self {
        Awaiting::new()
    }
}

impl<P> Awaiting<P> {
    /// Nothing in flight; ids start at 1 (0 is [`CorrelationId::NONE`]).
    pub fn new() -> Self {
        Awaiting {
            next_id: 1,
            waiting: HashMap::new(),
        }
    }

    /// The output that sends `op`, remembering `then` until its answer comes.
    pub fn command(&mut self, op: Op, then: P) -> Output {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id, then);
        Output::Command(Command {
            id: CorrelationId(id),
            op,
        })
    }

    /// What was waiting on `id` (`None`: not a command of ours, or answered already).
    /// The last answer releases the table: a session with nothing in flight holds no
    /// memory here, however many commands it once had in flight at the same time.
    pub fn answered(&mut self, id: CorrelationId) -> Option<P> {
        let then = self.waiting.remove(&id.0);
        if self.waiting.is_empty() {
            self.waiting.shrink_to_fit();
        }
        then
    }

    /// Forgets every command in flight: their answers, when they come, are not ours.
    pub fn clear(&mut self) {
        self.waiting = HashMap::new();
    }

    /// Commands still waiting for their answer.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// No command is waiting.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// The output that sends `op` with nobody waiting for its answer.
pub fn fire_and_forget(op: Op) -> Output {
    Output::Command(Command {
        id: CorrelationId::NONE,
        op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_each_answer_is_taken_once() {
        let mut awaiting = Awaiting::new();
        let first = awaiting.command(
            Op::Ack {
                through: crate::Seq(1),
            },
            "first",
        );
        let second = awaiting.command(
            Op::Ack {
                through: crate::Seq(2),
            },
            "second",
        );
        let id = |output: &Output| match output {
            Output::Command(command) => command.id,
            other => panic!("not a command: {other:?}"),
        };
        assert_eq!(id(&first), CorrelationId(1));
        assert_eq!(id(&second), CorrelationId(2));
        assert_eq!(awaiting.len(), 2);
        assert_eq!(awaiting.answered(CorrelationId(2)), Some("second"));
        assert_eq!(awaiting.answered(CorrelationId(2)), None, "taken once");
        assert_eq!(awaiting.answered(CorrelationId::NONE), None);
        assert_eq!(awaiting.answered(CorrelationId(1)), Some("first"));
        assert!(awaiting.is_empty());
        assert_eq!(
            awaiting.waiting.capacity(),
            0,
            "nothing in flight, nothing held"
        );
        assert_eq!(
            id(&fire_and_forget(Op::Ack {
                through: crate::Seq(3)
            })),
            CorrelationId::NONE
        );
    }
}
