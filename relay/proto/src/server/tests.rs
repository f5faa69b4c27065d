//! The server core driven without sockets, on a clock the tests advance themselves.
//!
//! Requests are built and responses decoded with `stun-rs`, a codec written independently of
//! the `stun-types` codec the core uses, so the wire format is checked from the outside rather
//! than against itself. `stun-types` only builds what `stun-rs` refuses to encode (unknown
//! attributes and methods).
//!
//! Every [`Harness`] checks on drop that the core queued nothing the test did not look at.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use icegate_common::credentials::{self as rest, Secret};
use stun_rs::attributes::stun::nonce_cookie::StunSecurityFeatures;
use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, PasswordAlgorithm,
    PasswordAlgorithms, Realm, Software, UnknownAttributes, UserName, XorMappedAddress,
};
use stun_rs::attributes::turn::{
    AdditionalAddressFamily, AddressErrorCode, ChannelNumber, Data, EvenPort, LifeTime,
    RequestedAddressFamily, RequestedTrasport, ReservationToken, XorPeerAddress,
};
use stun_rs::methods::{ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH, SEND};
use stun_rs::{
    AddressFamily, Algorithm, AlgorithmId, DecoderContextBuilder, HMACKey, MessageClass,
    MessageDecoderBuilder, MessageEncoderBuilder, MessageMethod, StunAttribute, StunAttributeType,
    StunMessage, StunMessageBuilder, TransactionId,
};

use super::{ClientOutcome, Command, PeerRoute, RelayId, Server};
use crate::auth::Credentials;
use crate::channels::{MAX_CHANNEL, MIN_CHANNEL};
use crate::config::{RelayAddress, ServerConfig};
use crate::ledger::Ledger;
use crate::metrics::{AuthFailure, Counters, Direction, DropReason, PeerDenials, QuotaKind};
use crate::nonce::NonceKey;
use crate::peer_filter::{self, PeerFilter};
use crate::rate_limit::{RateLimitConfig, RateTable};
use crate::transport::{Family, FiveTuple, Transport};

const REALM: &str = "example.org";
const SOFTWARE: &str = "icegate-test/1";
const EPOCH_UNIX: u64 = 1_700_000_000;
const PORT_MIN: u16 = 50_000;
const PORT_MAX: u16 = 50_019;
const REST_SECRET: &str = "rest-secret";

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn relay_v4() -> IpAddr {
    ip("192.0.2.10")
}

fn relay_v6() -> IpAddr {
    ip("2001:db8::10")
}

/// Public addresses the default peer filter lets through.
fn peer() -> SocketAddr {
    sa("8.8.8.8:4000")
}

fn peer2() -> SocketAddr {
    sa("1.1.1.1:5000")
}

fn peer_v6() -> SocketAddr {
    sa("[2606:4700::1111]:6000")
}

fn udp_client(n: u8) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::new(IpAddr::from([198, 51, 100, n]), 40_000 + u16::from(n)),
        server: sa("192.0.2.1:3478"),
    }
}

fn base_config() -> ServerConfig {
    let mut credentials = Credentials::new();
    credentials.add_user("alice", "alice-pw");
    credentials.add_user("bob", "bob-pw");
    credentials.add_rest_secret(Secret::new(REST_SECRET));
    let mut config = ServerConfig::new(REALM, credentials, &[relay_v4(), relay_v6()]);
    config.software = Some(SOFTWARE.to_owned());
    config
}

/// A client's credentials and the nonce it last learnt.
#[derive(Clone)]
struct Client {
    from: FiveTuple,
    username: String,
    password: String,
    /// The key derivation (PASSWORD-ALGORITHM); MD5 sends no PASSWORD-ALGORITHM at all.
    algorithm: AlgorithmId,
    /// Sign with MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY.
    sha256_integrity: bool,
    nonce: Option<String>,
}

impl Client {
    fn new(from: FiveTuple, username: &str, password: &str) -> Self {
        Self {
            from,
            username: username.to_owned(),
            password: password.to_owned(),
            algorithm: AlgorithmId::MD5,
            sha256_integrity: false,
            nonce: None,
        }
    }

    fn alice(n: u8) -> Self {
        Self::new(udp_client(n), "alice", "alice-pw")
    }

    fn bob(n: u8) -> Self {
        Self::new(udp_client(n), "bob", "bob-pw")
    }

    fn key(&self) -> HMACKey {
        HMACKey::new_long_term(
            &self.username,
            REALM,
            &self.password,
            Algorithm::new(self.algorithm, None::<&[u8]>),
        )
        .expect("valid long-term key")
    }

    /// The credential attributes and integrity of an authenticated request, after `attrs`.
    fn sign(&self, mut attrs: Vec<StunAttribute>) -> Vec<StunAttribute> {
        let nonce = self.nonce.as_deref().expect("challenge first");
        attrs.push(UserName::new(&self.username).expect("username").into());
        attrs.push(Realm::new(REALM).expect("realm").into());
        attrs.push(Nonce::new(nonce).expect("nonce").into());
        if self.algorithm != AlgorithmId::MD5 {
            attrs.push(offered_algorithms().into());
            attrs
                .push(PasswordAlgorithm::new(Algorithm::new(self.algorithm, None::<&[u8]>)).into());
        }
        if self.sha256_integrity {
            attrs.push(MessageIntegritySha256::new(self.key()).into());
        } else {
            attrs.push(MessageIntegrity::new(self.key()).into());
        }
        attrs.push(Fingerprint::default().into());
        attrs
    }
}

fn offered_algorithms() -> PasswordAlgorithms {
    PasswordAlgorithms::from(vec![
        PasswordAlgorithm::new(Algorithm::new(AlgorithmId::MD5, None::<&[u8]>)),
        PasswordAlgorithm::new(Algorithm::new(AlgorithmId::SHA256, None::<&[u8]>)),
    ])
}

fn encode(
    method: MessageMethod,
    class: MessageClass,
    tid: TransactionId,
    attrs: Vec<StunAttribute>,
) -> Vec<u8> {
    let mut builder = StunMessageBuilder::new(method, class).with_transaction_id(tid);
    for attr in attrs {
        builder = builder.with_attribute(attr);
    }
    let msg = builder.build();
    let mut buf = vec![0u8; 2048];
    let len = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &msg)
        .expect("stun-rs encodes the request");
    buf.truncate(len);
    buf
}

/// An attribute value stun-rs can parse but has no constructor for (e.g. REQUESTED-TRANSPORT
/// TCP), obtained by decoding a crafted message.
fn parsed_attr(kind: u16, value: &[u8]) -> StunAttribute {
    let mut raw = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    raw.extend_from_slice(&[0x55; 12]);
    raw.extend_from_slice(&kind.to_be_bytes());
    raw.extend_from_slice(&(value.len() as u16).to_be_bytes());
    raw.extend_from_slice(value);
    raw.resize(raw.len().div_ceil(4) * 4, 0);
    let body = (raw.len() - 20) as u16;
    raw[2..4].copy_from_slice(&body.to_be_bytes());
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(&raw)
        .expect("crafted attribute decodes");
    msg.attributes()[0].clone()
}

fn udp_transport() -> StunAttribute {
    RequestedTrasport::new(stun_rs::protocols::UDP).into()
}

fn has<A: StunAttributeType>(msg: &StunMessage) -> bool {
    msg.get::<A>().is_some()
}

fn error_code(msg: &StunMessage) -> Option<u16> {
    msg.get::<ErrorCode>()
        .map(|a| a.expect_error_code().error_code().error_code())
}

fn nonce_of(msg: &StunMessage) -> String {
    msg.get::<Nonce>()
        .expect("NONCE")
        .expect_nonce()
        .as_str()
        .to_owned()
}

fn relayed_addresses(msg: &StunMessage) -> Vec<SocketAddr> {
    msg.attributes()
        .iter()
        .filter_map(|a| a.as_xor_relayed_address().ok())
        .map(|a| *a.socket_address())
        .collect()
}

