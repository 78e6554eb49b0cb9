//! cchat messages: parsing what clients send, building what the hub sends, error codes.

use crate::group::{parse_hex, to_hex};
use serde_json::{json, Map, Value};

/// Error codes (`errcode`, sent as `0x`-prefixed hex strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrCode {
    /// 0x0: no error (join and leave acknowledgements).
    Ok = 0x0,
    /// 0x4: the client id is already in the room.
    DuplicateClient = 0x4,
    /// 0x5: not in a chat room yet.
    NotJoined = 0x5,
    /// 0x6: kicked from the chat room.
    Kicked = 0x6,
    /// 0x7 (hub; the spec's second 0x6): no join in time after connecting.
    NoJoin = 0x7,
    /// 0x8: wrong message type.
    WrongType = 0x8,
    /// 0x9 (hub): malformed message.
    Malformed = 0x9,
    /// 0xa (hub): unsupported `ver`.
    Version = 0xa,
    /// 0xb (hub): refused by the hub (room full, overloaded, the hub's own fault).
    Refused = 0xb,
    /// 0xc (hub): the server is shutting down.
    Shutdown = 0xc,
    /// 0x10: key negotiation not finished.
    KeyUnfinished = 0x10,
}

impl ErrCode {
    /// The code as sent: hex ASCII with the spec's `0x` prefix.
    pub fn text(self) -> String {
        format!("0x{:x}", self as u8)
    }
}

/// A refusal: the code and a detail for `errdetail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Code.
    pub code: ErrCode,
    /// Human-readable detail.
    pub detail: String,
}

impl Refusal {
    /// A refusal with `code`.
    pub fn new(code: ErrCode, detail: impl Into<String>) -> Refusal {
        Refusal {
            code,
            detail: detail.into(),
        }
    }
}

/// A client message.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// `join`: ids in lower case.
    Join {
        /// 40 hex digits.
        client_id: String,
        /// 40 hex digits.
        chatroom: String,
    },
    /// `keyxchg_2`: the intermediate as sent (checked against the step it answers).
    KeyReply {
        /// `keyintrmdt`, possibly empty.
        intermediate: String,
    },
    /// `message_0`: the whole object (extra fields kept) and its `content`.
    Message {
        /// The object as received.
        object: Map<String, Value>,
        /// `content`.
        content: String,
    },
    /// `leave`.
    Leave,
}

/// Parses one client message.
pub fn parse(bytes: &[u8]) -> Result<Request, Refusal> {
    let malformed = |detail: &str| Refusal::new(ErrCode::Malformed, detail);
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(&format!("not JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(malformed("not a JSON object"));
    };
    match object.get("ver") {
        None => return Err(malformed("missing ver")),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(Value::String(s)) if s == "1" => {}
        Some(other) => {
            return Err(Refusal::new(
                ErrCode::Version,
                format!("ver {other} is not supported (only 1)"),
            ))
        }
    }
    let Some(Value::String(kind)) = object.get("type") else {
        return Err(malformed("missing or non-string type"));
    };
    let text = |field: &str| match object.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(malformed(&format!("{field} must be a string"))),
        None => Err(malformed(&format!("missing {field}"))),
    };
    let sha1 = |field: &str| {
        let value = text(field)?;
        if value.len() == 40 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(value.to_ascii_lowercase())
        } else {
            Err(malformed(&format!(
                "{field} must be a SHA-1 in hex (40 digits)"
            )))
        }
    };
    match kind.as_str() {
        "join" => Ok(Request::Join {
            client_id: sha1("clientid")?,
            chatroom: sha1("chatroom")?,
        }),
        "keyxchg_2" => {
            let intermediate = match object.get("keyintrmdt") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err(malformed("keyintrmdt must be a hex string")),
            };
            Ok(Request::KeyReply { intermediate })
        }
        "message_0" => {
            let content = text("content")?;
            Ok(Request::Message { object, content })
        }
        "leave" => Ok(Request::Leave),
        other => Err(Refusal::new(
            ErrCode::WrongType,
            format!("unknown message type {other:?}"),
        )),
    }
}

/// Reads an intermediate a client returned; `None` if it is not hex.
pub fn intermediate_bytes(hex: &str) -> Option<Vec<u8>> {
    parse_hex(hex)
}

