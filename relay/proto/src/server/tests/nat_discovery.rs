//! RFC 5780 NAT behaviour discovery on Binding: OTHER-ADDRESS and RESPONSE-ORIGIN only when
//! it is on, CHANGE-REQUEST answered from the other IP and/or port, RESPONSE-PORT to the
//! source's IP only, PADDING bounded by the request, 420 when off, rate limited throughout.

use super::harness::*;
use crate::config::NatDiscovery;
use stun_rs::attributes::discovery::{
    ChangeRequest, ChangeRequestFlags, OtherAddress, Padding, ResponseOrigin, ResponsePort,
};
use stun_rs::attributes::stun::MappedAddress;

const PRIMARY: &str = "192.0.2.1:3478";
const OTHER_IP: &str = "192.0.2.2";
const ALT_PORT: u16 = 3479;

fn nat_config() -> ServerConfig {
    let mut config = base_config();
    config.nat_discovery = Some(NatDiscovery {
        ip_pairs: vec![(ip("192.0.2.1"), ip(OTHER_IP))],
        ports: (3478, ALT_PORT),
    });
    config
}

fn change(ip: bool, port: bool) -> StunAttribute {
    let mut flags = None;
    if ip {
        flags = Some(ChangeRequestFlags::ChangeIp.into());
    }
    if port {
        flags = Some(flags.unwrap_or_default() | ChangeRequestFlags::ChangePort);
    }
    ChangeRequest::new(flags).into()
}

fn socket_of<A: StunAttributeType>(msg: &StunMessage) -> Option<SocketAddr> {
    let attr = msg.get::<A>()?;
    Some(match attr {
        StunAttribute::OtherAddress(a) => *a.socket_address(),
        StunAttribute::ResponseOrigin(a) => *a.socket_address(),
        StunAttribute::MappedAddress(a) => *a.socket_address(),
        StunAttribute::XorMappedAddress(a) => *a.socket_address(),
        other => panic!("not an address attribute: {other:?}"),
    })
}

/// Sends a Binding with `attrs` and returns the single command's source, destination and
/// decoded answer; the source is `None` for a plain answer (from the listener it reached).
fn bind(
    h: &mut Harness,
    from: FiveTuple,
    attrs: Vec<StunAttribute>,
) -> (Option<SocketAddr>, SocketAddr, StunMessage, (usize, usize)) {
    let tid = h.tid();
    let mut attrs = attrs;
    attrs.push(Fingerprint::default().into());
    let bytes = encode(BINDING, MessageClass::Request, tid, attrs);
    assert_eq!(h.packet(from, &bytes), ClientOutcome::Handled);
    let (source, to, data) = match h.commands().as_slice() {
        [Command::SendToClient { to, data }] => {
            assert_eq!(*to, from, "a plain answer goes back the way it came");
            (None, to.client, data.clone())
        }
        [Command::SendFrom { from, to, data }] => (Some(*from), *to, data.clone()),
        other => panic!("expected one answer, got {other:?}"),
    };
    let msg = decode(&data, None).msg;
    assert_eq!(*msg.transaction_id(), tid);
    (source, to, msg, (bytes.len(), data.len()))
}

#[test]
fn on_a_binding_names_the_other_address_and_where_it_came_from() {
    let mut h = Harness::with(nat_config());
    let client = udp_client(1);
    let (source, to, msg, _) = bind(&mut h, client, vec![]);
    assert_eq!((source, to), (None, client.client));
    assert_eq!(msg.class(), MessageClass::SuccessResponse);
    assert_eq!(
        socket_of::<OtherAddress>(&msg),
        Some(sa(&format!("{OTHER_IP}:{ALT_PORT}")))
    );
    assert_eq!(socket_of::<ResponseOrigin>(&msg), Some(sa(PRIMARY)));
    assert_eq!(socket_of::<XorMappedAddress>(&msg), Some(client.client));
    assert_eq!(socket_of::<MappedAddress>(&msg), Some(client.client));

    // Reached on the other IP's alternate port, the other address is the first IP's port.
    let at_alt = FiveTuple {
        server: sa(&format!("{OTHER_IP}:{ALT_PORT}")),
        ..client
    };
    let (_, _, msg, _) = bind(&mut h, at_alt, vec![]);
    assert_eq!(socket_of::<OtherAddress>(&msg), Some(sa(PRIMARY)));
    assert_eq!(socket_of::<ResponseOrigin>(&msg), Some(at_alt.server));
}

