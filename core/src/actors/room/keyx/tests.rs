//! The coordinator against simulated members doing real modular arithmetic (in a small
//! prime group), with replies arriving in random interleavings.

use super::*;
use hub_plugin_sdk::testing::Rng;

/// A prime small enough for u128 arithmetic; the coordinator never looks inside.
const P: u64 = 1_000_000_007;

fn pow_mod(base: u64, exp: u64) -> u64 {
    let (mut result, mut base, mut exp) = (1u128, base as u128 % P as u128, exp);
    while exp > 0 {
        if exp & 1 == 1 {
            result = result * base % P as u128;
        }
        base = base * base % P as u128;
        exp >>= 1;
    }
    result as u64
}

fn to_bytes(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(7);
    bytes[first..].to_vec()
}

fn from_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, b| acc << 8 | *b as u64)
}

/// A member following the client rule of real cchat clients.
struct Client {
    secret: Option<u64>,
    key: Option<u64>,
    /// Draw a new secret on `fresh` (real clients ignore it).
    honours_fresh: bool,
    inbox: VecDeque<KeyStep>,
    /// Every step received, for transcript checks.
    seen: Vec<KeyStep>,
}

struct Sim {
    coordinator: Coordinator,
    clients: HashMap<ConnId, Client>,
    rng: Rng,
    now: u64,
    /// Every intermediate the coordinator relayed.
    relayed: Vec<u64>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim {
            coordinator: Coordinator::new(vec![2], 20_000),
            clients: HashMap::new(),
            rng: Rng(seed),
            now: 0,
            relayed: Vec::new(),
        }
    }

    fn route(&mut self, out: Vec<Outbound>) {
        for outbound in out {
            self.relayed.push(from_bytes(&outbound.step.intermediate));
            let client = self
                .clients
                .get_mut(&outbound.conn)
                .expect("step to a member");
            client.seen.push(outbound.step.clone());
            client.inbox.push_back(outbound.step);
        }
    }

    fn join(&mut self, conn: u64, honours_fresh: bool) {
        self.clients.insert(
            ConnId(conn),
            Client {
                secret: None,
                key: None,
                honours_fresh,
                inbox: VecDeque::new(),
                seen: Vec::new(),
            },
        );
        let out = self.coordinator.join(ConnId(conn), self.now);
        self.route(out);
    }

    fn leave(&mut self, conn: u64) {
        self.clients.remove(&ConnId(conn));
        let out = self.coordinator.leave(ConnId(conn), self.now);
        self.route(out);
    }

    /// One member (chosen at random among those with something to do) handles its
    /// oldest step. False when nobody has anything to do.
    fn step_one(&mut self) -> bool {
        let mut busy: Vec<ConnId> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.inbox.is_empty())
            .map(|(conn, _)| *conn)
            .collect();
        if busy.is_empty() {
            return false;
        }
        busy.sort();
        let conn = busy[self.rng.below(busy.len() as u64) as usize];
        let secret_source = self.rng.next_u64() % (P - 3) + 2;
        let client = self.clients.get_mut(&conn).expect("busy member");
        let step = client.inbox.pop_front().expect("busy member has a step");
        if client.secret.is_none() || (client.honours_fresh && step.fresh) {
            client.secret = Some(secret_source);
        }
        let secret = client.secret.expect("secret drawn");
        let result = pow_mod(from_bytes(&step.intermediate), secret);
        let reply = if step.rounds_left == 0 {
            client.secret = Some(result);
            client.key = Some(result);
            Vec::new()
        } else {
            to_bytes(result)
        };
        self.now += 1;
        let out = self
            .coordinator
            .reply(conn, reply, self.now)
            .expect("every step is answerable");
        self.route(out);
        true
    }

    fn settle(&mut self) {
        let mut steps = 0;
        while self.step_one() {
            steps += 1;
            assert!(steps < 100_000, "the negotiation does not end");
        }
        assert!(self.coordinator.is_settled(), "quiet but not settled");
    }

    fn keys(&self) -> Vec<Option<u64>> {
        let mut conns: Vec<_> = self.clients.keys().copied().collect();
        conns.sort();
        conns.iter().map(|c| self.clients[c].key).collect()
    }

    /// Every member holds the same key; returns it.
    fn common_key(&self) -> u64 {
        let keys = self.keys();
        let first = keys[0].expect("a key");
        assert!(
            keys.iter().all(|k| *k == Some(first)),
            "keys differ: {keys:?}"
        );
        first
    }
}

fn step(rounds_left: u32, fresh: bool, intermediate: Vec<u8>) -> KeyStep {
    KeyStep {
        rounds_left,
        fresh,
        intermediate,
    }
}

#[test]
fn the_first_member_gets_the_generator_as_its_final_step() {
    let mut sim = Sim::new(1);
    sim.join(1, false);
    assert_eq!(
        sim.clients[&ConnId(1)].inbox,
        VecDeque::from([step(0, true, vec![2])])
    );
    sim.settle();
    let key = sim.common_key();
    assert_eq!(
        sim.clients[&ConnId(1)].secret,
        Some(key),
        "the key replaced the secret"
    );
}

