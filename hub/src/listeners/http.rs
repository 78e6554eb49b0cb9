//! HTTP roles: each request is one short plugin session fed `Opened` then `Request`,
//! driven until it transmits its `Response` (commands answered meanwhile), within a time
//! limit.

use crate::loader::SessionFault;
use crate::state::{Endpoint, HubState};
use actix_web::HttpResponse;
use hub_core::ConnContext;
use hub_plugin_sdk::{CorrelationId, HttpRequest, HubEvent, Input, Output, SessionInfo, Transmit};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// HTTP headers as the plugin SDK carries them: (name, value) pairs, values read as
/// UTF-8 with anything else replaced. For requests the hub serves and responses to
/// the requests it fetches for plugins alike.
pub(crate) fn header_pairs(headers: &actix_web::http::header::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn plain(status: u16, text: &str) -> HttpResponse {
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
    )
    .content_type("text/plain; charset=utf-8")
    .body(text.to_owned())
}

/// Serves one request through the endpoint's plugin.
pub async fn serve(
    hub: Arc<HubState>,
    endpoint: Arc<Endpoint>,
    peer: String,
    local: String,
    request: HttpRequest,
) -> HttpResponse {
    let counters = &endpoint.plugin.counters;
    counters.frames_in.fetch_add(1, Relaxed);
    let info = SessionInfo {
        conn: hub.next_conn(),
        role: endpoint.role.name.clone(),
        transport: endpoint.role.transport,
        peer,
        local,
    };
    let span = tracing::info_span!("request", id = info.conn.0, plugin = %endpoint.plugin.name(), peer = %info.peer);
    let mut session = match endpoint.plugin.instance.open(&info) {
        Ok(session) => session,
        Err(error) => {
            span.in_scope(|| tracing::error!(%error, "opening a session failed"));
            return plain(500, "internal error");
        }
    };
    let mut conn = ConnContext::new(
        info.conn,
        endpoint.plugin.name(),
        &crate::driver::peer_ip(&info.peer),
        None,
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Input>();
    let limit = Instant::now() + Duration::from_secs(hub.limits().http_request_secs);
    let mut timer: Option<Instant> = None;
    let mut inputs = VecDeque::from([Input::Opened, Input::Request(request)]);
    loop {
        while let Some(input) = inputs.pop_front() {
            let now = hub.now();
            let outputs = match session.drive(now, &input) {
                Ok(outputs) => outputs,
                Err(fault) => {
                    if matches!(fault, SessionFault::Panic(_)) {
                        counters.panics.fetch_add(1, Relaxed);
                    }
                    span.in_scope(
                        || tracing::error!(error = %fault, "plugin failed serving a request"),
                    );
                    return plain(500, "internal error");
                }
            };
            for output in outputs {
                match output {
                    Output::Transmit(Transmit::Response(response)) => {
                        counters.frames_out.fetch_add(1, Relaxed);
                        let status = actix_web::http::StatusCode::from_u16(response.status)
                            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
                        let mut builder = HttpResponse::build(status);
                        for (name, value) in response.headers {
                            builder.insert_header((name, value));
                        }
                        return builder.body(response.body);
                    }
                    Output::Transmit(_) => {
                        span.in_scope(|| {
                            tracing::error!("plugin sent a non-HTTP transmit; dropped")
                        });
                    }
                    Output::Command(command) => {
                        counters.commands.fetch_add(1, Relaxed);
                        let pending = hub.core.execute(&mut conn, command.op);
                        let (tx, id) = (tx.clone(), command.id);
                        actix_web::rt::spawn(async move {
                            let result = pending.await;
                            if id != CorrelationId::NONE {
                                let _ = tx.send(Input::Event(HubEvent::Answer { id, result }));
                            }
                        });
                    }
                    Output::Close(reason) => {
                        span.in_scope(|| tracing::debug!(reason = %reason.reason, "plugin closed without a response"));
                        return plain(400, &reason.reason);
                    }
                    Output::Fetch(fetch) => {
                        // A request session lives for one answer: outbound requests belong
                        // to the plugin's service session.
                        let _ = tx.send(Input::Fetched {
                            id: fetch.id,
                            result: Err(hub_plugin_sdk::FetchError::Unsupported),
                        });
                    }
                    Output::Log { level, message } => {
                        span.in_scope(|| crate::driver::log_plugin_line(level, &message))
                    }
                    Output::Timeout(deadline) => {
                        timer = deadline.map(|d| {
                            Instant::now() + Duration::from_millis(d.saturating_sub(now.mono_ms))
                        });
                    }
                }
            }
        }
        let wake = timer.unwrap_or(limit).min(limit);
        tokio::select! {
            input = rx.recv() => match input {
                Some(input) => inputs.push_back(input),
                None => return plain(500, "internal error"),
            },
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= limit {
                    span.in_scope(|| tracing::warn!("request timed out"));
                    return plain(504, "the request took too long");
                }
                timer = None;
                inputs.push_back(Input::Timeout);
            }
        }
    }
}
