//! The Retro session as a state machine: packets in, packets and commands out.

use super::*;
use crate::frame::{encode, Kind};
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::{Signer, SigningKey};
use hub_plugin_sdk::testing::{commands, session_info, Harness};
use hub_plugin_sdk::{
    Address, Answer, Command, Content, CoreError, CorrelationId, Delivery, EventBody, EventId,
    EventRecord, HubEvent, Input, Op, Origin, Output, PublicKey, Seq, Target, Transmit, UserId,
    UserRef, UserStatus,
};
use serde_json::json;

/// A 2048-bit RSA public key (SPKI PEM), generated for these tests.
const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu7IhZqswJk/OHcvyYnIF
nv2rXjRujCjC/GiqGoGFY8BH+F2zyfSO7v4tSR2lAaTHMUmr5W+nm02udf8ENwiO
ylQL5KTBycfPNLEIRtCkOfZfFmLtvW3hynOkRXY3yyBOgd9QKthYaIk9MRBuNuxX
t4hF4rWZw+9xEPGUFuBuRHsJbb9kDF6DLyZPS0Efc1Xrhw36pM05x45yUdWtr+n9
KVlxvAYwkkW5FOr3Z9cYfqeP19GgHy6RH+lEVM1uY9SA2ohbF5TYQxHhljIg7PCA
brnVXUuiC2kXAu+Rn+/AJ4tmd212utwVQIgd8275l4pESlSOwNmKWiCYbwxrsvL2
tQIDAQAB
-----END PUBLIC KEY-----";

const V: u16 = 0x0101;

fn session() -> Harness<RetroSession> {
    let retro = Retro::from_config(&json!({"enabled": true})).unwrap();
    let mut h = Harness::new(retro.open(session_info(Transport::Tls)));
    h.input(Input::Opened);
    h
}

fn send(h: &mut Harness<RetroSession>, kind: Kind, payload: &[u8]) -> Vec<Output> {
    h.input(Input::Bytes(encode(V, kind, payload)))
}

/// Packets the session transmitted: (version, type, payload).
fn packets(outputs: &[Output]) -> Vec<(u16, u16, Vec<u8>)> {
    let mut decoder = crate::frame::Decoder::new(1 << 20);
    for output in outputs {
        if let Output::Transmit(Transmit::Bytes(bytes)) = output {
            decoder.push(bytes);
        }
    }
    let mut out = Vec::new();
    while let Some(p) = decoder.next_packet().unwrap() {
        out.push((p.version, p.kind, p.payload));
    }
    out
}

