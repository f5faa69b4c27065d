//! The relay driven by an independent TURN client, the webrtc-rs `turn` crate: allocate
//! with a static user and with TURN REST credentials, relay datagrams both ways between
//! the client and a UDP peer socket on 127.0.0.1 (through a permission, Send/Data
//! indications and a channel), refresh, and close.
//!
//! The webrtc-rs client owns the protocol exchange, so its UDP socket is wrapped in a
//! [`TapConn`] that counts what crosses it (to prove ChannelData was really used) and can
//! divert the responses to raw requests the test sends on the same 5-tuple (Refresh with a
//! LIFETIME, which the client has no public API for).
#![deny(unsafe_code)]

use icegate_tests::stun::{self as st, LifeTime, REFRESH};
use icegate_tests::{Relay, RelayConfig, ServerKind};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

const SECRET: &str = "webrtc-rest-secret";
const STEP: Duration = Duration::from_secs(5);

/// `#[tokio::test]` twins of `icegate_tests::server_tests!`.
macro_rules! async_server_tests {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn icegate() {
                super::$name(icegate_tests::ServerKind::Icegate).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "reference run against coturn; run with --run-ignored all"]
            async fn coturn() {
                super::$name(icegate_tests::ServerKind::Coturn).await
            }
        }
    )* };
}

async_server_tests!(
    static_user_relays_both_ways,
    rest_credentials_relay_both_ways
);

async fn static_user_relays_both_ways(kind: ServerKind) {
    let relay = Relay::start(kind, RelayConfig::default());
    let (user, pw) = relay.config.users[0].clone();
    exercise(&relay, &user, &pw).await;
}

async fn rest_credentials_relay_both_ways(kind: ServerKind) {
    let config = RelayConfig {
        users: vec![],
        auth_secrets: vec![SECRET.into()],
        ..RelayConfig::default()
    };
    let relay = Relay::start(kind, config);
    // The webrtc-rs implementation of the REST scheme, independent of icegate's.
    let (user, pw) =
        turn::auth::generate_long_term_credentials(SECRET, Duration::from_secs(600)).unwrap();
    exercise(&relay, &user, &pw).await;
}

/// What crossed the client's socket.
#[derive(Default)]
struct Tally {
    channel_data_sent: AtomicUsize,
    channel_data_received: AtomicUsize,
    send_indications: AtomicUsize,
    data_indications: AtomicUsize,
}

/// A UDP socket for the webrtc-rs client that counts traffic and diverts responses to the
/// test's own requests.
struct TapConn {
    sock: UdpSocket,
    server: SocketAddr,
    tally: Tally,
    divert: Mutex<HashMap<[u8; 12], mpsc::UnboundedSender<Vec<u8>>>>,
    /// REALM and NONCE of the client's last authenticated request.
    credentials: Mutex<Option<(String, String)>>,
}

fn is_channel_data(b: &[u8]) -> bool {
    b.len() >= 4 && (0x40..=0x7f).contains(&b[0])
}

fn stun_type(b: &[u8]) -> Option<u16> {
    (b.len() >= 20 && b[0] & 0xc0 == 0 && b[4..8] == [0x21, 0x12, 0xa4, 0x42])
        .then(|| u16::from_be_bytes([b[0], b[1]]))
}

const SEND_INDICATION: u16 = 0x0016;
const DATA_INDICATION: u16 = 0x0017;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;

impl TapConn {
    async fn bind(server: SocketAddr) -> TapConn {
        TapConn {
            sock: UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap(),
            server,
            tally: Tally::default(),
            divert: Mutex::new(HashMap::new()),
            credentials: Mutex::new(None),
        }
    }

    fn count(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends a request on the client's 5-tuple and returns the response, which the
    /// webrtc-rs client never sees. Retransmits like RFC 8489 over UDP (500 ms, 4 tries).
    async fn transact(&self, msg: &st::StunMessage) -> Vec<u8> {
        let bytes = st::encode(msg);
        let txid = *msg.transaction_id().as_bytes();
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.divert.lock().unwrap().insert(txid, tx);
        for _ in 0..4 {
            self.sock.send_to(&bytes, self.server).await.unwrap();
            if let Ok(Some(resp)) = timeout(Duration::from_millis(500), rx.recv()).await {
                self.divert.lock().unwrap().remove(&txid);
                return resp;
            }
        }
        panic!("no response to {:?} from {}", msg.method(), self.server);
    }

    async fn recv_from_impl(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.sock.recv_from(buf).await?;
            let b = &buf[..n];
            if from == self.server {
                if is_channel_data(b) {
                    Self::count(&self.tally.channel_data_received);
                } else if stun_type(b) == Some(DATA_INDICATION) {
                    Self::count(&self.tally.data_indications);
                } else if stun_type(b).is_some() {
                    let txid: [u8; 12] = b[8..20].try_into().unwrap();
                    if let Some(tx) = self.divert.lock().unwrap().get(&txid) {
                        let _ = tx.send(b.to_vec());
                        continue;
                    }
                }
            }
            return Ok((n, from));
        }
    }