fn lifetime_of(msg: &StunMessage) -> u32 {
    msg.get::<LifeTime>()
        .expect("LIFETIME")
        .expect_life_time()
        .as_u32()
}

/// A decoded response and whether it carried (and passed) an integrity check.
struct Response {
    msg: StunMessage,
    signed: bool,
}

/// Decodes with stun-rs, validating FINGERPRINT always and the integrity with `key` if the
/// message carries one.
fn decode(bytes: &[u8], key: Option<&HMACKey>) -> Response {
    let (peek, len) = MessageDecoderBuilder::default()
        .build()
        .decode(bytes)
        .expect("stun-rs decodes the response");
    assert_eq!(len, bytes.len(), "trailing bytes after the response");
    assert!(
        has::<Fingerprint>(&peek),
        "every response carries FINGERPRINT"
    );
    let signed = has::<MessageIntegrity>(&peek) || has::<MessageIntegritySha256>(&peek);
    let mut ctx = DecoderContextBuilder::default().with_validation();
    if signed {
        ctx = ctx.with_key(key.expect("signed response but no key to check it").clone());
    }
    let (msg, _) = MessageDecoderBuilder::default()
        .with_context(ctx.build())
        .build()
        .decode(bytes)
        .expect("integrity and FINGERPRINT validate");
    Response { msg, signed }
}

/// What an allocation is called from the outside.
struct Allocated {
    relays: Vec<RelayId>,
    response: StunMessage,
}

/// One server, its shared state and a fake clock.
struct Harness {
    server: Server,
    ledger: Arc<Ledger>,
    counters: Arc<Counters>,
    denials: Arc<PeerDenials>,
    config: ServerConfig,
    t0: Instant,
    now: Instant,
    next_tid: u32,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let leftover: Vec<_> = std::iter::from_fn(|| self.server.poll_command()).collect();
        assert!(
            leftover.is_empty(),
            "unexpected leftover commands: {leftover:?}"
        );
    }
}

impl Harness {
    fn new() -> Self {
        Self::with(base_config())
    }

    fn with(config: ServerConfig) -> Self {
        Self::with_ports(config, PORT_MIN, PORT_MAX)
    }

    fn with_ports(config: ServerConfig, min: u16, max: u16) -> Self {
        let t0 = Instant::now();
        let relay_ips: Vec<IpAddr> = config.relay_addresses.iter().map(|r| r.local).collect();
        let ledger = Arc::new(Ledger::new(
            &relay_ips,
            min,
            max,
            NonceKey::new([7; 32]),
            t0,
            EPOCH_UNIX,
        ));
        let counters = Arc::new(Counters::default());
        let denials = Arc::new(PeerDenials::default());
        let server = Server::new(
            Arc::new(config.clone()),
            Arc::clone(&ledger),
            Arc::clone(&counters),
            Arc::clone(&denials),
            42,
            t0,
        );
        Self {
            server,
            ledger,
            counters,
            denials,
            config,
            t0,
            now: t0,
            next_tid: 0,
        }
    }

    fn reconfigure(&mut self, change: impl FnOnce(&mut ServerConfig)) {
        change(&mut self.config);
        self.server
            .set_config(Arc::new(self.config.clone()), self.now);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Advances to `secs` after the start and runs the timers.
    fn at(&mut self, secs: u64) {
        self.now = self.t0 + Duration::from_secs(secs);
        self.server.handle_timeout(self.now);
    }

    fn unix_now(&self) -> u64 {
        EPOCH_UNIX + (self.now - self.t0).as_secs()
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut bytes = [0xA5; 12];
        bytes[8..].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId::from(bytes)
    }

    fn packet(&mut self, from: FiveTuple, bytes: &[u8]) -> ClientOutcome {
        self.server.handle_client_packet(from, bytes, self.now)
    }

    fn commands(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.server.poll_command()).collect()
    }

    fn assert_no_commands(&mut self) {
        let commands = self.commands();
        assert!(commands.is_empty(), "unexpected commands: {commands:?}");
    }

    /// Exactly one answer to `to`, nothing else queued.
    fn expect_send(&mut self, to: FiveTuple) -> Vec<u8> {
        match self.commands().as_slice() {
            [Command::SendToClient { to: t, data }] if *t == to => data.clone(),
            other => panic!("expected exactly one answer to {to:?}, got {other:?}"),
        }
    }

    /// Only BindRelay commands, at least one.
    fn expect_binds(&mut self) -> Vec<(RelayId, SocketAddr)> {
        let commands = self.commands();
        let binds: Vec<_> = commands
            .iter()
            .filter_map(|c| match c {
                Command::BindRelay { relay, addr, .. } => Some((*relay, *addr)),
                _ => None,
            })
            .collect();
        assert!(
            !binds.is_empty() && binds.len() == commands.len(),
            "expected only BindRelay, got {commands:?}"
        );
        binds
    }

    /// Exactly these CloseRelay commands, in any order, and nothing else.
    fn expect_closes(&mut self, relays: &[RelayId]) {
        let commands = self.commands();
        check_closes(commands, relays);
    }

    /// Sends an unauthenticated request and decodes its single answer.
    fn unsigned(
        &mut self,
        from: FiveTuple,
        method: MessageMethod,
        mut attrs: Vec<StunAttribute>,
    ) -> StunMessage {
        let tid = self.tid();
        attrs.push(Fingerprint::default().into());
        let bytes = encode(method, MessageClass::Request, tid, attrs);
        assert_eq!(self.packet(from, &bytes), ClientOutcome::Handled);
        let response = decode(&self.expect_send(from), None);
        assert!(
            !response.signed,
            "an unauthenticated request got a signed answer"
        );
        assert_eq!(*response.msg.transaction_id(), tid);
        assert_eq!(response.msg.method(), method);
        response.msg
    }

    /// The 401 an unauthenticated Allocate gets; remembers its nonce.
    fn challenge(&mut self, client: &mut Client) -> StunMessage {
        let msg = self.unsigned(client.from, ALLOCATE, vec![udp_transport()]);
        assert_eq!(msg.class(), MessageClass::ErrorResponse);
        assert_eq!(error_code(&msg), Some(401));
        client.nonce = Some(nonce_of(&msg));
        msg
    }

    fn signed_bytes(
        &mut self,
        client: &Client,
        method: MessageMethod,
        attrs: Vec<StunAttribute>,
    ) -> (TransactionId, Vec<u8>) {
        let tid = self.tid();
        (
            tid,
            encode(method, MessageClass::Request, tid, client.sign(attrs)),
        )
    }

    /// Sends an authenticated request and decodes its single answer. Answers to requests
    /// that passed authentication must be signed with the client's key; 401/438 must not.
    fn signed(
        &mut self,
        client: &Client,
        method: MessageMethod,
        attrs: Vec<StunAttribute>,
    ) -> StunMessage {
        let (tid, bytes) = self.signed_bytes(client, method, attrs);
        assert_eq!(self.packet(client.from, &bytes), ClientOutcome::Handled);
        self.answer(client, tid, method)
    }

    fn answer(
        &mut self,
        client: &Client,
        tid: TransactionId,
        method: MessageMethod,
    ) -> StunMessage {
        let response = decode(&self.expect_send(client.from), Some(&client.key()));
        let code = error_code(&response.msg);
        let auth_error = matches!(code, Some(401 | 438));
        assert_eq!(
            response.signed, !auth_error,
            "signature on a {code:?} answer"
        );
        if response.signed {
            if client.sha256_integrity {
                assert!(has::<MessageIntegritySha256>(&response.msg));
            } else {
                assert!(has::<MessageIntegrity>(&response.msg));
                assert!(!has::<MessageIntegritySha256>(&response.msg));
            }
        }
        assert_eq!(*response.msg.transaction_id(), tid);
        assert_eq!(response.msg.method(), method);
        response.msg
    }

