//! One HTTP request to the node as a sans-IO session: parse it, run its flow of core
//! commands, answer once.
//!
//! A flow is written as a chain of continuations: each command waits with the code to run
//! on its answer (`ask`), so an action reads top to bottom. Requests from other nodes are
//! authenticated by their key first (`authenticate`); GUI actions by the owner's session.

use crate::address::{Node, Target};
use crate::contact::{self, Contact, State};
use crate::wire::{self, Gui, NetMessage, Refusal, Request};
use crate::{Config, SCHEME_MESSAGE};
use hub_plugin_sdk::{
    fire_and_forget, Address, Answer, Awaiting, Content, CoreError, Delivery, EventBody,
    HttpResponse, Input, LogLevel, Now, Op, Output, OutputQueue, Seq, Session, Transmit, UserRef,
};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What to do with a command's answer.
type Then = Box<dyn FnOnce(&mut RequestSession, Result<Answer, CoreError>) + Send>;

/// What to do once every message of a batch has its status.
type Statuses = Box<dyn FnOnce(&mut RequestSession, Vec<u8>) + Send>;

/// Messages being stored for their recipients (see `deliver_all`).
struct Batch {
    /// Each message with its recipient and, once resolved, its author; `None`: not taken.
    items: Vec<Option<(NetMessage, Address, Option<hub_plugin_sdk::UserId>)>>,
    statuses: Vec<u8>,
    /// Answers still due in the current phase.
    waiting: usize,
    then: Option<Statuses>,
}

/// The phases of a batch.
#[derive(Clone, Copy)]
enum Phase {
    Authors,
    Stores,
}

/// The GUI page.
const PAGE: &str = include_str!("gui.html");

/// One request.
pub struct RequestSession {
    config: Arc<Config>,
    /// This node's address.
    our: Option<Node>,
    /// The requesting peer's IP.
    peer_ip: String,
    out: OutputQueue,
    waiting: Awaiting<Then>,
    answered: bool,
    /// A sample-dialect request: refusals say `received: 0`.
    sample: bool,
    batch: Option<Batch>,
    now_secs: u64,
}

impl RequestSession {
    /// A session for a request to a node at `our` from `peer_ip`.
    pub fn new(config: Arc<Config>, our: Option<Node>, peer_ip: String) -> Self {
        RequestSession {
            config,
            our,
            peer_ip,
            out: OutputQueue::new(),
            waiting: Awaiting::new(),
            answered: false,
            sample: false,
            batch: None,
            now_secs: 0,
        }
    }

    fn log(&mut self, level: LogLevel, message: impl Into<String>) {
        self.out.push_back(Output::Log {
            level,
            message: message.into(),
        });
    }

    fn respond_raw(&mut self, response: HttpResponse) {
        if std::mem::replace(&mut self.answered, true) {
            return;
        }
        self.waiting.clear();
        self.out
            .push_back(Output::Transmit(Transmit::Response(response)));
    }

    fn respond(&mut self, status: u16, body: Value) {
        self.respond_raw(wire::respond(status, &body));
    }

    fn refuse(&mut self, mut refusal: Refusal) {
        self.log(
            LogLevel::Debug,
            format!("refused ({}): {}", refusal.status, refusal.body),
        );
        if self.sample {
            // The sample dialect answers in its own shape.
            let error = refusal.body["error"].clone();
            refusal.body = json!({"received": 0, "error": error});
        }
        self.respond(refusal.status, refusal.body);
    }

    fn ok(&mut self) {
        self.respond(200, json!({"status": 1}));
    }

    /// Sends `op`; `then` runs with its answer.
    fn ask(
        &mut self,
        op: Op,
        then: impl FnOnce(&mut RequestSession, Result<Answer, CoreError>) + Send + 'static,
    ) {
        let output = self.waiting.command(op, Box::new(then));
        self.out.push_back(output);
    }

    fn tell(&mut self, op: Op) {
        self.out.push_back(fire_and_forget(op));
    }

    fn signal(&mut self, what: &str, address: &str) {
        self.tell(Op::Signal {
            data: format!("{what} {address}").into_bytes(),
        });
    }

