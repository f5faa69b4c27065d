use super::*;
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().expect("test net")).collect()
}

fn denied(f: &PeerFilter, s: &str) -> DenyReason {
    match f.check(ip(s)) {
        Err(r) => r,
        Ok(()) => panic!("{s} unexpectedly allowed"),
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

#[test]
fn the_relays_own_addresses_are_denied_whatever_is_allowed() {
    let own = SelfAddresses::new([
        ("127.0.0.0/8".parse().unwrap(), 3478),
        ("127.0.0.1/32".parse().unwrap(), 9641),
        ("203.0.113.5/32".parse().unwrap(), 3478),
        ("::ffff:198.51.100.7/128".parse().unwrap(), 5349),
        ("2001:db8::5/128".parse().unwrap(), 3478),
    ]);
    // Everything allowed, loopback included: only the own addresses are left out.
    let f = PeerFilter::new(nets(&["0.0.0.0/0", "::/0"]), vec![], true)
        .with_self_addresses(own.clone());
    assert_eq!(f.self_addresses(), &own);
    for peer in [
        "127.0.0.1:3478",
        "127.1.2.3:3478",
        "127.0.0.1:9641",
        "[::ffff:127.0.0.1]:3478",
        "203.0.113.5:3478",
        "[::ffff:203.0.113.5]:3478",
        "198.51.100.7:5349",
        "[2001:db8::5]:3478",
    ] {
        assert_eq!(
            f.check_peer(sa(peer)),
            Err(DenyReason::SelfAddress),
            "{peer}"
        );
        assert!(f.is_self(sa(peer)), "{peer}");
    }
    // Other ports of the same addresses (relayed addresses of other allocations) and
    // other addresses on the same port are peers like any other.
    for peer in [
        "127.0.0.1:50000",
        "127.0.0.2:9641",
        "203.0.113.5:50000",
        "203.0.113.6:3478",
        "[2001:db8::6]:3478",
        "[2001:db8::5]:3479",
    ] {
        assert_eq!(f.check_peer(sa(peer)), Ok(()), "{peer}");
        assert!(!f.is_self(sa(peer)), "{peer}");
    }
    // The rest of the filter still applies after the self check.
    let f = PeerFilter::default().with_self_addresses(own);
    assert_eq!(
        f.check_peer(sa("127.0.0.1:3478")),
        Err(DenyReason::SelfAddress)
    );
    assert_eq!(
        f.check_peer(sa("127.0.0.1:50000")),
        Err(DenyReason::Loopback)
    );
    assert_eq!(f.check_peer(sa("8.8.8.8:3478")), Ok(()));
    // Without self addresses, check_peer is check.
    let f = PeerFilter::new(vec![], vec![], true);
    assert!(f.self_addresses().is_empty());
    assert_eq!(f.check_peer(sa("127.0.0.1:3478")), Ok(()));
}

#[test]
fn default_ipv4_ranges_denied_with_reason() {
    let f = PeerFilter::default();
    let cases = [
        ("0.0.0.0", DenyReason::Unspecified),
        ("0.255.255.255", DenyReason::Unspecified),
        ("10.0.0.1", DenyReason::Private),
        ("10.255.255.255", DenyReason::Private),
        ("172.16.0.1", DenyReason::Private),
        ("172.31.255.254", DenyReason::Private),
        ("192.168.1.1", DenyReason::Private),
        ("100.64.0.1", DenyReason::Cgnat),
        ("100.127.255.255", DenyReason::Cgnat),
        ("127.0.0.1", DenyReason::Loopback),
        ("127.255.0.9", DenyReason::Loopback),
        ("169.254.169.254", DenyReason::LinkLocal),
        ("169.254.0.1", DenyReason::LinkLocal),
        ("192.0.0.8", DenyReason::Reserved),
        ("192.0.2.1", DenyReason::Reserved),
        ("198.18.0.1", DenyReason::Reserved),
        ("198.19.255.255", DenyReason::Reserved),
        ("198.51.100.7", DenyReason::Reserved),
        ("203.0.113.200", DenyReason::Reserved),
        ("240.0.0.1", DenyReason::Reserved),
        ("254.1.2.3", DenyReason::Reserved),
        ("224.0.0.1", DenyReason::Multicast),
        ("239.255.255.250", DenyReason::Multicast),
        ("255.255.255.255", DenyReason::Broadcast),
    ];
    for (addr, reason) in cases {
        assert_eq!(f.check(ip(addr)), Err(reason), "{addr}");
    }
}

#[test]
fn default_range_edges_allowed() {
    let f = PeerFilter::default();
    for addr in [
        "1.0.0.0",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "169.253.255.255",
        "192.0.1.0",
        "192.167.255.255",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
    ] {
        assert!(f.is_allowed(ip(addr)), "{addr}");
    }
}

#[test]
fn default_ipv6_ranges_denied_with_reason() {
    let f = PeerFilter::default();
    let cases = [
        ("::", DenyReason::Unspecified),
        ("::1", DenyReason::Loopback),
        ("fc00::1", DenyReason::UniqueLocal),
        ("fd12:3456::1", DenyReason::UniqueLocal),
        ("fe80::1", DenyReason::LinkLocal),
        ("febf:ffff::1", DenyReason::LinkLocal),
        ("fec0::1", DenyReason::Private),
        ("ff02::1", DenyReason::Multicast),
        ("ff0e::101", DenyReason::Multicast),
        ("2001:db8::1", DenyReason::Reserved),
        ("100::1", DenyReason::Reserved),
        ("3fff:fff::1", DenyReason::Reserved),
        ("64:ff9b:1::808:808", DenyReason::Translated),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", DenyReason::Teredo),
    ];
    for (addr, reason) in cases {
        assert_eq!(f.check(ip(addr)), Err(reason), "{addr}");
    }
}

#[test]
fn public_addresses_allowed() {
    let f = PeerFilter::default();
    for addr in [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "2001:4860:4860::8888",
        "3fff:1000::1",
        "100:0:0:1::1",
        "2001:1::1",
    ] {
        assert_eq!(f.check(ip(addr)), Ok(()), "{addr}");
    }
}

#[test]
fn mapped_form_has_same_verdict_and_reason() {
    let f = PeerFilter::default();
    assert_eq!(denied(&f, "::ffff:127.0.0.1"), DenyReason::Loopback);
    assert_eq!(denied(&f, "::ffff:10.0.0.1"), DenyReason::Private);
    assert_eq!(denied(&f, "::ffff:169.254.169.254"), DenyReason::LinkLocal);
    assert!(f.is_allowed(ip("::ffff:8.8.8.8")));
}

#[test]
fn embedding_forms_are_denied_as_translated() {
    let f = PeerFilter::default();
    let forms = [
        // IPv4-compatible
        "::127.0.0.1",
        "::10.0.0.1",
        "::169.254.169.254",
        // IPv4-translated (SIIT)
        "::ffff:0:127.0.0.1",
        "::ffff:0:10.0.0.1",
        "::ffff:0:169.254.169.254",
        // NAT64 well-known prefix
        "64:ff9b::127.0.0.1",
        "64:ff9b::a00:1",
        "64:ff9b::169.254.169.254",
        // 6to4
        "2002:7f00:1::",
        "2002:7f00:1:1234::1",
        "2002:a00:1::1",
        "2002:a9fe:a9fe::1",
    ];
    for addr in forms {
        assert_eq!(f.check(ip(addr)), Err(DenyReason::Translated), "{addr}");
    }
    // The same forms embedding a public address are fine.
    for addr in ["::8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"] {
        assert!(f.is_allowed(ip(addr)), "{addr}");
    }
}

#[test]
fn allow_loopback() {
    let f = PeerFilter::new(Vec::new(), Vec::new(), true);
    for addr in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
        assert!(f.is_allowed(ip(addr)), "{addr}");
    }
    assert_eq!(denied(&f, "10.0.0.1"), DenyReason::Private);
    assert_eq!(denied(&f, "169.254.169.254"), DenyReason::LinkLocal);
    // A NAT64 or 6to4 "loopback" is someone else's loopback.
    assert_eq!(denied(&f, "64:ff9b::7f00:1"), DenyReason::Translated);
    assert_eq!(denied(&f, "2002:7f00:1::1"), DenyReason::Translated);
}

#[test]
fn allowed_peer_ip_overrides_defaults() {
    let f = PeerFilter::new(nets(&["10.0.0.5/32"]), Vec::new(), false);
    assert!(f.is_allowed(ip("10.0.0.5")));
    assert!(f.is_allowed(ip("::ffff:10.0.0.5")));
    assert_eq!(denied(&f, "10.0.0.6"), DenyReason::Private);
    assert_eq!(denied(&f, "::ffff:10.0.0.6"), DenyReason::Private);
    // Translators are a different host from the one the operator allowed.
    assert_eq!(denied(&f, "64:ff9b::a00:5"), DenyReason::Translated);
}

#[test]
fn allowed_mapped_ipv6_net_allows_ipv4() {
    let f = PeerFilter::new(nets(&["::ffff:10.0.0.0/120"]), Vec::new(), false);
    assert!(f.is_allowed(ip("10.0.0.200")));
    assert!(f.is_allowed(ip("::ffff:10.0.0.200")));
    assert!(!f.is_allowed(ip("10.0.1.1")));
}

#[test]
fn allowed_ipv6_net_overrides_defaults() {
    let f = PeerFilter::new(nets(&["fd00:1::/64"]), Vec::new(), false);
    assert!(f.is_allowed(ip("fd00:1::9")));
    assert_eq!(denied(&f, "fd00:2::9"), DenyReason::UniqueLocal);
}

#[test]
fn configured_deny() {
    let f = PeerFilter::new(Vec::new(), nets(&["8.8.8.0/24", "2606:4700::/32"]), false);
    assert_eq!(denied(&f, "8.8.8.8"), DenyReason::Configured);
    assert_eq!(denied(&f, "::ffff:8.8.8.8"), DenyReason::Configured);
    assert_eq!(denied(&f, "64:ff9b::808:808"), DenyReason::Configured);
    assert_eq!(denied(&f, "2002:808:808::1"), DenyReason::Configured);
    assert_eq!(denied(&f, "2606:4700::1111"), DenyReason::Configured);
    assert!(f.is_allowed(ip("8.8.4.4")));
    // A configured deny wins over the default reason.
    let f = PeerFilter::new(Vec::new(), nets(&["10.0.0.0/8"]), false);
    assert_eq!(denied(&f, "10.1.1.1"), DenyReason::Configured);
}

#[test]
fn allowed_beats_denied() {
    let f = PeerFilter::new(nets(&["8.8.8.8/32"]), nets(&["8.8.8.0/24"]), false);
    assert!(f.is_allowed(ip("8.8.8.8")));
    assert!(f.is_allowed(ip("::ffff:8.8.8.8")));
    assert_eq!(denied(&f, "8.8.8.9"), DenyReason::Configured);
    let f = PeerFilter::new(nets(&["10.0.0.0/8"]), nets(&["10.0.0.0/8"]), false);
    assert!(f.is_allowed(ip("10.2.3.4")));
}

#[test]
fn deny_beats_allow_loopback() {
    let f = PeerFilter::new(Vec::new(), nets(&["127.0.0.0/8"]), true);
    assert_eq!(denied(&f, "127.0.0.1"), DenyReason::Configured);
    assert!(f.is_allowed(ip("::1")));
}

#[test]
fn reason_labels_are_unique_snake_case() {
    let mut seen = std::collections::HashSet::new();
    for r in DenyReason::ALL {
        let s = r.as_str();
        assert!(
            s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{s}"
        );
        assert!(seen.insert(s), "duplicate label {s}");
        assert_eq!(r.to_string(), s);
    }
}

#[test]
fn parse_single_and_cidr() {
    assert_eq!(parse_ip_range("10.0.0.5"), Ok(nets(&["10.0.0.5/32"])));
    assert_eq!(parse_ip_range(" 10.0.0.0/8 "), Ok(nets(&["10.0.0.0/8"])));
    assert_eq!(parse_ip_range("10.1.2.3/8"), Ok(nets(&["10.0.0.0/8"])));
    assert_eq!(
        parse_ip_range("2001:db8::/32"),
        Ok(nets(&["2001:db8::/32"]))
    );
    assert_eq!(parse_ip_range("::1"), Ok(nets(&["::1/128"])));
    assert_eq!(parse_ip_range("0.0.0.0/0"), Ok(nets(&["0.0.0.0/0"])));
}

#[test]
fn parse_ranges() {
    assert_eq!(
        parse_ip_range("10.0.0.1-10.0.0.9"),
        Ok(nets(&[
            "10.0.0.1/32",
            "10.0.0.2/31",
            "10.0.0.4/30",
            "10.0.0.8/31"
        ]))
    );
    assert_eq!(
        parse_ip_range("10.0.0.0 - 10.0.0.255"),
        Ok(nets(&["10.0.0.0/24"]))
    );
    assert_eq!(
        parse_ip_range("10.0.0.7-10.0.0.7"),
        Ok(nets(&["10.0.0.7/32"]))
    );
    assert_eq!(
        parse_ip_range("0.0.0.0-255.255.255.255"),
        Ok(nets(&["0.0.0.0/0"]))
    );
    assert_eq!(
        parse_ip_range("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        Ok(nets(&["::/0"]))
    );
    assert_eq!(
        parse_ip_range("2001:db8::1-2001:db8::4"),
        Ok(nets(&[
            "2001:db8::1/128",
            "2001:db8::2/127",
            "2001:db8::4/128"
        ]))
    );
}

#[test]
fn parse_errors() {
    use PeerFilterParseError as E;
    assert!(matches!(
        parse_ip_range("10.0.0.9-10.0.0.1"),
        Err(E::ReversedRange { .. })
    ));
    assert!(matches!(
        parse_ip_range("10.0.0.1-::1"),
        Err(E::MixedFamilies { .. })
    ));
    assert_eq!(
        parse_ip_range("garbage"),
        Err(E::InvalidAddress("garbage".into()))
    );
    assert!(matches!(
        parse_ip_range("10.0.0.0/33"),
        Err(E::PrefixTooLong {
            prefix: 33,
            max: 32,
            ..
        })
    ));
    assert!(matches!(
        parse_ip_range("::/129"),
        Err(E::PrefixTooLong { max: 128, .. })
    ));
    assert_eq!(parse_ip_range(""), Err(E::Empty));
    assert_eq!(parse_ip_range("  "), Err(E::Empty));
    assert_eq!(
        parse_ip_range("10.0.0.0/x"),
        Err(E::InvalidPrefix("x".into()))
    );
    assert_eq!(
        parse_ip_range("10.0.0.0/+8"),
        Err(E::InvalidPrefix("+8".into()))
    );
    assert_eq!(
        parse_ip_range("10.0.0.0/"),
        Err(E::InvalidPrefix(String::new()))
    );
    assert_eq!(
        parse_ip_range("10.0.0.1-"),
        Err(E::InvalidAddress(String::new()))
    );
    assert_eq!(
        parse_ip_range("10.0.0.1-10.0.0.2-10.0.0.3"),
        Err(E::InvalidAddress("10.0.0.2-10.0.0.3".into()))
    );
    assert_eq!(
        parse_ip_range("10.0.0.256"),
        Err(E::InvalidAddress("10.0.0.256".into()))
    );
    // The message names the problem.
    let msg = parse_ip_range("10.0.0.9-10.0.0.1")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("reversed"), "{msg}");
}

/// Any address, biased towards the special forms so they get exercised.
fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|b| IpAddr::V4(Ipv4Addr::from_bits(b))),
        any::<u128>().prop_map(|b| IpAddr::V6(Ipv6Addr::from_bits(b))),
        any::<u32>().prop_map(|b| IpAddr::V6(Ipv4Addr::from_bits(b).to_ipv6_mapped())),
        any::<u32>().prop_map(|b| IpAddr::V6(Ipv6Addr::from_bits(u128::from(b)))),
        any::<u32>().prop_map(|b| {
            IpAddr::V6(Ipv6Addr::from_bits(
                v6(0x64, 0xff9b, 0, 0, 0, 0, 0, 0) | u128::from(b),
            ))
        }),
        (any::<u32>(), any::<u128>()).prop_map(|(b, low)| {
            let bits = (0x2002u128 << 112) | (u128::from(b) << 80) | (low >> 48);
            IpAddr::V6(Ipv6Addr::from_bits(bits))
        }),
    ]
}

