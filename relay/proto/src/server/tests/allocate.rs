//! Allocate: retransmissions, binding relay sockets, transports, lifetimes, EVEN-PORT and
//! reservations, address families, advertised addresses.

use super::harness::*;

#[test]
fn retransmitted_allocate_gets_the_same_answer() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    let (tid, bytes) = h.signed_bytes(&alice, ALLOCATE, vec![udp_transport()]);
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    let binds = h.expect_binds();
    // While the socket is being bound a retransmission is absorbed, not answered twice.
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    h.assert_no_commands();
    h.server.relay_bound(binds[0].0, true, h.now);
    let first = h.expect_send(alice.from);
    h.advance(Duration::from_millis(500));
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    let again = h.expect_send(alice.from);
    assert_eq!(first, again);
    assert_eq!(
        decode(&again, Some(&alice.key())).msg.transaction_id(),
        &tid
    );
    assert_eq!(
        h.ledger.port_usage().0,
        1,
        "no second relay for a retransmission"
    );
    // A new transaction on the same 5-tuple is a second Allocate: 437.
    assert_eq!(h.signed_error(&alice, ALLOCATE, vec![udp_transport()]), 437);
}

#[test]
fn bind_failure_retries_another_port_then_succeeds() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    let (tid, bytes) = h.signed_bytes(&alice, ALLOCATE, vec![udp_transport()]);
    h.packet(alice.from, &bytes);
    let [(relay, first)] = h.expect_binds()[..] else {
        panic!("one relay expected");
    };
    h.server.relay_bound(relay, false, h.now);
    let [(retry_relay, second)] = h.expect_binds()[..] else {
        panic!("one retry expected");
    };
    assert_eq!(retry_relay, relay);
    assert_ne!(
        second, first,
        "the port another process holds is not tried again"
    );
    assert_eq!(
        h.ledger.port_usage().0,
        1,
        "the failed port went back to the pool"
    );
    h.server.relay_bound(relay, true, h.now);
    let msg = h.answer(&alice, tid, ALLOCATE);
    assert_eq!(relayed_addresses(&msg), vec![second]);
}

#[test]
fn bind_failures_exhaust_retries_and_answer_508() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    let (tid, bytes) = h.signed_bytes(&alice, ALLOCATE, vec![udp_transport()]);
    h.packet(alice.from, &bytes);
    let mut tried = vec![];
    let mut relay = None;
    loop {
        let commands = h.commands();
        match commands.as_slice() {
            [Command::BindRelay { relay: r, addr, .. }] => {
                tried.push(*addr);
                relay = Some(*r);
                h.server.relay_bound(*r, false, h.now);
            }
            [Command::SendToClient { to, data }] if *to == alice.from => {
                let msg = decode(data, Some(&alice.key()));
                assert!(msg.signed);
                assert_eq!(msg.msg.transaction_id(), &tid);
                assert_eq!(error_code(&msg.msg), Some(508));
                break;
            }
            other => panic!("unexpected commands {other:?}"),
        }
    }
    assert_eq!(
        tried.len(),
        usize::from(crate::server::allocate::MAX_BIND_ATTEMPTS)
    );
    assert_eq!(h.ledger.port_usage().0, 0);
    assert_eq!(h.ledger.total_allocations(), 0);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.quota_rejections(QuotaKind::Ports), 1);
    // The slot is gone: a late report about it changes nothing.
    h.server.relay_bound(relay.unwrap(), true, h.now);
    h.assert_no_commands();
    // The client can start over.
    h.allocate(&mut alice, vec![]);
}

#[test]
fn allocate_without_requested_transport_is_400_and_sctp_is_442() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    assert_eq!(h.allocate_error(&mut alice, vec![]), 400);
    let sctp = parsed_attr(0x0019, &[132, 0, 0, 0]);
    assert_eq!(h.allocate_error(&mut alice, vec![sctp]), 442);
}