/// `error`.
pub fn error(code: ErrCode, detail: &str) -> Value {
    json!({"ver": 1, "type": "error", "errcode": code.text(), "errdetail": detail})
}

/// `keyxchg_0`.
pub fn prime(prime_hex: &str) -> Value {
    json!({"ver": 1, "type": "keyxchg_0", "number": prime_hex})
}

/// `keyxchg_1`.
pub fn key_step(prime_hex: &str, rounds_left: u32, fresh: bool, intermediate: &[u8]) -> Value {
    json!({
        "ver": 1,
        "type": "keyxchg_1",
        "roundleft": rounds_left,
        "keyintrmdt": to_hex(intermediate),
        "prime": prime_hex,
        "changesecret": fresh,
    })
}

/// `message_1` from a cchat member's stored `message_0` object.
pub fn relayed(mut object: Map<String, Value>) -> Value {
    object.insert("type".into(), json!("message_1"));
    object.insert("ver".into(), json!(1));
    Value::Object(object)
}

/// `message_1` carrying text from a user of another protocol.
pub fn bridged(handle: &str, text: &str) -> Value {
    use base64::Engine;
    let content =
        base64::engine::general_purpose::STANDARD.encode(format!("{handle}: {text}").as_bytes());
    json!({"ver": 1, "type": "message_1", "content": content})
}

/// The readable text of a `content`: base64 of UTF-8, padded or not.
pub fn readable(content: &str) -> Option<String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = LENIENT.decode(content).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "89e495e7941cf9e40e6980d14a16bf023ccd4c91";

    fn join(ver: Value) -> Vec<u8> {
        json!({"ver": ver, "type": "join", "clientid": ID, "chatroom": ID.to_uppercase()})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn joins_are_checked_and_ids_lower_cased() {
        assert_eq!(
            parse(&join(json!(1))),
            Ok(Request::Join {
                client_id: ID.into(),
                chatroom: ID.into()
            })
        );
        assert!(parse(&join(json!("1"))).is_ok());
        assert_eq!(parse(&join(json!(2))).unwrap_err().code, ErrCode::Version);
        let short = br#"{"ver":1,"type":"join","clientid":"abc","chatroom":"abc"}"#;
        assert_eq!(parse(short).unwrap_err().code, ErrCode::Malformed);
    }

    #[test]
    fn bad_input_gets_its_code() {
        let code = |bytes: &[u8]| parse(bytes).unwrap_err().code;
        assert_eq!(code(b"not json"), ErrCode::Malformed);
        assert_eq!(code(b"[1,2]"), ErrCode::Malformed);
        assert_eq!(code(br#"{"type":"leave"}"#), ErrCode::Malformed);
        assert_eq!(code(br#"{"ver":1}"#), ErrCode::Malformed);
        assert_eq!(code(br#"{"ver":1,"type":"message_1"}"#), ErrCode::WrongType);
        assert_eq!(code(br#"{"ver":1,"type":"message_0"}"#), ErrCode::Malformed);
        assert_eq!(
            code(br#"{"ver":1,"type":"keyxchg_2","keyintrmdt":5}"#),
            ErrCode::Malformed
        );
    }

    #[test]
    fn messages_keep_their_extra_fields() {
        let request = parse(br#"{"ver":1,"type":"message_0","content":"aGk=","nick":"x"}"#);
        let Ok(Request::Message { object, content }) = request else {
            panic!("a message");
        };
        assert_eq!(content, "aGk=");
        let out = relayed(object);
        assert_eq!(
            out,
            json!({"ver":1,"type":"message_1","content":"aGk=","nick":"x"})
        );
    }

    #[test]
    fn codes_are_hex_with_prefix_and_content_reads_as_base64_text() {
        assert_eq!(ErrCode::KeyUnfinished.text(), "0x10");
        assert_eq!(ErrCode::Ok.text(), "0x0");
        assert_eq!(readable("aGk="), Some("hi".into()));
        assert_eq!(readable("aGk"), Some("hi".into()), "padding optional");
        assert_eq!(readable("//79"), None, "not UTF-8");
        assert_eq!(readable("not base64!"), None);
        assert_eq!(
            bridged("alice", "hi")["content"],
            json!("YWxpY2U6IGhp"),
            "base64 of \"alice: hi\""
        );
    }
}
