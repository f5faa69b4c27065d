//! Long-term credentials: challenges, password algorithms, nonces, TURN REST credentials and secret
//! rotation.

use super::harness::*;

#[test]
fn unauthenticated_allocate_is_challenged_with_realm_nonce_and_algorithms() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let msg = h.challenge(&mut alice);
    let realm = msg.get::<Realm>().expect("REALM");
    assert_eq!(realm.expect_realm().as_str(), REALM);
    let nonce = msg.get::<Nonce>().expect("NONCE").expect_nonce();
    assert!(
        nonce.is_nonce_cookie(),
        "RFC 8489 nonce cookie: {}",
        nonce.as_str()
    );
    let features = nonce.security_features().expect("security feature bits");
    assert!(features.contains(StunSecurityFeatures::PasswordAlgorithms));
    assert!(!features.contains(StunSecurityFeatures::UserNameAnonymity));
    let algorithms = msg
        .get::<PasswordAlgorithms>()
        .expect("PASSWORD-ALGORITHMS");
    let ids: Vec<_> = algorithms
        .expect_password_algorithms()
        .iter()
        .map(|a| a.algorithm())
        .collect();
    assert_eq!(ids, vec![AlgorithmId::MD5, AlgorithmId::SHA256]);
    assert!(!has::<Software>(&msg), "no SOFTWARE before authentication");
    assert_eq!(h.auth_failures(AuthFailure::MissingIntegrity), 1);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.ledger.port_usage().0, 0);
}

#[test]
fn allocate_with_md5_key_and_message_integrity() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![]);
    let msg = &allocated.response;
    let relayed = relayed_addresses(msg);
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].ip(), relay_v4());
    assert!((PORT_MIN..=PORT_MAX).contains(&relayed[0].port()));
    assert_eq!(lifetime_of(msg), 600);
    let mapped = msg.get::<XorMappedAddress>().expect("XOR-MAPPED-ADDRESS");
    assert_eq!(
        *mapped.expect_xor_mapped_address().socket_address(),
        alice.from.client
    );
    assert_eq!(
        msg.get::<Software>()
            .expect("SOFTWARE")
            .expect_software()
            .as_str(),
        SOFTWARE
    );
    assert_eq!(allocated.relays.len(), 1);
    assert_eq!(allocated.relays[0].family, Family::V4);
    assert_eq!(
        h.ledger.port_usage(),
        (1, 2 * u64::from(PORT_MAX - PORT_MIN + 1))
    );
    assert_eq!(h.ledger.total_allocations(), 1);
    let active = &h.counters.allocations_active[Transport::Udp.index()][Family::V4.index()];
    assert_eq!(active.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn allocate_with_sha256_password_algorithm_and_integrity_sha256() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    alice.algorithm = AlgorithmId::SHA256;
    alice.sha256_integrity = true;
    h.allocate(&mut alice, vec![]);

    // The SHA-256 key with the SHA-1 HMAC is a valid RFC 8489 combination too.
    let mut bob = Client::bob(2);
    bob.algorithm = AlgorithmId::SHA256;
    h.allocate(&mut bob, vec![]);

    // And the MD5 key under MESSAGE-INTEGRITY-SHA256.
    let mut carol = Client::alice(3);
    carol.sha256_integrity = true;
    h.allocate(&mut carol, vec![]);

    // A key derived with the wrong algorithm does not verify.
    let mut wrong = Client::alice(4);
    h.challenge(&mut wrong);
    let tid = h.tid();
    let mut attrs = vec![udp_transport()];
    attrs.push(UserName::new("alice").unwrap().into());
    attrs.push(Realm::new(REALM).unwrap().into());
    attrs.push(Nonce::new(wrong.nonce.clone().unwrap()).unwrap().into());
    attrs.push(offered_algorithms().into());
    attrs.push(PasswordAlgorithm::new(Algorithm::new(AlgorithmId::SHA256, None::<&[u8]>)).into());
    attrs.push(MessageIntegrity::new(wrong.key()).into()); // MD5 key, SHA-256 announced
    attrs.push(Fingerprint::default().into());
    let bytes = encode(ALLOCATE, MessageClass::Request, tid, attrs);
    assert_eq!(h.packet(wrong.from, &bytes), ClientOutcome::Handled);
    let msg = decode(&h.expect_send(wrong.from), None).msg;
    assert_eq!(error_code(&msg), Some(401));
    assert_eq!(h.auth_failures(AuthFailure::BadIntegrity), 1);
}