    fn alias(native: &str) -> Op {
        Op::Alias {
            namespace: "p2p".into(),
            native: native.into(),
            handles: vec![native.into(), format!("p2p-{native}")],
        }
    }

    /// Records a remote address as a hub user whose stream the service sends out.
    fn register_peer(&mut self, native: &str) {
        self.tell(Op::Store {
            key: contact::peer_key(native),
            value: Some(Vec::new()),
        });
        self.signal("peer", native);
    }

    fn on_request(&mut self, request: Request) {
        let Some(our) = self.our.clone() else {
            self.log(
                LogLevel::Error,
                "this node has no address (set plugins.p2p.address)",
            );
            return self.refuse(wire::refused(503, "this node has no address"));
        };
        match request {
            Request::Page => self.respond_raw(HttpResponse {
                status: 200,
                headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
                body: PAGE.as_bytes().to_vec(),
            }),
            Request::SamplePing => {
                let reply = json!({"timestamp": self.now_secs, "addr": our.host()});
                self.respond(200, reply);
            }
            Request::Ping { from, key: None } => {
                let _ = from;
                self.pong(&our);
            }
            Request::Ping { key: Some(key), .. } => {
                self.authenticate(&key, move |s, _node, _contact| s.pong(&our))
            }
            Request::Handshake { from, key, nick } => self.handshake(&our, from, key, nick),
            Request::Send { key, message } => self.authenticate(&key, move |s, _, _| {
                s.deliver_all(vec![Ok(message)], move |s, statuses| {
                    let status = statuses.first().copied().unwrap_or(0);
                    s.respond(200, json!({"status": status}));
                })
            }),
            Request::History { key, mut messages } => {
                let batch = self.config.history_batch;
                let extra = messages.len().saturating_sub(batch);
                messages.truncate(batch);
                self.authenticate(&key, move |s, _, _| {
                    s.deliver_all(messages, move |s, mut statuses| {
                        statuses.extend(std::iter::repeat_n(0, extra));
                        s.respond(200, json!({"status": statuses}));
                    })
                })
            }
            Request::SampleMessage { key: None, .. } => self.respond(
                403,
                json!({"received": 0, "error": "a key is needed (form field key)"}),
            ),
            Request::SampleMessage {
                key: Some(key),
                message,
            } => {
                self.sample = true;
                self.authenticate(&key, move |s, _, _| {
                    s.deliver_all(vec![Ok(message)], move |s, statuses| {
                        if statuses.first() == Some(&1) {
                            let now = s.now_secs;
                            s.respond(200, json!({"received": now}));
                        } else {
                            s.respond(200, json!({"received": 0, "error": "not taken"}));
                        }
                    })
                })
            }
            Request::Resend { key, message } => {
                self.authenticate(&key, move |s, _, _| s.relay(&our, message))
            }
            Request::Login { user, password } => self.login(user, password),
            Request::Gui { session, action } => self.gui(our, session, action),
        }
    }

    fn pong(&mut self, our: &Node) {
        let reply = json!({"action": "pong", "timestamp": self.now_secs, "addr": our.to_string()});
        self.respond(200, reply);
    }

    /// Finds the contact presenting `key`; refuses with 403 if there is none. A contact
    /// that presented its key counts as online and as a successful exchange (the service
    /// is told).
    fn authenticate(
        &mut self,
        key: &str,
        then: impl FnOnce(&mut RequestSession, Node, Contact) + Send + 'static,
    ) {
        if key.is_empty() || key.len() > 128 {
            return self.refuse(wire::refused(403, "bad key"));
        }
        let key = key.to_owned();
        self.ask(
            Op::Load {
                key: contact::key_index(&key),
            },
            move |s, result| {
                let node = match result {
                    Ok(Answer::Value(Some(bytes))) => {
                        std::str::from_utf8(&bytes).ok().and_then(Node::parse)
                    }
                    _ => None,
                };
                let Some(node) = node else {
                    return s.refuse(wire::refused(403, "bad key"));
                };
                let op = Op::Load {
                    key: contact::contact_key(&node),
                };
                s.ask(op, move |s, result| {
                    let contact = match result {
                        Ok(Answer::Value(Some(bytes))) => Contact::from_bytes(&bytes),
                        _ => None,
                    };
                    let Some(contact) = contact.filter(|c| c.our_key == key) else {
                        return s.refuse(wire::refused(403, "bad key"));
                    };
                    // The service keeps what the node learns (last_online, last_connect).
                    s.signal("seen", node.as_str());
                    then(s, node, contact)
                });
            },
        );
    }

