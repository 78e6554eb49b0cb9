//! The JSON protocol's vocabulary: response codes, request parsing, reply objects.

use hub_plugin_sdk::CoreError;
use serde_json::{json, Map, Value};

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

/// A request object's members in the order sent; a repeated name replaces the earlier
/// value, as in a JSON map. A request has a handful of members: a list searched from
/// the front costs less than the sorted map a `Value` builds, and drops cheaper.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fields(Vec<(String, Value)>);

impl Fields {
    /// The value of member `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The members as a JSON map (sorted, as a `Value` prints them).
    pub fn to_map(&self) -> Map<String, Value> {
        self.0.iter().cloned().collect()
    }

    fn insert(&mut self, name: String, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

/// A frame's JSON: an object's members, or something else (refused).
enum Parsed {
    Object(Fields),
    NotAnObject,
}

impl<'de> serde::Deserialize<'de> for Parsed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ParsedVisitor)
    }
}

struct ParsedVisitor;

impl<'de> serde::de::Visitor<'de> for ParsedVisitor {
    type Value = Parsed;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let mut fields = Fields::default();
        while let Some((name, value)) = map.next_entry::<String, Value>()? {
            fields.insert(name, value);
        }
        Ok(Parsed::Object(fields))
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
    /// Its `type`.
    pub kind: String,
    /// The whole object.
    pub body: Fields,
}

impl Request {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Request, Refusal> {
        let parsed: Parsed = serde_json::from_str(text).map_err(|e| Refusal {
            reply_type: "error".into(),
            code: RespCode::Malformed,
            detail: format!("malformed JSON: {e}"),
            id: None,
        })?;
        let Parsed::Object(body) = parsed else {
            return Err(Refusal {
                reply_type: "error".into(),
                code: RespCode::Malformed,
                detail: "a request must be a JSON object".into(),
                id: None,
            });
        };
        let Some(Value::String(kind)) = body.get("type") else {
            return Err(Refusal {
                reply_type: "error".into(),
                code: RespCode::Malformed,
                detail: "missing string field \"type\"".into(),
                id: body.get("id").cloned(),
            });
        };
        Ok(Request {
            kind: kind.clone(),
            body,
        })
    }

    /// The client's correlation `id`, if it sent one (hub extension).
    pub fn id(&self) -> Option<Value> {
        self.body.get("id").cloned()
    }

    /// A required string field.
    pub fn text(&self, field: &str) -> Result<&str, Refusal> {
        match self.body.get(field) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(self.refuse(
                RespCode::Malformed,
                format!("missing string field \"{field}\""),
            )),
        }
    }

    /// An optional string field.
    pub fn opt_text(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }

    /// A refusal of this request.
    pub fn refuse(&self, code: RespCode, detail: impl Into<String>) -> Refusal {
        Refusal {
            reply_type: self.kind.clone(),
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

    #[test]
    fn a_request_is_an_object_with_a_string_type() {
        let request =
            Request::parse(r#"{"type":"message","id":{"n":[1,"x"]},"dest":"bob","dest":"eve"}"#)
                .unwrap();
        assert_eq!(request.kind, "message");
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
            let refusal = Request::parse(not_an_object).unwrap_err();
            assert_eq!(refusal.code, RespCode::Malformed);
            assert_eq!(
                refusal.detail, "a request must be a JSON object",
                "{not_an_object}"
            );
        }
        for malformed in ["{\"type\":", "{\"type\":\"message\"} x", ""] {
            let refusal = Request::parse(malformed).unwrap_err();
            assert!(refusal.detail.starts_with("malformed JSON"), "{malformed}");
        }
        let untyped = Request::parse(r#"{"type":5,"id":"a"}"#).unwrap_err();
        assert_eq!(untyped.id, Some(json!("a")));
    }
}
