//! One STUN/TURN test kit for the relay core's tests, the cross-process tests and the
//! benchmark: the few messages a TURN client sends (Allocate, Refresh, CreatePermission,
//! ChannelBind, Send indication), signed with long-term credentials (RFC 8489 §9.2) or TURN
//! REST ones, ChannelData frames, and the few things a client reads from an answer
//! (class, ERROR-CODE, REALM, NONCE, XOR-MAPPED / XOR-RELAYED-ADDRESS, LIFETIME).
//!
//! Everything is written and read by hand, without a STUN codec: the relay parses with
//! `stun-types`, the cross-process tests decode with `stun-rs`, and this kit agrees with
//! both only if all three follow the RFCs.

#![forbid(unsafe_code)]

use base64::Engine as _;
use hmac::Mac as _;
use sha2::Digest as _;
use std::net::{IpAddr, SocketAddr};

/// The magic cookie of every STUN header (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The nonce prefix of RFC 8489 §9.2 ("nonce cookie") announcing security features.
pub const NONCE_COOKIE: &str = "obMatJos2";

/// STUN and TURN methods.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
    pub const CONNECT: u16 = 0x00A;
    pub const CONNECTION_BIND: u16 = 0x00B;
    pub const CONNECTION_ATTEMPT: u16 = 0x00C;
}

/// The attribute types the kit writes or reads.
pub mod attr {
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const CONNECTION_ID: u16 = 0x002A;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
}

/// The class of a STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0x000,
            Class::Indication => 0x010,
            Class::Success => 0x100,
            Class::Error => 0x110,
        }
    }
}

