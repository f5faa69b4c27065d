//! A reload costs relayed traffic nothing: while a client and a peer exchange a steady stream
//! of numbered packets through an allocation (ChannelData one way, plain UDP to the relayed
//! address the other), the relay is sent SIGHUP again and again, each time with a changed
//! configuration file and its TLS certificate re-read, and every packet arrives, both ways.
#![deny(unsafe_code)]

use icegate_tests::stun::{assert_success, xor_relayed, TurnClient};
use icegate_tests::{wait_for, Relay, RelayConfig, ServerKind};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Packets each way, and how fast they are sent.
const PACKETS: u32 = 8_000;
const PER_SECOND: u32 = 2_000;
/// Reloads while the packets flow, one every [`RELOAD_EVERY`].
const RELOADS: usize = 16;
const RELOAD_EVERY: Duration = Duration::from_millis(200);
const CHANNEL: u16 = 0x4000;

/// A configuration file that differs by `n` (a user quota), so that each reload really
/// swaps the relay's configuration for a new one.
fn write_config(path: &std::path::Path, n: usize) {
    std::fs::write(path, format!("user-quota = {}\n", 100 + n)).unwrap();
}

/// Sends `PACKETS` numbered datagrams (built by `frame`) at `PER_SECOND`.
fn send_paced(sock: &UdpSocket, to: SocketAddr, frame: impl Fn(u32) -> Vec<u8>) {
    let start = Instant::now();
    for seq in 0..PACKETS {
        let due = start + Duration::from_secs_f64(f64::from(seq) / f64::from(PER_SECOND));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sock.send_to(&frame(seq), to).expect("send");
    }
}

/// Receives on `sock` until `done` is set and it has been quiet for a while, collecting the
/// sequence numbers `seq_of` finds in what arrives.
fn receive(
    sock: UdpSocket,
    done: Arc<AtomicBool>,
    seq_of: impl Fn(&[u8]) -> Option<u32>,
) -> HashSet<u32> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = HashSet::new();
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some(seq) = seq_of(&buf[..n]) {
                    seen.insert(seq);
                }
            }
            Err(_) if done.load(Ordering::Relaxed) => return seen,
            Err(_) => {}
        }
    }
}

/// The sequence number at the start of `payload`.
fn seq(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?))
}

/// A payload of 160 bytes (an Opus frame's size) starting with `seq`.
fn payload(seq: u32) -> Vec<u8> {
    let mut p = vec![0x5a; 160];
    p[..4].copy_from_slice(&seq.to_be_bytes());
    p
}

#[test]
fn sighup_during_steady_relayed_traffic_drops_no_packet() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    write_config(&config, 0);
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            tls: true,
            icegate_args: vec!["--config".into(), config.to_str().unwrap().into()],
            ..RelayConfig::default()
        },
    );
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut client = TurnClient::new(relay.udp_addr(), "alice", "secret");
    let allocated = client.allocate();
    assert_success(&allocated, "allocate");
    let relayed = xor_relayed(&allocated).expect("XOR-RELAYED-ADDRESS");
    assert_success(&client.channel_bind(CHANNEL, peer_addr), "channel bind");
    let before = relay.metrics();

    let done = Arc::new(AtomicBool::new(false));
    // The peer receives the client's payloads as plain UDP from the relayed address.
    let at_peer = {
        let sock = peer.try_clone().unwrap();
        let done = Arc::clone(&done);
        std::thread::spawn(move || receive(sock, done, seq))
    };
    // The client receives the peer's payloads as ChannelData on its channel.
    let at_client = {
        let sock = client.udp.sock.try_clone().unwrap();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            receive(sock, done, |frame| {
                let header = frame.get(..4)?;
                (u16::from_be_bytes([header[0], header[1]]) == CHANNEL)
                    .then(|| seq(&frame[4..]))
                    .flatten()
            })
        })
    };
    let from_client = {
        let sock = client.udp.sock.try_clone().unwrap();
        let server = relay.udp_addr();
        std::thread::spawn(move || {
            send_paced(&sock, server, |n| {
                icegate_testkit::channel_data(CHANNEL, &payload(n))
            })
        })
    };
    let from_peer = {
        let sock = peer.try_clone().unwrap();
        std::thread::spawn(move || send_paced(&sock, relayed, payload))
    };

    // Reloads while the packets flow (8,000 at 2,000/s: 4 s; the reloads take 3.2 s).
    let pid = Pid::from_raw(relay.pid().unwrap() as i32);
    std::thread::sleep(RELOAD_EVERY);
    for n in 1..=RELOADS {
        write_config(&config, n);
        kill(pid, Signal::SIGHUP).unwrap();
        std::thread::sleep(RELOAD_EVERY);
    }
    from_client.join().unwrap();
    from_peer.join().unwrap();
    done.store(true, Ordering::Relaxed);
    let at_peer = at_peer.join().unwrap();
    let at_client = at_client.join().unwrap();

    let reloaded = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        let n = relay.log().matches("configuration reloaded").count();
        (n >= RELOADS).then_some(n)
    });
    assert!(
        reloaded.is_some(),
        "fewer than {RELOADS} reloads logged:\n{}",
        relay.log()
    );
    assert_eq!(
        relay.log().matches("TLS certificate reloaded").count(),
        RELOADS,
        "the certificate is re-read on every reload"
    );
    let lost = |seen: &HashSet<u32>| PACKETS as usize - seen.len();
    eprintln!(
        "{RELOADS} reloads during {PACKETS} packets each way at {PER_SECOND}/s: \
         {} lost client -> peer, {} lost peer -> client",
        lost(&at_peer),
        lost(&at_client)
    );
    assert_eq!(
        lost(&at_peer),
        0,
        "packets lost from the client to the peer"
    );
    assert_eq!(
        lost(&at_client),
        0,
        "packets lost from the peer to the client"
    );
    relay.assert_relayed(&before, 0.0, f64::from(PACKETS));
}
