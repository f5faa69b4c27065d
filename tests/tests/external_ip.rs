//! A relay behind 1:1 NAT (a cloud VM): `--external-ip` makes XOR-RELAYED-ADDRESS advertise
//! the public address, while the relay socket stays bound to the local one.
//!
//! Nothing is ever sent to the public address: the test stands in for the NAT by sending to
//! the local relay address with the advertised port.
#![deny(unsafe_code)]

use icegate_tests::stun::{assert_success, decode, xor_relayed, Data, TurnClient, XorPeerAddress};
use icegate_tests::{Relay, RelayConfig, ServerKind};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// Documentation range (RFC 5737): never routed, never contacted.
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

#[test]
fn external_ip_is_advertised_and_local_socket_relays() {
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            icegate_args: vec!["--external-ip".into(), PUBLIC.to_string()],
            ..RelayConfig::default()
        },
    );
    let mut client = TurnClient::new(relay.udp_addr(), "alice", "secret");
    let resp = client.allocate();
    assert_success(&resp, "allocate");
    let advertised = xor_relayed(&resp).expect("XOR-RELAYED-ADDRESS");
    assert_eq!(advertised.ip(), IpAddr::V4(PUBLIC), "advertised address");
    let (min, max) = relay.ports.relay_range();
    assert!(
        (min..=max).contains(&advertised.port()),
        "port {advertised}"
    );

    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    assert_success(
        &client.create_permission(peer.local_addr().unwrap()),
        "create permission",
    );
    // What the NAT would deliver: the advertised port on the relay's local address.
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), advertised.port());
    peer.send_to(b"through the nat", local).unwrap();
    let (bytes, _) = client
        .udp
        .recv_raw(Duration::from_secs(3))
        .expect("Data indication from the relay");
    let indication = decode(&bytes, None).expect("valid Data indication");
    let data = indication
        .get::<Data>()
        .and_then(|a| a.as_data().ok())
        .expect("DATA attribute");
    assert_eq!(data.as_bytes(), b"through the nat");
    let from = indication
        .get::<XorPeerAddress>()
        .and_then(|a| a.as_xor_peer_address().ok())
        .expect("XOR-PEER-ADDRESS");
    assert_eq!(*from.socket_address(), peer.local_addr().unwrap());
}
