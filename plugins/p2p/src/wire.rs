//! What travels over HTTP: requests parsed into actions, message objects, replies.

use crate::address::{Node, Target};
use hub_plugin_sdk::{HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

/// A message as nodes exchange it (`send`, `resend`, the items of `history`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetMessage {
    /// Author address.
    pub from: String,
    /// Recipient address.
    pub to: String,
    /// The text (or ciphertext, see `enctype`).
    pub message: String,
    /// Unix seconds, as sent (`None`: not given).
    pub timestamp: Option<u64>,
    /// Encryption of `message`; empty for plain text.
    pub enctype: String,
    /// The network-wide id (given, or derived from the content).
    pub id: String,
    /// Hub field: the room a room message was posted in.
    pub room: Option<String>,
}

/// Longest text of one message.
pub const MAX_MESSAGE: usize = 64 * 1024;

impl NetMessage {
    /// Reads a message object.
    pub fn from_value(value: &Value) -> Result<NetMessage, String> {
        let object = value.as_object().ok_or("a message is a JSON object")?;
        let text = |field: &str| -> Result<String, String> {
            match object.get(field) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!("{field} must be a string")),
                None => Err(format!("missing {field}")),
            }
        };
        let optional = |field: &str| match object.get(field) {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let from = text("from")?;
        let to = text("to")?;
        let message = text("message")?;
        if message.len() > MAX_MESSAGE {
            return Err(format!("a message is at most {MAX_MESSAGE} bytes"));
        }
        let timestamp = timestamp(object.get("timestamp"));
        let enctype = optional("enctype");
        let given = optional("id");
        let room = object
            .get("room")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut parsed = NetMessage {
            from,
            to,
            message,
            timestamp,
            enctype,
            id: given,
            room,
        };
        if parsed.id.is_empty() {
            parsed.id = parsed.derived_id();
        } else if parsed.id.len() > 200 {
            return Err("an id is at most 200 bytes".into());
        }
        Ok(parsed)
    }

    /// The id of a message sent without one: SHA-256 of from, to, timestamp and text.
    fn derived_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for part in [
            self.from.as_str(),
            self.to.as_str(),
            &self.timestamp.map(|t| t.to_string()).unwrap_or_default(),
            self.message.as_str(),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The object as sent (a missing timestamp becomes `now_secs`).
    pub fn to_value(&self, now_secs: u64) -> Value {
        let mut object = json!({
            "from": self.from,
            "to": self.to,
            "message": self.message,
            "timestamp": self.timestamp.unwrap_or(now_secs),
            "enctype": self.enctype,
            "id": self.id,
        });
        if let Some(room) = &self.room {
            object["room"] = json!(room);
        }
        object
    }

    /// The idempotency key at the destination.
    pub fn dedup_key(&self) -> Vec<u8> {
        format!("p2p/{}", self.id).into_bytes()
    }

    /// What users of other protocols are shown.
    pub fn readable(&self) -> String {
        if self.enctype.is_empty() {
            self.message.clone()
        } else {
            format!("[encrypted with {}]", self.enctype)
        }
    }
}

/// Unix seconds from a number or a decimal string.
fn timestamp(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f.max(0.0) as u64),
        _ => None,
    }
}

/// A GUI action (needs the owner's session).
#[derive(Clone, Debug, PartialEq)]
pub enum Gui {
    /// `contacts`.
    Contacts,
    /// `add_contact`.
    AddContact {
        /// The node.
        address: Node,
        /// Its nick.
        nick: Option<String>,
        /// Ask it to relay?
        can_resend: Option<u8>,
    },
    /// `set_contact`.
    SetContact {
        /// The node.
        address: Node,
        /// New nick.
        nick: Option<String>,
        /// New relay setting.
        can_resend: Option<u8>,
    },
    /// `conversation`.
    Conversation {
        /// The other side.
        with: Target,
        /// How many messages.
        limit: u32,
    },
    /// `post`.
    Post {
        /// Recipient.
        to: Target,
        /// Text.
        message: String,
    },
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// `GET /`: the GUI page.
    Page,
    /// `GET /ping` (sample dialect).
    SamplePing,
    /// `POST /messages/` (sample dialect).
    SampleMessage {
        /// `key` form field.
        key: Option<String>,
        /// The message.
        message: NetMessage,
    },
    /// `handshake`.
    Handshake {
        /// Who asks.
        from: Node,
        /// The key it gives us.
        key: String,
        /// Its nick.
        nick: Option<String>,
    },
    /// `send`.
    Send {
        /// Sender's key.
        key: String,
        /// The message.
        message: NetMessage,
    },
    /// `ping`.
    Ping {
        /// Who pings (with `key`: an authenticated ping).
        from: Option<Node>,
        /// Its key.
        key: Option<String>,
    },
    /// `history`.
    History {
        /// Sender's key.
        key: String,
        /// The messages; a malformed one is an error text (answered 0).
        messages: Vec<Result<NetMessage, String>>,
    },
    /// `resend`.
    Resend {
        /// Sender's key.
        key: String,
        /// The message.
        message: NetMessage,
    },
    /// `login`.
    Login {
        /// Handle.
        user: String,
        /// Password.
        password: String,
    },
    /// A GUI action with the session token.
    Gui {
        /// The owner's session token.
        session: String,
        /// What to do.
        action: Gui,
    },
}

