//! The JSON protocol's vocabulary: response codes, request parsing, reply objects.

use hub_plugin_sdk::CoreError;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::ops::Range;

/// `resp_code` values. 0–6 are the spec's; 7 and up are this hub's, documented in
/// `docs/protocols/json.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RespCode {
    /// 0: success.
    Success = 0,
    /// 1: unknown or expired session token, or a token that does not belong to `source`.
    BadToken = 1,
    /// 2: the username is taken (or cannot be used as a handle).
    UserInUse = 2,
    /// 3: the requested hash algorithm is not offered.
    HashNotAvailable = 3,
    /// 4: the requested cipher is not offered (never sent: the hub does not negotiate ciphers).
    #[allow(dead_code)]
    CipherNotAvailable = 4,
    /// 5: no such user.
    UserNotInUse = 5,
    /// 6: wrong password (or the account is disabled).
    InvalidPassword = 6,
    /// 7: not JSON, not an object, or a field missing or of the wrong type.
    Malformed = 7,
    /// 8: unknown `type`.
    UnknownType = 8,
    /// 9: no such room or call, or not a member / party of it.
    NotFound = 9,
    /// 10: the frame exceeded the size limit (the connection is closed).
    TooLarge = 10,
    /// 11: the other user is offline (calls).
    Offline = 11,
    /// 12: the other user (or you) is already in a call.
    Busy = 12,
    /// 13: a fault of the hub's own; retry later.
    Internal = 13,
    /// 14: too many requests in flight on this connection; slow down.
    Overloaded = 14,
}

impl RespCode {
    /// The code for a core refusal.
    pub fn from_core(error: &CoreError) -> RespCode {
        match error {
            CoreError::HandleTaken | CoreError::BadHandle => RespCode::UserInUse,
            CoreError::NoSuchUser => RespCode::UserNotInUse,
            CoreError::BadPassword | CoreError::Disabled => RespCode::InvalidPassword,
            CoreError::BadToken | CoreError::NotBound | CoreError::Forbidden => RespCode::BadToken,
            CoreError::NoSuchRoom
            | CoreError::NoSuchCall
            | CoreError::NotMember
            | CoreError::NoSuchFile => RespCode::NotFound,
            CoreError::Offline => RespCode::Offline,
            CoreError::Busy => RespCode::Busy,
            CoreError::Invalid(_) => RespCode::Malformed,
            CoreError::Internal(_) | CoreError::RoomFull => RespCode::Internal,
            // Not produced by the operations this plugin uses; mapped for completeness.
            CoreError::BadRegkey
            | CoreError::Replay
            | CoreError::AlreadyConnected
            | CoreError::AlreadyInRoom => RespCode::BadToken,
        }
    }
}

/// A request that failed to parse: the reply type and code to answer with.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    /// `type` of the reply.
    pub reply_type: String,
    /// Code.
    pub code: RespCode,
    /// Human-readable detail (the `error` field).
    pub detail: String,
    /// The request's `id`, echoed.
    pub id: Option<Value>,
}

/// A piece of a request's text: a range of the frame, or (for a member name written
/// with escapes, which serde_json unescapes into a buffer of its own) a copy.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    At(Range<usize>),
    Copied(Box<str>),
}

impl Piece {
    /// `piece` of `base`: a range if it lies within `base` (serde_json hands out
    /// borrowed names and raw values as sub-slices of its input), a copy otherwise.
    fn of(base: &str, piece: &str) -> Piece {
        let start = (piece.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        match start.checked_add(piece.len()) {
            Some(end)
                if base
                    .get(start..end)
                    .is_some_and(|s| s.as_ptr() == piece.as_ptr()) =>
            {
                Piece::At(start..end)
            }
            _ => Piece::Copied(piece.into()),
        }
    }

    fn resolve<'a>(&'a self, text: &'a str) -> &'a str {
        match self {
            Piece::At(range) => &text[range.clone()],
            Piece::Copied(copy) => copy,
        }
    }
}

/// A request object's members in the order sent; a repeated name replaces the earlier
/// value, as in a JSON map. The frame's text is kept whole and each member is a name and
/// the raw JSON of its value, both as places in that text: parsing allocates nothing per
/// member, and a value is decoded only when asked for (most requests read three or four
/// strings, which need no decoding unless they contain escapes).
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    text: String,
    members: Vec<(Piece, Piece)>,
}

