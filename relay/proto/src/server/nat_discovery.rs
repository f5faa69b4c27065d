//! RFC 5780 NAT behaviour discovery on Binding, as coturn offers it: with two listening IPs of
//! one family and two ports (`listening-port`, `alt-listening-port`), a Binding over UDP is
//! answered with OTHER-ADDRESS, RESPONSE-ORIGIN and MAPPED-ADDRESS, from the other IP and/or port when its
//! CHANGE-REQUEST asks, to the RESPONSE-PORT it names, padded when it carries PADDING.
//!
//! These answers are unauthenticated and may go to a spoofed source, so they obey the same
//! rules as every other unauthenticated answer, plus two of their own (RFC 5780 §9):
//! - they are counted against the source's rate limit like any Binding (the caller checks);
//! - RESPONSE-PORT changes only the port: the answer goes to the IP the request came from;
//! - PADDING never makes an answer longer than its request, nor longer than [`MAX_PADDING`]
//!   bytes of padding, so the relay amplifies no more than a plain Binding answer does.
//!
//! Off (no pair of listening IPs, `no-rfc5780`, or a request over TCP/TLS, which cannot be
//! answered from elsewhere), a Binding asking for any of this (a CHANGE-REQUEST with a flag
//! set, RESPONSE-PORT, PADDING) gets 420 naming those attributes, as RFC 8489 §7.3.1 has a
//! server answer comprehension-required attributes it does not act on. coturn (4.6.1, with
//! `no-rfc5780`) answers 420 to such a CHANGE-REQUEST too, but ignores RESPONSE-PORT and
//! PADDING, so its answer goes to the source port unpadded, which the client cannot tell from
//! an answer that honoured them. A CHANGE-REQUEST with no flag set asks for nothing and is
//! answered as a plain Binding, as coturn does for the STUN clients that always send one.

use std::net::SocketAddr;

use stun_types::attribute::{Attribute, AttributeType, ErrorCode, RawAttribute, XorMappedAddress};
use stun_types::message::{Message, MessageWrite, MessageWriteExt, MessageWriteVec};

use super::replies::unsigned_binding_trailer_len;
use super::Server;
use crate::metrics::MethodLabel;
use crate::transport::{FiveTuple, Transport};

/// CHANGE-REQUEST (RFC 5780 §7.2).
pub(super) const CHANGE_REQUEST: AttributeType = AttributeType::new(0x0003);
/// PADDING (RFC 5780 §7.6).
pub(super) const PADDING: AttributeType = AttributeType::new(0x0026);
/// RESPONSE-PORT (RFC 5780 §7.5).
pub(super) const RESPONSE_PORT: AttributeType = AttributeType::new(0x0027);
/// MAPPED-ADDRESS, beside XOR-MAPPED-ADDRESS as coturn sends it: a discovery client compares
/// the two to spot an ALG rewriting addresses in payloads (turnutils_natdiscovery prints "No
/// ALG: Mapped == XOR-Mapped", or "Not received mapped address attribute" without it).
const MAPPED_ADDRESS: AttributeType = AttributeType::new(0x0001);
/// RESPONSE-ORIGIN (RFC 5780 §7.3): where the answer was sent from.
const RESPONSE_ORIGIN: AttributeType = AttributeType::new(0x802B);
/// OTHER-ADDRESS (RFC 5780 §7.4): the other IP and port of the address the request reached.
const OTHER_ADDRESS: AttributeType = AttributeType::new(0x802C);

/// The "change IP" flag of CHANGE-REQUEST.
const CHANGE_IP: u32 = 0x4;
/// The "change port" flag of CHANGE-REQUEST.
const CHANGE_PORT: u32 = 0x2;

/// The most padding an answer carries: an Ethernet MTU, the size RFC 5780 §7.6 suggests.
pub(super) const MAX_PADDING: usize = 1500;
/// What padding is copied from: its value does not matter (RFC 5780 §7.6).
static ZEROS: [u8; MAX_PADDING] = [0; MAX_PADDING];

/// What a Binding asks of RFC 5780.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Asks {
    change_ip: bool,
    change_port: bool,
    response_port: Option<u16>,
    /// The length of the request's PADDING value.
    padding: Option<usize>,
}

impl Asks {
    /// Reads CHANGE-REQUEST, RESPONSE-PORT and PADDING; `None` when one is malformed.
    fn of(msg: &Message<'_>) -> Option<Asks> {
        let mut asks = Asks::default();
        for (_, raw) in msg.iter_attributes() {
            let value: &[u8] = &raw.value;
            match raw.get_type() {
                t if t == CHANGE_REQUEST => {
                    let flags = u32::from_be_bytes(value.try_into().ok()?);
                    asks.change_ip = flags & CHANGE_IP != 0;
                    asks.change_port = flags & CHANGE_PORT != 0;
                }
                t if t == RESPONSE_PORT => {
                    // A 16-bit port, with its 2 bytes of padding counted in the length by
                    // some clients and not by others; port 0 reaches nobody.
                    let port = match value {
                        [hi, lo] | [hi, lo, _, _] => u16::from_be_bytes([*hi, *lo]),
                        _ => return None,
                    };
                    if port == 0 {
                        return None;
                    }
                    asks.response_port = Some(port);
                }
                t if t == PADDING => asks.padding = Some(value.len()),
                _ => {}
            }
        }
        Some(asks)
    }

