//! The relay driven by coturn's command-line clients (`turnutils_stunclient`,
//! `turnutils_uclient` with `turnutils_peer` as the peer), all on 127.0.0.1.
#![deny(unsafe_code)]

use icegate_tests::tools::{
    parse_stunclient_reflexive, run_uclient, run_uclient_to, run_with_timeout, Peer,
};
use icegate_tests::{require_tool, server_tests, Relay, RelayConfig, ServerKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::Duration;

const UCLIENT_TIMEOUT: Duration = Duration::from_secs(40);
const SECRET: &str = "rest-api-secret-42";

fn stunclient_mapped_address(kind: ServerKind) {
    require_tool("turnutils_stunclient");
    let relay = Relay::start(kind, RelayConfig::default());
    let before = relay.try_metrics();
    let (status, out) = run_with_timeout(
        Command::new("turnutils_stunclient").args([
            "-p",
            &relay.ports.listen().to_string(),
            "127.0.0.1",
        ]),
        Duration::from_secs(15),
    );
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "turnutils_stunclient failed ({status:?}):\n{out}"
    );
    let mapped = parse_stunclient_reflexive(&out)
        .unwrap_or_else(|| panic!("no reflexive address in output:\n{out}"));
    assert_eq!(
        mapped.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "output:\n{out}"
    );
    assert_ne!(mapped.port(), 0);
    if let Some(before) = before {
        let labels = [("method", "binding"), ("result", "success")];
        let was = before.sum("icegate_relay_requests_total", &labels);
        let now = relay.wait_metric_at_least("icegate_relay_requests_total", &labels, was + 1.0);
        assert!(
            now > was,
            "binding success counter did not move ({was} -> {now})"
        );
    }
}

/// One `turnutils_uclient` run through the relay; asserts no loss and that the relay's
/// counters saw the allocations and the packets.
struct UclientCase<'a> {
    config: RelayConfig,
    /// Flags besides the common `-n -m -l -z -e -r`.
    flags: &'a [&'a str],
    clients: u32,
    messages: u32,
    /// Expected `transport` label of the allocations.
    transport: &'a str,
    tls: bool,
}

fn run_case(kind: ServerKind, case: UclientCase) {
    let mut config = case.config;
    config.tls = case.tls;
    let relay = Relay::start(kind, config);
    let _peer = Peer::start(relay.ports.peer());
    let before = relay.try_metrics();
    let mut args: Vec<String> = [
        "-n",
        &case.messages.to_string(),
        "-m",
        &case.clients.to_string(),
        "-l",
        "172",
        "-z",
        "20",
        "-e",
        "127.0.0.1",
        "-r",
        &relay.ports.peer().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(case.flags.iter().map(|s| s.to_string()));
    let port = if case.tls {
        relay.ports.tls()
    } else {
        relay.ports.listen()
    };
    let report = run_uclient(&args, port, UCLIENT_TIMEOUT);
    let tail: String = report
        .output
        .lines()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        report.status.map(|s| s.success()).unwrap_or(false),
        "turnutils_uclient exit status {:?}; output tail:\n{tail}",
        report.status
    );
    let expected_min = u64::from(case.messages) * u64::from(case.clients);
    assert!(
        report.sent >= expected_min,
        "sent {} < {expected_min}; output tail:\n{tail}",
        report.sent
    );
    assert_eq!(
        (report.lost, report.received, report.send_dropped),
        (0, report.sent, 0),
        "lost packets through the relay; output tail:\n{tail}"
    );
    assert_eq!(report.lost_percent, 0.0);

    if let Some(before) = before {
        let after = relay.metrics();
        let allocs = |m: &icegate_tests::Metrics| {
            m.sum(
                "icegate_relay_allocations_total",
                &[("transport", case.transport), ("family", "ipv4")],
            )
        };
        assert!(
            allocs(&after) - allocs(&before) >= f64::from(case.clients),
            "icegate_relay_allocations_total{{transport={}}} moved {} -> {}",
            case.transport,
            allocs(&before),
            allocs(&after)
        );
        // Over TCP relayed connections (RFC 6062) the bytes are a stream: the relay counts
        // what each read brought, so there may be fewer "packets" than messages.
        let stream_relay = case.flags.contains(&"-T");
        if stream_relay {
            let grew = |name: &str, labels: &[(&str, &str)]| {
                after.sum(name, labels) - before.sum(name, labels)
            };
            let peers = "icegate_relay_peer_connections_total";
            for direction in ["outgoing", "incoming"] {
                let made = grew(peers, &[("direction", direction), ("result", "made")]);
                assert!(
                    made >= f64::from(case.clients / 2),
                    "{peers}{{direction={direction},result=made}} grew by {made}"
                );
            }
            let binds = grew(
                "icegate_relay_requests_total",
                &[("method", "connection_bind"), ("result", "success")],
            );
            assert!(
                binds >= f64::from(case.clients),
                "ConnectionBind successes grew by {binds}"
            );
        }
        for dir in ["client_to_peer", "peer_to_client"] {
            let d = after.sum("icegate_relay_packets_total", &[("direction", dir)])
                - before.sum("icegate_relay_packets_total", &[("direction", dir)]);
            assert!(
                d >= report.sent as f64 || stream_relay && d > 0.0,
                "icegate_relay_packets_total{{direction={dir}}} grew by {d}, uclient sent {}",
                report.sent
            );
            let b = after.sum("icegate_relay_bytes_total", &[("direction", dir)])
                - before.sum("icegate_relay_bytes_total", &[("direction", dir)]);
            assert!(
                b >= (report.sent * 172) as f64,
                "icegate_relay_bytes_total{{direction={dir}}} grew by {b}"
            );
        }
    }
}

