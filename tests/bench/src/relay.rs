//! "The limit": a minimal relay that speaks just enough of the JSON protocol
//! (`docs/protocols/json.md`) for `hub_tests::json_client::JsonClient` and the json-pairs
//! workload: WebSocket text frames, `signup`, `signin`, `subscribe` and `message` (with
//! an optional `id`, answered by the same `ack` the hub sends). A message is written to
//! the destination's subscribed connection at once and then acknowledged: no storage, no
//! persistence, no actors, no plugin boundary. What the hub does beyond this is what a
//! ratio against the relay measures.
//!
//! One thread per connection reads (blocking); every connection has one writer behind a
//! mutex, used by its own thread for replies and by senders' threads for forwarded
//! messages. Pings are answered with pongs through that writer.

use serde_json::{json, Map, Value};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// A running relay on 127.0.0.1 (ephemeral port); stops when dropped.
pub struct Relay {
    /// Where JSON clients connect (`ws://addr/`).
    pub addr: SocketAddr,
    /// Time from `start` until the listener was bound and accepting.
    pub start_time: Duration,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

/// The write side of one connection.
type Outbox = Mutex<WebSocket<TcpStream>>;

struct Shared {
    stopping: AtomicBool,
    /// Event numbers for `ack` (the hub's are store sequence numbers).
    events: AtomicU64,
    next_conn: AtomicU64,
    state: RwLock<State>,
    /// Every open connection's socket, to end them on drop.
    sockets: Mutex<HashMap<u64, TcpStream>>,
}

#[derive(Default)]
struct State {
    /// username -> password.
    users: HashMap<String, String>,
    /// session token -> username.
    sessions: HashMap<String, String>,
    /// username -> (connection id, writer) of its subscribed connection (the latest).
    receivers: HashMap<String, (u64, Arc<Outbox>)>,
}

/// The read side: tungstenite's reader answers pings and close frames by writing on its
/// stream; after the handshake those writes are dropped here, and the connection's
/// thread sends the pong or close through the shared writer instead (one writer per
/// socket, so frames never interleave).
struct ReadSide {
    stream: TcpStream,
    writes: bool,
}

impl Read for ReadSide {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for ReadSide {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.writes {
            self.stream.write(buf)
        } else {
            Ok(buf.len())
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.writes {
            self.stream.flush()
        } else {
            Ok(())
        }
    }
}

impl Relay {
    /// Binds 127.0.0.1:0 and starts accepting.
    pub fn start() -> Relay {
        let began = Instant::now();
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the relay");
        let addr = listener.local_addr().expect("relay address");
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            events: AtomicU64::new(0),
            next_conn: AtomicU64::new(0),
            state: RwLock::new(State::default()),
            sockets: Mutex::new(HashMap::new()),
        });
        let accepting = shared.clone();
        let acceptor = std::thread::spawn(move || accept_loop(&listener, &accepting));
        Relay {
            addr,
            start_time: began.elapsed(),
            shared,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let connections = self
            .acceptor
            .take()
            .and_then(|a| a.join().ok())
            .unwrap_or_default();
        for socket in lock(&self.shared.sockets).values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        for connection in connections {
            let _ = connection.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    let mut connections = Vec::new();
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let Ok(socket) = stream.try_clone() else {
            continue;
        };
        lock(&shared.sockets).insert(id, socket);
        let shared = shared.clone();
        connections.push(std::thread::spawn(move || {
            connection(id, stream, &shared);
            lock(&shared.sockets).remove(&id);
        }));
        // Forget connections that have ended, so a long run does not pile up handles.
        connections.retain(|c| !c.is_finished());
    }
    connections
}

/// A new session token in UUID form (not cryptographic: this is a benchmark baseline).
fn token(shared: &Shared) -> String {
    let seed = RandomState::new();
    let n = shared.next_conn.load(Ordering::Relaxed);
    let a = seed.hash_one((n, Instant::now()));
    let b = seed.hash_one((a, n));
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Sends one text frame; a failed write (peer gone) is left for its reader to notice.
fn send(outbox: &Outbox, value: &Value) {
    let _ = lock(outbox).send(Message::Text(value.to_string()));
}

fn error(ty: &str, code: u8, text: &str, id: Option<&Value>) -> Value {
    let mut reply = json!({"type": ty, "resp_code": code, "error": text});
    if let Some(id) = id {
        reply["id"] = id.clone();
    }
    reply
}

/// Serves one connection until it ends.
fn connection(id: u64, stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let Ok(write_side) = stream.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(WebSocket::from_raw_socket(
        write_side,
        Role::Server,
        None,
    )));
    let Ok(mut reader) = tungstenite::accept(ReadSide {
        stream,
        writes: true,
    }) else {
        return;
    };
    reader.get_mut().writes = false;
    let mut subscribed = false;
    loop {
        let text = match reader.read() {
            Ok(Message::Text(text)) => text,
            Ok(Message::Ping(payload)) => {
                let _ = lock(&writer).send(Message::Pong(payload));
                continue;
            }
            Ok(Message::Close(_)) => {
                let _ = lock(&writer).close(None);
                let _ = lock(&writer).flush();
                break;
            }
            Ok(Message::Binary(_)) => {
                send(&writer, &error("error", 7, "binary frame", None));
                continue;
            }
            Ok(Message::Pong(_) | Message::Frame(_)) => continue,
            Err(_) => break,
        };
        let Ok(Value::Object(request)) = serde_json::from_str::<Value>(&text) else {
            send(&writer, &error("error", 7, "not a JSON object", None));
            continue;
        };
        if !handle(id, request, &writer, &mut subscribed, shared) {
            let _ = lock(&writer).close(None);
            break;
        }
    }
    let mut state = shared.state.write().unwrap_or_else(|p| p.into_inner());
    state.receivers.retain(|_, (conn, _)| *conn != id);
    drop(state);
    let _ = reader.get_ref().stream.shutdown(Shutdown::Both);
}

fn field<'a>(request: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    request.get(name).and_then(Value::as_str)
}

/// Handles one request; `false` ends the connection.
fn handle(
    conn: u64,
    mut request: Map<String, Value>,
    writer: &Arc<Outbox>,
    subscribed: &mut bool,
    shared: &Shared,
) -> bool {
    let ty = field(&request, "type").unwrap_or_default().to_owned();
    match ty.as_str() {
        "signup" | "signin" => {
            let (Some(user), Some(password)) =
                (field(&request, "username"), field(&request, "password"))
            else {
                let mut reply = error("signup", 7, "username and password needed", None);
                reply["session"] = json!("");
                reply["request"] = json!(ty);
                send(writer, &reply);
                return true;
            };
            let mut state = shared.state.write().unwrap_or_else(|p| p.into_inner());
            let code = match (ty.as_str(), state.users.get(user)) {
                ("signup", Some(_)) => 2,
                ("signup", None) => {
                    state.users.insert(user.to_owned(), password.to_owned());
                    0
                }
                (_, None) => 5,
                (_, Some(known)) if known != password => 6,
                _ => 0,
            };
            let session = if code == 0 {
                let session = token(shared);
                state.sessions.insert(session.clone(), user.to_owned());
                session
            } else {
                String::new()
            };
            drop(state);
            send(
                writer,
                &json!({"type": "signup", "resp_code": code, "session": session, "request": ty}),
            );
        }
        "subscribe" => {
            if *subscribed {
                send(writer, &error("subscribe", 7, "already subscribed", None));
                return true;
            }
            // Holding our writer while registering keeps the reply ahead of the first
            // forwarded message, as the hub promises.
            let mut out = lock(writer);
            let mut state = shared.state.write().unwrap_or_else(|p| p.into_inner());
            let user = field(&request, "session").and_then(|s| state.sessions.get(s).cloned());
            let Some(user) = user else {
                drop(state);
                let reply = error("subscribe", 1, "bad session", None);
                let _ = out.send(Message::Text(reply.to_string()));
                return false;
            };
            state.receivers.insert(user, (conn, writer.clone()));
            drop(state);
            *subscribed = true;
            let reply = json!({"type": "subscribe", "resp_code": 0});
            let _ = out.send(Message::Text(reply.to_string()));
        }
        "message" => {
            let id = request.remove("id");
            let session = request.remove("session");
            let (Some(Value::String(session)), Some(source), Some(dest)) =
                (session, field(&request, "source"), field(&request, "dest"))
            else {
                send(writer, &error("message", 7, "missing field", id.as_ref()));
                return true;
            };
            let state = shared.state.read().unwrap_or_else(|p| p.into_inner());
            if state.sessions.get(&session).map(String::as_str) != Some(source) {
                drop(state);
                send(writer, &error("message", 1, "bad session", id.as_ref()));
                return true;
            }
            if !state.users.contains_key(dest) {
                drop(state);
                send(writer, &error("message", 5, "no such user", id.as_ref()));
                return true;
            }
            let receiver = state.receivers.get(dest).map(|(_, outbox)| outbox.clone());
            drop(state);
            // No storage: an offline destination simply misses it.
            if let Some(receiver) = receiver {
                send(&receiver, &Value::Object(request));
            }
            if let Some(id) = id {
                let event = shared.events.fetch_add(1, Ordering::Relaxed) + 1;
                send(
                    writer,
                    &json!({"type": "ack", "request": "message", "id": id, "resp_code": 0, "event": event}),
                );
            }
        }
        "identification" => send(
            writer,
            &json!({"type": "identification", "version": "1.0.0", "server": "relay", "invitations": false, "resp_code": 0}),
        ),
        "" => send(writer, &error("error", 7, "no type", None)),
        other => send(writer, &error(other, 8, "not in the relay", None)),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_tests::json_client::JsonClient;

    const T: Duration = Duration::from_secs(5);

    fn account(relay: &Relay, name: &str) -> (JsonClient, String) {
        let mut client = JsonClient::connect(relay.addr).expect("connect");
        let reply = client.signup(name, "pw", "sha256").expect("signup");
        assert_eq!(reply["resp_code"], 0);
        (client, reply["session"].as_str().expect("token").to_owned())
    }

    #[test]
    fn forwards_and_acks() {
        let relay = Relay::start();
        let (mut bob, bob_token) = account(&relay, "bob");
        assert_eq!(
            bob.subscribe(&bob_token).expect("subscribe")["resp_code"],
            0
        );
        let (mut alice, alice_token) = account(&relay, "alice");
        let ack = alice
            .request_acked(
                "message",
                &alice_token,
                "alice",
                "bob",
                json!({"message": "hi"}),
                "m1",
            )
            .expect("ack");
        assert_eq!(ack["type"], "ack");
        let got = bob.recv_type("message", T).expect("message");
        assert_eq!(
            got,
            json!({"type": "message", "source": "alice", "dest": "bob", "message": "hi"})
        );
        // Wrong source, unknown dest, duplicate signup, signin.
        let reply = alice
            .request_acked("message", &alice_token, "bob", "bob", json!({}), "m2")
            .expect("reply");
        assert_eq!(reply["resp_code"], 1);
        let reply = alice
            .request_acked("message", &alice_token, "alice", "carol", json!({}), "m3")
            .expect("reply");
        assert_eq!(reply["resp_code"], 5);
        let mut other = JsonClient::connect(relay.addr).expect("connect");
        assert_eq!(
            other.signup("bob", "x", "sha256").expect("signup")["resp_code"],
            2
        );
        assert_eq!(other.signin("bob", "x").expect("signin")["resp_code"], 6);
        let reply = other.signin("bob", "pw").expect("signin");
        assert_eq!(reply["resp_code"], 0);
        assert_ne!(reply["session"], json!(bob_token));
        alice.close().expect("clean close");
    }

    #[test]
    fn bad_subscribe_closes() {
        let relay = Relay::start();
        let mut client = JsonClient::connect(relay.addr).expect("connect");
        assert_eq!(client.subscribe("nope").expect("reply")["resp_code"], 1);
        client.wait_closed(T).expect("closed");
    }
}