/// A refusal: HTTP status and JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Value,
}

/// `{"status": 0, "error": ...}` with an HTTP status.
pub fn refused(status: u16, error: &str) -> Refusal {
    Refusal {
        status,
        body: json!({"status": 0, "error": error}),
    }
}

/// A JSON response.
pub fn respond(status: u16, body: &Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn path_of(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or("/")
}

/// Parses a request.
pub fn parse(request: &HttpRequest) -> Result<Request, Refusal> {
    let path = path_of(&request.target);
    match (request.method.as_str(), path) {
        ("GET", "/") | ("GET", "/index.html") => Ok(Request::Page),
        ("GET", "/ping") => Ok(Request::SamplePing),
        ("POST", "/messages/") | ("POST", "/messages") => sample_message(&request.body),
        ("POST", "/") => action(&request.body),
        (_, "/" | "/ping" | "/messages/" | "/messages" | "/index.html") => {
            Err(refused(405, "method not allowed"))
        }
        _ => Err(refused(404, "no such path")),
    }
}

fn sample_message(body: &[u8]) -> Result<Request, Refusal> {
    let mut fields: Map<String, Value> = Map::new();
    let mut key = None;
    for (name, value) in form_urlencoded::parse(body) {
        match name.as_ref() {
            "key" => key = Some(value.into_owned()),
            "text" => {
                fields.insert("message".into(), json!(value));
            }
            "from" | "to" | "timestamp" => {
                fields.insert(name.into_owned(), json!(value));
            }
            _ => {}
        }
    }
    let message = NetMessage::from_value(&Value::Object(fields)).map_err(|e| Refusal {
        status: 400,
        body: json!({"received": 0, "error": e}),
    })?;
    Ok(Request::SampleMessage { key, message })
}

fn action(body: &[u8]) -> Result<Request, Refusal> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| refused(400, &format!("not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| refused(400, "not a JSON object"))?;
    let text = |field: &str| -> Result<String, Refusal> {
        match object.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(refused(400, &format!("missing string {field}"))),
        }
    };
    let optional = |field: &str| object.get(field).and_then(Value::as_str).map(str::to_owned);
    let node = |field: &str| -> Result<Node, Refusal> {
        let text = text(field)?;
        Node::parse(&text).ok_or_else(|| refused(400, &format!("{field} is not an address")))
    };
    let target = |field: &str| -> Result<Target, Refusal> {
        let text = text(field)?;
        Target::parse(&text).ok_or_else(|| refused(400, &format!("{field} is not an address")))
    };
    let can_resend = object
        .get("can_resend")
        .and_then(Value::as_u64)
        .map(|v| u8::from(v != 0));
    let action = text("action")?;
    // A missing key or session is a refusal of the key (403), not a malformed request.
    let key = || optional("key").unwrap_or_default();
    let gui = |action: Gui| -> Result<Request, Refusal> {
        Ok(Request::Gui {
            session: optional("session").unwrap_or_default(),
            action,
        })
    };
    match action.as_str() {
        "handshake" => Ok(Request::Handshake {
            from: node("from")?,
            key: text("key")?,
            nick: optional("nick"),
        }),
        "send" | "resend" => {
            let message = NetMessage::from_value(&value).map_err(|e| refused(400, &e))?;
            let key = key();
            Ok(if action == "send" {
                Request::Send { key, message }
            } else {
                Request::Resend { key, message }
            })
        }
        "ping" => Ok(Request::Ping {
            from: optional("from").and_then(|f| Node::parse(&f)),
            key: optional("key"),
        }),
        "history" => {
            let list = object
                .get("messages")
                .and_then(Value::as_array)
                .ok_or_else(|| refused(400, "history needs a list messages"))?;
            Ok(Request::History {
                key: key(),
                messages: list.iter().map(NetMessage::from_value).collect(),
            })
        }
        "login" => Ok(Request::Login {
            user: text("user")?,
            password: text("password")?,
        }),
        "contacts" => gui(Gui::Contacts),
        "add_contact" => gui(Gui::AddContact {
            address: node("address")?,
            nick: optional("nick"),
            can_resend,
        }),
        "set_contact" => gui(Gui::SetContact {
            address: node("address")?,
            nick: optional("nick"),
            can_resend,
        }),
        "conversation" => {
            let limit = object
                .get("limit")
                .and_then(Value::as_u64)
                .unwrap_or(50)
                .clamp(1, 200) as u32;
            gui(Gui::Conversation {
                with: target("with")?,
                limit,
            })
        }
        "post" => {
            let message = text("message")?;
            if message.is_empty() || message.len() > MAX_MESSAGE {
                return Err(refused(400, "a message is 1-65536 bytes"));
            }
            gui(Gui::Post {
                to: target("to")?,
                message,
            })
        }
        other => Err(refused(400, &format!("unknown action {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: &str) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            target: "/".into(),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn actions_are_parsed() {
        let send = parse(&post(
            r#"{"action":"send","from":"10.0.0.1:8000","to":"10.0.0.2:8000","message":"hi","timestamp":"1700000000","enctype":"","key":"k","id":"10.0.0.1:8000/7"}"#,
        ));
        let Ok(Request::Send { key, message }) = send else {
            panic!("a send: {send:?}")
        };
        assert_eq!(key, "k");
        assert_eq!(message.timestamp, Some(1_700_000_000));
        assert_eq!(message.id, "10.0.0.1:8000/7");
        assert_eq!(
            parse(&post(r#"{"action":"ping"}"#)),
            Ok(Request::Ping {
                from: None,
                key: None
            })
        );
        let refusal = parse(&post(r#"{"action":"dance"}"#)).unwrap_err();
        assert_eq!(refusal.status, 400);
        assert_eq!(parse(&post("nope")).unwrap_err().status, 400);
        let history = parse(&post(
            r#"{"action":"history","key":"k","messages":[{"from":"a","to":"b","message":"m"},{"bad":1}]}"#,
        ));
        let Ok(Request::History { messages, .. }) = history else {
            panic!("history")
        };
        assert!(messages[0].is_ok() && messages[1].is_err());
    }

    #[test]
    fn messages_without_an_id_get_one_from_their_content() {
        let value = json!({"from":"a","to":"b","message":"m","timestamp":5});
        let first = NetMessage::from_value(&value).unwrap();
        let again = NetMessage::from_value(&value).unwrap();
        assert_eq!(first.id, again.id, "the same content, the same id");
        assert_eq!(first.id.len(), 64);
        let other =
            NetMessage::from_value(&json!({"from":"a","to":"b","message":"n","timestamp":5}))
                .unwrap();
        assert_ne!(first.id, other.id);
        assert_eq!(first.to_value(9)["timestamp"], 5);
        let encrypted =
            NetMessage::from_value(&json!({"from":"a","to":"b","message":"zz","enctype":"aes"}))
                .unwrap();
        assert_eq!(encrypted.readable(), "[encrypted with aes]");
    }

    #[test]
    fn the_sample_dialect_and_paths() {
        let request = HttpRequest {
            method: "POST".into(),
            target: "/messages/".into(),
            headers: vec![],
            body: b"from=10.0.0.1%3A8000&to=10.0.0.2%3A8000&text=hi+there&timestamp=5&key=k"
                .to_vec(),
        };
        let Ok(Request::SampleMessage { key, message }) = parse(&request) else {
            panic!("a sample message")
        };
        assert_eq!(key.as_deref(), Some("k"));
        assert_eq!(message.message, "hi there");
        assert_eq!(message.from, "10.0.0.1:8000");
        let get = |target: &str| HttpRequest {
            method: "GET".into(),
            target: target.into(),
            headers: vec![],
            body: vec![],
        };
        assert_eq!(parse(&get("/")), Ok(Request::Page));
        assert_eq!(parse(&get("/ping?x=1")), Ok(Request::SamplePing));
        assert_eq!(parse(&get("/nowhere")).unwrap_err().status, 404);
        assert_eq!(parse(&get("/messages/")).unwrap_err().status, 405);
    }
}
