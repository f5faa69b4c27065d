//! Framing for the relayed data path, written in place around the payload so the runtime can
//! receive a peer datagram once and send it on without copying.
//!
//! The runtime reads peer payloads at [`PAYLOAD_OFFSET`] into its buffer; a ChannelData header
//! then fits in the 4 bytes before it, and a Data indication's header in the 48 bytes before it.

use std::net::SocketAddr;

use stun_types::attribute::AttributeWriteExt;
use stun_types::message::TransactionId;
use turn_types::attribute::XorPeerAddress;

/// Where the runtime should read a peer's payload so any header fits before it.
pub const PAYLOAD_OFFSET: usize = 48;

const MAGIC_COOKIE: u32 = 0x2112_A442;
const DATA_INDICATION: u16 = 0x0017;
const DATA_ATTRIBUTE: u16 = 0x0013;

/// Bytes of padding a stream transport needs after a frame of `len` bytes.
pub fn stream_padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Writes a ChannelData header for `payload_len` bytes into the 4 bytes before
/// [`PAYLOAD_OFFSET`]; returns where the frame starts.
pub fn write_channel_header(buf: &mut [u8], channel: u16, payload_len: usize) -> usize {
    let start = PAYLOAD_OFFSET - 4;
    buf[start..start + 2].copy_from_slice(&channel.to_be_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(payload_len as u16).to_be_bytes());
    start
}

/// Writes a Data indication's header (STUN header, XOR-PEER-ADDRESS, DATA header) for
/// `payload_len` bytes into the bytes before [`PAYLOAD_OFFSET`], and zeroes the attribute
/// padding after the payload. Returns `(start, end)` of the message in `buf`.
///
/// `buf` must hold `PAYLOAD_OFFSET + payload_len + 3` bytes.
pub fn write_data_indication(
    buf: &mut [u8],
    peer: SocketAddr,
    payload_len: usize,
    transaction: TransactionId,
) -> (usize, usize) {
    let addr_attr_len = match peer {
        SocketAddr::V4(_) => 12,
        SocketAddr::V6(_) => 24,
    };
    let padding = stream_padding(payload_len);
    let start = PAYLOAD_OFFSET - 4 - addr_attr_len - 20;
    let body_len = addr_attr_len + 4 + payload_len + padding;

    let header = &mut buf[start..start + 20];
    header[0..2].copy_from_slice(&DATA_INDICATION.to_be_bytes());
    header[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
    header[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    let tid: u128 = transaction.into();
    header[8..20].copy_from_slice(&tid.to_be_bytes()[4..]);

    let attr_start = start + 20;
    let written = XorPeerAddress::new(peer, transaction)
        .write_into(&mut buf[attr_start..attr_start + addr_attr_len]);
    debug_assert_eq!(written.ok(), Some(addr_attr_len));

    let data_header = PAYLOAD_OFFSET - 4;
    buf[data_header..data_header + 2].copy_from_slice(&DATA_ATTRIBUTE.to_be_bytes());
    buf[data_header + 2..PAYLOAD_OFFSET].copy_from_slice(&(payload_len as u16).to_be_bytes());
    let end = PAYLOAD_OFFSET + payload_len;
    buf[end..end + padding].fill(0);
    (start, end + padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_types::message::{Message, MessageClass};
    use turn_types::attribute::Data;
    use turn_types::channel::ChannelData;

    #[test]
    fn data_indication_parses_with_the_codec() {
        for peer in ["203.0.113.9:4000", "[2001:db8::9]:4000"] {
            let peer: SocketAddr = peer.parse().unwrap();
            let payload = b"hello";
            let mut buf = [0xAAu8; 128];
            buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload.len()].copy_from_slice(payload);
            let tid = TransactionId::generate();
            let (start, end) = write_data_indication(&mut buf, peer, payload.len(), tid);
            let msg = Message::from_bytes(&buf[start..end]).unwrap();
            assert!(msg.has_class(MessageClass::Indication));
            assert!(msg.has_method(turn_types::message::DATA));
            let addr: XorPeerAddress = msg.attribute().unwrap();
            assert_eq!(addr.addr(tid), peer);
            let data: Data = msg.attribute().unwrap();
            assert_eq!(data.data(), payload);
        }
    }

    #[test]
    fn channel_header_parses_with_the_codec() {
        let mut buf = [0u8; 64];
        buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 3].copy_from_slice(b"abc");
        let start = write_channel_header(&mut buf, 0x4001, 3);
        let cd = ChannelData::parse(&buf[start..PAYLOAD_OFFSET + 3]).unwrap();
        assert_eq!(cd.id(), 0x4001);
        assert_eq!(cd.data(), b"abc");
        assert_eq!(stream_padding(7), 1);
        assert_eq!(stream_padding(8), 0);
    }
}