    async fn send_to_impl(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if target == self.server {
            if is_channel_data(buf) {
                Self::count(&self.tally.channel_data_sent);
            } else if stun_type(buf) == Some(SEND_INDICATION) {
                Self::count(&self.tally.send_indications);
            } else if let (Some(realm), Some(nonce)) = (
                st::raw_attribute(buf, ATTR_REALM),
                st::raw_attribute(buf, ATTR_NONCE),
            ) {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                *self.credentials.lock().unwrap() = Some((text(realm), text(nonce)));
            }
        }
        Ok(self.sock.send_to(buf, target).await?)
    }
}

type ConnFuture<'a, T> = Pin<Box<dyn Future<Output = webrtc_util::Result<T>> + Send + 'a>>;

fn not_applicable<'a, T: 'a>() -> ConnFuture<'a, T> {
    Box::pin(async { Err(webrtc_util::Error::Other("not applicable".into())) })
}

// `Conn` is an `async_trait`; this is its desugared form (the macro is not a dependency).
impl Conn for TapConn {
    fn connect<'a, 't>(&'a self, _addr: SocketAddr) -> ConnFuture<'t, ()>
    where
        'a: 't,
        Self: 't,
    {
        not_applicable()
    }
    fn recv<'a, 'b, 't>(&'a self, _buf: &'b mut [u8]) -> ConnFuture<'t, usize>
    where
        'a: 't,
        'b: 't,
        Self: 't,
    {
        not_applicable()
    }
    fn recv_from<'a, 'b, 't>(&'a self, buf: &'b mut [u8]) -> ConnFuture<'t, (usize, SocketAddr)>
    where
        'a: 't,
        'b: 't,
        Self: 't,
    {
        Box::pin(self.recv_from_impl(buf))
    }
    fn send<'a, 'b, 't>(&'a self, _buf: &'b [u8]) -> ConnFuture<'t, usize>
    where
        'a: 't,
        'b: 't,
        Self: 't,
    {
        not_applicable()
    }
    fn send_to<'a, 'b, 't>(&'a self, buf: &'b [u8], target: SocketAddr) -> ConnFuture<'t, usize>
    where
        'a: 't,
        'b: 't,
        Self: 't,
    {
        Box::pin(self.send_to_impl(buf, target))
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.sock.local_addr()?)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }
    fn close<'a, 't>(&'a self) -> ConnFuture<'t, ()>
    where
        'a: 't,
        Self: 't,
    {
        Box::pin(async { Ok(()) })
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Payloads of varied sizes (odd ones exercise ChannelData padding), some shaped like STUN
/// or ChannelData headers so that a relay which inspects payloads would mangle them.
fn payload(i: usize) -> Vec<u8> {
    const SIZES: [usize; 8] = [1, 2, 3, 5, 100, 513, 1000, 1200];
    let mut p: Vec<u8> = (0..SIZES[i % SIZES.len()])
        .map(|_| rand::random())
        .collect();
    match i % 5 {
        1 if p.len() >= 20 => {
            p[..8].copy_from_slice(&[0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]);
        }
        3 if p.len() >= 4 => p[..4].copy_from_slice(&[0x40, 0x00, 0x00, 0x10]),
        _ => {}
    }
    p
}

/// Client -> peer and the peer's reply (the bytes reversed) back, checking both arrive
/// intact and with the right addresses.
async fn round_trip(
    relay: &Relay,
    conn: &(impl Conn + ?Sized),
    peer: &UdpSocket,
    relayed: SocketAddr,
    i: usize,
) {
    let peer_addr = peer.local_addr().unwrap();
    let out = payload(i);
    // webrtc-rs returns the size of the wrapped message, not of the payload.
    timeout(STEP, conn.send_to(&out, peer_addr))
        .await
        .unwrap_or_else(|_| panic!("send_to #{i} hung"))
        .unwrap_or_else(|e| panic!("send_to #{i} ({} bytes): {e}", out.len()));

    let mut buf = vec![0u8; 2048];
    let (n, from) = timeout(STEP, peer.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "peer got nothing for datagram #{i} ({} bytes){}",
                out.len(),
                relay_counters(relay)
            )
        })
        .unwrap();
    assert_eq!(
        from, relayed,
        "datagram #{i} must come from the relayed address"
    );
    assert_eq!(&buf[..n], &out[..], "datagram #{i} to the peer altered");

    let back: Vec<u8> = out.iter().rev().copied().collect();
    peer.send_to(&back, relayed).await.unwrap();
    let (n, from) = timeout(STEP, conn.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "client got no reply #{i} ({} bytes){}",
                back.len(),
                relay_counters(relay)
            )
        })
        .unwrap();
    assert_eq!(from, peer_addr, "reply #{i} must be attributed to the peer");
    assert_eq!(&buf[..n], &back[..], "reply #{i} to the client altered");
}