fn answer(id: CorrelationId, result: Result<Answer, CoreError>) -> Input {
    Input::Event(HubEvent::Answer { id, result })
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn pubkey_payload() -> Vec<u8> {
    let ed = signing_key()
        .verifying_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    format!("{RSA_PEM}\n{ed}").into_bytes()
}

#[test]
fn registration_checks_the_key_then_stores_validated_pems() {
    let mut h = session();
    let outs = send(&mut h, Kind::Register, &[9; 32]);
    let check = commands(&outs)[0].clone();
    assert_eq!(
        check.op,
        Op::CheckRegkey {
            regkey: vec![9; 32]
        }
    );
    let outs = h.input(answer(check.id, Ok(Answer::Done)));
    let reserve = commands(&outs)[0].clone();
    assert_eq!(reserve.op, Op::ReserveUserId);
    let outs = h.input(answer(
        reserve.id,
        Ok(Answer::Reserved { user: UserId(0x2a) }),
    ));
    assert_eq!(packets(&outs), vec![(V, 1, 0x2au64.to_be_bytes().to_vec())]);

    let outs = send(
        &mut h,
        Kind::Pubkey,
        b"-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n",
    );
    assert_eq!(packets(&outs)[0].1, Kind::Error as u16);
    assert!(
        commands(&outs).is_empty(),
        "garbage keys never reach the core"
    );

    let outs = send(&mut h, Kind::Pubkey, &pubkey_payload());
    let register = commands(&outs)[0].clone();
    match &register.op {
        Op::RegisterWithKeys {
            regkey,
            user,
            handle,
            keys,
        } => {
            assert_eq!(
                (regkey.as_slice(), *user, handle.as_str()),
                (&[9u8; 32][..], UserId(0x2a), "retro-000000000000002a")
            );
            assert_eq!(
                keys[0],
                PublicKey {
                    kind: keys::KIND_PEM.into(),
                    bytes: pubkey_payload()
                }
            );
            assert_eq!(
                keys[1].bytes,
                signing_key().verifying_key().to_bytes().to_vec()
            );
        }
        other => panic!("{other:?}"),
    }
    let outs = h.input(answer(
        register.id,
        Ok(Answer::User(UserRef {
            id: UserId(0x2a),
            handle: "r".into(),
        })),
    ));
    assert_eq!(packets(&outs), vec![(V, 1, vec![])]);
}

#[test]
fn a_spent_key_is_an_error() {
    let mut h = session();
    let outs = send(&mut h, Kind::Register, &[9; 32]);
    let check = commands(&outs)[0].clone();
    let outs = h.input(answer(check.id, Err(CoreError::BadRegkey)));
    assert_eq!(
        packets(&outs),
        vec![(V, 2, b"invalid registration key".to_vec())]
    );
}

fn hello_payload(user: u64, nonce: [u8; 32]) -> Vec<u8> {
    let mut payload = user.to_be_bytes().to_vec();
    payload.extend_from_slice(&nonce);
    payload.extend_from_slice(&signing_key().sign(&nonce).to_bytes());
    payload
}

fn keys_answer() -> Result<Answer, CoreError> {
    Ok(Answer::Keys(vec![
        PublicKey {
            kind: keys::KIND_PEM.into(),
            bytes: pubkey_payload(),
        },
        PublicKey {
            kind: keys::KIND_ED25519.into(),
            bytes: signing_key().verifying_key().to_bytes().to_vec(),
        },
    ]))
}

fn logged_in() -> Harness<RetroSession> {
    let mut h = session();
    let outs = send(&mut h, Kind::Hello, &hello_payload(5, [1; 32]));
    let keys = commands(&outs)[0].clone();
    assert_eq!(keys.op, Op::PublicKeys { user: UserId(5) });
    let outs = h.input(answer(keys.id, keys_answer()));
    let nonce = commands(&outs)[0].clone();
    assert_eq!(
        nonce.op,
        Op::UseNonce {
            user: UserId(5),
            nonce: vec![1; 32]
        }
    );
    let outs = h.input(answer(nonce.id, Ok(Answer::Done)));
    let bind = commands(&outs)[0].clone();
    assert_eq!(
        bind.op,
        Op::Bind {
            user: UserId(5),
            exclusive: true,
            resume_after: None
        }
    );
    // A stored event overtakes the bind answer: it waits for SUCCESS.
    assert!(h.input(chat_delivery(1)).is_empty());
    let outs = h.input(answer(
        bind.id,
        Ok(Answer::Bound {
            user: UserRef {
                id: UserId(5),
                handle: "r".into(),
            },
            cursor: Seq(0),
        }),
    ));
    let sent = packets(&outs);
    assert_eq!(sent[0], (V, 1, vec![]));
    assert_eq!(sent[1].1, Kind::ChatMsg as u16);
    h
}

fn chat_delivery(seq: u64) -> Input {
    Input::Event(HubEvent::Deliver(Delivery {
        seq: Seq(seq),
        event: EventRecord {
            id: EventId(seq),
            at_unix_ms: 0,
            origin: Origin {
                plugin: "retro".into(),
                conn: None,
            },
            from: UserRef {
                id: UserId(6),
                handle: "other".into(),
            },
            to: Target::User(UserRef {
                id: UserId(5),
                handle: "r".into(),
            }),
            body: EventBody::Message(Content::Sealed {
                scheme: SCHEME_CHAT.into(),
                bytes: vec![0xab; 330],
            }),
        },
    }))
}

#[test]
fn hello_verifies_the_signature_and_refuses_bad_input() {
    let mut h = logged_in();
    // Already logged in.
    let outs = send(&mut h, Kind::Hello, &hello_payload(5, [2; 32]));
    assert_eq!(packets(&outs)[0].2, b"already logged in".to_vec());

    let mut h = session();
    let outs = send(&mut h, Kind::Hello, &[0; 103]);
    assert_eq!(packets(&outs)[0].1, Kind::Error as u16);
    let mut bad = hello_payload(5, [1; 32]);
    bad[50] ^= 1;
    let outs = send(&mut h, Kind::Hello, &bad);
    let keys = commands(&outs)[0].clone();
    let outs = h.input(answer(keys.id, keys_answer()));
    assert_eq!(
        packets(&outs),
        vec![(V, 2, b"signature verification failed".to_vec())]
    );
    // A replayed nonce.
    let outs = send(&mut h, Kind::Hello, &hello_payload(5, [1; 32]));
    let keys = commands(&outs)[0].clone();
    let nonce = commands(&h.input(answer(keys.id, keys_answer())))[0].clone();
    let outs = h.input(answer(nonce.id, Err(CoreError::Replay)));
    assert_eq!(packets(&outs), vec![(V, 2, b"nonce already used".to_vec())]);
}

#[test]
fn chat_messages_are_sealed_content_from_the_logged_in_user_only() {
    let mut h = logged_in();
    let mut payload = 5u64.to_be_bytes().to_vec();
    payload.extend_from_slice(&6u64.to_be_bytes());
    payload.extend_from_slice(&[0xcd; 330]);
    let outs = send(&mut h, Kind::ChatMsg, &payload);
    let cmds = commands(&outs);
    // The next packet after a delivery proves it arrived (no Retro acknowledgement exists).
    assert_eq!(cmds[0].op, Op::Ack { through: Seq(1) });
    assert_eq!(
        cmds[1].op,
        Op::Send {
            to: Address::User(UserId(6)),
            content: Content::Sealed {
                scheme: SCHEME_CHAT.into(),
                bytes: vec![0xcd; 330]
            }
        }
    );
    let outs = h.input(answer(cmds[1].id, Err(CoreError::NoSuchUser)));
    assert_eq!(packets(&outs), vec![(V, 2, b"unknown recipient".to_vec())]);

    let mut spoofed = 9u64.to_be_bytes().to_vec();
    spoofed.extend_from_slice(&payload[8..]);
    let outs = send(&mut h, Kind::ChatMsg, &spoofed);
    assert!(commands(&outs).is_empty());
    assert_eq!(
        packets(&outs)[0].2,
        b"from is not the logged-in user".to_vec()
    );

    let outs = send(&mut h, Kind::ChatMsg, &payload[..100]);
    assert_eq!(packets(&outs)[0].1, Kind::Error as u16);
    let outs = h.input(Input::Bytes(encode(V, Kind::Success, &[])));
    assert_eq!(packets(&outs)[0].1, Kind::Error as u16);
    let outs = h.input(Input::Bytes([0x01, 0x01, 0x00, 0x63, 0, 0, 0, 0].to_vec()));
    assert_eq!(
        packets(&outs),
        vec![(V, 2, b"unknown packet type 99".to_vec())]
    );
}

#[test]
fn friends_and_get_pubkey_report_status_per_id() {
    let mut h = logged_in();
    let mut ids = 6u64.to_be_bytes().to_vec();
    ids.extend_from_slice(&7u64.to_be_bytes());
    let outs = send(&mut h, Kind::Friends, &ids);
    let cmds = commands(&outs);
    let status = cmds.last().unwrap().clone();
    assert_eq!(
        status.op,
        Op::Status {
            users: vec![UserId(6), UserId(7)]
        }
    );
    assert!(cmds.iter().any(|c| c.op
        == Op::Befriend {
            to: Address::User(UserId(6))
        }));
    let outs = h.input(answer(
        status.id,
        Ok(Answer::Statuses(vec![
            UserStatus::Online(UserId(6)),
            UserStatus::Unknown(UserId(7)),
        ])),
    ));
    assert_eq!(
        packets(&outs),
        vec![
            (V, 21, 6u64.to_be_bytes().to_vec()),
            (V, 23, 7u64.to_be_bytes().to_vec())
        ]
    );

    let outs = send(&mut h, Kind::GetPubkey, &6u64.to_be_bytes());
    let keys = commands(&outs)[0].clone();
    let outs = h.input(answer(keys.id, keys_answer()));
    let status = commands(&outs)
        .into_iter()
        .find(|c| matches!(c.op, Op::Status { .. }))
        .unwrap();
    let outs = h.input(answer(
        status.id,
        Ok(Answer::Statuses(vec![UserStatus::Offline(UserId(6))])),
    ));
    let sent = packets(&outs);
    let mut expected = 6u64.to_be_bytes().to_vec();
    expected.extend_from_slice(&pubkey_payload());
    assert_eq!(
        sent,
        vec![(V, 6, expected), (V, 22, 6u64.to_be_bytes().to_vec())]
    );
    let outs = send(&mut h, Kind::GetPubkey, &8u64.to_be_bytes());
    let keys = commands(&outs)[0].clone();
    let outs = h.input(answer(keys.id, Err(CoreError::NoSuchUser)));
    assert_eq!(packets(&outs), vec![(V, 2, b"unknown user".to_vec())]);
}

#[test]
fn bad_sizes_close_the_connection_before_buffering() {
    let mut h = session();
    let outs = h.input(Input::Bytes(vec![0, 1, 0, 10, 0xff, 0xff, 0xff, 0xf0]));
    assert_eq!(
        packets(&outs)[0],
        (1, 2, b"invalid packet size -16".to_vec())
    );
    assert!(outs.iter().any(|o| matches!(o, Output::Close(_))));
    let mut h = session();
    let outs = h.input(Input::Bytes(vec![0, 1, 0, 10, 0x7f, 0, 0, 0]));
    assert_eq!(packets(&outs)[0].1, Kind::Error as u16);
    assert!(outs.iter().any(|o| matches!(o, Output::Close(_))));
}

#[test]
fn unauthenticated_connections_time_out() {
    let mut h = session();
    assert_eq!(h.deadline(), Some(60_000));
    let outs = h.advance(60_000);
    assert_eq!(packets(&outs)[0].2, b"login timeout".to_vec());
    assert!(outs.iter().any(|o| matches!(o, Output::Close(_))));
}

fn file_session() -> Harness<RetroSession> {
    let retro = Retro::from_config(&json!({"max_file_bytes": 1000})).unwrap();
    let mut info = session_info(Transport::Tls);
    info.role = "file".into();
    info.peer = "127.0.0.9:5000".into();
    let mut h = Harness::new(retro.open(info));
    h.input(Input::Opened);
    h
}

/// Answers the address check with user 5 and returns the next command.
fn authorized(h: &mut Harness<RetroSession>, outs: Vec<Output>) -> Command {
    let peer = commands(&outs)[0].clone();
    assert_eq!(
        peer.op,
        Op::PeerUser {
            plugin: "retro".into(),
            ip: "127.0.0.9".into()
        }
    );
    let outs = h.input(answer(
        peer.id,
        Ok(Answer::User(UserRef {
            id: UserId(5),
            handle: "r".into(),
        })),
    ));
    let cmds = commands(&outs);
    assert_eq!(cmds[0].op, Op::Authenticate { user: UserId(5) });
    cmds[1].clone()
}

#[test]
fn upload_streams_exactly_the_announced_bytes_then_confirms() {
    let mut h = file_session();
    let mut request = [3u8; 16].to_vec();
    request.extend_from_slice(&10u32.to_be_bytes());
    // The request and the first file bytes arrive in one chunk; bytes past the file are
    // the next packet.
    let outs = send(&mut h, Kind::FileUpload, &request);
    let begin = authorized(&mut h, outs);
    assert!(
        matches!(begin.op, Op::FileBegin { size: 10, ref file_id, .. } if file_id == &vec![3u8; 16])
    );
    let outs = h.input(answer(begin.id, Ok(Answer::Done)));
    assert_eq!(packets(&outs), vec![(V, 1, vec![])]);
    let outs = h.input(Input::Bytes(b"0123".to_vec()));
    assert_eq!(
        commands(&outs)[0].op,
        Op::FileWrite {
            bytes: b"0123".to_vec()
        }
    );
    let mut tail = b"456789".to_vec();
    tail.extend(encode(V, Kind::FileDownload, &[3u8; 16]));
    let outs = h.input(Input::Bytes(tail));
    let cmds = commands(&outs);
    assert_eq!(
        cmds[0].op,
        Op::FileWrite {
            bytes: b"456789".to_vec()
        }
    );
    assert_eq!(cmds[1].op, Op::FileFinish);
    let outs = h.input(answer(cmds[1].id, Ok(Answer::Done)));
    assert_eq!(packets(&outs), vec![(V, 1, vec![])]);
    // The queued download runs now.
    let open = commands(&outs)[0].clone();
    assert_eq!(
        open.op,
        Op::FileOpen {
            file_id: vec![3u8; 16]
        }
    );
    let outs = h.input(answer(open.id, Ok(Answer::File { size: 10 })));
    assert_eq!(packets(&outs), vec![(V, 1, 10u32.to_be_bytes().to_vec())]);
    let read = commands(&outs)[0].clone();
    let outs = h.input(answer(read.id, Ok(Answer::Bytes(b"0123456789".to_vec()))));
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Transmit(Transmit::Bytes(b)) if b == b"0123456789")));
    let read = commands(&outs)[0].clone();
    let outs = h.input(answer(read.id, Ok(Answer::Bytes(vec![]))));
    assert!(commands(&outs).is_empty(), "the download is over");
}

