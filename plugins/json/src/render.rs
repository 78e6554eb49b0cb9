//! Hub events rendered as JSON-protocol objects.

use hub_plugin_sdk::{
    CallNotice, ContactNotice, Content, EventBody, EventRecord, RoomNotice, Target, UserRef,
};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// Sealed-content schemes this plugin produces (`json/<request type>`).
pub const SCHEME_MESSAGE: &str = "json/message";
/// Prefix of the key-exchange schemes (`json/key_exchange.initiate`, `...responder`).
pub const SCHEME_KEY_EXCHANGE: &str = "json/key_exchange.";

/// How a room appears in `dest`: `#name`.
pub fn room_address(name: &str) -> String {
    format!("#{name}")
}

fn dest_of(event: &EventRecord) -> String {
    match &event.to {
        Target::User(user) => user.handle.clone(),
        Target::Room(room) => room_address(&room.name),
    }
}

/// A value as the text of one frame.
pub fn to_text(value: &Value) -> String {
    // `Value`'s `Display` writes through a `fmt::Formatter`, token by token; the
    // serializer writes into one buffer. A `Value` (string keys only) always serializes.
    serde_json::to_string(value).unwrap_or_default()
}

/// A text message as delivered, serialized without building a [`Value`]. The fields are
/// in the order a `Value` (a sorted map) prints them: both paths write the same bytes.
#[derive(Serialize)]
struct TextMessage<'a> {
    dest: &'a str,
    message: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// The frame delivered for `event` ([`event_object`] as text): text messages, most of
/// the traffic, are written directly.
pub fn event_text(event: &EventRecord) -> Result<String, String> {
    match &event.body {
        EventBody::Message(
            Content::Text(text)
            | Content::Native {
                fallback: Some(text),
                ..
            },
        ) => {
            let dest = dest_of(event);
            let message = TextMessage {
                dest: &dest,
                message: text,
                source: &event.from.handle,
                kind: "message",
            };
            serde_json::to_string(&message).map_err(|e| e.to_string())
        }
        _ => event_object(event).map(|object| to_text(&object)),
    }
}

/// The acknowledgement of a stored request: `{type: "ack", request, id, resp_code: 0
/// [, event]}`, fields in sorted order as a `Value` prints them.
#[derive(Serialize)]
struct Ack<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<u64>,
    id: &'a Value,
    request: &'a str,
    resp_code: u8,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// The `ack` frame for request `kind` with correlation `id` (and the stored event's id).
pub fn ack_text(kind: &str, id: &Value, event: Option<u64>) -> String {
    let ack = Ack {
        event,
        id,
        request: kind,
        resp_code: 0,
        kind: "ack",
    };
    serde_json::to_string(&ack).unwrap_or_default()
}

/// The object delivered for `event`, or `None` with a reason for events this protocol
/// cannot show (logged by the caller).
pub fn event_object(event: &EventRecord) -> Result<Value, String> {
    let source = event.from.handle.clone();
    let dest = dest_of(event);
    let object = match &event.body {
        EventBody::Message(content) => message_object(content, &source, &dest)?,
        EventBody::Contact(notice) => {
            let kind = match notice {
                ContactNotice::Requested => "invite.request",
                ContactNotice::Accepted => "invite.accept",
                ContactNotice::Rejected => "invite.reject",
            };
            json!({ "type": kind, "source": source, "dest": dest })
        }
        EventBody::Room(notice) => {
            let kind = match notice {
                RoomNotice::Joined => "room.join",
                RoomNotice::Left => "room.leave",
            };
            json!({ "type": kind, "source": source, "dest": dest })
        }
        EventBody::Call { call, notice } => {
            let (kind, data) = match notice {
                CallNotice::Ring { data } => ("call.ring", Some(data)),
                CallNotice::Accepted { data } => ("call.accepted", Some(data)),
                CallNotice::Rejected => ("call.rejected", None),
                CallNotice::Ended => ("call.ended", None),
                CallNotice::Missed => ("call.missed", None),
                CallNotice::Signal { data } => ("call.signal", Some(data)),
            };
            let mut object = json!({
                "type": kind,
                "call": call.0.to_string(),
                "source": source,
                "dest": dest,
            });
            if let Some(data) = data.filter(|d| !d.is_empty()) {
                // Call data is the JSON value the client sent, kept as its bytes.
                object["data"] = serde_json::from_slice(data).unwrap_or(Value::Null);
            }
            object
        }
    };
    Ok(object)
}

