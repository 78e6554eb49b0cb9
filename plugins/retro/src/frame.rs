//! Retro framing: an 8-byte big-endian header (`u16 version`, `u16 type`, `i32 size`)
//! followed by `size` payload bytes. The decoder refuses a negative or oversized size as
//! soon as it has read the header, before buffering any of the payload.

/// Header length.
pub const HEADER: usize = 8;

/// Packet types (WIRE-FACTS numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
#[allow(missing_docs)]
pub enum Kind {
    Success = 1,
    Error = 2,
    Hello = 3,
    Goodbye = 4,
    Register = 5,
    Pubkey = 6,
    GetPubkey = 7,
    ChatMsg = 10,
    FileMsg = 11,
    Friends = 20,
    FriendOnline = 21,
    FriendOffline = 22,
    FriendUnknown = 23,
    FileUpload = 31,
    FileDownload = 32,
    StartCall = 40,
    StopCall = 41,
    RejectCall = 42,
    AcceptCall = 43,
}

impl Kind {
    /// The type for a wire number.
    pub fn from_wire(value: u16) -> Option<Kind> {
        use Kind::*;
        Some(match value {
            1 => Success,
            2 => Error,
            3 => Hello,
            4 => Goodbye,
            5 => Register,
            6 => Pubkey,
            7 => GetPubkey,
            10 => ChatMsg,
            11 => FileMsg,
            20 => Friends,
            21 => FriendOnline,
            22 => FriendOffline,
            23 => FriendUnknown,
            31 => FileUpload,
            32 => FileDownload,
            40 => StartCall,
            41 => StopCall,
            42 => RejectCall,
            43 => AcceptCall,
            _ => return None,
        })
    }
}

/// One decoded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The client's protocol version (echoed in replies).
    pub version: u16,
    /// The raw type number (may be unknown).
    pub kind: u16,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Why the byte stream cannot be framed any further.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The size field is negative.
    NegativeSize {
        /// The header's version, for the error reply.
        version: u16,
        /// The size.
        size: i32,
    },
    /// The size field exceeds the limit.
    TooLarge {
        /// The header's version, for the error reply.
        version: u16,
        /// The size.
        size: i32,
        /// The limit.
        limit: usize,
    },
}

/// Incremental decoder with a payload limit.
pub struct Decoder {
    buffer: Vec<u8>,
    limit: usize,
}

impl Decoder {
    /// A decoder refusing payloads over `limit` bytes.
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            buffer: Vec::new(),
            limit,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a packet.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete packet, if any.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, FrameError> {
        if self.buffer.len() < HEADER {
            return Ok(None);
        }
        let version = u16::from_be_bytes([self.buffer[0], self.buffer[1]]);
        let kind = u16::from_be_bytes([self.buffer[2], self.buffer[3]]);
        let size = i32::from_be_bytes([
            self.buffer[4],
            self.buffer[5],
            self.buffer[6],
            self.buffer[7],
        ]);
        if size < 0 {
            return Err(FrameError::NegativeSize { version, size });
        }
        let length = size as usize;
        if length > self.limit {
            return Err(FrameError::TooLarge {
                version,
                size,
                limit: self.limit,
            });
        }
        if self.buffer.len() < HEADER + length {
            return Ok(None);
        }
        let payload = self.buffer[HEADER..HEADER + length].to_vec();
        self.buffer.drain(..HEADER + length);
        Ok(Some(Packet {
            version,
            kind,
            payload,
        }))
    }
}

/// Encodes one packet.
pub fn encode(version: u16, kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(kind as u16).to_be_bytes());
    // Payloads the hub builds are bounded far below i32::MAX (config limits).
    out.extend_from_slice(&(payload.len() as i32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_across_arbitrary_chunking() {
        let mut wire = encode(0x0101, Kind::Hello, &[7; 104]);
        wire.extend(encode(1, Kind::Goodbye, &[]));
        for split in 0..wire.len() {
            let mut decoder = Decoder::new(1024);
            decoder.push(&wire[..split]);
            let mut packets = Vec::new();
            while let Some(p) = decoder.next_packet().unwrap() {
                packets.push(p);
            }
            decoder.push(&wire[split..]);
            while let Some(p) = decoder.next_packet().unwrap() {
                packets.push(p);
            }
            assert_eq!(packets.len(), 2, "split at {split}");
            assert_eq!(
                (
                    packets[0].version,
                    packets[0].kind,
                    packets[0].payload.len()
                ),
                (0x0101, 3, 104)
            );
            assert_eq!((packets[1].version, packets[1].kind), (1, 4));
            assert_eq!(decoder.pending(), 0);
        }
    }

    #[test]
    fn refuses_negative_and_oversized_sizes_from_the_header_alone() {
        let mut decoder = Decoder::new(100);
        decoder.push(&[0, 1, 0, 10, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            decoder.next_packet(),
            Err(FrameError::NegativeSize {
                version: 1,
                size: -1
            })
        );
        let mut decoder = Decoder::new(100);
        decoder.push(&[0, 1, 0, 10, 0, 0, 0, 101]);
        assert_eq!(
            decoder.next_packet(),
            Err(FrameError::TooLarge {
                version: 1,
                size: 101,
                limit: 100
            })
        );
        let mut decoder = Decoder::new(100);
        decoder.push(&[0, 1, 0, 10, 0, 0]);
        assert_eq!(
            decoder.next_packet(),
            Ok(None),
            "a truncated header waits for more"
        );
    }
}
