//! Two clients behind two different NATs reach each other only through icegate-relay.
//!
//! The test builds a small internet out of network namespaces of its own (nothing it sends
//! leaves them):
//!
//! ```text
//!   lan-a 10.0.1.2 ── 10.0.1.1 nat-a 203.0.113.10 ─┐
//!                                                   ├─ bridge 203.0.113.1  pub (icegate-relay)
//!   lan-b 10.0.2.2 ── 10.0.2.1 nat-b 203.0.113.20 ─┘
//! ```
//!
//! `nat-a` and `nat-b` are home routers: they forward, masquerade what leaves by their public
//! side (nftables) and let in only what answers it. `pub` stands for the internet and routes no
//! private range. The relay runs in `pub` (`ip netns exec`); the clients are this process's
//! own UDP sockets, made by threads that entered `lan-a` and `lan-b`, driven by the harness's
//! [`TurnClient`].
//!
//! Proved: each client's XOR-MAPPED-ADDRESS is its NAT's public address (it is behind a NAT);
//! a datagram from A to B's private address or to B's public mapped address never reaches B;
//! after both allocate and permit each other's relayed address, a Send indication from A
//! reaches B as a Data indication from A's relayed address, and ChannelData from B reaches A
//! as a Data indication from B's relayed address; the relay's own counters saw both.
//!
//! Needs root, iproute2 and nftables (scripts/install-deps installs it); without them it says
//! SKIPPED and passes.
#![deny(unsafe_code)]

use icegate_tests::metrics::Metrics;
use icegate_tests::netns::{self, Netns};
use icegate_tests::server::{icegate_binary, stun_binding_probe};
use icegate_tests::stun::{
    assert_success, decode, encode, xor_mapped, xor_relayed, Data, Integrity, MessageClass,
    StunMessageBuilder, StunUdp, TurnClient, XorPeerAddress, SEND,
};
use icegate_tests::{have_tool, http, wait_for};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const RELAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const TURN_PORT: u16 = 3478;
const METRICS: &str = "127.0.0.1:9641";
const NAT_A_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NAT_B_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const HOST_A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// How long B listens for a datagram that must not come. On veths one namespace hop takes
/// microseconds, and the relayed exchange that follows (the positive control: same socket,
/// same NAT, a longer path through the relay) arrives in milliseconds, so silence over this
/// long means the datagrams were dropped, not late.
const SILENCE: Duration = Duration::from_millis(500);
/// How long a relayed datagram may take before the test gives up on it.
const DELIVERY: Duration = Duration::from_secs(3);

