//! Handshake messages and frames: what is inside the RSA and AES envelopes.
//!
//! ```text
//!  client frame, spec layout:  XDR[opaque sig, enum type, opaque XDR[hyper id, opaque json]]
//!                              sig over the inner opaque's bytes
//!  client frame, 0.3 layout:   XDR[opaque sig, opaque XDR[enum type, hyper id, opaque json]]
//!                              sig over the inner opaque's bytes
//!  server frame, spec:         XDR[enum type, opaque XDR[fields]]
//!  server frame, inline:       XDR[enum type, fields]
//! ```
//!
//! The client layouts differ in the word after the signature: a type (1 or 2) in the
//! spec's, a length (at least 16) in the other.

use crate::xdr::{Reader, Writer, XdrError};

/// Longest client id accepted in a hello.
pub const MAX_CLIENT_ID: usize = 256;

/// The client's first handshake message, decrypted.
#[derive(Clone, Debug, PartialEq)]
pub struct Hello {
    /// The registered client id.
    pub client_id: String,
    /// The last outbox order the client processed (negative: none).
    pub last_seen_order: i64,
    /// The key of client→hub frames.
    pub aes_key: Vec<u8>,
}

/// Reads a decrypted hello; trailing bytes (a version in later clients) are ignored.
pub fn parse_hello(bytes: &[u8]) -> Result<Hello, String> {
    let mut r = Reader::new(bytes);
    let id = r.opaque().map_err(|e| format!("client id: {e}"))?;
    let last_seen_order = r.hyper().map_err(|e| format!("last seen order: {e}"))?;
    let aes_key = r.opaque().map_err(|e| format!("AES key: {e}"))?;
    if id.is_empty() || id.len() > MAX_CLIENT_ID {
        return Err(format!("a client id is 1-{MAX_CLIENT_ID} bytes"));
    }
    let client_id = std::str::from_utf8(id)
        .map_err(|_| "the client id is not UTF-8".to_owned())?
        .to_owned();
    if aes_key.len() != crate::crypto::AES_KEY_LEN {
        return Err(format!("the AES key is {} bytes, not 32", aes_key.len()));
    }
    Ok(Hello {
        client_id,
        last_seen_order,
        aes_key: aes_key.to_vec(),
    })
}

/// The hub's handshake reply, before RSA encryption.
pub fn challenge(data_to_sign: &[u8], last_seen_sequence: i64, server_aes_key: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.opaque(data_to_sign)
        .hyper(last_seen_sequence)
        .opaque(server_aes_key);
    w.into_bytes()
}

/// What a client frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// 1: a sequenced request message.
    Inbox,
    /// 2: an RPC request.
    Rpc,
}

/// Which layout a client frame used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientLayout {
    /// The spec's drawing.
    Spec,
    /// What cryptology client 0.3 sends.
    Client03,
}

/// A decrypted client frame, signature not yet checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientFrame {
    /// INBOX or RPC.
    pub kind: ClientKind,
    /// Sequence (INBOX) or request id (RPC).
    pub id: i64,
    /// The JSON payload bytes.
    pub json: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
    /// The bytes the signature covers.
    pub signed: Vec<u8>,
    /// Its layout.
    pub layout: ClientLayout,
}

/// Why a frame is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The XDR does not parse.
    Xdr(XdrError),
    /// An unknown message type.
    Kind(i32),
}

impl From<XdrError> for FrameError {
    fn from(e: XdrError) -> Self {
        FrameError::Xdr(e)
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Xdr(e) => write!(f, "{e}"),
            FrameError::Kind(k) => write!(f, "unknown message type {k}"),
        }
    }
}

fn kind(value: i32) -> Result<ClientKind, FrameError> {
    match value {
        1 => Ok(ClientKind::Inbox),
        2 => Ok(ClientKind::Rpc),
        other => Err(FrameError::Kind(other)),
    }
}

/// Parses a decrypted client frame body in either layout.
pub fn parse_client(body: &[u8]) -> Result<ClientFrame, FrameError> {
    let mut r = Reader::new(body);
    let signature = r.opaque()?.to_vec();
    let spec = matches!(r.peek_uint(), Some(1 | 2));
    let (layout, kind, signed, id, json) = if spec {
        let kind = kind(r.int()?)?;
        let data = r.opaque()?;
        let mut inner = Reader::new(data);
        let id = inner.hyper()?;
        let json = inner.opaque()?.to_vec();
        inner.finish()?;
        (ClientLayout::Spec, kind, data.to_vec(), id, json)
    } else {
        let data = r.opaque()?;
        let mut inner = Reader::new(data);
        let kind = kind(inner.int()?)?;
        let id = inner.hyper()?;
        let json = inner.opaque()?.to_vec();
        inner.finish()?;
        (ClientLayout::Client03, kind, data.to_vec(), id, json)
    };
    r.finish()?;
    Ok(ClientFrame {
        kind,
        id,
        json,
        signature,
        signed,
        layout,
    })
}

/// How server frames are laid out (`plugins.xdr.server_frames`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerLayout {
    /// `XDR[enum type, opaque data]` (the spec).
    Spec,
    /// `XDR[enum type, fields]` (what real 0.3 clients read).
    Inline,
}