#[test]
fn allocate_lifetime_is_clamped_between_default_and_max() {
    let mut h = Harness::new();
    for (n, asked, granted) in [(1, 10, 600), (2, 1200, 1200), (3, 100_000, 3600)] {
        let mut alice = Client::alice(n);
        let allocated = h.allocate(
            &mut alice,
            vec![udp_transport(), LifeTime::new(asked).into()],
        );
        assert_eq!(lifetime_of(&allocated.response), granted, "asked {asked}");
    }
}

#[test]
fn even_port_with_reservation_token() {
    let mut config = base_config();
    config.relay_addresses.retain(|r| r.local.is_ipv4());
    let mut h = Harness::with(config);
    let reserved = h.allocate(&mut Client::alice(1), vec![EvenPort::new(true).into()]);
    let port = relayed_addresses(&reserved.response)[0].port();
    assert_eq!(port % 2, 0);
    let token = reserved
        .response
        .get::<ReservationToken>()
        .expect("RESERVATION-TOKEN")
        .expect_reservation_token()
        .token()
        .to_vec();
    assert_eq!(token.len(), 8);
    assert_eq!(
        h.ledger.port_usage().0,
        2,
        "the odd port is held for the token"
    );

    let token: [u8; 8] = token.try_into().unwrap();
    let paired = h.allocate(
        &mut Client::bob(2),
        vec![ReservationToken::from(token).into()],
    );
    let paired_addr = relayed_addresses(&paired.response)[0];
    assert_eq!(paired_addr, SocketAddr::new(relay_v4(), port + 1));
    assert!(!has::<ReservationToken>(&paired.response));
    assert_eq!(h.ledger.port_usage().0, 2);

    // A token is good for one allocation only.
    let mut third = Client::alice(3);
    assert_eq!(
        h.allocate_error(
            &mut third,
            vec![udp_transport(), ReservationToken::from(token).into()]
        ),
        508
    );
    // EVEN-PORT and RESERVATION-TOKEN contradict each other.
    assert_eq!(
        h.allocate_error(
            &mut third,
            vec![
                udp_transport(),
                EvenPort::new(false).into(),
                ReservationToken::from(token).into()
            ]
        ),
        400
    );
    // Without the R bit: an even port and no token.
    let plain = h.allocate(&mut third, vec![EvenPort::new(false).into()]);
    assert_eq!(relayed_addresses(&plain.response)[0].port() % 2, 0);
    assert!(!has::<ReservationToken>(&plain.response));
}

#[test]
fn unclaimed_reservation_expires() {
    let mut config = base_config();
    config.relay_addresses.retain(|r| r.local.is_ipv4());
    let mut h = Harness::with(config);
    let reserved = h.allocate(&mut Client::alice(1), vec![EvenPort::new(true).into()]);
    let token: [u8; 8] = reserved
        .response
        .get::<ReservationToken>()
        .unwrap()
        .expect_reservation_token()
        .token()
        .try_into()
        .unwrap();
    assert_eq!(h.ledger.port_usage().0, 2);
    h.at(30);
    assert_eq!(h.ledger.port_usage().0, 1);
    let mut bob = Client::bob(2);
    assert_eq!(
        h.allocate_error(
            &mut bob,
            vec![udp_transport(), ReservationToken::from(token).into()]
        ),
        508
    );
}

#[test]
fn ipv6_allocation_relays_only_ipv6_peers() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(
        &mut alice,
        vec![RequestedAddressFamily::new(AddressFamily::IPv6).into()],
    );
    let relayed = relayed_addresses(&allocated.response);
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].ip(), relay_v6());
    assert_eq!(allocated.relays[0].family, Family::V6);
    let active = &h.counters.allocations_active[Transport::Udp.index()][Family::V6.index()];
    assert_eq!(active.load(std::sync::atomic::Ordering::Relaxed), 1);

    assert_eq!(
        error_code(&h.create_permission(&alice, &[peer()])),
        Some(443)
    );
    assert_eq!(
        error_code(&h.channel_bind(&alice, 0x4000, peer())),
        Some(443)
    );
    let refresh_v4 = h.signed(
        &alice,
        REFRESH,
        vec![RequestedAddressFamily::new(AddressFamily::IPv4).into()],
    );
    assert_eq!(error_code(&refresh_v4), Some(443));

    h.create_permission(&alice, &[peer_v6()]);
    let (bytes, outcome) = h.send_indication(&alice, peer_v6(), b"over v6");
    assert_relayed(&outcome, &bytes, allocated.relays[0], peer_v6(), b"over v6");
}

