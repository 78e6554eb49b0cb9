//! Blocking test client for the hub's XDR protocol (the "cryptology" protocol: an RSA
//! handshake, then AES-256-CBC frames of XDR-encoded data over WebSocket), written only
//! from `shared/specs/xdr.txt`, `shared/specs/WIRE-FACTS.md` ("XDR") and
//! `docs/protocols/xdr.md`, never from the hub's code.
//!
//! Layers, each usable on its own:
//!
//! - [`xdr`]: an RFC 4506 encoder/decoder (int/enum, unsigned int, hyper, double,
//!   variable-length opaque with zero padding), strict on padding and trailing bytes.
//! - [`crypto`]: RSA-OAEP (SHA-1, MGF1-SHA-1, empty label), RSA-PSS (SHA-512,
//!   MGF1-SHA-512, a chosen salt length), AES-256-CBC with PKCS#7 and a random IV in front,
//!   key generation and PEM import/export.
//! - Pure wire functions: the three handshake messages ([`encode_hello`],
//!   [`decode_challenge`], ...), client frames in both layouts ([`client_frame_body`],
//!   [`decode_client_frame`]: a decoder of our own, for unit tests) and server frames in
//!   both layouts ([`server_frame_body`], [`decode_server_frame`]).
//! - [`payload`]: builders of the chat payloads catalogued in `xdr.md`.
//! - [`XdrClient`]: a connection with a background reader thread that owns the socket,
//!   decrypts every server frame, records everything (heartbeats, OUTBOX, RPC responses,
//!   ERROR texts, the close code) and writes what the test thread asks it to write.
//!
//! Readings of the documents this client relies on (where they leave a choice):
//!
//! - **When a handshake is known to have succeeded.** The hub sends nothing after a
//!   verified message 3 except heartbeats and the stream, so [`XdrClient::connect`] returns
//!   as soon as message 3 is written; a refusal of message 3 (bad signature: 4003; and
//!   possibly 4000, see below) shows later as the close code ([`XdrClient::wait_closed`]).
//!   A refusal of message 1 (4002, 4003, maybe 4000) makes `connect` itself fail with
//!   `Err(Closed(Some((code, reason))))`.
//! - **At which step a concurrent connection is refused (4000)** is not stated; the client
//!   handles both (see above).
//! - **Message 2 is checked strictly**: `data_to_sign` and the hub's AES key must be 32
//!   bytes and nothing may follow ("Nothing follows the three fields").
//! - **PSS maximum salt** is computed as RFC 8017 does: `emLen − hLen − 2` with
//!   `emLen = ⌈(modBits − 1) / 8⌉`, which is the doc's "key bytes − 64 − 2" (190) for every
//!   key whose size is a multiple of 8 bits.
//! - **Server frame layout.** Frames are decoded in the layout the hub is configured with
//!   ([`ConnectOptions::server_frames`]); a frame that only decodes in the other layout is
//!   still recorded (with [`Outbox::layout`] etc. naming the layout it came in) and an
//!   anomaly is logged. In the inline layout an ERROR whose text is itself an XDR opaque
//!   (i.e. a spec-layout ERROR) is recorded as an anomaly too.
//! - **Anomalies** (things the doc rules out, recorded instead of panicking in the reader):
//!   a frame that does not decrypt or parse, an unknown server message type, a payload that
//!   is not a JSON object with a string `@type`, an ERROR text that is not UTF-8, a text
//!   WebSocket message, a one-byte message other than `0x00`, a frame in the other layout.
//!   Tests assert [`XdrClient::anomalies`] is empty.
//! - **Order tracking.** [`XdrClient::last_order`] is the highest order of the non-`Presence`
//!   OUTBOX messages of this connection (or the handshake's `last_seen_order` if none):
//!   `Presence` carries "the order of the last event sent on this connection (0 before
//!   any)", which must not move a resume position.
//!
//! Helper conventions (not from the docs): [`XdrClient::wait_outbox`] and
//! [`XdrClient::wait_error`] take the first matching record not yet taken by an earlier
//! wait; [`XdrClient::outbox`], [`XdrClient::errors`] always hold everything. A sequence
//! number given explicitly in [`SendOptions::sequence`] does not move the client's own
//! counter.

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::Value;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::{HandshakeError, Message, WebSocket};

pub use crypto::SaltLen;

/// How long the helpers without an explicit timeout wait.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting (TCP, WebSocket handshake, the XDR handshake's reply) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may block (a server that stops reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the reader thread looks at its command channel while no data arrives.
const POLL: Duration = Duration::from_millis(4);

/// Session AES keys are 32 bytes (AES-256).
pub const AES_KEY_LEN: usize = 32;
/// AES-CBC IV length (one block).
pub const IV_LEN: usize = 16;
/// Length of `data_to_sign` in message 2.
pub const CHALLENGE_LEN: usize = 32;
/// SHA-512 output length (the PSS "digest length" salt).
pub const SHA512_LEN: usize = 64;

/// Message type numbers (WIRE-FACTS "XDR").
pub mod msg_type {
    /// Client → hub: a sequenced request message.
    pub const INBOX: i32 = 1;
    /// Client → hub: an RPC request.
    pub const RPC: i32 = 2;
    /// Hub → client: a stream message.
    pub const OUTBOX: i32 = 1;
    /// Hub → client: the answer to an RPC request.
    pub const RPC_RESPONSE: i32 = 2;
    /// Hub → client: a fatal error text (a close follows).
    pub const ERROR: i32 = 3;
}

/// WebSocket close codes of the XDR profile.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTART: u16 = 1012;
    pub const CONCURRENT: u16 = 4000;
    pub const INVALID_SEQUENCE: u16 = 4001;
    pub const UNKNOWN_CLIENT: u16 = 4002;
    pub const BAD_HANDSHAKE: u16 = 4003;
    pub const BAD_FRAME: u16 = 4004;
    pub const BAD_PAYLOAD: u16 = 4005;
    pub const HANDSHAKE_TIMEOUT: u16 = 4006;
    pub const SLOW_READER: u16 = 4008;
    pub const TOO_MANY_PENDING: u16 = 4009;
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Everything that can go wrong talking to the hub.
#[derive(Debug)]
pub enum ClientError {
    Io(io::Error),
    /// WebSocket-level failure (handshake, write).
    Ws(String),
    /// What was waited for did not happen in time (the text says what, and what came).
    Timeout(String),
    /// The connection is over: the server's close code and reason, or `None` when it
    /// closed without a code or the TCP connection ended without a close frame.
    Closed(Option<(u16, String)>),
    /// The hub sent an ERROR frame (its text) while a helper waited for something else.
    Server(String),
    /// The hub broke the protocol, or a local argument cannot be put on the wire.
    Protocol(String),
    /// A local cryptographic operation failed.
    Crypto(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "I/O error: {e}"),
            ClientError::Ws(e) => write!(f, "WebSocket error: {e}"),
            ClientError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            ClientError::Closed(None) => write!(f, "connection closed (no code)"),
            ClientError::Closed(Some((code, reason))) => {
                write!(f, "connection closed: {code} {reason:?}")
            }
            ClientError::Server(text) => write!(f, "hub ERROR frame: {text:?}"),
            ClientError::Protocol(msg) => write!(f, "protocol violation: {msg}"),
            ClientError::Crypto(msg) => write!(f, "crypto failure: {msg}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl ClientError {
    /// The close code, for `Closed(Some(..))`.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ClientError::Closed(Some((code, _))) => Some(*code),
            _ => None,
        }
    }
}

// ----- XDR -------------------------------------------------------------------------------

/// RFC 4506 encoding and decoding (big-endian, 4-byte units).
pub mod xdr {
    use std::fmt;

    /// A decoding failure.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum XdrError {
        /// Fewer bytes left than the item needs (a length running past the end too).
        Short { need: usize, left: usize },
        /// A padding byte after an opaque is not zero.
        NonZeroPadding,
        /// Bytes left over after the last field.
        Trailing(usize),
    }

    impl fmt::Display for XdrError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                XdrError::Short { need, left } => {
                    write!(f, "XDR item needs {need} bytes, {left} left")
                }
                XdrError::NonZeroPadding => write!(f, "non-zero XDR padding"),
                XdrError::Trailing(n) => write!(f, "{n} bytes after the last XDR field"),
            }
        }
    }

    impl std::error::Error for XdrError {}

    /// Zero bytes that follow an opaque of `len` bytes: `(4 − len mod 4) mod 4`.
    pub fn padding(len: usize) -> usize {
        (4 - len % 4) % 4
    }

    /// Appends XDR items to a buffer.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Writer {
        buf: Vec<u8>,
    }

    impl Writer {
        pub fn new() -> Writer {
            Writer::default()
        }

        /// `int`: signed 32-bit, two's complement.
        pub fn int(&mut self, v: i32) -> &mut Writer {
            self.buf.extend_from_slice(&v.to_be_bytes());
            self
        }

        /// `enum`: encoded as an `int`.
        pub fn enumeration(&mut self, v: i32) -> &mut Writer {
            self.int(v)
        }

        /// `unsigned int`.
        pub fn uint(&mut self, v: u32) -> &mut Writer {
            self.buf.extend_from_slice(&v.to_be_bytes());
            self
        }

        /// `hyper`: signed 64-bit, two's complement.
        pub fn hyper(&mut self, v: i64) -> &mut Writer {
            self.buf.extend_from_slice(&v.to_be_bytes());
            self
        }

        /// `double`: IEEE-754 binary64.
        pub fn double(&mut self, v: f64) -> &mut Writer {
            self.buf.extend_from_slice(&v.to_bits().to_be_bytes());
            self
        }

        /// Variable-length `opaque<>` / `string<>`: u32 length, bytes, zero padding.
        ///
        /// # Panics
        /// If `bytes` is longer than `u32::MAX` (cannot be encoded).
        pub fn opaque(&mut self, bytes: &[u8]) -> &mut Writer {
            let len = u32::try_from(bytes.len()).expect("opaque longer than u32::MAX");
            self.uint(len);
            self.buf.extend_from_slice(bytes);
            self.buf
                .extend(std::iter::repeat_n(0u8, padding(bytes.len())));
            self
        }

        /// Raw bytes, not encoded (already XDR, or deliberately malformed).
        pub fn raw(&mut self, bytes: &[u8]) -> &mut Writer {
            self.buf.extend_from_slice(bytes);
            self
        }

        pub fn len(&self) -> usize {
            self.buf.len()
        }

        pub fn is_empty(&self) -> bool {
            self.buf.is_empty()
        }

        pub fn as_bytes(&self) -> &[u8] {
            &self.buf
        }

        pub fn to_vec(&self) -> Vec<u8> {
            self.buf.clone()
        }

        pub fn into_bytes(self) -> Vec<u8> {
            self.buf
        }
    }

    /// Reads XDR items from a byte slice.
    #[derive(Clone, Debug)]
    pub struct Reader<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        pub fn new(buf: &'a [u8]) -> Reader<'a> {
            Reader { buf, pos: 0 }
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
            let left = self.remaining();
            if n > left {
                return Err(XdrError::Short { need: n, left });
            }
            let bytes = &self.buf[self.pos..self.pos + n];
            self.pos += n;
            Ok(bytes)
        }

        fn word(&mut self) -> Result<[u8; 4], XdrError> {
            let b = self.take(4)?;
            Ok([b[0], b[1], b[2], b[3]])
        }

        pub fn int(&mut self) -> Result<i32, XdrError> {
            Ok(i32::from_be_bytes(self.word()?))
        }

        pub fn enumeration(&mut self) -> Result<i32, XdrError> {
            self.int()
        }

        pub fn uint(&mut self) -> Result<u32, XdrError> {
            Ok(u32::from_be_bytes(self.word()?))
        }

        pub fn hyper(&mut self) -> Result<i64, XdrError> {
            let b = self.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(i64::from_be_bytes(a))
        }

        pub fn double(&mut self) -> Result<f64, XdrError> {
            let b = self.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(f64::from_bits(u64::from_be_bytes(a)))
        }

        /// Variable-length opaque: the bytes (padding checked to be zero, and present).
        pub fn opaque(&mut self) -> Result<&'a [u8], XdrError> {
            let start = self.pos;
            let len = self.uint()? as usize;
            let pad = padding(len);
            let left = self.remaining();
            if len + pad > left {
                self.pos = start;
                return Err(XdrError::Short {
                    need: len + pad,
                    left,
                });
            }
            let bytes = self.take(len)?;
            let padding_bytes = self.take(pad)?;
            if padding_bytes.iter().any(|&b| b != 0) {
                self.pos = start;
                return Err(XdrError::NonZeroPadding);
            }
            Ok(bytes)
        }

        /// The next `unsigned int` without consuming it.
        pub fn peek_uint(&self) -> Result<u32, XdrError> {
            self.clone().uint()
        }

        /// Everything not read yet (consumed).
        pub fn rest(&mut self) -> &'a [u8] {
            let bytes = &self.buf[self.pos..];
            self.pos = self.buf.len();
            bytes
        }

        pub fn remaining(&self) -> usize {
            self.buf.len() - self.pos
        }

        /// `Ok` if every byte was read.
        pub fn finish(&self) -> Result<(), XdrError> {
            match self.remaining() {
                0 => Ok(()),
                n => Err(XdrError::Trailing(n)),
            }
        }
    }
}