#[test]
fn clients_behind_two_nats_reach_each_other_only_through_the_relay() {
    if let Some(why) = netns::unavailable() {
        eprintln!("SKIPPED nat_namespaces: {why}");
        return;
    }
    if !have_tool("nft") {
        eprintln!(
            "SKIPPED nat_namespaces: `nft` is missing; scripts/install-deps installs nftables"
        );
        return;
    }
    netns::remove_stale();
    let started = Instant::now();

    // Declared before the relay, so dropped after it: the relay dies before its namespace.
    let net = Internet::build();
    let relay = NsRelay::start(&net.public);
    let server = SocketAddr::from((RELAY_IP, TURN_PORT));
    let mut a = client_in(&net.lan_a, HOST_A, server);
    let mut b = client_in(&net.lan_b, HOST_B, server);

    // (1) Both allocate; the relay sees each from its NAT's public address.
    let resp = a.allocate();
    assert_success(&resp, "A's Allocate");
    let (a_mapped, a_relayed) = addresses(&resp, "A");
    let resp = b.allocate();
    assert_success(&resp, "B's Allocate");
    let (b_mapped, b_relayed) = addresses(&resp, "B");
    for (who, mapped, public, private) in [
        ("A", a_mapped, NAT_A_PUBLIC, a.local_addr()),
        ("B", b_mapped, NAT_B_PUBLIC, b.local_addr()),
    ] {
        // The relay saw the NAT's address, not the client's own: the client is behind a NAT.
        assert_eq!(
            mapped.ip(),
            public,
            "{who}'s XOR-MAPPED-ADDRESS {mapped}: expected its NAT's, not its own {private}"
        );
    }
    assert_eq!(a_relayed.ip(), RELAY_IP, "A's XOR-RELAYED-ADDRESS");
    assert_eq!(b_relayed.ip(), RELAY_IP, "B's XOR-RELAYED-ADDRESS");

    // (2) No direct path from A to B. B's private address is routed nowhere on the internet;
    // its public mapped address is a NAT-B mapping for the relay only, so NAT B lets nothing
    // else in through it. Only this direction is tried: had B also sent to A's mapped address,
    // A's datagram would be an answer to it (a hole punch), which is not what is tested here.
    for to in [b.local_addr(), b_mapped] {
        a.udp
            .sock
            .send_to(b"direct, not relayed", to)
            .unwrap_or_else(|e| panic!("A sending to {to}: {e}"));
    }
    // See SILENCE for why a bounded wait proves something here.
    if let Some((bytes, from)) = b.udp.recv_raw(SILENCE) {
        panic!(
            "B received {} bytes directly from {from}: {bytes:02x?}",
            bytes.len()
        );
    }
    // And the datagram to the mapped address did cross the internet: NAT B got it on its
    // public side and kept it, so it is NAT B's filtering, not a broken path, that B owes
    // its silence to.
    assert!(
        unsolicited(&net.nat_b) >= 1,
        "A's datagram to {b_mapped} never reached NAT B"
    );

    // (3) Through the relay. Permissions are per peer IP; both relayed addresses share it.
    assert_success(
        &a.create_permission(b_relayed),
        "A's CreatePermission for B",
    );
    assert_success(
        &b.create_permission(a_relayed),
        "B's CreatePermission for A",
    );

    let a_to_b = b"from A behind NAT A, by Send indication";
    send_indication(&a, b_relayed, a_to_b);
    let (from, data) = data_indication(&b).expect("B got no Data indication from the relay");
    assert_eq!(
        from, a_relayed,
        "B's Data indication names A's relayed address"
    );
    assert_eq!(data, a_to_b, "what B received");

    const CHANNEL: u16 = 0x4000;
    assert_success(&b.channel_bind(CHANNEL, a_relayed), "B's ChannelBind to A");
    let b_to_a = b"from B behind NAT B, by ChannelData";
    b.udp
        .send_raw(&icegate_testkit::channel_data(CHANNEL, b_to_a));
    // A bound no channel, so the relay hands it B's data as a Data indication.
    let (from, data) = data_indication(&a).expect("A got no Data indication from the relay");
    assert_eq!(
        from, b_relayed,
        "A's Data indication names B's relayed address"
    );
    assert_eq!(data, b_to_a, "what A received");

    // (4) The relay counted both datagrams in both directions.
    let packets =
        |m: &Metrics, direction| m.sum("icegate_relay_packets_total", &[("direction", direction)]);
    let mut last = None;
    let counted = wait_for(Duration::from_secs(3), Duration::from_millis(50), || {
        let m = relay.metrics(&net.public);
        let seen = (packets(&m, "client_to_peer"), packets(&m, "peer_to_client"));
        last = Some(seen);
        (seen.0 >= 2.0 && seen.1 >= 2.0).then_some(())
    });
    assert!(
        counted.is_some(),
        "icegate_relay_packets_total (client_to_peer, peer_to_client) = {last:?}, expected 2 each"
    );
    eprintln!(
        "nat_namespaces: A {HOST_A} mapped {a_mapped} relayed {a_relayed}, \
         B {HOST_B} mapped {b_mapped} relayed {b_relayed}; done in {:?}",
        started.elapsed()
    );
}

/// The namespaces of the drawing at the top, configured. Dropping it deletes them all, and
/// with them every veth and nftables rule the test made.
struct Internet {
    public: Netns,
    lan_a: Netns,
    lan_b: Netns,
    nat_b: Netns,
    // Held for its drop only.
    _nat_a: Netns,
}