    /// Stores each message for its recipient on this node; `then` gets a status per
    /// message (1 stored or already had, 0 not taken). The whole batch is pipelined:
    /// every author is resolved, then every message stored, so that one group commit
    /// covers the batch; the recipients' streams keep the batch's order (commands reach
    /// the core in the order sent).
    fn deliver_all(
        &mut self,
        messages: Vec<Result<NetMessage, String>>,
        then: impl FnOnce(&mut RequestSession, Vec<u8>) + Send + 'static,
    ) {
        let mut batch = Batch {
            items: Vec::with_capacity(messages.len()),
            statuses: vec![0; messages.len()],
            waiting: 0,
            then: Some(Box::new(then)),
        };
        for message in messages {
            let item = message.and_then(|message| {
                let to = self.local_recipient(&message.to)?;
                Target::parse(&message.from).ok_or("the author is not an address")?;
                Ok((message, to))
            });
            match item {
                Ok(item) => batch.items.push(Some((item.0, item.1, None))),
                Err(why) => {
                    self.log(LogLevel::Debug, format!("message not taken: {why}"));
                    batch.items.push(None);
                }
            }
        }
        let authors: Vec<(usize, String)> = batch
            .items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| item.as_ref().map(|(m, _, _)| (i, m.from.clone())))
            .collect();
        batch.waiting = authors.len();
        self.batch = Some(batch);
        if authors.is_empty() {
            return self.batch_done();
        }
        for (index, author) in authors {
            self.ask(Self::alias(&author), move |s, result| {
                if let (Some(batch), Ok(Answer::User(user))) = (s.batch.as_mut(), result) {
                    if let Some(Some((_, _, author))) = batch.items.get_mut(index) {
                        *author = Some(user.id);
                    }
                }
                s.batch_step(Phase::Authors);
            });
        }
    }

    /// One answer of the current phase came; the next phase starts once all did.
    fn batch_step(&mut self, phase: Phase) {
        let Some(batch) = self.batch.as_mut() else {
            return;
        };
        batch.waiting = batch.waiting.saturating_sub(1);
        if batch.waiting > 0 {
            return;
        }
        match phase {
            Phase::Authors => self.store_batch(),
            Phase::Stores => self.batch_done(),
        }
    }

    fn store_batch(&mut self) {
        let Some(batch) = self.batch.as_mut() else {
            return;
        };
        let now = self.now_secs;
        let mut stores = Vec::new();
        for (index, item) in batch.items.iter().enumerate() {
            if let Some((message, to, Some(author))) = item {
                stores.push((index, message.clone(), to.clone(), *author));
            }
        }
        batch.waiting = stores.len();
        if stores.is_empty() {
            return self.batch_done();
        }
        for (index, message, to, author) in stores {
            self.register_peer(&message.from);
            let op = Op::SendOnce {
                key: message.dedup_key(),
                from: Some(author),
                to,
                content: Content::Native {
                    scheme: SCHEME_MESSAGE.into(),
                    bytes: message.to_value(now).to_string().into_bytes(),
                    fallback: Some(message.readable()),
                },
            };
            self.ask(op, move |s, result| {
                match &result {
                    Ok(_) => {
                        if let Some(batch) = s.batch.as_mut() {
                            batch.statuses[index] = 1;
                        }
                    }
                    Err(error) => {
                        let id = message.id.clone();
                        s.log(LogLevel::Debug, format!("message {id} not stored: {error}"));
                    }
                }
                s.batch_step(Phase::Stores);
            });
        }
    }

    fn batch_done(&mut self) {
        if let Some(mut batch) = self.batch.take() {
            if let Some(then) = batch.then.take() {
                then(self, batch.statuses);
            }
        }
    }

    /// The hub address of a recipient on this node.
    fn local_recipient(&self, to: &str) -> Result<Address, String> {
        let target = Target::parse(to).ok_or("the recipient is not an address")?;
        if Some(target.node()) != self.our.as_ref() {
            return Err(format!("{to} is not on this node"));
        }
        match target {
            Target::Node(_) if self.config.owner.is_empty() => Err("this node has no owner".into()),
            Target::Node(_) => Ok(Address::Handle(self.config.owner.clone())),
            Target::User { handle, .. } => Ok(Address::Handle(handle)),
            Target::Room { name, .. } => Ok(Address::Room(name)),
        }
    }

    /// `resend`: keep the message for its destination, a contact of ours.
    fn relay(&mut self, our: &Node, message: NetMessage) {
        let Some(destination) = Target::parse(&message.to) else {
            return self.refuse(wire::refused(400, "to is not an address"));
        };
        if destination.node() == our {
            // For this node itself: a relay's work is done.
            return self.deliver_all(vec![Ok(message)], |s, statuses| {
                let status = statuses.first().copied().unwrap_or(0);
                s.respond(200, json!({"status": status}));
            });
        }
        if !self.config.relay {
            return self.respond(
                200,
                json!({"status": 0, "error": "this node does not relay"}),
            );
        }
        let op = Op::Load {
            key: contact::contact_key(destination.node()),
        };
        self.ask(op, move |s, result| {
            let reachable = match result {
                Ok(Answer::Value(Some(bytes))) => {
                    Contact::from_bytes(&bytes).is_some_and(|c| !c.key.is_empty())
                }
                _ => false,
            };
            if !reachable {
                return s.respond(
                    200,
                    json!({"status": 0, "error": "the destination is not a contact of this node"}),
                );
            }
            let (from, to) = (message.from.clone(), message.to.clone());
            s.ask(Self::alias(&from), move |s, result| {
                let Ok(Answer::User(author)) = result else {
                    return s.respond(200, json!({"status": 0, "error": "bad author"}));
                };
                s.ask(Self::alias(&to), move |s, result| {
                    let Ok(Answer::User(destination)) = result else {
                        return s.respond(200, json!({"status": 0, "error": "bad destination"}));
                    };
                    s.register_peer(&to);
                    let now = s.now_secs;
                    let op = Op::SendOnce {
                        key: message.dedup_key(),
                        from: Some(author.id),
                        to: Address::User(destination.id),
                        content: Content::Native {
                            scheme: SCHEME_MESSAGE.into(),
                            bytes: message.to_value(now).to_string().into_bytes(),
                            fallback: Some(message.readable()),
                        },
                    };
                    s.ask(op, |s, result| match result {
                        Ok(_) => s.ok(),
                        Err(error) => {
                            s.respond(200, json!({"status": 0, "error": error.to_string()}))
                        }
                    });
                });
            });
        });
    }

    fn handshake(&mut self, our: &Node, from: Node, key: String, nick: Option<String>) {
        if &from == our {
            return self.refuse(wire::refused(400, "that is this node's own address"));
        }
        if self.config.check_handshake_source
            && from.ip().map(|ip| ip.to_string()) != Some(self.peer_ip.clone())
        {
            // A handshake says who asks; it must come from that address.
            return self.refuse(wire::refused(
                403,
                "the handshake does not come from its address",
            ));
        }
        if key.is_empty() || key.len() > 128 {
            return self.refuse(wire::refused(400, "a key is 1-128 characters"));
        }
        let op = Op::Load {
            key: contact::contact_key(&from),
        };
        self.ask(op, move |s, result| {
            let existing = match result {
                Ok(Answer::Value(Some(bytes))) => Contact::from_bytes(&bytes),
                _ => None,
            };
            let accept = s.config.accept_handshakes;
            match existing {
                Some(mut contact) => {
                    contact.key = key;
                    if contact.nick.is_empty() {
                        contact.nick = nick.unwrap_or_default();
                    }
                    s.save_contact(from, contact, Self::ok)
                }
                None if !accept => s.respond(
                    200,
                    json!({"status": 0, "error": "this node takes handshakes only from contacts its owner added"}),
                ),
                None => s.when_room_for_a_contact(move |s| {
                    let mut contact = Contact::new(s.config.default_can_resend);
                    contact.key = key;
                    contact.nick = nick.unwrap_or_default();
                    s.save_contact(from, contact, Self::ok)
                }),
            }
        });
    }

    /// Stores a contact (and its key index), makes its address a hub user and tells the
    /// service; `then` runs once the record is durable.
    fn save_contact(
        &mut self,
        node: Node,
        contact: Contact,
        then: impl FnOnce(&mut RequestSession) + Send + 'static,
    ) {
        self.tell(Op::Store {
            key: contact::key_index(&contact.our_key),
            value: Some(node.as_str().as_bytes().to_vec()),
        });
        self.tell(Self::alias(node.as_str()));
        self.tell(Op::Store {
            key: contact::peer_key(node.as_str()),
            value: Some(Vec::new()),
        });
        let op = Op::Store {
            key: contact::contact_key(&node),
            value: Some(contact.to_bytes()),
        };
        self.ask(op, move |s, result| {
            if let Err(error) = result {
                return s.refuse(wire::refused(500, &error.to_string()));
            }
            s.signal("contact", node.as_str());
            then(s)
        });
    }

    fn login(&mut self, user: String, password: String) {
        if self.config.owner.is_empty() || user != self.config.owner {
            return self.respond(
                403,
                json!({"status": 0, "error": "not the owner of this node"}),
            );
        }
        let op = Op::Signin {
            handle: user,
            password,
        };
        self.ask(op, |s, result| match result {
            Ok(Answer::Session { token, .. }) => {
                s.respond(200, json!({"status": 1, "session": token}))
            }
            _ => s.respond(403, json!({"status": 0, "error": "wrong user or password"})),
        });
    }

    fn gui(&mut self, our: Node, session: String, action: Gui) {
        if session.is_empty() {
            return self.respond(403, json!({"status": 0, "error": "sign in first"}));
        }
        let owner = self.config.owner.clone();
        self.ask(Op::CheckToken { token: session }, move |s, result| {
            let user = match result {
                Ok(Answer::Session { user, .. }) if !owner.is_empty() && user.handle == owner => {
                    user
                }
                _ => return s.respond(403, json!({"status": 0, "error": "sign in first"})),
            };
            s.ask(Op::Authenticate { user: user.id }, move |s, result| {
                if result.is_err() {
                    return s.respond(403, json!({"status": 0, "error": "sign in first"}));
                }
                match action {
                    Gui::Contacts => s.contacts(our),
                    Gui::AddContact {
                        address,
                        nick,
                        can_resend,
                    } => s.add_contact(our, address, nick, can_resend, true),
                    Gui::SetContact {
                        address,
                        nick,
                        can_resend,
                    } => s.add_contact(our, address, nick, can_resend, false),
                    Gui::Conversation { with, limit } => s.conversation(our, user, with, limit),
                    Gui::Post { to, message } => s.post(our, to, message),
                }
            });
        });
    }

    fn contacts(&mut self, our: Node) {
        let op = Op::Scan {
            prefix: contact::CONTACT_PREFIX.to_vec(),
            after: None,
            limit: self.config.max_contacts as u32,
        };
        self.ask(op, move |s, result| {
            let entries = match result {
                Ok(Answer::Entries(entries)) => entries,
                _ => Vec::new(),
            };
            let contacts: VecDeque<(String, Contact)> = entries
                .iter()
                .filter_map(|(key, value)| {
                    Some((
                        contact::after_prefix(key, contact::CONTACT_PREFIX)?,
                        Contact::from_bytes(value)?,
                    ))
                })
                .collect();
            let op = Op::Scan {
                prefix: contact::STATE_PREFIX.to_vec(),
                after: None,
                limit: s.config.max_contacts as u32,
            };
            s.ask(op, move |s, result| {
                let states: HashMap<String, State> = match result {
                    Ok(Answer::Entries(entries)) => entries
                        .iter()
                        .filter_map(|(key, value)| {
                            Some((
                                contact::after_prefix(key, contact::STATE_PREFIX)?,
                                State::from_bytes(value)?,
                            ))
                        })
                        .collect(),
                    _ => HashMap::new(),
                };
                let contacts = contacts
                    .into_iter()
                    .map(|(address, contact)| {
                        let state = states.get(&address).cloned().unwrap_or_default();
                        (address, contact, state)
                    })
                    .collect();
                s.count_undelivered(our, contacts, Vec::new());
            });
        });
    }

    /// Adds each contact's count of undelivered messages, one after another.
    fn count_undelivered(
        &mut self,
        our: Node,
        mut contacts: VecDeque<(String, Contact, State)>,
        mut listed: Vec<Value>,
    ) {
        let Some((address, contact, state)) = contacts.pop_front() else {
            let reply = json!({"status": 1, "address": our.to_string(), "contacts": listed});
            return self.respond(200, reply);
        };
        let now = self.now_secs;
        let online = state.online(now, self.config.online_secs);
        let can_resend = u8::from(contact.can_resend == 1 && !state.relay_refused);
        let mut entry = json!({
            "address": address,
            "nick": contact.nick,
            "online": online,
            "last_online": state.last_online,
            "last_connect": state.last_connect,
            "can_resend": can_resend,
            "acked": state.acked,
            "undelivered": 0,
        });
        self.ask(Self::alias(&address), move |s, result| {
            let Ok(Answer::User(user)) = result else {
                listed.push(entry);
                return s.count_undelivered(our, contacts, listed);
            };
            let op = Op::PuppetHistory {
                user: user.id,
                before: Seq(u64::MAX),
                limit: 200,
            };
            s.ask(op, move |s, result| {
                if let Ok(Answer::PuppetPage { page, cursor }) = result {
                    entry["undelivered"] = json!(page.iter().filter(|d| d.seq > cursor).count());
                }
                listed.push(entry);
                s.count_undelivered(our, contacts, listed);
            });
        });
    }

    fn add_contact(
        &mut self,
        our: Node,
        address: Node,
        nick: Option<String>,
        can_resend: Option<u8>,
        create: bool,
    ) {
        if address == our {
            return self.refuse(wire::refused(400, "that is this node's own address"));
        }
        let op = Op::Load {
            key: contact::contact_key(&address),
        };
        self.ask(op, move |s, result| {
            let existing = match result {
                Ok(Answer::Value(Some(bytes))) => Contact::from_bytes(&bytes),
                _ => None,
            };
            let update = move |s: &mut RequestSession, mut contact: Contact| {
                if let Some(nick) = nick {
                    contact.nick = nick;
                }
                if let Some(can_resend) = can_resend {
                    contact.can_resend = can_resend;
                    if can_resend == 1 {
                        // The owner asks for it to relay again, even after a refusal.
                        s.signal("relay", address.as_str());
                    }
                }
                s.save_contact(address, contact, Self::ok);
            };
            match (existing, create) {
                (Some(contact), _) => update(s, contact),
                (None, false) => s.respond(404, json!({"status": 0, "error": "no such contact"})),
                (None, true) => s.when_room_for_a_contact(move |s| {
                    let contact = Contact::new(s.config.default_can_resend);
                    update(s, contact)
                }),
            }
        });
    }

    /// Runs `then` if the contact list has room for one more, else refuses (status 0).
    fn when_room_for_a_contact(&mut self, then: impl FnOnce(&mut RequestSession) + Send + 'static) {
        let op = Op::Scan {
            prefix: contact::CONTACT_PREFIX.to_vec(),
            after: None,
            limit: self.config.max_contacts as u32,
        };
        self.ask(op, move |s, result| {
            let count = match result {
                Ok(Answer::Entries(entries)) => entries.len(),
                _ => usize::MAX,
            };
            if count >= s.config.max_contacts {
                return s.respond(200, json!({"status": 0, "error": "too many contacts"}));
            }
            then(s)
        });
    }

    fn conversation(&mut self, our: Node, owner: UserRef, with: Target, limit: u32) {
        let native = with.text();
        self.ask(Self::alias(&native), move |s, result| {
            let Ok(Answer::User(peer)) = result else {
                return s.respond(400, json!({"status": 0, "error": "not an address"}));
            };
            let op = Op::PuppetHistory {
                user: peer.id,
                before: Seq(u64::MAX),
                limit,
            };
            s.ask(op, move |s, result| {
                let (sent, cursor) = match result {
                    Ok(Answer::PuppetPage { page, cursor }) => (page, cursor),
                    _ => (Vec::new(), Seq(0)),
                };
                let op = Op::History {
                    before: Seq(u64::MAX),
                    limit: 1000,
                };
                s.ask(op, move |s, result| {
                    let received = match result {
                        Ok(Answer::History(page)) => page,
                        _ => Vec::new(),
                    };
                    // Pages come newest first; each stream's own order is kept by the
                    // stable sort on time once both are oldest first.
                    let mut messages: Vec<Value> = sent
                        .iter()
                        .rev()
                        .filter(|d| d.event.from.id == owner.id)
                        .filter_map(|d| entry(d, &our, &native, "out", Some(d.seq <= cursor)))
                        .chain(
                            received
                                .iter()
                                .rev()
                                .filter(|d| d.event.from.id == peer.id)
                                .filter_map(|d| entry(d, &our, &native, "in", None)),
                        )
                        .collect();
                    messages.sort_by_key(|m| m["timestamp"].as_u64().unwrap_or(0));
                    let skip = messages.len().saturating_sub(limit as usize);
                    let messages: Vec<Value> = messages.into_iter().skip(skip).collect();
                    s.respond(200, json!({"status": 1, "messages": messages}));
                });
            });
        });
    }

    fn post(&mut self, our: Node, to: Target, message: String) {
        if to.node() == &our {
            return self.refuse(wire::refused(400, "that address is on this node"));
        }
        let native = to.text();
        self.ask(Self::alias(&native), move |s, result| {
            let Ok(Answer::User(peer)) = result else {
                return s.respond(400, json!({"status": 0, "error": "not an address"}));
            };
            s.register_peer(&native);
            let op = Op::Send {
                to: Address::User(peer.id),
                content: Content::Text(message),
            };
            s.ask(op, move |s, result| match result {
                Ok(Answer::Accepted { event }) => {
                    let id = crate::message_id(&our, event.0);
                    s.respond(200, json!({"status": 1, "id": id}))
                }
                other => {
                    let error = match other {
                        Err(e) => e.to_string(),
                        Ok(_) => "not accepted".into(),
                    };
                    s.respond(200, json!({"status": 0, "error": error}))
                }
            });
        });
    }
}

