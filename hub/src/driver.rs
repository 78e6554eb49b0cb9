//! Drives one plugin session inside a connection actor, the way quinn's
//! `ConnectionDriver` drives `quinn-proto`: feed an input, drain the outputs, act on
//! them (transmit, ask the core, close, log, arm the timer).
//!
//! Transport actors (WebSocket, TCP/TLS) implement [`Connection`]; [`feed`] is the one
//! place where outputs are interpreted.

use crate::loader::{PluginSession, SessionFault};
use crate::state::{Endpoint, HubState};
use actix::prelude::*;
use hub_core::{ConnContext, SessionMsg};
use hub_plugin_sdk::{
    CloseReason, CorrelationId, HubEvent, Input, LogLevel, Output, SessionInfo, Transmit,
};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Writes a plugin's `Output::Log` line at its level (call inside the connection's or
/// request's span: `tracing` does not cross the plugin boundary).
pub fn log_plugin_line(level: LogLevel, message: &str) {
    match level {
        LogLevel::Trace => tracing::trace!("{message}"),
        LogLevel::Debug => tracing::debug!("{message}"),
        LogLevel::Info => tracing::info!("{message}"),
        LogLevel::Warn => tracing::warn!("{message}"),
        LogLevel::Error => tracing::error!("{message}"),
    }
}

/// The IP part of an `ip:port` peer address.
pub fn peer_ip(peer: &str) -> String {
    peer.parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| peer.to_owned())
}

/// A plugin session plus what the hub tracks for it.
pub struct Driver {
    /// The listener it came in on.
    pub endpoint: Arc<Endpoint>,
    /// Shared hub state.
    pub hub: Arc<HubState>,
    session: PluginSession,
    /// The core's view of the connection.
    pub conn: ConnContext,
    /// The armed timer and the time it fires at (`Now::mono_ms`); it may fire before
    /// `deadline`, which then arms it again.
    timer: Option<(SpawnHandle, u64)>,
    /// When the session wants `Input::Timeout` (its last `Output::Timeout`).
    deadline: Option<u64>,
    /// Span for the connection's log lines.
    pub span: tracing::Span,
    closed_fed: bool,
    reported_user: bool,
    info: SessionInfo,
    /// Delivery bytes handed to the transport and not yet reported to the core, per
    /// stream carried (the session's own, puppets').
    unreported: std::collections::HashMap<hub_plugin_sdk::UserId, usize>,
    /// The same for the pushes of each room the session is present in.
    room_unreported: Vec<(hub_plugin_sdk::RoomRef, usize)>,
}

/// Consumption is reported to the core in steps of this many bytes.
const REPORT_STEP: usize = 64 * 1024;

/// Rooms whose unreported consumption one connection tracks at most.
const ROOMS_TRACKED: usize = 64;

impl Driver {
    /// Opens a plugin session for a new connection.
    pub fn open(
        hub: Arc<HubState>,
        endpoint: Arc<Endpoint>,
        info: SessionInfo,
    ) -> Result<Driver, SessionFault> {
        let span = tracing::info_span!(
            "conn",
            id = info.conn.0,
            plugin = %endpoint.plugin.name(),
            role = %info.role,
            peer = %info.peer
        );
        let session = endpoint.plugin.instance.open(&info)?;
        endpoint.plugin.counters.connections.fetch_add(1, Relaxed);
        endpoint.plugin.counters.accepted.fetch_add(1, Relaxed);
        span.in_scope(|| tracing::debug!("connection opened"));
        Ok(Driver {
            conn: ConnContext::new(
                info.conn,
                endpoint.plugin.name(),
                &peer_ip(&info.peer),
                None,
            ),
            info,
            endpoint,
            hub,
            session,
            timer: None,
            deadline: None,
            span,
            closed_fed: false,
            reported_user: false,
            unreported: std::collections::HashMap::new(),
            room_unreported: Vec::new(),
        })
    }

    /// Gives the driver its actor's address (for deliveries) and lists the connection;
    /// call from the actor's `started`.
    pub fn attach(&mut self, addr: hub_core::SessionAddr) {
        let info = &self.info;
        self.hub.register(
            info.conn,
            self.endpoint.plugin.name(),
            &info.role,
            &info.peer,
            Some(addr.clone()),
        );
        self.conn.addr = Some(addr);
    }

