//! Configuration: the layered sources (built-in defaults, `config/hub.toml`, `--config`,
//! `HUB__...` environment) parsed once into validated types.

use anyhow::{bail, Context};
use hub_core::store::Durability;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The documented default configuration, compiled in as the base layer.
pub const DEFAULTS: &str = include_str!("../../config/hub.toml");

#[derive(Debug, Deserialize)]
struct Raw {
    data_dir: PathBuf,
    plugins_dir: PathBuf,
    admin: RawAdmin,
    log: RawLog,
    store: RawStore,
    limits: Limits,
    accounts: RawAccounts,
    calls: RawCalls,
    core: RawCore,
    rooms: RawRooms,
    tls: TlsConfig,
    #[serde(default)]
    plugins: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct RawAdmin {
    listen: String,
}

#[derive(Debug, Deserialize)]
struct RawLog {
    level: String,
}

#[derive(Debug, Deserialize)]
struct RawStore {
    durability: String,
    flush_interval_ms: u64,
}

#[derive(Debug, Deserialize)]
struct RawAccounts {
    pbkdf2_iterations: u32,
    session_ttl_secs: u64,
}

#[derive(Debug, Deserialize)]
struct RawCalls {
    ring_timeout_secs: u64,
}

#[derive(Debug, Deserialize)]
struct RawRooms {
    key_timeout_secs: u64,
    max_present: usize,
}

#[derive(Debug, Deserialize)]
struct RawCore {
    user_threads: usize,
    user_idle_secs: u64,
}

/// Per-connection limits.
#[derive(Clone, Debug, Deserialize)]
pub struct Limits {
    /// Events queued to a connection before it is dropped as a slow reader.
    pub session_queue: usize,
    /// Bytes of events queued to a connection before it is dropped as a slow reader.
    pub session_queue_bytes: usize,
    /// Stored events per backlog page.
    pub backlog_page: usize,
    /// WebSocket ping interval, seconds.
    pub ws_ping_secs: u64,
    /// WebSocket idle limit, seconds.
    pub ws_idle_secs: u64,
    /// HTTP plugin request time limit, seconds.
    pub http_request_secs: u64,
    /// Plugins' outbound HTTP requests in flight at once, hub-wide.
    pub fetch_in_flight: usize,
    /// Longest time an outbound request may take, milliseconds.
    pub fetch_timeout_ms: u64,
    /// Largest response body of an outbound request, bytes.
    pub fetch_max_body: usize,
}

/// TLS settings.
#[derive(Clone, Debug, Deserialize)]
pub struct TlsConfig {
    /// Certificate PEM path (empty: self-signed in the data directory).
    pub cert: String,
    /// Key PEM path.
    pub key: String,
    /// Host name for the self-signed certificate.
    pub hostname: String,
}

/// One plugin's section as the hub reads it.
#[derive(Clone, Debug)]
pub struct PluginSection {
    /// Load it?
    pub enabled: bool,
    /// Listen address per role (overrides of the manifest's defaults).
    pub listen: BTreeMap<String, String>,
    /// Frame limit override.
    pub max_frame: Option<u32>,
    /// The whole section, handed to the plugin.
    pub raw: serde_json::Value,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Plugin directory.
    pub plugins_dir: PathBuf,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// Log filter.
    pub log_level: String,
    /// Store durability.
    pub durability: Durability,
    /// Limits.
    pub limits: Limits,
    /// Core settings.
    pub core: hub_core::CoreSettings,
    /// TLS settings.
    pub tls: TlsConfig,
    /// Plugin sections by name.
    pub plugins: BTreeMap<String, serde_json::Value>,
}

impl HubConfig {
    /// Loads the layers. `explicit` is the `--config` file, which must exist.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<HubConfig> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        let local = Path::new("config/hub.toml");
        if local.is_file() {
            builder = builder.add_source(config::File::from(local).required(true));
        }
        if let Some(path) = explicit {
            if !path.is_file() {
                bail!("config file {} does not exist", path.display());
            }
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("HUB")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let raw: Raw = builder
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .context("configuration has a wrong key or value")?;
        Self::validate(raw)
    }