#[test]
fn a_join_follows_the_scheme_real_clients_expect() {
    let mut sim = Sim::new(2);
    sim.join(1, false);
    sim.join(2, false); // waits: member 1 has not finished
    sim.settle();
    let key_before = sim.common_key();
    sim.join(3, false);
    // The newcomer and one existing member (the longest present) start from g.
    assert_eq!(
        sim.clients[&ConnId(3)].inbox,
        VecDeque::from([step(1, true, vec![2])])
    );
    assert_eq!(
        sim.clients[&ConnId(1)].inbox,
        VecDeque::from([step(1, false, vec![2])])
    );
    assert!(sim.clients[&ConnId(2)].inbox.is_empty());
    sim.settle();
    let key = sim.common_key();
    assert_ne!(key, key_before);
    // Member 2 got the newcomer's g^x3 as its final; member 3 got g^K.
    let two = &sim.clients[&ConnId(2)].seen;
    let last = two.last().expect("a final step");
    assert_eq!(last.rounds_left, 0);
    let three = &sim.clients[&ConnId(3)].seen;
    assert_eq!(three.len(), 2);
    assert_eq!(three[1].rounds_left, 0);
    assert_eq!(from_bytes(&three[1].intermediate), pow_mod(2, key_before));
}

#[test]
fn a_leave_re_adds_the_first_member_with_a_fresh_secret() {
    let mut sim = Sim::new(3);
    for conn in 1..=3 {
        sim.join(conn, false);
        sim.settle();
    }
    let before = sim.common_key();
    sim.leave(2);
    assert_eq!(
        sim.clients[&ConnId(1)].inbox,
        VecDeque::from([step(1, true, vec![2])])
    );
    assert_eq!(
        sim.clients[&ConnId(3)].inbox,
        VecDeque::from([step(1, false, vec![2])])
    );
    sim.settle();
    assert_ne!(sim.common_key(), before);
    sim.leave(1);
    assert_eq!(
        sim.clients[&ConnId(3)].inbox,
        VecDeque::from([step(0, true, vec![2])])
    );
    sim.settle();
    sim.common_key();
}

#[test]
fn random_joins_and_leaves_always_end_with_one_key_never_relayed() {
    for seed in 1..=40u64 {
        let mut sim = Sim::new(seed * 7919);
        let mut next_conn = 1;
        let mut present: Vec<u64> = Vec::new();
        for _ in 0..40 {
            let leave = !present.is_empty() && (present.len() >= 9 || sim.rng.below(3) == 0);
            if leave {
                let index = sim.rng.below(present.len() as u64) as usize;
                sim.leave(present.remove(index));
            } else {
                let honours = sim.rng.below(2) == 0;
                sim.join(next_conn, honours);
                present.push(next_conn);
                next_conn += 1;
            }
            // Sometimes the next change comes while a negotiation is still running.
            let partial = sim.rng.below(4);
            for _ in 0..partial {
                sim.step_one();
            }
            if sim.rng.below(2) == 0 {
                sim.settle();
                if !present.is_empty() {
                    let key = sim.common_key();
                    if present.len() > 1 {
                        assert!(
                            !sim.relayed.contains(&key),
                            "seed {seed}: the group key itself passed through the hub"
                        );
                    }
                }
            }
        }
        sim.settle();
        if !present.is_empty() {
            sim.common_key();
        }
    }
}

#[test]
fn a_member_that_stalls_is_reported_overdue_and_the_rest_agree_without_it() {
    let mut sim = Sim::new(5);
    for conn in 1..=3 {
        sim.join(conn, false);
        sim.settle();
    }
    sim.join(4, false);
    // Member 4 never answers: everyone else does what they can.
    let stalled = sim
        .clients
        .get_mut(&ConnId(4))
        .expect("member 4")
        .inbox
        .split_off(0);
    assert!(!stalled.is_empty());
    while sim.step_one() {}
    let deadline = sim.coordinator.deadline().expect("a step is due");
    assert!(sim.coordinator.overdue(deadline - 1).is_empty());
    assert_eq!(sim.coordinator.overdue(deadline), vec![ConnId(4)]);
    sim.now = deadline;
    sim.leave(4);
    sim.settle();
    sim.common_key();
}

#[test]
fn replies_that_answer_nothing_are_refused() {
    let mut coordinator = Coordinator::new(vec![2], 1000);
    assert_eq!(
        coordinator.reply(ConnId(9), vec![], 0),
        Err(ReplyError::NotMember)
    );
    coordinator.join(ConnId(1), 0);
    assert!(coordinator.reply(ConnId(1), vec![], 1).is_ok());
    assert_eq!(
        coordinator.reply(ConnId(1), vec![], 2),
        Err(ReplyError::Unexpected)
    );
    assert!(coordinator.is_settled());
}

#[test]
fn duties_come_before_the_final_step_for_every_member() {
    // With several newcomers at once each member's final step must come after all its
    // chain links (the final replaces the secret the links still need).
    let mut sim = Sim::new(11);
    sim.join(1, false);
    for conn in 2..=9 {
        sim.join(conn, false); // all wait behind member 1's negotiation
    }
    sim.settle();
    let key = sim.common_key();
    for client in sim.clients.values() {
        let finals = client.seen.iter().filter(|s| s.rounds_left == 0).count();
        assert_eq!(client.seen.last().map(|s| s.rounds_left), Some(0));
        assert!(finals >= 1);
    }
    assert_ne!(key, 0);
}