/// A hub→client frame before encryption.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerFrame<'a> {
    /// 1: an event of the stream.
    Outbox {
        /// Its order.
        order: i64,
        /// When the hub accepted it, seconds since the epoch.
        timestamp: f64,
        /// JSON payload.
        json: &'a [u8],
    },
    /// 2: the answer to an RPC request.
    RpcResponse {
        /// The request's id.
        request_id: i64,
        /// JSON payload.
        json: &'a [u8],
    },
    /// 3: a fatal error; the connection closes after it.
    Error {
        /// What went wrong.
        message: &'a str,
    },
}

/// Encodes a server frame body.
pub fn server_body(frame: &ServerFrame<'_>, layout: ServerLayout) -> Vec<u8> {
    let mut fields = Writer::new();
    let kind = match frame {
        ServerFrame::Outbox {
            order,
            timestamp,
            json,
        } => {
            fields.hyper(*order).double(*timestamp).opaque(json);
            1
        }
        ServerFrame::RpcResponse { request_id, json } => {
            fields.hyper(*request_id).opaque(json);
            2
        }
        ServerFrame::Error { message } => {
            fields.opaque(message.as_bytes());
            3
        }
    };
    let fields = fields.into_bytes();
    let mut w = Writer::new();
    w.int(kind);
    let mut bytes = match layout {
        ServerLayout::Spec => {
            w.opaque(&fields);
            w.into_bytes()
        }
        ServerLayout::Inline => w.into_bytes(),
    };
    if layout == ServerLayout::Inline {
        bytes.extend_from_slice(&fields);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_frame(kind: i32, id: i64, json: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut data = Writer::new();
        data.hyper(id).opaque(json);
        let data = data.into_bytes();
        let mut w = Writer::new();
        w.opaque(&[5; 256]).int(kind).opaque(&data);
        (w.into_bytes(), data)
    }

    fn client03_frame(kind: i32, id: i64, json: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut data = Writer::new();
        data.int(kind).hyper(id).opaque(json);
        let data = data.into_bytes();
        let mut w = Writer::new();
        w.opaque(&[5; 256]).opaque(&data);
        (w.into_bytes(), data)
    }

    #[test]
    fn both_client_layouts_are_read_with_what_their_signature_covers() {
        let (body, data) = spec_frame(1, 7, br#"{"@type":"X"}"#);
        let frame = parse_client(&body).unwrap();
        assert_eq!(
            (frame.layout, frame.kind, frame.id),
            (ClientLayout::Spec, ClientKind::Inbox, 7)
        );
        assert_eq!(frame.signed, data);
        assert_eq!(frame.json, br#"{"@type":"X"}"#);
        let (body, data) = client03_frame(2, -3, b"{}");
        let frame = parse_client(&body).unwrap();
        assert_eq!(
            (frame.layout, frame.kind, frame.id),
            (ClientLayout::Client03, ClientKind::Rpc, -3)
        );
        assert_eq!(frame.signed, data);
    }

    #[test]
    fn broken_frames_are_refused() {
        let (mut body, _) = spec_frame(1, 1, b"{}");
        body.push(0);
        assert!(parse_client(&body).is_err(), "trailing byte");
        let (body, _) = client03_frame(9, 1, b"{}");
        assert_eq!(parse_client(&body), Err(FrameError::Kind(9)));
        assert!(parse_client(&[0, 0, 0, 4]).is_err());
        assert!(parse_client(&[]).is_err());
    }

    #[test]
    fn hellos_ignore_trailing_versions_and_check_their_fields() {
        let mut w = Writer::new();
        w.opaque(b"alice").hyper(-1).opaque(&[1; 32]).uint(2);
        let hello = parse_hello(&w.into_bytes()).unwrap();
        assert_eq!(hello.client_id, "alice");
        assert_eq!(hello.last_seen_order, -1);
        let mut w = Writer::new();
        w.opaque(b"alice").hyper(0).opaque(&[1; 16]);
        assert!(parse_hello(&w.into_bytes()).is_err(), "short AES key");
        let mut w = Writer::new();
        w.opaque(b"").hyper(0).opaque(&[1; 32]);
        assert!(parse_hello(&w.into_bytes()).is_err(), "empty id");
    }

    #[test]
    fn server_frames_in_both_layouts() {
        let frame = ServerFrame::Outbox {
            order: 3,
            timestamp: 2.5,
            json: b"{}",
        };
        let spec = server_body(&frame, ServerLayout::Spec);
        let mut r = Reader::new(&spec);
        assert_eq!(r.int(), Ok(1));
        let data = r.opaque().unwrap();
        r.finish().unwrap();
        let mut inner = Reader::new(data);
        assert_eq!(inner.hyper(), Ok(3));
        assert_eq!(inner.double(), Ok(2.5));
        assert_eq!(inner.opaque().unwrap(), b"{}");
        let inline = server_body(&frame, ServerLayout::Inline);
        assert_eq!(&inline[4..], data);
        let error = server_body(&ServerFrame::Error { message: "bad" }, ServerLayout::Inline);
        let mut r = Reader::new(&error);
        assert_eq!(r.int(), Ok(3));
        assert_eq!(r.opaque().unwrap(), b"bad");
    }
}
