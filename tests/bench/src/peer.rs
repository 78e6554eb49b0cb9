//! "A peer": what a user might run instead of the hub for the same 1:1 traffic, Debian's
//! mosquitto with persistence, at QoS 1, on loopback; driven like json-pairs by a small
//! MQTT 3.1.1 client written here over `std::net::TcpStream`.
//!
//! Workload: N pairs; receiver `n` subscribes to `pair/<n>` at QoS 1 and counts M
//! messages (acknowledging each with PUBACK); sender `n` publishes M 100-byte messages at
//! QoS 1 to `pair/<n>`, keeping W without their PUBACK. Throughput from the start signal
//! until every receiver has every message; ack latency from the PUBLISH to its PUBACK.
//!
//! What the PUBACK means is not what the hub's `ack` means: mosquitto answers a QoS 1
//! PUBLISH once the message is in its memory, and its persistence is a snapshot of the
//! whole in-memory database, written and fsynced after the fact, see [`AUTOSAVE`]. The
//! broker's other settings are Debian's defaults (e.g. `max_inflight_messages 20`
//! towards each subscriber), plus `set_tcp_nodelay true` as the hub and the clients
//! set `TCP_NODELAY` too.

use crate::common::{join_pairs, StartLine};
use crate::json_pairs::{self, Params as PairsParams};
use crate::report::Row;
use hub_tests::harness::process_cpu;
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package puts the broker.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// The persistence settings of the private broker, the most eager mosquitto offers:
/// with `autosave_on_changes true`, `autosave_interval` counts changes (subscriptions,
/// retained and queued messages), and the broker checks the count once per pass of its
/// event loop; at 1 it writes the whole in-memory database to `mosquitto.db.new`,
/// fsyncs it and renames it over `mosquitto.db` after every pass that changed anything.
/// The PUBACK does not wait for that: it is written while the PUBLISH is handled,
/// before the pass ends (seen with strace on 2.0.11), so an acknowledged message is
/// durable only once the next snapshot is done. The default (`autosave_interval 1800`
/// seconds, `autosave_on_changes false`) would save nothing during a run.
pub const AUTOSAVE: &str = "autosave_on_changes true\nautosave_interval 1\n";

const T: Duration = Duration::from_secs(60);

/// Scenario parameters (as json-pairs).
pub struct Params {
    /// Publisher/subscriber pairs.
    pub pairs: usize,
    /// Messages per publisher.
    pub messages: usize,
    /// PUBLISHes a publisher keeps without their PUBACK.
    pub window: usize,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Makes sure `/usr/sbin/mosquitto` exists, installing Debian's package if not (as root,
/// or through `sudo -n`). Panics with the reason if that is impossible.
pub fn ensure_mosquitto() -> PathBuf {
    let bin = PathBuf::from(MOSQUITTO);
    if bin.exists() {
        return bin;
    }
    let root = is_root();
    let apt = |args: &[&str]| -> bool {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
            sudo
        };
        command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(args)
            .stdin(Stdio::null());
        eprintln!("hub-bench: {MOSQUITTO} is missing; running apt-get {args:?}");
        command.status().map(|s| s.success()).unwrap_or(false)
    };
    let installed = apt(&["install", "-y", "mosquitto"])
        // A fresh image may have no package lists yet.
        || (apt(&["update"]) && apt(&["install", "-y", "mosquitto"]));
    assert!(
        installed && bin.exists(),
        "cannot install mosquitto: `apt-get install -y mosquitto` failed{}; install it by hand \
         (Debian package `mosquitto`) to run the peer baseline",
        if root {
            ""
        } else {
            " (not root, and `sudo -n` did not work)"
        }
    );
    bin
}