fn message_object(content: &Content, source: &str, dest: &str) -> Result<Value, String> {
    match content {
        // Another protocol's own message form shows as its readable text, if it has one.
        Content::Text(text)
        | Content::Native {
            fallback: Some(text),
            ..
        } => Ok(json!({
            "type": "message",
            "source": source,
            "dest": dest,
            "message": text,
        })),
        Content::Sealed { scheme, bytes }
            if scheme == SCHEME_MESSAGE || scheme.starts_with(SCHEME_KEY_EXCHANGE) =>
        {
            let mut object: Map<String, Value> = serde_json::from_slice(bytes)
                .map_err(|e| format!("stored {scheme} content is not a JSON object: {e}"))?;
            let kind = scheme.trim_start_matches("json/");
            // The hub's record, not the stored copy, says who sent it and to whom.
            object.insert("type".into(), json!(kind));
            object.insert("source".into(), json!(source));
            object.insert("dest".into(), json!(dest));
            Ok(Value::Object(object))
        }
        Content::Sealed { scheme, .. } => Err(format!(
            "sealed content of scheme {scheme} cannot be shown to JSON clients"
        )),
        Content::Native { scheme, .. } => Err(format!(
            "{scheme} content without readable text cannot be shown to JSON clients"
        )),
        Content::File(offer) => Ok(json!({
            "type": "message",
            "source": source,
            "dest": dest,
            "message": format!("[file] {} ({} bytes)", offer.name, offer.size),
            "file": { "name": offer.name, "size": offer.size },
        })),
    }
}

/// The presence object for a contact.
pub fn presence_object(user: &UserRef, online: bool) -> Value {
    json!({
        "type": "status",
        "source": user.handle,
        "status": if online { "online" } else { "offline" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::{EventId, Origin, RoomId, RoomRef, UserId};

    fn record(to: Target, content: Content) -> EventRecord {
        EventRecord {
            id: EventId(7),
            at_unix_ms: 0,
            origin: Origin {
                plugin: "json".into(),
                conn: None,
            },
            from: UserRef {
                id: UserId(1),
                handle: "bob \"the\" builder".into(),
            },
            to,
            body: EventBody::Message(content),
        }
    }

    /// The direct renderings write exactly what rendering through a `Value` writes.
    #[test]
    fn direct_text_matches_the_value_rendering() {
        let alice = Target::User(UserRef {
            id: UserId(2),
            handle: "alice".into(),
        });
        let room = Target::Room(RoomRef {
            id: RoomId(3),
            name: "lobby".into(),
        });
        let contents = [
            Content::Text("hello \u{e9}\n\"quoted\" \\ </script>".into()),
            Content::Native {
                scheme: "retro/chat".into(),
                bytes: vec![1, 2, 3],
                fallback: Some("from retro".into()),
            },
            Content::Sealed {
                scheme: SCHEME_MESSAGE.into(),
                bytes: br#"{"message":"c2VhbGVk","nonce":"bm9uY2U="}"#.to_vec(),
            },
        ];
        for to in [alice, room] {
            for content in &contents {
                let event = record(to.clone(), content.clone());
                let direct = event_text(&event).unwrap();
                let through_value = to_text(&event_object(&event).unwrap());
                assert_eq!(direct, through_value);
                let parsed: Value = serde_json::from_str(&direct).unwrap();
                assert_eq!(parsed["source"], "bob \"the\" builder");
            }
        }
        let unshowable = record(
            Target::User(UserRef {
                id: UserId(2),
                handle: "alice".into(),
            }),
            Content::Sealed {
                scheme: "retro/sealed".into(),
                bytes: vec![0],
            },
        );
        assert!(event_text(&unshowable).is_err());
    }

    #[test]
    fn ack_matches_the_value_rendering() {
        for id in [json!(5), json!("m-1"), json!({"n": [1, 2]})] {
            for event in [Some(99), None] {
                let mut value =
                    json!({ "type": "ack", "request": "message", "id": id, "resp_code": 0 });
                if let Some(event) = event {
                    value["event"] = json!(event);
                }
                assert_eq!(ack_text("message", &id, event), to_text(&value));
            }
        }
    }
}