#[test]
fn file_requests_are_refused_without_a_chat_login_or_over_the_limit() {
    let mut h = file_session();
    let outs = send(&mut h, Kind::FileDownload, &[1u8; 16]);
    let peer = commands(&outs)[0].clone();
    let outs = h.input(answer(peer.id, Err(CoreError::NotBound)));
    assert_eq!(
        packets(&outs),
        vec![(V, 2, b"log in on the chat server first".to_vec())]
    );

    let mut h = file_session();
    let mut request = [3u8; 16].to_vec();
    request.extend_from_slice(&1001u32.to_be_bytes());
    let outs = send(&mut h, Kind::FileUpload, &request);
    let peer = commands(&outs)[0].clone();
    let outs = h.input(answer(
        peer.id,
        Ok(Answer::User(UserRef {
            id: UserId(5),
            handle: "r".into(),
        })),
    ));
    assert_eq!(
        packets(&outs)[0].2,
        b"file of 1001 bytes exceeds the limit of 1000".to_vec()
    );
    let outs = send(&mut h, Kind::FileDownload, &[1u8; 16]);
    let open = commands(&outs)[0].clone();
    let outs = h.input(answer(open.id, Err(CoreError::NoSuchFile)));
    assert_eq!(packets(&outs), vec![(V, 2, b"unknown file".to_vec())]);
}
