//! A harness for testing a session as a state machine: a virtual clock, no sockets, no
//! sleeps. It feeds inputs, drains outputs the way the hub does, and remembers the timer
//! the session asked for so a test can advance time past it.

use crate::command::Command;
use crate::ids::ConnId;
use crate::io::{Input, Now, Output, SessionInfo};
use crate::manifest::Transport;
use crate::plugin::{drive, Session};

/// A [`SessionInfo`] for tests.
pub fn session_info(transport: Transport) -> SessionInfo {
    SessionInfo {
        conn: ConnId(1),
        role: "main".into(),
        transport,
        peer: "127.0.0.1:40000".into(),
        local: "127.0.0.1:8000".into(),
    }
}

/// Drives one session with a virtual clock.
pub struct Harness<S: Session> {
    session: S,
    now: Now,
    deadline: Option<u64>,
}

impl<S: Session> Harness<S> {
    /// Wraps a session; the clock starts at 0 ms (Unix time 1 700 000 000 000 ms).
    pub fn new(session: S) -> Self {
        Harness {
            session,
            now: Now {
                mono_ms: 0,
                unix_ms: 1_700_000_000_000,
            },
            deadline: None,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Now {
        self.now
    }

    /// The pending timer deadline, if any.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// Feeds one input and returns its outputs without the closing `Output::Timeout`
    /// (which is recorded as the pending deadline).
    pub fn input(&mut self, input: Input) -> Vec<Output> {
        let mut outputs = drive(&mut self.session, self.now, input);
        if let Some(Output::Timeout(deadline)) = outputs.pop() {
            self.deadline = deadline;
        }
        outputs
    }

    /// Advances the clock by `ms`, firing the timer (once) if its deadline is reached.
    /// Returns the outputs of that timer input, if it fired.
    pub fn advance(&mut self, ms: u64) -> Vec<Output> {
        self.now.mono_ms += ms;
        self.now.unix_ms += ms;
        match self.deadline {
            Some(deadline) if deadline <= self.now.mono_ms => {
                self.deadline = None;
                self.input(Input::Timeout)
            }
            _ => Vec::new(),
        }
    }

    /// The wrapped session.
    pub fn session(&mut self) -> &mut S {
        &mut self.session
    }
}

/// The commands among `outputs`, in order.
pub fn commands(outputs: &[Output]) -> Vec<Command> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Command(command) => Some(command.clone()),
            _ => None,
        })
        .collect()
}

/// xorshift64*: a deterministic generator for randomized tests (a failure replays).
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
