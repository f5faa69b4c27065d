//! A small STUN/TURN client over UDP built on the independent `stun-rs` codec, with the
//! hand-made pieces (raw attributes, MESSAGE-INTEGRITY appended by hand, nonce cookies)
//! from the shared test kit, `icegate-testkit`.

pub use icegate_testkit::{
    append_message_integrity, append_raw_attribute, nonce_security_features, raw_attribute,
    raw_attributes, NONCE_COOKIE,
};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
pub use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, PasswordAlgorithm,
    PasswordAlgorithms, Realm, Software, UnknownAttributes, UserName, XorMappedAddress,
};
pub use stun_rs::attributes::turn::{
    ChannelNumber, Data, LifeTime, RequestedAddressFamily, RequestedTrasport, XorPeerAddress,
    XorRelayedAddress,
};
pub use stun_rs::methods::{ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH, SEND};
pub use stun_rs::{
    AddressFamily, Algorithm, AlgorithmId, HMACKey, MessageClass, MessageMethod, StunAttribute,
    StunMessage, StunMessageBuilder,
};

/// Encodes a message with stun-rs.
pub fn encode(msg: &StunMessage) -> Vec<u8> {
    let encoder = stun_rs::MessageEncoderBuilder::default().build();
    let mut buf = vec![0u8; 4096];
    let n = encoder.encode(&mut buf, msg).expect("stun-rs encode");
    buf.truncate(n);
    buf
}

/// Decodes with stun-rs, validating FINGERPRINT and (if `key` is given) the message
/// integrity attributes. Without a key, a message carrying MESSAGE-INTEGRITY fails to
/// decode, which is what we want for responses that must not carry one.
pub fn decode(bytes: &[u8], key: Option<&HMACKey>) -> Result<StunMessage, String> {
    let mut ctx = stun_rs::DecoderContextBuilder::default().with_validation();
    if let Some(k) = key {
        ctx = ctx.with_key(k.clone());
    }
    let decoder = stun_rs::MessageDecoderBuilder::default()
        .with_context(ctx.build())
        .build();
    let (msg, size) = decoder
        .decode(bytes)
        .map_err(|e| format!("stun-rs decode failed: {e:?}"))?;
    if size != bytes.len() {
        return Err(format!("decoded {size} of {} bytes", bytes.len()));
    }
    Ok(msg)
}

/// A fresh request with the given attributes (no integrity, no fingerprint).
pub fn request(method: MessageMethod, attrs: &[StunAttribute]) -> StunMessage {
    let mut b = StunMessageBuilder::new(method, MessageClass::Request);
    for a in attrs {
        b = b.with_attribute(a.clone());
    }
    b.build()
}

/// The ERROR-CODE number of a message, if any.
pub fn error_code(msg: &StunMessage) -> Option<u16> {
    let a = msg.get::<ErrorCode>()?.as_error_code().ok()?;
    Some(a.error_code().error_code())
}

/// Short human description of a response for assertion messages.
pub fn describe(msg: &StunMessage) -> String {
    let mut s = format!("{:?} {:?}", msg.method(), msg.class());
    if let Some(a) = msg.get::<ErrorCode>().and_then(|a| a.as_error_code().ok()) {
        s += &format!(
            " ERROR-CODE {} {:?}",
            a.error_code().error_code(),
            a.error_code().reason()
        );
    }
    let names: Vec<String> = msg
        .attributes()
        .iter()
        .map(|a| format!("0x{:04x}", a.attribute_type().as_u16()))
        .collect();
    s += &format!(" attrs [{}]", names.join(", "));
    s
}

