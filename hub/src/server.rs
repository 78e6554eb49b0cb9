//! `run(config, shutdown)`: opens the store, starts the core, loads plugins, binds
//! listeners and the admin server, then waits for `shutdown` and stops in order: stop
//! accepting, tell sessions goodbye, flush the store.

use crate::config::HubConfig;
use crate::keys;
use crate::loader::{self, Library};
use crate::state::{HubState, LoadedPlugin, PluginCounters};
use anyhow::Context;
use hub_core::metrics::Metrics;
use hub_core::store::{SledStore, Storage};
use hub_core::{Core, SessionMsg};
use hub_plugin_sdk::{HubEvent, Transport};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Loads every plugin library in the plugins directory. A library that fails (wrong ABI,
/// not a plugin, refused config, duplicate name) is logged and skipped.
pub fn load_plugins(config: &HubConfig) -> anyhow::Result<Vec<Arc<LoadedPlugin>>> {
    let dir = &config.plugins_dir;
    let files = loader::discover(dir)
        .with_context(|| format!("reading the plugins directory {}", dir.display()))?;
    let mut loaded = Vec::new();
    let mut names = HashSet::new();
    for path in files {
        let library = match Library::load(&path) {
            Ok(library) => library,
            Err(error) => {
                tracing::error!(file = %path.display(), %error, "plugin not loaded");
                continue;
            }
        };
        let manifest = library.manifest().clone();
        if !names.insert(manifest.name.clone()) {
            tracing::error!(file = %path.display(), plugin = %manifest.name, "another library already provides this plugin; not loaded");
            continue;
        }
        let section = config.plugin(&manifest.name)?;
        if !section.enabled {
            tracing::info!(plugin = %manifest.name, "plugin disabled in config");
            continue;
        }
        if manifest.roles.is_empty() {
            tracing::error!(file = %path.display(), plugin = %manifest.name, "plugin declares no roles; not loaded");
            continue;
        }
        let plugin_config = match keys::with_keys(
            &config.data_dir,
            &manifest.name,
            &manifest.keys,
            &section.raw,
        ) {
            Ok(plugin_config) => plugin_config,
            Err(error) => {
                tracing::error!(plugin = %manifest.name, error = %format!("{error:#}"), "the plugin's keys are not available; not loaded");
                continue;
            }
        };
        let instance = match library.instantiate(&plugin_config) {
            Ok(instance) => instance,
            Err(error) => {
                tracing::error!(plugin = %manifest.name, %error, "plugin refused its config; not loaded");
                continue;
            }
        };
        let allocator = allocator_name(&library);
        tracing::info!(plugin = %manifest.name, version = %manifest.version, file = %path.display(), allocator, "plugin loaded");
        loaded.push(Arc::new(LoadedPlugin {
            manifest,
            instance,
            counters: PluginCounters::default(),
            listeners: Mutex::new(Vec::new()),
        }));
    }
    if loaded.is_empty() {
        tracing::warn!(dir = %dir.display(), "no plugins loaded: the hub serves only its admin address");
    }
    Ok(loaded)
}

/// Which allocator a plugin's library uses, as `GET /plugins` and the log name it: the
/// hub's, or its own (a plugin exported with `own_allocator`, or one that allocated
/// before the hub offered it).
pub fn allocator_name(library: &Library) -> &'static str {
    if library.shares_allocator() {
        "hub"
    } else {
        "own"
    }
}

/// Opens the store in `<data_dir>/store`.
pub fn open_store(config: &HubConfig, metrics: Arc<Metrics>) -> anyhow::Result<Arc<SledStore>> {
    let dir = config.data_dir.join("store");
    let store = SledStore::open(&dir, config.durability, metrics)
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    Ok(Arc::new(store))
}

/// Every connection is a file descriptor: raise the soft open-file limit to the hard
/// one (the operator's ceiling) and log what the hub got.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Runs the hub until `shutdown` resolves. Call inside an actix system.
pub async fn run(config: HubConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let started = Instant::now();
    raise_open_file_limit();
    let metrics = Arc::new(Metrics::default());
    let store = open_store(&config, metrics.clone())?;
    let core = Core::start(store.clone(), metrics, config.core.clone());
    let plugins = load_plugins(&config)?;
    let needs_tls = plugins.iter().any(|p| {
        p.manifest
            .roles
            .iter()
            .any(|r| r.transport == Transport::Tls)
    });
    let tls = if needs_tls {
        Some(crate::tls::acceptor(&config)?)
    } else {
        None
    };
    let hub = Arc::new(HubState::new(core, config, plugins));
    let mut running = crate::listeners::start(hub.clone(), tls)?;
    let (admin, admin_addr) = crate::admin::start(hub.clone())?;
    hub.ready.store(true, Relaxed);
    crate::service::start(hub.clone());
    tracing::info!(
        admin = %admin_addr,
        plugins = hub.plugins.len(),
        listeners = running.bound.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "hub ready"
    );

    shutdown.await;
    tracing::info!("shutting down: closing listeners");
    hub.ready.store(false, Relaxed);
    running.stop_accepting().await;
    // Tell every session goodbye in its protocol's own way, then give them a moment.
    for addr in hub.session_addrs() {
        addr.do_send(SessionMsg::Event(HubEvent::Shutdown));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while hub.connection_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(web) = running.web {
        web.stop(true).await;
    }
    admin.stop(true).await;
    tracing::info!("flushing the store");
    store.close();
    store.flush_now().context("final store flush")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signals() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(error) => {
                tracing::error!(%error, "cannot watch SIGTERM; only Ctrl-C stops the hub");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
            _ = term.recv() => tracing::info!("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
