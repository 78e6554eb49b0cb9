//! What every listener and connection shares: the core, the loaded plugins, the
//! connection registry and the hub's own metrics.

use crate::config::{HubConfig, Limits};
use crate::loader::Instance;
use hub_core::{Core, SessionAddr};
use hub_plugin_sdk::{ConnId, Manifest, Role};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Per-plugin counters (atomics: no lock on the message path).
#[derive(Default, Debug)]
pub struct PluginCounters {
    /// Connections open now.
    pub connections: AtomicI64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Frames / messages / requests received.
    pub frames_in: AtomicU64,
    /// Frames / messages / responses sent.
    pub frames_out: AtomicU64,
    /// Sessions closed because the plugin panicked.
    pub panics: AtomicU64,
    /// Commands sent to the core.
    pub commands: AtomicU64,
}

/// A loaded, instantiated plugin.
pub struct LoadedPlugin {
    /// Manifest.
    pub manifest: Manifest,
    /// The instance sessions are opened from.
    pub instance: Arc<Instance>,
    /// Counters.
    pub counters: PluginCounters,
    /// Bound listeners (filled at start).
    pub listeners: Mutex<Vec<(String, SocketAddr)>>,
}

impl LoadedPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }
}

/// One (plugin, role) listener.
pub struct Endpoint {
    /// The plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// The role, with the effective frame limit.
    pub role: Role,
}

/// A row of `GET /connections`.
#[derive(Clone, Debug, Serialize)]
pub struct ConnRow {
    /// Connection id.
    pub id: u64,
    /// Plugin.
    pub plugin: String,
    /// Role.
    pub role: String,
    /// Peer address.
    pub peer: String,
    /// Signed-in user's handle, once known.
    pub user: Option<String>,
    /// Seconds since the connection opened (filled when listed).
    pub age_secs: u64,
    #[serde(skip)]
    opened: Option<Instant>,
    #[serde(skip)]
    addr: Option<SessionAddr>,
}

/// Shared hub state.
pub struct HubState {
    /// The core.
    pub core: Core,
    /// Config.
    pub config: HubConfig,
    /// Monotonic clock origin for `Now::mono_ms`.
    pub started: Instant,
    next_conn: AtomicU64,
    connections: Mutex<HashMap<ConnId, ConnRow>>,
    /// Set once every listener is up.
    pub ready: AtomicBool,
    /// Loaded plugins.
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// What plugins' outbound requests obey.
    pub fetch: crate::fetch::FetchLimits,
}

impl HubState {
    /// New state.
    pub fn new(core: Core, config: HubConfig, plugins: Vec<Arc<LoadedPlugin>>) -> Self {
        let fetch = crate::fetch::FetchLimits {
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.limits.fetch_in_flight)),
            max_timeout: std::time::Duration::from_millis(config.limits.fetch_timeout_ms),
            max_body: config.limits.fetch_max_body,
        };
        HubState {
            core,
            config,
            started: Instant::now(),
            next_conn: AtomicU64::new(1),
            connections: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            fetch,
            plugins,
        }
    }

    /// Limits.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The hub clock.
    pub fn now(&self) -> hub_plugin_sdk::Now {
        hub_plugin_sdk::Now {
            mono_ms: self.started.elapsed().as_millis() as u64,
            unix_ms: hub_core::actors::unix_ms(),
        }
    }

    /// A fresh connection id.
    pub fn next_conn(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Relaxed))
    }

    /// Registers an open connection (connect/disconnect only, never per message).
    pub fn register(
        &self,
        id: ConnId,
        plugin: &str,
        role: &str,
        peer: &str,
        addr: Option<SessionAddr>,
    ) {
        let row = ConnRow {
            id: id.0,
            plugin: plugin.into(),
            role: role.into(),
            peer: peer.into(),
            user: None,
            age_secs: 0,
            opened: Some(Instant::now()),
            addr,
        };
        if let Ok(mut map) = self.connections.lock() {
            map.insert(id, row);
        }
    }

    /// Records the signed-in user of a connection.
    pub fn set_user(&self, id: ConnId, handle: &str) {
        if let Ok(mut map) = self.connections.lock() {
            if let Some(row) = map.get_mut(&id) {
                row.user = Some(handle.to_owned());
            }
        }
    }

    /// Forgets a closed connection.
    pub fn unregister(&self, id: ConnId) {
        if let Ok(mut map) = self.connections.lock() {
            map.remove(&id);
        }
    }

    /// The open connections, by id.
    pub fn connections(&self) -> Vec<ConnRow> {
        let mut rows: Vec<ConnRow> = match self.connections.lock() {
            Ok(map) => map.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        for row in &mut rows {
            row.age_secs = row.opened.map_or(0, |t| t.elapsed().as_secs());
        }
        rows.sort_by_key(|r| r.id);
        rows
    }

    /// Sessions to tell about a shutdown.
    pub fn session_addrs(&self) -> Vec<SessionAddr> {
        match self.connections.lock() {
            Ok(map) => map.values().filter_map(|r| r.addr.clone()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.lock().map(|m| m.len()).unwrap_or(0)
    }
}
