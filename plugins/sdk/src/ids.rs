//! Identifier newtypes shared by the hub, the core and every plugin.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_newtype!(
    /// A hub-wide user. Retro shows it as its 8-byte user id (big-endian).
    UserId
);
id_newtype!(
    /// A hub room (cchat chat room, `#name` for JSON and XDR clients).
    RoomId
);
id_newtype!(
    /// One live client connection (or one HTTP request) inside this hub process.
    ConnId
);
id_newtype!(
    /// The persistent id of one hub event, unique across the hub's lifetime.
    EventId
);
id_newtype!(
    /// One voice/video call handled by a call actor.
    CallId
);
id_newtype!(
    /// A position in one recipient's event stream. Starts at 1, grows by 1.
    Seq
);

/// Correlates a [`crate::Command`] with the [`crate::HubEvent::Answer`] that answers it.
///
/// Plugins choose the values; the hub only echoes them. `CorrelationId(0)` is reserved
/// for commands that want no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CorrelationId(pub u64);

impl CorrelationId {
    /// The id for a command whose answer nobody waits for.
    pub const NONE: CorrelationId = CorrelationId(0);
}