use xdr::{Reader, Writer, XdrError};

// ----- crypto ----------------------------------------------------------------------------

/// The profile's cryptography, with RustCrypto crates.
pub mod crypto {
    use aes::Aes256;
    use cbc::cipher::block_padding::Pkcs7;
    use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
    use rand_core::{OsRng, RngCore};
    use rsa::pkcs1::{DecodeRsaPublicKey, EncodeRsaPublicKey};
    use rsa::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    use rsa::{Oaep, Pss, RsaPrivateKey, RsaPublicKey};
    use sha2::{Digest, Sha512};

    use super::{IV_LEN, SHA512_LEN};

    /// The PSS salt length used for a signature.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum SaltLen {
        /// The maximum for the key (190 for RSA-2048): what real clients use.
        #[default]
        Max,
        /// The digest length (64).
        Digest,
        /// No salt.
        Zero,
        /// Any other length.
        Exact(usize),
    }

    impl SaltLen {
        /// The length in bytes for a key of `modulus_bits`.
        pub fn bytes(self, modulus_bits: usize) -> usize {
            match self {
                SaltLen::Max => max_salt_len(modulus_bits),
                SaltLen::Digest => SHA512_LEN,
                SaltLen::Zero => 0,
                SaltLen::Exact(n) => n,
            }
        }
    }

    /// RFC 8017 maximum PSS salt with SHA-512: `emLen − 64 − 2`, `emLen = ⌈(bits−1)/8⌉`.
    pub fn max_salt_len(modulus_bits: usize) -> usize {
        let em_len = (modulus_bits - 1).div_ceil(8);
        em_len.saturating_sub(SHA512_LEN + 2)
    }

    /// Random bytes from the OS CSPRNG.
    pub fn random_bytes(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        OsRng.fill_bytes(&mut bytes);
        bytes
    }

    /// A fresh RSA key pair of `bits`.
    pub fn generate_key(bits: usize) -> RsaPrivateKey {
        RsaPrivateKey::new(&mut OsRng, bits).expect("RSA key generation")
    }

    /// A fresh RSA-2048 client key pair.
    pub fn generate_client_key() -> RsaPrivateKey {
        generate_key(2048)
    }

    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_spki_pem(key: &RsaPublicKey) -> String {
        key.to_public_key_pem(LineEnding::LF)
            .expect("SPKI PEM encoding")
    }

    /// The public key as PKCS#1 PEM (`-----BEGIN RSA PUBLIC KEY-----`).
    pub fn public_pkcs1_pem(key: &RsaPublicKey) -> String {
        key.to_pkcs1_pem(LineEnding::LF)
            .expect("PKCS#1 PEM encoding")
    }

    /// The first `-----BEGIN <label>-----` … `-----END <label>-----` block in `text`.
    fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let start = text.find(&begin)?;
        let stop = text[start..].find(&end)? + start + end.len();
        Some(&text[start..stop])
    }

    /// Parses an SPKI PEM public key (e.g. what `hub xdr server-key` prints); text around
    /// the PEM block is ignored.
    pub fn parse_spki_pem(text: &str) -> Result<RsaPublicKey, String> {
        let block = pem_block(text, "PUBLIC KEY")
            .ok_or_else(|| format!("no PUBLIC KEY PEM block in {text:?}"))?;
        RsaPublicKey::from_public_key_pem(block).map_err(|e| format!("bad SPKI PEM: {e}"))
    }

    /// Parses an SPKI or PKCS#1 PEM public key.
    pub fn parse_public_pem(text: &str) -> Result<RsaPublicKey, String> {
        if let Some(block) = pem_block(text, "RSA PUBLIC KEY") {
            return RsaPublicKey::from_pkcs1_pem(block).map_err(|e| format!("bad PKCS#1 PEM: {e}"));
        }
        parse_spki_pem(text)
    }

    /// RSA-OAEP, SHA-1, MGF1-SHA-1, empty label.
    pub fn oaep_encrypt(key: &RsaPublicKey, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        key.encrypt(&mut OsRng, Oaep::new::<sha1::Sha1>(), plaintext)
            .map_err(|e| format!("OAEP encryption of {} bytes: {e}", plaintext.len()))
    }

    /// RSA-OAEP decryption (SHA-1).
    pub fn oaep_decrypt(key: &RsaPrivateKey, ciphertext: &[u8]) -> Result<Vec<u8>, String> {
        key.decrypt(Oaep::new::<sha1::Sha1>(), ciphertext)
            .map_err(|e| format!("OAEP decryption of {} bytes: {e}", ciphertext.len()))
    }

    /// RSA-PSS signature of `data` (SHA-512, MGF1-SHA-512, salt of `salt`).
    pub fn pss_sign(key: &RsaPrivateKey, data: &[u8], salt: SaltLen) -> Result<Vec<u8>, String> {
        let len = salt.bytes(key.n().bits());
        let hashed = Sha512::digest(data);
        key.sign_with_rng(&mut OsRng, Pss::new_with_salt::<Sha512>(len), &hashed)
            .map_err(|e| format!("PSS signature with a {len}-byte salt: {e}"))
    }

    /// Verifies an RSA-PSS signature made with exactly this salt length.
    pub fn pss_verify(key: &RsaPublicKey, data: &[u8], signature: &[u8], salt: SaltLen) -> bool {
        let len = salt.bytes(key.n().bits());
        let hashed = Sha512::digest(data);
        key.verify(Pss::new_with_salt::<Sha512>(len), &hashed, signature)
            .is_ok()
    }

    /// Verifies an RSA-PSS signature with any salt length (maximum, digest, then all);
    /// returns the salt length that verified.
    pub fn pss_verify_any(key: &RsaPublicKey, data: &[u8], signature: &[u8]) -> Option<usize> {
        let max = max_salt_len(key.n().bits());
        let mut lens = vec![max, SHA512_LEN, 0];
        lens.extend((1..max).filter(|&l| l != SHA512_LEN));
        lens.into_iter()
            .find(|&l| pss_verify(key, data, signature, SaltLen::Exact(l)))
    }

    /// AES-256-CBC with PKCS#7 under a fresh random IV: `IV ‖ ciphertext`.
    pub fn aes_encrypt(key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let iv = random_bytes(IV_LEN);
        aes_encrypt_with_iv(key, &iv, plaintext)
    }

    /// [`aes_encrypt`] with a given IV (for tests).
    pub fn aes_encrypt_with_iv(key: &[u8], iv: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let enc = cbc::Encryptor::<Aes256>::new_from_slices(key, iv)
            .map_err(|_| format!("AES-256 needs a 32-byte key, not {}", key.len()))?;
        let mut out = iv.to_vec();
        out.extend(enc.encrypt_padded_vec_mut::<Pkcs7>(plaintext));
        Ok(out)
    }

    /// Decrypts `IV ‖ ciphertext` (AES-256-CBC, PKCS#7 checked).
    pub fn aes_decrypt(key: &[u8], frame: &[u8]) -> Result<Vec<u8>, String> {
        if frame.len() < 2 * IV_LEN || !frame.len().is_multiple_of(IV_LEN) {
            return Err(format!(
                "{} bytes cannot be IV + AES-CBC ciphertext",
                frame.len()
            ));
        }
        let (iv, ct) = frame.split_at(IV_LEN);
        let dec = cbc::Decryptor::<Aes256>::new_from_slices(key, iv)
            .map_err(|_| format!("AES-256 needs a 32-byte key, not {}", key.len()))?;
        dec.decrypt_padded_vec_mut::<Pkcs7>(ct)
            .map_err(|_| "bad PKCS#7 padding".to_string())
    }

    /// The key's modulus size in bytes (the length of its signatures).
    pub fn key_bytes(key: &RsaPublicKey) -> usize {
        key.size()
    }
}

// ----- handshake messages ----------------------------------------------------------------

/// Message 1's plaintext: `XDR[opaque client_id, hyper last_seen_order, opaque aes_key]`,
/// then an optional `unsigned int` version (later real clients append one).
pub fn encode_hello(
    client_id: &[u8],
    last_seen_order: i64,
    aes_key: &[u8],
    trailing_version: Option<u32>,
) -> Vec<u8> {
    let mut w = Writer::new();
    w.opaque(client_id).hyper(last_seen_order).opaque(aes_key);
    if let Some(v) = trailing_version {
        w.uint(v);
    }
    w.into_bytes()
}

/// Message 1's fields, as a hub would read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub client_id: Vec<u8>,
    pub last_seen_order: i64,
    pub aes_key: Vec<u8>,
    /// Bytes after the three fields (ignored by the hub).
    pub trailing: Vec<u8>,
}

/// Parses message 1's plaintext (trailing bytes kept, not refused).
pub fn decode_hello(bytes: &[u8]) -> std::result::Result<Hello, XdrError> {
    let mut r = Reader::new(bytes);
    let client_id = r.opaque()?.to_vec();
    let last_seen_order = r.hyper()?;
    let aes_key = r.opaque()?.to_vec();
    Ok(Hello {
        client_id,
        last_seen_order,
        aes_key,
        trailing: r.rest().to_vec(),
    })
}

/// Message 2's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub data_to_sign: Vec<u8>,
    pub last_seen_sequence: i64,
    pub server_aes_key: Vec<u8>,
}

/// Message 2's plaintext: `XDR[opaque data_to_sign, hyper last_seen_sequence, opaque
/// server_aes_key]`.
pub fn encode_challenge(c: &Challenge) -> Vec<u8> {
    let mut w = Writer::new();
    w.opaque(&c.data_to_sign)
        .hyper(c.last_seen_sequence)
        .opaque(&c.server_aes_key);
    w.into_bytes()
}

