//! ALTERNATE-SERVER: Allocates answered 300 (Try Alternate), round-robin, signed, only once
//! authenticated; always (coturn's behaviour) or only when this relay is full.

use super::harness::*;
use crate::config::{Alternates, RedirectWhen};
use stun_rs::attributes::stun::AlternateServer;

fn alternates(when: RedirectWhen) -> Alternates {
    Alternates {
        plain: vec![
            sa("203.0.113.1:3478"),
            sa("[2001:db8::20]:3478"),
            sa("203.0.113.2:3478"),
        ],
        tls: vec![sa("203.0.113.3:5349")],
        when,
    }
}

/// The ALTERNATE-SERVER of a 300 answer to an authenticated Allocate from `client`.
fn redirected_to(h: &mut Harness, client: &mut Client) -> SocketAddr {
    if client.nonce.is_none() {
        h.challenge(client);
    }
    let before = h.server.allocation_count();
    // `signed` checks the answer's MESSAGE-INTEGRITY with the client's key.
    let answer = h.signed(client, ALLOCATE, vec![udp_transport()]);
    assert_eq!(error_code(&answer), Some(300), "{answer:?}");
    let attr = answer
        .get::<AlternateServer>()
        .expect("a 300 carries ALTERNATE-SERVER")
        .as_alternate_server()
        .expect("ALTERNATE-SERVER")
        .socket_address()
        .to_owned();
    assert_eq!(
        h.server.allocation_count(),
        before,
        "a redirect allocates nothing"
    );
    attr
}

#[test]
fn always_redirects_every_authenticated_allocate_round_robin_in_the_clients_family() {
    let mut config = base_config();
    config.alternates = alternates(RedirectWhen::Always);
    let mut h = Harness::with(config);
    // The first Allocate has no credentials: a 401 as always, never an unsigned 300.
    let mut alice = Client::alice(1);
    let challenge = h.challenge(&mut alice);
    assert!(challenge.get::<AlternateServer>().is_none());
    let picks: Vec<_> = (0..3).map(|_| redirected_to(&mut h, &mut alice)).collect();
    // The IPv6 alternate is skipped: the client came over IPv4.
    assert_eq!(
        picks,
        [
            sa("203.0.113.1:3478"),
            sa("203.0.113.2:3478"),
            sa("203.0.113.1:3478")
        ]
    );
    assert_eq!(h.requests(MethodLabel::Allocate, 300), 3);

    // Over TLS, the tls-alternate-server list.
    let mut over_tls = Client::new(
        FiveTuple {
            transport: Transport::Tls,
            ..udp_client(2)
        },
        "bob",
        "bob-pw",
    );
    assert_eq!(redirected_to(&mut h, &mut over_tls), sa("203.0.113.3:5349"));
}

#[test]
fn always_with_no_alternate_for_the_client_allocates_here() {
    let mut config = base_config();
    config.alternates = Alternates {
        plain: vec![sa("[2001:db8::20]:3478"), udp_client(1).server],
        tls: vec![],
        when: RedirectWhen::Always,
    };
    let mut h = Harness::with(config);
    // Only an IPv6 alternate and this very listener: no loop, no family change.
    h.allocate(&mut Client::alice(1), vec![]);
}

#[test]
fn full_redirects_only_what_the_total_quota_or_draining_would_refuse() {
    let mut config = base_config();
    config.total_quota = 1;
    config.alternates = alternates(RedirectWhen::Full);
    let mut h = Harness::with(config);
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![]);
    let mut bob = Client::bob(2);
    assert_eq!(redirected_to(&mut h, &mut bob), sa("203.0.113.1:3478"));
    assert_eq!(h.quota_rejections(QuotaKind::Total), 1);
    // With room again, bob allocates here.
    h.delete(&alice, &allocated.relays);
    h.allocate(&mut bob, vec![]);

    // A per-user quota is the user's limit, not the relay's: 486 as before.
    let mut config = base_config();
    config.user_quota = 1;
    config.alternates = alternates(RedirectWhen::Full);
    let mut h = Harness::with(config);
    h.allocate(&mut Client::alice(1), vec![]);
    assert_eq!(
        h.allocate_error(&mut Client::alice(2), vec![udp_transport()]),
        486
    );

    // Draining for shutdown sends new clients on instead of refusing them with 508.
    let mut config = base_config();
    config.alternates = alternates(RedirectWhen::Full);
    let mut h = Harness::with(config);
    h.server.set_draining(true);
    assert_eq!(
        redirected_to(&mut h, &mut Client::alice(1)),
        sa("203.0.113.1:3478")
    );
}
