//! Outbound HTTP requests made for plugins (`Output::Fetch`), with awc: plain HTTP/1.1,
//! bounded in number (`limits.fetch_in_flight`, a semaphore shared by every session),
//! in time (the plugin's timeout, capped by `limits.fetch_timeout_ms`) and in response
//! size (`limits.fetch_max_body`).

use hub_plugin_sdk::{FetchError, FetchRequest, HttpResponse};
use std::sync::Arc;
use std::time::Duration;

/// The limits every fetch obeys.
#[derive(Clone, Debug)]
pub struct FetchLimits {
    /// Requests in flight at once, hub-wide.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Longest time a request may take.
    pub max_timeout: Duration,
    /// Largest response body.
    pub max_body: usize,
}

thread_local! {
    /// awc's client is not `Send`: one per arbiter thread and source address, each with
    /// its connection pool (plugins use one or two source addresses).
    static CLIENTS: std::cell::RefCell<std::collections::HashMap<Option<std::net::IpAddr>, awc::Client>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The client sending from `from` (made on first use on this thread).
fn client(from: Option<std::net::IpAddr>) -> awc::Client {
    CLIENTS.with(|clients| {
        clients
            .borrow_mut()
            .entry(from)
            .or_insert_with(|| {
                let mut connector = awc::Connector::new();
                if let Some(ip) = from {
                    connector = connector.local_address(ip);
                }
                awc::Client::builder()
                    .connector(connector)
                    .disable_redirects()
                    .finish()
            })
            .clone()
    })
}

/// Performs `request`; resolves with its id and the response (or why there is none).
pub async fn fetch(
    limits: FetchLimits,
    request: FetchRequest,
) -> (u64, Result<HttpResponse, FetchError>) {
    let id = request.id;
    let timeout = Duration::from_millis(request.timeout_ms.max(1)).min(limits.max_timeout);
    let work = async {
        // Waiting for a slot counts against the request's own time.
        let _permit = limits
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| FetchError::Unreachable("the hub is shutting down".into()))?;
        perform(&request, timeout, limits.max_body).await
    };
    let result = match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout),
    };
    (id, result)
}

async fn perform(
    request: &FetchRequest,
    timeout: Duration,
    max_body: usize,
) -> Result<HttpResponse, FetchError> {
    if !request.url.starts_with("http://") {
        return Err(FetchError::Invalid(format!(
            "only http:// URLs can be fetched, not {:?}",
            request.url
        )));
    }
    let method = awc::http::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| FetchError::Invalid(format!("method {:?}", request.method)))?;
    let from = match &request.from_ip {
        Some(ip) => Some(
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| FetchError::Invalid(format!("source address {ip:?}")))?,
        ),
        None => None,
    };
    let mut builder = client(from).request(method, &request.url);
    builder = builder.timeout(timeout);
    for (name, value) in &request.headers {
        builder = builder.insert_header((name.as_str(), value.as_str()));
    }
    let mut response = builder
        .send_body(request.body.clone())
        .await
        .map_err(|e| match e {
            awc::error::SendRequestError::Timeout => FetchError::Timeout,
            awc::error::SendRequestError::Url(e) => FetchError::Invalid(e.to_string()),
            other => FetchError::Unreachable(other.to_string()),
        })?;
    let body = response.body().limit(max_body).await.map_err(|e| match e {
        awc::error::PayloadError::Overflow => FetchError::TooLarge,
        other => FetchError::Unreachable(other.to_string()),
    })?;
    let headers = crate::listeners::http::header_pairs(response.headers());
    Ok(HttpResponse {
        status: response.status().as_u16(),
        headers,
        body: body.to_vec(),
    })
}
