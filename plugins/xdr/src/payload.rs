//! The JSON payloads inside frames: `"@type"`-tagged requests from clients, and hub
//! events rendered as outbox payloads (the catalogue in `docs/protocols/xdr.md`).

use hub_plugin_sdk::{
    Address, CallNotice, ContactEntry, ContactNotice, ContactState, Content, CoreError, Delivery,
    EventBody, RoomNotice, Target, UserRef,
};
use serde_json::{json, Map, Value};

/// Scheme of messages sent by XDR clients, kept whole for XDR recipients.
pub const SCHEME_MESSAGE: &str = "xdr/message";
/// Scheme of notices the plugin stores in a client's own stream (`MessageRefused`).
pub const SCHEME_NOTICE: &str = "xdr/notice";

/// Largest history page a client may ask for.
pub const MAX_PAGE: u32 = 200;
/// Default history page.
const DEFAULT_PAGE: u32 = 50;
/// Most users one presence request may name.
pub const MAX_PRESENCE: usize = 256;

/// A sequenced request.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbox {
    /// `SendMessage`.
    SendMessage {
        /// Recipient.
        to: Address,
        /// The text.
        text: String,
        /// The whole payload (extra fields kept for XDR recipients).
        object: Map<String, Value>,
    },
    /// `JoinRoom`.
    JoinRoom {
        /// Room name without `#`.
        room: String,
    },
    /// `LeaveRoom`.
    LeaveRoom {
        /// Room name without `#`.
        room: String,
    },
    /// `AddContact`.
    AddContact {
        /// The other user's handle.
        user: String,
    },
    /// `AnswerContact`.
    AnswerContact {
        /// Who asked.
        user: String,
        /// Accept or reject.
        accept: bool,
    },
}

/// An RPC request.
#[derive(Clone, Debug, PartialEq)]
pub enum Rpc {
    /// `WhoAmIRequest`.
    WhoAmI,
    /// `HistoryRequest`.
    History {
        /// Exclusive upper bound (order), `None`: newest.
        before: Option<u64>,
        /// Page size.
        limit: u32,
    },
    /// `RoomHistoryRequest`.
    RoomHistory {
        /// Room name without `#`.
        room: String,
        /// Exclusive upper bound (room position), `None`: newest.
        before: Option<u64>,
        /// Page size.
        limit: u32,
    },
    /// `ContactsRequest`.
    Contacts,
    /// `RoomMembersRequest`.
    RoomMembers {
        /// Room name without `#`.
        room: String,
    },
    /// `PresenceRequest`.
    Presence {
        /// Handles.
        users: Vec<String>,
    },
}

/// Why a payload is refused (fatal: ERROR, then close 4005).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadError(pub String);

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(text: impl Into<String>) -> PayloadError {
    PayloadError(text.into())
}

/// A payload's object and its `@type`.
fn object(json: &[u8]) -> Result<(Map<String, Value>, String), PayloadError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| bad(format!("payload is not JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(bad("payload is not a JSON object"));
    };
    let kind = match object.get("@type") {
        Some(Value::String(kind)) => kind.clone(),
        _ => return Err(bad("payload has no string @type")),
    };
    Ok((object, kind))
}

fn text<'a>(
    object: &'a Map<String, Value>,
    kind: &str,
    field: &str,
) -> Result<&'a str, PayloadError> {
    match object.get(field) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(bad(format!("{kind} needs a string {field}"))),
    }
}

fn room_name(name: &str) -> String {
    name.strip_prefix('#').unwrap_or(name).to_owned()
}

fn page(object: &Map<String, Value>, kind: &str) -> Result<(Option<u64>, u32), PayloadError> {
    let before = match object.get("before") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad(format!("{kind}.before must be a non-negative integer")))?,
        ),
    };
    let limit = match object.get("limit") {
        None | Some(Value::Null) => DEFAULT_PAGE,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_PAGE as u64).contains(n))
            .ok_or_else(|| bad(format!("{kind}.limit must be 1-{MAX_PAGE}")))?
            as u32,
    };
    Ok((before, limit))
}