    fn validate(raw: Raw) -> anyhow::Result<HubConfig> {
        let durability = match raw.store.durability.as_str() {
            "flush" => Durability::Flush,
            "interval" => {
                if raw.store.flush_interval_ms == 0 {
                    bail!("store.flush_interval_ms must be at least 1");
                }
                Durability::Interval(Duration::from_millis(raw.store.flush_interval_ms))
            }
            other => bail!("store.durability must be \"flush\" or \"interval\", not {other:?}"),
        };
        let admin_listen = raw
            .admin
            .listen
            .parse()
            .with_context(|| format!("admin.listen {:?} is not ip:port", raw.admin.listen))?;
        if raw.limits.session_queue < 16 {
            bail!("limits.session_queue must be at least 16");
        }
        if raw.limits.session_queue_bytes < 256 * 1024 {
            bail!("limits.session_queue_bytes must be at least 262144");
        }
        if raw.limits.backlog_page == 0 || raw.limits.backlog_page * 2 > raw.limits.session_queue {
            bail!("limits.backlog_page must be between 1 and half of limits.session_queue");
        }
        if raw.limits.fetch_in_flight == 0 || raw.limits.fetch_timeout_ms == 0 {
            bail!("limits.fetch_in_flight and limits.fetch_timeout_ms must be at least 1");
        }
        if raw.limits.ws_ping_secs == 0 || raw.limits.ws_idle_secs <= raw.limits.ws_ping_secs {
            bail!("limits.ws_idle_secs must be greater than limits.ws_ping_secs (> 0)");
        }
        let core = hub_core::CoreSettings {
            accounts: hub_core::accounts::AccountPolicy {
                pbkdf2_iterations: raw.accounts.pbkdf2_iterations.max(1),
                token_ttl_ms: raw.accounts.session_ttl_secs.saturating_mul(1000),
            },
            ring_timeout: Duration::from_secs(raw.calls.ring_timeout_secs.max(1)),
            user_idle: Duration::from_secs(raw.core.user_idle_secs.max(1)),
            backlog_page: raw.limits.backlog_page,
            user_threads: raw.core.user_threads.clamp(1, 64),
            files_dir: raw.data_dir.join("files"),
            session_queue_bytes: raw.limits.session_queue_bytes,
            key_timeout: Duration::from_secs(raw.rooms.key_timeout_secs.max(1)),
            max_present: raw.rooms.max_present.max(1),
        };
        Ok(HubConfig {
            data_dir: raw.data_dir,
            plugins_dir: raw.plugins_dir,
            admin_listen,
            log_level: raw.log.level,
            durability,
            limits: raw.limits,
            core,
            tls: raw.tls,
            plugins: raw.plugins,
        })
    }

    /// The hub's view of a plugin's section (an absent section means all defaults).
    pub fn plugin(&self, name: &str) -> anyhow::Result<PluginSection> {
        let raw = self
            .plugins
            .get(name)
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        let enabled = match raw.get("enabled") {
            None => true,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(other) => bail!("plugins.{name}.enabled must be true or false, not {other}"),
        };
        let mut listen = BTreeMap::new();
        if let Some(map) = raw.get("listen") {
            let Some(map) = map.as_object() else {
                bail!("plugins.{name}.listen must be a table of role = \"ip:port\"");
            };
            for (role, addr) in map {
                let Some(addr) = addr.as_str() else {
                    bail!("plugins.{name}.listen.{role} must be a string \"ip:port\"");
                };
                listen.insert(role.clone(), addr.to_owned());
            }
        }
        let max_frame = match raw.get("max_frame") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n >= 64)
                    .with_context(|| {
                        format!("plugins.{name}.max_frame must be a number of bytes >= 64")
                    })?,
            ),
        };
        Ok(PluginSection {
            enabled,
            listen,
            max_frame,
            raw,
        })
    }
}