    /// Counts `bytes` of `user`'s stream as handed on; reports them in steps.
    fn stream_consumed(&mut self, user: hub_plugin_sdk::UserId, bytes: usize) {
        let unreported = self.unreported.entry(user).or_insert(0);
        *unreported += bytes;
        if *unreported >= REPORT_STEP {
            self.hub.core.consumed(&self.conn, user, *unreported);
            *unreported = 0;
        }
    }

    /// Counts `bytes` of a room's pushes as handed on; reports them in steps.
    fn room_consumed(&mut self, room: &hub_plugin_sdk::RoomRef, bytes: usize) {
        let index = match self.room_unreported.iter().position(|(r, _)| r == room) {
            Some(index) => index,
            None => {
                // Bounded: the oldest room's count is reported and forgotten.
                if self.room_unreported.len() >= ROOMS_TRACKED {
                    let (old, bytes) = self.room_unreported.remove(0);
                    self.hub.core.room_consumed(&self.conn, &old, bytes);
                }
                self.room_unreported.push((room.clone(), 0));
                self.room_unreported.len() - 1
            }
        };
        let entry = &mut self.room_unreported[index];
        entry.1 += bytes;
        if entry.1 >= REPORT_STEP {
            self.hub.core.room_consumed(&self.conn, &entry.0, entry.1);
            entry.1 = 0;
        }
    }

    /// Counts one inbound frame.
    pub fn count_in(&self) {
        self.endpoint
            .plugin
            .counters
            .frames_in
            .fetch_add(1, Relaxed);
    }

    /// Counts one outbound frame.
    pub fn count_out(&self) {
        self.endpoint
            .plugin
            .counters
            .frames_out
            .fetch_add(1, Relaxed);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.hub.core.disconnect(&mut self.conn);
        self.hub.unregister(self.conn.conn);
        self.endpoint
            .plugin
            .counters
            .connections
            .fetch_sub(1, Relaxed);
        self.span.in_scope(|| tracing::debug!("connection closed"));
    }
}

/// A transport actor that hosts a [`Driver`].
pub trait Connection: Actor + Sized
where
    Self::Context: AsyncContext<Self>,
{
    /// The driver.
    fn driver(&mut self) -> &mut Driver;
    /// Sends bytes to the client.
    fn transmit(&mut self, ctx: &mut Self::Context, transmit: Transmit);
    /// Closes the transport (after what was transmitted).
    fn close(&mut self, ctx: &mut Self::Context, reason: CloseReason);
}

/// Feeds one input to the session and carries out its outputs.
pub fn feed<A>(act: &mut A, ctx: &mut A::Context, input: Input)
where
    A: Connection,
    A::Context: AsyncContext<A>,
{
    let driver = act.driver();
    let closing = matches!(input, Input::Closed { .. });
    if closing {
        if driver.closed_fed {
            return;
        }
        driver.closed_fed = true;
    } else if driver.closed_fed {
        return;
    }
    let now = driver.hub.now();
    let outputs = match driver.session.drive(now, &input) {
        Ok(outputs) => outputs,
        Err(fault) => {
            let _enter = driver.span.enter();
            if matches!(fault, SessionFault::Panic(_)) {
                driver.endpoint.plugin.counters.panics.fetch_add(1, Relaxed);
                tracing::error!(error = %fault, "plugin session panicked; closing this connection only");
            } else {
                tracing::error!(error = %fault, "plugin session failed; closing this connection");
            }
            drop(_enter);
            if !closing {
                act.close(
                    ctx,
                    CloseReason {
                        code: Some(1011),
                        reason: "internal error".into(),
                    },
                );
            }
            return;
        }
    };
    for output in outputs {
        match output {
            Output::Transmit(transmit) => {
                if !closing {
                    act.driver().count_out();
                    act.transmit(ctx, transmit);
                }
            }
            Output::Command(command) => run_command(act, ctx, command),
            Output::Fetch(request) => {
                if !closing {
                    let limits = act.driver().hub.fetch.clone();
                    ctx.spawn(crate::fetch::fetch(limits, request).into_actor(act).map(
                        |(id, result), act, ctx| feed(act, ctx, Input::Fetched { id, result }),
                    ));
                }
            }
            Output::Close(reason) => {
                if !closing {
                    act.close(ctx, reason);
                }
            }
            Output::Log { level, message } => {
                let driver = act.driver();
                driver.span.in_scope(|| log_plugin_line(level, &message));
            }
            Output::Timeout(deadline) => {
                if closing {
                    continue;
                }
                let driver = act.driver();
                driver.deadline = deadline;
                // Sessions restate their deadline after every input and usually move it
                // later (a retry pushed back): a timer that fires too early costs one
                // wake-up and is armed again, where re-arming on each input would cost a
                // timer per message. Only an earlier deadline replaces the armed timer.
                let early_enough = match (deadline, driver.timer) {
                    (None, _) => true,
                    (Some(wanted), Some((_, armed))) => armed <= wanted,
                    (Some(_), None) => false,
                };
                if !early_enough {
                    if let Some((timer, _)) = driver.timer.take() {
                        ctx.cancel_future(timer);
                    }
                    arm_timer(act, ctx, now.mono_ms);
                }
            }
        }
    }
    let driver = act.driver();
    if !driver.reported_user {
        if let Some(me) = &driver.conn.identity {
            driver.hub.set_user(driver.conn.conn, &me.handle);
            driver.reported_user = true;
        }
    }
}