    /// The attributes asking for what an answer without RFC 5780 cannot do.
    fn unsupported(&self) -> Vec<AttributeType> {
        let mut named = Vec::new();
        if self.change_ip || self.change_port {
            named.push(CHANGE_REQUEST);
        }
        if self.response_port.is_some() {
            named.push(RESPONSE_PORT);
        }
        if self.padding.is_some() {
            named.push(PADDING);
        }
        named
    }
}

impl Server {
    /// Answers a Binding (already counted against the source's rate limit): plainly, or with
    /// RFC 5780 when it is on for the address the request reached.
    pub(super) fn answer_binding(&mut self, from: FiveTuple, msg: &Message<'_>) {
        let label = MethodLabel::Binding;
        let Some(asks) = Asks::of(msg) else {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, None, label);
        };
        let other = match (&self.config.nat_discovery, from.transport) {
            (Some(nat), Transport::Udp) => nat.other_address(from.server),
            _ => None,
        };
        let mut out = Message::builder_success(msg, MessageWriteVec::with_capacity(128));
        let _ = out.add_attribute(&XorMappedAddress::new(from.client, msg.transaction_id()));
        let Some(other) = other else {
            let unsupported = asks.unsupported();
            if !unsupported.is_empty() {
                return self.unknown_attributes(from, msg, &unsupported, label);
            }
            return self.send(from, out, None, label, 0);
        };
        let source = SocketAddr::new(
            if asks.change_ip {
                other.ip()
            } else {
                from.server.ip()
            },
            if asks.change_port {
                other.port()
            } else {
                from.server.port()
            },
        );
        // Only the port may change: the IP is the one the request came from (RFC 5780 §9).
        let to = SocketAddr::new(
            from.client.ip(),
            asks.response_port.unwrap_or(from.client.port()),
        );
        add_address(&mut out, MAPPED_ADDRESS, from.client);
        add_address(&mut out, OTHER_ADDRESS, other);
        add_address(&mut out, RESPONSE_ORIGIN, source);
        if let Some(asked) = asks.padding {
            let written = out.len() + unsigned_binding_trailer_len(&self.config);
            let padding = padding_len(asked, msg.as_bytes().len(), written);
            if padding > 0 {
                let _ = out.add_attribute(&RawAttribute::new(PADDING, &ZEROS[..padding]));
            }
        }
        if source == from.server && to == from.client {
            self.send(from, out, None, label, 0);
        } else {
            self.send_from(source, to, out);
        }
    }
}

/// How many bytes of PADDING an answer gets: what the request asked for, at most
/// [`MAX_PADDING`], and no more than keeps the answer (`written` bytes without it) within the
/// request's `request_len` bytes; a multiple of 4, as attribute values are padded to it.
fn padding_len(asked: usize, request_len: usize, written: usize) -> usize {
    const HEADER: usize = 4;
    let room = request_len.saturating_sub(written + HEADER);
    asked.min(MAX_PADDING).min(room) / 4 * 4
}

/// An RFC 5780 address attribute (the MAPPED-ADDRESS format, not XORed).
fn add_address(out: &mut MessageWriteVec, kind: AttributeType, addr: SocketAddr) {
    let mut value = [0u8; 20];
    value[2..4].copy_from_slice(&addr.port().to_be_bytes());
    let len = match addr {
        SocketAddr::V4(a) => {
            value[1] = 0x01;
            value[4..8].copy_from_slice(&a.ip().octets());
            8
        }
        SocketAddr::V6(a) => {
            value[1] = 0x02;
            value[4..20].copy_from_slice(&a.ip().octets());
            20
        }
    };
    let _ = out.add_attribute(&RawAttribute::new(kind, &value[..len]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_fits_the_request_the_cap_and_four_byte_words() {
        // Room enough: what was asked, rounded down to a word.
        assert_eq!(padding_len(1001, 2000, 100), 1000);
        // Never above MAX_PADDING, however large the request.
        assert_eq!(padding_len(9000, 20_000, 100), MAX_PADDING);
        // Never past the request's size: 600 - 100 - 4 = 496.
        assert_eq!(padding_len(1500, 600, 100), 496);
        // An answer already as large as the request gets none.
        assert_eq!(padding_len(1500, 100, 100), 0);
        assert_eq!(padding_len(1500, 50, 100), 0);
    }
}
