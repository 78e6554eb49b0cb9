//! What a plugin tells the hub about itself before any session exists.

use serde::{Deserialize, Serialize};

/// How the hub carries a role's bytes to and from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    /// Plain TCP: the session gets byte chunks ([`crate::Input::Bytes`]) and frames them itself.
    Tcp,
    /// TLS over TCP with the hub's certificate: byte chunks after decryption.
    Tls,
    /// WebSocket: the session gets whole messages ([`crate::Input::Message`]).
    WebSocket,
    /// HTTP/1.1: one session per request ([`crate::Input::Request`]), answered with one
    /// [`crate::Transmit::Response`].
    Http,
    /// No transport: the plugin's long-lived background session ([`Manifest::service`]).
    Service,
}

/// One listener the plugin wants, e.g. Retro's `chat` and `file` servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Role name used in config: `plugins.<plugin>.listen.<role>`.
    pub name: String,
    /// Transport the hub runs for this role.
    pub transport: Transport,
    /// Default listen address, e.g. `0.0.0.0:6969`.
    pub default_listen: String,
    /// Largest single frame/message/request body the hub buffers for this role, in bytes.
    /// Larger input is refused before it is buffered ([`crate::Input::TooLarge`]).
    pub max_frame: u32,
}

/// Static description of a plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Plugin name, also its config section: `plugins.<name>`.
    pub name: String,
    /// Version of the plugin crate.
    pub version: String,
    /// Version of the wire protocol spoken.
    pub protocol_version: String,
    /// The listeners this plugin needs, at least one.
    pub roles: Vec<Role>,
    /// Long-lived key pairs the hub keeps for the plugin (made on first start in
    /// `<data_dir>/keys/<plugin>/<name>.pem`) and hands to
    /// [`crate::Protocol::from_config`] in the config's `"$keys"` object, as
    /// `name → PEM` (PKCS#8). Plugins touch no files; this is how they get a secret
    /// that outlives the process.
    pub keys: Vec<KeySpec>,
    /// The plugin wants one long-lived background session, opened at start with
    /// [`Transport::Service`] and no client (for work no connection carries: P2P's
    /// pinging, retrying and relaying). If it closes or fails, the hub opens it again.
    pub service: bool,
}

/// A key pair a plugin needs (see [`Manifest::keys`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpec {
    /// File stem and `"$keys"` entry, e.g. `server`.
    pub name: String,
    /// What kind of key.
    pub kind: KeyKind,
}

/// Kinds of key pairs the hub can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyKind {
    /// RSA with a 2048-bit modulus, public exponent 65537.
    Rsa2048,
}