/// Parses message 2's plaintext strictly (nothing may follow the three fields).
pub fn decode_challenge(bytes: &[u8]) -> std::result::Result<Challenge, XdrError> {
    let mut r = Reader::new(bytes);
    let data_to_sign = r.opaque()?.to_vec();
    let last_seen_sequence = r.hyper()?;
    let server_aes_key = r.opaque()?.to_vec();
    r.finish()?;
    Ok(Challenge {
        data_to_sign,
        last_seen_sequence,
        server_aes_key,
    })
}

// ----- client frames ---------------------------------------------------------------------

/// The two client → hub frame layouts (`xdr.md`, *Frames*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientLayout {
    /// The spec's drawing: `XDR[opaque signature, enum type, opaque data]`,
    /// `data = XDR[hyper number, opaque json]`, signature over `data`.
    #[default]
    Spec,
    /// The real 0.3 client: `XDR[opaque signature, opaque data]`,
    /// `data = XDR[enum type, hyper number, opaque json]`, signature over `data`.
    Real,
}

/// The signed data of a client frame in `layout`.
pub fn client_signed_data(
    layout: ClientLayout,
    msg_type: i32,
    number: i64,
    json: &[u8],
) -> Vec<u8> {
    let mut w = Writer::new();
    if layout == ClientLayout::Real {
        w.enumeration(msg_type);
    }
    w.hyper(number).opaque(json);
    w.into_bytes()
}

/// The plaintext body of a client frame, given the signature of its data.
pub fn client_frame_body_signed(
    layout: ClientLayout,
    msg_type: i32,
    data: &[u8],
    signature: &[u8],
) -> Vec<u8> {
    let mut w = Writer::new();
    w.opaque(signature);
    if layout == ClientLayout::Spec {
        w.enumeration(msg_type);
    }
    w.opaque(data);
    w.into_bytes()
}

/// The plaintext body of a client frame, signed with `key`. With `corrupt_signature` one
/// bit of the signature is flipped.
pub fn client_frame_body(
    layout: ClientLayout,
    msg_type: i32,
    number: i64,
    json: &[u8],
    key: &RsaPrivateKey,
    salt: SaltLen,
    corrupt_signature: bool,
) -> Result<Vec<u8>> {
    let data = client_signed_data(layout, msg_type, number, json);
    let mut signature = crypto::pss_sign(key, &data, salt).map_err(ClientError::Crypto)?;
    if corrupt_signature {
        let mid = signature.len() / 2;
        signature[mid] ^= 0x01;
    }
    Ok(client_frame_body_signed(
        layout, msg_type, &data, &signature,
    ))
}

/// A client frame as a hub would read it ([`decode_client_frame`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFrame {
    pub layout: ClientLayout,
    pub msg_type: i32,
    /// The sequence (INBOX) or request id (RPC).
    pub number: i64,
    pub json: Vec<u8>,
    /// The salt length the signature verified with.
    pub salt_len: usize,
}

/// Decrypts and parses a client frame with the doc's rule (the word after the signature
/// is a type 1 or 2 in the spec layout, a length of at least 16 in the real-client one),
/// checks its signature with any salt length. A decoder of our own, for unit tests.
pub fn decode_client_frame(
    aes_key: &[u8],
    frame: &[u8],
    client_key: &RsaPublicKey,
) -> std::result::Result<ClientFrame, String> {
    let body = crypto::aes_decrypt(aes_key, frame)?;
    let mut r = Reader::new(&body);
    let signature = r.opaque().map_err(|e| e.to_string())?;
    let word = r.peek_uint().map_err(|e| e.to_string())?;
    let (layout, msg_type, data) = match word {
        1 | 2 => {
            let t = r.enumeration().map_err(|e| e.to_string())?;
            let data = r.opaque().map_err(|e| e.to_string())?;
            (ClientLayout::Spec, t, data)
        }
        n if n >= 16 => {
            let data = r.opaque().map_err(|e| e.to_string())?;
            let t = Reader::new(data).enumeration().map_err(|e| e.to_string())?;
            (ClientLayout::Real, t, data)
        }
        other => return Err(format!("word after the signature is {other}")),
    };
    r.finish().map_err(|e| e.to_string())?;
    if msg_type != msg_type::INBOX && msg_type != msg_type::RPC {
        return Err(format!("unknown client message type {msg_type}"));
    }
    let salt_len = crypto::pss_verify_any(client_key, data, signature)
        .ok_or_else(|| "signature does not verify".to_string())?;
    let mut d = Reader::new(data);
    if layout == ClientLayout::Real {
        d.enumeration().map_err(|e| e.to_string())?;
    }
    let number = d.hyper().map_err(|e| e.to_string())?;
    let json = d.opaque().map_err(|e| e.to_string())?.to_vec();
    d.finish().map_err(|e| e.to_string())?;
    Ok(ClientFrame {
        layout,
        msg_type,
        number,
        json,
        salt_len,
    })
}

// ----- server frames ---------------------------------------------------------------------

/// The two hub → client frame layouts (`plugins.xdr.server_frames`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerFrames {
    /// `"spec"` (the default): `XDR[enum type, opaque data]`.
    #[default]
    Spec,
    /// `"inline"` (what real 0.3 clients read): `XDR[enum type, <data's fields>]`.
    Inline,
}

impl ServerFrames {
    fn other(self) -> ServerFrames {
        match self {
            ServerFrames::Spec => ServerFrames::Inline,
            ServerFrames::Inline => ServerFrames::Spec,
        }
    }

    /// The config value (`"spec"` / `"inline"`).
    pub fn config_value(self) -> &'static str {
        match self {
            ServerFrames::Spec => "spec",
            ServerFrames::Inline => "inline",
        }
    }
}

/// A decoded hub → client frame.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMessage {
    Outbox {
        order: i64,
        timestamp: f64,
        json: Vec<u8>,
    },
    RpcResponse {
        request_id: i64,
        json: Vec<u8>,
    },
    Error {
        message: Vec<u8>,
    },
}

/// The plaintext body of a server frame in `layout` (for scripted servers in tests).
pub fn server_frame_body(layout: ServerFrames, msg: &ServerMessage) -> Vec<u8> {
    let (ty, fields) = match msg {
        ServerMessage::Outbox {
            order,
            timestamp,
            json,
        } => {
            let mut w = Writer::new();
            w.hyper(*order).double(*timestamp).opaque(json);
            (msg_type::OUTBOX, w.into_bytes())
        }
        ServerMessage::RpcResponse { request_id, json } => {
            let mut w = Writer::new();
            w.hyper(*request_id).opaque(json);
            (msg_type::RPC_RESPONSE, w.into_bytes())
        }
        ServerMessage::Error { message } => {
            let mut w = Writer::new();
            w.opaque(message);
            (msg_type::ERROR, w.into_bytes())
        }
    };
    let mut w = Writer::new();
    w.enumeration(ty);
    match layout {
        ServerFrames::Spec => w.opaque(&fields),
        ServerFrames::Inline => w.raw(&fields),
    };
    w.into_bytes()
}

/// Parses a server frame's plaintext body in `layout` (strict: no bytes left over).
pub fn parse_server_body(
    layout: ServerFrames,
    body: &[u8],
) -> std::result::Result<ServerMessage, String> {
    let mut r = Reader::new(body);
    let ty = r.enumeration().map_err(|e| e.to_string())?;
    let fields = match layout {
        ServerFrames::Spec => {
            let data = r.opaque().map_err(|e| format!("data opaque: {e}"))?;
            r.finish().map_err(|e| e.to_string())?;
            data
        }
        ServerFrames::Inline => r.rest(),
    };
    let mut f = Reader::new(fields);
    let err = |e: XdrError| format!("message type {ty}: {e}");
    let msg = match ty {
        msg_type::OUTBOX => ServerMessage::Outbox {
            order: f.hyper().map_err(err)?,
            timestamp: f.double().map_err(err)?,
            json: f.opaque().map_err(err)?.to_vec(),
        },
        msg_type::RPC_RESPONSE => ServerMessage::RpcResponse {
            request_id: f.hyper().map_err(err)?,
            json: f.opaque().map_err(err)?.to_vec(),
        },
        msg_type::ERROR => ServerMessage::Error {
            message: f.opaque().map_err(err)?.to_vec(),
        },
        other => return Err(format!("unknown server message type {other}")),
    };
    f.finish().map_err(err)?;
    Ok(msg)
}

/// Decrypts a server frame and parses it, in `expected` layout first, then in the other
/// one; returns the message and the layout it parsed in.
pub fn decode_server_frame(
    aes_key: &[u8],
    frame: &[u8],
    expected: ServerFrames,
) -> std::result::Result<(ServerMessage, ServerFrames), String> {
    let body = crypto::aes_decrypt(aes_key, frame)?;
    match parse_server_body(expected, &body) {
        Ok(msg) => Ok((msg, expected)),
        Err(first) => match parse_server_body(expected.other(), &body) {
            Ok(msg) => Ok((msg, expected.other())),
            Err(_) => Err(format!("{first} (body {} bytes)", body.len())),
        },
    }
}

/// Seconds since the Unix epoch, now (for timestamp checks).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// ----- payloads --------------------------------------------------------------------------

/// Builders of the chat payloads of `xdr.md`.
pub mod payload {
    use serde_json::{json, Map, Value};

    fn with_extra(mut base: Map<String, Value>, extra: Value) -> Value {
        if let Value::Object(fields) = extra {
            for (k, v) in fields {
                base.entry(k).or_insert(v);
            }
        }
        Value::Object(base)
    }

    /// `SendMessage` with `to`, `text` and extra fields (an object, or `null`); the named
    /// fields win over extra ones of the same name.
    pub fn send_message(to: &str, text: &str, extra: Value) -> Value {
        let mut base = Map::new();
        base.insert("@type".into(), json!("SendMessage"));
        base.insert("to".into(), json!(to));
        base.insert("text".into(), json!(text));
        with_extra(base, extra)
    }

    pub fn join_room(room: &str) -> Value {
        json!({"@type": "JoinRoom", "room": room})
    }

    pub fn leave_room(room: &str) -> Value {
        json!({"@type": "LeaveRoom", "room": room})
    }

    pub fn add_contact(user: &str) -> Value {
        json!({"@type": "AddContact", "user": user})
    }

    pub fn answer_contact(user: &str, accept: bool) -> Value {
        json!({"@type": "AnswerContact", "user": user, "accept": accept})
    }

    pub fn whoami() -> Value {
        json!({"@type": "WhoAmIRequest"})
    }

    /// `HistoryRequest`; `None` leaves a field out (the hub's default).
    pub fn history(before: Option<i64>, limit: Option<i64>) -> Value {
        let mut v = json!({"@type": "HistoryRequest"});
        if let Some(b) = before {
            v["before"] = json!(b);
        }
        if let Some(l) = limit {
            v["limit"] = json!(l);
        }
        v
    }

    /// `RoomHistoryRequest`; `None` leaves a field out.
    pub fn room_history(room: &str, before: Option<i64>, limit: Option<i64>) -> Value {
        let mut v = json!({"@type": "RoomHistoryRequest", "room": room});
        if let Some(b) = before {
            v["before"] = json!(b);
        }
        if let Some(l) = limit {
            v["limit"] = json!(l);
        }
        v
    }