    /// The error code of an authenticated request (fails on success).
    fn signed_error(
        &mut self,
        client: &Client,
        method: MessageMethod,
        attrs: Vec<StunAttribute>,
    ) -> u16 {
        let msg = self.signed(client, method, attrs);
        assert_eq!(msg.class(), MessageClass::ErrorResponse, "{msg:?}");
        error_code(&msg).expect("ERROR-CODE")
    }

    fn signed_ok(
        &mut self,
        client: &Client,
        method: MessageMethod,
        attrs: Vec<StunAttribute>,
    ) -> StunMessage {
        let msg = self.signed(client, method, attrs);
        assert_eq!(msg.class(), MessageClass::SuccessResponse, "{msg:?}");
        msg
    }

    /// The Allocate error code, checking that a refused Allocate leaves nothing behind.
    fn allocate_error(&mut self, client: &mut Client, extra: Vec<StunAttribute>) -> u16 {
        if client.nonce.is_none() {
            self.challenge(client);
        }
        let before = (
            self.ledger.port_usage(),
            self.ledger.total_allocations(),
            self.server.allocation_count(),
        );
        let code = self.signed_error(client, ALLOCATE, extra);
        let after = (
            self.ledger.port_usage(),
            self.ledger.total_allocations(),
            self.server.allocation_count(),
        );
        assert_eq!(
            before, after,
            "a refused Allocate ({code}) changed the books"
        );
        code
    }

    /// Challenge (if needed), authenticated Allocate, socket binds, success response.
    fn allocate(&mut self, client: &mut Client, extra: Vec<StunAttribute>) -> Allocated {
        if client.nonce.is_none() {
            self.challenge(client);
        }
        let mut attrs = vec![];
        if !extra.iter().any(|a| a.is_requested_trasport()) {
            attrs.push(udp_transport());
        }
        attrs.extend(extra);
        let (tid, bytes) = self.signed_bytes(client, ALLOCATE, attrs);
        assert_eq!(self.packet(client.from, &bytes), ClientOutcome::Handled);
        let binds = self.expect_binds();
        for &(relay, _) in &binds {
            self.server.relay_bound(relay, true, self.now);
        }
        let response = self.answer(client, tid, ALLOCATE);
        assert_eq!(
            response.class(),
            MessageClass::SuccessResponse,
            "{response:?}"
        );
        let advertised = relayed_addresses(&response);
        let bound: Vec<_> = binds.iter().map(|&(_, addr)| addr).collect();
        assert_eq!(
            advertised, bound,
            "XOR-RELAYED-ADDRESS names the bound sockets"
        );
        Allocated {
            relays: binds.into_iter().map(|(r, _)| r).collect(),
            response,
        }
    }

    /// Refresh with LIFETIME 0: the answer and exactly the CloseRelay of `relays`.
    fn delete(&mut self, client: &Client, relays: &[RelayId]) {
        let (tid, bytes) = self.signed_bytes(client, REFRESH, vec![LifeTime::new(0).into()]);
        assert_eq!(self.packet(client.from, &bytes), ClientOutcome::Handled);
        let (answers, closes): (Vec<_>, Vec<_>) = self
            .commands()
            .into_iter()
            .partition(|c| matches!(c, Command::SendToClient { .. }));
        let [Command::SendToClient { to, data }] = &answers[..] else {
            panic!("expected one answer, got {answers:?}");
        };
        assert_eq!(*to, client.from);
        let msg = decode(data, Some(&client.key())).msg;
        assert_eq!(msg.transaction_id(), &tid);
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        assert_eq!(lifetime_of(&msg), 0);
        check_closes(closes, relays);
    }

    fn create_permission(&mut self, client: &Client, peers: &[SocketAddr]) -> StunMessage {
        let attrs = peers
            .iter()
            .map(|&p| XorPeerAddress::from(p).into())
            .collect();
        self.signed(client, CREATE_PERMMISSION, attrs)
    }

    fn channel_bind(&mut self, client: &Client, number: u16, peer: SocketAddr) -> StunMessage {
        self.signed(
            client,
            CHANNEL_BIND,
            vec![
                ChannelNumber::new(number).into(),
                XorPeerAddress::from(peer).into(),
            ],
        )
    }

    fn send_indication(
        &mut self,
        client: &Client,
        peer: SocketAddr,
        payload: &[u8],
    ) -> (Vec<u8>, ClientOutcome) {
        let tid = self.tid();
        let bytes = encode(
            SEND,
            MessageClass::Indication,
            tid,
            vec![XorPeerAddress::from(peer).into(), Data::new(payload).into()],
        );
        let outcome = self.packet(client.from, &bytes);
        self.assert_no_commands();
        (bytes, outcome)
    }

    fn channel_data(
        &mut self,
        client: &Client,
        number: u16,
        payload: &[u8],
    ) -> (Vec<u8>, ClientOutcome) {
        let mut bytes = number.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        bytes.extend_from_slice(payload);
        let outcome = self.packet(client.from, &bytes);
        self.assert_no_commands();
        (bytes, outcome)
    }

    fn peer_packet(&mut self, relay: RelayId, from: SocketAddr, len: usize) -> Option<PeerRoute> {
        self.server.handle_peer_packet(relay, from, len, self.now)
    }

    fn malformed(&self) -> u64 {
        Counters::get(&self.counters.malformed)
    }

    fn dropped(&self, reason: DropReason) -> u64 {
        Counters::get(&self.counters.dropped[reason as usize])
    }

    fn auth_failures(&self, reason: AuthFailure) -> u64 {
        Counters::get(&self.counters.auth_failures[reason as usize])
    }

    fn quota_rejections(&self, kind: QuotaKind) -> u64 {
        Counters::get(&self.counters.quota_rejections[kind as usize])
    }
}

fn check_closes(commands: Vec<Command>, relays: &[RelayId]) {
    let mut closed: Vec<RelayId> = commands
        .into_iter()
        .map(|c| match c {
            Command::CloseRelay { relay } => relay,
            other => panic!("expected only CloseRelay, got {other:?}"),
        })
        .collect();
    let mut expected = relays.to_vec();
    let key = |r: &RelayId| (r.slot, r.generation, r.family.index());
    closed.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(closed, expected);
}

/// Asserts that a relayed packet goes from `relay` to `peer` carrying exactly `payload`.
fn assert_relayed(
    outcome: &ClientOutcome,
    packet: &[u8],
    relay: RelayId,
    peer: SocketAddr,
    payload: &[u8],
) {
    match outcome {
        ClientOutcome::Relay {
            relay: r,
            peer: p,
            payload: range,
        } => {
            assert_eq!(*r, relay);
            assert_eq!(*p, peer);
            assert_eq!(&packet[range.clone()], payload);
        }
        other => panic!("expected a relay to {peer}, got {other:?}"),
    }
}

// ----- Binding -----

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

// ----- Authentication -----

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
    let secret = Secret::new(REST_SECRET);
    let now = h.unix_now();
    let cred = rest::issue(&secret, Some("carol"), now, 60);
    assert_eq!(cred.username, format!("{}:carol", now + 60));
    let mut carol = Client::new(udp_client(1), &cred.username, &cred.password);
    h.allocate(&mut carol, vec![]);

    // The same username with a password of another secret does not verify.
    let forged = rest::issue(&Secret::new("guess"), Some("carol"), now, 60);
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
    let old = Secret::new(REST_SECRET);
    let new = Secret::new("next-secret");
    h.reconfigure(|c| c.credentials.add_rest_secret(new.clone()));
    let now = h.unix_now();
    let by_old = rest::issue(&old, Some("u1"), now, 3600);
    let by_new = rest::issue(&new, Some("u2"), now, 3600);
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

