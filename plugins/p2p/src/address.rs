//! P2P addresses: a node is `host:port` (IPv4, or bracketed IPv6 as on cjdns); a user on
//! a node is `handle@host:port`; a room of a node is `#name@host:port`.

use std::net::{IpAddr, SocketAddr};

/// A node address, normalised (`1.2.3.4:8000`, `[fc00::1]:8000`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node(String);

impl Node {
    /// Parses `host:port` with a literal IP address.
    pub fn parse(text: &str) -> Option<Node> {
        let addr: SocketAddr = text.trim().parse().ok()?;
        if addr.port() == 0 {
            return None;
        }
        Some(Node(addr.to_string()))
    }

    /// The address as written on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host part (no port, no brackets), as the sample dialect's `addr`.
    pub fn host(&self) -> String {
        self.0
            .parse::<SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_default()
    }

    /// The base URL of the node's API.
    pub fn url(&self) -> String {
        format!("http://{}/", self.0)
    }

    /// The node's IP address.
    pub fn ip(&self) -> Option<IpAddr> {
        self.0.parse::<SocketAddr>().ok().map(|a| a.ip())
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an address names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The node itself (its owner).
    Node(Node),
    /// A user of the node.
    User {
        /// The user's handle on that node.
        handle: String,
        /// The node.
        node: Node,
    },
    /// A room of the node.
    Room {
        /// Room name without `#`.
        name: String,
        /// The node.
        node: Node,
    },
}

impl Target {
    /// Parses `host:port`, `handle@host:port` or `#room@host:port`.
    pub fn parse(text: &str) -> Option<Target> {
        match text.rsplit_once('@') {
            None => Node::parse(text).map(Target::Node),
            Some((name, node)) => {
                let node = Node::parse(node)?;
                if name.is_empty() || name.chars().any(char::is_control) || name.len() > 128 {
                    return None;
                }
                Some(match name.strip_prefix('#') {
                    Some(room) if !room.is_empty() => Target::Room {
                        name: room.to_owned(),
                        node,
                    },
                    Some(_) => return None,
                    None => Target::User {
                        handle: name.to_owned(),
                        node,
                    },
                })
            }
        }
    }

    /// The node part.
    pub fn node(&self) -> &Node {
        match self {
            Target::Node(node) | Target::User { node, .. } | Target::Room { node, .. } => node,
        }
    }

    /// The address as written on the wire.
    pub fn text(&self) -> String {
        match self {
            Target::Node(node) => node.to_string(),
            Target::User { handle, node } => format!("{handle}@{node}"),
            Target::Room { name, node } => format!("#{name}@{node}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_ip_and_port_normalised() {
        assert_eq!(
            Node::parse("127.0.0.2:8000").unwrap().as_str(),
            "127.0.0.2:8000"
        );
        assert_eq!(Node::parse("[fc00::1]:8000").unwrap().host(), "fc00::1");
        assert_eq!(
            Node::parse("[FC00:0::1]:8000").unwrap().as_str(),
            "[fc00::1]:8000"
        );
        assert!(
            Node::parse("example.org:8000").is_none(),
            "literal IPs only"
        );
        assert!(Node::parse("127.0.0.1").is_none());
        assert!(Node::parse("127.0.0.1:0").is_none());
        assert_eq!(
            Node::parse("127.0.0.1:80").unwrap().url(),
            "http://127.0.0.1:80/"
        );
    }

    #[test]
    fn targets_name_a_node_a_user_or_a_room() {
        let node = Node::parse("10.0.0.1:8000").unwrap();
        assert_eq!(
            Target::parse("10.0.0.1:8000"),
            Some(Target::Node(node.clone()))
        );
        assert_eq!(
            Target::parse("bob@10.0.0.1:8000"),
            Some(Target::User {
                handle: "bob".into(),
                node: node.clone()
            })
        );
        assert_eq!(
            Target::parse("#lobby@10.0.0.1:8000"),
            Some(Target::Room {
                name: "lobby".into(),
                node: node.clone()
            })
        );
        assert_eq!(
            Target::parse("a@b@10.0.0.1:8000").unwrap().text(),
            "a@b@10.0.0.1:8000",
            "the last @ separates the node"
        );
        assert!(Target::parse("#@10.0.0.1:8000").is_none());
        assert!(Target::parse("@10.0.0.1:8000").is_none());
        assert!(Target::parse("bob@nowhere").is_none());
    }
}