pub fn xor_mapped(msg: &StunMessage) -> Option<SocketAddr> {
    Some(
        *msg.get::<XorMappedAddress>()?
            .as_xor_mapped_address()
            .ok()?
            .socket_address(),
    )
}
pub fn xor_relayed(msg: &StunMessage) -> Option<SocketAddr> {
    Some(
        *msg.get::<XorRelayedAddress>()?
            .as_xor_relayed_address()
            .ok()?
            .socket_address(),
    )
}
pub fn lifetime(msg: &StunMessage) -> Option<u32> {
    Some(*msg.get::<LifeTime>()?.as_life_time().ok()?.as_ref())
}
pub fn nonce(msg: &StunMessage) -> Option<String> {
    Some(msg.get::<Nonce>()?.as_nonce().ok()?.as_str().to_string())
}
pub fn realm(msg: &StunMessage) -> Option<String> {
    Some(msg.get::<Realm>()?.as_realm().ok()?.as_str().to_string())
}
pub fn software(msg: &StunMessage) -> Option<String> {
    Some(
        msg.get::<Software>()?
            .as_software()
            .ok()?
            .as_str()
            .to_string(),
    )
}
pub fn has_attr<A: stun_rs::StunAttributeType>(msg: &StunMessage) -> bool {
    msg.get::<A>().is_some()
}

/// The attribute types listed in an UNKNOWN-ATTRIBUTES attribute, if present.
pub fn unknown_attributes(msg: &StunMessage) -> Option<Vec<u16>> {
    let a = msg
        .get::<UnknownAttributes>()?
        .as_unknown_attributes()
        .ok()?;
    Some(a.attributes().to_vec())
}

/// A UDP socket on 127.0.0.1 talking STUN to one server.
pub struct StunUdp {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl StunUdp {
    pub fn new(server: SocketAddr) -> StunUdp {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp");
        StunUdp { sock, server }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    pub fn send_raw(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.server).expect("send_to");
    }

    /// Next datagram from anyone within `timeout`.
    pub fn recv_raw(&self, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).ok()?;
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return None
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("recv_from: {e}"),
            }
        }
    }

    /// Sends `msg` and waits for the response with the same transaction id, retransmitting
    /// every 500 ms (4 tries). Returns the raw bytes of the response.
    pub fn transact_raw(&self, msg: &StunMessage) -> Result<Vec<u8>, String> {
        self.transact_bytes(&encode(msg))
            .map_err(|e| format!("{e} ({:?})", msg.method()))
    }

    /// [`Self::transact_raw`] for a request encoded by hand.
    pub fn transact_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let txid: [u8; 12] = bytes[8..20].try_into().expect("a STUN header");
        for _ in 0..4 {
            self.send_raw(bytes);
            let deadline = Instant::now() + Duration::from_millis(500);
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                let Some((resp, from)) = self.recv_raw(left) else {
                    break;
                };
                if from == self.server && resp.len() >= 20 && resp[8..20] == txid {
                    return Ok(resp);
                }
            }
        }
        Err(format!("no response from {}", self.server))
    }

    /// [`Self::transact_raw`] plus validated decoding.
    pub fn transact(&self, msg: &StunMessage, key: Option<&HMACKey>) -> StunMessage {
        let raw = self.transact_raw(msg).unwrap_or_else(|e| panic!("{e}"));
        decode(&raw, key).unwrap_or_else(|e| panic!("{e}; response bytes {raw:02x?}"))
    }
}

/// Which message integrity attribute a client puts in its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    Sha1,
    Sha256,
}

/// A long-term-credential TURN client over UDP (RFC 8489 section 9.2, RFC 8656).
pub struct TurnClient {
    pub udp: StunUdp,
    pub username: String,
    pub password: String,
    pub integrity: Integrity,
    /// Preferred password algorithm when the server offers PASSWORD-ALGORITHMS;
    /// `None` picks the first one the server lists.
    pub preferred_algorithm: Option<AlgorithmId>,
    pub realm: Option<String>,
    pub nonce: Option<String>,
    pub server_algorithms: Option<PasswordAlgorithms>,
}

