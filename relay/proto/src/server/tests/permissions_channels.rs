//! CreatePermission and ChannelBind: who may ask, what they install, how long it lasts.

use super::harness::*;

#[test]
fn create_permission_needs_a_peer_and_the_owner() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    // No allocation yet: 437.
    h.challenge(&mut alice);
    assert_eq!(
        error_code(&h.create_permission(&alice, &[peer()])),
        Some(437)
    );
    assert_eq!(
        error_code(&h.channel_bind(&alice, 0x4000, peer())),
        Some(437)
    );
    h.allocate(&mut alice, vec![]);
    assert_eq!(h.signed_error(&alice, CREATE_PERMMISSION, vec![]), 400);
    // Several peers in one request are installed together.
    h.create_permission(&alice, &[peer(), peer2()]);
}

#[test]
fn other_user_on_the_same_five_tuple_gets_441() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.allocate(&mut alice, vec![]);
    let mut bob = Client::new(alice.from, "bob", "bob-pw");
    bob.nonce = alice.nonce.clone();
    assert_eq!(h.signed_error(&bob, REFRESH, vec![]), 441);
    assert_eq!(error_code(&h.create_permission(&bob, &[peer()])), Some(441));
    assert_eq!(error_code(&h.channel_bind(&bob, 0x4000, peer())), Some(441));
    assert_eq!(h.auth_failures(AuthFailure::WrongCredentials), 3);
    // Bob's Allocate on Alice's 5-tuple is a mismatch, not a takeover.
    assert_eq!(h.signed_error(&bob, ALLOCATE, vec![udp_transport()]), 437);
    h.signed_ok(&alice, REFRESH, vec![]);
}

#[test]
fn channels_last_600_seconds_and_need_their_permission() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![LifeTime::new(3600).into()]);
    let relay = allocated.relays[0];
    h.channel_bind(&alice, 0x4000, peer());
    // The permission the binding installed lapses at 300 s even though the channel lives on.
    h.at(300);
    assert_eq!(h.peer_packet(relay, peer(), 1), None);
    let (_, outcome) = h.channel_data(&alice, 0x4000, b"a");
    assert_eq!(outcome, ClientOutcome::Dropped);
    h.create_permission(&alice, &[peer()]);
    assert_eq!(
        h.peer_packet(relay, peer(), 1).unwrap().channel,
        Some(0x4000)
    );
    h.at(599);
    assert_eq!(
        h.peer_packet(relay, peer(), 1).unwrap().channel,
        Some(0x4000)
    );
    h.create_permission(&alice, &[peer()]);
    // At 600 s the channel is gone; the permission (renewed at 599 s) still stands.
    h.at(600);
    assert_eq!(h.peer_packet(relay, peer(), 1).unwrap().channel, None);
    let (_, outcome) = h.channel_data(&alice, 0x4000, b"a");
    assert_eq!(outcome, ClientOutcome::Dropped);
    // Re-binding the same pair within its cooldown is allowed and routes again.
    h.channel_bind(&alice, 0x4000, peer());
    let (bytes, outcome) = h.channel_data(&alice, 0x4000, b"back");
    assert_relayed(&outcome, &bytes, relay, peer(), b"back");
}

#[test]
fn channel_bind_rejects_invalid_numbers_and_rebinding() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.allocate(&mut alice, vec![]);
    // The accepted range is RFC 8656's 0x4000-0x4FFF widened to RFC 5766's 0x7FFF (see
    // channels::MAX_CHANNEL); anything whose top bits are not ChannelData's `01` is refused.
    for number in [0x0000, MIN_CHANNEL - 1, MAX_CHANNEL + 1, 0xFFFF] {
        let msg = h.channel_bind(&alice, number, peer());
        assert_eq!(error_code(&msg), Some(400), "{number:#x}");
    }
    for number in [MIN_CHANNEL, 0x4FFF, MAX_CHANNEL] {
        let peer = SocketAddr::new(peer().ip(), number);
        assert_eq!(
            h.channel_bind(&alice, number, peer).class(),
            MessageClass::SuccessResponse
        );
    }
    let bound_peer = SocketAddr::new(peer().ip(), 0x4000);
    // A bound number cannot move to another peer, nor a bound peer to another number.
    assert_eq!(
        error_code(&h.channel_bind(&alice, 0x4000, peer2())),
        Some(400)
    );
    assert_eq!(
        error_code(&h.channel_bind(&alice, 0x4001, bound_peer)),
        Some(400)
    );
    // Refreshing the same pair is fine.
    assert_eq!(
        h.channel_bind(&alice, 0x4000, bound_peer).class(),
        MessageClass::SuccessResponse
    );
    // Both attributes are mandatory.
    assert_eq!(
        h.signed_error(
            &alice,
            CHANNEL_BIND,
            vec![ChannelNumber::new(0x4002).into()]
        ),
        400
    );
    assert_eq!(
        h.signed_error(
            &alice,
            CHANNEL_BIND,
            vec![XorPeerAddress::from(peer2()).into()]
        ),
        400
    );
}
