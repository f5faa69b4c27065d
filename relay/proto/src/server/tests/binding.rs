//! Binding requests and indications (RFC 8489): unauthenticated, answered from any source.

use super::harness::*;

#[test]
fn binding_answers_with_xor_mapped_address_software_and_fingerprint() {
    let mut h = Harness::new();
    let v6_client = FiveTuple {
        transport: Transport::Tcp,
        client: sa("[2001:db8:5::7]:61000"),
        server: sa("[2001:db8::1]:3478"),
    };
    for from in [udp_client(1), v6_client] {
        let msg = h.unsigned(from, BINDING, vec![]);
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        let mapped = msg.get::<XorMappedAddress>().expect("XOR-MAPPED-ADDRESS");
        assert_eq!(
            *mapped.expect_xor_mapped_address().socket_address(),
            from.client
        );
        let software = msg.get::<Software>().expect("SOFTWARE on Binding");
        assert_eq!(software.expect_software().as_str(), SOFTWARE);
    }
    let successes = &h.counters.requests[crate::metrics::MethodLabel::Binding as usize][0];
    assert_eq!(Counters::get(successes), 2);
}

#[test]
fn binding_indication_is_a_silent_keepalive() {
    let mut h = Harness::new();
    let tid = h.tid();
    let bytes = encode(
        BINDING,
        MessageClass::Indication,
        tid,
        vec![Fingerprint::default().into()],
    );
    assert_eq!(h.packet(udp_client(1), &bytes), ClientOutcome::Handled);
    h.assert_no_commands();
    assert_eq!(h.malformed(), 0);
}