#[test]
fn unauthenticated_requests_are_rate_limited_per_source() {
    let mut config = base_config();
    config.rate_limit = RateLimitConfig {
        per_second: 1,
        burst: 3,
    };
    let mut h = Harness::with(config);
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    h.unsigned(alice.from, BINDING, vec![]);
    h.unsigned(alice.from, BINDING, vec![]);
    let tid = h.tid();
    let binding = encode(
        BINDING,
        MessageClass::Request,
        tid,
        vec![Fingerprint::default().into()],
    );
    assert_eq!(h.packet(alice.from, &binding), ClientOutcome::Handled);
    h.assert_no_commands();
    assert_eq!(Counters::get(&h.counters.rate_limited), 1);
    // Unauthenticated challenges are limited too, so a flood cannot mint nonces.
    let tid = h.tid();
    let bare = encode(
        ALLOCATE,
        MessageClass::Request,
        tid,
        vec![udp_transport(), Fingerprint::default().into()],
    );
    assert_eq!(h.packet(alice.from, &bare), ClientOutcome::Handled);
    h.assert_no_commands();
    assert_eq!(Counters::get(&h.counters.rate_limited), 2);

    // Another source has its own bucket.
    h.unsigned(udp_client(2), BINDING, vec![]);
    // Authenticated requests are not limited.
    h.allocate(&mut alice, vec![]);
    h.signed_ok(&alice, REFRESH, vec![]);
    // And the bucket refills with time.
    h.advance(Duration::from_secs(1));
    h.unsigned(alice.from, BINDING, vec![]);
    assert_eq!(Counters::get(&h.counters.rate_limited), 2);
}

#[test]
fn workers_sharing_a_rate_table_share_each_source_budget() {
    let mut config = base_config();
    config.rate_limit = RateLimitConfig {
        per_second: 1,
        burst: 3,
    };
    // Two workers of one process: the kernel may hand one source's packets to either.
    let mut a = Harness::with(config.clone());
    let mut b = Harness::with(config);
    let table = Arc::new(RateTable::new(RateTable::DEFAULT_SLOTS, 11, a.t0));
    for h in [&mut a, &mut b] {
        h.server = Server::new(
            Arc::new(h.config.clone()),
            Arc::clone(&h.ledger),
            Arc::clone(&h.counters),
            Arc::clone(&h.denials),
            42,
            h.t0,
        )
        .with_rate_table(Arc::clone(&table));
    }
    let from = udp_client(1);
    a.unsigned(from, BINDING, vec![]);
    b.unsigned(from, BINDING, vec![]);
    a.unsigned(from, BINDING, vec![]);
    // The burst of 3 is spent over both workers together.
    for h in [&mut a, &mut b] {
        let tid = h.tid();
        let binding = encode(
            BINDING,
            MessageClass::Request,
            tid,
            vec![Fingerprint::default().into()],
        );
        assert_eq!(h.packet(from, &binding), ClientOutcome::Handled);
        h.assert_no_commands();
        assert_eq!(Counters::get(&h.counters.rate_limited), 1);
    }
    // And refills once for both.
    a.advance(Duration::from_secs(1));
    b.advance(Duration::from_secs(1));
    b.unsigned(from, BINDING, vec![]);
    let tid = a.tid();
    let binding = encode(
        BINDING,
        MessageClass::Request,
        tid,
        vec![Fingerprint::default().into()],
    );
    assert_eq!(a.packet(from, &binding), ClientOutcome::Handled);
    a.assert_no_commands();
    assert_eq!(Counters::get(&a.counters.rate_limited), 2);
}

// ----- Allocate -----

#[test]
fn retransmitted_allocate_gets_the_same_answer() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    let (tid, bytes) = h.signed_bytes(&alice, ALLOCATE, vec![udp_transport()]);
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    let binds = h.expect_binds();
    // While the socket is being bound a retransmission is absorbed, not answered twice.
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    h.assert_no_commands();
    h.server.relay_bound(binds[0].0, true, h.now);
    let first = h.expect_send(alice.from);
    h.advance(Duration::from_millis(500));
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    let again = h.expect_send(alice.from);
    assert_eq!(first, again);
    assert_eq!(
        decode(&again, Some(&alice.key())).msg.transaction_id(),
        &tid
    );
    assert_eq!(
        h.ledger.port_usage().0,
        1,
        "no second relay for a retransmission"
    );
    // A new transaction on the same 5-tuple is a second Allocate: 437.
    assert_eq!(h.signed_error(&alice, ALLOCATE, vec![udp_transport()]), 437);
}

#[test]
fn bind_failure_retries_another_port_then_succeeds() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    let (tid, bytes) = h.signed_bytes(&alice, ALLOCATE, vec![udp_transport()]);
    h.packet(alice.from, &bytes);
    let [(relay, first)] = h.expect_binds()[..] else {
        panic!("one relay expected");
    };
    h.server.relay_bound(relay, false, h.now);
    let [(retry_relay, second)] = h.expect_binds()[..] else {
        panic!("one retry expected");
    };
    assert_eq!(retry_relay, relay);
    assert_ne!(
        second, first,
        "the port another process holds is not tried again"
    );
    assert_eq!(
        h.ledger.port_usage().0,
        1,
        "the failed port went back to the pool"
    );
    h.server.relay_bound(relay, true, h.now);
    let msg = h.answer(&alice, tid, ALLOCATE);
    assert_eq!(relayed_addresses(&msg), vec![second]);
}

#[test]
fn bind_failures_exhaust_retries_and_answer_508() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    let (tid, bytes) = h.signed_bytes(&alice, ALLOCATE, vec![udp_transport()]);
    h.packet(alice.from, &bytes);
    let mut tried = vec![];
    let mut relay = None;
    loop {
        let commands = h.commands();
        match commands.as_slice() {
            [Command::BindRelay { relay: r, addr, .. }] => {
                tried.push(*addr);
                relay = Some(*r);
                h.server.relay_bound(*r, false, h.now);
            }
            [Command::SendToClient { to, data }] if *to == alice.from => {
                let msg = decode(data, Some(&alice.key()));
                assert!(msg.signed);
                assert_eq!(msg.msg.transaction_id(), &tid);
                assert_eq!(error_code(&msg.msg), Some(508));
                break;
            }
            other => panic!("unexpected commands {other:?}"),
        }
    }
    assert_eq!(tried.len(), usize::from(super::allocate::MAX_BIND_ATTEMPTS));
    assert_eq!(h.ledger.port_usage().0, 0);
    assert_eq!(h.ledger.total_allocations(), 0);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.quota_rejections(QuotaKind::Ports), 1);
    // The slot is gone: a late report about it changes nothing.
    h.server.relay_bound(relay.unwrap(), true, h.now);
    h.assert_no_commands();
    // The client can start over.
    h.allocate(&mut alice, vec![]);
}

#[test]
fn allocate_without_requested_transport_is_400_and_tcp_is_442() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    assert_eq!(h.allocate_error(&mut alice, vec![]), 400);
    let tcp = parsed_attr(0x0019, &[6, 0, 0, 0]);
    assert_eq!(h.allocate_error(&mut alice, vec![tcp]), 442);
}

#[test]
fn allocate_lifetime_is_clamped_between_default_and_max() {
    let mut h = Harness::new();
    for (n, asked, granted) in [(1, 10, 600), (2, 1200, 1200), (3, 100_000, 3600)] {
        let mut alice = Client::alice(n);
        let allocated = h.allocate(
            &mut alice,
            vec![udp_transport(), LifeTime::new(asked).into()],
        );
        assert_eq!(lifetime_of(&allocated.response), granted, "asked {asked}");
    }
}

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
    let secret = Secret::new(REST_SECRET);
    let now = h.unix_now();
    // One user with three credentials a second apart, in both username forms.
    let first = rest::issue(&secret, Some("carol"), now, 60);
    let mut carol = Client::new(udp_client(1), &first.username, &first.password);
    let allocated = h.allocate(&mut carol, vec![]);
    let second = rest::issue(&secret, Some("carol"), now + 1, 60);
    let reversed = format!("carol:{}", now + 62);
    let reversed_pw = rest::rest_password(&secret, &reversed);
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
    let dave = rest::issue(&secret, Some("dave"), now, 60);
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

