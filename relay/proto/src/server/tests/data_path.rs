//! The data path: Send indications, ChannelData and peer datagrams routed (or dropped) by
//! permissions, channels and relay ids.

use super::harness::*;

#[test]
fn send_indication_and_data_path_follow_permissions_for_300_seconds() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![]);
    let relay = allocated.relays[0];

    let (_, outcome) = h.send_indication(&alice, peer(), b"too early");
    assert_eq!(outcome, ClientOutcome::Dropped);
    assert_eq!(h.peer_packet(relay, peer(), 9), None);
    assert_eq!(h.dropped(DropReason::NoPermission), 2);

    let ok = h.create_permission(&alice, &[peer()]);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
    assert!(
        has::<Software>(&ok),
        "authenticated answers may name the software"
    );
    let (bytes, outcome) = h.send_indication(&alice, peer(), b"hello peer");
    assert_relayed(&outcome, &bytes, relay, peer(), b"hello peer");
    // Permissions are per IP address: any port of the peer may answer.
    let other_port = SocketAddr::new(peer().ip(), 9999);
    let expected = PeerRoute {
        client: alice.from,
        channel: None,
    };
    assert_eq!(h.peer_packet(relay, other_port, 5), Some(expected));
    assert_eq!(h.peer_packet(relay, peer2(), 5), None);
    assert_eq!(
        Counters::get(&h.counters.packets[Direction::ClientToPeer as usize]),
        1
    );
    assert_eq!(
        Counters::get(&h.counters.bytes[Direction::ClientToPeer as usize]),
        10
    );
    assert_eq!(
        Counters::get(&h.counters.packets[Direction::PeerToClient as usize]),
        1
    );

    h.at(299);
    assert_eq!(h.peer_packet(relay, peer(), 5), Some(expected));
    h.at(300);
    assert_eq!(h.peer_packet(relay, peer(), 5), None);
    let (_, outcome) = h.send_indication(&alice, peer(), b"expired");
    assert_eq!(outcome, ClientOutcome::Dropped);

    // Refreshing restarts the 300 s.
    h.create_permission(&alice, &[peer()]);
    h.at(599);
    h.signed_ok(&alice, REFRESH, vec![]);
    assert_eq!(h.peer_packet(relay, peer(), 5), Some(expected));
    h.at(600);
    assert_eq!(h.peer_packet(relay, peer(), 5), None);
}

#[test]
fn channel_bind_routes_channel_data_both_ways() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![]);
    let relay = allocated.relays[0];
    let ok = h.channel_bind(&alice, 0x4000, peer());
    assert_eq!(ok.class(), MessageClass::SuccessResponse);

    // 5 bytes: what follows the announced length (padding, junk) is not payload.
    let mut frame = vec![0x40, 0x00, 0x00, 0x05];
    frame.extend_from_slice(b"hello\0\0\0");
    let outcome = h.packet(alice.from, &frame);
    assert_eq!(
        outcome,
        ClientOutcome::Relay {
            relay,
            peer: peer(),
            payload: 4..9,
        }
    );
    assert_eq!(
        h.peer_packet(relay, peer(), 5),
        Some(PeerRoute {
            client: alice.from,
            channel: Some(0x4000),
        })
    );
    // The binding installed a permission too: Send works and other ports use Data indications.
    let (bytes, outcome) = h.send_indication(&alice, peer(), b"x");
    assert_relayed(&outcome, &bytes, relay, peer(), b"x");
    let other_port = SocketAddr::new(peer().ip(), 1);
    assert_eq!(h.peer_packet(relay, other_port, 1).unwrap().channel, None);

    // Unbound channel numbers are dropped and counted.
    let (_, outcome) = h.channel_data(&alice, 0x4001, b"nobody");
    assert_eq!(outcome, ClientOutcome::Dropped);
    assert_eq!(h.dropped(DropReason::UnboundChannel), 1);
    // A ChannelData frame from a client without allocation is dropped the same way.
    let (_, outcome) = h.channel_data(&Client::bob(9), 0x4000, b"who?");
    assert_eq!(outcome, ClientOutcome::Dropped);
    assert_eq!(h.dropped(DropReason::UnboundChannel), 2);
    // A frame shorter than its length field is malformed.
    assert_eq!(
        h.packet(alice.from, &[0x40, 0x00, 0x00, 0x08, 1, 2]),
        ClientOutcome::Dropped
    );
    assert_eq!(h.malformed(), 1);
}

#[test]
fn stale_relay_ids_and_unknown_slots_route_nowhere() {
    let mut h = Harness::new();
    let bogus = RelayId {
        slot: 99,
        generation: 0,
        family: Family::V4,
    };
    assert_eq!(h.peer_packet(bogus, peer(), 1), None);
    h.server.relay_bound(bogus, true, h.now);
    h.server.relay_bound(bogus, false, h.now);
    h.assert_no_commands();
}