    pub fn contacts() -> Value {
        json!({"@type": "ContactsRequest"})
    }

    pub fn room_members(room: &str) -> Value {
        json!({"@type": "RoomMembersRequest", "room": room})
    }

    pub fn presence(users: &[&str]) -> Value {
        json!({"@type": "PresenceRequest", "users": users})
    }
}

// ----- records ---------------------------------------------------------------------------

/// An OUTBOX message received.
#[derive(Clone, Debug, PartialEq)]
pub struct Outbox {
    pub order: i64,
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    /// The JSON payload (`Value::Null` if it was not JSON: an anomaly).
    pub payload: Value,
    /// The layout the frame came in.
    pub layout: ServerFrames,
    /// When the reader decoded it.
    pub received: Instant,
}

impl Outbox {
    /// The payload's `@type` (empty if none).
    pub fn ty(&self) -> &str {
        self.payload
            .get("@type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The payload's `text` (empty if none).
    pub fn text(&self) -> &str {
        self.payload
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// An RPC_RESPONSE received.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcResponse {
    pub request_id: i64,
    pub payload: Value,
    pub layout: ServerFrames,
}

/// A frame this client wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentFrame {
    /// `msg_type::INBOX`, `msg_type::RPC` (or the overridden type); 0 for raw bytes.
    pub msg_type: i32,
    /// The sequence or request id (0 for raw bytes).
    pub number: i64,
    pub layout: ClientLayout,
    /// The bytes of the WebSocket message (replay them with [`XdrClient::send_raw`]).
    pub bytes: Vec<u8>,
}

// ----- options ---------------------------------------------------------------------------

/// How to connect, and knobs to provoke handshake failures.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The layout the hub is configured to send (`plugins.xdr.server_frames`).
    pub server_frames: ServerFrames,
    /// Default layout of this client's frames.
    pub layout: ClientLayout,
    /// PSS salt length of every signature (handshake and frames).
    pub salt: SaltLen,
    /// Append this `unsigned int` after the hello fields (later real clients do).
    pub trailing_version: Option<u32>,
    /// Send these bytes as message 1 instead of the real one (garbage).
    pub first_message: Option<Vec<u8>>,
    /// Length of the client AES key sent in message 1 (32; anything else is refused).
    pub aes_key_len: usize,
    /// Flip a bit of the handshake signature.
    pub bad_signature: bool,
    /// Sign message 3 with this key instead of the client's.
    pub signing_key: Option<RsaPrivateKey>,
    /// Read message 2 but never send message 3.
    pub stop_after_challenge: bool,
    /// WebSocket request path.
    pub path: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            server_frames: ServerFrames::Spec,
            layout: ClientLayout::Spec,
            salt: SaltLen::Max,
            trailing_version: None,
            first_message: None,
            aes_key_len: AES_KEY_LEN,
            bad_signature: false,
            signing_key: None,
            stop_after_challenge: false,
            path: "/".into(),
        }
    }
}

/// Knobs for one frame.
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// This frame's layout (default: the connection's).
    pub layout: Option<ClientLayout>,
    /// INBOX: this sequence instead of the next one (the counter does not move); RPC: this
    /// request id.
    pub sequence: Option<i64>,
    /// Flip a bit of the frame's signature.
    pub corrupt_signature: bool,
    /// Flip a byte of the ciphertext (the first one after the IV).
    pub tamper_ciphertext: bool,
    /// Put this number in the type field instead of INBOX / RPC.
    pub msg_type: Option<i32>,
    /// Send these bytes as the payload instead of the JSON value's text.
    pub raw_payload: Option<Vec<u8>>,
    /// Sign with this salt length instead of the connection's.
    pub salt: Option<SaltLen>,
}

// ----- shared state ----------------------------------------------------------------------

#[derive(Default)]
struct State {
    heartbeats: Vec<Instant>,
    outbox: Vec<Outbox>,
    outbox_taken: Vec<bool>,
    rpc: Vec<RpcResponse>,
    errors: Vec<String>,
    errors_taken: Vec<bool>,
    /// Binary messages that are not heartbeats, as received.
    raw: Vec<Vec<u8>>,
    sent: Vec<SentFrame>,
    anomalies: Vec<String>,
    closed: Option<Option<(u16, String)>>,
    ended: bool,
}

impl State {
    fn summary(&self) -> String {
        let recent: Vec<String> = self
            .outbox
            .iter()
            .rev()
            .take(8)
            .map(|o| format!("#{} {}", o.order, o.payload))
            .collect();
        format!(
            "{} outbox (latest first: {}); {} rpc; errors {:?}; {} heartbeats; anomalies {:?}; closed {:?}",
            self.outbox.len(),
            recent.join(" | "),
            self.rpc.len(),
            self.errors,
            self.heartbeats.len(),
            self.anomalies,
            self.closed
        )
    }
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Command {
    Send(Message, SyncSender<std::result::Result<(), String>>),
    Close(u16, String),
}

/// The session of a completed handshake.
struct Session {
    client_key: RsaPrivateKey,
    client_aes: Vec<u8>,
    layout: ClientLayout,
    salt: SaltLen,
}

// ----- the client ------------------------------------------------------------------------

/// A blocking XDR client over one WebSocket connection, with its reader thread.
pub struct XdrClient {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    raw: TcpStream,
    session: Option<Session>,
    client_id: String,
    last_seen_sequence: i64,
    last_seen_order: i64,
    /// The next INBOX sequence (also the lock that keeps frames in sequence order).
    next_sequence: Mutex<i64>,
    next_request_id: AtomicI64,
    _reader: JoinHandle<()>,
}

impl fmt::Debug for XdrClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("XdrClient")
            .field("client_id", &self.client_id)
            .field("peer", &self.raw.peer_addr().ok())
            .field("last_seen_sequence", &self.last_seen_sequence)
            .field("outbox", &st.outbox.len())
            .field("errors", &st.errors)
            .field("closed", &st.closed)
            .finish()
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn open_ws(addr: SocketAddr, path: &str) -> Result<(WebSocket<TcpStream>, TcpStream)> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let raw = stream.try_clone()?;
    let url = format!("ws://{addr}{path}");
    match tungstenite::client(url.as_str(), stream) {
        Ok((ws, _response)) => Ok((ws, raw)),
        Err(HandshakeError::Interrupted(_)) => {
            Err(ClientError::Timeout("the WebSocket handshake".into()))
        }
        Err(HandshakeError::Failure(e)) => Err(ClientError::Ws(e.to_string())),
    }
}

/// Reads the next binary message during the handshake (pings answered, heartbeats
/// skipped); a close frame or the end of the connection is `Err(Closed)`.
fn handshake_read(ws: &mut WebSocket<TcpStream>, deadline: Instant) -> Result<Vec<u8>> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout("the hub's handshake reply".into()));
        }
        ws.get_ref()
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
        match ws.read() {
            Ok(Message::Binary(b)) if b == [0] => continue,
            Ok(Message::Binary(b)) => return Ok(b),
            Ok(Message::Text(t)) => {
                return Err(ClientError::Protocol(format!(
                    "text message during the handshake: {t:?}"
                )))
            }
            Ok(Message::Close(frame)) => {
                let info = frame.map(|f| (u16::from(f.code), f.reason.into_owned()));
                let _ = ws.flush();
                return Err(ClientError::Closed(info));
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {
                return Err(ClientError::Timeout("the hub's handshake reply".into()))
            }
            Err(_) => return Err(ClientError::Closed(None)),
        }
    }
}

fn ws_send(ws: &mut WebSocket<TcpStream>, msg: Message) -> Result<()> {
    match ws.send(msg) {
        Ok(()) => Ok(()),
        Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {
            Err(ClientError::Timeout("a write".into()))
        }
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
            Err(ClientError::Closed(None))
        }
        Err(e) => Err(ClientError::Ws(e.to_string())),
    }
}

impl XdrClient {
    /// Connects and does the 3-message handshake with default options (spec layouts,
    /// maximum salt); returns the client and the hub's `last_seen_sequence`.
    pub fn connect(
        addr: SocketAddr,
        client_id: &str,
        client_key: &RsaPrivateKey,
        server_key: &RsaPublicKey,
        last_seen_order: i64,
    ) -> Result<(XdrClient, i64)> {
        XdrClient::connect_with(
            addr,
            client_id,
            client_key,
            server_key,
            last_seen_order,
            &ConnectOptions::default(),
        )
    }

    /// [`connect`](Self::connect) with options and failure knobs. Returns once message 3
    /// is written (see the module notes: a refused message 3 shows as a close later).
    pub fn connect_with(
        addr: SocketAddr,
        client_id: &str,
        client_key: &RsaPrivateKey,
        server_key: &RsaPublicKey,
        last_seen_order: i64,
        opts: &ConnectOptions,
    ) -> Result<(XdrClient, i64)> {
        let (mut ws, raw) = open_ws(addr, &opts.path)?;
        let client_aes = crypto::random_bytes(opts.aes_key_len);
        let first = match &opts.first_message {
            Some(bytes) => bytes.clone(),
            None => {
                let hello = encode_hello(
                    client_id.as_bytes(),
                    last_seen_order,
                    &client_aes,
                    opts.trailing_version,
                );
                crypto::oaep_encrypt(server_key, &hello).map_err(ClientError::Crypto)?
            }
        };
        ws_send(&mut ws, Message::Binary(first))?;
        let reply = handshake_read(&mut ws, Instant::now() + CONNECT_TIMEOUT)?;
        let plain = crypto::oaep_decrypt(client_key, &reply)
            .map_err(|e| ClientError::Protocol(format!("message 2: {e}")))?;
        let challenge = decode_challenge(&plain)
            .map_err(|e| ClientError::Protocol(format!("message 2 plaintext: {e}")))?;
        if challenge.data_to_sign.len() != CHALLENGE_LEN {
            return Err(ClientError::Protocol(format!(
                "data_to_sign is {} bytes, not {CHALLENGE_LEN}",
                challenge.data_to_sign.len()
            )));
        }
        if challenge.server_aes_key.len() != AES_KEY_LEN {
            return Err(ClientError::Protocol(format!(
                "the hub's AES key is {} bytes, not {AES_KEY_LEN}",
                challenge.server_aes_key.len()
            )));
        }
        if !opts.stop_after_challenge {
            let signer = opts.signing_key.as_ref().unwrap_or(client_key);
            let mut signature = crypto::pss_sign(signer, &challenge.data_to_sign, opts.salt)
                .map_err(ClientError::Crypto)?;
            if opts.bad_signature {
                let mid = signature.len() / 2;
                signature[mid] ^= 0x01;
            }
            ws_send(&mut ws, Message::Binary(signature))?;
        }
        let session = Session {
            client_key: client_key.clone(),
            client_aes,
            layout: opts.layout,
            salt: opts.salt,
        };
        let client = XdrClient::spawn(
            ws,
            raw,
            Some(session),
            Some(challenge.server_aes_key),
            opts.server_frames,
            client_id,
            challenge.last_seen_sequence,
            last_seen_order,
        )?;
        Ok((client, challenge.last_seen_sequence))
    }