#[test]
fn even_port_with_reservation_token() {
    let mut config = base_config();
    config.relay_addresses.retain(|r| r.local.is_ipv4());
    let mut h = Harness::with(config);
    let reserved = h.allocate(&mut Client::alice(1), vec![EvenPort::new(true).into()]);
    let port = relayed_addresses(&reserved.response)[0].port();
    assert_eq!(port % 2, 0);
    let token = reserved
        .response
        .get::<ReservationToken>()
        .expect("RESERVATION-TOKEN")
        .expect_reservation_token()
        .token()
        .to_vec();
    assert_eq!(token.len(), 8);
    assert_eq!(
        h.ledger.port_usage().0,
        2,
        "the odd port is held for the token"
    );

    let token: [u8; 8] = token.try_into().unwrap();
    let paired = h.allocate(
        &mut Client::bob(2),
        vec![ReservationToken::from(token).into()],
    );
    let paired_addr = relayed_addresses(&paired.response)[0];
    assert_eq!(paired_addr, SocketAddr::new(relay_v4(), port + 1));
    assert!(!has::<ReservationToken>(&paired.response));
    assert_eq!(h.ledger.port_usage().0, 2);

    // A token is good for one allocation only.
    let mut third = Client::alice(3);
    assert_eq!(
        h.allocate_error(
            &mut third,
            vec![udp_transport(), ReservationToken::from(token).into()]
        ),
        508
    );
    // EVEN-PORT and RESERVATION-TOKEN contradict each other.
    assert_eq!(
        h.allocate_error(
            &mut third,
            vec![
                udp_transport(),
                EvenPort::new(false).into(),
                ReservationToken::from(token).into()
            ]
        ),
        400
    );
    // Without the R bit: an even port and no token.
    let plain = h.allocate(&mut third, vec![EvenPort::new(false).into()]);
    assert_eq!(relayed_addresses(&plain.response)[0].port() % 2, 0);
    assert!(!has::<ReservationToken>(&plain.response));
}

#[test]
fn unclaimed_reservation_expires() {
    let mut config = base_config();
    config.relay_addresses.retain(|r| r.local.is_ipv4());
    let mut h = Harness::with(config);
    let reserved = h.allocate(&mut Client::alice(1), vec![EvenPort::new(true).into()]);
    let token: [u8; 8] = reserved
        .response
        .get::<ReservationToken>()
        .unwrap()
        .expect_reservation_token()
        .token()
        .try_into()
        .unwrap();
    assert_eq!(h.ledger.port_usage().0, 2);
    h.at(30);
    assert_eq!(h.ledger.port_usage().0, 1);
    let mut bob = Client::bob(2);
    assert_eq!(
        h.allocate_error(
            &mut bob,
            vec![udp_transport(), ReservationToken::from(token).into()]
        ),
        508
    );
}

#[test]
fn ipv6_allocation_relays_only_ipv6_peers() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(
        &mut alice,
        vec![RequestedAddressFamily::new(AddressFamily::IPv6).into()],
    );
    let relayed = relayed_addresses(&allocated.response);
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].ip(), relay_v6());
    assert_eq!(allocated.relays[0].family, Family::V6);
    let active = &h.counters.allocations_active[Transport::Udp.index()][Family::V6.index()];
    assert_eq!(active.load(std::sync::atomic::Ordering::Relaxed), 1);

    assert_eq!(
        error_code(&h.create_permission(&alice, &[peer()])),
        Some(443)
    );
    assert_eq!(
        error_code(&h.channel_bind(&alice, 0x4000, peer())),
        Some(443)
    );
    let refresh_v4 = h.signed(
        &alice,
        REFRESH,
        vec![RequestedAddressFamily::new(AddressFamily::IPv4).into()],
    );
    assert_eq!(error_code(&refresh_v4), Some(443));

    h.create_permission(&alice, &[peer_v6()]);
    let (bytes, outcome) = h.send_indication(&alice, peer_v6(), b"over v6");
    assert_relayed(&outcome, &bytes, allocated.relays[0], peer_v6(), b"over v6");
}

#[test]
fn dual_allocation_with_additional_address_family() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(
        &mut alice,
        vec![AdditionalAddressFamily::new(AddressFamily::IPv6).into()],
    );
    let relayed = relayed_addresses(&allocated.response);
    assert_eq!(
        relayed.iter().map(|a| a.ip()).collect::<Vec<_>>(),
        vec![relay_v4(), relay_v6()]
    );
    assert!(!has::<AddressErrorCode>(&allocated.response));
    assert_eq!(h.ledger.port_usage().0, 2);
    let (v4, v6) = (allocated.relays[0], allocated.relays[1]);
    assert_eq!((v4.family, v6.family), (Family::V4, Family::V6));

    let ok = h.create_permission(&alice, &[peer(), peer_v6()]);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
    let (bytes, outcome) = h.send_indication(&alice, peer(), b"four");
    assert_relayed(&outcome, &bytes, v4, peer(), b"four");
    let (bytes, outcome) = h.send_indication(&alice, peer_v6(), b"six");
    assert_relayed(&outcome, &bytes, v6, peer_v6(), b"six");
    // Both refreshes of one family succeed.
    h.signed_ok(
        &alice,
        REFRESH,
        vec![RequestedAddressFamily::new(AddressFamily::IPv6).into()],
    );

    // Deleting frees both sockets and both ports.
    h.delete(&alice, &[v4, v6]);
    assert_eq!(h.ledger.port_usage().0, 0);
}

#[test]
fn address_family_requests_that_cannot_be_met() {
    let mut config = base_config();
    config.relay_addresses.retain(|r| r.local.is_ipv4());
    let mut h = Harness::with(config);
    let mut alice = Client::alice(1);
    let v6 = || -> StunAttribute { RequestedAddressFamily::new(AddressFamily::IPv6).into() };
    assert_eq!(
        h.allocate_error(&mut alice, vec![udp_transport(), v6()]),
        440
    );
    // Both attributes at once, or an IPv4 "additional" family, make no sense.
    let both = vec![
        udp_transport(),
        v6(),
        AdditionalAddressFamily::new(AddressFamily::IPv6).into(),
    ];
    assert_eq!(h.allocate_error(&mut alice, both), 400);
    let extra_v4 = vec![
        udp_transport(),
        AdditionalAddressFamily::new(AddressFamily::IPv4).into(),
    ];
    assert_eq!(h.allocate_error(&mut alice, extra_v4), 400);

    // A dual request without IPv6 relays succeeds for IPv4 and says why IPv6 is missing.
    let allocated = h.allocate(
        &mut alice,
        vec![AdditionalAddressFamily::new(AddressFamily::IPv6).into()],
    );
    assert_eq!(relayed_addresses(&allocated.response).len(), 1);
    let refused = allocated
        .response
        .get::<AddressErrorCode>()
        .expect("ADDRESS-ERROR-CODE")
        .expect_address_error_code();
    assert_eq!(refused.family(), AddressFamily::IPv6);
    assert_eq!(refused.error_code().error_code(), 440);

    let mut config = base_config();
    config.relay_addresses.retain(|r| r.local.is_ipv6());
    let mut h = Harness::with(config);
    assert_eq!(
        h.allocate_error(&mut Client::alice(1), vec![udp_transport()]),
        440
    );
}

#[test]
fn advertised_address_differs_from_the_bound_one_behind_nat() {
    let mut config = base_config();
    config.relay_addresses = vec![RelayAddress {
        local: relay_v4(),
        advertised: ip("203.0.113.77"),
    }];
    let mut h = Harness::with(config);
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    let (tid, bytes) = h.signed_bytes(&alice, ALLOCATE, vec![udp_transport()]);
    h.packet(alice.from, &bytes);
    let [(relay, local)] = h.expect_binds()[..] else {
        panic!("one relay expected");
    };
    assert_eq!(local.ip(), relay_v4());
    h.server.relay_bound(relay, true, h.now);
    let msg = h.answer(&alice, tid, ALLOCATE);
    assert_eq!(
        relayed_addresses(&msg),
        vec![SocketAddr::new(ip("203.0.113.77"), local.port())]
    );
}

