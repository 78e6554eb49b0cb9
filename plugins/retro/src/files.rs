//! One Retro file-server connection as a sans-IO state machine.
//!
//! ```text
//!  Idle ──FILE_UPLOAD(id,size)──▶ [PeerUser, FileBegin] ──SUCCESS──▶ Receiving(size raw bytes)
//!       ──▶ [FileFinish] ──SUCCESS──▶ Idle
//!  Idle ──FILE_DOWNLOAD(id)──▶ [PeerUser, FileOpen] ──SUCCESS(size)──▶ Sending [FileRead]* ──▶ Idle
//! ```
//!
//! Authorization is by address: the connection's IP must have a logged-in chat session
//! (as the reference server did); the file belongs to that user. Raw file bytes never
//! pass through the packet decoder.

use crate::frame::{Decoder, Kind, Packet};
use crate::outbox::Outbox;
use crate::Config;
use hub_plugin_sdk::{
    Answer, CoreError, CorrelationId, HubEvent, Input, LogLevel, Now, Op, Output, Session, UserId,
};
use std::sync::Arc;

/// Largest request payload on the file server (FILE_UPLOAD is 20 bytes).
const MAX_REQUEST: usize = 64;
/// Bytes asked of the core per read while sending a file.
const READ_CHUNK: u32 = 64 * 1024;
/// Requests (by bytes) a client may send ahead of the one in progress.
const MAX_QUEUE: usize = 8;

#[derive(Debug)]
enum State {
    Idle,
    /// Waiting for the core to say who is logged in from this address.
    Authorizing {
        packet: Packet,
    },
    /// FILE_UPLOAD accepted by us, waiting for the core to open the file.
    Beginning {
        version: u16,
        size: u64,
    },
    /// Reading `remaining` raw bytes of the file.
    Receiving {
        version: u16,
        remaining: u64,
    },
    Finishing {
        version: u16,
    },
    Opening {
        version: u16,
    },
    Sending,
}

/// One file-server session.
pub struct FileSession {
    config: Arc<Config>,
    decoder: Decoder,
    io: Outbox,
    peer_ip: String,
    user: Option<UserId>,
    state: State,
    /// The correlation id the current state waits for.
    waiting: u64,
    now_ms: u64,
    deadline: Option<u64>,
}

impl FileSession {
    /// A new session for a peer at `peer_ip`.
    pub fn new(config: Arc<Config>, peer_ip: String) -> Self {
        FileSession {
            config,
            decoder: Decoder::new(MAX_REQUEST),
            io: Outbox::new(),
            peer_ip,
            user: None,
            state: State::Idle,
            waiting: 0,
            now_ms: 0,
            deadline: None,
        }
    }

    fn wait_for(&mut self, op: Op, state: State) {
        self.waiting = self.io.command(op);
        self.state = state;
    }

    fn on_bytes(&mut self, mut bytes: &[u8]) {
        self.deadline = Some(self.now_ms + self.config.login_timeout_ms);
        if let State::Receiving { version, remaining } = self.state {
            let take = (remaining.min(bytes.len() as u64)) as usize;
            if take > 0 {
                let chunk = bytes[..take].to_vec();
                // Writes are answered in order; a failure is reported by FileFinish.
                self.io.command(Op::FileWrite { bytes: chunk });
            }
            bytes = &bytes[take..];
            let remaining = remaining - take as u64;
            if remaining == 0 {
                self.wait_for(Op::FileFinish, State::Finishing { version });
            } else {
                self.state = State::Receiving { version, remaining };
            }
        }
        if bytes.is_empty() {
            return;
        }
        // Requests are framed only when the session is idle, so that a bad header after
        // an upload's bytes is answered after that upload, in order.
        self.decoder.push(bytes);
        if self.decoder.pending() > MAX_REQUEST * MAX_QUEUE {
            self.io.error(1, "too many requests in flight");
            return self.io.close("request queue full");
        }
        self.run_queue();
    }

