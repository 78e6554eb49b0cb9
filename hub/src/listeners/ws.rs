//! WebSocket connections: one actix-web-actors actor per connection, whole messages in
//! and out, frames over the role's limit refused by the codec before they are buffered.

use crate::driver::{feed, on_session_msg, Connection, Driver};
use actix::prelude::*;
use actix_web_actors::ws;
use hub_core::SessionMsg;
use hub_plugin_sdk::{CloseReason, Input, Transmit, WsMessage};
use std::time::{Duration, Instant};

/// A fragmented message being reassembled.
struct Fragments {
    text: bool,
    bytes: Vec<u8>,
}

/// One WebSocket connection.
pub struct WsConn {
    driver: Driver,
    max_frame: usize,
    last_seen: Instant,
    /// The client sent a close frame (an orderly goodbye).
    client_closed: bool,
    /// A close frame was sent: send no other.
    closing: bool,
    fragments: Option<Fragments>,
}

impl WsConn {
    /// Wraps an opened driver.
    pub fn new(driver: Driver) -> Self {
        let max_frame = driver.endpoint.role.max_frame as usize;
        WsConn {
            driver,
            max_frame,
            last_seen: Instant::now(),
            client_closed: false,
            closing: false,
            fragments: None,
        }
    }

    fn message(&mut self, ctx: &mut ws::WebsocketContext<Self>, text: bool, bytes: Vec<u8>) {
        self.driver.count_in();
        let message = if text {
            match String::from_utf8(bytes) {
                Ok(text) => WsMessage::Text(text),
                Err(_) => {
                    // RFC 6455: invalid UTF-8 in a text message fails the connection (1007).
                    self.close(
                        ctx,
                        CloseReason {
                            code: Some(1007),
                            reason: "invalid UTF-8".into(),
                        },
                    );
                    return;
                }
            }
        } else {
            WsMessage::Binary(bytes)
        };
        feed(self, ctx, Input::Message(message));
    }

    fn too_large(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let limit = self.max_frame as u32;
        {
            let _enter = self.driver.span.enter();
            tracing::warn!(limit, "frame over the size limit refused");
        }
        feed(self, ctx, Input::TooLarge { limit });
        // Whatever the plugin said, an oversized frame ends the connection.
        self.close(
            ctx,
            CloseReason {
                code: Some(1009),
                reason: "frame too large".into(),
            },
        );
    }
}

impl Actor for WsConn {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.driver.hub.limits().session_queue);
        self.driver.attach(ctx.address().recipient());
        let ping = Duration::from_secs(self.driver.hub.limits().ws_ping_secs);
        let idle = Duration::from_secs(self.driver.hub.limits().ws_idle_secs);
        ctx.run_interval(ping, move |act, ctx| {
            if act.last_seen.elapsed() > idle {
                {
                    let _enter = act.driver.span.enter();
                    tracing::info!("closing an idle connection");
                }
                act.close(
                    ctx,
                    CloseReason {
                        code: Some(1001),
                        reason: "idle".into(),
                    },
                );
            } else {
                ctx.ping(b"");
            }
        });
        feed(self, ctx, Input::Opened);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let clean = self.client_closed;
        feed(self, ctx, Input::Closed { clean });
    }
}

impl Connection for WsConn {
    fn driver(&mut self) -> &mut Driver {
        &mut self.driver
    }

    fn transmit(&mut self, ctx: &mut Self::Context, transmit: Transmit) {
        match transmit {
            Transmit::Message(WsMessage::Text(text)) => ctx.text(text),
            Transmit::Message(WsMessage::Binary(bytes)) => ctx.binary(bytes),
            Transmit::Message(WsMessage::Ping(payload)) => ctx.ping(&payload),
            Transmit::Message(WsMessage::Pong(payload)) => ctx.pong(&payload),
            Transmit::Bytes(_) | Transmit::Response(_) => {
                let _enter = self.driver.span.enter();
                tracing::error!("plugin sent a non-WebSocket transmit on a WebSocket; dropped");
            }
        }
    }

    fn close(&mut self, ctx: &mut Self::Context, reason: CloseReason) {
        if std::mem::replace(&mut self.closing, true) {
            return;
        }
        let code = reason
            .code
            .map_or(ws::CloseCode::Normal, ws::CloseCode::from);
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(reason.reason),
        }));
        ctx.stop();
    }
}

impl Handler<SessionMsg> for WsConn {
    type Result = ();

    fn handle(&mut self, msg: SessionMsg, ctx: &mut Self::Context) {
        on_session_msg(self, ctx, msg);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsConn {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        let message = match item {
            Ok(message) => message,
            Err(ws::ProtocolError::Overflow) => return self.too_large(ctx),
            Err(error) => {
                {
                    let _enter = self.driver.span.enter();
                    tracing::warn!(%error, "WebSocket protocol error");
                }
                return self.close(
                    ctx,
                    CloseReason {
                        code: Some(1002),
                        reason: "protocol error".into(),
                    },
                );
            }
        };
        match message {
            ws::Message::Text(text) => {
                let text: &str = &text;
                self.driver.count_in();
                feed(self, ctx, Input::Message(WsMessage::Text(text.to_owned())));
            }
            ws::Message::Binary(bytes) => self.message(ctx, false, bytes.to_vec()),
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(payload) => {
                feed(self, ctx, Input::Message(WsMessage::Pong(payload.to_vec())))
            }
            ws::Message::Close(_) => {
                self.client_closed = true;
                self.close(
                    ctx,
                    CloseReason {
                        code: Some(1000),
                        reason: String::new(),
                    },
                );
            }
            ws::Message::Continuation(item) => {
                use actix_http::ws::Item;
                let (first, text, bytes, last) = match item {
                    Item::FirstText(b) => (true, true, b, false),
                    Item::FirstBinary(b) => (true, false, b, false),
                    Item::Continue(b) => (false, false, b, false),
                    Item::Last(b) => (false, false, b, true),
                };
                if first {
                    self.fragments = Some(Fragments {
                        text,
                        bytes: Vec::new(),
                    });
                }
                let Some(fragments) = self.fragments.as_mut() else {
                    return self.close(
                        ctx,
                        CloseReason {
                            code: Some(1002),
                            reason: "continuation without a start".into(),
                        },
                    );
                };
                if fragments.bytes.len() + bytes.len() > self.max_frame {
                    self.fragments = None;
                    return self.too_large(ctx);
                }
                fragments.bytes.extend_from_slice(&bytes);
                if last {
                    if let Some(done) = self.fragments.take() {
                        self.message(ctx, done.text, done.bytes);
                    }
                }
            }
            ws::Message::Nop => {}
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