// ----- Refresh and lifetimes -----

#[test]
fn refresh_lifetimes_and_deletion() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![]);
    let refresh = |h: &mut Harness, attrs: Vec<StunAttribute>| {
        lifetime_of(&h.signed_ok(&alice, REFRESH, attrs))
    };
    assert_eq!(refresh(&mut h, vec![LifeTime::new(1200).into()]), 1200);
    assert_eq!(refresh(&mut h, vec![LifeTime::new(100_000).into()]), 3600);
    assert_eq!(
        refresh(&mut h, vec![LifeTime::new(60).into()]),
        600,
        "never below the default"
    );
    assert_eq!(refresh(&mut h, vec![]), 600);

    // The last refresh decides: 600 s from now, not the 3600 s granted before.
    h.at(599);
    h.assert_no_commands();
    assert_eq!(h.server.allocation_count(), 1);

    h.delete(&alice, &allocated.relays);
    assert_eq!(h.ledger.port_usage().0, 0);
    assert_eq!(h.ledger.total_allocations(), 0);
    assert_eq!(h.server.allocation_count(), 0);
    let active = &h.counters.allocations_active[Transport::Udp.index()][Family::V4.index()];
    assert_eq!(active.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(h.signed_error(&alice, REFRESH, vec![]), 437);
    assert_eq!(h.peer_packet(allocated.relays[0], peer(), 10), None);
}

#[test]
fn allocation_expires_and_handle_timeout_frees_everything() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![]);
    h.create_permission(&alice, &[peer()]);
    h.channel_bind(&alice, 0x4000, peer2());
    assert_eq!(h.server.poll_timeout(), h.t0 + Duration::from_secs(1));
    h.at(599);
    h.assert_no_commands();
    assert_eq!(h.server.poll_timeout(), h.now + Duration::from_secs(1));
    h.at(600);
    h.expect_closes(&allocated.relays);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.ledger.port_usage().0, 0);
    assert_eq!(h.ledger.total_allocations(), 0);
    assert_eq!(h.peer_packet(allocated.relays[0], peer(), 10), None);
    let (_, outcome) = h.channel_data(&alice, 0x4000, b"late");
    assert_eq!(outcome, ClientOutcome::Dropped);
    // The slot is reused under a new generation, so the old id stays dead.
    let again = h.allocate(&mut alice, vec![]);
    assert_eq!(again.relays[0].slot, allocated.relays[0].slot);
    assert_ne!(again.relays[0].generation, allocated.relays[0].generation);
    h.create_permission(&alice, &[peer()]);
    assert_eq!(h.peer_packet(allocated.relays[0], peer(), 10), None);
    assert!(h.peer_packet(again.relays[0], peer(), 10).is_some());
}

#[test]
fn stream_disconnect_frees_the_allocation() {
    let mut h = Harness::new();
    let from = FiveTuple {
        transport: Transport::Tls,
        client: sa("198.51.100.9:51000"),
        server: sa("192.0.2.1:5349"),
    };
    let mut alice = Client::new(from, "alice", "alice-pw");
    let allocated = h.allocate(&mut alice, vec![]);
    let active = &h.counters.allocations_active[Transport::Tls.index()][Family::V4.index()];
    assert_eq!(active.load(std::sync::atomic::Ordering::Relaxed), 1);
    h.server.handle_disconnect(from);
    h.expect_closes(&allocated.relays);
    assert_eq!(h.ledger.port_usage().0, 0);
    let active = &h.counters.allocations_active[Transport::Tls.index()][Family::V4.index()];
    assert_eq!(active.load(std::sync::atomic::Ordering::Relaxed), 0);
}

// ----- Permissions, channels and the data path -----

#[test]
fn send_indication_and_data_path_follow_permissions_for_300_seconds() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![]);
    let relay = allocated.relays[0];

    let (_, outcome) = h.send_indication(&alice, peer(), b"too early");
    assert_eq!(outcome, ClientOutcome::Dropped);
    assert_eq!(h.peer_packet(relay, peer(), 9), None);
    assert_eq!(h.dropped(DropReason::NoPermission), 2);

    let ok = h.create_permission(&alice, &[peer()]);
    assert_eq!(ok.class(), MessageClass::SuccessResponse);
    assert!(
        has::<Software>(&ok),
        "authenticated answers may name the software"
    );
    let (bytes, outcome) = h.send_indication(&alice, peer(), b"hello peer");
    assert_relayed(&outcome, &bytes, relay, peer(), b"hello peer");
    // Permissions are per IP address: any port of the peer may answer.
    let other_port = SocketAddr::new(peer().ip(), 9999);
    let expected = PeerRoute {
        client: alice.from,
        channel: None,
    };
    assert_eq!(h.peer_packet(relay, other_port, 5), Some(expected));
    assert_eq!(h.peer_packet(relay, peer2(), 5), None);
    assert_eq!(
        Counters::get(&h.counters.packets[Direction::ClientToPeer as usize]),
        1
    );
    assert_eq!(
        Counters::get(&h.counters.bytes[Direction::ClientToPeer as usize]),
        10
    );
    assert_eq!(
        Counters::get(&h.counters.packets[Direction::PeerToClient as usize]),
        1
    );

    h.at(299);
    assert_eq!(h.peer_packet(relay, peer(), 5), Some(expected));
    h.at(300);
    assert_eq!(h.peer_packet(relay, peer(), 5), None);
    let (_, outcome) = h.send_indication(&alice, peer(), b"expired");
    assert_eq!(outcome, ClientOutcome::Dropped);

    // Refreshing restarts the 300 s.
    h.create_permission(&alice, &[peer()]);
    h.at(599);
    h.signed_ok(&alice, REFRESH, vec![]);
    assert_eq!(h.peer_packet(relay, peer(), 5), Some(expected));
    h.at(600);
    assert_eq!(h.peer_packet(relay, peer(), 5), None);
}

#[test]
fn create_permission_needs_a_peer_and_the_owner() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    // No allocation yet: 437.
    h.challenge(&mut alice);
    assert_eq!(
        error_code(&h.create_permission(&alice, &[peer()])),
        Some(437)
    );
    assert_eq!(
        error_code(&h.channel_bind(&alice, 0x4000, peer())),
        Some(437)
    );
    h.allocate(&mut alice, vec![]);
    assert_eq!(h.signed_error(&alice, CREATE_PERMMISSION, vec![]), 400);
    // Several peers in one request are installed together.
    h.create_permission(&alice, &[peer(), peer2()]);
}

#[test]
fn other_user_on_the_same_five_tuple_gets_441() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.allocate(&mut alice, vec![]);
    let mut bob = Client::new(alice.from, "bob", "bob-pw");
    bob.nonce = alice.nonce.clone();
    assert_eq!(h.signed_error(&bob, REFRESH, vec![]), 441);
    assert_eq!(error_code(&h.create_permission(&bob, &[peer()])), Some(441));
    assert_eq!(error_code(&h.channel_bind(&bob, 0x4000, peer())), Some(441));
    assert_eq!(h.auth_failures(AuthFailure::WrongCredentials), 3);
    // Bob's Allocate on Alice's 5-tuple is a mismatch, not a takeover.
    assert_eq!(h.signed_error(&bob, ALLOCATE, vec![udp_transport()]), 437);
    h.signed_ok(&alice, REFRESH, vec![]);
}

