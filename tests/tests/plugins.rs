//! End to end: plugin loading (ABI check), panic isolation, and the TCP, TLS and HTTP
//! transports, against the real `hub` binary with the test-only plugins.

use hub_tests::harness::{http_request, Hub, HubOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

fn line_client(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

fn ask(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, line: &str) -> String {
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    reply.trim_end().to_owned()
}

#[test]
fn a_plugin_with_another_abi_version_is_refused_and_the_hub_starts_without_it() {
    let hub = Hub::start(HubOptions::with(&["json", "wrongabi"]));
    assert!(hub.has_plugin("json"));
    assert!(!hub.has_plugin("wrongabi"));
    let log = hub.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("libhub_plugin_wrong_abi.so"))
        .unwrap_or_else(|| panic!("no log line names the refused file:\n{log}"));
    assert!(
        refusal.contains("plugin ABI version 999")
            && refusal.contains("this hub speaks ABI version"),
        "the refusal names both versions: {refusal}"
    );
    assert_eq!(hub.http_get("/health").0, 200);
}

#[test]
fn plugins_take_the_hubs_allocator_unless_exported_with_their_own() {
    let hub = Hub::start(HubOptions::with(&["json", "retro", "testkit"]));
    let (status, body) = hub.http_get("/plugins");
    assert_eq!(status, 200);
    let plugins: serde_json::Value = serde_json::from_str(&body).unwrap();
    let allocator = |name: &str| {
        plugins
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {plugins}"))["allocator"]
            .clone()
    };
    assert_eq!(allocator("json"), "hub");
    assert_eq!(allocator("retro"), "hub");
    assert_eq!(allocator("testkit"), "own");
    // Both ways back work: a shared plugin's buffers are kept, an own one's copied.
    let (mut a, mut a_reader) = line_client(hub.addr("testkit", "tcp"));
    let long = "x".repeat(1000);
    assert_eq!(ask(&mut a, &mut a_reader, &format!("echo {long}")), long);
    let mut json = hub_tests::json_client::JsonClient::connect(hub.addr("json", "main")).unwrap();
    let reply = json.signup("alloc", "pw", "sha256").unwrap();
    assert_eq!(reply["resp_code"], 0, "{reply}");
}

#[test]
fn a_panicking_session_closes_only_its_own_connection() {
    let hub = Hub::start(HubOptions::with(&["testkit"]));
    let addr = hub.addr("testkit", "tcp");
    let (mut a, mut a_reader) = line_client(addr);
    let (mut b, mut b_reader) = line_client(addr);
    assert_eq!(ask(&mut a, &mut a_reader, "echo one"), "one");
    assert_eq!(ask(&mut b, &mut b_reader, "echo two"), "two");

    a.write_all(b"panic\n").unwrap();
    let mut rest = Vec::new();
    let read = a_reader.read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the panicking connection is closed"
    );

    assert_eq!(ask(&mut b, &mut b_reader, "echo still here"), "still here");
    let (mut c, mut c_reader) = line_client(addr);
    assert_eq!(ask(&mut c, &mut c_reader, "echo new"), "new");
    assert_eq!(
        hub.metric("hub_plugin_panics_total{plugin=\"testkit\"}"),
        Some(1.0)
    );
    // The log line is written before the close, but reaches the harness through a pipe
    // its own thread reads: wait for it rather than race it.
    assert!(
        hub.wait_log("plugin session panicked", Duration::from_secs(5)),
        "{}",
        hub.log()
    );
}

#[test]
fn tcp_tls_and_http_roles_work_and_oversized_lines_are_refused() {
    let hub = Hub::start(HubOptions::with(&["testkit"]));

    // TLS with the hub's self-signed certificate, pinned, host name checked.
    let cert_path = hub.data_dir.join("tls/cert.pem");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&cert_path).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let socket = TcpStream::connect(hub.addr("testkit", "tls")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    tls.write_all(b"echo over tls\n").unwrap();
    let mut reply = [0u8; 9];
    tls.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"over tls\n");

    // A line over the plugin's limit: refused, connection closed, hub fine.
    let (mut s, mut r) = line_client(hub.addr("testkit", "tcp"));
    s.write_all(&vec![b'x'; 5000]).unwrap();
    let mut reply = String::new();
    r.read_line(&mut reply).unwrap();
    assert_eq!(reply.trim_end(), "err too long");

    // HTTP role: a request is a session; a panic answers 500 and the next request works.
    let http = hub.addr("testkit", "http");
    assert_eq!(
        http_request(http, "POST", "/x?y=1", b"hello"),
        (200, "POST /x?y=1 hello".into())
    );
    assert_eq!(http_request(http, "POST", "/", b"panic").0, 500);
    assert_eq!(http_request(http, "GET", "/again", b"").0, 200);

    // Admin: health, connections and metrics.
    assert_eq!(hub.http_get("/health").0, 200);
    let (_, connections) = hub.http_get("/connections");
    assert!(
        connections.contains("\"plugin\":\"testkit\""),
        "{connections}"
    );
    assert!(
        hub.metric("hub_plugin_connections_total{plugin=\"testkit\"}")
            .unwrap()
            >= 2.0
    );
}