/// Parses an INBOX payload.
pub fn parse_inbox(json: &[u8]) -> Result<Inbox, PayloadError> {
    let (object, kind) = object(json)?;
    let kind = kind.as_str();
    Ok(match kind {
        "SendMessage" => {
            let to = text(&object, kind, "to")?;
            let to = match to.strip_prefix('#') {
                Some(room) => Address::Room(room.to_owned()),
                None => Address::Handle(to.to_owned()),
            };
            let text = text(&object, kind, "text")?.to_owned();
            Inbox::SendMessage { to, text, object }
        }
        "JoinRoom" => Inbox::JoinRoom {
            room: room_name(text(&object, kind, "room")?),
        },
        "LeaveRoom" => Inbox::LeaveRoom {
            room: room_name(text(&object, kind, "room")?),
        },
        "AddContact" => Inbox::AddContact {
            user: text(&object, kind, "user")?.to_owned(),
        },
        "AnswerContact" => Inbox::AnswerContact {
            user: text(&object, kind, "user")?.to_owned(),
            accept: object
                .get("accept")
                .and_then(Value::as_bool)
                .ok_or_else(|| bad("AnswerContact needs a boolean accept"))?,
        },
        other => return Err(bad(format!("unknown @type {other:?}"))),
    })
}

/// Parses an RPC payload.
pub fn parse_rpc(json: &[u8]) -> Result<Rpc, PayloadError> {
    let (object, kind) = object(json)?;
    let kind = kind.as_str();
    Ok(match kind {
        "WhoAmIRequest" => Rpc::WhoAmI,
        "HistoryRequest" => {
            let (before, limit) = page(&object, kind)?;
            Rpc::History { before, limit }
        }
        "RoomHistoryRequest" => {
            let (before, limit) = page(&object, kind)?;
            Rpc::RoomHistory {
                room: room_name(text(&object, kind, "room")?),
                before,
                limit,
            }
        }
        "ContactsRequest" => Rpc::Contacts,
        "RoomMembersRequest" => Rpc::RoomMembers {
            room: room_name(text(&object, kind, "room")?),
        },
        "PresenceRequest" => {
            let users = object
                .get("users")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("PresenceRequest needs a list users"))?;
            if users.len() > MAX_PRESENCE {
                return Err(bad(format!(
                    "PresenceRequest names at most {MAX_PRESENCE} users"
                )));
            }
            let users = users
                .iter()
                .map(|u| u.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("PresenceRequest.users must be handles"))?;
            Rpc::Presence { users }
        }
        other => return Err(bad(format!("unknown @type {other:?}"))),
    })
}

/// The `code` of a core refusal.
pub fn code(error: &CoreError) -> &'static str {
    match error {
        CoreError::NoSuchUser => "NoSuchUser",
        CoreError::NoSuchRoom => "NoSuchRoom",
        CoreError::NotMember => "NotMember",
        CoreError::Forbidden | CoreError::Disabled | CoreError::NotBound => "Forbidden",
        CoreError::Internal(_) => "Internal",
        _ => "Invalid",
    }
}

/// `MessageRefused` for INBOX message `sequence`.
pub fn refusal(sequence: i64, error: &CoreError) -> Value {
    json!({"@type": "MessageRefused", "sequence": sequence, "code": code(error), "detail": error.to_string()})
}

/// An RPC `Error` payload.
pub fn rpc_error(error: &CoreError) -> Value {
    json!({"@type": "Error", "code": code(error), "detail": error.to_string()})
}

/// `Presence`.
pub fn presence(user: &UserRef, online: bool) -> Value {
    json!({"@type": "Presence", "user": user.handle, "online": online})
}

/// How a target appears in `to`: a handle, or `#room`.
fn to_of(target: &Target) -> String {
    match target {
        Target::User(user) => user.handle.clone(),
        Target::Room(room) => format!("#{}", room.name),
    }
}