#[test]
fn off_a_binding_carries_no_rfc_5780_attributes() {
    let mut h = Harness::new();
    let msg = h.unsigned(udp_client(1), BINDING, vec![]);
    assert!(!has::<OtherAddress>(&msg) && !has::<ResponseOrigin>(&msg));
    assert!(!has::<MappedAddress>(&msg));

    // On, but reached over TCP or on an address outside the pair: off for that request.
    let mut h = Harness::with(nat_config());
    let over_tcp = FiveTuple {
        transport: Transport::Tcp,
        ..udp_client(1)
    };
    let elsewhere = FiveTuple {
        server: sa("192.0.2.3:3478"),
        ..udp_client(2)
    };
    for from in [over_tcp, elsewhere] {
        let msg = h.unsigned(from, BINDING, vec![]);
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        assert!(!has::<OtherAddress>(&msg) && !has::<ResponseOrigin>(&msg));
    }
}

#[test]
fn change_request_answers_from_the_other_ip_port_or_both() {
    let mut h = Harness::with(nat_config());
    let client = udp_client(1);
    let cases = [
        (false, false, None),
        (true, false, Some(sa(&format!("{OTHER_IP}:3478")))),
        (false, true, Some(sa(&format!("192.0.2.1:{ALT_PORT}")))),
        (true, true, Some(sa(&format!("{OTHER_IP}:{ALT_PORT}")))),
    ];
    for (ip, port, expected) in cases {
        let (source, to, msg, _) = bind(&mut h, client, vec![change(ip, port)]);
        assert_eq!(source, expected, "change ip {ip}, port {port}");
        assert_eq!(to, client.client);
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        assert_eq!(
            socket_of::<ResponseOrigin>(&msg),
            Some(expected.unwrap_or(client.server)),
            "RESPONSE-ORIGIN names where it was sent from"
        );
        // The other address stays the one of the address the request reached.
        assert_eq!(
            socket_of::<OtherAddress>(&msg),
            Some(sa(&format!("{OTHER_IP}:{ALT_PORT}")))
        );
    }
    assert_eq!(h.requests(MethodLabel::Binding, 0), 4);
}

#[test]
fn response_port_changes_the_port_never_the_ip() {
    let mut h = Harness::with(nat_config());
    let client = udp_client(1);
    let (source, to, msg, _) = bind(&mut h, client, vec![ResponsePort::new(40_999).into()]);
    assert_eq!(source, Some(client.server), "from the listener it reached");
    assert_eq!(to, SocketAddr::new(client.client.ip(), 40_999));
    // XOR-MAPPED-ADDRESS is still where the request came from.
    assert_eq!(socket_of::<XorMappedAddress>(&msg), Some(client.client));

    // With a change too: from the other address, to the asked port.
    let (source, to, _, _) = bind(
        &mut h,
        client,
        vec![change(true, true), ResponsePort::new(41_000).into()],
    );
    assert_eq!(source, Some(sa(&format!("{OTHER_IP}:{ALT_PORT}"))));
    assert_eq!(to, SocketAddr::new(client.client.ip(), 41_000));

    // Port 0 reaches nobody: 400.
    let (source, _, msg, _) = bind(&mut h, client, vec![ResponsePort::new(0).into()]);
    assert_eq!(source, None);
    assert_eq!(error_code(&msg), Some(400));
}