#[test]
fn dual_allocation_with_additional_address_family() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(
        &mut alice,
        vec![AdditionalAddressFamily::new(AddressFamily::IPv6).into()],
    );
    let relayed = relayed_addresses(&allocated.response);
    assert_eq!(
        relayed.iter().map(|a| a.ip()).collect::<Vec<_>>(),
        vec![relay_v4(), relay_v6()]
    );
    assert!(!has::<AddressErrorCode>(&allocated.response));
    assert_eq!(h.ledger.port_usage().0, 2);
    let (v4, v6) = (allocated.relays[0], allocated.relays[1]);
    assert_eq!((v4.family, v6.family), (Family::V4, Family::V6));

    let ok = h.create_permission(&alice, &[peer(), peer_v6()]);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
    let (bytes, outcome) = h.send_indication(&alice, peer(), b"four");
    assert_relayed(&outcome, &bytes, v4, peer(), b"four");
    let (bytes, outcome) = h.send_indication(&alice, peer_v6(), b"six");
    assert_relayed(&outcome, &bytes, v6, peer_v6(), b"six");
    // Both refreshes of one family succeed.
    h.signed_ok(
        &alice,
        REFRESH,
        vec![RequestedAddressFamily::new(AddressFamily::IPv6).into()],
    );

    // Deleting frees both sockets and both ports.
    h.delete(&alice, &[v4, v6]);
    assert_eq!(h.ledger.port_usage().0, 0);
}

#[test]
fn address_family_requests_that_cannot_be_met() {
    let mut config = base_config();
    config.relay_addresses.retain(|r| r.local.is_ipv4());
    let mut h = Harness::with(config);
    let mut alice = Client::alice(1);
    let v6 = || -> StunAttribute { RequestedAddressFamily::new(AddressFamily::IPv6).into() };
    assert_eq!(
        h.allocate_error(&mut alice, vec![udp_transport(), v6()]),
        440
    );
    // Both attributes at once, or an IPv4 "additional" family, make no sense.
    let both = vec![
        udp_transport(),
        v6(),
        AdditionalAddressFamily::new(AddressFamily::IPv6).into(),
    ];
    assert_eq!(h.allocate_error(&mut alice, both), 400);
    let extra_v4 = vec![
        udp_transport(),
        AdditionalAddressFamily::new(AddressFamily::IPv4).into(),
    ];
    assert_eq!(h.allocate_error(&mut alice, extra_v4), 400);

    // A dual request without IPv6 relays succeeds for IPv4 and says why IPv6 is missing.
    let allocated = h.allocate(
        &mut alice,
        vec![AdditionalAddressFamily::new(AddressFamily::IPv6).into()],
    );
    assert_eq!(relayed_addresses(&allocated.response).len(), 1);
    let refused = allocated
        .response
        .get::<AddressErrorCode>()
        .expect("ADDRESS-ERROR-CODE")
        .expect_address_error_code();
    assert_eq!(refused.family(), AddressFamily::IPv6);
    assert_eq!(refused.error_code().error_code(), 440);

    let mut config = base_config();
    config.relay_addresses.retain(|r| r.local.is_ipv6());
    let mut h = Harness::with(config);
    assert_eq!(
        h.allocate_error(&mut Client::alice(1), vec![udp_transport()]),
        440
    );
}