fn any_net() -> impl Strategy<Value = IpNet> {
    (any_ip(), any::<u8>()).prop_filter_map("valid prefix", |(addr, p)| {
        let max = max_prefix(addr);
        IpNet::new(addr, p % (max + 1)).ok()
    })
}

fn any_filter() -> impl Strategy<Value = PeerFilter> {
    (
        proptest::collection::vec(any_net(), 0..4),
        proptest::collection::vec(any_net(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(a, d, lo)| PeerFilter::new(a, d, lo))
}

proptest! {
    #[test]
    fn check_never_panics_and_agrees(f in any_filter(), addr in any_ip()) {
        let verdict = f.check(addr);
        prop_assert_eq!(verdict.is_ok(), f.is_allowed(addr));
    }

    #[test]
    fn mapped_form_same_verdict(f in any_filter(), bits in any::<u32>()) {
        let a = Ipv4Addr::from_bits(bits);
        prop_assert_eq!(
            f.check(IpAddr::V4(a)),
            f.check(IpAddr::V6(a.to_ipv6_mapped()))
        );
        let d = PeerFilter::default();
        prop_assert_eq!(
            d.check(IpAddr::V4(a)),
            d.check(IpAddr::V6(a.to_ipv6_mapped()))
        );
    }

    #[test]
    fn embedded_denied_ipv4_never_allowed_by_default(bits in any::<u32>()) {
        let f = PeerFilter::default();
        let a = Ipv4Addr::from_bits(bits);
        if f.check(IpAddr::V4(a)).is_err() {
            let nat64 = v6(0x64, 0xff9b, 0, 0, 0, 0, 0, 0) | u128::from(bits);
            let six_to_four = (0x2002u128 << 112) | (u128::from(bits) << 80) | 1;
            let siit = v6(0, 0, 0, 0, 0xffff, 0, 0, 0) | u128::from(bits);
            for form in [nat64, six_to_four, siit, u128::from(bits)] {
                prop_assert!(!f.is_allowed(IpAddr::V6(Ipv6Addr::from_bits(form))));
            }
        }
    }

    #[test]
    fn ipv4_range_cidrs_cover_exactly(a in any::<u32>(), b in any::<u32>()) {
        let (lo, hi) = (a.min(b), a.max(b));
        let s = format!("{}-{}", Ipv4Addr::from_bits(lo), Ipv4Addr::from_bits(hi));
        let cidrs = parse_ip_range(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!cidrs.is_empty());
        prop_assert!(cidrs.len() <= 62);
        let mut next = u64::from(lo);
        let mut prev: Option<Ipv4Net> = None;
        for net in &cidrs {
            let IpNet::V4(net) = net else {
                return Err(TestCaseError::fail("IPv6 net from IPv4 range"));
            };
            prop_assert_eq!(*net, net.trunc(), "not aligned");
            prop_assert_eq!(u64::from(net.network().to_bits()), next, "gap or overlap");
            next = u64::from(net.broadcast().to_bits()) + 1;
            // Minimal: two equal-sized neighbours forming an aligned block would merge.
            if let Some(p) = prev {
                if p.prefix_len() == net.prefix_len() && p.prefix_len() > 0 {
                    let parent = Ipv4Net::new(p.network(), p.prefix_len() - 1)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert!(parent.network() != p.network(), "mergeable {} {}", p, net);
                }
            }
            prev = Some(*net);
        }
        prop_assert_eq!(next, u64::from(hi) + 1, "does not end at range end");
    }
}