fn static_user() -> &'static [&'static str] {
    &["-u", "alice", "-w", "secret"]
}

/// Defaults of turnutils_uclient: UDP, channels, RTP+RTCP pairs (EVEN-PORT with
/// RESERVATION-TOKEN for the RTCP allocation).
fn uclient_udp_channels_default(kind: ServerKind) {
    run_case(
        kind,
        UclientCase {
            config: RelayConfig::default(),
            flags: static_user(),
            clients: 5,
            messages: 100,
            transport: "udp",
            tls: false,
        },
    );
}

/// Plain static long-term user, one allocation per client (`-c`: no RTCP).
fn uclient_udp_static_user(kind: ServerKind) {
    run_case(
        kind,
        UclientCase {
            config: RelayConfig::default(),
            flags: &["-c", "-u", "alice", "-w", "secret"],
            clients: 5,
            messages: 100,
            transport: "udp",
            tls: false,
        },
    );
}

/// Send/Data indications instead of channels.
fn uclient_udp_send_indications(kind: ServerKind) {
    run_case(
        kind,
        UclientCase {
            config: RelayConfig::default(),
            flags: &["-s", "-c", "-u", "alice", "-w", "secret"],
            clients: 5,
            messages: 100,
            transport: "udp",
            tls: false,
        },
    );
}

fn uclient_tcp(kind: ServerKind) {
    run_case(
        kind,
        UclientCase {
            config: RelayConfig::default(),
            flags: &["-t", "-c", "-u", "alice", "-w", "secret"],
            clients: 5,
            messages: 100,
            transport: "tcp",
            tls: false,
        },
    );
}

fn uclient_tls(kind: ServerKind) {
    run_case(
        kind,
        UclientCase {
            config: RelayConfig::default(),
            flags: &["-t", "-S", "-c", "-u", "alice", "-w", "secret"],
            clients: 5,
            messages: 100,
            transport: "tls",
            tls: true,
        },
    );
}

/// `-S` without `-t`: DTLS over UDP on the TLS port.
fn uclient_dtls(kind: ServerKind) {
    run_case(
        kind,
        UclientCase {
            config: RelayConfig::default(),
            flags: &["-S", "-c", "-u", "alice", "-w", "secret"],
            clients: 5,
            messages: 100,
            transport: "dtls",
            tls: true,
        },
    );
}

