//! A relay listening on the wildcard address (`0.0.0.0`, `::`) answers, and relays peer data,
//! from the address each client sent to (issue 15): on a multi-homed host a client drops
//! anything from another address, as a connected socket does here. Clients on 127.0.0.1 reach
//! the relay at 127.0.0.2 and at 127.0.0.1, both loopback addresses of one wildcard listener.
#![deny(unsafe_code)]

use icegate_tests::stun::*;
use icegate_tests::tools::{run_uclient_to, Peer};
use icegate_tests::{Relay, RelayConfig, ServerKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

const SECOND: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const ANSWER: Duration = Duration::from_secs(3);

/// icegate-relay on 0.0.0.0 (and `::`, relaying from 127.0.0.1 and ::1).
fn wildcard_relay() -> Relay {
    let v6 = ["--listening-ip", "::", "--relay-ip", "::1"].map(String::from);
    Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            listening_ip: Ipv4Addr::UNSPECIFIED,
            icegate_args: v6.to_vec(),
            ..RelayConfig::default()
        },
    )
}

fn at(relay: &Relay, ip: impl Into<IpAddr>) -> SocketAddr {
    SocketAddr::new(ip.into(), relay.ports.listen())
}

/// Sends a Binding to `server` and returns where the answer came from (the first datagram
/// back, whoever sent it), after checking it is the answer.
fn binding_source(client: &StunUdp, server: SocketAddr) -> SocketAddr {
    let request = encode(&request(BINDING, &[]));
    client.sock.send_to(&request, server).unwrap();
    let (answer, from) = client
        .recv_raw(ANSWER)
        .unwrap_or_else(|| panic!("no answer to a Binding sent to {server}"));
    assert_eq!(answer[8..20], request[8..20], "the Binding's answer");
    let answer = decode(&answer, None).unwrap();
    assert_success(&answer, "Binding");
    assert_eq!(xor_mapped(&answer), Some(client.local_addr()));
    from
}

#[test]
fn binding_and_allocate_are_answered_from_the_address_they_were_sent_to() {
    let relay = wildcard_relay();
    for ip in [SECOND, Ipv4Addr::LOCALHOST] {
        let server = at(&relay, ip);
        let client = StunUdp::new(server);
        assert_eq!(binding_source(&client, server), server, "Binding to {ip}");
        // The TURN client takes answers from `server` only: a 401 and a success from
        // anywhere else would leave it with no answer.
        let mut alice = TurnClient::new(server, "alice", "secret");
        let allocated = alice.allocate();
        assert_success(&allocated, &format!("Allocate through {ip}"));
        assert_success(&alice.deallocate(), "Refresh 0");
    }
    // IPv6 on `::`: only ::1 is there to send to, but the answer must come from it too.
    let v6 = StunUdp {
        sock: UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).unwrap(),
        server: at(&relay, Ipv6Addr::LOCALHOST),
    };
    assert_eq!(binding_source(&v6, v6.server), v6.server, "Binding to ::1");
}

/// The address a client sent to is part of its 5-tuple (RFC 8656 §2): one client socket
/// reaching the relay at two addresses holds two allocations, each answered from its own.
#[test]
fn one_client_through_two_addresses_holds_two_allocations() {
    let relay = wildcard_relay();
    let mut first = TurnClient::new(at(&relay, SECOND), "alice", "secret");
    let mut second = TurnClient::new(at(&relay, Ipv4Addr::LOCALHOST), "alice", "secret");
    // The same socket, speaking to the other address.
    second.udp.sock = first.udp.sock.try_clone().unwrap();
    let a = first.allocate();
    assert_success(&a, "Allocate through 127.0.0.2");
    let b = second.allocate();
    assert_success(&b, "Allocate through 127.0.0.1 from the same address");
    assert_ne!(xor_relayed(&a), xor_relayed(&b), "two relayed addresses");
    // Each is refreshed (and deleted) through its own address.
    assert_success(&first.deallocate(), "Refresh 0 through 127.0.0.2");
    assert_success(&second.deallocate(), "Refresh 0 through 127.0.0.1");
}

/// A client with an allocation made through `ip`, bound to `peer` on channel 0x4000; its
/// relayed address.
fn client_of(relay: &Relay, ip: Ipv4Addr, peer: SocketAddr) -> (TurnClient, SocketAddr) {
    let mut c = TurnClient::new(at(relay, ip), "alice", "secret");
    let allocated = c.allocate();
    assert_success(&allocated, "Allocate");
    assert_success(&c.create_permission(peer), "CreatePermission");
    (c, xor_relayed(&allocated).expect("XOR-RELAYED-ADDRESS"))
}