/// A conversation entry for a stream event, if it is a message.
fn entry(
    delivery: &Delivery,
    our: &Node,
    peer: &str,
    direction: &str,
    delivered: Option<bool>,
) -> Option<Value> {
    let event = &delivery.event;
    let EventBody::Message(content) = &event.body else {
        return None;
    };
    let mut value = match content {
        Content::Native { scheme, bytes, .. } if scheme == SCHEME_MESSAGE => {
            serde_json::from_slice::<Value>(bytes).ok()?
        }
        Content::Text(text)
        | Content::Native {
            fallback: Some(text),
            ..
        } => {
            let (from, to) = if direction == "out" {
                (our.to_string(), peer.to_owned())
            } else {
                (peer.to_owned(), our.to_string())
            };
            json!({
                "id": crate::message_id(our, event.id.0),
                "from": from,
                "to": to,
                "message": text,
                "timestamp": event.at_unix_ms / 1000,
                "enctype": "",
            })
        }
        _ => return None,
    };
    value["direction"] = json!(direction);
    if let Some(delivered) = delivered {
        value["delivered"] = json!(delivered);
    }
    Some(value)
}

impl Session for RequestSession {
    fn handle_input(&mut self, now: Now, input: Input) {
        self.now_secs = now.unix_ms / 1000;
        match input {
            Input::Opened => {}
            Input::Request(request) => match wire::parse(&request) {
                Ok(request) => self.on_request(request),
                Err(refusal) => self.refuse(refusal),
            },
            Input::Event(hub_plugin_sdk::HubEvent::Answer { id, result }) => {
                if let Some(then) = self.waiting.answered(id) {
                    then(self, result);
                }
            }
            Input::Event(_) | Input::Timeout | Input::Closed { .. } | Input::Fetched { .. } => {}
            Input::TooLarge { limit } => {
                self.refuse(wire::refused(413, &format!("body over {limit} bytes")))
            }
            Input::Bytes(_) | Input::Message(_) => {
                self.log(LogLevel::Error, "P2P speaks HTTP; input dropped")
            }
        }
    }

    fn poll_output(&mut self) -> Output {
        self.out.pop_front().unwrap_or(Output::Timeout(None))
    }
}
