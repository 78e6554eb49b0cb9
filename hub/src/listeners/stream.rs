//! TCP and TLS connections: an accept loop per listener hands sockets to a pool of
//! arbiters; each connection is an actor that feeds byte chunks to its plugin session
//! (which does its own framing) and writes what the session transmits.

use crate::driver::{feed, on_session_msg, Connection, Driver};
use crate::state::{Endpoint, HubState};
use actix::io::{WriteHandler, Writer};
use actix::prelude::*;
use bytes::BytesMut;
use hub_core::SessionMsg;
use hub_plugin_sdk::{CloseReason, Input, SessionInfo, Transmit};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{BytesCodec, FramedRead};

/// How long a TLS handshake may take.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// One stream connection over `S` (a TCP stream or a TLS stream).
pub struct StreamConn<S: AsyncRead + AsyncWrite + Unpin + 'static> {
    driver: Driver,
    writer: Writer<WriteHalf<S>, std::io::Error>,
    /// The peer closed its side (FIN) rather than failing.
    peer_eof: bool,
    /// Closing: the writer is flushing; input is ignored.
    closing: bool,
}

/// How long a closing connection may take to flush before it is dropped.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

impl<S: AsyncRead + AsyncWrite + Unpin + 'static> StreamConn<S> {
    /// Starts the actor for an accepted (and, for TLS, handshaken) stream.
    pub fn start(driver: Driver, stream: S) {
        let (read, write) = tokio::io::split(stream);
        StreamConn::create(move |ctx| {
            ctx.add_stream(FramedRead::new(read, BytesCodec::new()));
            StreamConn {
                driver,
                writer: Writer::new(write, ctx),
                peer_eof: false,
                closing: false,
            }
        });
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + 'static> Actor for StreamConn<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.driver.hub.limits().session_queue);
        self.driver.attach(ctx.address().recipient());
        feed(self, ctx, Input::Opened);
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        let clean = self.peer_eof;
        feed(self, ctx, Input::Closed { clean });
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + 'static> Connection for StreamConn<S> {
    fn driver(&mut self) -> &mut Driver {
        &mut self.driver
    }

    fn transmit(&mut self, _ctx: &mut Context<Self>, transmit: Transmit) {
        match transmit {
            Transmit::Bytes(bytes) => self.writer.write(&bytes),
            Transmit::Message(_) | Transmit::Response(_) => {
                let _enter = self.driver.span.enter();
                tracing::error!("plugin sent a non-stream transmit on a stream; dropped");
            }
        }
    }

    fn close(&mut self, ctx: &mut Context<Self>, reason: CloseReason) {
        {
            let _enter = self.driver.span.enter();
            tracing::debug!(reason = %reason.reason, "closing");
        }
        if self.closing {
            return;
        }
        self.closing = true;
        // Writer::close flushes what is buffered, shuts the write side down, then calls
        // WriteHandler::finished, which stops the actor. Stopping now would drop the
        // unflushed bytes; the timer bounds a peer that never reads.
        self.writer.close();
        ctx.run_later(CLOSE_FLUSH, |_, ctx| ctx.stop());
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + 'static> StreamHandler<Result<BytesMut, std::io::Error>>
    for StreamConn<S>
{
    fn handle(&mut self, item: Result<BytesMut, std::io::Error>, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        match item {
            Ok(chunk) => {
                self.driver.count_in();
                feed(self, ctx, Input::Bytes(chunk.to_vec()));
            }
            Err(error) => {
                {
                    let _enter = self.driver.span.enter();
                    tracing::debug!(%error, "read failed");
                }
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if !self.closing {
            self.peer_eof = true;
            ctx.stop();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + 'static> WriteHandler<std::io::Error> for StreamConn<S> {
    fn error(&mut self, error: std::io::Error, _ctx: &mut Self::Context) -> Running {
        let _enter = self.driver.span.enter();
        tracing::debug!(%error, "write failed");
        Running::Stop
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + 'static> Handler<SessionMsg> for StreamConn<S> {
    type Result = ();

    fn handle(&mut self, msg: SessionMsg, ctx: &mut Context<Self>) {
        on_session_msg(self, ctx, msg);
    }
}

/// Accepts connections on `listener` until the hub stops, spreading them over `workers`.
pub async fn accept_loop(
    hub: Arc<HubState>,
    endpoint: Arc<Endpoint>,
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    workers: Arc<Vec<ArbiterHandle>>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(plugin = %endpoint.plugin.name(), %error, "cannot accept on listener");
            return;
        }
    };
    let mut next = 0usize;
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(plugin = %endpoint.plugin.name(), %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        // Re-register the socket on the worker's own reactor.
        let Ok(socket) = socket.into_std() else {
            continue;
        };
        let worker = &workers[next % workers.len()];
        next += 1;
        let (hub, endpoint, tls) = (hub.clone(), endpoint.clone(), tls.clone());
        worker.spawn(async move {
            let Ok(socket) = TcpStream::from_std(socket) else { return };
            let info = SessionInfo {
                conn: hub.next_conn(),
                role: endpoint.role.name.clone(),
                transport: endpoint.role.transport,
                peer: peer.to_string(),
                local: socket
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            };
            let driver = match Driver::open(hub.clone(), endpoint.clone(), info) {
                Ok(driver) => driver,
                Err(error) => {
                    tracing::error!(plugin = %endpoint.plugin.name(), %error, "opening a session failed");
                    return;
                }
            };
            match tls {
                None => StreamConn::start(driver, socket),
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => StreamConn::start(driver, stream),
                    Ok(Err(error)) => {
                        let _enter = driver.span.enter();
                        tracing::info!(%error, "TLS handshake failed");
                    }
                    Err(_) => {
                        let _enter = driver.span.enter();
                        tracing::info!("TLS handshake timed out");
                    }
                },
            }
        });
    }
}