/// Client-to-client: pairs of clients relay to each other's relayed addresses.
fn uclient_client_to_client(kind: ServerKind) {
    run_case(
        kind,
        UclientCase {
            config: RelayConfig::default(),
            flags: &["-y", "-c", "-u", "alice", "-w", "secret"],
            clients: 4,
            messages: 100,
            transport: "udp",
            tls: false,
        },
    );
}

/// RFC 6062 TCP allocations (`-T`, which implies `-t -y -c`): pairs of clients, each with a
/// TCP allocation over a TCP control connection; one Connects from its relayed address to the
/// other's, which is told with a ConnectionAttempt, and both bind the peer connection to a
/// data connection with ConnectionBind. Both relayed addresses are on 127.0.0.1.
fn uclient_tcp_allocations(kind: ServerKind) {
    run_case(
        kind,
        UclientCase {
            config: RelayConfig::default(),
            flags: &["-T", "-t", "-y", "-u", "alice", "-w", "secret"],
            clients: 4,
            messages: 100,
            transport: "tcp",
            tls: false,
        },
    );
}

/// The same over TLS control and data connections.
fn uclient_tcp_allocations_tls(kind: ServerKind) {
    run_case(
        kind,
        UclientCase {
            config: RelayConfig::default(),
            flags: &["-T", "-t", "-S", "-y", "-u", "alice", "-w", "secret"],
            clients: 4,
            messages: 100,
            transport: "tls",
            tls: true,
        },
    );
}

/// TURN REST API credentials (username "<expiry>:<user>", password
/// base64(HMAC-SHA1(secret, username))).
fn uclient_rest_secret(kind: ServerKind) {
    run_case(
        kind,
        UclientCase {
            config: RelayConfig {
                users: vec![],
                auth_secrets: vec![SECRET.into()],
                ..RelayConfig::default()
            },
            flags: &["-c", "-u", "bob", "-W", SECRET],
            clients: 5,
            messages: 100,
            transport: "udp",
            tls: false,
        },
    );
}

/// A wrong REST secret must not get an allocation.
fn uclient_rest_wrong_secret_rejected(kind: ServerKind) {
    let relay = Relay::start(
        kind,
        RelayConfig {
            users: vec![],
            auth_secrets: vec![SECRET.into()],
            ..RelayConfig::default()
        },
    );
    let _peer = Peer::start(relay.ports.peer());
    let args: Vec<String> = [
        "-n",
        "5",
        "-m",
        "1",
        "-c",
        "-u",
        "bob",
        "-W",
        "not-the-secret",
        "-e",
        "127.0.0.1",
        "-r",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([relay.ports.peer().to_string()])
    .collect();
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(&args)
        .args(["-p", &relay.ports.listen().to_string(), "127.0.0.1"]);
    let (status, out) = run_with_timeout(&mut cmd, UCLIENT_TIMEOUT);
    assert!(
        !status.map(|s| s.success()).unwrap_or(true),
        "uclient with a wrong REST secret succeeded ({status:?}):\n{out}"
    );
    assert!(
        out.contains("Cannot complete Allocation"),
        "expected an allocation failure:\n{out}"
    );
}

/// A relay on both 127.0.0.1 and ::1, with relay addresses of both families.
fn dual_stack_config() -> RelayConfig {
    let v6 = ["--listening-ip", "::1", "--relay-ip", "::1"]
        .map(String::from)
        .to_vec();
    RelayConfig {
        icegate_args: v6.clone(),
        coturn_args: v6,
        ..RelayConfig::default()
    }
}

/// Runs uclient against `server`, relaying to a `turnutils_peer` on `peer_ip`; asserts no loss
/// and returns how far `icegate_relay_allocations_total{family}` moved (0 for coturn).
fn run_dual_stack(
    kind: ServerKind,
    server: IpAddr,
    peer_ip: IpAddr,
    flags: &[&str],
    family: &str,
) -> f64 {
    run_dual_stack_over(kind, server, peer_ip, flags, family, false)
}

/// [`run_dual_stack`], to the TLS port when `tls` (with `-S`, and `-t` for TLS rather than
/// DTLS).
fn run_dual_stack_over(
    kind: ServerKind,
    server: IpAddr,
    peer_ip: IpAddr,
    flags: &[&str],
    family: &str,
    tls: bool,
) -> f64 {
    let relay = Relay::start(
        kind,
        RelayConfig {
            tls,
            ..dual_stack_config()
        },
    );
    let _peer = Peer::start_on(peer_ip, relay.ports.peer());
    let count = |r: &Relay| {
        r.try_metrics().map_or(0.0, |m| {
            m.sum("icegate_relay_allocations_total", &[("family", family)])
        })
    };
    let before = count(&relay);
    let mut args: Vec<String> = [
        "-n", "50", "-m", "2", "-l", "172", "-z", "20", "-u", "alice", "-w", "secret",
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        "-e".to_string(),
        peer_ip.to_string(),
        "-r".into(),
        relay.ports.peer().to_string(),
    ]);
    args.extend(flags.iter().map(|f| f.to_string()));
    let port = if tls {
        relay.ports.tls()
    } else {
        relay.ports.listen()
    };
    let report = run_uclient_to(&args, server, port, UCLIENT_TIMEOUT);
    let tail: Vec<&str> = report.output.lines().rev().take(12).collect();
    assert!(
        report.status.is_some_and(|s| s.success()) && report.sent >= 100,
        "uclient failed or sent too little ({:?}, sent {}):\n{}",
        report.status,
        report.sent,
        tail.join("\n")
    );
    assert_eq!(
        (report.lost, report.received),
        (0, report.sent),
        "loss:\n{}",
        tail.join("\n")
    );
    count(&relay) - before
}