impl Internet {
    fn build() -> Internet {
        let ok = |r: Result<String, String>| r.unwrap_or_else(|e| panic!("{e}"));
        let public = Netns::add("pub").unwrap_or_else(|e| panic!("{e}"));
        ok(public.ip("link add inet type bridge"));
        ok(public.ip(&format!("addr add {RELAY_IP}/24 dev inet")));
        ok(public.ip("link set inet up"));
        let mut nats = Vec::new();
        let mut lans = Vec::new();
        for (side, nat_ip, host_ip) in [("a", NAT_A_PUBLIC, HOST_A), ("b", NAT_B_PUBLIC, HOST_B)] {
            let nat = Netns::add(&format!("nat-{side}")).unwrap_or_else(|e| panic!("{e}"));
            let lan = Netns::add(&format!("lan-{side}")).unwrap_or_else(|e| panic!("{e}"));
            let [a, b, c, _] = host_ip.octets();
            let router_ip = Ipv4Addr::new(a, b, c, 1);
            // Both ends of each veth are made inside namespaces: nothing appears on the host.
            ok(nat.ip(&format!(
                "link add wan type veth peer name to-nat-{side} netns {}",
                public.name()
            )));
            ok(public.ip(&format!("link set to-nat-{side} master inet up")));
            ok(nat.ip(&format!(
                "link add lan type veth peer name eth0 netns {}",
                lan.name()
            )));
            ok(nat.ip(&format!("addr add {nat_ip}/24 dev wan")));
            ok(nat.ip(&format!("addr add {router_ip}/24 dev lan")));
            ok(nat.ip("link set wan up"));
            ok(nat.ip("link set lan up"));
            // Upstream is `pub`, which forwards nothing: a private destination ends there.
            ok(nat.ip(&format!("route add default via {RELAY_IP}")));
            ok(lan.ip(&format!("addr add {host_ip}/24 dev eth0")));
            ok(lan.ip("link set eth0 up"));
            ok(lan.ip(&format!("route add default via {router_ip}")));
            nat.enable_forwarding().unwrap_or_else(|e| panic!("{e}"));
            nat.nft(HOME_ROUTER).unwrap_or_else(|e| panic!("{e}"));
            nats.push(nat);
            lans.push(lan);
        }
        let [lan_a, lan_b] = <[Netns; 2]>::try_from(lans).ok().expect("two LANs");
        let [nat_a, nat_b] = <[Netns; 2]>::try_from(nats).ok().expect("two NATs");
        Internet {
            public,
            lan_a,
            lan_b,
            nat_b,
            _nat_a: nat_a,
        }
    }
}

/// A home router's rules: what leaves by `wan` takes the router's address (masquerade), and
/// from `wan` only answers to that traffic come back in (conntrack). The `unsolicited`
/// counter counts new flows arriving on `wan` for the router itself, which is where a
/// datagram to a public address and port that maps nothing for its sender ends.
const HOME_ROUTER: &str = r#"
table ip home-router {
    counter unsolicited {}
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new counter name "unsolicited"
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
    }
}
"#;

