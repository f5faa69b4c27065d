//! The peer filter in CreatePermission and ChannelBind: denied ranges, allowed-peer-ip, the relay's
//! own addresses (403).

use super::harness::*;

#[test]
fn peer_filter_denies_internal_addresses_with_403() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.allocate(
        &mut alice,
        vec![AdditionalAddressFamily::new(AddressFamily::IPv6).into()],
    );
    let denied = [
        ("127.0.0.1:80", "loopback"),
        ("10.1.2.3:80", "private"),
        ("172.16.0.1:80", "private"),
        ("192.168.1.1:80", "private"),
        ("169.254.169.254:80", "link_local"),
        ("224.0.0.251:5353", "multicast"),
        ("[::ffff:127.0.0.1]:80", "loopback"),
        ("[64:ff9b::7f00:1]:80", "translated"),
        ("[fc00::1]:80", "unique_local"),
        ("[fd12:3456::1]:80", "unique_local"),
        ("[ff02::1]:80", "multicast"),
        ("[::1]:80", "loopback"),
    ];
    for (addr, _) in denied {
        let peer = sa(addr);
        let msg = h.create_permission(&alice, &[peer]);
        assert_eq!(error_code(&msg), Some(403), "{addr}");
        assert!(
            has::<Software>(&msg),
            "an authenticated 403 is signed and complete"
        );
        assert_eq!(
            error_code(&h.channel_bind(&alice, 0x4000, peer)),
            Some(403),
            "{addr}"
        );
    }
    // One denied peer spoils the whole request: nothing is installed.
    let msg = h.create_permission(&alice, &[peer(), sa("10.0.0.1:1")]);
    assert_eq!(error_code(&msg), Some(403));
    let (_, outcome) = h.send_indication(&alice, peer(), b"no");
    assert_eq!(outcome, ClientOutcome::Dropped);

    let snapshot = h.denials.snapshot();
    let count = |reason: &str| {
        snapshot
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    };
    for reason in [
        "loopback",
        "private",
        "link_local",
        "multicast",
        "translated",
        "unique_local",
    ] {
        let expected = denied.iter().filter(|(_, r)| *r == reason).count() as u64 * 2
            + u64::from(reason == "private");
        assert_eq!(count(reason), expected, "{reason}");
    }
}

#[test]
fn allowed_peer_ip_overrides_the_deny_list() {
    let mut config = base_config();
    let allowed = peer_filter::parse_ip_range("10.0.0.5").unwrap();
    config.peer_filter = PeerFilter::new(allowed, Vec::new(), false);
    let mut h = Harness::with(config);
    let mut alice = Client::alice(1);
    h.allocate(&mut alice, vec![]);
    let media = sa("10.0.0.5:7000");
    assert_eq!(
        h.create_permission(&alice, &[media]).class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(
        error_code(&h.create_permission(&alice, &[sa("10.0.0.6:7000")])),
        Some(403)
    );
    let (bytes, outcome) = h.send_indication(&alice, media, b"internal");
    let relay = match outcome {
        ClientOutcome::Relay { relay, .. } => relay,
        other => panic!("not relayed: {other:?}"),
    };
    assert_relayed(&outcome, &bytes, relay, media, b"internal");
}

#[test]
fn the_relays_own_listening_addresses_are_403_even_when_allowed() {
    let mut config = base_config();
    // The relay listens on 192.0.2.10 (also its relay address) and everything is allowed.
    let own = peer_filter::SelfAddresses::new([
        ("192.0.2.10/32".parse().unwrap(), 3478),
        ("192.0.2.10/32".parse().unwrap(), 9641),
    ]);
    config.peer_filter = PeerFilter::new(vec!["0.0.0.0/0".parse().unwrap()], Vec::new(), true)
        .with_self_addresses(own);
    let mut h = Harness::with(config);
    let mut alice = Client::alice(1);
    h.allocate(&mut alice, vec![]);
    let mut bob = Client::bob(2);
    let bobs = h.allocate(&mut bob, vec![]);
    let bobs_relay = relayed_addresses(&bobs.response)[0];
    assert_eq!(bobs_relay.ip(), relay_v4());

    for own in [sa("192.0.2.10:3478"), sa("192.0.2.10:9641")] {
        assert_eq!(error_code(&h.create_permission(&alice, &[own])), Some(403));
        assert_eq!(error_code(&h.channel_bind(&alice, 0x4000, own)), Some(403));
    }
    // Another allocation's relayed address (same IP, another port) is a peer like any other,
    // and the permission it installs is for the IP...
    assert_eq!(
        h.create_permission(&alice, &[bobs_relay]).class(),
        MessageClass::SuccessResponse
    );
    let (bytes, outcome) = h.send_indication(&alice, bobs_relay, b"to bob");
    let relay = match outcome {
        ClientOutcome::Relay { relay, .. } => relay,
        other => panic!("not relayed: {other:?}"),
    };
    assert_relayed(&outcome, &bytes, relay, bobs_relay, b"to bob");
    // ...which still does not carry a Send indication to the listener's port.
    let before = h.dropped(DropReason::NoPermission);
    let (_, outcome) = h.send_indication(&alice, sa("192.0.2.10:3478"), b"loop");
    assert_eq!(outcome, ClientOutcome::Dropped);
    assert_eq!(h.dropped(DropReason::NoPermission), before + 1);
    let snapshot = h.denials.snapshot();
    assert_eq!(snapshot, vec![("self", 4)]);
}