impl TurnClient {
    pub fn new(server: SocketAddr, username: &str, password: &str) -> TurnClient {
        TurnClient {
            udp: StunUdp::new(server),
            username: username.into(),
            password: password.into(),
            integrity: Integrity::Sha1,
            preferred_algorithm: None,
            realm: None,
            nonce: None,
            server_algorithms: None,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.udp.local_addr()
    }

    /// The password algorithm in use: None when the server did not offer
    /// PASSWORD-ALGORITHMS (then the key is MD5, and no algorithm attributes are sent).
    pub fn chosen_algorithm(&self) -> Option<PasswordAlgorithm> {
        let algs = self.server_algorithms.as_ref()?;
        if let Some(pref) = self.preferred_algorithm {
            if let Some(a) = algs.iter().find(|a| a.algorithm() == pref) {
                return Some(a.clone());
            }
        }
        algs.iter()
            .find(|a| matches!(a.algorithm(), AlgorithmId::MD5 | AlgorithmId::SHA256))
            .cloned()
    }

    /// The long-term key for the current realm and algorithm.
    pub fn key(&self) -> Option<HMACKey> {
        let realm = self.realm.as_ref()?;
        let alg = self
            .chosen_algorithm()
            .map(|a| Algorithm::new(a.algorithm(), a.parameters()))
            .unwrap_or_else(|| Algorithm::from(AlgorithmId::MD5));
        Some(
            HMACKey::new_long_term(&self.username, realm, &self.password, alg)
                .expect("long-term key"),
        )
    }

    /// Learns REALM, NONCE and PASSWORD-ALGORITHMS from a 401/438 error response.
    pub fn learn(&mut self, resp: &StunMessage) {
        if let Some(r) = realm(resp) {
            self.realm = Some(r);
        }
        if let Some(n) = nonce(resp) {
            self.nonce = Some(n);
        }
        if let Some(a) = resp
            .get::<PasswordAlgorithms>()
            .and_then(|a| a.as_password_algorithms().ok())
        {
            self.server_algorithms = Some(a.clone());
        }
    }

    /// Builds an authenticated request: ATTRS, USERNAME, REALM, NONCE,
    /// [PASSWORD-ALGORITHMS, PASSWORD-ALGORITHM], MESSAGE-INTEGRITY(-SHA256), FINGERPRINT.
    pub fn build_authed(&self, method: MessageMethod, attrs: &[StunAttribute]) -> StunMessage {
        let key = self.key().expect("key");
        let b = self.authed_builder(method, attrs);
        let b = match self.integrity {
            Integrity::Sha1 => b.with_attribute(MessageIntegrity::new(key)),
            Integrity::Sha256 => b.with_attribute(MessageIntegritySha256::new(key)),
        };
        b.with_attribute(Fingerprint::default()).build()
    }

    /// Like [`Self::build_authed`], encoded, with `raw` attributes (which stun-rs cannot
    /// encode) before a hand-computed MESSAGE-INTEGRITY, and no FINGERPRINT.
    pub fn build_authed_with_raw(
        &self,
        method: MessageMethod,
        attrs: &[StunAttribute],
        raw: &[(u16, &[u8])],
    ) -> Vec<u8> {
        assert_eq!(
            self.integrity,
            Integrity::Sha1,
            "only MESSAGE-INTEGRITY is hand-made"
        );
        let key = self.key().expect("key");
        let mut bytes = encode(&self.authed_builder(method, attrs).build());
        for (typ, value) in raw {
            append_raw_attribute(&mut bytes, *typ, value);
        }
        append_message_integrity(&mut bytes, key.as_bytes());
        bytes
    }

    /// A request with ATTRS, USERNAME, REALM, NONCE and the password algorithm attributes.
    fn authed_builder(&self, method: MessageMethod, attrs: &[StunAttribute]) -> StunMessageBuilder {
        let realm = self.realm.clone().expect("realm learned");
        let nonce = self.nonce.clone().expect("nonce learned");
        let mut b = StunMessageBuilder::new(method, MessageClass::Request);
        for a in attrs {
            b = b.with_attribute(a.clone());
        }
        b = b
            .with_attribute(UserName::new(&self.username).expect("username"))
            .with_attribute(Realm::new(realm).expect("realm"))
            .with_attribute(Nonce::new(nonce).expect("nonce"));
        if let (Some(algs), Some(chosen)) =
            (self.server_algorithms.clone(), self.chosen_algorithm())
        {
            b = b.with_attribute(algs).with_attribute(chosen);
        }
        b
    }

    /// Sends an unauthenticated request (with FINGERPRINT) and learns the challenge.
    pub fn challenge(&mut self, method: MessageMethod, attrs: &[StunAttribute]) -> StunMessage {
        let mut all = attrs.to_vec();
        all.push(Fingerprint::default().into());
        let resp = self.udp.transact(&request(method, &all), None);
        self.learn(&resp);
        resp
    }

    /// One authenticated request with the current nonce (no retry). The response is
    /// decoded with integrity validation; 401/438 responses update realm/nonce.
    pub fn request_once(&mut self, method: MessageMethod, attrs: &[StunAttribute]) -> StunMessage {
        let msg = self.build_authed(method, attrs);
        self.exchange(&encode(&msg))
    }

    /// Sends an authenticated request encoded by the caller and decodes the response as
    /// [`Self::request_once`] does.
    pub fn exchange(&mut self, request: &[u8]) -> StunMessage {
        let raw = self
            .udp
            .transact_bytes(request)
            .unwrap_or_else(|e| panic!("{e}"));
        // 401 and 438 responses carry no valid MESSAGE-INTEGRITY for our key (RFC 8489
        // 9.2.4); decode those without a key.
        let resp = match decode(&raw, None) {
            Ok(m) if matches!(error_code(&m), Some(401) | Some(438)) => m,
            _ => decode(&raw, self.key().as_ref())
                .unwrap_or_else(|e| panic!("{e}; response {raw:02x?}")),
        };
        if matches!(error_code(&resp), Some(401) | Some(438)) {
            self.learn(&resp);
        }
        resp
    }

    /// An authenticated request, doing the 401 challenge first if no nonce is known and
    /// retrying once on 438 (stale nonce).
    pub fn request(&mut self, method: MessageMethod, attrs: &[StunAttribute]) -> StunMessage {
        if self.nonce.is_none() {
            let resp = self.challenge(method, attrs);
            assert_eq!(
                error_code(&resp),
                Some(401),
                "unauthenticated request must be challenged: {}",
                describe(&resp)
            );
        }
        let resp = self.request_once(method, attrs);
        if error_code(&resp) == Some(438) {
            return self.request_once(method, attrs);
        }
        resp
    }

    pub fn allocate(&mut self) -> StunMessage {
        self.request(ALLOCATE, &[requested_transport_udp()])
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> StunMessage {
        self.request(CREATE_PERMMISSION, &[XorPeerAddress::from(peer).into()])
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> StunMessage {
        self.request(
            CHANNEL_BIND,
            &[
                ChannelNumber::new(channel).into(),
                XorPeerAddress::from(peer).into(),
            ],
        )
    }

    /// Refresh with LIFETIME 0: deletes the allocation.
    pub fn deallocate(&mut self) -> StunMessage {
        self.request(REFRESH, &[LifeTime::from(0).into()])
    }
}

pub fn requested_transport_udp() -> StunAttribute {
    RequestedTrasport::new(stun_rs::protocols::UDP).into()
}

/// Asserts `resp` is a success response, with a useful message otherwise.
pub fn assert_success(resp: &StunMessage, what: &str) {
    assert_eq!(
        resp.class(),
        MessageClass::SuccessResponse,
        "{what}: expected success, got {}",
        describe(resp)
    );
}

/// Asserts `resp` is an error response with `code`.
pub fn assert_error(resp: &StunMessage, code: u16, what: &str) {
    assert_eq!(
        (resp.class(), error_code(resp)),
        (MessageClass::ErrorResponse, Some(code)),
        "{what}: expected error {code}, got {}",
        describe(resp)
    );
}

/// One STUN request and its response over a stream (TCP or TLS), framed by the STUN length
/// (RFC 8489 §6.2.2: no other framing on a stream).
pub fn stream_transact<S: std::io::Read + std::io::Write>(
    stream: &mut S,
    request: &[u8],
) -> Vec<u8> {
    stream.write_all(request).unwrap();
    let mut header = [0u8; 20];
    stream.read_exact(&mut header).unwrap();
    let len = u16::from_be_bytes([header[2], header[3]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    [header.to_vec(), body].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signed Allocate built by the kit (MD5 and SHA-256 keys, MESSAGE-INTEGRITY and
    /// MESSAGE-INTEGRITY-SHA256, FINGERPRINT) verifies with stun-rs, and the kit's keys
    /// are stun-rs's.
    #[test]
    fn kit_signed_requests_verify_with_stun_rs() {
        use icegate_testkit as kit;
        let tid = [7; 12];
        let md5 = kit::long_term_key_md5("alice", "example.org", "alice-pw");
        let sha256 = kit::long_term_key_sha256("alice", "example.org", "alice-pw");
        let rs_md5 = HMACKey::new_long_term(
            "alice",
            "example.org",
            "alice-pw",
            Algorithm::from(AlgorithmId::MD5),
        )
        .unwrap();
        let rs_sha256 = HMACKey::new_long_term(
            "alice",
            "example.org",
            "alice-pw",
            Algorithm::from(AlgorithmId::SHA256),
        )
        .unwrap();
        assert_eq!(rs_md5.as_bytes(), md5);
        assert_eq!(rs_sha256.as_bytes(), sha256);

        let peer: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let signed = |msg: kit::Message, sha: bool| {
            let msg = msg.credentials("alice", "example.org", "n0nce");
            let msg = if sha {
                msg.integrity_sha256(&sha256)
            } else {
                msg.integrity(&md5)
            };
            msg.fingerprint().finish()
        };
        for sha in [false, true] {
            let key = if sha { &rs_sha256 } else { &rs_md5 };
            let msg = decode(&signed(kit::allocate(tid), sha), Some(key)).unwrap();
            assert_eq!(
                (msg.method(), msg.class()),
                (ALLOCATE, MessageClass::Request)
            );
            assert_eq!(msg.transaction_id().as_bytes(), &tid);
            assert!(has_attr::<RequestedTrasport>(&msg));
            assert_eq!(nonce(&msg).as_deref(), Some("n0nce"));
            assert_eq!(realm(&msg).as_deref(), Some("example.org"));
            let bind = decode(
                &signed(kit::channel_bind(tid, 0x4001, peer), sha),
                Some(key),
            );
            let bind = bind.unwrap();
            let number = bind
                .get::<ChannelNumber>()
                .unwrap()
                .as_channel_number()
                .unwrap();
            assert_eq!(number.number(), 0x4001);
            let xor = bind
                .get::<XorPeerAddress>()
                .unwrap()
                .as_xor_peer_address()
                .unwrap();
            assert_eq!(*xor.socket_address(), peer);
            let refresh = decode(&signed(kit::refresh(tid, 0), sha), Some(key)).unwrap();
            assert_eq!(lifetime(&refresh), Some(0));
            let perm = signed(kit::create_permission(tid, &[peer]), sha);
            assert!(decode(&perm, Some(key)).is_ok());
        }
        let send = decode(&kit::send_indication(tid, peer, b"hi"), None).unwrap();
        assert_eq!(
            (send.method(), send.class()),
            (SEND, MessageClass::Indication)
        );
        let data = send.get::<Data>().unwrap().as_data().unwrap();
        assert_eq!(data.as_ref(), b"hi");
    }

    #[test]
    fn hand_made_integrity_verifies_with_stun_rs() {
        let key = HMACKey::new_long_term(
            "alice",
            "realm",
            "secret",
            Algorithm::from(AlgorithmId::MD5),
        )
        .unwrap();
        let mut bytes = encode(&request(BINDING, &[UserName::new("alice").unwrap().into()]));
        append_raw_attribute(&mut bytes, 0xfffe, b"abc");
        append_message_integrity(&mut bytes, key.as_bytes());
        assert!(decode(&bytes, Some(&key)).is_ok());
        let attrs = raw_attributes(&bytes).unwrap();
        let types: Vec<u16> = attrs.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, vec![0x0006, 0xfffe, 0x0008]);
        assert_eq!(raw_attribute(&bytes, 0xfffe), Some(&b"abc"[..]));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(
            decode(&bytes, Some(&key)).is_err(),
            "a corrupted tag must not verify"
        );
    }

    #[test]
    fn encode_decode_roundtrip() {
        let msg = request(BINDING, &[Fingerprint::default().into()]);
        let bytes = encode(&msg);
        let back = decode(&bytes, None).unwrap();
        assert_eq!(back.method(), BINDING);
        assert!(has_attr::<Fingerprint>(&back));
    }
}