/// A private mosquitto on 127.0.0.1 (ephemeral port, temporary configuration and
/// persistence directory); killed when dropped.
pub struct Mosquitto {
    /// Its MQTT listener.
    pub addr: SocketAddr,
    /// From spawning the process to its listener accepting a connection.
    pub start_time: Duration,
    /// The persistence directory (`persistence_location`).
    pub db_dir: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Installs (if needed) and starts mosquitto with persistence ([`AUTOSAVE`]).
    pub fn start() -> Mosquitto {
        let bin = ensure_mosquitto();
        let dir = tempfile::tempdir().expect("temporary directory");
        let db_dir = dir.path().join("db");
        std::fs::create_dir(&db_dir).expect("persistence directory");
        // A free port: bind an ephemeral one and let it go again.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let root = is_root();
        let config = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {}/\n\
             persistence_file mosquitto.db\n\
             {AUTOSAVE}\
             set_tcp_nodelay true\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             log_type information\n\
             {}",
            db_dir.display(),
            // As root, mosquitto would switch to user `mosquitto`, who cannot write into
            // our private directory.
            if root { "user root\n" } else { "" }
        );
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, config).expect("writing mosquitto.conf");
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).expect("log file");
        let began = Instant::now();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mosquitto");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut broker = Mosquitto {
            addr,
            start_time: Duration::ZERO,
            db_dir,
            child,
            dir,
        };
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            let exited = broker.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && began.elapsed() < Duration::from_secs(10),
                "mosquitto did not start ({exited:?}); log:\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        broker.start_time = began.elapsed();
        broker
    }

    /// What mosquitto wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// How many times mosquitto has saved its database so far (its log says so).
    pub fn saves(&self) -> usize {
        self.log().matches("Saving in-memory database").count()
    }

    /// The persistence file, if mosquitto has saved one.
    pub fn db_file(&self) -> Option<PathBuf> {
        let file = self.db_dir.join("mosquitto.db");
        file.exists().then_some(file)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- mosquitto log ----\n{}", self.log());
        }
    }
}

/// MQTT 3.1.1 packets, just the ones the workload needs.
pub mod mqtt {
    use std::io::{self, Read};

    /// Packet types (the high nibble of the first byte).
    pub const CONNACK: u8 = 2;
    /// PUBLISH.
    pub const PUBLISH: u8 = 3;
    /// PUBACK.
    pub const PUBACK: u8 = 4;
    /// SUBACK.
    pub const SUBACK: u8 = 9;

    /// The largest remaining length the four-byte encoding can carry.
    pub const MAX_REMAINING: usize = 268_435_455;

