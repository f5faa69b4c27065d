//! Refresh, lifetimes and the ways an allocation ends: deletion, expiry, a closed stream.

use super::harness::*;

#[test]
fn refresh_lifetimes_and_deletion() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![]);
    let refresh = |h: &mut Harness, attrs: Vec<StunAttribute>| {
        lifetime_of(&h.signed_ok(&alice, REFRESH, attrs))
    };
    assert_eq!(refresh(&mut h, vec![LifeTime::new(1200).into()]), 1200);
    assert_eq!(refresh(&mut h, vec![LifeTime::new(100_000).into()]), 3600);
    assert_eq!(
        refresh(&mut h, vec![LifeTime::new(60).into()]),
        600,
        "never below the default"
    );
    assert_eq!(refresh(&mut h, vec![]), 600);

    // The last refresh decides: 600 s from now, not the 3600 s granted before.
    h.at(599);
    h.assert_no_commands();
    assert_eq!(h.server.allocation_count(), 1);

    h.delete(&alice, &allocated.relays);
    assert_eq!(h.ledger.port_usage().0, 0);
    assert_eq!(h.ledger.total_allocations(), 0);
    assert_eq!(h.server.allocation_count(), 0);
    let active = &h.counters.allocations_active[Transport::Udp.index()][Family::V4.index()];
    assert_eq!(active.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(h.signed_error(&alice, REFRESH, vec![]), 437);
    assert_eq!(h.peer_packet(allocated.relays[0], peer(), 10), None);
}

#[test]
fn allocation_expires_and_handle_timeout_frees_everything() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![]);
    h.create_permission(&alice, &[peer()]);
    h.channel_bind(&alice, 0x4000, peer2());
    assert_eq!(h.server.poll_timeout(), h.t0 + Duration::from_secs(1));
    h.at(599);
    h.assert_no_commands();
    assert_eq!(h.server.poll_timeout(), h.now + Duration::from_secs(1));
    h.at(600);
    h.expect_closes(&allocated.relays);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.ledger.port_usage().0, 0);
    assert_eq!(h.ledger.total_allocations(), 0);
    assert_eq!(h.peer_packet(allocated.relays[0], peer(), 10), None);
    let (_, outcome) = h.channel_data(&alice, 0x4000, b"late");
    assert_eq!(outcome, ClientOutcome::Dropped);
    // The slot is reused under a new generation, so the old id stays dead.
    let again = h.allocate(&mut alice, vec![]);
    assert_eq!(again.relays[0].slot, allocated.relays[0].slot);
    assert_ne!(again.relays[0].generation, allocated.relays[0].generation);
    h.create_permission(&alice, &[peer()]);
    assert_eq!(h.peer_packet(allocated.relays[0], peer(), 10), None);
    assert!(h.peer_packet(again.relays[0], peer(), 10).is_some());
}

#[test]
fn stream_disconnect_frees_the_allocation() {
    let mut h = Harness::new();
    let from = FiveTuple {
        transport: Transport::Tls,
        client: sa("198.51.100.9:51000"),
        server: sa("192.0.2.1:5349"),
    };
    let mut alice = Client::new(from, "alice", "alice-pw");
    let allocated = h.allocate(&mut alice, vec![]);
    let active = &h.counters.allocations_active[Transport::Tls.index()][Family::V4.index()];
    assert_eq!(active.load(std::sync::atomic::Ordering::Relaxed), 1);
    h.server.handle_disconnect(from);
    h.expect_closes(&allocated.relays);
    assert_eq!(h.ledger.port_usage().0, 0);
    let active = &h.counters.allocations_active[Transport::Tls.index()][Family::V4.index()];
    assert_eq!(active.load(std::sync::atomic::Ordering::Relaxed), 0);
}
