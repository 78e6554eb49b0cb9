//! Listeners: one per (plugin, role). WebSocket and HTTP roles share one actix-web
//! server (dispatching on the listener a request arrived at); TCP and TLS roles get an
//! accept loop each.

pub mod http;
pub mod stream;
pub mod ws;

use crate::driver::Driver;
use crate::state::{Endpoint, HubState};
use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context as _;
use hub_plugin_sdk::{SessionInfo, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// What `start` left running.
pub struct Running {
    /// The shared WebSocket/HTTP server, if any role needs it.
    pub web: Option<actix_web::dev::ServerHandle>,
    /// Every bound listener: (plugin, role, address).
    pub bound: Vec<(String, String, SocketAddr)>,
    /// The TCP/TLS accept loops (aborted to stop accepting).
    pub accept_loops: Vec<actix_rt::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting new connections on every listener; open ones go on.
    pub async fn stop_accepting(&mut self) {
        for accept_loop in self.accept_loops.drain(..) {
            accept_loop.abort();
        }
        if let Some(web) = &self.web {
            web.pause().await;
        }
    }
}

/// Binds a listening socket with SO_REUSEADDR (a restarted hub can rebind at once).
pub fn bind(addr: &str) -> anyhow::Result<std::net::TcpListener> {
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("listen address {addr:?} is not ip:port"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn dispatch(
    request: HttpRequest,
    payload: web::Payload,
    hub: web::Data<Arc<HubState>>,
    endpoints: web::Data<Arc<HashMap<SocketAddr, Arc<Endpoint>>>>,
) -> HttpResponse {
    let local = request.app_config().local_addr();
    let Some(endpoint) = endpoints.get(&local).cloned() else {
        return HttpResponse::NotFound().finish();
    };
    let hub = hub.get_ref().clone();
    let peer = request
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    let max_frame = endpoint.role.max_frame as usize;
    match endpoint.role.transport {
        Transport::WebSocket => {
            let info = SessionInfo {
                conn: hub.next_conn(),
                role: endpoint.role.name.clone(),
                transport: Transport::WebSocket,
                peer,
                local: local.to_string(),
            };
            let driver = match Driver::open(hub, endpoint.clone(), info) {
                Ok(driver) => driver,
                Err(error) => {
                    tracing::error!(plugin = %endpoint.plugin.name(), %error, "opening a session failed");
                    return HttpResponse::InternalServerError().finish();
                }
            };
            match actix_web_actors::ws::WsResponseBuilder::new(
                ws::WsConn::new(driver),
                &request,
                payload,
            )
            .frame_size(max_frame)
            .start()
            {
                Ok(response) => response,
                Err(error) => HttpResponse::BadRequest().body(format!(
                    "this port speaks WebSocket ({}): {error}\n",
                    endpoint.plugin.name()
                )),
            }
        }
        Transport::Http => {
            let body = match payload.to_bytes_limited(max_frame).await {
                Ok(Ok(body)) => body,
                Ok(Err(_)) => return HttpResponse::BadRequest().body("unreadable body\n"),
                Err(_) => {
                    return HttpResponse::PayloadTooLarge()
                        .body(format!("body over {max_frame} bytes\n"))
                }
            };
            let headers = http::header_pairs(request.headers());
            let target = request
                .uri()
                .path_and_query()
                .map(|pq| pq.as_str().to_owned())
                .unwrap_or_else(|| "/".into());
            let plugin_request = hub_plugin_sdk::HttpRequest {
                method: request.method().as_str().to_owned(),
                target,
                headers,
                body: body.to_vec(),
            };
            http::serve(hub, endpoint, peer, local.to_string(), plugin_request).await
        }
        Transport::Tcp | Transport::Tls | Transport::Service => {
            HttpResponse::InternalServerError().finish()
        }
    }
}

/// Binds every enabled plugin's roles and starts serving them.
pub fn start(hub: Arc<HubState>, tls: Option<TlsAcceptor>) -> anyhow::Result<Running> {
    let mut web_endpoints: HashMap<SocketAddr, Arc<Endpoint>> = HashMap::new();
    let mut web_listeners = Vec::new();
    let mut bound = Vec::new();
    let mut accept_loops = Vec::new();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stream_workers: Arc<Vec<ArbiterHandle>> =
        Arc::new((0..threads).map(|_| Arbiter::new().handle()).collect());
    for plugin in &hub.plugins {
        let section = hub.config.plugin(plugin.name())?;
        for role in &plugin.manifest.roles {
            let addr = section
                .listen
                .get(&role.name)
                .cloned()
                .unwrap_or_else(|| role.default_listen.clone());
            let listener = bind(&addr)
                .with_context(|| format!("plugin {} role {}", plugin.name(), role.name))?;
            let local = listener.local_addr()?;
            let mut role = role.clone();
            if let Some(max_frame) = section.max_frame {
                role.max_frame = max_frame;
            }
            let endpoint = Arc::new(Endpoint {
                plugin: plugin.clone(),
                role: role.clone(),
            });
            if let Ok(mut listeners) = plugin.listeners.lock() {
                listeners.push((role.name.clone(), local));
            }
            bound.push((plugin.name().to_owned(), role.name.clone(), local));
            tracing::info!(plugin = %plugin.name(), role = %role.name, transport = ?role.transport, addr = %local, "listening");
            match role.transport {
                Transport::WebSocket | Transport::Http => {
                    web_endpoints.insert(local, endpoint);
                    web_listeners.push(listener);
                }
                Transport::Tcp => {
                    actix_rt::spawn(stream::accept_loop(
                        hub.clone(),
                        endpoint,
                        listener,
                        None,
                        stream_workers.clone(),
                    ));
                }
                Transport::Service => {
                    anyhow::bail!(
                        "plugin {} role {}: a role cannot be a service (use Manifest::service)",
                        plugin.name(),
                        role.name
                    );
                }
                Transport::Tls => {
                    let acceptor = tls
                        .clone()
                        .context("a TLS role needs the hub's TLS configuration")?;
                    accept_loops.push(actix_rt::spawn(stream::accept_loop(
                        hub.clone(),
                        endpoint,
                        listener,
                        Some(acceptor),
                        stream_workers.clone(),
                    )));
                }
            }
        }
    }
    let web = if web_listeners.is_empty() {
        None
    } else {
        let endpoints = Arc::new(web_endpoints);
        let state = hub.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .app_data(web::Data::new(endpoints.clone()))
                .default_service(web::to(dispatch))
        })
        .workers(threads)
        // Chat frames are small and each should leave at once: without TCP_NODELAY a
        // frame written while the previous one waits for its TCP ACK is held back
        // (Nagle) until the peer's delayed ACK, tens of milliseconds. The stream
        // listeners set it on their sockets too.
        .tcp_nodelay(true)
        .disable_signals()
        .shutdown_timeout(2);
        for listener in web_listeners {
            server = server.listen(listener)?;
        }
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Some(handle)
    };
    Ok(Running {
        web,
        bound,
        accept_loops,
    })
}