    fn run_queue(&mut self) {
        while matches!(self.state, State::Idle) && !self.io.closed {
            let packet = match self.decoder.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(error) => return self.io.frame_error(error),
            };
            match self.user {
                Some(_) => self.on_packet(packet),
                None => {
                    let op = Op::PeerUser {
                        plugin: "retro".into(),
                        ip: self.peer_ip.clone(),
                    };
                    self.wait_for(op, State::Authorizing { packet });
                }
            }
        }
    }

    fn on_packet(&mut self, packet: Packet) {
        let version = packet.version;
        match Kind::from_wire(packet.kind) {
            Some(Kind::FileUpload) => {
                if packet.payload.len() != 20 {
                    return self
                        .io
                        .error(version, "FILE_UPLOAD carries fileid(16) and size(4)");
                }
                let size = u64::from(u32::from_be_bytes([
                    packet.payload[16],
                    packet.payload[17],
                    packet.payload[18],
                    packet.payload[19],
                ]));
                if size > self.config.max_file_bytes {
                    return self.io.error(
                        version,
                        &format!(
                            "file of {size} bytes exceeds the limit of {}",
                            self.config.max_file_bytes
                        ),
                    );
                }
                let op = Op::FileBegin {
                    file_id: packet.payload[..16].to_vec(),
                    size,
                    ttl_ms: self.config.file_ttl_ms,
                    downloads: self.config.file_downloads,
                };
                self.wait_for(op, State::Beginning { version, size });
            }
            Some(Kind::FileDownload) => {
                if packet.payload.len() != 16 {
                    return self.io.error(version, "FILE_DOWNLOAD carries fileid(16)");
                }
                let op = Op::FileOpen {
                    file_id: packet.payload,
                };
                self.wait_for(op, State::Opening { version });
            }
            Some(Kind::Goodbye) => self.io.close("goodbye"),
            _ => self.io.error(
                version,
                &format!("the file server does not serve packet type {}", packet.kind),
            ),
        }
    }

    fn on_answer(&mut self, id: CorrelationId, result: Result<Answer, CoreError>) {
        if id.0 != self.waiting {
            // A FileWrite answer: only failures matter, and they end the upload.
            if let Err(error) = result {
                let version = match self.state {
                    State::Receiving { version, .. } | State::Finishing { version } => version,
                    _ => 1,
                };
                self.io
                    .log(LogLevel::Error, format!("file write failed: {error}"));
                self.io.error(version, "storage error");
                self.io.close("upload failed");
            }
            return;
        }
        let state = std::mem::replace(&mut self.state, State::Idle);
        match (state, result) {
            (State::Authorizing { packet }, Ok(Answer::User(user))) => {
                self.user = Some(user.id);
                self.io.command(Op::Authenticate { user: user.id });
                self.on_packet(packet);
            }
            (State::Authorizing { packet }, Err(_)) => {
                self.io
                    .error(packet.version, "log in on the chat server first");
            }
            (State::Beginning { version, size }, Ok(_)) => {
                self.io.packet(version, Kind::Success, &[]);
                if size == 0 {
                    self.wait_for(Op::FileFinish, State::Finishing { version });
                } else {
                    self.state = State::Receiving {
                        version,
                        remaining: size,
                    };
                }
            }
            (State::Beginning { version, .. }, Err(CoreError::Invalid(detail))) => {
                self.io.error(version, &detail)
            }
            (State::Finishing { version }, Ok(_)) => self.io.packet(version, Kind::Success, &[]),
            (State::Opening { version }, Ok(Answer::File { size })) => {
                self.io
                    .packet(version, Kind::Success, &(size as u32).to_be_bytes());
                self.wait_for(Op::FileRead { max: READ_CHUNK }, State::Sending);
            }
            (State::Opening { version }, Err(CoreError::NoSuchFile)) => {
                self.io.error(version, "unknown file")
            }
            (State::Sending, Ok(Answer::Bytes(bytes))) => {
                if !bytes.is_empty() {
                    self.io.raw(bytes);
                    self.wait_for(Op::FileRead { max: READ_CHUNK }, State::Sending);
                }
            }
            (State::Sending, Err(error)) => {
                // The size was promised already: the stream cannot continue.
                self.io
                    .log(LogLevel::Error, format!("file read failed: {error}"));
                self.io.close("read failed");
            }
            (state, result) => {
                let version = match &state {
                    State::Beginning { version, .. }
                    | State::Finishing { version }
                    | State::Opening { version } => *version,
                    _ => 1,
                };
                self.io.log(
                    LogLevel::Error,
                    format!("file request failed in {state:?}: {result:?}"),
                );
                self.io.error(version, "storage error");
                if matches!(state, State::Finishing { .. }) {
                    self.io.close("upload failed");
                }
            }
        }
        self.run_queue();
    }
}

impl Session for FileSession {
    fn handle_input(&mut self, now: Now, input: Input) {
        self.now_ms = now.mono_ms;
        match input {
            Input::Opened => self.deadline = Some(now.mono_ms + self.config.login_timeout_ms),
            Input::Bytes(bytes) => {
                if !self.io.closed {
                    self.on_bytes(&bytes);
                }
            }
            Input::Event(HubEvent::Answer { id, result }) => {
                if !self.io.closed {
                    self.on_answer(id, result);
                }
            }
            Input::Event(HubEvent::Shutdown | HubEvent::Kicked { .. }) => {
                self.io.close("server shutting down")
            }
            Input::Event(_) => {}
            Input::Timeout => {
                if self.deadline.is_some_and(|d| d <= now.mono_ms)
                    && matches!(self.state, State::Idle)
                {
                    self.io.close("idle");
                }
            }
            Input::Closed { .. } => self.io.closed = true,
            Input::TooLarge { .. }
            | Input::Message(_)
            | Input::Request(_)
            | Input::Fetched { .. } => self.io.close("internal error"),
        }
    }

    fn poll_output(&mut self) -> Output {
        let deadline = self.deadline.filter(|_| !self.io.closed);
        self.io.poll(deadline)
    }
}
