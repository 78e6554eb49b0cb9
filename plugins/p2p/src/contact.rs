//! The contact list as the node keeps it in the hub's store (its plugin key space), and
//! the keys of that space.
//!
//! ```text
//!  contact/<address>  → a Contact, JSON: nick, can_resend, the two keys (written by
//!                       request sessions: handshakes and the GUI)
//!  state/<address>    → its State, JSON: last_online, last_connect, acked (written by
//!                       the service)
//!  key/<our key>      → <address>: which contact presents this key
//!  peer/<address>     → "": a remote address that is a hub user (its stream is sent out)
//! ```

use crate::address::Node;
use serde::{Deserialize, Serialize};

/// One contact (another node), as its owner and its handshakes set it. Written by
/// request sessions only (handshakes, the GUI); what the node learns by talking to it is
/// its [`State`], written by the service only, so that neither loses the other's updates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Contact {
    /// Display name.
    pub nick: String,
    /// 1: ask it to relay for us.
    pub can_resend: u8,
    /// The key it gave us: presented in our requests to it (empty until its handshake).
    pub key: String,
    /// The key we gave it: it presents this one to us.
    pub our_key: String,
}

impl Contact {
    /// A new contact with a fresh key of ours.
    pub fn new(can_resend: u8) -> Contact {
        Contact {
            can_resend,
            our_key: fresh_key(),
            ..Contact::default()
        }
    }

    /// Stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and numbers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the stored form.
    pub fn from_bytes(bytes: &[u8]) -> Option<Contact> {
        serde_json::from_slice(bytes).ok()
    }
}

/// What the node learnt by talking to a contact (written by the service only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Unix seconds: the last sign of life.
    pub last_online: u64,
    /// Unix seconds: the last successful exchange.
    pub last_connect: u64,
    /// It has accepted our handshake.
    pub acked: bool,
    /// It answered a `resend` with status 0: do not ask it again.
    pub relay_refused: bool,
}

impl State {
    /// Whether it showed a sign of life within `window_secs` of `now_secs`.
    pub fn online(&self, now_secs: u64, window_secs: u64) -> bool {
        self.last_online > 0 && now_secs.saturating_sub(self.last_online) < window_secs
    }

    /// Stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the stored form.
    pub fn from_bytes(bytes: &[u8]) -> Option<State> {
        serde_json::from_slice(bytes).ok()
    }
}

/// 32 random bytes, hex: an access key.
pub fn fresh_key() -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Key of a contact record.
pub fn contact_key(node: &Node) -> Vec<u8> {
    format!("contact/{node}").into_bytes()
}

/// Prefix of every contact record.
pub const CONTACT_PREFIX: &[u8] = b"contact/";

/// Key of the index from our key to the contact presenting it.
pub fn key_index(our_key: &str) -> Vec<u8> {
    format!("key/{our_key}").into_bytes()
}

/// Key of a peer record.
pub fn peer_key(native: &str) -> Vec<u8> {
    format!("peer/{native}").into_bytes()
}

/// Key of a contact's state record.
pub fn state_key(node: &Node) -> Vec<u8> {
    format!("state/{node}").into_bytes()
}

/// Prefix of every state record.
pub const STATE_PREFIX: &[u8] = b"state/";

/// Prefix of every peer record.
pub const PEER_PREFIX: &[u8] = b"peer/";

/// The address in a record's key, after `prefix`.
pub fn after_prefix(key: &[u8], prefix: &[u8]) -> Option<String> {
    key.strip_prefix(prefix)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_know_when_a_contact_is_online() {
        let contact = Contact::new(1);
        assert_eq!(contact.our_key.len(), 64);
        assert_ne!(contact.our_key, Contact::new(1).our_key, "fresh keys");
        assert_eq!(Contact::from_bytes(&contact.to_bytes()), Some(contact));
        let state = State {
            last_online: 1000,
            ..State::default()
        };
        let back = State::from_bytes(&state.to_bytes()).unwrap();
        assert!(back.online(1100, 300));
        assert!(!back.online(1300, 300));
        assert!(!State::default().online(5, 300), "never seen");
        // Fields missing from a stored record take their defaults.
        let old = Contact::from_bytes(br#"{"nick":"x"}"#).unwrap();
        assert_eq!(old.can_resend, 0);
    }

    #[test]
    fn record_keys_carry_the_address() {
        let node = Node::parse("10.0.0.1:8000").unwrap();
        let key = contact_key(&node);
        assert_eq!(
            after_prefix(&key, CONTACT_PREFIX).as_deref(),
            Some("10.0.0.1:8000")
        );
        assert_eq!(after_prefix(b"other/x", CONTACT_PREFIX), None);
    }
}
