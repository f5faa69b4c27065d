//! The per-source budget of unauthenticated answers, alone and shared by several workers.

use super::harness::*;

#[test]
fn unauthenticated_requests_are_rate_limited_per_source() {
    let mut config = base_config();
    config.rate_limit = RateLimitConfig {
        per_second: 1,
        burst: 3,
    };
    let mut h = Harness::with(config);
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    h.unsigned(alice.from, BINDING, vec![]);
    h.unsigned(alice.from, BINDING, vec![]);
    let tid = h.tid();
    let binding = encode(
        BINDING,
        MessageClass::Request,
        tid,
        vec![Fingerprint::default().into()],
    );
    assert_eq!(h.packet(alice.from, &binding), ClientOutcome::Handled);
    h.assert_no_commands();
    assert_eq!(Counters::get(&h.counters.rate_limited), 1);
    // Unauthenticated challenges are limited too, so a flood cannot mint nonces.
    let tid = h.tid();
    let bare = encode(
        ALLOCATE,
        MessageClass::Request,
        tid,
        vec![udp_transport(), Fingerprint::default().into()],
    );
    assert_eq!(h.packet(alice.from, &bare), ClientOutcome::Handled);
    h.assert_no_commands();
    assert_eq!(Counters::get(&h.counters.rate_limited), 2);

    // Another source has its own bucket.
    h.unsigned(udp_client(2), BINDING, vec![]);
    // Authenticated requests are not limited.
    h.allocate(&mut alice, vec![]);
    h.signed_ok(&alice, REFRESH, vec![]);
    // And the bucket refills with time.
    h.advance(Duration::from_secs(1));
    h.unsigned(alice.from, BINDING, vec![]);
    assert_eq!(Counters::get(&h.counters.rate_limited), 2);
}

#[test]
fn workers_sharing_a_rate_table_share_each_source_budget() {
    let mut config = base_config();
    config.rate_limit = RateLimitConfig {
        per_second: 1,
        burst: 3,
    };
    // Two workers of one process: the kernel may hand one source's packets to either.
    let mut a = Harness::with(config.clone());
    let mut b = Harness::with(config);
    let table = Arc::new(RateTable::new(RateTable::DEFAULT_SLOTS, 11, a.t0));
    for h in [&mut a, &mut b] {
        h.server = Server::new(
            Arc::new(h.config.clone()),
            Arc::clone(&h.ledger),
            Arc::clone(&h.counters),
            Arc::clone(&h.denials),
            42,
            h.t0,
        )
        .with_rate_table(Arc::clone(&table));
    }
    let from = udp_client(1);
    a.unsigned(from, BINDING, vec![]);
    b.unsigned(from, BINDING, vec![]);
    a.unsigned(from, BINDING, vec![]);
    // The burst of 3 is spent over both workers together.
    for h in [&mut a, &mut b] {
        let tid = h.tid();
        let binding = encode(
            BINDING,
            MessageClass::Request,
            tid,
            vec![Fingerprint::default().into()],
        );
        assert_eq!(h.packet(from, &binding), ClientOutcome::Handled);
        h.assert_no_commands();
        assert_eq!(Counters::get(&h.counters.rate_limited), 1);
    }
    // And refills once for both.
    a.advance(Duration::from_secs(1));
    b.advance(Duration::from_secs(1));
    b.unsigned(from, BINDING, vec![]);
    let tid = a.tid();
    let binding = encode(
        BINDING,
        MessageClass::Request,
        tid,
        vec![Fingerprint::default().into()],
    );
    assert_eq!(a.packet(from, &binding), ClientOutcome::Handled);
    a.assert_no_commands();
    assert_eq!(Counters::get(&a.counters.rate_limited), 2);
}

#[test]
fn a_new_handshake_spends_the_source_budget_of_unauthenticated_requests() {
    let mut config = base_config();
    config.rate_limit = RateLimitConfig {
        per_second: 1,
        burst: 3,
    };
    let mut h = Harness::with(config);
    let alice = Client::alice(1);
    let ip = alice.from.client.ip();
    let now = h.now;
    assert!(h.server.allow_handshake(ip, now));
    assert!(h.server.allow_handshake(ip, now));
    // One Binding, then the bucket is empty for handshakes and requests alike.
    h.unsigned(alice.from, BINDING, vec![]);
    assert!(!h.server.allow_handshake(ip, now));
    assert_eq!(Counters::get(&h.counters.rate_limited), 1);
    // Another source has its own budget; time refills this one.
    assert!(h.server.allow_handshake(udp_client(2).client.ip(), now));
    h.advance(Duration::from_secs(1));
    let now = h.now;
    assert!(h.server.allow_handshake(ip, now));
    assert_eq!(Counters::get(&h.counters.rate_limited), 1);
}