/// Packets of the `unsolicited` counter of a router's [`HOME_ROUTER`] rules.
fn unsolicited(router: &Netns) -> u64 {
    let out = router
        .exec(
            "nft",
            &["list", "counter", "ip", "home-router", "unsolicited"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "packets")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {out:?}"))
}

/// icegate-relay running inside a namespace, killed on drop (its log printed if the test is
/// panicking). `Relay` in the harness starts it directly on loopback; this one needs
/// `ip netns exec` and the namespace's addresses.
struct NsRelay {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl NsRelay {
    fn start(ns: &Netns) -> NsRelay {
        let dir = tempfile::Builder::new()
            .prefix("icegate-test-")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("server.log");
        let out = File::create(&log).expect("create log file");
        let relay_ip = RELAY_IP.to_string();
        let args = [
            "--listening-ip",
            &relay_ip,
            "--listening-port",
            &TURN_PORT.to_string(),
            "--relay-ip",
            &relay_ip,
            "--min-port",
            "49152",
            "--max-port",
            "49407",
            "--realm",
            "icegate.test",
            "--user",
            "alice:secret",
            // The "internet" is a documentation range, which the default peer filter denies
            // (it is not routed on the real internet); the relayed addresses are in it.
            "--allowed-peer-ip",
            "203.0.113.0/24",
            // Loopback of `pub`, reachable only from inside it.
            "--metrics-listen",
            METRICS,
            "--workers",
            "1",
        ]
        .map(String::from);
        let mut cmd = ns.command(icegate_binary());
        // A test killed outright runs no drops; the relay must not outlive it, unseen in a
        // namespace nobody can name any more. `ip netns exec` execs the relay, which keeps
        // the parent-death signal.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("clone log fd")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn ip netns exec icegate-relay");
        eprintln!(
            "[harness] started icegate-relay pid {} in {} ({})",
            child.id(),
            ns.name(),
            args.join(" ")
        );
        let mut relay = NsRelay {
            child,
            log,
            _dir: dir,
        };
        let server = SocketAddr::from((RELAY_IP, TURN_PORT));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ns.enter(|| stun_binding_probe(server)) {
            if let Ok(Some(status)) = relay.child.try_wait() {
                panic!("icegate-relay exited during startup with {status}");
            }
            assert!(Instant::now() < deadline, "icegate-relay not ready in 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        relay
    }

    /// Scrapes `/metrics` from inside `ns`, where the listener is.
    fn metrics(&self, ns: &Netns) -> Metrics {
        let addr: SocketAddr = METRICS.parse().unwrap();
        let resp = ns
            .enter(|| http::get(addr, "/metrics", Duration::from_secs(2)))
            .expect("GET /metrics");
        assert_eq!(resp.status, 200, "GET /metrics: {}", resp.body);
        Metrics::parse(&resp.body).expect("valid Prometheus text")
    }
}

impl Drop for NsRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let f = File::open(&self.log).map(BufReader::new);
            eprintln!("----- icegate-relay log -----");
            for line in f.into_iter().flat_map(|f| f.lines().map_while(Result::ok)) {
                eprintln!("{line}");
            }
            eprintln!("----- end of icegate-relay log -----");
        }
    }
}

/// A TURN client (alice) whose socket is bound to `host` inside `ns`. `TurnClient::new` binds
/// on 127.0.0.1, which cannot reach the relay from a LAN; its fields are public, so it is
/// assembled around a socket made in the namespace.
fn client_in(ns: &Netns, host: Ipv4Addr, server: SocketAddr) -> TurnClient {
    let sock = ns.enter(|| UdpSocket::bind((host, 0)).expect("bind in the LAN"));
    TurnClient {
        udp: StunUdp { sock, server },
        username: "alice".into(),
        password: "secret".into(),
        integrity: Integrity::Sha1,
        preferred_algorithm: None,
        realm: None,
        nonce: None,
        server_algorithms: None,
    }
}

/// XOR-MAPPED-ADDRESS and XOR-RELAYED-ADDRESS of an Allocate success response.
fn addresses(resp: &icegate_tests::stun::StunMessage, who: &str) -> (SocketAddr, SocketAddr) {
    (
        xor_mapped(resp).unwrap_or_else(|| panic!("{who}'s Allocate: no XOR-MAPPED-ADDRESS")),
        xor_relayed(resp).unwrap_or_else(|| panic!("{who}'s Allocate: no XOR-RELAYED-ADDRESS")),
    )
}

/// A Send indication carrying `payload` to `peer` (no integrity, as clients send them).
fn send_indication(c: &TurnClient, peer: SocketAddr, payload: &[u8]) {
    let msg = StunMessageBuilder::new(SEND, MessageClass::Indication)
        .with_attribute(XorPeerAddress::from(peer))
        .with_attribute(Data::new(payload))
        .build();
    c.udp.send_raw(&encode(&msg));
}

/// The next Data indication `c` receives, as (peer, payload); `None` if nothing came within
/// [`DELIVERY`]. Panics on anything else, which names what arrived.
fn data_indication(c: &TurnClient) -> Option<(SocketAddr, Vec<u8>)> {
    let (bytes, from) = c.udp.recv_raw(DELIVERY)?;
    assert_eq!(from, c.udp.server, "a datagram not from the relay");
    let msg = decode(&bytes, None)
        .unwrap_or_else(|e| panic!("not a STUN message: {e}; bytes {bytes:02x?}"));
    let peer = msg
        .get::<XorPeerAddress>()
        .and_then(|a| a.as_xor_peer_address().ok())
        .expect("Data indication without XOR-PEER-ADDRESS");
    let data = msg
        .get::<Data>()
        .and_then(|a| a.as_data().ok())
        .expect("Data indication without DATA");
    Some((*peer.socket_address(), data.as_bytes().to_vec()))
}