/// For failure messages: icegate's request, packet and drop counters.
fn relay_counters(relay: &Relay) -> String {
    let Some(m) = relay.try_metrics() else {
        return String::new();
    };
    let lines: Vec<&str> = m
        .raw
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && ["requests_total", "packets_total", "dropped", "malformed"]
                    .iter()
                    .any(|k| l.contains(k))
        })
        .collect();
    format!("; relay counters:\n{}", lines.join("\n"))
}

async fn exercise(relay: &Relay, user: &str, pw: &str) {
    let server = relay.udp_addr();
    let tap = Arc::new(TapConn::bind(server).await);
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: user.into(),
        password: pw.into(),
        realm: String::new(),
        software: "icegate-tests webrtc-rs".into(),
        rto_in_ms: 0,
        conn: tap.clone(),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();

    let mapped = timeout(STEP, client.send_binding_request())
        .await
        .expect("binding hung")
        .expect("binding");
    assert_eq!(mapped, tap.sock.local_addr().unwrap(), "XOR-MAPPED-ADDRESS");

    let before = relay.try_metrics();
    let conn = timeout(STEP, client.allocate())
        .await
        .expect("allocate hung")
        .unwrap_or_else(|e| panic!("allocate as {user:?}: {e}"));
    let relayed = conn.local_addr().unwrap();
    let (min, max) = relay.config.port_range.unwrap_or(relay.ports.relay_range());
    assert_eq!(
        relayed.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "relayed address"
    );
    assert!(
        (min..=max).contains(&relayed.port()),
        "relayed port {} outside {min}-{max}",
        relayed.port()
    );

    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    // The first datagram creates the permission and goes out as a Send indication while
    // the client binds a channel in the background; later ones use ChannelData once the
    // binding is confirmed. Keep going until ChannelData has carried traffic both ways.
    let mut i = 0;
    while i < 8
        || tap.tally.channel_data_sent.load(Ordering::Relaxed) < 4
        || tap.tally.channel_data_received.load(Ordering::Relaxed) < 4
    {
        assert!(
            i < 100,
            "no ChannelData after {i} datagrams: ChannelBind never completed? \
             (sent {} ChannelData, {} Send indications; received {} ChannelData, {} Data indications)",
            tap.tally.channel_data_sent.load(Ordering::Relaxed),
            tap.tally.send_indications.load(Ordering::Relaxed),
            tap.tally.channel_data_received.load(Ordering::Relaxed),
            tap.tally.data_indications.load(Ordering::Relaxed),
        );
        round_trip(relay, &conn, &peer, relayed, i).await;
        i += 1;
        if i >= 8 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        tap.tally.send_indications.load(Ordering::Relaxed) >= 1,
        "the first datagram goes out as a Send indication before the channel is bound"
    );

    // Refresh with a LIFETIME above the 600 s default and below both servers' 3600 s
    // maximum: RFC 8656 section 7.3 grants exactly the requested value then. The request
    // reuses the client's realm and nonce: a new 401 challenge on this 5-tuple may replace
    // the nonce (coturn keeps one per session) and make the client's close() fail with 438.
    let mut auth = st::TurnClient::new(server, user, pw);
    let (realm, nonce) = tap
        .credentials
        .lock()
        .unwrap()
        .clone()
        .expect("client authenticated");
    auth.realm = Some(realm);
    auth.nonce = Some(nonce);
    let refresh = auth.build_authed(REFRESH, &[LifeTime::from(900).into()]);
    let raw = tap.transact(&refresh).await;
    let resp = st::decode(&raw, auth.key().as_ref())
        .unwrap_or_else(|e| panic!("Refresh response: {e}; {raw:02x?}"));
    st::assert_success(&resp, "Refresh LIFETIME 900");
    assert_eq!(
        st::lifetime(&resp),
        Some(900),
        "granted lifetime: {}",
        st::describe(&resp)
    );

    // The allocation still relays after the refresh.
    round_trip(relay, &conn, &peer, relayed, i).await;
    let trips = i + 1;

    // close() sends Refresh LIFETIME 0 and does not wait for the answer; the server reads
    // this 5-tuple in order, so the next request sees the result. coturn, though, only
    // marks the allocation and deletes it from its once-a-second timer; a Refresh that
    // arrives before then revives it, so let that timer run first.
    timeout(STEP, conn.close())
        .await
        .expect("close hung")
        .unwrap();
    if relay.kind == ServerKind::Coturn {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let mut resp = None;
    // The nonce may have ended with the allocation (coturn's does): retry once on 438.
    for _ in 0..2 {
        let refresh = auth.build_authed(REFRESH, &[LifeTime::from(600).into()]);
        let raw = tap.transact(&refresh).await;
        let r = st::decode(&raw, auth.key().as_ref())
            .or_else(|_| st::decode(&raw, None))
            .unwrap_or_else(|e| panic!("Refresh after close: {e}; {raw:02x?}"));
        let stale = st::error_code(&r) == Some(438);
        if stale {
            auth.learn(&r);
        }
        resp = Some(r);
        if !stale {
            break;
        }
    }
    let resp = resp.unwrap();
    st::assert_error(&resp, 437, "Refresh after the client closed its allocation");

    // Nothing reaches the client through the deleted allocation.
    let delivered = || {
        tap.tally.channel_data_received.load(Ordering::Relaxed)
            + tap.tally.data_indications.load(Ordering::Relaxed)
    };
    let was = delivered();
    // The relayed port closes with the allocation, so the peer's datagram is refused by the
    // kernel: an ICMP port unreachable, which a connected UDP socket reports as
    // ECONNREFUSED. That refusal proves the datagram was dealt with (no socket took it), so
    // nothing can still be on its way to the client when the tallies are read. ICMP errors
    // share a global budget per host (net.ipv4.icmp_msgs_per_sec), so a busy host may
    // swallow one: send again then, each a datagram the client must not get either.
    peer.connect(relayed).await.unwrap();
    let mut buf = [0u8; 64];
    let mut refused = false;
    for _ in 0..20 {
        peer.send(b"after close").await.unwrap();
        match timeout(Duration::from_millis(250), peer.recv(&mut buf)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            Ok(Err(e)) => panic!("peer recv: {e}"),
            Ok(Ok(n)) => panic!(
                "the deleted allocation's relayed port answered: {:02x?}",
                &buf[..n]
            ),
            Err(_elapsed) => {}
        }
    }
    assert!(
        refused,
        "the relayed port {relayed} still takes datagrams after the allocation was deleted"
    );
    assert_eq!(
        delivered(),
        was,
        "a datagram was relayed after the allocation was deleted"
    );
    client.close().await.unwrap();

    if let Some(before) = before {
        let sum = |m: &icegate_tests::Metrics, dir: &str| {
            m.sum("icegate_relay_packets_total", &[("direction", dir)])
        };
        for dir in ["client_to_peer", "peer_to_client"] {
            let want = sum(&before, dir) + trips as f64;
            let now = relay.wait_metric_at_least(
                "icegate_relay_packets_total",
                &[("direction", dir)],
                want,
            );
            assert!(
                now >= want,
                "packets_total{{direction={dir}}} = {now}, want >= {want}"
            );
        }
        let m = relay.metrics();
        let active = m.sum("icegate_relay_allocations_active", &[]);
        assert_eq!(
            active, 0.0,
            "allocations_active after close; scrape:\n{}",
            m.raw
        );
        let total = m.sum(
            "icegate_relay_allocations_total",
            &[("transport", "udp"), ("family", "ipv4")],
        ) - before.sum(
            "icegate_relay_allocations_total",
            &[("transport", "udp"), ("family", "ipv4")],
        );
        assert_eq!(
            total, 1.0,
            "one UDP/IPv4 allocation made; scrape:\n{}",
            m.raw
        );
    }
}