#[test]
fn inconsistent_password_algorithms_are_rejected_with_400() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    let nonce = alice.nonce.clone().unwrap();
    let credentials = |with: Vec<StunAttribute>| {
        let mut attrs = vec![udp_transport()];
        attrs.push(UserName::new("alice").unwrap().into());
        attrs.push(Realm::new(REALM).unwrap().into());
        attrs.push(Nonce::new(&nonce).unwrap().into());
        attrs.extend(with);
        attrs.push(MessageIntegrity::new(alice.key()).into());
        attrs.push(Fingerprint::default().into());
        attrs
    };
    let sha256 = || -> StunAttribute {
        PasswordAlgorithm::new(Algorithm::new(AlgorithmId::SHA256, None::<&[u8]>)).into()
    };
    let only_md5: StunAttribute = PasswordAlgorithms::from(vec![PasswordAlgorithm::new(
        Algorithm::new(AlgorithmId::MD5, None::<&[u8]>),
    )])
    .into();
    let cases = [
        // PASSWORD-ALGORITHM without the PASSWORD-ALGORITHMS it must echo.
        vec![sha256()],
        // PASSWORD-ALGORITHMS without a choice.
        vec![offered_algorithms().into()],
        // An echo that is not what the server offered (a downgrade attempt).
        vec![only_md5, sha256()],
    ];
    for with in cases {
        let tid = h.tid();
        let bytes = encode(ALLOCATE, MessageClass::Request, tid, credentials(with));
        assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
        let msg = decode(&h.expect_send(alice.from), None).msg;
        assert_eq!(error_code(&msg), Some(400));
    }
    assert_eq!(h.auth_failures(AuthFailure::Malformed), 3);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn integrity_without_username_realm_or_nonce_is_400() {
    let mut h = Harness::new();
    let alice = Client::alice(1);
    let tid = h.tid();
    let attrs = vec![
        udp_transport(),
        UserName::new("alice").unwrap().into(),
        MessageIntegrity::new(alice.key()).into(),
        Fingerprint::default().into(),
    ];
    let bytes = encode(ALLOCATE, MessageClass::Request, tid, attrs);
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    let response = decode(&h.expect_send(alice.from), None);
    assert!(!response.signed);
    assert_eq!(error_code(&response.msg), Some(400));
    assert!(!has::<Software>(&response.msg));
    assert_eq!(h.auth_failures(AuthFailure::Malformed), 1);
}

#[test]
fn wrong_password_and_unknown_user_are_challenged_again() {
    let mut h = Harness::new();
    let mut mallory = Client::new(udp_client(1), "alice", "guess");
    assert_eq!(h.allocate_error(&mut mallory, vec![udp_transport()]), 401);
    assert_eq!(h.auth_failures(AuthFailure::BadIntegrity), 1);
    let mut nobody = Client::new(udp_client(2), "nobody", "pw");
    assert_eq!(h.allocate_error(&mut nobody, vec![udp_transport()]), 401);
    assert_eq!(h.auth_failures(AuthFailure::UnknownUser), 1);
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.allocate(&mut alice, vec![LifeTime::new(3600).into()]);
    let old = alice.nonce.clone().unwrap();
    // Still valid at exactly its lifetime, stale one second later.
    h.at(600);
    h.signed_ok(&alice, REFRESH, vec![LifeTime::new(3600).into()]);
    h.at(601);
    let msg = h.signed(&alice, REFRESH, vec![LifeTime::new(3600).into()]);
    assert_eq!(error_code(&msg), Some(438));
    assert_eq!(
        msg.get::<Realm>().expect("REALM").expect_realm().as_str(),
        REALM
    );
    let fresh = nonce_of(&msg);
    assert_ne!(fresh, old);
    assert!(!has::<Software>(&msg));
    assert_eq!(h.auth_failures(AuthFailure::StaleNonce), 1);
    alice.nonce = Some(fresh);
    h.signed_ok(&alice, REFRESH, vec![LifeTime::new(3600).into()]);
}

#[test]
fn nonce_issued_to_another_address_is_refused_with_438() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    let mut thief = Client::alice(2);
    thief.nonce = alice.nonce.clone();
    let msg = h.signed(&thief, ALLOCATE, vec![udp_transport()]);
    assert_eq!(error_code(&msg), Some(438));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn rest_credentials_are_accepted_until_they_expire() {
    let mut h = Harness::new();
    let now = h.unix_secs();
    let cred = rest_issue(REST_SECRET, "carol", now, 60);
    assert_eq!(cred.username, format!("{}:carol", now + 60));
    let mut carol = Client::new(udp_client(1), &cred.username, &cred.password);
    h.allocate(&mut carol, vec![]);

    // The same username with a password of another secret does not verify.
    let forged = rest_issue("guess", "carol", now, 60);
    let mut mallory = Client::new(udp_client(2), &forged.username, &forged.password);
    assert_eq!(h.allocate_error(&mut mallory, vec![udp_transport()]), 401);
    assert_eq!(h.auth_failures(AuthFailure::BadIntegrity), 1);

    // Past its expiry the username is refused whatever the password.
    h.at(61);
    let mut late = Client::new(udp_client(3), &cred.username, &cred.password);
    assert_eq!(h.allocate_error(&mut late, vec![udp_transport()]), 401);
    assert_eq!(h.auth_failures(AuthFailure::ExpiredCredential), 1);
}

#[test]
fn rest_secret_rotation_accepts_both_secrets_then_only_the_new_one() {
    let mut h = Harness::new();
    let new = Secret::new("next-secret");
    h.reconfigure(|c| c.credentials.add_rest_secret(new.clone()));
    let now = h.unix_secs();
    let by_old = rest_issue(REST_SECRET, "u1", now, 3600);
    let by_new = rest_issue("next-secret", "u2", now, 3600);
    h.allocate(
        &mut Client::new(udp_client(1), &by_old.username, &by_old.password),
        vec![],
    );
    h.allocate(
        &mut Client::new(udp_client(2), &by_new.username, &by_new.password),
        vec![],
    );

    h.reconfigure(|c| {
        let mut credentials = Credentials::new();
        credentials.add_rest_secret(new.clone());
        c.credentials = credentials;
    });
    let mut retired = Client::new(udp_client(3), &by_old.username, &by_old.password);
    assert_eq!(h.allocate_error(&mut retired, vec![udp_transport()]), 401);
    h.allocate(
        &mut Client::new(udp_client(4), &by_new.username, &by_new.password),
        vec![],
    );
    // Static users went with the old credential set.
    let mut alice = Client::alice(5);
    assert_eq!(h.allocate_error(&mut alice, vec![udp_transport()]), 401);
}