/// The next `n` datagrams `c` receives, each checked to come from `from`; their bytes.
fn receive_from(c: &TurnClient, from: SocketAddr, n: usize, what: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let (bytes, source) = c
                .udp
                .recv_raw(ANSWER)
                .unwrap_or_else(|| panic!("{what}: datagram {i} of {n} never came"));
            assert_eq!(source, from, "{what}: datagram {i} came from elsewhere");
            bytes
        })
        .collect()
}

/// Peer data goes back to each client from the address it sent to, as Data indications and
/// as ChannelData, in bursts that the relay sends in batches (one client through 127.0.0.2,
/// another through 127.0.0.1, both served by one listener).
#[test]
fn peer_data_reaches_each_client_from_the_address_it_sent_to() {
    let relay = wildcard_relay();
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    peer.set_read_timeout(Some(ANSWER)).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut clients: Vec<_> = [SECOND, Ipv4Addr::LOCALHOST]
        .into_iter()
        .map(|ip| (ip, client_of(&relay, ip, peer_addr)))
        .collect();

    // Data indications: a burst of 8 to each client, interleaved.
    for i in 0..8u8 {
        for (_, (_, relayed)) in &clients {
            peer.send_to(&[i; 100], relayed).unwrap();
        }
    }
    for (ip, (c, _)) in &clients {
        let got = receive_from(c, at(&relay, *ip), 8, "Data indication");
        for (i, bytes) in got.iter().enumerate() {
            let msg = decode(bytes, None).unwrap();
            let data = msg.get::<Data>().unwrap().as_data().unwrap();
            assert_eq!(data.as_bytes(), [i as u8; 100], "Data indication {i}");
        }
    }

    // ChannelData: the client's first frame reaches the peer from its relayed address; then
    // a burst of 16 frames of one size back (a GSO run per client, if one worker has both).
    let mut buf = [0u8; 256];
    for (_, (c, relayed)) in &mut clients {
        assert_success(&c.channel_bind(0x4000, peer_addr), "ChannelBind");
        c.udp
            .send_raw(&[0x40, 0x00, 0x00, 0x03, b'h', b'i', b'!', 0x00]);
        let (n, from) = peer.recv_from(&mut buf).expect("ChannelData to the peer");
        assert_eq!((&buf[..n], from), (&b"hi!"[..], *relayed));
    }
    for i in 0..16u8 {
        for (_, (_, relayed)) in &clients {
            peer.send_to(&[i; 100], relayed).unwrap();
        }
    }
    for (ip, (c, _)) in &clients {
        let got = receive_from(c, at(&relay, *ip), 16, "ChannelData");
        for (i, frame) in got.iter().enumerate() {
            assert_eq!(
                frame[..4],
                [0x40, 0x00, 0x00, 100],
                "ChannelData header {i}"
            );
            assert_eq!(frame[4..], [i as u8; 100], "ChannelData {i}");
        }
    }
}

/// coturn's `turnutils_uclient` (which connects its sockets to the server, so it hears
/// nothing from another address) through 127.0.0.2, with the relay on 0.0.0.0.
#[test]
fn uclient_through_the_second_address_of_a_wildcard_listener() {
    let relay = wildcard_relay();
    let _peer = Peer::start(relay.ports.peer());
    let args: Vec<String> = [
        "-n",
        "50",
        "-m",
        "4",
        "-l",
        "172",
        "-z",
        "20",
        "-u",
        "alice",
        "-w",
        "secret",
        "-e",
        "127.0.0.1",
        "-r",
        &relay.ports.peer().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let report = run_uclient_to(
        &args,
        IpAddr::V4(SECOND),
        relay.ports.listen(),
        Duration::from_secs(40),
    );
    let tail: Vec<&str> = report.output.lines().rev().take(12).collect();
    assert!(
        report.status.is_some_and(|s| s.success()) && report.sent >= 200,
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
}

/// DTLS on the wildcard listener's TLS port: a client reaching it at 127.0.0.2, over a
/// connected socket that drops datagrams from any other address, completes its handshake and
/// gets its Binding answered, so every flight and record came from 127.0.0.2.
#[test]
fn dtls_through_the_second_address_is_answered_from_it() {
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            listening_ip: Ipv4Addr::UNSPECIFIED,
            tls: true,
            ..RelayConfig::default()
        },
    );
    let server = SocketAddr::new(SECOND.into(), relay.ports.tls());
    let mut session = icegate_tests::dtls::dtls_connect(server)
        .unwrap_or_else(|e| panic!("no DTLS session through {server}: {e}"));
    session.ssl_write(&encode(&request(BINDING, &[]))).unwrap();
    let mut record = [0u8; 2048];
    let n = session.ssl_read(&mut record).expect("the Binding's answer");
    let answer = decode(&record[..n], None).unwrap();
    assert_eq!(answer.class(), MessageClass::SuccessResponse);
}