/// RFC 6156 (now in RFC 8656): an IPv6 client asking for an IPv6 relayed address (`-x`)
/// and relaying to an IPv6 peer.
fn uclient_ipv6(kind: ServerKind) {
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let moved = run_dual_stack(kind, v6, v6, &["-c", "-x"], "ipv6");
    if kind == ServerKind::Icegate {
        assert!(moved >= 2.0, "ipv6 allocations grew by {moved}");
    }
}

/// The same over DTLS on the IPv6 listener.
fn uclient_ipv6_dtls(kind: ServerKind) {
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let moved = run_dual_stack_over(kind, v6, v6, &["-S", "-c", "-x"], "ipv6", true);
    if kind == ServerKind::Icegate {
        assert!(moved >= 2.0, "ipv6 allocations grew by {moved}");
    }
}

/// Dual allocation (`-Z`: ADDITIONAL-ADDRESS-FAMILY, under coturn's draft attribute type),
/// whose Refreshes pick a family at random with REQUESTED-ADDRESS-FAMILY.
fn uclient_dual_allocation(kind: ServerKind) {
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    run_dual_stack(kind, v4, v4, &["-Z"], "ipv4");
}

/// `alternate-server` (coturn's option, RFC 8489 §10): the first relay answers every
/// authenticated Allocate with 300 and ALTERNATE-SERVER, and `turnutils_uclient` follows it
/// to the second, where the allocations are made and the media flows.
fn uclient_follows_a_redirect_to_the_alternate_server(kind: ServerKind) {
    let target = Relay::start(kind, RelayConfig::default());
    let _peer = Peer::start(target.ports.peer());
    let alternate = format!("127.0.0.1:{}", target.ports.listen());
    let redirect_args = vec!["--alternate-server".to_string(), alternate];
    let redirector = Relay::start(
        kind,
        RelayConfig {
            icegate_args: redirect_args.clone(),
            coturn_args: redirect_args,
            ..RelayConfig::default()
        },
    );
    let clients = 3;
    let args: Vec<String> = [
        "-n",
        "50",
        "-m",
        "3",
        "-l",
        "172",
        "-z",
        "20",
        "-c",
        "-u",
        "alice",
        "-w",
        "secret",
        "-e",
        "127.0.0.1",
        "-r",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([target.ports.peer().to_string()])
    .collect();
    let report = run_uclient(&args, redirector.ports.listen(), UCLIENT_TIMEOUT);
    assert!(
        report.status.is_some_and(|s| s.success()) && report.sent >= 150,
        "turnutils_uclient against the redirecting relay: {:?}, sent {}:\n{}",
        report.status,
        report.sent,
        report.output
    );
    assert_eq!(
        (report.lost, report.received),
        (0, report.sent),
        "{}",
        report.output
    );
    if kind == ServerKind::Icegate {
        let redirected = redirector.metrics().sum(
            "icegate_relay_requests_total",
            &[("method", "allocate"), ("result", "300")],
        );
        assert!(redirected >= f64::from(clients), "300s sent: {redirected}");
        let here = |relay: &Relay| relay.metrics().sum("icegate_relay_allocations_total", &[]);
        assert_eq!(here(&redirector), 0.0, "the redirecting relay allocated");
        assert!(here(&target) >= f64::from(clients), "{}", here(&target));
    }
}

server_tests!(
    uclient_follows_a_redirect_to_the_alternate_server,
    stunclient_mapped_address,
    uclient_udp_channels_default,
    uclient_udp_static_user,
    uclient_udp_send_indications,
    uclient_tcp,
    uclient_tls,
    uclient_dtls,
    uclient_client_to_client,
    uclient_tcp_allocations,
    uclient_tcp_allocations_tls,
    uclient_rest_secret,
    uclient_rest_wrong_secret_rejected,
    uclient_ipv6,
    uclient_ipv6_dtls,
    uclient_dual_allocation,
);

/// RFC 5780: `turnutils_natdiscovery`'s mapping and filtering tests, with 1500 bytes of
/// PADDING, against a relay listening on 127.0.0.1 and 127.0.0.2. Loopback neither maps nor
/// filters, so both come out endpoint independent; the filtering test's second answer (change
/// IP and port) comes from the other address and the alternate port.
fn natdiscovery_mapping_and_filtering(kind: ServerKind) {
    require_tool("turnutils_natdiscovery");
    let relay = Relay::start(
        kind,
        RelayConfig {
            second_listening_ip: Some(Ipv4Addr::new(127, 0, 0, 2)),
            ..RelayConfig::default()
        },
    );
    let (status, out) = run_with_timeout(
        Command::new("turnutils_natdiscovery").args([
            "-m",
            "-f",
            "-P",
            "-p",
            &relay.ports.listen().to_string(),
            "127.0.0.1",
        ]),
        Duration::from_secs(30),
    );
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "turnutils_natdiscovery failed ({status:?}):\n{out}"
    );
    assert!(!out.contains("timeout"), "an answer never came:\n{out}");
    for verdict in [
        "NAT with Endpoint Independent Mapping!",
        "NAT with Endpoint Independent Filtering!",
    ] {
        assert!(out.contains(verdict), "no {verdict:?} in:\n{out}");
    }
    let other = format!("127.0.0.2:{}", relay.alt_port());
    assert!(
        out.contains(&format!("Other addr: : {other}"))
            && out.contains(&format!("Response origin: : {other}")),
        "no answer from the other address {other}:\n{out}"
    );
}