#[test]
fn channel_bind_routes_channel_data_both_ways() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![]);
    let relay = allocated.relays[0];
    let ok = h.channel_bind(&alice, 0x4000, peer());
    assert_eq!(ok.class(), MessageClass::SuccessResponse);

    // 5 bytes: what follows the announced length (padding, junk) is not payload.
    let mut frame = vec![0x40, 0x00, 0x00, 0x05];
    frame.extend_from_slice(b"hello\0\0\0");
    let outcome = h.packet(alice.from, &frame);
    assert_eq!(
        outcome,
        ClientOutcome::Relay {
            relay,
            peer: peer(),
            payload: 4..9,
        }
    );
    assert_eq!(
        h.peer_packet(relay, peer(), 5),
        Some(PeerRoute {
            client: alice.from,
            channel: Some(0x4000),
        })
    );
    // The binding installed a permission too: Send works and other ports use Data indications.
    let (bytes, outcome) = h.send_indication(&alice, peer(), b"x");
    assert_relayed(&outcome, &bytes, relay, peer(), b"x");
    let other_port = SocketAddr::new(peer().ip(), 1);
    assert_eq!(h.peer_packet(relay, other_port, 1).unwrap().channel, None);

    // Unbound channel numbers are dropped and counted.
    let (_, outcome) = h.channel_data(&alice, 0x4001, b"nobody");
    assert_eq!(outcome, ClientOutcome::Dropped);
    assert_eq!(h.dropped(DropReason::UnboundChannel), 1);
    // A ChannelData frame from a client without allocation is dropped the same way.
    let (_, outcome) = h.channel_data(&Client::bob(9), 0x4000, b"who?");
    assert_eq!(outcome, ClientOutcome::Dropped);
    assert_eq!(h.dropped(DropReason::UnboundChannel), 2);
    // A frame shorter than its length field is malformed.
    assert_eq!(
        h.packet(alice.from, &[0x40, 0x00, 0x00, 0x08, 1, 2]),
        ClientOutcome::Dropped
    );
    assert_eq!(h.malformed(), 1);
}

#[test]
fn channels_last_600_seconds_and_need_their_permission() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    let allocated = h.allocate(&mut alice, vec![LifeTime::new(3600).into()]);
    let relay = allocated.relays[0];
    h.channel_bind(&alice, 0x4000, peer());
    // The permission the binding installed lapses at 300 s even though the channel lives on.
    h.at(300);
    assert_eq!(h.peer_packet(relay, peer(), 1), None);
    let (_, outcome) = h.channel_data(&alice, 0x4000, b"a");
    assert_eq!(outcome, ClientOutcome::Dropped);
    h.create_permission(&alice, &[peer()]);
    assert_eq!(
        h.peer_packet(relay, peer(), 1).unwrap().channel,
        Some(0x4000)
    );
    h.at(599);
    assert_eq!(
        h.peer_packet(relay, peer(), 1).unwrap().channel,
        Some(0x4000)
    );
    h.create_permission(&alice, &[peer()]);
    // At 600 s the channel is gone; the permission (renewed at 599 s) still stands.
    h.at(600);
    assert_eq!(h.peer_packet(relay, peer(), 1).unwrap().channel, None);
    let (_, outcome) = h.channel_data(&alice, 0x4000, b"a");
    assert_eq!(outcome, ClientOutcome::Dropped);
    // Re-binding the same pair within its cooldown is allowed and routes again.
    h.channel_bind(&alice, 0x4000, peer());
    let (bytes, outcome) = h.channel_data(&alice, 0x4000, b"back");
    assert_relayed(&outcome, &bytes, relay, peer(), b"back");
}

#[test]
fn channel_bind_rejects_invalid_numbers_and_rebinding() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.allocate(&mut alice, vec![]);
    // The accepted range is RFC 8656's 0x4000-0x4FFF widened to RFC 5766's 0x7FFF (see
    // channels::MAX_CHANNEL); anything whose top bits are not ChannelData's `01` is refused.
    for number in [0x0000, MIN_CHANNEL - 1, MAX_CHANNEL + 1, 0xFFFF] {
        let msg = h.channel_bind(&alice, number, peer());
        assert_eq!(error_code(&msg), Some(400), "{number:#x}");
    }
    for number in [MIN_CHANNEL, 0x4FFF, MAX_CHANNEL] {
        let peer = SocketAddr::new(peer().ip(), number);
        assert_eq!(
            h.channel_bind(&alice, number, peer).class(),
            MessageClass::SuccessResponse
        );
    }
    let bound_peer = SocketAddr::new(peer().ip(), 0x4000);
    // A bound number cannot move to another peer, nor a bound peer to another number.
    assert_eq!(
        error_code(&h.channel_bind(&alice, 0x4000, peer2())),
        Some(400)
    );
    assert_eq!(
        error_code(&h.channel_bind(&alice, 0x4001, bound_peer)),
        Some(400)
    );
    // Refreshing the same pair is fine.
    assert_eq!(
        h.channel_bind(&alice, 0x4000, bound_peer).class(),
        MessageClass::SuccessResponse
    );
    // Both attributes are mandatory.
    assert_eq!(
        h.signed_error(
            &alice,
            CHANNEL_BIND,
            vec![ChannelNumber::new(0x4002).into()]
        ),
        400
    );
    assert_eq!(
        h.signed_error(
            &alice,
            CHANNEL_BIND,
            vec![XorPeerAddress::from(peer2()).into()]
        ),
        400
    );
}

#[test]
fn peer_filter_denies_internal_addresses_with_403() {
    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.allocate(
        &mut alice,
        vec![AdditionalAddressFamily::new(AddressFamily::IPv6).into()],
    );
    let denied = [
        ("127.0.0.1:80", "loopback"),
        ("10.1.2.3:80", "private"),
        ("172.16.0.1:80", "private"),
        ("192.168.1.1:80", "private"),
        ("169.254.169.254:80", "link_local"),
        ("224.0.0.251:5353", "multicast"),
        ("[::ffff:127.0.0.1]:80", "loopback"),
        ("[64:ff9b::7f00:1]:80", "translated"),
        ("[fc00::1]:80", "unique_local"),
        ("[fd12:3456::1]:80", "unique_local"),
        ("[ff02::1]:80", "multicast"),
        ("[::1]:80", "loopback"),
    ];
    for (addr, _) in denied {
        let peer = sa(addr);
        let msg = h.create_permission(&alice, &[peer]);
        assert_eq!(error_code(&msg), Some(403), "{addr}");
        assert!(
            has::<Software>(&msg),
            "an authenticated 403 is signed and complete"
        );
        assert_eq!(
            error_code(&h.channel_bind(&alice, 0x4000, peer)),
            Some(403),
            "{addr}"
        );
    }
    // One denied peer spoils the whole request: nothing is installed.
    let msg = h.create_permission(&alice, &[peer(), sa("10.0.0.1:1")]);
    assert_eq!(error_code(&msg), Some(403));
    let (_, outcome) = h.send_indication(&alice, peer(), b"no");
    assert_eq!(outcome, ClientOutcome::Dropped);

    let snapshot = h.denials.snapshot();
    let count = |reason: &str| {
        snapshot
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    };
    for reason in [
        "loopback",
        "private",
        "link_local",
        "multicast",
        "translated",
        "unique_local",
    ] {
        let expected = denied.iter().filter(|(_, r)| *r == reason).count() as u64 * 2
            + u64::from(reason == "private");
        assert_eq!(count(reason), expected, "{reason}");
    }
}