/// The outbox payload of a stream event.
pub fn event(delivery: &Delivery) -> Value {
    let event = &delivery.event;
    let from = event.from.handle.as_str();
    let to = to_of(&event.to);
    match &event.body {
        EventBody::Message(content) => message(content, from, &to, event.id.0),
        EventBody::Contact(notice) => {
            let kind = match notice {
                ContactNotice::Requested => "ContactRequested",
                ContactNotice::Accepted => "ContactAccepted",
                ContactNotice::Rejected => "ContactRejected",
            };
            json!({"@type": kind, "from": from})
        }
        EventBody::Room(notice) => {
            let kind = match notice {
                RoomNotice::Joined => "RoomJoined",
                RoomNotice::Left => "RoomLeft",
            };
            json!({"@type": kind, "room": to, "user": from})
        }
        EventBody::Call { call, notice } => {
            let what = match notice {
                CallNotice::Ring { .. } => "ring",
                CallNotice::Accepted { .. } => "accepted",
                CallNotice::Rejected => "rejected",
                CallNotice::Ended => "ended",
                CallNotice::Missed => "missed",
                CallNotice::Signal { .. } => "signal",
            };
            json!({"@type": "Call", "from": from, "call": call.0.to_string(), "event": what})
        }
    }
}

/// A message's payload: XDR senders' payloads whole, others by their text.
fn message(content: &Content, from: &str, to: &str, event_id: u64) -> Value {
    let mut object = match content {
        Content::Native { scheme, bytes, .. }
            if scheme == SCHEME_MESSAGE || scheme == SCHEME_NOTICE =>
        {
            match serde_json::from_slice::<Value>(bytes) {
                // A notice is stored as sent to its client.
                Ok(Value::Object(object)) if scheme == SCHEME_NOTICE => {
                    return Value::Object(object)
                }
                Ok(Value::Object(object)) => object,
                _ => return unreadable(from, to, event_id, scheme),
            }
        }
        Content::Text(text)
        | Content::Native {
            fallback: Some(text),
            ..
        } => {
            let mut object = Map::new();
            object.insert("text".into(), json!(text));
            object
        }
        Content::File(offer) => {
            return json!({"@type": "File", "from": from, "to": to, "event_id": event_id, "name": offer.name, "size": offer.size})
        }
        Content::Sealed { scheme, .. } | Content::Native { scheme, .. } => {
            return unreadable(from, to, event_id, scheme)
        }
    };
    object.insert("@type".into(), json!("Message"));
    object.insert("from".into(), json!(from));
    object.insert("to".into(), json!(to));
    object.insert("event_id".into(), json!(event_id));
    Value::Object(object)
}

fn unreadable(from: &str, to: &str, event_id: u64, scheme: &str) -> Value {
    json!({"@type": "UnreadableMessage", "from": from, "to": to, "event_id": event_id, "scheme": scheme})
}

/// One history entry: the payload with its position and time.
pub fn history_entry(delivery: &Delivery, position_field: &str) -> Value {
    let mut payload = event(delivery);
    if let Value::Object(object) = &mut payload {
        object.insert(position_field.into(), json!(delivery.seq.0));
        object.insert("timestamp".into(), json!(timestamp(delivery)));
    }
    payload
}

/// When the hub accepted an event, seconds since the epoch.
pub fn timestamp(delivery: &Delivery) -> f64 {
    delivery.event.at_unix_ms as f64 / 1000.0
}

/// A history response: entries newest first, and where the next page starts.
pub fn history(kind: &str, page: &[Delivery], limit: u32, position_field: &str) -> Value {
    let messages: Vec<Value> = page
        .iter()
        .map(|d| history_entry(d, position_field))
        .collect();
    let oldest = page.last().map(|d| d.seq.0);
    let next_before = match oldest {
        Some(oldest) if page.len() == limit as usize && oldest > 1 => json!(oldest),
        _ => Value::Null,
    };
    json!({"@type": kind, "messages": messages, "next_before": next_before})
}