    /// A WebSocket connection without any handshake (send raw bytes, wait for the close).
    pub fn connect_raw(addr: SocketAddr) -> Result<XdrClient> {
        let (ws, raw) = open_ws(addr, "/")?;
        XdrClient::spawn(ws, raw, None, None, ServerFrames::Spec, "", 0, -1)
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        ws: WebSocket<TcpStream>,
        raw: TcpStream,
        session: Option<Session>,
        server_aes: Option<Vec<u8>>,
        server_frames: ServerFrames,
        client_id: &str,
        last_seen_sequence: i64,
        last_seen_order: i64,
    ) -> Result<XdrClient> {
        ws.get_ref().set_read_timeout(Some(POLL))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        });
        let (commands, rx) = mpsc::channel();
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("xdr-reader-{client_id}"))
                .spawn(move || {
                    SocketReader {
                        ws,
                        shared,
                        rx,
                        server_aes,
                        layout: server_frames,
                    }
                    .run()
                })?
        };
        Ok(XdrClient {
            shared,
            commands,
            raw,
            session,
            client_id: client_id.to_owned(),
            last_seen_sequence,
            last_seen_order,
            next_sequence: Mutex::new(last_seen_sequence + 1),
            next_request_id: AtomicI64::new(1),
            _reader: reader,
        })
    }

    // ----- handshake facts -------------------------------------------------------------

    /// The client id this connection presented.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The hub's `last_seen_sequence` from message 2.
    pub fn last_seen_sequence(&self) -> i64 {
        self.last_seen_sequence
    }

    /// The `last_seen_order` this connection sent in message 1.
    pub fn handshake_order(&self) -> i64 {
        self.last_seen_order
    }

    /// The sequence the next [`send_inbox`](Self::send_inbox) will use.
    pub fn next_sequence(&self) -> i64 {
        *self.next_sequence.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The resume position: the highest order of this connection's non-`Presence` OUTBOX
    /// messages, or the handshake's `last_seen_order` if there were none.
    pub fn last_order(&self) -> i64 {
        let st = self.shared.lock();
        st.outbox
            .iter()
            .filter(|o| o.ty() != "Presence")
            .map(|o| o.order)
            .fold(self.last_seen_order, i64::max)
    }

    // ----- sending ---------------------------------------------------------------------

    fn session(&self) -> Result<&Session> {
        self.session
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("no XDR session on a raw connection".into()))
    }

    fn build_frame(
        &self,
        msg_type: i32,
        number: i64,
        payload: &Value,
        opts: &SendOptions,
    ) -> Result<SentFrame> {
        let session = self.session()?;
        let layout = opts.layout.unwrap_or(session.layout);
        let json = match &opts.raw_payload {
            Some(bytes) => bytes.clone(),
            None => payload.to_string().into_bytes(),
        };
        let ty = opts.msg_type.unwrap_or(msg_type);
        let body = client_frame_body(
            layout,
            ty,
            number,
            &json,
            &session.client_key,
            opts.salt.unwrap_or(session.salt),
            opts.corrupt_signature,
        )?;
        let mut bytes =
            crypto::aes_encrypt(&session.client_aes, &body).map_err(ClientError::Crypto)?;
        if opts.tamper_ciphertext {
            bytes[IV_LEN] ^= 0xff;
        }
        Ok(SentFrame {
            msg_type: ty,
            number,
            layout,
            bytes,
        })
    }

    fn write(&self, msg: Message) -> Result<()> {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.commands.send(Command::Send(msg, done_tx)).is_err() {
            return Err(self.closed_error());
        }
        match done_rx.recv_timeout(WRITE_TIMEOUT + Duration::from_secs(2)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClientError::Ws(e)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ClientError::Timeout("a write".into())),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.closed_error()),
        }
    }

    fn write_frame(&self, frame: SentFrame) -> Result<()> {
        self.write(Message::Binary(frame.bytes.clone()))?;
        self.shared.lock().sent.push(frame);
        Ok(())
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(self.shared.lock().closed.clone().flatten())
    }

    /// Sends an INBOX message with the next sequence; returns the sequence used.
    pub fn send_inbox(&self, payload: &Value) -> Result<i64> {
        self.send_inbox_with(payload, &SendOptions::default())
    }

    /// Sends an INBOX message with knobs; returns the sequence used.
    pub fn send_inbox_with(&self, payload: &Value, opts: &SendOptions) -> Result<i64> {
        let mut next = self.next_sequence.lock().unwrap_or_else(|e| e.into_inner());
        let seq = opts.sequence.unwrap_or(*next);
        let frame = self.build_frame(msg_type::INBOX, seq, payload, opts)?;
        self.write_frame(frame)?;
        if opts.sequence.is_none() {
            *next += 1;
        }
        Ok(seq)
    }

    /// Sends an RPC request with a fresh request id; returns the id.
    pub fn send_rpc(&self, payload: &Value) -> Result<i64> {
        self.send_rpc_with(payload, &SendOptions::default())
    }

    /// Sends an RPC request with knobs (`sequence` is the request id); returns the id.
    pub fn send_rpc_with(&self, payload: &Value, opts: &SendOptions) -> Result<i64> {
        let id = opts
            .sequence
            .unwrap_or_else(|| self.next_request_id.fetch_add(1, Ordering::SeqCst));
        // The sequence lock keeps frames in the order their numbers were given out.
        let _order = self.next_sequence.lock().unwrap_or_else(|e| e.into_inner());
        let frame = self.build_frame(msg_type::RPC, id, payload, opts)?;
        self.write_frame(frame)?;
        Ok(id)
    }

    /// Sends an RPC request and waits for its response (the payload, `Error` included).
    /// An ERROR frame meanwhile fails fast with `Err(Server)`.
    pub fn rpc(&self, payload: &Value, timeout: Duration) -> Result<Value> {
        self.rpc_with(payload, &SendOptions::default(), timeout)
    }

    /// [`rpc`](Self::rpc) with knobs.
    pub fn rpc_with(
        &self,
        payload: &Value,
        opts: &SendOptions,
        timeout: Duration,
    ) -> Result<Value> {
        let errors_before = self.shared.lock().errors.len();
        let id = self.send_rpc_with(payload, opts)?;
        self.wait_rpc_since(id, errors_before, timeout)
            .map(|r| r.payload)
    }

    /// Waits for the RPC response with this request id.
    pub fn wait_rpc(&self, request_id: i64, timeout: Duration) -> Result<RpcResponse> {
        let errors_before = self.shared.lock().errors.len();
        self.wait_rpc_since(request_id, errors_before, timeout)
    }

    fn wait_rpc_since(
        &self,
        request_id: i64,
        errors_before: usize,
        timeout: Duration,
    ) -> Result<RpcResponse> {
        self.wait_for(
            timeout,
            &format!("the RPC response to request {request_id}"),
            |st| {
                if let Some(r) = st.rpc.iter().find(|r| r.request_id == request_id) {
                    return Some(Ok(r.clone()));
                }
                st.errors
                    .get(errors_before)
                    .map(|e| Err(ClientError::Server(e.clone())))
            },
        )?
    }

    /// Builds INBOX frames for `payloads` with the next sequences, signed and sealed now,
    /// to be sent later with [`send_raw`](Self::send_raw) in order: for load tests, so
    /// that the client's signing is not what gets timed.
    pub fn prepare_inbox(&self, payloads: &[Value]) -> Result<Vec<Vec<u8>>> {
        let mut next = self.next_sequence.lock().unwrap_or_else(|e| e.into_inner());
        let mut frames = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let frame =
                self.build_frame(msg_type::INBOX, *next, payload, &SendOptions::default())?;
            *next += 1;
            frames.push(frame.bytes);
        }
        Ok(frames)
    }

    /// Sends raw bytes as one binary message (garbage, or a replay of
    /// [`SentFrame::bytes`]).
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        self.write(Message::Binary(bytes.to_vec()))?;
        self.shared.lock().sent.push(SentFrame {
            msg_type: 0,
            number: 0,
            layout: ClientLayout::Spec,
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    /// Resends the `index`-th frame written (a replay).
    pub fn replay(&self, index: usize) -> Result<()> {
        let bytes = self
            .shared
            .lock()
            .sent
            .get(index)
            .map(|f| f.bytes.clone())
            .ok_or_else(|| ClientError::Protocol(format!("no sent frame #{index}")))?;
        self.send_raw(&bytes)
    }

    /// Sends a text WebSocket message (a protocol violation).
    pub fn send_text(&self, text: &str) -> Result<()> {
        self.write(Message::Text(text.to_owned()))
    }

    /// Sends a client heartbeat (one `0x00` byte).
    pub fn send_heartbeat(&self) -> Result<()> {
        self.write(Message::Binary(vec![0]))
    }

    /// Every frame written, in order.
    pub fn sent_frames(&self) -> Vec<SentFrame> {
        self.shared.lock().sent.clone()
    }

    // ----- payload helpers -------------------------------------------------------------

    /// `SendMessage`; returns its sequence.
    pub fn send_message(&self, to: &str, text: &str, extra: Value) -> Result<i64> {
        self.send_inbox(&payload::send_message(to, text, extra))
    }

    /// `JoinRoom`; returns its sequence.
    pub fn join_room(&self, room: &str) -> Result<i64> {
        self.send_inbox(&payload::join_room(room))
    }

    /// `LeaveRoom`; returns its sequence.
    pub fn leave_room(&self, room: &str) -> Result<i64> {
        self.send_inbox(&payload::leave_room(room))
    }

    /// `WhoAmIRequest` → the response payload.
    pub fn whoami(&self) -> Result<Value> {
        self.rpc(&payload::whoami(), HELPER_TIMEOUT)
    }

    // ----- waiting ---------------------------------------------------------------------

    /// Waits while `check` returns `None`: for a state change, the end of the connection
    /// (`Err(Closed)`, after a last check) or the timeout.
    fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(v) = check(&mut st) {
                return Ok(v);
            }
            if st.ended {
                return Err(ClientError::Closed(st.closed.clone().flatten()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(format!(
                    "{what} within {timeout:?}; {}",
                    st.summary()
                )));
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The first OUTBOX message matching `pred` not taken by an earlier wait.
    pub fn wait_outbox(&self, pred: impl Fn(&Outbox) -> bool, timeout: Duration) -> Result<Outbox> {
        self.wait_for(timeout, "a matching OUTBOX message", |st| {
            let i = (0..st.outbox.len()).find(|&i| !st.outbox_taken[i] && pred(&st.outbox[i]))?;
            st.outbox_taken[i] = true;
            Some(st.outbox[i].clone())
        })
    }

    /// The first OUTBOX message with this `@type` not taken by an earlier wait.
    pub fn wait_outbox_type(&self, ty: &str, timeout: Duration) -> Result<Outbox> {
        self.wait_for(timeout, &format!("an OUTBOX {ty}"), |st| {
            let i =
                (0..st.outbox.len()).find(|&i| !st.outbox_taken[i] && st.outbox[i].ty() == ty)?;
            st.outbox_taken[i] = true;
            Some(st.outbox[i].clone())
        })
    }

    /// Waits until at least `count` OUTBOX messages have arrived in all; returns all of
    /// them (taken or not, in arrival order).
    pub fn wait_outbox_count(&self, count: usize, timeout: Duration) -> Result<Vec<Outbox>> {
        self.wait_for(timeout, &format!("{count} OUTBOX messages"), |st| {
            (st.outbox.len() >= count).then(|| st.outbox.clone())
        })
    }

    /// Waits until `count` OUTBOX messages matching `pred` have arrived; returns them.
    pub fn wait_outbox_matching(
        &self,
        pred: impl Fn(&Outbox) -> bool,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Outbox>> {
        self.wait_for(
            timeout,
            &format!("{count} matching OUTBOX messages"),
            |st| {
                let hits: Vec<Outbox> = st.outbox.iter().filter(|o| pred(o)).cloned().collect();
                (hits.len() >= count).then_some(hits)
            },
        )
    }

    /// The first ERROR text not taken by an earlier wait.
    pub fn wait_error(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(i) = (0..st.errors.len()).find(|&i| !st.errors_taken[i]) {
                st.errors_taken[i] = true;
                return Ok(st.errors[i].clone());
            }
            if st.ended {
                return Err(ClientError::Closed(st.closed.clone().flatten()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(format!(
                    "an ERROR frame within {timeout:?}; {}",
                    st.summary()
                )));
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the server has closed (close frame, or the end of the connection);
    /// returns its close code and reason (`None`: no code / no close frame).
    pub fn wait_closed(&self, timeout: Duration) -> Result<Option<(u16, String)>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(info) = &st.closed {
                return Ok(info.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(format!(
                    "the server to close within {timeout:?}; {}",
                    st.summary()
                )));
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The close code once the server closed (waits up to `timeout`); `None` if it closed
    /// without a code.
    pub fn wait_close_code(&self, timeout: Duration) -> Result<Option<u16>> {
        Ok(self.wait_closed(timeout)?.map(|(code, _)| code))
    }

    /// A clean WebSocket close (1000); waits for the end of the connection and returns
    /// the server's close reply.
    pub fn close(&self, timeout: Duration) -> Result<Option<(u16, String)>> {
        if self
            .commands
            .send(Command::Close(close_code::NORMAL, String::new()))
            .is_err()
        {
            return Ok(self.shared.lock().closed.clone().flatten());
        }
        self.wait_closed(timeout)?;
        // The close reply is in; let the reader see the end of the TCP connection too.
        let _ = self.wait_for(timeout, "the end of the connection", |st| {
            st.ended.then_some(())
        });
        Ok(self.shared.lock().closed.clone().flatten())
    }

    /// Shuts the TCP connection down without a WebSocket close.
    pub fn drop_abruptly(&self) {
        let _ = self.raw.shutdown(Shutdown::Both);
    }

    // ----- records ---------------------------------------------------------------------

    /// Every OUTBOX message received, in order.
    pub fn outbox(&self) -> Vec<Outbox> {
        self.shared.lock().outbox.clone()
    }

    /// How many OUTBOX messages received.
    pub fn outbox_count(&self) -> usize {
        self.shared.lock().outbox.len()
    }

    /// Every RPC response received, in order.
    pub fn rpc_responses(&self) -> Vec<RpcResponse> {
        self.shared.lock().rpc.clone()
    }

    /// Every ERROR text received, in order.
    pub fn errors(&self) -> Vec<String> {
        self.shared.lock().errors.clone()
    }

    /// When each heartbeat arrived.
    pub fn heartbeats(&self) -> Vec<Instant> {
        self.shared.lock().heartbeats.clone()
    }

    /// How many heartbeats arrived.
    pub fn heartbeat_count(&self) -> usize {
        self.shared.lock().heartbeats.len()
    }

    /// Waits until at least `count` heartbeats have arrived (the hub starts them once
    /// message 3 is verified: the first one shows the session is live).
    pub fn wait_heartbeats(&self, count: usize, timeout: Duration) -> Result<Vec<Instant>> {
        self.wait_for(timeout, &format!("{count} heartbeats"), |st| {
            (st.heartbeats.len() >= count).then(|| st.heartbeats.clone())
        })
    }

    /// Every binary message that was not a heartbeat, as received (raw connections).
    pub fn raw_received(&self) -> Vec<Vec<u8>> {
        self.shared.lock().raw.clone()
    }

    /// Deviations from the documented wire profile seen so far.
    pub fn anomalies(&self) -> Vec<String> {
        self.shared.lock().anomalies.clone()
    }

    /// `Some(close info)` once the server has closed or the connection ended.
    pub fn close_info(&self) -> Option<Option<(u16, String)>> {
        self.shared.lock().closed.clone()
    }

    /// Whether the reader thread has ended (the connection is over).
    pub fn is_ended(&self) -> bool {
        self.shared.lock().ended
    }
}

// ----- the reader thread -----------------------------------------------------------------

struct SocketReader {
    ws: WebSocket<TcpStream>,
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    server_aes: Option<Vec<u8>>,
    layout: ServerFrames,
}

impl SocketReader {
    fn run(mut self) {
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        let _ = self.ws.close(None);
                        let _ = self.ws.flush();
                        let _ = self.ws.get_ref().shutdown(Shutdown::Both);
                        self.end();
                        return;
                    }
                }
            }
            match self.ws.read() {
                Ok(msg) => self.incoming(msg),
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {}
                Err(_) => {
                    self.end();
                    return;
                }
            }
        }
    }

    fn end(&self) {
        let mut st = self.shared.lock();
        st.ended = true;
        if st.closed.is_none() {
            st.closed = Some(None);
        }
        self.shared.cond.notify_all();
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Send(msg, done) => {
                let result = self.ws.send(msg).map_err(|e| e.to_string());
                let _ = done.send(result);
            }
            Command::Close(code, reason) => {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                let _ = self.ws.close(Some(frame));
                let _ = self.ws.flush();
            }
        }
    }

    fn anomaly(&self, text: String) {
        let mut st = self.shared.lock();
        st.anomalies.push(text);
        self.shared.cond.notify_all();
    }

    fn incoming(&mut self, msg: Message) {
        match msg {
            Message::Binary(b) if b == [0] => {
                let mut st = self.shared.lock();
                st.heartbeats.push(Instant::now());
                self.shared.cond.notify_all();
            }
            Message::Binary(b) if b.len() == 1 => {
                self.anomaly(format!("one-byte message {:#04x} is not a heartbeat", b[0]));
            }
            Message::Binary(b) => self.frame(b),
            Message::Text(t) => self.anomaly(format!("text message from the hub: {t:?}")),
            Message::Close(frame) => {
                let info = frame.map(|f| (u16::from(f.code), f.reason.into_owned()));
                let _ = self.ws.flush();
                let mut st = self.shared.lock();
                st.closed = Some(info);
                self.shared.cond.notify_all();
            }
            Message::Ping(_) => {
                // tungstenite queued the pong; send it now.
                let _ = self.ws.flush();
            }
            Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    fn frame(&mut self, bytes: Vec<u8>) {
        self.shared.lock().raw.push(bytes.clone());
        let Some(key) = &self.server_aes else {
            self.anomaly(format!(
                "{}-byte binary message before any session",
                bytes.len()
            ));
            return;
        };
        let (msg, layout) = match decode_server_frame(key, &bytes, self.layout) {
            Ok(done) => done,
            Err(e) => {
                self.anomaly(format!("undecodable {}-byte frame: {e}", bytes.len()));
                return;
            }
        };
        if layout != self.layout {
            self.anomaly(format!(
                "frame in the {:?} layout, the hub is configured for {:?}: {msg:?}",
                layout, self.layout
            ));
        }
        match msg {
            ServerMessage::Outbox {
                order,
                timestamp,
                json,
            } => {
                let payload = self.json(&json, "OUTBOX");
                let mut st = self.shared.lock();
                st.outbox.push(Outbox {
                    order,
                    timestamp,
                    payload,
                    layout,
                    received: Instant::now(),
                });
                st.outbox_taken.push(false);
                self.shared.cond.notify_all();
            }
            ServerMessage::RpcResponse { request_id, json } => {
                let payload = self.json(&json, "RPC_RESPONSE");
                let mut st = self.shared.lock();
                st.rpc.push(RpcResponse {
                    request_id,
                    payload,
                    layout,
                });
                self.shared.cond.notify_all();
            }
            ServerMessage::Error { message } => {
                if layout == ServerFrames::Inline {
                    let mut r = Reader::new(&message);
                    if r.opaque().is_ok() && r.finish().is_ok() {
                        self.anomaly(format!(
                            "inline ERROR whose text is itself an XDR opaque (spec layout?): {message:?}"
                        ));
                    }
                }
                let text = match String::from_utf8(message) {
                    Ok(t) => t,
                    Err(e) => {
                        self.anomaly("ERROR text is not UTF-8".into());
                        String::from_utf8_lossy(e.as_bytes()).into_owned()
                    }
                };
                let mut st = self.shared.lock();
                st.errors.push(text);
                st.errors_taken.push(false);
                self.shared.cond.notify_all();
            }
        }
    }

    fn json(&self, bytes: &[u8], what: &str) -> Value {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => {
                if v.get("@type").and_then(Value::as_str).is_none() {
                    self.anomaly(format!("{what} payload without a string @type: {v}"));
                }
                v
            }
            Err(e) => {
                self.anomaly(format!(
                    "{what} payload is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(bytes)
                ));
                Value::Null
            }
        }
    }
}

// ----- unit tests ------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::PublicKeyParts;
    use serde_json::json;
    use std::sync::OnceLock;

    /// Two RSA-2048 key pairs shared by the tests (generation is the slow part).
    fn keys() -> &'static (RsaPrivateKey, RsaPrivateKey) {
        static KEYS: OnceLock<(RsaPrivateKey, RsaPrivateKey)> = OnceLock::new();
        KEYS.get_or_init(|| (crypto::generate_client_key(), crypto::generate_client_key()))
    }

    // ----- XDR -----

    #[test]
    fn xdr_integers_are_big_endian_twos_complement() {
        let mut w = Writer::new();
        w.int(-2)
            .uint(0xdead_beef)
            .enumeration(1)
            .hyper(-1)
            .hyper(1);
        assert_eq!(
            w.as_bytes(),
            [
                0xff, 0xff, 0xff, 0xfe, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1
            ]
        );
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.int().unwrap(), -2);
        assert_eq!(r.uint().unwrap(), 0xdead_beef);
        assert_eq!(r.enumeration().unwrap(), 1);
        assert_eq!(r.hyper().unwrap(), -1);
        assert_eq!(r.hyper().unwrap(), 1);
        r.finish().unwrap();
        for v in [i32::MIN, -1, 0, i32::MAX] {
            let mut w = Writer::new();
            w.int(v);
            assert_eq!(Reader::new(w.as_bytes()).int().unwrap(), v);
        }
        for v in [i64::MIN, -1, 0, 1 << 40, i64::MAX] {
            let mut w = Writer::new();
            w.hyper(v);
            assert_eq!(w.len(), 8);
            assert_eq!(Reader::new(w.as_bytes()).hyper().unwrap(), v);
        }
    }

    #[test]
    fn xdr_double_is_ieee754_big_endian() {
        let mut w = Writer::new();
        w.double(1.0);
        assert_eq!(w.as_bytes(), [0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
        for v in [
            0.0,
            -0.0,
            1.5,
            -2.25,
            1_700_000_000.123_456,
            f64::INFINITY,
            f64::MIN_POSITIVE,
        ] {
            let mut w = Writer::new();
            w.double(v);
            let got = Reader::new(w.as_bytes()).double().unwrap();
            assert_eq!(got.to_bits(), v.to_bits(), "{v}");
        }
        let mut w = Writer::new();
        w.double(f64::NAN);
        assert!(Reader::new(w.as_bytes()).double().unwrap().is_nan());
    }

    #[test]
    fn xdr_opaque_padding_for_lengths_0_to_5() {
        let expected: [&[u8]; 6] = [
            &[0, 0, 0, 0],
            &[0, 0, 0, 1, 0xa0, 0, 0, 0],
            &[0, 0, 0, 2, 0xa0, 0xa1, 0, 0],
            &[0, 0, 0, 3, 0xa0, 0xa1, 0xa2, 0],
            &[0, 0, 0, 4, 0xa0, 0xa1, 0xa2, 0xa3],
            &[0, 0, 0, 5, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0, 0, 0],
        ];
        for (len, want) in expected.iter().enumerate() {
            let data: Vec<u8> = (0..len as u8).map(|i| 0xa0 + i).collect();
            let mut w = Writer::new();
            w.opaque(&data);
            assert_eq!(w.as_bytes(), *want, "length {len}");
            assert_eq!(w.len() % 4, 0);
            assert_eq!(xdr::padding(len), (4 - len % 4) % 4);
            let mut r = Reader::new(w.as_bytes());
            assert_eq!(r.opaque().unwrap(), data.as_slice());
            r.finish().unwrap();
        }
    }

    #[test]
    fn xdr_rejects_non_zero_padding_short_input_and_trailing_bytes() {
        for len in [1usize, 2, 3, 5] {
            let data = vec![7u8; len];
            let mut w = Writer::new();
            w.opaque(&data);
            let good = w.into_bytes();
            for pad in 0..xdr::padding(len) {
                let mut bad = good.clone();
                let at = 4 + len + pad;
                bad[at] = 1;
                assert_eq!(
                    Reader::new(&bad).opaque(),
                    Err(XdrError::NonZeroPadding),
                    "length {len}, padding byte {pad}"
                );
            }
            // Missing padding is too short.
            let cut = &good[..4 + len];
            assert!(matches!(
                Reader::new(cut).opaque(),
                Err(XdrError::Short { .. })
            ));
        }
        // A length running past the end.
        assert_eq!(
            Reader::new(&[0, 0, 0, 9, 1, 2, 3, 4]).opaque(),
            Err(XdrError::Short { need: 12, left: 4 })
        );
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff]).opaque(),
            Err(XdrError::Short {
                need: u32::MAX as usize + 1,
                left: 0
            })
        );
        assert!(matches!(
            Reader::new(&[0, 0, 1]).int(),
            Err(XdrError::Short { need: 4, left: 3 })
        ));
        assert!(matches!(
            Reader::new(&[0; 7]).hyper(),
            Err(XdrError::Short { .. })
        ));
        assert!(matches!(
            Reader::new(&[0; 7]).double(),
            Err(XdrError::Short { .. })
        ));
        let mut r = Reader::new(&[0, 0, 0, 1, 0, 0]);
        r.int().unwrap();
        assert_eq!(r.finish(), Err(XdrError::Trailing(2)));
        assert_eq!(r.peek_uint(), Err(XdrError::Short { need: 4, left: 2 }));
        assert_eq!(r.rest(), &[0, 0]);
        r.finish().unwrap();
    }

    #[test]
    fn hello_and_challenge_round_trip() {
        let hello = encode_hello(b"alice", -1, &[9u8; 32], None);
        assert_eq!(hello.len(), 4 + 8 + 8 + 4 + 32);
        let h = decode_hello(&hello).unwrap();
        assert_eq!(
            (h.client_id.as_slice(), h.last_seen_order, h.aes_key.len()),
            (&b"alice"[..], -1, 32)
        );
        assert!(h.trailing.is_empty());
        let with_version = encode_hello(b"alice", 7, &[9u8; 32], Some(3));
        let h = decode_hello(&with_version).unwrap();
        assert_eq!(
            (h.last_seen_order, h.trailing.clone()),
            (7, vec![0, 0, 0, 3])
        );
        let c = Challenge {
            data_to_sign: vec![1; 32],
            last_seen_sequence: 41,
            server_aes_key: vec![2; 32],
        };
        let bytes = encode_challenge(&c);
        assert_eq!(decode_challenge(&bytes).unwrap(), c);
        let mut longer = bytes.clone();
        longer.extend([0, 0, 0, 0]);
        assert_eq!(decode_challenge(&longer), Err(XdrError::Trailing(4)));
    }

    // ----- crypto -----

    #[test]
    fn oaep_round_trip_and_hello_fits() {
        let (key, other) = keys();
        let public = key.to_public_key();
        let hello = encode_hello(b"alice", -1, &crypto::random_bytes(32), Some(1));
        let ct = crypto::oaep_encrypt(&public, &hello).unwrap();
        assert_eq!(ct.len(), 256);
        assert_eq!(crypto::oaep_decrypt(key, &ct).unwrap(), hello);
        assert!(crypto::oaep_decrypt(other, &ct).is_err());
        // Two encryptions differ (random seed).
        assert_ne!(ct, crypto::oaep_encrypt(&public, &hello).unwrap());
        // OAEP-SHA-1 under RSA-2048 carries at most 256 − 2·20 − 2 = 214 bytes.
        assert!(crypto::oaep_encrypt(&public, &[0u8; 214]).is_ok());
        assert!(crypto::oaep_encrypt(&public, &[0u8; 215]).is_err());
    }

    #[test]
    fn pss_salt_lengths() {
        let (key, other) = keys();
        let public = key.to_public_key();
        assert_eq!(crypto::max_salt_len(2048), 190);
        assert_eq!(crypto::max_salt_len(4096), 446);
        assert_eq!(SaltLen::Max.bytes(public.n().bits()), 256 - 64 - 2);
        assert_eq!(SaltLen::Digest.bytes(2048), 64);
        assert_eq!(SaltLen::Zero.bytes(2048), 0);
        let data = b"data to sign";
        for (salt, len) in [
            (SaltLen::Max, 190),
            (SaltLen::Digest, 64),
            (SaltLen::Zero, 0),
            (SaltLen::Exact(20), 20),
        ] {
            let sig = crypto::pss_sign(key, data, salt).unwrap();
            assert_eq!(sig.len(), 256);
            assert!(crypto::pss_verify(&public, data, &sig, salt), "{salt:?}");
            assert_eq!(crypto::pss_verify_any(&public, data, &sig), Some(len));
            assert!(!crypto::pss_verify(&public, b"other data", &sig, salt));
            assert!(!crypto::pss_verify(
                &other.to_public_key(),
                data,
                &sig,
                salt
            ));
        }
        // A fixed-length verifier refuses another salt length.
        let sig = crypto::pss_sign(key, data, SaltLen::Zero).unwrap();
        assert!(!crypto::pss_verify(&public, data, &sig, SaltLen::Max));
        assert!(crypto::pss_sign(key, data, SaltLen::Exact(191)).is_err());
    }

    #[test]
    fn aes_cbc_pkcs7_with_iv_prefix() {
        let key = crypto::random_bytes(32);
        for len in [0usize, 1, 15, 16, 17, 100] {
            let pt = crypto::random_bytes(len);
            let frame = crypto::aes_encrypt(&key, &pt).unwrap();
            // IV + plaintext padded to the next block (a full block when aligned).
            assert_eq!(frame.len(), IV_LEN + (len / 16 + 1) * 16, "length {len}");
            assert_eq!(crypto::aes_decrypt(&key, &frame).unwrap(), pt);
            assert_ne!(
                frame[..IV_LEN],
                crypto::aes_encrypt(&key, &pt).unwrap()[..IV_LEN]
            );
        }
        // Known answer: one block of PKCS#7 padding under a zero key and IV.
        let frame = crypto::aes_encrypt_with_iv(&[0u8; 32], &[0u8; 16], b"").unwrap();
        let mut block = aes::cipher::generic_array::GenericArray::from([16u8; 16]);
        {
            use aes::cipher::{BlockEncrypt, KeyInit};
            aes::Aes256::new(&[0u8; 32].into()).encrypt_block(&mut block);
        }
        assert_eq!(&frame[16..], block.as_slice());
        assert!(crypto::aes_encrypt(&[0u8; 16], b"x").is_err());
        assert!(crypto::aes_decrypt(&key, &[0u8; 20]).is_err());
        assert!(crypto::aes_decrypt(&key, &[0u8; 16]).is_err());
        // A wrong key almost always breaks the padding; the plaintext never survives.
        let frame = crypto::aes_encrypt(&key, b"secret").unwrap();
        let other = crypto::random_bytes(32);
        assert_ne!(
            crypto::aes_decrypt(&other, &frame).ok().as_deref(),
            Some(&b"secret"[..])
        );
    }

    #[test]
    fn pem_export_and_parse() {
        let (key, _) = keys();
        let public = key.to_public_key();
        let spki = crypto::public_spki_pem(&public);
        assert!(spki.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{spki}");
        let pkcs1 = crypto::public_pkcs1_pem(&public);
        assert!(
            pkcs1.starts_with("-----BEGIN RSA PUBLIC KEY-----\n"),
            "{pkcs1}"
        );
        assert_eq!(crypto::parse_spki_pem(&spki).unwrap(), public);
        assert_eq!(
            crypto::parse_spki_pem(&format!("note\n{spki}\ntrailer\n")).unwrap(),
            public
        );
        assert!(crypto::parse_spki_pem(&pkcs1).is_err());
        assert_eq!(crypto::parse_public_pem(&pkcs1).unwrap(), public);
        assert_eq!(crypto::parse_public_pem(&spki).unwrap(), public);
        assert!(crypto::parse_spki_pem("nothing").is_err());
    }

    // ----- frames -----

    #[test]
    fn client_frames_in_both_layouts_decode_with_our_decoder() {
        let (key, other) = keys();
        let public = key.to_public_key();
        let aes = crypto::random_bytes(32);
        let json = br#"{"@type":"SendMessage","to":"bob","text":"hi"}"#;
        for layout in [ClientLayout::Spec, ClientLayout::Real] {
            for (ty, number) in [(msg_type::INBOX, 5i64), (msg_type::RPC, 1 << 33)] {
                for salt in [SaltLen::Max, SaltLen::Digest, SaltLen::Zero] {
                    let body =
                        client_frame_body(layout, ty, number, json, key, salt, false).unwrap();
                    let frame = crypto::aes_encrypt(&aes, &body).unwrap();
                    let got = decode_client_frame(&aes, &frame, &public).unwrap();
                    assert_eq!(
                        (got.layout, got.msg_type, got.number, got.json.as_slice()),
                        (layout, ty, number, &json[..]),
                        "{layout:?} {ty} {salt:?}"
                    );
                    assert_eq!(got.salt_len, salt.bytes(2048));
                    assert!(decode_client_frame(&aes, &frame, &other.to_public_key()).is_err());
                }
            }
        }
        // The layouts' shapes.
        let data = client_signed_data(ClientLayout::Real, msg_type::RPC, 3, b"{}");
        assert_eq!(data[..12], [0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3]);
        let body = client_frame_body_signed(ClientLayout::Real, msg_type::RPC, &data, &[0xaa; 256]);
        let mut r = Reader::new(&body);
        assert_eq!(r.opaque().unwrap().len(), 256);
        assert_eq!(r.peek_uint().unwrap() as usize, data.len());
        assert!(data.len() >= 16);
        let data = client_signed_data(ClientLayout::Spec, msg_type::INBOX, 3, b"{}");
        assert_eq!(data[..8], [0, 0, 0, 0, 0, 0, 0, 3]);
        let body =
            client_frame_body_signed(ClientLayout::Spec, msg_type::INBOX, &data, &[0xaa; 256]);
        let mut r = Reader::new(&body);
        r.opaque().unwrap();
        assert_eq!(r.enumeration().unwrap(), msg_type::INBOX);
        assert_eq!(r.opaque().unwrap(), data.as_slice());
        r.finish().unwrap();
        // Knobs: a corrupted signature does not verify; a tampered ciphertext does not decode.
        let body =
            client_frame_body(ClientLayout::Spec, 1, 1, json, key, SaltLen::Max, true).unwrap();
        let frame = crypto::aes_encrypt(&aes, &body).unwrap();
        assert!(decode_client_frame(&aes, &frame, &public)
            .unwrap_err()
            .contains("signature"));
        let body =
            client_frame_body(ClientLayout::Spec, 1, 1, json, key, SaltLen::Max, false).unwrap();
        let mut frame = crypto::aes_encrypt(&aes, &body).unwrap();
        frame[IV_LEN] ^= 0xff;
        assert!(decode_client_frame(&aes, &frame, &public).is_err());
        // An unknown type is refused.
        let body =
            client_frame_body(ClientLayout::Spec, 3, 1, json, key, SaltLen::Max, false).unwrap();
        let frame = crypto::aes_encrypt(&aes, &body).unwrap();
        assert!(decode_client_frame(&aes, &frame, &public).is_err());
    }

    #[test]
    fn server_frames_in_both_layouts() {
        let aes = crypto::random_bytes(32);
        let messages = [
            ServerMessage::Outbox {
                order: 7,
                timestamp: 1_700_000_000.25,
                json: br#"{"@type":"Message"}"#.to_vec(),
            },
            ServerMessage::RpcResponse {
                request_id: 3,
                json: br#"{"@type":"WhoAmIResponse"}"#.to_vec(),
            },
            ServerMessage::Error {
                message: b"invalid sequence: expected 1, got 2".to_vec(),
            },
        ];
        for msg in &messages {
            let spec = server_frame_body(ServerFrames::Spec, msg);
            let inline = server_frame_body(ServerFrames::Inline, msg);
            assert_eq!(inline.len() + 4, spec.len());
            assert_eq!(spec[..4], inline[..4]);
            for layout in [ServerFrames::Spec, ServerFrames::Inline] {
                let body = server_frame_body(layout, msg);
                assert_eq!(parse_server_body(layout, &body).as_ref(), Ok(msg));
                let frame = crypto::aes_encrypt(&aes, &body).unwrap();
                assert_eq!(
                    decode_server_frame(&aes, &frame, layout).unwrap(),
                    (msg.clone(), layout)
                );
            }
        }
        // OUTBOX and RPC_RESPONSE frames cannot be read in the other layout.
        for msg in &messages[..2] {
            for layout in [ServerFrames::Spec, ServerFrames::Inline] {
                let body = server_frame_body(layout, msg);
                assert!(parse_server_body(layout.other(), &body).is_err(), "{msg:?}");
                let frame = crypto::aes_encrypt(&aes, &body).unwrap();
                assert_eq!(
                    decode_server_frame(&aes, &frame, layout.other()).unwrap().1,
                    layout
                );
            }
        }
        // Exact spec shape of an OUTBOX.
        let body = server_frame_body(ServerFrames::Spec, &messages[0]);
        let mut r = Reader::new(&body);
        assert_eq!(r.enumeration().unwrap(), 1);
        assert_eq!(r.uint().unwrap() as usize, 8 + 8 + 4 + 20);
        assert!(parse_server_body(ServerFrames::Spec, &[0, 0, 0, 9, 0, 0, 0, 0]).is_err());
        let mut trailing = body.clone();
        trailing.extend([0; 4]);
        assert!(parse_server_body(ServerFrames::Spec, &trailing).is_err());
    }

    #[test]
    fn payload_builders() {
        assert_eq!(
            payload::send_message("bob", "hi", json!({"x": 1, "text": "ignored"})),
            json!({"@type": "SendMessage", "to": "bob", "text": "hi", "x": 1})
        );
        assert_eq!(
            payload::history(Some(5), None),
            json!({"@type": "HistoryRequest", "before": 5})
        );
        assert_eq!(
            payload::room_history("#r", None, Some(2)),
            json!({"@type": "RoomHistoryRequest", "room": "#r", "limit": 2})
        );
        assert_eq!(
            payload::presence(&["a", "b"]),
            json!({"@type": "PresenceRequest", "users": ["a", "b"]})
        );
    }

    // ----- loopback against a scripted server -----

    fn send_server(
        ws: &mut WebSocket<TcpStream>,
        aes: &[u8],
        layout: ServerFrames,
        msg: ServerMessage,
    ) {
        let body = server_frame_body(layout, &msg);
        let frame = crypto::aes_encrypt(aes, &body).unwrap();
        ws.send(Message::Binary(frame)).unwrap();
    }

    fn read_binary(ws: &mut WebSocket<TcpStream>) -> Vec<u8> {
        loop {
            match ws.read().unwrap() {
                Message::Binary(b) => return b,
                Message::Text(t) => panic!("text from the client: {t}"),
                _ => {}
            }
        }
    }

    /// A one-connection XDR server following `xdr.md`, scripted by the test.
    fn loopback(layout: ServerFrames) {
        let (client_key, server_key) = keys();
        let client_pub = client_key.to_public_key();
        let server_priv = server_key.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut ws = tungstenite::accept(stream).unwrap();
            let hello = crypto::oaep_decrypt(&server_priv, &read_binary(&mut ws)).unwrap();
            let hello = decode_hello(&hello).unwrap();
            assert_eq!(hello.client_id, b"alice");
            assert_eq!(hello.last_seen_order, 4);
            assert_eq!(hello.trailing, vec![0, 0, 0, 3]);
            let client_aes = hello.aes_key.clone();
            let server_aes = crypto::random_bytes(32);
            let challenge = Challenge {
                data_to_sign: crypto::random_bytes(32),
                last_seen_sequence: 10,
                server_aes_key: server_aes.clone(),
            };
            let msg2 = crypto::oaep_encrypt(&client_pub, &encode_challenge(&challenge)).unwrap();
            ws.send(Message::Binary(msg2)).unwrap();
            let sig = read_binary(&mut ws);
            assert_eq!(
                crypto::pss_verify_any(&client_pub, &challenge.data_to_sign, &sig),
                Some(190)
            );
            ws.send(Message::Binary(vec![0])).unwrap();
            send_server(
                &mut ws,
                &server_aes,
                layout,
                ServerMessage::Outbox {
                    order: 5,
                    timestamp: 1_700_000_000.5,
                    json:
                        br#"{"@type":"Message","from":"bob","to":"alice","text":"hi","event_id":1}"#
                            .to_vec(),
                },
            );
            // An INBOX in the spec layout, then an RPC in the real-client one.
            let f = decode_client_frame(&client_aes, &read_binary(&mut ws), &client_pub).unwrap();
            assert_eq!(
                (f.layout, f.msg_type, f.number),
                (ClientLayout::Spec, 1, 11)
            );
            let v: Value = serde_json::from_slice(&f.json).unwrap();
            assert_eq!(v["@type"], "SendMessage");
            let f = decode_client_frame(&client_aes, &read_binary(&mut ws), &client_pub).unwrap();
            assert_eq!((f.layout, f.msg_type), (ClientLayout::Real, 2));
            send_server(
                &mut ws,
                &server_aes,
                layout,
                ServerMessage::RpcResponse {
                    request_id: f.number,
                    json: br#"{"@type":"WhoAmIResponse","user":"alice","id":"1"}"#.to_vec(),
                },
            );
            assert_eq!(read_binary(&mut ws), vec![0], "client heartbeat");
            ws.send(Message::Binary(vec![0])).unwrap();
            // The client's 2nd INBOX has sequence 12; answer with ERROR and 4001.
            let f = decode_client_frame(&client_aes, &read_binary(&mut ws), &client_pub).unwrap();
            assert_eq!(f.number, 12);
            send_server(
                &mut ws,
                &server_aes,
                layout,
                ServerMessage::Error {
                    message: b"invalid sequence: expected 13, got 12".to_vec(),
                },
            );
            ws.close(Some(CloseFrame {
                code: CloseCode::from(4001),
                reason: "sequence".into(),
            }))
            .unwrap();
            while ws.read().is_ok() {}
        });
        let opts = ConnectOptions {
            server_frames: layout,
            trailing_version: Some(3),
            ..ConnectOptions::default()
        };
        let (client, seq) = XdrClient::connect_with(
            addr,
            "alice",
            client_key,
            &server_key.to_public_key(),
            4,
            &opts,
        )
        .unwrap();
        assert_eq!(seq, 10);
        assert_eq!(client.next_sequence(), 11);
        let m = client
            .wait_outbox_type("Message", Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            (m.order, m.timestamp, m.text(), m.layout),
            (5, 1_700_000_000.5, "hi", layout)
        );
        assert_eq!(client.last_order(), 5);
        assert_eq!(client.send_message("bob", "hi", Value::Null).unwrap(), 11);
        let who = client
            .rpc_with(
                &payload::whoami(),
                &SendOptions {
                    layout: Some(ClientLayout::Real),
                    ..SendOptions::default()
                },
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(who["user"], "alice");
        client.send_heartbeat().unwrap();
        client
            .wait_for(Duration::from_secs(5), "2 heartbeats", |st| {
                (st.heartbeats.len() >= 2).then_some(())
            })
            .unwrap();
        // An explicit sequence does not move the counter.
        let seq = client
            .send_inbox_with(
                &payload::join_room("#r"),
                &SendOptions {
                    sequence: Some(12),
                    ..SendOptions::default()
                },
            )
            .unwrap();
        assert_eq!((seq, client.next_sequence()), (12, 12));
        assert_eq!(
            client.wait_error(Duration::from_secs(5)).unwrap(),
            "invalid sequence: expected 13, got 12"
        );
        assert_eq!(
            client.wait_closed(Duration::from_secs(5)).unwrap(),
            Some((4001, "sequence".to_string()))
        );
        assert!(matches!(
            client.rpc(&payload::whoami(), Duration::from_secs(1)),
            Err(ClientError::Closed(_) | ClientError::Ws(_) | ClientError::Server(_))
        ));
        assert_eq!(client.heartbeat_count(), 2);
        assert_eq!(client.anomalies(), Vec::<String>::new());
        assert_eq!(client.sent_frames().len(), 3);
        server.join().unwrap();
    }

    #[test]
    fn loopback_handshake_frames_and_close_spec_layout() {
        loopback(ServerFrames::Spec);
    }

    #[test]
    fn loopback_handshake_frames_and_close_inline_layout() {
        loopback(ServerFrames::Inline);
    }

    #[test]
    fn loopback_refusal_after_message_1_fails_connect() {
        let (client_key, server_key) = keys();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut ws = tungstenite::accept(stream).unwrap();
            let _ = read_binary(&mut ws);
            ws.close(Some(CloseFrame {
                code: CloseCode::from(4002),
                reason: "unknown client".into(),
            }))
            .unwrap();
            while ws.read().is_ok() {}
        });
        let err = XdrClient::connect(addr, "nobody", client_key, &server_key.to_public_key(), -1)
            .unwrap_err();
        assert_eq!(err.close_code(), Some(4002), "{err}");
        server.join().unwrap();
    }
}