#[test]
fn allowed_peer_ip_overrides_the_deny_list() {
    let mut config = base_config();
    let allowed = peer_filter::parse_ip_range("10.0.0.5").unwrap();
    config.peer_filter = PeerFilter::new(allowed, Vec::new(), false);
    let mut h = Harness::with(config);
    let mut alice = Client::alice(1);
    h.allocate(&mut alice, vec![]);
    let media = sa("10.0.0.5:7000");
    assert_eq!(
        h.create_permission(&alice, &[media]).class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(
        error_code(&h.create_permission(&alice, &[sa("10.0.0.6:7000")])),
        Some(403)
    );
    let (bytes, outcome) = h.send_indication(&alice, media, b"internal");
    let relay = match outcome {
        ClientOutcome::Relay { relay, .. } => relay,
        other => panic!("not relayed: {other:?}"),
    };
    assert_relayed(&outcome, &bytes, relay, media, b"internal");
}

#[test]
fn the_relays_own_listening_addresses_are_403_even_when_allowed() {
    let mut config = base_config();
    // The relay listens on 192.0.2.10 (also its relay address) and everything is allowed.
    let own = peer_filter::SelfAddresses::new([
        ("192.0.2.10/32".parse().unwrap(), 3478),
        ("192.0.2.10/32".parse().unwrap(), 9641),
    ]);
    config.peer_filter = PeerFilter::new(vec!["0.0.0.0/0".parse().unwrap()], Vec::new(), true)
        .with_self_addresses(own);
    let mut h = Harness::with(config);
    let mut alice = Client::alice(1);
    h.allocate(&mut alice, vec![]);
    let mut bob = Client::bob(2);
    let bobs = h.allocate(&mut bob, vec![]);
    let bobs_relay = relayed_addresses(&bobs.response)[0];
    assert_eq!(bobs_relay.ip(), relay_v4());

    for own in [sa("192.0.2.10:3478"), sa("192.0.2.10:9641")] {
        assert_eq!(error_code(&h.create_permission(&alice, &[own])), Some(403));
        assert_eq!(error_code(&h.channel_bind(&alice, 0x4000, own)), Some(403));
    }
    // Another allocation's relayed address (same IP, another port) is a peer like any other,
    // and the permission it installs is for the IP...
    assert_eq!(
        h.create_permission(&alice, &[bobs_relay]).class(),
        MessageClass::SuccessResponse
    );
    let (bytes, outcome) = h.send_indication(&alice, bobs_relay, b"to bob");
    let relay = match outcome {
        ClientOutcome::Relay { relay, .. } => relay,
        other => panic!("not relayed: {other:?}"),
    };
    assert_relayed(&outcome, &bytes, relay, bobs_relay, b"to bob");
    // ...which still does not carry a Send indication to the listener's port.
    let before = h.dropped(DropReason::NoPermission);
    let (_, outcome) = h.send_indication(&alice, sa("192.0.2.10:3478"), b"loop");
    assert_eq!(outcome, ClientOutcome::Dropped);
    assert_eq!(h.dropped(DropReason::NoPermission), before + 1);
    let snapshot = h.denials.snapshot();
    assert_eq!(snapshot, vec![("self", 4)]);
}

// ----- Malformed input and the amplification guard -----

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

#[test]
fn stale_relay_ids_and_unknown_slots_route_nowhere() {
    let mut h = Harness::new();
    let bogus = RelayId {
        slot: 99,
        generation: 0,
        family: Family::V4,
    };
    assert_eq!(h.peer_packet(bogus, peer(), 1), None);
    h.server.relay_bound(bogus, true, h.now);
    h.server.relay_bound(bogus, false, h.now);
    h.assert_no_commands();
}

#[test]
fn coturn_draft_additional_address_family_type_makes_a_dual_allocation() {
    use stun_types::attribute::{AttributeType, RawAttribute};
    use stun_types::message::{
        IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageWrite, MessageWriteExt,
        MessageWriteVec,
    };

    let mut h = Harness::new();
    let mut alice = Client::alice(1);
    h.challenge(&mut alice);
    // stun-rs cannot encode an attribute type it does not model, so this request is built and
    // signed by stun-types; the answer is still checked with stun-rs.
    let mut msg = Message::builder_request(turn_types::message::ALLOCATE, MessageWriteVec::new());
    let tid = msg.transaction_id();
    msg.add_attribute(&turn_types::attribute::RequestedTransport::new(17))
        .unwrap();
    msg.add_attribute(&RawAttribute::new(
        AttributeType::new(0x8032),
        &[0x02, 0, 0, 0],
    ))
    .unwrap();
    msg.add_attribute(&stun_types::attribute::Username::new("alice").unwrap())
        .unwrap();
    msg.add_attribute(&stun_types::attribute::Realm::new(REALM).unwrap())
        .unwrap();
    msg.add_attribute(&stun_types::attribute::Nonce::new(alice.nonce.as_deref().unwrap()).unwrap())
        .unwrap();
    let credentials = LongTermKeyCredentials::new("alice".into(), "alice-pw".into(), REALM.into());
    msg.add_message_integrity(&credentials.into(), IntegrityAlgorithm::Sha1)
        .unwrap();
    msg.add_fingerprint().unwrap();
    let bytes = msg.finish();
    assert_eq!(h.packet(alice.from, &bytes), ClientOutcome::Handled);
    let binds = h.expect_binds();
    let families: Vec<_> = binds.iter().map(|(r, _)| r.family).collect();
    assert_eq!(families, vec![Family::V4, Family::V6]);
    for &(relay, _) in &binds {
        h.server.relay_bound(relay, true, h.now);
    }
    let response = decode(&h.expect_send(alice.from), Some(&alice.key())).msg;
    assert_eq!(
        response.transaction_id().as_bytes()[..],
        u128::from(tid).to_be_bytes()[4..]
    );
    let ips: Vec<_> = relayed_addresses(&response)
        .iter()
        .map(|a| a.ip())
        .collect();
    assert_eq!(ips, vec![relay_v4(), relay_v6()]);
}

/// The data path allocates nothing: counted by a test-only global allocator, per thread so that
/// other tests running at the same time do not disturb the count.
mod data_path_allocations {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    fn count() {
        // `try_with`: during thread teardown the counter may already be gone.
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    }

    #[allow(unsafe_code)]
    // SAFETY: every call is forwarded unchanged to the system allocator.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }

    #[test]
    fn relaying_allocates_nothing() {
        let mut h = Harness::new();
        let mut alice = Client::alice(1);
        let relay = h.allocate(&mut alice, vec![]).relays[0];
        assert_eq!(
            h.channel_bind(&alice, MIN_CHANNEL, peer()).class(),
            MessageClass::SuccessResponse
        );
        assert_eq!(
            h.create_permission(&alice, &[peer2()]).class(),
            MessageClass::SuccessResponse
        );
        let mut channel_data = MIN_CHANNEL.to_be_bytes().to_vec();
        channel_data.extend_from_slice(&100u16.to_be_bytes());
        channel_data.extend_from_slice(&[7; 100]);
        let tid = h.tid();
        let send = encode(
            SEND,
            MessageClass::Indication,
            tid,
            vec![
                XorPeerAddress::from(peer2()).into(),
                Data::new(vec![7; 100]).into(),
            ],
        );
        let mut out = [0u8; crate::wire::PAYLOAD_OFFSET + 1500];
        let now = h.now;

        let before = allocations();
        for _ in 0..1000 {
            let outcome = h
                .server
                .handle_client_packet(alice.from, &channel_data, now);
            assert!(matches!(outcome, ClientOutcome::Relay { .. }));
            let route = h.server.handle_peer_packet(relay, peer(), 100, now);
            assert_eq!(route.and_then(|r| r.channel), Some(MIN_CHANNEL));
            crate::wire::write_channel_header(&mut out, MIN_CHANNEL, 100);

            let outcome = h.server.handle_client_packet(alice.from, &send, now);
            assert!(matches!(outcome, ClientOutcome::Relay { .. }));
            let route = h.server.handle_peer_packet(relay, peer2(), 100, now);
            assert_eq!(route.map(|r| r.channel), Some(None));
            crate::wire::write_data_indication(
                &mut out,
                peer2(),
                100,
                stun_types::message::TransactionId::from(7u128),
            );
        }
        let spent = allocations() - before;
        assert_eq!(
            spent, 0,
            "{spent} heap allocations for 4000 relayed packets"
        );
    }
}
