//! Hub events rendered as JSON-protocol objects.

use hub_plugin_sdk::{
    CallNotice, ContactNotice, Content, EventBody, EventRecord, RoomNotice, Target, UserRef,
};
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
