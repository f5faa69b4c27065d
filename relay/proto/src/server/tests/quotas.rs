//! Allocation quotas: per user (486), in total, for ports, and while draining (508).

use super::harness::*;

#[test]
fn user_quota_gives_486_and_frees_with_the_allocation() {
    let mut config = base_config();
    config.user_quota = 1;
    let mut h = Harness::with(config);
    let mut first = Client::alice(1);
    let allocated = h.allocate(&mut first, vec![]);
    let mut second = Client::alice(2);
    assert_eq!(h.allocate_error(&mut second, vec![udp_transport()]), 486);
    assert_eq!(h.quota_rejections(QuotaKind::User), 1);
    // Another user is not affected.
    h.allocate(&mut Client::bob(3), vec![]);
    h.delete(&first, &allocated.relays);
    h.allocate(&mut second, vec![]);
}

#[test]
fn user_quota_counts_a_rest_user_not_each_credential() {
    let mut config = base_config();
    config.user_quota = 1;
    let mut h = Harness::with(config);
    let now = h.unix_secs();
    // One user with three credentials a second apart, in both username forms.
    let first = rest_issue(REST_SECRET, "carol", now, 60);
    let mut carol = Client::new(udp_client(1), &first.username, &first.password);
    let allocated = h.allocate(&mut carol, vec![]);
    let second = rest_issue(REST_SECRET, "carol", now + 1, 60);
    let reversed = format!("carol:{}", now + 62);
    let reversed_pw = kit::rest_password(REST_SECRET.as_bytes(), &reversed);
    for (n, (user, password)) in [
        (second.username.as_str(), second.password.as_str()),
        (reversed.as_str(), reversed_pw.as_str()),
    ]
    .into_iter()
    .enumerate()
    {
        let mut again = Client::new(udp_client(2 + n as u8), user, password);
        assert_eq!(
            h.allocate_error(&mut again, vec![udp_transport()]),
            486,
            "{user}"
        );
    }
    assert_eq!(h.quota_rejections(QuotaKind::User), 2);
    // Another REST user has a quota of their own.
    let dave = rest_issue(REST_SECRET, "dave", now, 60);
    h.allocate(
        &mut Client::new(udp_client(5), &dave.username, &dave.password),
        vec![],
    );
    // Freeing carol's allocation frees carol's quota, whichever credential comes next.
    h.delete(&carol, &allocated.relays);
    h.allocate(
        &mut Client::new(udp_client(6), &second.username, &second.password),
        vec![],
    );
}

#[test]
fn total_quota_ports_and_draining_give_508() {
    let mut config = base_config();
    config.total_quota = 1;
    let mut h = Harness::with(config);
    h.allocate(&mut Client::alice(1), vec![]);
    assert_eq!(
        h.allocate_error(&mut Client::bob(2), vec![udp_transport()]),
        508
    );
    assert_eq!(h.quota_rejections(QuotaKind::Total), 1);

    let mut config = base_config();
    config.relay_addresses.retain(|r| r.local.is_ipv4());
    let mut h = Harness::with_ports(config, PORT_MIN, PORT_MIN + 1);
    h.allocate(&mut Client::alice(1), vec![]);
    h.allocate(&mut Client::alice(2), vec![]);
    assert_eq!(h.ledger.port_usage(), (2, 2));
    assert_eq!(
        h.allocate_error(&mut Client::alice(3), vec![udp_transport()]),
        508
    );
    assert_eq!(h.quota_rejections(QuotaKind::Ports), 1);

    let mut h = Harness::new();
    h.server.set_draining(true);
    let mut alice = Client::alice(1);
    assert_eq!(h.allocate_error(&mut alice, vec![udp_transport()]), 508);
    h.server.set_draining(false);
    h.allocate(&mut alice, vec![]);
}
