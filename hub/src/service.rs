//! Plugins' background sessions (`Manifest::service`): one per plugin that asks, opened
//! once the listeners are up, with no client. It is driven like any session (events,
//! signals, timers, answers to its outbound requests); if it closes or fails it is opened
//! again after a pause, unless the hub is shutting down.

use crate::driver::{feed, on_session_msg, Connection, Driver};
use crate::state::{Endpoint, HubState, LoadedPlugin};
use actix::prelude::*;
use hub_core::SessionMsg;
use hub_plugin_sdk::{CloseReason, Input, Role, SessionInfo, Transmit, Transport};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Pause before a service session that ended is opened again.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// A service session's actor.
pub struct ServiceConn {
    driver: Driver,
    done: Option<oneshot::Sender<()>>,
}

impl Actor for ServiceConn {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.driver.hub.limits().session_queue);
        let addr = ctx.address().recipient();
        self.driver.attach(addr.clone());
        let (plugin, conn) = (
            self.driver.endpoint.plugin.name().to_owned(),
            self.driver.conn.conn,
        );
        self.driver.hub.core.register_service(&plugin, conn, addr);
        feed(self, ctx, Input::Opened);
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        feed(self, ctx, Input::Closed { clean: true });
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl Connection for ServiceConn {
    fn driver(&mut self) -> &mut Driver {
        &mut self.driver
    }

    fn transmit(&mut self, _ctx: &mut Context<Self>, _transmit: Transmit) {
        let _enter = self.driver.span.enter();
        tracing::error!("a service session has no client to transmit to; dropped");
    }

    fn close(&mut self, ctx: &mut Context<Self>, reason: CloseReason) {
        {
            let _enter = self.driver.span.enter();
            tracing::info!(reason = %reason.reason, "service session closed");
        }
        ctx.stop();
    }
}

impl Handler<SessionMsg> for ServiceConn {
    type Result = ();

    fn handle(&mut self, msg: SessionMsg, ctx: &mut Context<Self>) {
        on_session_msg(self, ctx, msg);
    }
}

/// Opens the service sessions of every plugin that wants one, and keeps them open.
pub fn start(hub: Arc<HubState>) {
    for plugin in hub.plugins.iter().filter(|p| p.manifest.service) {
        let (hub, plugin) = (hub.clone(), plugin.clone());
        actix::spawn(async move { supervise(hub, plugin).await });
    }
}

async fn supervise(hub: Arc<HubState>, plugin: Arc<LoadedPlugin>) {
    let endpoint = Arc::new(Endpoint {
        plugin: plugin.clone(),
        role: Role {
            name: "service".into(),
            transport: Transport::Service,
            default_listen: String::new(),
            max_frame: 0,
        },
    });
    // The service speaks for the plugin's first listener (e.g. its own P2P address).
    let local = plugin
        .listeners
        .lock()
        .ok()
        .and_then(|l| l.first().map(|(_, addr)| addr.to_string()))
        .unwrap_or_default();
    while hub.ready.load(Relaxed) {
        let info = SessionInfo {
            conn: hub.next_conn(),
            role: "service".into(),
            transport: Transport::Service,
            peer: String::new(),
            local: local.clone(),
        };
        match Driver::open(hub.clone(), endpoint.clone(), info) {
            Ok(driver) => {
                let (done, ended) = oneshot::channel();
                ServiceConn {
                    driver,
                    done: Some(done),
                }
                .start();
                let _ = ended.await;
            }
            Err(error) => {
                tracing::error!(plugin = %plugin.name(), %error, "opening the service session failed")
            }
        }
        if !hub.ready.load(Relaxed) {
            break;
        }
        tracing::warn!(plugin = %plugin.name(), "service session ended; opening it again");
        tokio::time::sleep(REOPEN_AFTER).await;
    }
}
