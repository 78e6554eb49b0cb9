//! What a Retro session has to say: packets, commands, log lines and the close request,
//! queued in order for `poll_output`. Shared by the chat and file sessions.

use crate::frame::{encode, FrameError, Kind};
use hub_plugin_sdk::{
    CloseReason, Command, CorrelationId, LogLevel, Op, Output, OutputQueue, Transmit,
};

/// The output queue of one session.
pub struct Outbox {
    out: OutputQueue,
    next_id: u64,
    /// A close was requested (or the transport is gone): nothing more is processed.
    pub closed: bool,
}

impl Outbox {
    /// An empty queue.
    pub fn new() -> Self {
        Outbox {
            out: OutputQueue::new(),
            next_id: 1,
            closed: false,
        }
    }

    /// Queues a packet.
    pub fn packet(&mut self, version: u16, kind: Kind, payload: &[u8]) {
        self.out.push_back(Output::Transmit(Transmit::Bytes(encode(
            version, kind, payload,
        ))));
    }

    /// Queues raw bytes (file content).
    pub fn raw(&mut self, bytes: Vec<u8>) {
        self.out.push_back(Output::Transmit(Transmit::Bytes(bytes)));
    }

    /// Queues an ERROR packet with `text`.
    pub fn error(&mut self, version: u16, text: &str) {
        self.log(LogLevel::Debug, format!("ERROR sent: {text}"));
        self.packet(version, Kind::Error, text.as_bytes());
    }

    /// Answers a byte stream that cannot be framed: ERROR, then close.
    pub fn frame_error(&mut self, error: FrameError) {
        match error {
            FrameError::NegativeSize { version, size } => {
                self.error(version, &format!("invalid packet size {size}"));
                self.close("negative size");
            }
            FrameError::TooLarge {
                version,
                size,
                limit,
            } => {
                self.error(
                    version,
                    &format!("packet of {size} bytes exceeds the limit of {limit}"),
                );
                self.close("packet too large");
            }
        }
    }

    /// Queues a log line.
    pub fn log(&mut self, level: LogLevel, message: String) {
        self.out.push_back(Output::Log { level, message });
    }

    /// Asks the hub to close the connection (once).
    pub fn close(&mut self, reason: &str) {
        if !self.closed {
            self.closed = true;
            self.out.push_back(Output::Close(CloseReason {
                code: None,
                reason: reason.into(),
            }));
        }
    }

    /// Queues a command and returns its correlation id.
    pub fn command(&mut self, op: Op) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.out.push_back(Output::Command(Command {
            id: CorrelationId(id),
            op,
        }));
        id
    }

    /// Queues a command whose answer nobody waits for.
    pub fn fire_and_forget(&mut self, op: Op) {
        self.out.push_back(Output::Command(Command {
            id: CorrelationId::NONE,
            op,
        }));
    }

    /// The next output, or the end of the batch with `deadline`.
    pub fn poll(&mut self, deadline: Option<u64>) -> Output {
        self.out.pop_front().unwrap_or(Output::Timeout(deadline))
    }
}