impl Fields {
    /// The raw JSON text of member `name`'s value.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(k, _)| k.resolve(&self.text) == name)
            .map(|(_, v)| v.resolve(&self.text))
    }

    /// The value of member `name`, decoded.
    pub fn get(&self, name: &str) -> Option<Value> {
        // Every raw value was validated as JSON by the parse that found it.
        self.raw(name)
            .and_then(|raw| serde_json::from_str(raw).ok())
    }

    /// Member `name` if its value is a string: borrowed from the frame unless the JSON
    /// string holds escapes.
    pub fn str(&self, name: &str) -> Option<Cow<'_, str>> {
        string_of(self.raw(name)?)
    }

    /// The members as a JSON map (sorted, as a `Value` prints them).
    pub fn to_map(&self) -> Map<String, Value> {
        self.members
            .iter()
            .filter_map(|(k, v)| {
                let value = serde_json::from_str(v.resolve(&self.text)).ok()?;
                Some((k.resolve(&self.text).to_owned(), value))
            })
            .collect()
    }
}

/// The text of a raw JSON value if it is a string.
fn string_of(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// A frame's JSON: an object's members (as places in `base`), or something else
/// (refused).
enum Parsed {
    Object(Vec<(Piece, Piece)>),
    NotAnObject,
}

/// Parses a frame borrowing from `base`, the very text handed to serde_json.
struct ParsedSeed<'de> {
    base: &'de str,
}

impl<'de> serde::de::DeserializeSeed<'de> for ParsedSeed<'de> {
    type Value = Parsed;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Parsed, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// A member name: borrowed from the frame, or unescaped into a copy.
struct NameSeed<'de> {
    base: &'de str,
}

impl<'de> serde::de::DeserializeSeed<'de> for NameSeed<'de> {
    type Value = Piece;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Piece, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NameSeed<'de> {
    type Value = Piece;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Piece, E> {
        Ok(Piece::of(self.base, name))
    }

    fn visit_str<E>(self, name: &str) -> Result<Piece, E> {
        Ok(Piece::Copied(name.into()))
    }
}

impl<'de> serde::de::Visitor<'de> for ParsedSeed<'de> {
    type Value = Parsed;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let mut members: Vec<(Piece, Piece)> = Vec::with_capacity(8);
        while let Some(name) = map.next_key_seed(NameSeed { base: self.base })? {
            let raw: &'de RawValue = map.next_value()?;
            let value = Piece::of(self.base, raw.get());
            let name_text = name.resolve(self.base);
            match members
                .iter_mut()
                .find(|(k, _)| k.resolve(self.base) == name_text)
            {
                Some(slot) => slot.1 = value,
                None => members.push((name, value)),
            }
        }
        Ok(Parsed::Object(members))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Parsed::NotAnObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }

    fn visit_str<E>(self, _: &str) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }

    fn visit_unit<E>(self) -> Result<Parsed, E> {
        Ok(Parsed::NotAnObject)
    }
}

/// A parsed request object.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Its `type`, a place in the text.
    kind: Piece,
    /// The whole object.
    pub body: Fields,
}

impl Request {
    /// Parses one text frame, keeping it.
    pub fn parse(text: String) -> Result<Request, Refusal> {
        let malformed = |detail: String, id| Refusal {
            reply_type: "error".into(),
            code: RespCode::Malformed,
            detail,
            id,
        };
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let parsed =
            serde::de::DeserializeSeed::deserialize(ParsedSeed { base: &text }, &mut deserializer)
                .and_then(|parsed| deserializer.end().map(|()| parsed))
                .map_err(|e| malformed(format!("malformed JSON: {e}"), None))?;
        let Parsed::Object(members) = parsed else {
            return Err(malformed("a request must be a JSON object".into(), None));
        };
        let body = Fields { text, members };
        let kind = match body.str("type") {
            Some(Cow::Borrowed(kind)) => Piece::of(&body.text, kind),
            Some(Cow::Owned(kind)) => Piece::Copied(kind.into()),
            None => {
                return Err(malformed(
                    "missing string field \"type\"".into(),
                    body.get("id"),
                ))
            }
        };
        Ok(Request { kind, body })
    }

    /// Its `type`.
    pub fn kind(&self) -> &str {
        self.kind.resolve(&self.body.text)
    }

    /// The client's correlation `id`, if it sent one (hub extension).
    pub fn id(&self) -> Option<Value> {
        self.body.get("id")
    }

    /// A required string field.
    pub fn text(&self, field: &str) -> Result<Cow<'_, str>, Refusal> {
        self.body.str(field).ok_or_else(|| {
            self.refuse(
                RespCode::Malformed,
                format!("missing string field \"{field}\""),
            )
        })
    }

    /// An optional string field.
    pub fn opt_text(&self, field: &str) -> Option<Cow<'_, str>> {
        self.body.str(field)
    }

    /// A refusal of this request.
    pub fn refuse(&self, code: RespCode, detail: impl Into<String>) -> Refusal {
        Refusal {
            reply_type: self.kind().to_owned(),
            code,
            detail: detail.into(),
            id: self.id(),
        }
    }
}

