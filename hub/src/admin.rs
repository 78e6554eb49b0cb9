//! Admin HTTP: `GET /health`, `/metrics` (Prometheus text), `/plugins`, `/connections`.

use crate::state::{HubState, PluginCounters};
use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

async fn health(hub: web::Data<Arc<HubState>>) -> HttpResponse {
    if hub.ready.load(Relaxed) {
        HttpResponse::Ok().content_type("text/plain").body("ok\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("starting\n")
    }
}

/// One per-plugin series: name, Prometheus type, help text, reader.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PluginCounters) -> i64,
);

async fn metrics(hub: web::Data<Arc<HubState>>) -> HttpResponse {
    let mut out = String::new();
    let per_plugin: [Series; 6] = [
        ("hub_plugin_connections", "gauge", "Open connections", |c| {
            c.connections.load(Relaxed)
        }),
        (
            "hub_plugin_connections_total",
            "counter",
            "Connections accepted",
            |c| c.accepted.load(Relaxed) as i64,
        ),
        (
            "hub_plugin_frames_in_total",
            "counter",
            "Frames, messages or requests received",
            |c| c.frames_in.load(Relaxed) as i64,
        ),
        (
            "hub_plugin_frames_out_total",
            "counter",
            "Frames, messages or responses sent",
            |c| c.frames_out.load(Relaxed) as i64,
        ),
        (
            "hub_plugin_commands_total",
            "counter",
            "Commands sent to the core",
            |c| c.commands.load(Relaxed) as i64,
        ),
        (
            "hub_plugin_panics_total",
            "counter",
            "Sessions closed because the plugin panicked",
            |c| c.panics.load(Relaxed) as i64,
        ),
    ];
    for (name, kind, help, read) in per_plugin {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for plugin in &hub.plugins {
            let _ = writeln!(
                out,
                "{name}{{plugin=\"{}\"}} {}",
                plugin.name(),
                read(&plugin.counters)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP hub_connections Open connections, all plugins\n# TYPE hub_connections gauge\nhub_connections {}",
        hub.connection_count()
    );
    hub.core.metrics().render(&mut out);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

async fn plugins(hub: web::Data<Arc<HubState>>) -> HttpResponse {
    let list: Vec<_> = hub
        .plugins
        .iter()
        .map(|plugin| {
            let listeners: Vec<_> = plugin
                .listeners
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|(role, addr)| {
                    let transport = plugin
                        .manifest
                        .roles
                        .iter()
                        .find(|r| r.name == role)
                        .map(|r| format!("{:?}", r.transport).to_lowercase());
                    json!({ "role": role, "addr": addr.to_string(), "transport": transport })
                })
                .collect();
            json!({
                "name": plugin.name(),
                "version": plugin.manifest.version,
                "protocol_version": plugin.manifest.protocol_version,
                "abi": hub_plugin_sdk::abi::ABI_VERSION,
                "allocator": crate::server::allocator_name(plugin.instance.library()),
                "file": plugin.instance.library().path().display().to_string(),
                "listeners": listeners,
            })
        })
        .collect();
    HttpResponse::Ok().json(list)
}

async fn connections(hub: web::Data<Arc<HubState>>) -> HttpResponse {
    HttpResponse::Ok().json(hub.connections())
}

/// Starts the admin server on the configured address; returns its handle and address.
pub fn start(
    hub: Arc<HubState>,
) -> anyhow::Result<(actix_web::dev::ServerHandle, std::net::SocketAddr)> {
    let listener = crate::listeners::bind(&hub.config.admin_listen.to_string())?;
    let local = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(hub.clone()))
            .route("/health", web::get().to(health))
            .route("/metrics", web::get().to(metrics))
            .route("/plugins", web::get().to(plugins))
            .route("/connections", web::get().to(connections))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((handle, local))
}