#[test]
fn padding_pads_the_answer_but_never_past_the_request() {
    let mut h = Harness::with(nat_config());
    let client = udp_client(1);
    let unpadded = {
        let tid = h.tid();
        let bytes = encode(
            BINDING,
            MessageClass::Request,
            tid,
            vec![Fingerprint::default().into()],
        );
        h.packet(client, &bytes);
        h.expect_send(client).len()
    };
    for asked in [0, 200, 1500, 2000] {
        let (_, _, msg, (request_len, answer_len)) = bind(
            &mut h,
            client,
            vec![Padding::new("p".repeat(asked)).unwrap().into()],
        );
        let padding = msg
            .get::<Padding>()
            .map_or(0, |p| p.expect_padding().as_str().len());
        assert_eq!(
            answer_len,
            unpadded + if padding > 0 { 4 + padding } else { 0 }
        );
        // No larger than the request, or than the answer without padding when that is larger.
        assert!(
            answer_len <= request_len.max(unpadded),
            "asked {asked}: a {answer_len}-byte answer to a {request_len}-byte request"
        );
        assert!(padding <= crate::server::nat_discovery::MAX_PADDING);
        assert_eq!(padding % 4, 0);
        match asked {
            // Too small a request to pad at all.
            0 => assert_eq!(padding, 0),
            // What was asked, when the request leaves room for it.
            1500 => assert!(padding > 1400, "padded {padding} of 1500"),
            // Capped, however much was asked.
            2000 => assert_eq!(padding, crate::server::nat_discovery::MAX_PADDING),
            _ => assert!(padding > 100, "padded {padding} of {asked}"),
        }
    }
}

#[test]
fn off_what_cannot_be_done_is_answered_420_naming_it() {
    let mut h = Harness::new();
    let client = udp_client(1);
    let cases: [(Vec<StunAttribute>, Vec<u16>); 4] = [
        (vec![change(true, false)], vec![0x0003]),
        (vec![change(false, true)], vec![0x0003]),
        (vec![ResponsePort::new(40_999).into()], vec![0x0027]),
        (
            vec![
                change(true, true),
                Padding::new("p".repeat(64)).unwrap().into(),
            ],
            vec![0x0003, 0x0026],
        ),
    ];
    for (attrs, named) in cases {
        let msg = h.unsigned(client, BINDING, attrs);
        assert_eq!(error_code(&msg), Some(420), "{msg:?}");
        let unknown: Vec<u16> = msg
            .get::<UnknownAttributes>()
            .expect("UNKNOWN-ATTRIBUTES")
            .expect_unknown_attributes()
            .iter()
            .copied()
            .collect();
        assert_eq!(unknown, named);
    }
    // A CHANGE-REQUEST asking for no change is a plain Binding (coturn's leniency).
    let msg = h.unsigned(client, BINDING, vec![change(false, false)]);
    assert_eq!(msg.class(), MessageClass::SuccessResponse);
}

#[test]
fn answers_from_elsewhere_cost_the_source_its_rate_limit() {
    let mut config = nat_config();
    config.rate_limit = RateLimitConfig {
        per_second: 1,
        burst: 2,
    };
    let mut h = Harness::with(config);
    let client = udp_client(1);
    bind(&mut h, client, vec![change(true, true)]);
    bind(&mut h, client, vec![ResponsePort::new(40_999).into()]);
    let tid = h.tid();
    let bytes = encode(
        BINDING,
        MessageClass::Request,
        tid,
        vec![change(true, true), Fingerprint::default().into()],
    );
    assert_eq!(h.packet(client, &bytes), ClientOutcome::Handled);
    h.assert_no_commands();
    assert_eq!(Counters::get(&h.counters.rate_limited), 1);
}

#[test]
fn on_an_answer_grows_by_its_three_address_attributes() {
    let mut config = nat_config();
    if let Some(nat) = config.nat_discovery.as_mut() {
        nat.ip_pairs.push((ip("2001:db8::1"), ip("2001:db8::2")));
    }
    let v6 = FiveTuple {
        transport: Transport::Udp,
        client: sa("[2001:db8:5::7]:61000"),
        server: sa("[2001:db8::1]:3478"),
    };
    let answer_len = |h: &mut Harness, from: FiveTuple| {
        let tid = h.tid();
        let bytes = encode(
            BINDING,
            MessageClass::Request,
            tid,
            vec![Fingerprint::default().into()],
        );
        h.packet(from, &bytes);
        h.expect_send(from).len()
    };
    let (mut on, mut off) = (Harness::with(config), Harness::new());
    // MAPPED-ADDRESS, OTHER-ADDRESS and RESPONSE-ORIGIN: 12 bytes each over IPv4, 24 over IPv6.
    for (from, growth) in [(udp_client(1), 36), (v6, 72)] {
        assert_eq!(
            answer_len(&mut on, from),
            answer_len(&mut off, from) + growth
        );
    }
}