/// The reply object for a refusal: `{type, resp_code, error[, id][, session: ""]}`.
pub fn refusal_object(refusal: &Refusal) -> Value {
    let mut reply = json!({
        "type": refusal.reply_type,
        "resp_code": refusal.code as u8,
        "error": refusal.detail,
    });
    if let Some(id) = &refusal.id {
        reply["id"] = id.clone();
    }
    // signup/signin error replies carry an empty session in the spec's examples.
    if refusal.reply_type == "signup" {
        reply["session"] = json!("");
    }
    reply
}

/// A success reply `{type, resp_code: 0, ...extra}` (with the request's `id` if any).
pub fn success(kind: &str, id: Option<Value>, extra: Value) -> Value {
    let mut reply = json!({ "type": kind, "resp_code": RespCode::Success as u8 });
    if let (Value::Object(reply), Value::Object(extra)) = (&mut reply, extra) {
        reply.extend(extra);
    }
    if let Some(id) = id {
        reply["id"] = id;
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request, Refusal> {
        Request::parse(text.to_owned())
    }

    #[test]
    fn a_request_is_an_object_with_a_string_type() {
        let request =
            parse(r#"{"type":"message","id":{"n":[1,"x"]},"dest":"bob","dest":"eve"}"#).unwrap();
        assert_eq!(request.kind(), "message");
        // A repeated member replaces the earlier one, as in a JSON map.
        assert_eq!(request.text("dest").unwrap(), "eve");
        assert_eq!(request.id(), Some(json!({"n": [1, "x"]})));
        assert_eq!(
            Value::Object(request.body.to_map()),
            json!({"type": "message", "id": {"n": [1, "x"]}, "dest": "eve"})
        );
        for not_an_object in [
            "[1,{\"type\":\"message\"}]",
            "\"message\"",
            "7",
            "-1.5",
            "true",
            "null",
        ] {
            let refusal = parse(not_an_object).unwrap_err();
            assert_eq!(refusal.code, RespCode::Malformed);
            assert_eq!(
                refusal.detail, "a request must be a JSON object",
                "{not_an_object}"
            );
        }
        for malformed in [
            "{\"type\":",
            "{\"type\":\"message\"} x",
            "",
            "{\"type\":\"message\",\"dest\":[1,}",
            "{\"type\":\"message\",\"dest\":\"\\q\"}",
        ] {
            let refusal = parse(malformed).unwrap_err();
            assert!(refusal.detail.starts_with("malformed JSON"), "{malformed}");
        }
        let untyped = parse(r#"{"type":5,"id":"a"}"#).unwrap_err();
        assert_eq!(untyped.id, Some(json!("a")));
        assert_eq!(untyped.detail, "missing string field \"type\"");
    }

    #[test]
    fn escapes_in_names_and_strings_mean_what_they_mean_in_json() {
        // "type" and "dest" written with escapes; a string with escapes is decoded, one
        // without is the frame's own bytes; whitespace anywhere between tokens.
        let request = parse(
            r#" { "ty\u0070e" : "mess\u0061ge", "dest":"bob", "de\u0073t" : "e\"ve\\",
                 "message" : "caf\u00e9 \ud83d\ude00", "plain": "a b", "n": 5 } "#,
        )
        .unwrap();
        assert_eq!(request.kind(), "message");
        assert_eq!(request.text("dest").unwrap(), "e\"ve\\");
        assert_eq!(request.text("message").unwrap(), "café 😀");
        assert!(matches!(
            request.text("plain").unwrap(),
            Cow::Borrowed("a b")
        ));
        assert_eq!(request.body.raw("n"), Some("5"));
        // Not a string: refused as a missing string field, absent from opt_text.
        let refusal = request.text("n").unwrap_err();
        assert_eq!(refusal.code, RespCode::Malformed);
        assert_eq!(refusal.reply_type, "message");
        assert_eq!(request.opt_text("n"), None);
        assert_eq!(request.opt_text("absent"), None);
        // A lone surrogate passes the parse (serde_json checks only the escape's form
        // when it skips a value) and is refused once the field is read.
        let lone = parse(r#"{"type":"message","message":"\ud800"}"#).unwrap();
        assert_eq!(lone.text("message").unwrap_err().code, RespCode::Malformed);
        assert_eq!(request.body.get("n"), Some(json!(5)));
        assert_eq!(
            Value::Object(request.body.to_map()),
            json!({"type": "message", "dest": "e\"ve\\", "message": "café 😀",
                   "plain": "a b", "n": 5})
        );
    }

    #[test]
    fn a_piece_outside_the_text_is_copied() {
        let base = "{\"a\":1}";
        assert_eq!(Piece::of(base, &base[1..4]), Piece::At(1..4));
        let elsewhere = String::from("\"a\"");
        let piece = Piece::of(base, &elsewhere);
        assert_eq!(piece, Piece::Copied("\"a\"".into()));
        assert_eq!(piece.resolve(base), "\"a\"");
    }
}
