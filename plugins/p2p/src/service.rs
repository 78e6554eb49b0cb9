//! The node's background work as a sans-IO session (the plugin's service session): it
//! carries the streams of every remote address (puppets), sends what they hold to their
//! nodes, pings contacts, completes handshakes, flushes undelivered messages once a
//! contact answers, and hands messages for offline contacts to relays.
//!
//! ```text
//!  start ──▶ Scan contact/, state/, peer/ ──▶ Alias + Puppet each peer ──▶ running
//!
//!  running, every tick and on signals from request sessions:
//!    contact not acked     ──▶ handshake (retried every ping_secs)
//!    last_connect too old  ──▶ ping ──pong──▶ online: flush
//!    messages to a peer    ──▶ send / history ──status 1──▶ PuppetAck (contiguous)
//!                                 └─ no answer / 0 ──▶ keep; resend to relays (once)
//! ```
//!
//! Messages to one node leave in stream order; a message is acknowledged to the core
//! (never sent again) once the node took it and every earlier one. What is in flight or
//! not yet taken stays in the store: after a restart it is sent again, and the receiver's
//! deduplication by message id makes that harmless.

use crate::address::{Node, Target};
use crate::contact::{self, Contact, State};
use crate::wire::NetMessage;
use crate::{Config, SCHEME_MESSAGE};
use hub_plugin_sdk::{
    fire_and_forget, Answer, Awaiting, Content, CoreError, CorrelationId, Delivery, EventBody,
    FetchError, FetchRequest, HttpResponse, HubEvent, Input, LogLevel, Now, Op, Output,
    OutputQueue, Seq, Session, Target as HubTarget, UserId,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Outbound requests the service keeps in flight at most.
const MAX_FETCHES: usize = 32;

/// Entries of the key space read per scan.
const SCAN_PAGE: u32 = 500;

/// Signals kept while the records are read at start, at most.
const EARLY_SIGNALS: usize = 1024;

/// What a command was for.
#[derive(Debug)]
enum Job {
    ScanContacts,
    ScanStates,
    ScanPeers,
    Alias { native: String },
    Puppet { user: UserId },
    LoadContact { node: Node, relay: bool },
}

/// What an outbound request was for.
#[derive(Debug)]
enum FetchJob {
    Ping { node: Node },
    Handshake { node: Node },
    Flush { user: UserId, seqs: Vec<Seq> },
    Relay { relay: Node },
}

/// A remote address whose stream this node sends out.
#[derive(Debug)]
struct Peer {
    /// The address as its hub user's alias (`host:port` or `handle@host:port`).
    native: String,
    /// Its node.
    node: Node,
    /// Events of its stream not yet acknowledged, in order.
    queue: VecDeque<Delivery>,
    /// Events its node took (or that need no sending) but not yet acknowledged.
    delivered: BTreeSet<Seq>,
    /// Events already handed to relays.
    relayed: HashSet<Seq>,
    /// A send or history request is in flight.
    flushing: bool,
    /// The core delivers its stream here.
    carried: bool,
    /// Too much was waiting: the stream was dropped from memory and is carried again
    /// once the queue is sent.
    overflow: bool,
}

/// The service session.
pub struct ServiceSession {
    config: Arc<Config>,
    our: Option<Node>,
    out: OutputQueue,
    jobs: Awaiting<Job>,
    /// The id of the next fetch (fetches have ids of their own, apart from commands').
    next_fetch: u64,
    fetches: HashMap<u64, FetchJob>,
    contacts: BTreeMap<Node, Contact>,
    states: BTreeMap<Node, State>,
    peers: HashMap<UserId, Peer>,
    by_native: HashMap<String, UserId>,
    /// Aliases asked for and not answered.
    resolving: HashSet<String>,
    pinging: HashSet<Node>,
    handshaking: HashSet<Node>,
    /// When a contact was last pinged or handshaken (mono ms), to space attempts out.
    last_ping: HashMap<Node, u64>,
    last_handshake: HashMap<Node, u64>,
    /// When sending to a node last failed (unix secs); cleared by any success.
    failed: HashMap<Node, u64>,
    now: Now,
    next_tick: u64,
    loaded: bool,
    /// Signals that came while the records were being read (bounded).
    early_signals: Vec<Vec<u8>>,
    stopped: bool,
}

impl ServiceSession {
    /// The service of the node at `our`.
    pub fn new(config: Arc<Config>, our: Option<Node>) -> Self {
        ServiceSession {
            config,
            our,
            out: OutputQueue::new(),
            jobs: Awaiting::new(),
            next_fetch: 1,
            fetches: HashMap::new(),
            contacts: BTreeMap::new(),
            states: BTreeMap::new(),
            peers: HashMap::new(),
            by_native: HashMap::new(),
            resolving: HashSet::new(),
            pinging: HashSet::new(),
            handshaking: HashSet::new(),
            last_ping: HashMap::new(),
            last_handshake: HashMap::new(),
            failed: HashMap::new(),
            now: Now {
                mono_ms: 0,
                unix_ms: 0,
            },
            next_tick: 0,
            loaded: false,
            early_signals: Vec::new(),
            stopped: false,
        }
    }

    fn now_secs(&self) -> u64 {
        self.now.unix_ms / 1000
    }

    fn log(&mut self, level: LogLevel, message: impl Into<String>) {
        self.out.push_back(Output::Log {
            level,
            message: message.into(),
        });
    }

    fn command(&mut self, op: Op, job: Job) {
        let output = self.jobs.command(op, job);
        self.out.push_back(output);
    }

    fn tell(&mut self, op: Op) {
        self.out.push_back(fire_and_forget(op));
    }

    /// Sends an action to a node (if fewer than `MAX_FETCHES` are in flight).
    fn fetch(&mut self, node: &Node, body: &Value, job: FetchJob) -> bool {
        if self.fetches.len() >= MAX_FETCHES {
            return false;
        }
        let id = self.next_fetch;
        self.next_fetch += 1;
        self.fetches.insert(id, job);
        self.out.push_back(Output::Fetch(FetchRequest {
            id,
            method: "POST".into(),
            url: node.url(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            timeout_ms: self.config.request_timeout_ms,
            // From this node's own address: that is who it says it is.
            from_ip: self
                .our
                .as_ref()
                .and_then(Node::ip)
                .map(|ip| ip.to_string()),
        }));
        true
    }

    fn scan(&mut self, prefix: &[u8], after: Option<Vec<u8>>, job: Job) {
        let op = Op::Scan {
            prefix: prefix.to_vec(),
            after,
            limit: SCAN_PAGE,
        };
        self.command(op, job);
    }

    /// Starts carrying the stream of a remote address.
    fn adopt(&mut self, native: &str) {
        if self.by_native.contains_key(native) || !self.resolving.insert(native.to_owned()) {
            return;
        }
        if self.by_native.len() >= self.config.max_contacts * 4 {
            self.resolving.remove(native);
            return self.log(
                LogLevel::Warn,
                format!("too many remote addresses; {native} ignored"),
            );
        }
        let op = Op::Alias {
            namespace: "p2p".into(),
            native: native.into(),
            handles: vec![native.into(), format!("p2p-{native}")],
        };
        self.command(
            op,
            Job::Alias {
                native: native.to_owned(),
            },
        );
    }

    fn state(&mut self, node: &Node) -> &mut State {
        self.states.entry(node.clone()).or_default()
    }

    fn save_state(&mut self, node: &Node) {
        let bytes = self.state(node).to_bytes();
        self.tell(Op::Store {
            key: contact::state_key(node),
            value: Some(bytes),
        });
    }

    /// A successful exchange with `node`: it is online, and what waits for it goes out.
    fn succeeded(&mut self, node: &Node) {
        let now = self.now_secs();
        let state = self.state(node);
        state.last_online = now;
        state.last_connect = now;
        self.failed.remove(node);
        self.save_state(node);
        self.flush_node(node);
    }

    fn flush_node(&mut self, node: &Node) {
        let users: Vec<UserId> = self
            .peers
            .iter()
            .filter(|(_, p)| &p.node == node)
            .map(|(user, _)| *user)
            .collect();
        for user in users {
            self.flush(user);
        }
    }

    // ----- the periodic work -------------------------------------------------------

    fn tick(&mut self) {
        let nodes: Vec<Node> = self.contacts.keys().cloned().collect();
        for node in nodes {
            self.maybe_handshake(&node);
            self.maybe_ping(&node);
        }
        let users: Vec<UserId> = self.peers.keys().copied().collect();
        for user in users {
            self.flush(user);
        }
    }

    fn spaced(last: Option<&u64>, now_ms: u64, every_ms: u64) -> bool {
        last.is_none_or(|at| now_ms.saturating_sub(*at) >= every_ms)
    }

    fn maybe_handshake(&mut self, node: &Node) {
        let Some(our) = self.our.clone() else { return };
        let Some(contact) = self.contacts.get(node) else {
            return;
        };
        if self.states.get(node).is_some_and(|s| s.acked) || self.handshaking.contains(node) {
            return;
        }
        let every = self.config.ping_secs * 1000;
        if !Self::spaced(self.last_handshake.get(node), self.now.mono_ms, every) {
            return;
        }
        let body = json!({
            "action": "handshake",
            "from": our.to_string(),
            "key": contact.our_key,
            "nick": self.config.owner,
        });
        if self.fetch(node, &body, FetchJob::Handshake { node: node.clone() }) {
            self.handshaking.insert(node.clone());
            self.last_handshake.insert(node.clone(), self.now.mono_ms);
        }
    }

    fn maybe_ping(&mut self, node: &Node) {
        let Some(our) = self.our.clone() else { return };
        let Some(contact) = self.contacts.get(node) else {
            return;
        };
        let now = self.now_secs();
        let recent = self
            .states
            .get(node)
            .is_some_and(|s| now.saturating_sub(s.last_connect) < self.config.ping_secs);
        let every = self.config.ping_secs * 1000;
        if recent
            || self.pinging.contains(node)
            || !Self::spaced(self.last_ping.get(node), self.now.mono_ms, every)
        {
            return;
        }
        let mut body = json!({"action": "ping", "from": our.to_string()});
        if !contact.key.is_empty() {
            body["key"] = json!(contact.key);
        }
        if self.fetch(node, &body, FetchJob::Ping { node: node.clone() }) {
            self.pinging.insert(node.clone());
            self.last_ping.insert(node.clone(), self.now.mono_ms);
        }
    }

    /// Sends what waits for a peer, if its node can be reached.
    fn flush(&mut self, user: UserId) {
        let Some(our) = self.our.clone() else { return };
        let Some(peer) = self.peers.get(&user) else {
            return;
        };
        if peer.flushing {
            return;
        }
        let node = peer.node.clone();
        let Some(key) = self.contacts.get(&node).map(|c| c.key.clone()) else {
            return; // not a contact: nothing can be sent (no key)
        };
        if key.is_empty() {
            return; // its handshake has not reached us yet
        }
        if let Some(at) = self.failed.get(&node) {
            // Failed recently: wait for a sign of life (a pong, a request from it).
            if self.now_secs().saturating_sub(*at) < self.config.ping_secs {
                return;
            }
        }
        let owner = self.config.owner.clone();
        let now = self.now_secs();
        let batch = self.config.history_batch;
        let by_native = &self.by_native;
        let Some(peer) = self.peers.get_mut(&user) else {
            return;
        };
        let mut seqs = Vec::new();
        let mut messages = Vec::new();
        for delivery in &peer.queue {
            if peer.delivered.contains(&delivery.seq) {
                continue;
            }
            match outbound(delivery, &our, &owner, &peer.native, by_native) {
                Some(message) => {
                    seqs.push(delivery.seq);
                    messages.push(message.to_value(now));
                }
                // Nothing to send for it (a notice, content no node can read).
                None => {
                    peer.delivered.insert(delivery.seq);
                }
            }
            if seqs.len() >= batch {
                break;
            }
        }
        self.acknowledge(user);
        if seqs.is_empty() {
            return;
        }
        let body = if messages.len() == 1 {
            let mut body = messages.remove(0);
            body["action"] = json!("send");
            body["key"] = json!(key);
            body
        } else {
            json!({"action": "history", "from": our.to_string(), "key": key, "messages": messages})
        };
        if self.fetch(&node, &body, FetchJob::Flush { user, seqs }) {
            if let Some(peer) = self.peers.get_mut(&user) {
                peer.flushing = true;
            }
        }
    }

    /// Acknowledges the longest prefix of the queue that was taken.
    fn acknowledge(&mut self, user: UserId) {
        let Some(peer) = self.peers.get_mut(&user) else {
            return;
        };
        let mut through = None;
        while let Some(front) = peer.queue.front() {
            if !peer.delivered.remove(&front.seq) {
                break;
            }
            through = Some(front.seq);
            peer.relayed.remove(&front.seq);
            peer.queue.pop_front();
        }
        let carry_again = peer.overflow && peer.queue.is_empty() && !peer.flushing;
        if let Some(through) = through {
            self.tell(Op::PuppetAck { user, through });
        }
        if carry_again {
            if let Some(peer) = self.peers.get_mut(&user) {
                peer.overflow = false;
            }
            self.command(Op::Puppet { user }, Job::Puppet { user });
        }
    }

    /// Hands messages for an unreachable peer to relays, once each.
    fn relay(&mut self, user: UserId, seqs: &[Seq]) {
        let Some(our) = self.our.clone() else { return };
        let Some(peer) = self.peers.get(&user) else {
            return;
        };
        let destination = peer.node.clone();
        let now = self.now_secs();
        let mut relays: Vec<(Node, String)> = self
            .contacts
            .iter()
            .filter(|(node, contact)| {
                **node != destination
                    && contact.can_resend == 1
                    && !contact.key.is_empty()
                    && !self.states.get(*node).is_some_and(|s| s.relay_refused)
                    && !self.failed.contains_key(*node)
            })
            .map(|(node, contact)| (node.clone(), contact.key.clone()))
            .collect();
        shuffle(&mut relays);
        relays.truncate(self.config.relays);
        if relays.is_empty() {
            return;
        }
        let owner = self.config.owner.clone();
        // Only as many as there are request slots for: the rest waits for the next time.
        let room = MAX_FETCHES.saturating_sub(self.fetches.len()) / relays.len();
        let mut bodies = Vec::new();
        if let Some(peer) = self.peers.get_mut(&user) {
            for delivery in peer.queue.iter().filter(|d| seqs.contains(&d.seq)) {
                if bodies.len() >= room {
                    break;
                }
                if !peer.relayed.insert(delivery.seq) {
                    continue;
                }
                if let Some(message) =
                    outbound(delivery, &our, &owner, &peer.native, &self.by_native)
                {
                    bodies.push(message.to_value(now));
                }
            }
        }
        for body in bodies {
            for (relay, key) in &relays {
                let mut body = body.clone();
                body["action"] = json!("resend");
                body["key"] = json!(key);
                self.fetch(
                    relay,
                    &body,
                    FetchJob::Relay {
                        relay: relay.clone(),
                    },
                );
            }
        }
    }

    // ----- answers -----------------------------------------------------------------

    fn on_answer(&mut self, id: CorrelationId, result: Result<Answer, CoreError>) {
        let Some(job) = self.jobs.answered(id) else {
            return;
        };
        match (job, result) {
            (Job::ScanContacts, Ok(Answer::Entries(entries))) => {
                let last = entries.last().map(|(k, _)| k.clone());
                for (key, value) in &entries {
                    let node = contact::after_prefix(key, contact::CONTACT_PREFIX)
                        .and_then(|a| Node::parse(&a));
                    if let (Some(node), Some(contact)) = (node, Contact::from_bytes(value)) {
                        self.contacts.insert(node, contact);
                    }
                }
                match last.filter(|_| entries.len() == SCAN_PAGE as usize) {
                    Some(after) => {
                        self.scan(contact::CONTACT_PREFIX, Some(after), Job::ScanContacts)
                    }
                    None => self.scan(contact::STATE_PREFIX, None, Job::ScanStates),
                }
            }
            (Job::ScanStates, Ok(Answer::Entries(entries))) => {
                let last = entries.last().map(|(k, _)| k.clone());
                for (key, value) in &entries {
                    let node = contact::after_prefix(key, contact::STATE_PREFIX)
                        .and_then(|a| Node::parse(&a));
                    if let (Some(node), Some(state)) = (node, State::from_bytes(value)) {
                        self.states.insert(node, state);
                    }
                }
                match last.filter(|_| entries.len() == SCAN_PAGE as usize) {
                    Some(after) => self.scan(contact::STATE_PREFIX, Some(after), Job::ScanStates),
                    None => self.scan(contact::PEER_PREFIX, None, Job::ScanPeers),
                }
            }
            (Job::ScanPeers, Ok(Answer::Entries(entries))) => {
                let last = entries.last().map(|(k, _)| k.clone());
                let natives: Vec<String> = entries
                    .iter()
                    .filter_map(|(key, _)| contact::after_prefix(key, contact::PEER_PREFIX))
                    .collect();
                for native in natives {
                    self.adopt(&native);
                }
                match last.filter(|_| entries.len() == SCAN_PAGE as usize) {
                    Some(after) => self.scan(contact::PEER_PREFIX, Some(after), Job::ScanPeers),
                    None => {
                        self.loaded = true;
                        let (contacts, peers) = (
                            self.contacts.len(),
                            self.by_native.len() + self.resolving.len(),
                        );
                        self.log(
                            LogLevel::Info,
                            format!("node service started: {contacts} contacts, {peers} remote addresses"),
                        );
                        for signal in std::mem::take(&mut self.early_signals) {
                            self.on_signal(&signal);
                        }
                        self.tick();
                    }
                }
            }
            (Job::Alias { native }, Ok(Answer::User(user))) => {
                self.resolving.remove(&native);
                let Some(target) = Target::parse(&native) else {
                    return;
                };
                if self.our.as_ref() == Some(target.node()) {
                    return; // an address of this very node
                }
                self.by_native.insert(native.clone(), user.id);
                self.peers.insert(
                    user.id,
                    Peer {
                        native,
                        node: target.node().clone(),
                        queue: VecDeque::new(),
                        delivered: BTreeSet::new(),
                        relayed: HashSet::new(),
                        flushing: false,
                        carried: false,
                        overflow: false,
                    },
                );
                self.command(Op::Puppet { user: user.id }, Job::Puppet { user: user.id });
            }
            (Job::Puppet { user }, Ok(Answer::Bound { .. })) => {
                if let Some(peer) = self.peers.get_mut(&user) {
                    peer.carried = true;
                }
            }
            (Job::LoadContact { node, relay }, Ok(Answer::Value(value))) => {
                match value.as_deref().and_then(Contact::from_bytes) {
                    Some(contact) => {
                        let was = self.contacts.insert(node.clone(), contact);
                        let now_relays =
                            self.contacts.get(&node).is_some_and(|c| c.can_resend == 1);
                        if relay && now_relays && self.state(&node).relay_refused {
                            // The owner asked for this contact to relay again.
                            self.state(&node).relay_refused = false;
                            self.save_state(&node);
                        }
                        if was.is_none() {
                            self.adopt(node.as_str());
                        }
                        self.maybe_handshake(&node);
                        self.flush_node(&node);
                    }
                    None => {
                        self.contacts.remove(&node);
                    }
                }
            }
            (job, result) => {
                self.log(LogLevel::Warn, format!("{job:?} failed: {result:?}"));
                if let Job::Alias { native } = job {
                    self.resolving.remove(&native);
                }
            }
        }
    }

    fn on_fetched(&mut self, id: u64, result: Result<HttpResponse, FetchError>) {
        let Some(job) = self.fetches.remove(&id) else {
            return;
        };
        let reply: Option<Value> = match &result {
            Ok(response) if response.status == 200 => serde_json::from_slice(&response.body).ok(),
            _ => None,
        };
        match job {
            FetchJob::Ping { node } => {
                self.pinging.remove(&node);
                if reply.as_ref().is_some_and(|r| r["action"] == "pong") {
                    self.succeeded(&node);
                } else {
                    self.failed.insert(node, self.now_secs());
                }
            }
            FetchJob::Handshake { node } => {
                self.handshaking.remove(&node);
                if reply.as_ref().is_some_and(|r| r["status"] == 1) {
                    self.state(&node).acked = true;
                    self.log(LogLevel::Info, format!("handshake with {node} done"));
                    self.succeeded(&node);
                } else {
                    self.log(
                        LogLevel::Debug,
                        format!("handshake with {node} not taken: {}", describe(&result)),
                    );
                }
            }
            FetchJob::Flush { user, seqs } => {
                let statuses: Vec<u8> = match reply.as_ref().map(|r| &r["status"]) {
                    Some(Value::Number(n)) if seqs.len() == 1 => {
                        vec![u8::from(n.as_u64() == Some(1))]
                    }
                    Some(Value::Array(list)) => list
                        .iter()
                        .map(|v| u8::from(v.as_u64() == Some(1)))
                        .collect(),
                    _ => Vec::new(),
                };
                let node = self.peers.get(&user).map(|p| p.node.clone());
                let mut failed = Vec::new();
                if let Some(peer) = self.peers.get_mut(&user) {
                    peer.flushing = false;
                    for (index, seq) in seqs.iter().enumerate() {
                        if statuses.get(index) == Some(&1) {
                            peer.delivered.insert(*seq);
                        } else {
                            failed.push(*seq);
                        }
                    }
                }
                let Some(node) = node else { return };
                let answered = reply.is_some();
                if answered && failed.len() < seqs.len() {
                    self.succeeded(&node); // also flushes what is left
                } else if !answered {
                    self.log(
                        LogLevel::Debug,
                        format!("{node} did not answer: {}", describe(&result)),
                    );
                    self.failed.insert(node.clone(), self.now_secs());
                    self.relay(user, &failed);
                }
                self.acknowledge(user);
                if answered && failed.len() == seqs.len() {
                    // It answered but took none: try again at the next flush.
                    self.failed.insert(node, self.now_secs());
                }
            }
            FetchJob::Relay { relay } => {
                if reply.as_ref().is_some_and(|r| r["status"] == 0) {
                    // It does not relay for us: do not ask it again.
                    self.state(&relay).relay_refused = true;
                    self.save_state(&relay);
                }
            }
        }
    }

    fn on_signal(&mut self, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let Some((what, address)) = text.split_once(' ') else {
            return;
        };
        match what {
            // A request from it presented its key: a successful exchange.
            "seen" => {
                if let Some(node) = Node::parse(address) {
                    self.succeeded(&node);
                }
            }
            // Its record changed (handshake, GUI): read it again.
            "contact" | "relay" => {
                if let Some(node) = Node::parse(address) {
                    let op = Op::Load {
                        key: contact::contact_key(&node),
                    };
                    let relay = what == "relay";
                    self.command(op, Job::LoadContact { node, relay });
                }
            }
            // A remote address became a hub user: carry its stream.
            "peer" => self.adopt(address),
            _ => {}
        }
    }

    fn on_delivery(&mut self, user: UserId, delivery: Delivery) {
        let max_queue = self.config.max_queue;
        let Some(peer) = self.peers.get_mut(&user) else {
            return;
        };
        if peer.overflow {
            return; // dropped from memory; carried again once the queue is sent
        }
        peer.queue.push_back(delivery);
        if peer.queue.len() > max_queue {
            // Keep memory bounded: what waits stays in the store and comes back later.
            peer.overflow = true;
            peer.carried = false;
            let keep = peer.queue.len().min(max_queue);
            peer.queue.truncate(keep);
            self.log(
                LogLevel::Info,
                "many messages wait for a remote address; reading them from the store in turns",
            );
            self.tell(Op::Unpuppet { user });
        }
        self.flush(user);
    }
}

/// The message a stream event becomes on the wire, if it is one a node can take.
fn outbound(
    delivery: &Delivery,
    our: &Node,
    owner: &str,
    peer: &str,
    by_native: &HashMap<String, UserId>,
) -> Option<NetMessage> {
    let event = &delivery.event;
    let EventBody::Message(content) = &event.body else {
        return None;
    };
    if let Content::Native { scheme, bytes, .. } = content {
        if scheme == SCHEME_MESSAGE {
            // A message that came from the network (relayed, or into a room): as it was.
            let value: Value = serde_json::from_slice(bytes).ok()?;
            let mut message = NetMessage::from_value(&value).ok()?;
            if let HubTarget::Room(room) = &event.to {
                message.to = peer.to_owned();
                message.room = Some(format!("#{}@{our}", room.name));
            }
            return Some(message);
        }
    }
    let text = match content {
        Content::Text(text)
        | Content::Native {
            fallback: Some(text),
            ..
        } => text.clone(),
        Content::File(offer) => format!("[file] {} ({} bytes)", offer.name, offer.size),
        Content::Sealed { .. } | Content::Native { .. } => return None,
    };
    let author = &event.from;
    let from = if author.handle == owner {
        our.to_string()
    } else if let Some((native, _)) = by_native.iter().find(|(_, id)| **id == author.id) {
        native.clone()
    } else {
        format!("{}@{our}", author.handle)
    };
    let room = match &event.to {
        HubTarget::Room(room) => Some(format!("#{}@{our}", room.name)),
        HubTarget::User(_) => None,
    };
    Some(NetMessage {
        from,
        to: peer.to_owned(),
        message: text,
        timestamp: Some(event.at_unix_ms / 1000),
        enctype: String::new(),
        id: crate::message_id(our, event.id.0),
        room,
    })
}

fn describe(result: &Result<HttpResponse, FetchError>) -> String {
    match result {
        Ok(response) => format!(
            "HTTP {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        ),
        Err(error) => format!("{error:?}"),
    }
}

/// Shuffles with the OS's randomness (relay choice).
fn shuffle<T>(items: &mut [T]) {
    use rand_core::RngCore;
    for i in (1..items.len()).rev() {
        let j = (rand_core::OsRng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

impl Session for ServiceSession {
    fn handle_input(&mut self, now: Now, input: Input) {
        self.now = now;
        match input {
            Input::Opened => {
                if self.our.is_none() {
                    self.log(
                        LogLevel::Error,
                        "this node has no address: set plugins.p2p.address (the listener is not bound to one)",
                    );
                }
                self.scan(contact::CONTACT_PREFIX, None, Job::ScanContacts);
                self.next_tick = now.mono_ms + self.config.tick_ms;
            }
            Input::Event(HubEvent::Answer { id, result }) => self.on_answer(id, result),
            Input::Event(HubEvent::PuppetDeliver { user, delivery }) => {
                self.on_delivery(user, delivery)
            }
            Input::Event(HubEvent::Signal { data }) => {
                if self.loaded {
                    self.on_signal(&data);
                } else if self.early_signals.len() < EARLY_SIGNALS {
                    self.early_signals.push(data);
                }
            }
            Input::Event(HubEvent::Shutdown) => {
                self.stopped = true;
                self.out
                    .push_back(Output::Close(hub_plugin_sdk::CloseReason {
                        code: None,
                        reason: "hub shutting down".into(),
                    }));
            }
            Input::Event(_) => {}
            Input::Fetched { id, result } => self.on_fetched(id, result),
            Input::Timeout => {
                if now.mono_ms >= self.next_tick {
                    self.next_tick = now.mono_ms + self.config.tick_ms;
                    if self.loaded {
                        self.tick();
                    }
                }
            }
            Input::Closed { .. } => self.stopped = true,
            Input::Bytes(_) | Input::Message(_) | Input::Request(_) | Input::TooLarge { .. } => {}
        }
    }

    fn poll_output(&mut self) -> Output {
        if let Some(output) = self.out.pop_front() {
            return output;
        }
        Output::Timeout((!self.stopped).then_some(self.next_tick))
    }
}
