//! Retro 1:1: N pairs of Retro clients over TLS doing the real client-side crypto
//! (RSA-OAEP header, AES-256-CBC, HMAC, Ed25519). First each pair plays ping-pong
//! (round-trip time: A → hub → B, B → hub → A, both sealed and opened), then every A
//! sends M messages to its B (throughput, measured until every B has all of them).

use crate::common::{join_pairs, percentile, StartLine};
use crate::report::Row;
use hub_tests::harness::{Hub, HubOptions};
use hub_tests::retro_client::{kind, Identity, Packet, RetroClient};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Scenario parameters.
pub struct Params {
    /// Pairs.
    pub pairs: usize,
    /// Ping-pong rounds per pair.
    pub rounds: usize,
    /// Messages per sender in the throughput phase.
    pub messages: usize,
}

const T: Duration = Duration::from_secs(60);

fn next_chat(client: &mut RetroClient) -> Packet {
    loop {
        let packet = client.recv_packet(T).expect("packet");
        if packet.kind == kind::CHATMSG {
            return packet;
        }
    }
}

struct Side {
    client: RetroClient,
    keys: Identity,
    id: u64,
}

fn side(chat: std::net::SocketAddr, cert: &Path, regkey: &str) -> Side {
    let keys = Identity::generate();
    let id = RetroClient::connect(chat, cert, 1)
        .expect("connect")
        .register(regkey, &keys)
        .expect("register");
    let mut client = RetroClient::connect(chat, cert, 1).expect("connect");
    client.login(id, &keys).expect("login");
    Side { client, keys, id }
}

/// Runs the scenario: (round-trip row, throughput row).
pub fn run(params: Params) -> (Row, Row) {
    let mut hub = Hub::start(HubOptions::with(&["retro"]).env("HUB__LOG__LEVEL", "warn,hub=info"));
    hub.kill();
    let (ok, keys, err) = hub.cli(
        &["regkey", "new", "--count", &(params.pairs * 2).to_string()],
        "",
    );
    assert!(ok, "{err}");
    hub.restart();
    let keys: Vec<String> = keys.lines().map(str::to_owned).collect();
    let chat = hub.addr("retro", "chat");
    let cert = hub.data_dir.join("tls/cert.pem");

    let setup_started = Instant::now();
    let start = Arc::new(Barrier::new(params.pairs + 1));
    let blast = StartLine::new(params.pairs * 2);
    let mut workers = Vec::new();
    for pair in 0..params.pairs {
        let (cert, key_a, key_b) = (
            cert.clone(),
            keys[2 * pair].clone(),
            keys[2 * pair + 1].clone(),
        );
        let (start, blast) = (start.clone(), blast.clone());
        let (rounds, messages) = (params.rounds, params.messages);
        workers.push(std::thread::spawn(move || {
            let mut a = side(chat, &cert, &key_a);
            let mut b = side(chat, &cert, &key_b);
            let (pem_b, _) = a.client.get_pubkey(b.id).expect("pubkey");
            let (pem_a, _) = b.client.get_pubkey(a.id).expect("pubkey");
            start.wait();
            let mut rtts = Vec::with_capacity(rounds);
            for round in 0..rounds {
                let sent = Instant::now();
                a.client
                    .send_chat(&a.keys, a.id, b.id, &pem_b, &format!("ping {round}"))
                    .expect("send");
                let ping = next_chat(&mut b.client);
                let (_, text) = b
                    .client
                    .open_chat(&b.keys, &pem_a, &ping.payload)
                    .expect("open");
                b.client
                    .send_chat(&b.keys, b.id, a.id, &pem_a, &text)
                    .expect("send");
                let pong = next_chat(&mut a.client);
                a.client
                    .open_chat(&a.keys, &pem_b, &pong.payload)
                    .expect("open");
                rtts.push(sent.elapsed().as_secs_f64() * 1e3);
            }
            // Throughput: B receives on its own thread while A sends.
            let b_id = b.id;
            let receiver = {
                let blast = blast.clone();
                let mut b = b;
                std::thread::spawn(move || {
                    blast.wait();
                    for _ in 0..messages {
                        next_chat(&mut b.client);
                    }
                    Instant::now()
                })
            };
            blast.wait();
            for n in 0..messages {
                let text = format!("{n:0>100}");
                a.client
                    .send_chat(&a.keys, a.id, b_id, &pem_b, &text)
                    .expect("send");
            }
            (rtts, receiver.join().expect("receiver"))
        }));
    }
    start.wait();
    let setup = setup_started.elapsed();
    blast.release();
    // Each pair returns its round trips and when its B had every message.
    let (mut rtts, elapsed) = join_pairs(&blast, workers, Vec::new());
    rtts.sort_by(f64::total_cmp);
    let elapsed = elapsed.as_secs_f64();
    let total = (params.pairs * params.messages) as f64;
    (
        Row {
            label: format!("{} pairs, round trip", params.pairs),
            figures: vec![
                ("round_trips", rtts.len() as f64),
                ("rtt_p50_ms", percentile(&rtts, 0.5)),
                ("rtt_p99_ms", percentile(&rtts, 0.99)),
                ("setup_s", setup.as_secs_f64()),
            ],
        },
        Row {
            label: format!("{} pairs, throughput", params.pairs),
            figures: vec![
                ("messages", total),
                ("seconds", elapsed),
                ("msgs_per_sec", total / elapsed),
            ],
        },
    )
}
