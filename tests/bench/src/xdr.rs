//! XDR: handshake time (RSA-OAEP both ways and a PSS proof, with the store lookups), and
//! messages per second among 50 clients each writing to the next. Frames are signed
//! before the timed phase: RSA-PSS signing is the client's cost, not the hub's.

use crate::common::{percentile, StartLine};
use crate::report::Row;
use hub_tests::harness::{Hub, HubOptions};
use hub_tests::xdr_client::{crypto, payload, XdrClient};
use rsa::RsaPrivateKey;
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

/// Runs the scenario: `clients` clients, `messages` messages each.
pub fn run(clients: usize, messages: usize) -> Vec<Row> {
    // Client keys in parallel (RSA key generation is slow).
    let keys: Vec<RsaPrivateKey> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|half| {
                scope.spawn(move || {
                    (0..clients)
                        .filter(|n| n % 2 == half)
                        .map(|n| (n, crypto::generate_client_key()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut keys: Vec<(usize, RsaPrivateKey)> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("key generation"))
            .collect();
        keys.sort_by_key(|(n, _)| *n);
        keys.into_iter().map(|(_, key)| key).collect()
    });
    let mut server_pem = String::new();
    let hub = Hub::start_after(
        HubOptions::with(&["xdr"]).env("HUB__LOG__LEVEL", "warn,hub=info"),
        |hub| {
            let (ok, out, err) = hub.cli(&["xdr", "server-key"], "");
            assert!(ok, "server-key: {err}");
            server_pem = out;
            for (n, key) in keys.iter().enumerate() {
                let pem = crypto::public_spki_pem(&key.to_public_key());
                let id = format!("c{n}");
                let (ok, _, err) =
                    hub.cli(&["xdr", "add-client", "--id", &id, "--pubkey", "-"], &pem);
                assert!(ok, "add-client: {err}");
            }
        },
    );
    let server = crypto::parse_spki_pem(&server_pem).expect("server key");
    let addr = hub.addr("xdr", "main");

    let mut handshakes = Vec::new();
    let mut connected = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let began = Instant::now();
        let (client, _) =
            XdrClient::connect(addr, &format!("c{n}"), key, &server, -1).expect("handshake");
        // The handshake is done when the hub answers: WhoAmI proves it is live.
        client.whoami().expect("live after the handshake");
        handshakes.push(began.elapsed().as_secs_f64() * 1e3);
        connected.push(client);
    }
    handshakes.sort_by(f64::total_cmp);

    let text = "x".repeat(100);
    let frames: Vec<Vec<Vec<u8>>> = connected
        .iter()
        .enumerate()
        .map(|(n, client)| {
            let to = format!("c{}", (n + 1) % clients);
            let payloads: Vec<_> = (0..messages)
                .map(|_| payload::send_message(&to, &text, serde_json::Value::Null))
                .collect();
            client.prepare_inbox(&payloads).expect("frames")
        })
        .collect();
    let clients_arc: Vec<Arc<XdrClient>> = connected.into_iter().map(Arc::new).collect();
    let start = StartLine::new(clients);
    let senders: Vec<_> = clients_arc
        .iter()
        .zip(frames)
        .map(|(client, frames)| {
            let (client, start) = (client.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for frame in frames {
                    client.send_raw(&frame).expect("send");
                }
            })
        })
        .collect();
    start.release();
    for sender in senders {
        sender.join().expect("sender");
    }
    for client in &clients_arc {
        client
            .wait_outbox_count(messages, T)
            .expect("every message arrives");
    }
    let elapsed = start.began().elapsed().as_secs_f64();
    let total = (clients * messages) as f64;
    vec![
        Row {
            label: format!("{clients} handshakes"),
            figures: vec![
                ("handshake_p50_ms", percentile(&handshakes, 0.5)),
                ("handshake_p99_ms", percentile(&handshakes, 0.99)),
            ],
        },
        Row {
            label: format!("{clients} clients, ring"),
            figures: vec![
                ("messages", total),
                ("seconds", elapsed),
                ("msgs_per_sec", total / elapsed),
            ],
        },
    ]
}
