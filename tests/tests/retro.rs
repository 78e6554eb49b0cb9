//! End to end: the Retro protocol against the real `hub` binary over TLS, with the
//! independent client (`hub_tests::retro_client`, written from the spec, WIRE-FACTS and
//! docs/protocols/retro.md) doing the real client-side crypto.

use hub_tests::harness::{Hub, HubOptions};
use hub_tests::retro_client::{download, kind, upload, Identity, RetroClient, RetroError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

struct Retro {
    hub: Hub,
    keys: Vec<String>,
}

impl Retro {
    /// A hub with the Retro plugin and `n` registration keys made with `hub regkey new`.
    fn start(n: usize, env: &[(&str, &str)]) -> Retro {
        let mut options = HubOptions::with(&["retro"]);
        for (k, v) in env {
            options = options.env(k, v);
        }
        let mut hub = Hub::start(options);
        hub.kill();
        let (ok, out, err) = hub.cli(&["regkey", "new", "--count", &n.to_string()], "");
        assert!(ok, "{err}");
        let keys = out.lines().map(str::to_owned).collect();
        hub.restart();
        Retro { hub, keys }
    }

    fn cert(&self) -> PathBuf {
        self.hub.data_dir.join("tls/cert.pem")
    }

    fn chat(&self) -> SocketAddr {
        self.hub.addr("retro", "chat")
    }

    fn connect(&self, version: u16) -> RetroClient {
        RetroClient::connect(self.chat(), &self.cert(), version).unwrap()
    }

    /// Registers a new user with key `n` and logs in on a fresh connection.
    fn user(&self, n: usize, version: u16) -> (RetroClient, Identity, u64) {
        let me = Identity::generate();
        let mut client = self.connect(version);
        let id = client.register(&self.keys[n], &me).unwrap();
        let mut client = self.connect(version);
        client.login(id, &me).unwrap();
        (client, me, id)
    }
}

/// The text of the ERROR a helper returned.
fn server_error(result: Result<impl std::fmt::Debug, RetroError>) -> String {
    match result {
        Err(RetroError::Server(text)) => text,
        other => panic!("expected an ERROR packet, got {other:?}"),
    }
}

/// The next packet of type `want`, skipping presence packets pushed meanwhile (users
/// who become contacts while online are told about each other).
fn recv_kind(client: &mut RetroClient, want: u16) -> hub_tests::retro_client::Packet {
    loop {
        let packet = client.recv_packet(T).unwrap();
        if packet.kind == want {
            return packet;
        }
        assert!(
            matches!(packet.kind, kind::FRIEND_ONLINE | kind::FRIEND_OFFLINE),
            "expected type {want}, got {packet:?}"
        );
    }
}

/// The text of the next packet, which must be an ERROR.
fn next_error(client: &mut RetroClient) -> String {
    let packet = client.recv_packet(T).unwrap();
    assert_eq!(
        packet.kind,
        kind::ERROR,
        "expected an ERROR packet, got {packet:?}"
    );
    String::from_utf8(packet.payload).unwrap()
}

#[test]
fn two_users_register_log_in_and_exchange_encrypted_messages_with_presence_and_offline_delivery() {
    let retro = Retro::start(3, &[]);
    let (mut alice, alice_keys, alice_id) = retro.user(0, 0x0101);
    let (mut bob, bob_keys, bob_id) = retro.user(1, 0x0001);

    // Keys and friends: each learns the other's keys and online state.
    let (bob_pem, status) = alice.get_pubkey(bob_id).unwrap();
    assert_eq!(bob_pem, bob_keys.pubkey_payload());
    assert_eq!(status, kind::FRIEND_ONLINE);
    let (alice_pem, _) = bob.get_pubkey(alice_id).unwrap();
    assert_eq!(alice_pem, alice_keys.pubkey_payload());
    let statuses = alice.friends(&[bob_id, 0x1234_5678]).unwrap();
    assert_eq!(
        statuses,
        vec![
            (kind::FRIEND_ONLINE, bob_id),
            (kind::FRIEND_UNKNOWN, 0x1234_5678)
        ]
    );

    // Encrypted both ways, decrypted and verified by the recipients.
    for n in 0..3 {
        alice
            .send_chat(
                &alice_keys,
                alice_id,
                bob_id,
                &bob_pem,
                &format!("hi bob {n}"),
            )
            .unwrap();
        bob.send_chat(
            &bob_keys,
            bob_id,
            alice_id,
            &alice_pem,
            &format!("hi alice {n}"),
        )
        .unwrap();
    }
    for n in 0..3 {
        let packet = recv_kind(&mut bob, kind::CHATMSG);
        assert_eq!(packet.version, 0x0001, "pushed packets carry bob's version");
        assert_eq!(
            bob.open_chat(&bob_keys, &alice_pem, &packet.payload)
                .unwrap(),
            (alice_id, format!("hi bob {n}"))
        );
        let packet = recv_kind(&mut alice, kind::CHATMSG);
        assert_eq!(packet.version, 0x0101);
        assert_eq!(
            alice
                .open_chat(&alice_keys, &bob_pem, &packet.payload)
                .unwrap(),
            (bob_id, format!("hi alice {n}"))
        );
    }

    // Bob logs out: alice is told; messages to him wait; he logs in and gets them in order.
    bob.goodbye().unwrap();
    let packet = recv_kind(&mut alice, kind::FRIEND_OFFLINE);
    assert_eq!(packet.payload, bob_id.to_be_bytes().to_vec());
    for n in 0..3 {
        alice
            .send_chat(
                &alice_keys,
                alice_id,
                bob_id,
                &bob_pem,
                &format!("while away {n}"),
            )
            .unwrap();
    }
    let mut bob = retro.connect(0x0001);
    bob.login(bob_id, &bob_keys).unwrap();
    for n in 0..3 {
        let packet = recv_kind(&mut bob, kind::CHATMSG);
        assert_eq!(
            bob.open_chat(&bob_keys, &alice_pem, &packet.payload)
                .unwrap()
                .1,
            format!("while away {n}")
        );
    }
    let packet = recv_kind(&mut alice, kind::FRIEND_ONLINE);
    assert_eq!(packet.payload, bob_id.to_be_bytes().to_vec());

    // Unknown recipient and a spoofed sender are refused.
    alice
        .send_chat(&alice_keys, alice_id, 42, &bob_pem, "x")
        .unwrap();
    assert_eq!(next_error(&mut alice), "unknown recipient");
    alice
        .send_chat(&alice_keys, bob_id, alice_id, &alice_pem, "x")
        .unwrap();
    assert_eq!(next_error(&mut alice), "from is not the logged-in user");
}

#[test]
fn registration_keys_are_single_use_and_login_refuses_replays_forgeries_and_doubles() {
    let retro = Retro::start(2, &[]);
    let me = Identity::generate();
    let mut client = retro.connect(1);
    let id = client.register(&retro.keys[0], &me).unwrap();
    let mut again = retro.connect(1);
    assert_eq!(
        server_error(again.register(&retro.keys[0], &me)),
        "invalid registration key"
    );
    assert_eq!(
        server_error(again.register(&"00".repeat(32), &me)),
        "invalid registration key"
    );

    // Garbage PEM after a good REGISTER: refused, and the key is not spent by it.
    let mut c = retro.connect(1);
    c.send_packet(kind::REGISTER, &hex32(&retro.keys[1]))
        .unwrap();
    assert_eq!(c.recv_packet(T).unwrap().kind, kind::SUCCESS);
    c.send_packet(
        kind::PUBKEY,
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    assert_eq!(c.recv_packet(T).unwrap().kind, kind::ERROR);
    let mut d = retro.connect(1);
    d.register(&retro.keys[1], &Identity::generate()).unwrap();

    let mut c = retro.connect(1);
    let reply = c.hello_with_nonce(id, &me, [7; 32]).unwrap();
    assert_eq!(reply.kind, kind::SUCCESS);
    // The same user again while logged in, on another connection.
    let mut second = retro.connect(1);
    let reply = second.hello_with_nonce(id, &me, [8; 32]).unwrap();
    assert_eq!(
        (reply.kind, reply.payload),
        (kind::ERROR, b"already logged in elsewhere".to_vec())
    );
    c.goodbye().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A replayed nonce, an unknown user, a forged signature, a wrong length.
    let mut c = retro.connect(1);
    let reply = c.hello_with_nonce(id, &me, [7; 32]).unwrap();
    assert_eq!(
        (reply.kind, reply.payload),
        (kind::ERROR, b"nonce already used".to_vec())
    );
    let reply = c.hello_with_nonce(0x0bad, &me, [9; 32]).unwrap();
    assert_eq!(
        (reply.kind, reply.payload),
        (kind::ERROR, b"unknown user".to_vec())
    );
    let reply = c
        .hello_with_nonce(id, &Identity::generate(), [10; 32])
        .unwrap();
    assert_eq!(
        (reply.kind, reply.payload),
        (kind::ERROR, b"signature verification failed".to_vec())
    );
    c.send_packet(kind::HELLO, &[0; 103]).unwrap();
    let reply = c.recv_packet(T).unwrap();
    assert_eq!((reply.version, reply.kind), (1, kind::ERROR));
    // And the real login still works.
    let reply = c.hello_with_nonce(id, &me, [11; 32]).unwrap();
    assert_eq!(reply.kind, kind::SUCCESS);
}

fn hex32(text: &str) -> Vec<u8> {
    (0..32)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_five_mib_file_goes_up_and_down_byte_identical_for_logged_in_users_only() {
    let retro = Retro::start(2, &[("HUB__PLUGINS__RETRO__MAX_FILE_BYTES", "6000000")]);
    let file_addr = retro.hub.addr("retro", "file");
    let cert = retro.cert();
    // No chat login from this address yet: refused.
    let error = server_error(upload(file_addr, &cert, 1, [1; 16], b"x"));
    assert_eq!(error, "log in on the chat server first");

    let (_alice, _, _) = retro.user(0, 1);
    let content: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    upload(file_addr, &cert, 1, [2; 16], &content).unwrap();
    assert_eq!(
        server_error(upload(file_addr, &cert, 1, [2; 16], b"again")),
        "file id already in use"
    );
    assert_eq!(
        server_error(download(file_addr, &cert, 1, [9; 16])),
        "unknown file"
    );
    let over = vec![0u8; 6_000_001];
    let error = server_error(upload(file_addr, &cert, 1, [3; 16], &over));
    assert!(error.contains("exceeds the limit"), "{error}");

    // The uploader's own download does not use it up; one by another user does.
    assert_eq!(download(file_addr, &cert, 1, [2; 16]).unwrap(), content);
    let (_bob, _, _) = retro.user(1, 1);
    assert_eq!(download(file_addr, &cert, 1, [2; 16]).unwrap(), content);
    // The file server acts for the latest chat login from the address (bob): his
    // download was the one allowed, so the file is gone.
    assert_eq!(
        server_error(download(file_addr, &cert, 1, [2; 16])),
        "unknown file"
    );
}

#[test]
fn calls_are_rung_accepted_stopped_rejected_and_missed() {
    let retro = Retro::start(3, &[("HUB__CALLS__RING_TIMEOUT_SECS", "1")]);
    let (mut alice, _, a) = retro.user(0, 1);
    let (mut bob, _, b) = retro.user(1, 1);
    let call = |from: u64, to: u64, data: &[u8]| {
        let mut payload = from.to_be_bytes().to_vec();
        payload.extend_from_slice(&to.to_be_bytes());
        payload.extend_from_slice(data);
        payload
    };
    // Rung, accepted, stopped.
    alice
        .send_packet(kind::START_CALL, &call(a, b, b"offer"))
        .unwrap();
    let ring = bob.recv_packet(T).unwrap();
    assert_eq!(
        (ring.kind, ring.payload),
        (kind::START_CALL, call(a, b, b"offer"))
    );
    bob.send_packet(kind::ACCEPT_CALL, &call(b, a, b"answer"))
        .unwrap();
    let accepted = alice.recv_packet(T).unwrap();
    assert_eq!(
        (accepted.kind, accepted.payload),
        (kind::ACCEPT_CALL, call(b, a, b"answer"))
    );
    alice
        .send_packet(kind::STOP_CALL, &call(a, b, b""))
        .unwrap();
    let stopped = bob.recv_packet(T).unwrap();
    assert_eq!(
        (stopped.kind, stopped.payload),
        (kind::STOP_CALL, call(a, b, b""))
    );

    // Rejected.
    bob.send_packet(kind::START_CALL, &call(b, a, b"")).unwrap();
    assert_eq!(alice.recv_packet(T).unwrap().kind, kind::START_CALL);
    alice
        .send_packet(kind::REJECT_CALL, &call(a, b, b""))
        .unwrap();
    assert_eq!(bob.recv_packet(T).unwrap().kind, kind::REJECT_CALL);

    // Unanswered until the ring timeout: both are told it stopped.
    alice
        .send_packet(kind::START_CALL, &call(a, b, b""))
        .unwrap();
    assert_eq!(bob.recv_packet(T).unwrap().kind, kind::START_CALL);
    let (caller_side, callee_side) = (alice.recv_packet(T).unwrap(), bob.recv_packet(T).unwrap());
    assert_eq!(
        (caller_side.kind, callee_side.kind),
        (kind::STOP_CALL, kind::STOP_CALL)
    );

    // An offline callee.
    let me = Identity::generate();
    let c = retro.connect(1).register(&retro.keys[2], &me).unwrap();
    alice
        .send_packet(kind::START_CALL, &call(a, c, b""))
        .unwrap();
    assert_eq!(next_error(&mut alice), "user offline");
}

#[test]
fn bad_input_gets_an_error_or_a_clean_close_and_the_hub_serves_everyone_else() {
    let retro = Retro::start(2, &[]);
    let (mut alice, alice_keys, a) = retro.user(0, 1);
    let (mut bob, bob_keys, b) = retro.user(1, 1);
    let (bob_pem, _) = alice.get_pubkey(b).unwrap();
    let (alice_pem, _) = bob.get_pubkey(a).unwrap();

    // Truncated header, then the peer goes away: nothing to answer, nothing breaks.
    let mut c = retro.connect(1);
    c.send_raw(&[0, 1, 0]).unwrap();
    drop(c);
    // Negative and oversized sizes: ERROR, then close.
    for header in [
        [0u8, 1, 0, 10, 0xff, 0xff, 0xff, 0xfe],
        [0, 1, 0, 10, 0x7f, 0xff, 0xff, 0xff],
    ] {
        let mut c = retro.connect(1);
        c.send_raw(&header).unwrap();
        assert_eq!(c.recv_packet(T).unwrap().kind, kind::ERROR);
        c.expect_closed(T).unwrap();
    }
    // Unknown type: ERROR, connection still usable.
    let mut c = retro.connect(1);
    c.send_packet(99, b"").unwrap();
    let reply = c.recv_packet(T).unwrap();
    assert_eq!(
        (reply.kind, reply.payload),
        (kind::ERROR, b"unknown packet type 99".to_vec())
    );
    let reply = c
        .hello_with_nonce(0x77, &Identity::generate(), [1; 32])
        .unwrap();
    assert_eq!(reply.kind, kind::ERROR);
    // Larger upload than announced: the extra bytes are a bogus next packet.
    let file_addr = retro.hub.addr("retro", "file");
    let mut f = RetroClient::connect(file_addr, &retro.cert(), 1).unwrap();
    let mut request = [5u8; 16].to_vec();
    request.extend_from_slice(&4u32.to_be_bytes());
    f.send_packet(kind::FILE_UPLOAD, &request).unwrap();
    assert_eq!(f.recv_packet(T).unwrap().kind, kind::SUCCESS);
    // "abcd" completes the file; then a header (our version, type 0xffff, size -1).
    f.send_raw(b"abcd\x00\x01\xff\xff\xff\xff\xff\xff").unwrap();
    assert_eq!(
        f.recv_packet(T).unwrap().kind,
        kind::SUCCESS,
        "the announced 4 bytes are stored"
    );
    assert_eq!(
        f.recv_packet(T).unwrap().kind,
        kind::ERROR,
        "the rest is refused"
    );

    // Everyone else is still served.
    alice
        .send_chat(&alice_keys, a, b, &bob_pem, "still here")
        .unwrap();
    let packet = recv_kind(&mut bob, kind::CHATMSG);
    assert_eq!(
        bob.open_chat(&bob_keys, &alice_pem, &packet.payload)
            .unwrap()
            .1,
        "still here"
    );
    assert_eq!(retro.hub.http_get("/health").0, 200);
}