/// A `ContactsResponse`.
pub fn contacts(entries: &[ContactEntry]) -> Value {
    let contacts: Vec<Value> = entries
        .iter()
        .map(|entry| {
            let state = match entry.state {
                ContactState::Accepted => "accepted",
                ContactState::Outgoing => "outgoing",
                ContactState::Incoming => "incoming",
                ContactState::Rejected => "rejected",
            };
            json!({"user": entry.user.handle, "state": state, "online": entry.online})
        })
        .collect();
    json!({"@type": "ContactsResponse", "contacts": contacts})
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::{EventId, EventRecord, Origin, RoomId, RoomRef, Seq, UserId};

    fn delivery(seq: u64, body: EventBody, to: Target) -> Delivery {
        Delivery {
            seq: Seq(seq),
            event: EventRecord {
                id: EventId(40 + seq),
                at_unix_ms: 1_500,
                origin: Origin {
                    plugin: "json".into(),
                    conn: None,
                },
                from: UserRef {
                    id: UserId(1),
                    handle: "alice".into(),
                },
                to,
                body,
            },
        }
    }

    fn me() -> Target {
        Target::User(UserRef {
            id: UserId(2),
            handle: "bob".into(),
        })
    }

    #[test]
    fn requests_are_parsed_and_bad_ones_refused() {
        let send = parse_inbox(br##"{"@type":"SendMessage","to":"#lobby","text":"hi","x":1}"##);
        let Ok(Inbox::SendMessage { to, text, object }) = send else {
            panic!("a send")
        };
        assert_eq!(to, Address::Room("lobby".into()));
        assert_eq!(text, "hi");
        assert_eq!(object["x"], 1);
        assert!(parse_inbox(br#"{"@type":"SendMessage","to":"a"}"#).is_err());
        assert!(parse_inbox(br#"{"@type":"PlaceBuyFoKOrder"}"#).is_err());
        assert!(parse_inbox(br#"["@type"]"#).is_err());
        assert!(parse_inbox(b"not json").is_err());
        assert_eq!(
            parse_rpc(br#"{"@type":"HistoryRequest","before":30,"limit":10}"#),
            Ok(Rpc::History {
                before: Some(30),
                limit: 10
            })
        );
        assert!(parse_rpc(br#"{"@type":"HistoryRequest","limit":1000}"#).is_err());
        assert_eq!(
            parse_rpc(br##"{"@type":"RoomMembersRequest","room":"#r"}"##),
            Ok(Rpc::RoomMembers { room: "r".into() })
        );
    }

    #[test]
    fn events_render_in_the_catalogue_form() {
        let text = delivery(1, EventBody::Message(Content::Text("hi".into())), me());
        assert_eq!(
            event(&text),
            json!({"@type":"Message","from":"alice","to":"bob","text":"hi","event_id":41})
        );
        let room = Target::Room(RoomRef {
            id: RoomId(1),
            name: "r".into(),
        });
        let native = Content::Native {
            scheme: SCHEME_MESSAGE.into(),
            bytes: br##"{"@type":"SendMessage","to":"#r","text":"yo","mood":"calm"}"##.to_vec(),
            fallback: Some("yo".into()),
        };
        let out = event(&delivery(2, EventBody::Message(native), room.clone()));
        assert_eq!(out["@type"], "Message");
        assert_eq!(out["to"], "#r");
        assert_eq!(out["mood"], "calm", "extra fields kept");
        let sealed = Content::Sealed {
            scheme: "retro/chat".into(),
            bytes: vec![1],
        };
        assert_eq!(
            event(&delivery(3, EventBody::Message(sealed), me()))["@type"],
            "UnreadableMessage"
        );
        let joined = event(&delivery(4, EventBody::Room(RoomNotice::Joined), room));
        assert_eq!(
            joined,
            json!({"@type":"RoomJoined","room":"#r","user":"alice"})
        );
        let notice = Content::Native {
            scheme: SCHEME_NOTICE.into(),
            bytes: refusal(9, &CoreError::NoSuchUser).to_string().into_bytes(),
            fallback: None,
        };
        assert_eq!(
            event(&delivery(5, EventBody::Message(notice), me()))["sequence"],
            9
        );
    }

    #[test]
    fn history_pages_say_where_the_next_one_starts() {
        let page: Vec<Delivery> = (6..=15)
            .rev()
            .map(|n| delivery(n, EventBody::Message(Content::Text(format!("m{n}"))), me()))
            .collect();
        let out = history("HistoryResponse", &page, 10, "order");
        assert_eq!(out["next_before"], 6);
        assert_eq!(out["messages"][0]["order"], 15);
        assert_eq!(out["messages"][0]["timestamp"], 1.5);
        let out = history("HistoryResponse", &page[..4], 10, "order");
        assert_eq!(out["next_before"], Value::Null, "a short page is the last");
    }
}