server_tests!(natdiscovery_mapping_and_filtering);

/// RFC 5780 over real sockets, beside what `turnutils_natdiscovery` asks: RESPONSE-PORT sends
/// the answer to another port of the asking address (and nothing to the asking port), and a
/// CHANGE-REQUEST to change the port is answered from the alternate port.
fn binding_response_port_and_change_port(kind: ServerKind) {
    use icegate_testkit::{method::BINDING, Message};
    use std::net::{SocketAddr, UdpSocket};
    let relay = Relay::start(
        kind,
        RelayConfig {
            second_listening_ip: Some(Ipv4Addr::new(127, 0, 0, 2)),
            ..RelayConfig::default()
        },
    );
    let socket = || {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    let (asking, elsewhere) = (socket(), socket());
    // The answer to `tid`: a Binding success, and where it came from.
    let answer = |s: &UdpSocket, tid: [u8; 12]| -> SocketAddr {
        let mut buf = [0u8; 1500];
        let (n, from) = s.recv_from(&mut buf).expect("an answer");
        assert!(n >= 20 && buf[..2] == [0x01, 0x01], "{:02x?}", &buf[..n]);
        assert_eq!(buf[8..20], tid);
        from
    };

    let port = elsewhere.local_addr().unwrap().port().to_be_bytes();
    let tid: [u8; 12] = rand::random();
    let request = Message::request(BINDING, tid)
        .attr(0x0027, &[port[0], port[1], 0, 0])
        .fingerprint()
        .finish();
    asking.send_to(&request, relay.udp_addr()).unwrap();
    assert_eq!(answer(&elsewhere, tid), relay.udp_addr());
    asking
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        asking.recv_from(&mut [0u8; 1500]).is_err(),
        "RESPONSE-PORT: an answer came to the asking port too"
    );

    let tid: [u8; 12] = rand::random();
    let request = Message::request(BINDING, tid)
        .attr(0x0003, &[0, 0, 0, 2])
        .fingerprint()
        .finish();
    asking
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    asking.send_to(&request, relay.udp_addr()).unwrap();
    assert_eq!(
        answer(&asking, tid),
        SocketAddr::from((Ipv4Addr::LOCALHOST, relay.alt_port()))
    );
}