/// Arms the timer for the session's deadline, if it has one (none is armed).
fn arm_timer<A>(act: &mut A, ctx: &mut A::Context, now_ms: u64)
where
    A: Connection,
    A::Context: AsyncContext<A>,
{
    let Some(deadline) = act.driver().deadline else {
        return;
    };
    let wait = Duration::from_millis(deadline.saturating_sub(now_ms));
    let handle = ctx.run_later(wait, |act, ctx| {
        let driver = act.driver();
        driver.timer = None;
        let now_ms = driver.hub.now().mono_ms;
        match driver.deadline {
            Some(deadline) if deadline <= now_ms => feed(act, ctx, Input::Timeout),
            // The deadline moved later after this timer was armed.
            Some(_) => arm_timer(act, ctx, now_ms),
            None => {}
        }
    });
    act.driver().timer = Some((handle, deadline));
}

fn run_command<A>(act: &mut A, ctx: &mut A::Context, command: hub_plugin_sdk::Command)
where
    A: Connection,
    A::Context: AsyncContext<A>,
{
    let driver = act.driver();
    driver
        .endpoint
        .plugin
        .counters
        .commands
        .fetch_add(1, Relaxed);
    let pending = driver.hub.core.execute(&mut driver.conn, command.op);
    let id = command.id;
    ctx.spawn(pending.into_actor(act).map(move |result, act, ctx| {
        if id != CorrelationId::NONE {
            feed(act, ctx, Input::Event(HubEvent::Answer { id, result }));
        }
    }));
}

/// What every connection actor does with a [`SessionMsg`] from the core.
pub fn on_session_msg<A>(act: &mut A, ctx: &mut A::Context, msg: SessionMsg)
where
    A: Connection,
    A::Context: AsyncContext<A>,
{
    match msg {
        SessionMsg::Event(event) => {
            match &event {
                HubEvent::Deliver(delivery) => {
                    let driver = act.driver();
                    if let Some(me) = driver.conn.identity.as_ref().map(|me| me.id) {
                        driver.stream_consumed(me, hub_core::delivery_size(delivery));
                    }
                }
                HubEvent::PuppetDeliver { user, delivery } => {
                    act.driver()
                        .stream_consumed(*user, hub_core::delivery_size(delivery));
                }
                HubEvent::RoomDeliver(delivery) => {
                    if let hub_plugin_sdk::Target::Room(room) = &delivery.event.to {
                        act.driver()
                            .room_consumed(room, hub_core::delivery_size(delivery));
                    }
                }
                _ => {}
            }
            feed(act, ctx, Input::Event(event))
        }
        SessionMsg::PageDone { user } => {
            let driver = act.driver();
            // MoreBacklog resets the core's count for this stream.
            driver.unreported.remove(&user);
            driver.hub.core.more_backlog(&driver.conn, user);
        }
    }
}