    fn malformed(what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed MQTT: {what}"),
        )
    }

    /// Appends the remaining-length varint: 7 bits a byte, least significant first,
    /// the high bit set on every byte but the last.
    pub fn put_remaining_length(out: &mut Vec<u8>, mut len: usize) {
        assert!(len <= MAX_REMAINING, "MQTT packet too large");
        loop {
            let byte = (len % 128) as u8;
            len /= 128;
            if len == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    /// Decodes a remaining length from the start of `bytes`: `Ok(Some((len, used)))`,
    /// `Ok(None)` if more bytes are needed, an error past four bytes.
    pub fn remaining_length(bytes: &[u8]) -> io::Result<Option<(usize, usize)>> {
        let mut len = 0usize;
        for (i, byte) in bytes.iter().enumerate().take(4) {
            len |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(Some((len, i + 1)));
            }
        }
        if bytes.len() >= 4 {
            Err(malformed("remaining length over four bytes"))
        } else {
            Ok(None)
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        let len = u16::try_from(s.len()).expect("MQTT string over 65535 bytes");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 5);
        out.push(first);
        put_remaining_length(&mut out, body.len());
        out.extend_from_slice(body);
        out
    }

    /// CONNECT, protocol level 4, clean session, no will, no credentials.
    pub fn connect(client_id: &str, keep_alive_secs: u16) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, "MQTT");
        body.push(4); // protocol level: 3.1.1
        body.push(0x02); // connect flags: clean session
        body.extend_from_slice(&keep_alive_secs.to_be_bytes());
        put_str(&mut body, client_id);
        packet(0x10, &body)
    }

    /// SUBSCRIBE to one topic filter (fixed flags 0b0010).
    pub fn subscribe(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        put_str(&mut body, filter);
        body.push(qos);
        packet(0x82, &body)
    }

    /// PUBLISH at QoS 1 (not DUP, not retained).
    pub fn publish_qos1(packet_id: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
        put_str(&mut body, topic);
        body.extend_from_slice(&packet_id.to_be_bytes());
        body.extend_from_slice(payload);
        packet(0x32, &body)
    }

    /// PUBACK.
    pub fn puback(packet_id: u16) -> [u8; 4] {
        let [hi, lo] = packet_id.to_be_bytes();
        [0x40, 0x02, hi, lo]
    }

    /// DISCONNECT.
    pub const DISCONNECT: [u8; 2] = [0xe0, 0x00];

    /// One received packet: the first byte and the rest after the remaining length.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Packet {
        /// Type (high nibble) and flags (low nibble).
        pub first: u8,
        /// Variable header and payload.
        pub body: Vec<u8>,
    }

    impl Packet {
        /// The packet type.
        pub fn kind(&self) -> u8 {
            self.first >> 4
        }

        /// The packet identifier of a CONNACK-free acknowledgement (PUBACK, SUBACK...):
        /// the first two bytes of the body.
        pub fn ack_id(&self) -> io::Result<u16> {
            match self.body.as_slice() {
                [hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo])),
                _ => Err(malformed("acknowledgement without a packet id")),
            }
        }

        /// A PUBLISH's (topic, packet id if QoS > 0, payload).
        pub fn publish(&self) -> io::Result<(&str, Option<u16>, &[u8])> {
            if self.kind() != PUBLISH {
                return Err(malformed("not a PUBLISH"));
            }
            let qos = (self.first >> 1) & 0x03;
            let body = self.body.as_slice();
            let [hi, lo, rest @ ..] = body else {
                return Err(malformed("PUBLISH without a topic"));
            };
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            if rest.len() < len {
                return Err(malformed("PUBLISH topic past the end"));
            }
            let (topic, rest) = rest.split_at(len);
            let topic =
                std::str::from_utf8(topic).map_err(|_| malformed("PUBLISH topic not UTF-8"))?;
            if qos == 0 {
                return Ok((topic, None, rest));
            }
            let [hi, lo, payload @ ..] = rest else {
                return Err(malformed("PUBLISH without a packet id"));
            };
            Ok((topic, Some(u16::from_be_bytes([*hi, *lo])), payload))
        }
    }

    /// Reads one whole packet.
    pub fn read_packet(reader: &mut impl Read) -> io::Result<Packet> {
        let mut first = [0u8; 1];
        reader.read_exact(&mut first)?;
        let mut len_bytes = Vec::with_capacity(4);
        let len = loop {
            let mut byte = [0u8; 1];
            reader.read_exact(&mut byte)?;
            len_bytes.push(byte[0]);
            if let Some((len, _)) = remaining_length(&len_bytes)? {
                break len;
            }
        };
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        Ok(Packet {
            first: first[0],
            body,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn remaining_length_round_trips() {
            for (len, encoded) in [
                (0usize, vec![0x00]),
                (127, vec![0x7f]),
                (128, vec![0x80, 0x01]),
                (16_383, vec![0xff, 0x7f]),
                (16_384, vec![0x80, 0x80, 0x01]),
                (2_097_151, vec![0xff, 0xff, 0x7f]),
                (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
                (MAX_REMAINING, vec![0xff, 0xff, 0xff, 0x7f]),
            ] {
                let mut out = Vec::new();
                put_remaining_length(&mut out, len);
                assert_eq!(out, encoded, "{len}");
                assert_eq!(
                    remaining_length(&encoded).unwrap(),
                    Some((len, encoded.len()))
                );
            }
            assert_eq!(remaining_length(&[0x80, 0x80]).unwrap(), None);
            assert_eq!(remaining_length(&[]).unwrap(), None);
            assert!(remaining_length(&[0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        }

        #[test]
        fn encodes_packets() {
            assert_eq!(
                connect("s1", 60),
                [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b's', b'1']
            );
            assert_eq!(
                subscribe(1, "pair/0", 1),
                [0x82, 11, 0, 1, 0, 6, b'p', b'a', b'i', b'r', b'/', b'0', 1]
            );
            assert_eq!(
                publish_qos1(0x0102, "t", b"hi"),
                [0x32, 7, 0, 1, b't', 1, 2, b'h', b'i']
            );
            assert_eq!(puback(0x0a0b), [0x40, 2, 0x0a, 0x0b]);
            let big = publish_qos1(7, "pair/12", &[b'x'; 200]);
            assert_eq!(&big[..3], &[0x32, 0xd3, 0x01]); // 2 + 7 + 2 + 200 = 211
        }

        #[test]
        fn decodes_packets() {
            let bytes = publish_qos1(513, "pair/3", b"payload");
            let packet = read_packet(&mut bytes.as_slice()).unwrap();
            assert_eq!(packet.kind(), PUBLISH);
            assert_eq!(
                packet.publish().unwrap(),
                ("pair/3", Some(513), &b"payload"[..])
            );
            let qos0 = Packet {
                first: 0x30,
                body: vec![0, 1, b't', b'x'],
            };
            assert_eq!(qos0.publish().unwrap(), ("t", None, &b"x"[..]));
            let ack = read_packet(&mut &puback(9)[..]).unwrap();
            assert_eq!((ack.kind(), ack.ack_id().unwrap()), (PUBACK, 9));
            let suback = read_packet(&mut &[0x90, 3, 0, 1, 1][..]).unwrap();
            assert_eq!((suback.kind(), suback.ack_id().unwrap()), (SUBACK, 1));
            assert_eq!(suback.body[2], 1);
            // Truncated input and a topic longer than the packet.
            assert!(read_packet(&mut &[0x32, 5, 0][..]).is_err());
            let bad = Packet {
                first: 0x32,
                body: vec![0, 9, b't'],
            };
            assert!(bad.publish().is_err());
        }
    }
}

/// A blocking MQTT 3.1.1 connection.
pub struct MqttClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl MqttClient {
    /// Connects (clean session) and waits for a successful CONNACK.
    pub fn connect(addr: SocketAddr, client_id: &str) -> io::Result<MqttClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(T))?;
        stream.set_write_timeout(Some(T))?;
        let mut client = MqttClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        client.write(&mqtt::connect(client_id, 300))?;
        let connack = client.read()?;
        if connack.kind() != mqtt::CONNACK || connack.body.get(1) != Some(&0) {
            return Err(io::Error::other(format!("CONNACK refused: {connack:?}")));
        }
        Ok(client)
    }

    /// Subscribes to `filter` at QoS 1 and waits for the SUBACK granting QoS 1.
    pub fn subscribe_qos1(&mut self, filter: &str) -> io::Result<()> {
        self.write(&mqtt::subscribe(1, filter, 1))?;
        let suback = self.read()?;
        if suback.kind() != mqtt::SUBACK || suback.ack_id()? != 1 || suback.body.get(2) != Some(&1)
        {
            return Err(io::Error::other(format!(
                "SUBACK without QoS 1: {suback:?}"
            )));
        }
        Ok(())
    }

    /// Writes bytes (one or more whole packets).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads the next packet.
    pub fn read(&mut self) -> io::Result<mqtt::Packet> {
        mqtt::read_packet(&mut self.reader)
    }

    /// Whether received bytes are waiting in the buffer (a read would not block).
    pub fn buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        let _ = self.writer.write_all(&mqtt::DISCONNECT);
    }
}

/// Receives `count` QoS 1 messages on `topic`, acknowledging each; PUBACKs are written
/// when the read buffer runs dry, so a burst is acknowledged in one write.
fn receive(client: &mut MqttClient, topic: &str, count: usize) -> io::Result<()> {
    let mut pubacks = Vec::new();
    let mut received = 0;
    while received < count {
        let packet = client.read()?;
        if packet.kind() == mqtt::PUBLISH {
            let (got, id, _) = packet.publish()?;
            if got != topic {
                return Err(io::Error::other(format!("message on {got}, not {topic}")));
            }
            if let Some(id) = id {
                pubacks.extend_from_slice(&mqtt::puback(id));
            }
            received += 1;
        }
        if !client.buffered() && !pubacks.is_empty() {
            client.write(&pubacks)?;
            pubacks.clear();
        }
    }
    if !pubacks.is_empty() {
        client.write(&pubacks)?;
    }
    Ok(())
}

/// Publishes `count` messages at QoS 1 keeping `window` unacknowledged; the latency of
/// each PUBACK in ms.
fn publish(
    client: &mut MqttClient,
    topic: &str,
    payload: &[u8],
    count: usize,
    window: usize,
) -> io::Result<Vec<f64>> {
    let window = window.clamp(1, 65_000);
    let mut latencies = Vec::with_capacity(count);
    let mut in_flight: std::collections::VecDeque<(u16, Instant)> = Default::default();
    let mut await_one = |client: &mut MqttClient,
                         in_flight: &mut std::collections::VecDeque<(u16, Instant)>|
     -> io::Result<()> {
        let packet = client.read()?;
        if packet.kind() != mqtt::PUBACK {
            return Ok(());
        }
        let id = packet.ack_id()?;
        let at = in_flight
            .iter()
            .position(|(sent, _)| *sent == id)
            .ok_or_else(|| io::Error::other(format!("PUBACK for unknown packet id {id}")))?;
        let (_, sent_at) = in_flight.remove(at).expect("position found");
        latencies.push(sent_at.elapsed().as_secs_f64() * 1e3);
        Ok(())
    };
    for n in 0..count {
        while in_flight.len() >= window {
            await_one(client, &mut in_flight)?;
        }
        // Packet ids 1..=65535 (0 is not allowed), reused only long after their PUBACK.
        let id = (n % 65_535) as u16 + 1;
        client.write(&mqtt::publish_qos1(id, topic, payload))?;
        in_flight.push_back((id, Instant::now()));
    }
    while !in_flight.is_empty() {
        await_one(client, &mut in_flight)?;
    }
    Ok(latencies)
}

/// Runs the workload against a fresh private mosquitto.
pub fn run(params: Params) -> Row {
    let broker = Mosquitto::start();
    let payload = vec![b'x'; 100];
    let start = StartLine::new(params.pairs * 2);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for pair in 0..params.pairs {
        let topic = format!("pair/{pair}");
        let mut rx = MqttClient::connect(broker.addr, &format!("r{pair}")).expect("connect");
        rx.subscribe_qos1(&topic).expect("subscribe");
        let mut tx = MqttClient::connect(broker.addr, &format!("s{pair}")).expect("connect");
        let (barrier, count, rx_topic) = (start.clone(), params.messages, topic.clone());
        receivers.push(std::thread::spawn(move || {
            barrier.wait();
            receive(&mut rx, &rx_topic, count).expect("receiving");
            Instant::now()
        }));
        let (barrier, window, payload) = (start.clone(), params.window, payload.clone());
        senders.push(std::thread::spawn(move || {
            barrier.wait();
            let latencies = publish(&mut tx, &topic, &payload, count, window).expect("publishing");
            (latencies, Instant::now())
        }));
    }
    let cpu_before = process_cpu(broker.child.id());
    start.release();
    let (latencies, elapsed) = join_pairs(&start, senders, receivers);
    let cpu = process_cpu(broker.child.id())
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    eprintln!(
        "hub-bench: mosquitto saved its database {} times ({}), file: {:?}",
        broker.saves(),
        AUTOSAVE.trim().replace('\n', ", "),
        broker
            .db_file()
            .and_then(|f| std::fs::metadata(f).ok())
            .map(|m| m.len()),
    );
    let label = format!("{} pairs, mosquitto QoS1 persistent", params.pairs);
    let as_pairs = PairsParams {
        pairs: params.pairs,
        messages: params.messages,
        window: params.window,
        durability: "mosquitto",
    };
    json_pairs::row(label, &as_pairs, elapsed, latencies, broker.start_time, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the real broker; installs it if needed (run with `--ignored`).
    #[test]
    #[ignore]
    fn small_run_against_mosquitto() {
        let row = run(Params {
            pairs: 3,
            messages: 20,
            window: 4,
        });
        assert_eq!(row.figures[0], ("messages", 60.0));
    }
}