server_tests!(binding_response_port_and_change_port);

/// With one listening address RFC 5780 is off: `turnutils_natdiscovery`'s mapping and filtering
/// tests with PADDING are told 420 at their first request, rather than answered unpadded as if
/// it had been honoured (coturn ignores PADDING there; icegate only). Without PADDING, the first
/// answer names no OTHER-ADDRESS and the tool asks no CHANGE-REQUEST.
#[test]
fn natdiscovery_with_one_address_is_answered_420() {
    require_tool("turnutils_natdiscovery");
    let relay = Relay::start(ServerKind::Icegate, RelayConfig::default());
    let port = relay.ports.listen().to_string();
    for flags in [["-m", "-P"], ["-f", "-P"]] {
        let (status, out) = run_with_timeout(
            Command::new("turnutils_natdiscovery")
                .args(flags)
                .args(["-p", &port, "127.0.0.1"]),
            Duration::from_secs(30),
        );
        assert!(
            status.map(|s| s.success()).unwrap_or(false),
            "turnutils_natdiscovery {flags:?} failed ({status:?}):\n{out}"
        );
        assert!(
            out.contains("The response is an error 420 (Unknown Attribute)")
                && !out.contains("Endpoint Independent"),
            "{flags:?}:\n{out}"
        );
    }
}

/// TLS at a high packet rate (2 ms per client): many frames queue up for one client at once.
/// Each must still go out in a TLS record of its own, or `turnutils_uclient` leaves the later
/// ones unread and reports them lost. icegate only: coturn itself loses a few percent here.
#[test]
fn uclient_tls_high_rate_loses_nothing() {
    run_case(
        ServerKind::Icegate,
        UclientCase {
            config: RelayConfig::default(),
            flags: &["-t", "-S", "-c", "-z", "2", "-u", "alice", "-w", "secret"],
            clients: 10,
            messages: 300,
            transport: "tls",
            tls: true,
        },
    );
}

/// Keeps the harness and the output parsing honest: these run against coturn in the
/// normal suite (fast, ~3 s each).
#[test]
fn harness_self_check_against_coturn_stunclient() {
    stunclient_mapped_address(ServerKind::Coturn);
}

#[test]
fn harness_self_check_against_coturn_uclient_udp() {
    run_case(
        ServerKind::Coturn,
        UclientCase {
            config: RelayConfig::default(),
            flags: &["-c", "-u", "alice", "-w", "secret"],
            clients: 2,
            messages: 20,
            transport: "udp",
            tls: false,
        },
    );
}