/// The message type field of `method` in `class` (RFC 8489 §5).
pub fn message_type(method: u16, class: Class) -> u16 {
    (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | class.bits()
}

/// The method and class of a message type field.
pub fn split_type(typ: u16) -> (u16, Class) {
    let method = (typ & 0x000F) | ((typ >> 1) & 0x0070) | ((typ >> 2) & 0x0F80);
    let class = match typ & 0x110 {
        0x000 => Class::Request,
        0x010 => Class::Indication,
        0x100 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

// ---------------------------------------------------------------------------------------
// Keys and credentials
// ---------------------------------------------------------------------------------------

/// The long-term key of RFC 8489 §9.2.2 with PASSWORD-ALGORITHM MD5 (or none):
/// MD5(username ":" realm ":" password).
pub fn long_term_key_md5(username: &str, realm: &str, password: &str) -> [u8; 16] {
    md5::Md5::digest(format!("{username}:{realm}:{password}")).into()
}

/// The long-term key with PASSWORD-ALGORITHM SHA-256: SHA-256(username ":" realm ":" password).
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    sha2::Sha256::digest(format!("{username}:{realm}:{password}")).into()
}

/// The TURN REST username (coturn's `use-auth-secret`): `EXPIRY:USER`.
pub fn rest_username(user: &str, expiry_unix: u64) -> String {
    format!("{expiry_unix}:{user}")
}

/// The TURN REST password of `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret).expect("any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// TURN REST credentials for `user` valid until `expiry_unix`: (username, password).
pub fn rest_credentials(secret: &[u8], user: &str, expiry_unix: u64) -> (String, String) {
    let username = rest_username(user, expiry_unix);
    let password = rest_password(secret, &username);
    (username, password)
}

/// Security feature bits carried by an RFC 8489 nonce cookie, if the nonce has one:
/// (password algorithms, username anonymity).
pub fn nonce_security_features(nonce: &str) -> Option<(bool, bool)> {
    let rest = nonce.strip_prefix(NONCE_COOKIE)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(rest.get(..4)?)
        .ok()?;
    let b0 = *bytes.first()?;
    Some((b0 & 0x80 != 0, b0 & 0x40 != 0))
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// A message being written: header, then attributes in the order they are added.
#[derive(Debug, Clone)]
pub struct Message {
    bytes: Vec<u8>,
}

impl Message {
    /// An empty message of `method` and `class` with transaction id `tid`.
    pub fn new(method: u16, class: Class, tid: [u8; 12]) -> Self {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&message_type(method, class).to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&tid);
        Self { bytes }
    }

    /// A request of `method`.
    pub fn request(method: u16, tid: [u8; 12]) -> Self {
        Self::new(method, Class::Request, tid)
    }

    /// The transaction id.
    pub fn tid(&self) -> [u8; 12] {
        self.bytes[8..20].try_into().expect("a header")
    }

    /// Any attribute: type, length, value, zero padding.
    pub fn attr(mut self, typ: u16, value: &[u8]) -> Self {
        append_raw_attribute(&mut self.bytes, typ, value);
        self
    }

    /// An XOR-…-ADDRESS attribute (RFC 8489 §14.2).
    pub fn xor_address(self, typ: u16, addr: SocketAddr) -> Self {
        let value = xor_address_value(addr, &self.tid());
        self.attr(typ, &value)
    }

    /// REQUESTED-TRANSPORT UDP.
    pub fn requested_transport_udp(self) -> Self {
        self.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    }

    /// LIFETIME in seconds.
    pub fn lifetime(self, secs: u32) -> Self {
        self.attr(attr::LIFETIME, &secs.to_be_bytes())
    }

    /// CHANNEL-NUMBER.
    pub fn channel_number(self, number: u16) -> Self {
        let mut value = [0; 4];
        value[..2].copy_from_slice(&number.to_be_bytes());
        self.attr(attr::CHANNEL_NUMBER, &value)
    }

    /// XOR-PEER-ADDRESS.
    pub fn peer(self, addr: SocketAddr) -> Self {
        self.xor_address(attr::XOR_PEER_ADDRESS, addr)
    }

    /// USERNAME, REALM and NONCE.
    pub fn credentials(self, username: &str, realm: &str, nonce: &str) -> Self {
        self.attr(attr::USERNAME, username.as_bytes())
            .attr(attr::REALM, realm.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
    }

    /// MESSAGE-INTEGRITY with `key` (HMAC-SHA1).
    pub fn integrity(mut self, key: &[u8]) -> Self {
        append_message_integrity(&mut self.bytes, key);
        self
    }

    /// MESSAGE-INTEGRITY-SHA256 with `key` (HMAC-SHA256, 32 bytes).
    pub fn integrity_sha256(mut self, key: &[u8]) -> Self {
        append_message_integrity_sha256(&mut self.bytes, key);
        self
    }

    /// FINGERPRINT, which comes last.
    pub fn fingerprint(mut self) -> Self {
        append_fingerprint(&mut self.bytes);
        self
    }

    /// The encoded message.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Allocate with REQUESTED-TRANSPORT UDP, unsigned.
pub fn allocate(tid: [u8; 12]) -> Message {
    Message::request(method::ALLOCATE, tid).requested_transport_udp()
}

/// Refresh with `lifetime` (0 deletes the allocation), unsigned.
pub fn refresh(tid: [u8; 12], lifetime: u32) -> Message {
    Message::request(method::REFRESH, tid).lifetime(lifetime)
}

/// CreatePermission for `peers`, unsigned.
pub fn create_permission(tid: [u8; 12], peers: &[SocketAddr]) -> Message {
    peers
        .iter()
        .fold(Message::request(method::CREATE_PERMISSION, tid), |m, &p| {
            m.peer(p)
        })
}

/// ChannelBind of `number` to `peer`, unsigned.
pub fn channel_bind(tid: [u8; 12], number: u16, peer: SocketAddr) -> Message {
    Message::request(method::CHANNEL_BIND, tid)
        .channel_number(number)
        .peer(peer)
}

/// RFC 6062 Connect to `peer`, unsigned.
pub fn connect(tid: [u8; 12], peer: SocketAddr) -> Message {
    Message::request(method::CONNECT, tid).peer(peer)
}

/// RFC 6062 ConnectionBind of connection `id`, unsigned.
pub fn connection_bind(tid: [u8; 12], id: u32) -> Message {
    Message::request(method::CONNECTION_BIND, tid).attr(attr::CONNECTION_ID, &id.to_be_bytes())
}

/// A Send indication of `payload` to `peer` (never signed).
pub fn send_indication(tid: [u8; 12], peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    Message::new(method::SEND, Class::Indication, tid)
        .peer(peer)
        .attr(attr::DATA, payload)
        .finish()
}

/// A ChannelData frame (RFC 8656 §12.4), unpadded (as over UDP).
pub fn channel_data(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&number.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The value of an XOR-…-ADDRESS attribute for `addr` in a message with `tid`.
pub fn xor_address_value(addr: SocketAddr, tid: &[u8; 12]) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut mask = MAGIC_COOKIE.to_be_bytes().to_vec();
    mask.extend_from_slice(tid);
    let (family, octets): (u8, Vec<u8>) = match addr.ip() {
        IpAddr::V4(ip) => (1, ip.octets().to_vec()),
        IpAddr::V6(ip) => (2, ip.octets().to_vec()),
    };
    let mut value = vec![0, family];
    value.extend_from_slice(&port.to_be_bytes());
    value.extend(octets.iter().zip(&mask).map(|(a, m)| a ^ m));
    value
}

/// Appends one attribute (type, length, value, zero padding) to an encoded message and
/// updates the length in the header; also for attributes a codec would refuse to write.
pub fn append_raw_attribute(msg: &mut Vec<u8>, typ: u16, value: &[u8]) {
    msg.extend_from_slice(&typ.to_be_bytes());
    msg.extend_from_slice(&(value.len() as u16).to_be_bytes());
    msg.extend_from_slice(value);
    msg.resize(msg.len() + (4 - value.len() % 4) % 4, 0);
    let body = msg.len() - 20;
    set_body_length(msg, body);
}

/// Appends MESSAGE-INTEGRITY (RFC 8489 §14.5): HMAC-SHA1 with `key` over the message up
/// to the attribute, with the header length already counting it.
pub fn append_message_integrity(msg: &mut Vec<u8>, key: &[u8]) {
    let body = msg.len() - 20 + 24;
    set_body_length(msg, body);
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
    mac.update(msg);
    let tag = mac.finalize().into_bytes();
    append_raw_attribute(msg, attr::MESSAGE_INTEGRITY, &tag);
}

/// Appends MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6), untruncated.
pub fn append_message_integrity_sha256(msg: &mut Vec<u8>, key: &[u8]) {
    let body = msg.len() - 20 + 36;
    set_body_length(msg, body);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(msg);
    let tag = mac.finalize().into_bytes();
    append_raw_attribute(msg, attr::MESSAGE_INTEGRITY_SHA256, &tag);
}

/// Appends FINGERPRINT (RFC 8489 §14.7): CRC-32 of the message up to it, XOR 0x5354554E.
pub fn append_fingerprint(msg: &mut Vec<u8>) {
    let body = msg.len() - 20 + 8;
    set_body_length(msg, body);
    let value = crc32(msg) ^ 0x5354_554E;
    append_raw_attribute(msg, attr::FINGERPRINT, &value.to_be_bytes());
}

fn set_body_length(msg: &mut [u8], body: usize) {
    msg[2..4].copy_from_slice(&(body as u16).to_be_bytes());
}

/// CRC-32 (IEEE 802.3, as ISO-HDLC), bit by bit: test messages are short.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// The attributes of an encoded STUN message as (type, value) pairs, walked by hand so
/// that messages a codec would refuse (unknown or malformed attributes) can be inspected.
/// `None` if the header or an attribute length is inconsistent.
pub fn raw_attributes(bytes: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    if bytes.len() < 20 {
        return None;
    }
    let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    let body = bytes.get(20..20 + len)?;
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let head = body.get(at..at + 4)?;
        let typ = u16::from_be_bytes([head[0], head[1]]);
        let alen = u16::from_be_bytes([head[2], head[3]]) as usize;
        out.push((typ, body.get(at + 4..at + 4 + alen)?));
        at += 4 + alen.div_ceil(4) * 4;
    }
    Some(out)
}

/// The value of the first attribute of type `typ`, see [`raw_attributes`].
pub fn raw_attribute(bytes: &[u8], typ: u16) -> Option<&[u8]> {
    raw_attributes(bytes)?
        .into_iter()
        .find(|(t, _)| *t == typ)
        .map(|(_, v)| v)
}

/// A received STUN message, its header checked and its attributes walked (no integrity
/// check: a test that needs one decodes with its codec).
#[derive(Debug, Clone)]
pub struct Reply<'a> {
    pub method: u16,
    pub class: Class,
    pub tid: [u8; 12],
    pub attributes: Vec<(u16, &'a [u8])>,
}

impl<'a> Reply<'a> {
    /// Parses one STUN message that fills `bytes`; `None` for anything else (ChannelData,
    /// a wrong cookie, inconsistent lengths, trailing bytes).
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < 20
            || bytes[0] & 0xC0 != 0
            || bytes[4..8] != MAGIC_COOKIE.to_be_bytes()
            || u16::from_be_bytes([bytes[2], bytes[3]]) as usize != bytes.len() - 20
        {
            return None;
        }
        let (method, class) = split_type(u16::from_be_bytes([bytes[0], bytes[1]]));
        Some(Self {
            method,
            class,
            tid: bytes[8..20].try_into().ok()?,
            attributes: raw_attributes(bytes)?,
        })
    }

    /// The value of the first attribute of type `typ`.
    pub fn get(&self, typ: u16) -> Option<&'a [u8]> {
        self.attributes
            .iter()
            .find(|(t, _)| *t == typ)
            .map(|&(_, v)| v)
    }

    /// The ERROR-CODE number (class × 100 + number).
    pub fn error_code(&self) -> Option<u16> {
        let v = self.get(attr::ERROR_CODE)?;
        Some(u16::from(*v.get(2)? & 0x07) * 100 + u16::from(*v.get(3)?))
    }

    /// REALM, as text.
    pub fn realm(&self) -> Option<String> {
        self.text(attr::REALM)
    }

    /// NONCE, as text.
    pub fn nonce(&self) -> Option<String> {
        self.text(attr::NONCE)
    }

    /// LIFETIME in seconds.
    pub fn lifetime(&self) -> Option<u32> {
        Some(u32::from_be_bytes(
            self.get(attr::LIFETIME)?.try_into().ok()?,
        ))
    }

    /// XOR-MAPPED-ADDRESS.
    pub fn xor_mapped(&self) -> Option<SocketAddr> {
        xor_address(self.get(attr::XOR_MAPPED_ADDRESS)?, &self.tid)
    }

    /// Every XOR-RELAYED-ADDRESS (two with ADDITIONAL-ADDRESS-FAMILY), in order.
    pub fn xor_relayed(&self) -> Vec<SocketAddr> {
        self.attributes
            .iter()
            .filter(|(t, _)| *t == attr::XOR_RELAYED_ADDRESS)
            .filter_map(|(_, v)| xor_address(v, &self.tid))
            .collect()
    }

    fn text(&self, typ: u16) -> Option<String> {
        String::from_utf8(self.get(typ)?.to_vec()).ok()
    }
}

/// Decodes the value of an XOR-…-ADDRESS attribute of a message with `tid`.
pub fn xor_address(value: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    let mut mask = MAGIC_COOKIE.to_be_bytes().to_vec();
    mask.extend_from_slice(tid);
    let xored = |n: usize| -> Option<Vec<u8>> {
        let raw = value.get(4..4 + n)?;
        (value.len() == 4 + n).then(|| raw.iter().zip(&mask).map(|(a, m)| a ^ m).collect())
    };
    let ip = match value.get(1)? {
        1 => IpAddr::from(<[u8; 4]>::try_from(xored(4)?).ok()?),
        2 => IpAddr::from(<[u8; 16]>::try_from(xored(16)?).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn message_types_of_rfc_8489_and_8656() {
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(method::SEND, Class::Indication), 0x0016);
        assert_eq!(message_type(method::CHANNEL_BIND, Class::Request), 0x0009);
        for m in [0x001, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009, 0xABC] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(split_type(message_type(m, c)), (m, c));
            }
        }
    }

    #[test]
    fn long_term_keys() {
        // echo -n user:realm:pass | md5sum
        assert_eq!(
            long_term_key_md5("user", "realm", "pass"),
            [
                0x84, 0x93, 0xfb, 0xc5, 0x3b, 0xa5, 0x82, 0xfb, 0x4c, 0x04, 0x4c, 0x45, 0x6b, 0xdc,
                0x40, 0xeb
            ]
        );
        assert_eq!(
            long_term_key_sha256("user", "realm", "pass").to_vec(),
            sha2::Sha256::digest(b"user:realm:pass").to_vec()
        );
    }

    #[test]
    fn rest_credentials_as_coturn_mints_them() {
        let (username, password) = rest_credentials(b"secret", "alice", 1_700_000_000);
        assert_eq!(username, "1700000000:alice");
        // echo -n 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"secret").unwrap();
        mac.update(b"1700000000:alice");
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(password, expected);
        assert_eq!(password.len(), 28);
    }

    #[test]
    fn nonce_cookie_bits() {
        // "obMatJos2" + base64 of 0x80 0x00 0x00 = "gAAA"
        assert_eq!(
            nonce_security_features("obMatJos2gAAAxyz"),
            Some((true, false))
        );
        assert_eq!(
            nonce_security_features("obMatJos2AAAAxyz"),
            Some((false, false))
        );
        assert_eq!(nonce_security_features("plainnonce"), None);
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// RFC 5769 §2.1: the sample request, rebuilt and compared byte for byte.
    #[test]
    fn rfc5769_sample_request() {
        let tid = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let bytes = Message::request(method::BINDING, tid)
            .attr(attr::SOFTWARE, b"STUN test client")
            .attr(0x0024, &[0x6e, 0x00, 0x01, 0xff])
            .attr(0x8029, &[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36])
            .attr(attr::USERNAME, b"evtj:h6vY")
            .integrity(b"VOkJxbRl1RmTxUk/WvJxBt")
            .fingerprint()
            .finish();
        let expected: [u8; 108] = [
            0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34,
            0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e,
            0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24,
            0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1,
            0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68,
            0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c,
            0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5,
            0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
        ];
        // The RFC pads USERNAME with spaces, the kit with zeros (both allowed): compare
        // the rest, and the tag and fingerprint over the RFC's own padding.
        assert_eq!(bytes.len(), expected.len());
        assert_eq!(bytes[..72], expected[..72]);
        let mut rfc = expected[..76].to_vec();
        rfc[2..4].copy_from_slice(&[0, 0x38]);
        append_message_integrity(&mut rfc, b"VOkJxbRl1RmTxUk/WvJxBt");
        append_fingerprint(&mut rfc);
        assert_eq!(rfc, expected);
    }

    /// RFC 5769 §2.2 and §2.3: XOR-MAPPED-ADDRESS of the sample responses.
    #[test]
    fn rfc5769_xor_mapped_addresses() {
        let tid = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let v4 = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        assert_eq!(
            xor_address(&v4, &tid),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        let v6 = [
            0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
            0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        ];
        let addr: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        assert_eq!(xor_address(&v6, &tid), Some(addr));
        assert_eq!(xor_address_value(addr, &tid), v6);
    }

    #[test]
    fn requests_read_back() {
        let peer: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let key = long_term_key_md5("alice", "example.org", "pw");
        let bytes = channel_bind(TID, 0x4001, peer)
            .credentials("alice", "example.org", "n0nce")
            .integrity(&key)
            .fingerprint()
            .finish();
        let reply = Reply::parse(&bytes).expect("parses");
        assert_eq!(
            (reply.method, reply.class),
            (method::CHANNEL_BIND, Class::Request)
        );
        assert_eq!(reply.tid, TID);
        let types: Vec<u16> = reply.attributes.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            types,
            [
                attr::CHANNEL_NUMBER,
                attr::XOR_PEER_ADDRESS,
                attr::USERNAME,
                attr::REALM,
                attr::NONCE,
                attr::MESSAGE_INTEGRITY,
                attr::FINGERPRINT
            ]
        );
        assert_eq!(
            reply.get(attr::CHANNEL_NUMBER),
            Some(&[0x40, 0x01, 0, 0][..])
        );
        assert_eq!(
            xor_address(reply.get(attr::XOR_PEER_ADDRESS).unwrap(), &TID),
            Some(peer)
        );
        assert_eq!(reply.realm().as_deref(), Some("example.org"));
        assert_eq!(reply.nonce().as_deref(), Some("n0nce"));
        assert!(Reply::parse(&bytes[..bytes.len() - 1]).is_none());
        assert!(Reply::parse(&channel_data(0x4001, b"abcd")).is_none());

        let refresh = refresh(TID, 0).finish();
        assert_eq!(Reply::parse(&refresh).unwrap().lifetime(), Some(0));
        let perm = create_permission(TID, &[peer, "8.8.8.8:1".parse().unwrap()]).finish();
        assert_eq!(Reply::parse(&perm).unwrap().attributes.len(), 2);
        let send = send_indication(TID, peer, b"hello");
        let send = Reply::parse(&send).unwrap();
        assert_eq!((send.method, send.class), (method::SEND, Class::Indication));
        assert_eq!(send.get(attr::DATA), Some(&b"hello"[..]));
    }

    #[test]
    fn error_and_relayed_addresses_read() {
        let relayed: SocketAddr = "192.0.2.10:50000".parse().unwrap();
        let relayed6: SocketAddr = "[2001:db8::10]:50001".parse().unwrap();
        let ok = Message::new(method::ALLOCATE, Class::Success, TID)
            .xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
            .xor_address(attr::XOR_RELAYED_ADDRESS, relayed6)
            .xor_address(
                attr::XOR_MAPPED_ADDRESS,
                "198.51.100.1:40001".parse().unwrap(),
            )
            .lifetime(600)
            .finish();
        let ok = Reply::parse(&ok).unwrap();
        assert_eq!(ok.class, Class::Success);
        assert_eq!(ok.xor_relayed(), [relayed, relayed6]);
        assert_eq!(ok.xor_mapped(), Some("198.51.100.1:40001".parse().unwrap()));
        assert_eq!(ok.lifetime(), Some(600));
        assert_eq!(ok.error_code(), None);

        let err = Message::new(method::ALLOCATE, Class::Error, TID)
            .attr(attr::ERROR_CODE, b"\0\0\x04\x01Unauthorized")
            .attr(attr::REALM, b"example.org")
            .attr(attr::NONCE, b"abc")
            .finish();
        let err = Reply::parse(&err).unwrap();
        assert_eq!(err.class, Class::Error);
        assert_eq!(err.error_code(), Some(401));
        assert_eq!(err.realm().as_deref(), Some("example.org"));
    }

    #[test]
    fn sha256_integrity_is_32_bytes_and_counted() {
        let key = long_term_key_sha256("alice", "example.org", "pw");
        let bytes = allocate(TID).integrity_sha256(&key).finish();
        let tag = raw_attribute(&bytes, attr::MESSAGE_INTEGRITY_SHA256).unwrap();
        assert_eq!(tag.len(), 32);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(&bytes[..bytes.len() - 36]);
        assert_eq!(tag, &mac.finalize().into_bytes()[..]);
    }
}