#[test]
fn advertised_address_differs_from_the_bound_one_behind_nat() {
    let mut config = base_config();
    config.relay_addresses = vec![RelayAddress {
        local: relay_v4(),
        advertised: ip("203.0.113.77"),
    }];
    let mut h = Harness::with(config);
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    let (tid, bytes) = h.signed_bytes(&alice, ALLOCATE, vec![udp_transport()]);
    h.packet(alice.from, &bytes);
    let [(relay, local)] = h.expect_binds()[..] else {
        panic!("one relay expected");
    };
    assert_eq!(local.ip(), relay_v4());
    h.server.relay_bound(relay, true, h.now);
    let msg = h.answer(&alice, tid, ALLOCATE);
    assert_eq!(
        relayed_addresses(&msg),
        vec![SocketAddr::new(ip("203.0.113.77"), local.port())]
    );
}

#[test]
fn coturn_draft_additional_address_family_type_makes_a_dual_allocation() {
    use stun_types::attribute::{AttributeType, RawAttribute};
    use stun_types::message::{
        IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageWrite, MessageWriteExt,
        MessageWriteVec,
    };

    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    // stun-rs cannot encode an attribute type it does not model, so this request is built and
    // signed by stun-types; the answer is still checked with stun-rs.
    let mut msg = Message::builder_request(turn_types::message::ALLOCATE, MessageWriteVec::new());
    let tid = msg.transaction_id();
    msg.add_attribute(&turn_types::attribute::RequestedTransport::new(17))
        .unwrap();
    msg.add_attribute(&RawAttribute::new(
        AttributeType::new(0x8032),
        &[0x02, 0, 0, 0],
    ))
    .unwrap();
    msg.add_attribute(&stun_types::attribute::Username::new("alice").unwrap())
        .unwrap();
    msg.add_attribute(&stun_types::attribute::Realm::new(REALM).unwrap())
        .unwrap();
    msg.add_attribute(&stun_types::attribute::Nonce::new(alice.nonce.as_deref().unwrap()).unwrap())
        .unwrap();
    let credentials = LongTermKeyCredentials::new("alice".into(), "alice-pw".into(), REALM.into());
    msg.add_message_integrity(&credentials.into(), IntegrityAlgorithm::Sha1)
        .unwrap();
    msg.add_fingerprint().unwrap();
    let bytes = msg.finish();
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    let binds = h.expect_binds();
    let families: Vec<_> = binds.iter().map(|(r, _)| r.family).collect();
    assert_eq!(families, vec![Family::V4, Family::V6]);
    for &(relay, _) in &binds {
        h.server.relay_bound(relay, true, h.now);
    }
    let response = decode(&h.expect_send(alice.from), Some(&alice.key())).msg;
    assert_eq!(
        response.transaction_id().as_bytes()[..],
        u128::from(tid).to_be_bytes()[4..]
    );
    let ips: Vec<_> = relayed_addresses(&response)
        .iter()
        .map(|a| a.ip())
        .collect();
    assert_eq!(ips, vec![relay_v4(), relay_v6()]);
}

/// The relay's address a client sent to is part of its 5-tuple (RFC 8656 §2): one client
/// address reaching two of the relay's addresses (through a wildcard listener) holds two
/// allocations, and each answer and each peer datagram names the address of its own, which
/// the runtime sends from.
#[test]
fn the_address_a_client_sent_to_is_part_of_its_five_tuple() {
    let mut h = Harness::new();
    let mut via_first = Client::alice(1);
    let second = FiveTuple {
        server: sa("192.0.2.9:3478"),
        ..udp_client(1)
    };
    let mut via_second = Client::new(second, "alice", "alice-pw");
    // `allocate` takes each answer from the commands sent to that client's own 5-tuple.
    let first = h.allocate(&mut via_first, vec![]);
    let other = h.allocate(&mut via_second, vec![]);
    assert_ne!(first.relays, other.relays, "two allocations");
    for (client, allocated) in [(&via_first, &first), (&via_second, &other)] {
        let answer = h.create_permission(client, &[peer()]);
        assert_eq!(answer.class(), MessageClass::SuccessResponse);
        let route = h.peer_packet(allocated.relays[0], peer(), 100).unwrap();
        assert_eq!(route.client, client.from);
    }
}
