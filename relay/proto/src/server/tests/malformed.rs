//! Malformed and unexpected input, and the amplification guard: 420, 400, no SOFTWARE when
//! unauthenticated, nothing panics.

use super::harness::*;

#[test]
fn unknown_comprehension_required_attributes_get_420() {
    use stun_types::attribute::{AttributeType, RawAttribute};
    use stun_types::message::{Message, MessageWrite, MessageWriteExt, MessageWriteVec};

    let mut h = Harness::new();
    let build = |method, types: &[u16]| {
        let mut msg = Message::builder_request(method, MessageWriteVec::new());
        for &t in types {
            msg.add_attribute(&RawAttribute::new(AttributeType::new(t), &[1, 2, 3, 4]))
                .unwrap();
        }
        msg.add_fingerprint().unwrap();
        msg.finish()
    };
    let from = udp_client(1);
    for method in [stun_types::message::BINDING, turn_types::message::ALLOCATE] {
        let bytes = build(method, &[0x0030, 0x8030, 0x7F00]);
        assert_eq!(h.packet(from, &bytes), ClientOutcome::Handled);
        let msg = decode(&h.expect_send(from), None).msg;
        assert_eq!(error_code(&msg), Some(420));
        let unknown = msg.get::<UnknownAttributes>().expect("UNKNOWN-ATTRIBUTES");
        // The comprehension-optional 0x8030 is ignored, not reported.
        assert_eq!(
            unknown.expect_unknown_attributes().attributes(),
            &[0x0030, 0x7F00]
        );
        assert!(!has::<Software>(&msg));
    }
    // Only comprehension-optional unknowns: processed normally.
    let bytes = build(stun_types::message::BINDING, &[0x8030]);
    h.packet(from, &bytes);
    let msg = decode(&h.expect_send(from), None).msg;
    assert_eq!(msg.class(), MessageClass::SuccessResponse);
}

#[test]
fn unknown_method_is_400_without_software() {
    use stun_types::message::{
        Message, MessageType, MessageWrite, MessageWriteExt, MessageWriteVec, Method,
    };

    let mut h = Harness::new();
    let mtype = MessageType::from_class_method(
        stun_types::message::MessageClass::Request,
        Method::new(0x0AB),
    );
    let tid = stun_types::message::TransactionId::generate();
    let mut msg = Message::builder(mtype, tid, MessageWriteVec::new());
    msg.add_fingerprint().unwrap();
    let bytes = msg.finish();
    let from = udp_client(1);
    assert_eq!(h.packet(from, &bytes), ClientOutcome::Handled);
    let response = decode(&h.expect_send(from), None);
    assert!(!response.signed);
    assert_eq!(error_code(&response.msg), Some(400));
    assert!(!has::<Software>(&response.msg));
}

#[test]
fn unauthenticated_answers_carry_no_software_but_binding_does() {
    let mut h = Harness::new();
    let from = udp_client(1);
    let binding = h.unsigned(from, BINDING, vec![]);
    assert!(has::<Software>(&binding));
    for method in [ALLOCATE, REFRESH, CREATE_PERMMISSION, CHANNEL_BIND] {
        let msg = h.unsigned(from, method, vec![udp_transport()]);
        assert_eq!(error_code(&msg), Some(401));
        assert!(!has::<Software>(&msg), "{method:?}");
    }
    // The challenge must not be much larger than what provoked it, or it amplifies.
    let tid = h.tid();
    let request = encode(
        ALLOCATE,
        MessageClass::Request,
        tid,
        vec![udp_transport(), Fingerprint::default().into()],
    );
    h.packet(from, &request);
    let answer = h.expect_send(from);
    assert!(
        answer.len() <= request.len() * 4,
        "{} bytes for {}",
        answer.len(),
        request.len()
    );
}

#[test]
fn malformed_and_truncated_packets_are_counted_and_never_panic() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.allocate(&mut alice, vec![]);
    h.create_permission(&alice, &[peer()]);
    let (_, full) = h.signed_bytes(&alice, REFRESH, vec![LifeTime::new(700).into()]);
    let (send, _) = h.send_indication(&alice, peer(), b"payload");

    let mut expected = h.malformed();
    for packet in [&full, &send] {
        for len in 0..packet.len() {
            assert_eq!(
                h.packet(alice.from, &packet[..len]),
                ClientOutcome::Dropped,
                "prefix {len}"
            );
            expected += 1;
            assert_eq!(h.malformed(), expected, "prefix {len} not counted");
        }
    }
    // A flipped bit anywhere FINGERPRINT covers, or in its value, is caught. (Its own type
    // field is not covered: flipping that just leaves an ignorable attribute.)
    for i in (20..full.len() - 8).chain(full.len() - 4..full.len()) {
        let mut bad = full.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            h.packet(alice.from, &bad),
            ClientOutcome::Dropped,
            "bit flip at {i}"
        );
        expected += 1;
        assert_eq!(h.malformed(), expected);
    }
    // Neither STUN nor ChannelData (top bits 10/11), and a bare ChannelData header.
    for junk in [
        &[0x80u8, 0, 0, 0][..],
        &[0xC0, 1, 2, 3, 4, 5],
        &[0x40, 0x00],
    ] {
        assert_eq!(h.packet(alice.from, junk), ClientOutcome::Dropped);
        expected += 1;
    }
    // A Send indication without DATA, and a success response sent to the server.
    let tid = h.tid();
    let no_data = encode(
        SEND,
        MessageClass::Indication,
        tid,
        vec![XorPeerAddress::from(peer()).into()],
    );
    let response = encode(
        BINDING,
        MessageClass::SuccessResponse,
        tid,
        vec![Fingerprint::default().into()],
    );
    for packet in [no_data, response] {
        assert_eq!(h.packet(alice.from, &packet), ClientOutcome::Dropped);
        expected += 1;
    }
    assert_eq!(h.malformed(), expected);
    h.assert_no_commands();
    // The intact request still works afterwards.
    assert_eq!(h.packet(alice.from, &full), ClientOutcome::Handled);
    let msg = decode(&h.expect_send(alice.from), Some(&alice.key())).msg;
    assert_eq!(lifetime_of(&msg), 700);
}
