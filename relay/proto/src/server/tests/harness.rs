//! What every server test shares: addresses, credentials and configurations, requests
//! built and signed with `stun-rs` (Send indications, ChannelData and TURN REST
//! credentials from the shared test kit, `icegate-testkit`), and a [`Harness`] (one server
//! on a fake clock) whose helpers drive a client through the usual exchanges.
//!
//! Why two encoders: the core's tests need attributes the kit has no reason to carry
//! (EVEN-PORT, RESERVATION-TOKEN, ADDITIONAL-ADDRESS-FAMILY, PASSWORD-ALGORITHMS, ...) and
//! full integrity checks of every answer, and `stun-rs` is the independent codec kept for
//! exactly that cross-check of the wire format; what all three consumers (these tests, the
//! cross-process tests, the benchmark) send alike comes from the kit.
//!
//! Its imports are re-exported, so a test module needs only `use super::harness::*;`.

pub(super) use std::net::{IpAddr, SocketAddr};
pub(super) use std::sync::Arc;
pub(super) use std::time::{Duration, Instant};

pub(super) use icegate_common::credentials::Secret;
pub(super) use icegate_testkit as kit;
pub(super) use stun_rs::attributes::stun::nonce_cookie::StunSecurityFeatures;
pub(super) use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, PasswordAlgorithm,
    PasswordAlgorithms, Realm, Software, UnknownAttributes, UserName, XorMappedAddress,
};
pub(super) use stun_rs::attributes::turn::{
    AdditionalAddressFamily, AddressErrorCode, ChannelNumber, Data, EvenPort, LifeTime,
    RequestedAddressFamily, RequestedTrasport, ReservationToken, XorPeerAddress,
};
pub(super) use stun_rs::methods::{
    ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH, SEND,
};
pub(super) use stun_rs::{
    AddressFamily, Algorithm, AlgorithmId, DecoderContextBuilder, HMACKey, MessageClass,
    MessageDecoderBuilder, MessageEncoderBuilder, MessageMethod, StunAttribute, StunAttributeType,
    StunMessage, StunMessageBuilder, TransactionId,
};

pub(super) use crate::auth::Credentials;
pub(super) use crate::channels::{MAX_CHANNEL, MIN_CHANNEL};
pub(super) use crate::config::{RelayAddress, ServerConfig};
pub(super) use crate::ledger::Ledger;
pub(super) use crate::metrics::{
    AuthFailure, Counters, Direction, DropReason, MethodLabel, PeerDenials, QuotaKind,
};
pub(super) use crate::nonce::NonceKey;
pub(super) use crate::peer_filter::{self, PeerFilter};
pub(super) use crate::rate_limit::{RateLimitConfig, RateTable};
pub(super) use crate::server::{ClientOutcome, Command, PeerRoute, RelayId, Server};
pub(super) use crate::transport::{Family, FiveTuple, Transport};

pub(super) const REALM: &str = "example.org";
pub(super) const SOFTWARE: &str = "icegate-test/1";
pub(super) const EPOCH_UNIX: u64 = 1_700_000_000;
pub(super) const PORT_MIN: u16 = 50_000;
pub(super) const PORT_MAX: u16 = 50_019;
pub(super) const REST_SECRET: &str = "rest-secret";

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub(super) fn relay_v4() -> IpAddr {
    ip("192.0.2.10")
}

pub(super) fn relay_v6() -> IpAddr {
    ip("2001:db8::10")
}

/// Public addresses the default peer filter lets through.
pub(super) fn peer() -> SocketAddr {
    sa("8.8.8.8:4000")
}

pub(super) fn peer2() -> SocketAddr {
    sa("1.1.1.1:5000")
}

pub(super) fn peer_v6() -> SocketAddr {
    sa("[2606:4700::1111]:6000")
}

pub(super) fn udp_client(n: u8) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::new(IpAddr::from([198, 51, 100, n]), 40_000 + u16::from(n)),
        server: sa("192.0.2.1:3478"),
    }
}

pub(super) fn base_config() -> ServerConfig {
    let mut credentials = Credentials::new();
    credentials.add_user("alice", "alice-pw");
    credentials.add_user("bob", "bob-pw");
    credentials.add_rest_secret(Secret::new(REST_SECRET));
    let mut config = ServerConfig::new(REALM, credentials, &[relay_v4(), relay_v6()]);
    config.software = Some(SOFTWARE.to_owned());
    config
}

/// TURN REST credentials, minted by the test kit (independently of `icegate_common`).
pub(super) struct Rest {
    pub(super) username: String,
    pub(super) password: String,
}

/// The credentials of `user` under `secret`, valid for `ttl` seconds from `now_unix`.
pub(super) fn rest_issue(secret: &str, user: &str, now_unix: u64, ttl: u64) -> Rest {
    let (username, password) = kit::rest_credentials(secret.as_bytes(), user, now_unix + ttl);
    Rest { username, password }
}

/// A client's credentials and the nonce it last learnt.
#[derive(Clone)]
pub(super) struct Client {
    pub(super) from: FiveTuple,
    pub(super) username: String,
    pub(super) password: String,
    /// The key derivation (PASSWORD-ALGORITHM); MD5 sends no PASSWORD-ALGORITHM at all.
    pub(super) algorithm: AlgorithmId,
    /// Sign with MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY.
    pub(super) sha256_integrity: bool,
    pub(super) nonce: Option<String>,
}

impl Client {
    pub(super) fn new(from: FiveTuple, username: &str, password: &str) -> Self {
        Self {
            from,
            username: username.to_owned(),
            password: password.to_owned(),
            algorithm: AlgorithmId::MD5,
            sha256_integrity: false,
            nonce: None,
        }
    }

    pub(super) fn alice(n: u8) -> Self {
        Self::new(udp_client(n), "alice", "alice-pw")
    }

    pub(super) fn bob(n: u8) -> Self {
        Self::new(udp_client(n), "bob", "bob-pw")
    }

    pub(super) fn key(&self) -> HMACKey {
        HMACKey::new_long_term(
            &self.username,
            REALM,
            &self.password,
            Algorithm::new(self.algorithm, None::<&[u8]>),
        )
        .expect("valid long-term key")
    }

    /// The credential attributes and integrity of an authenticated request, after `attrs`.
    pub(super) fn sign(&self, mut attrs: Vec<StunAttribute>) -> Vec<StunAttribute> {
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

pub(super) fn offered_algorithms() -> PasswordAlgorithms {
    PasswordAlgorithms::from(vec![
        PasswordAlgorithm::new(Algorithm::new(AlgorithmId::MD5, None::<&[u8]>)),
        PasswordAlgorithm::new(Algorithm::new(AlgorithmId::SHA256, None::<&[u8]>)),
    ])
}

pub(super) fn encode(
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
pub(super) fn parsed_attr(kind: u16, value: &[u8]) -> StunAttribute {
    let raw = kit::Message::request(kit::method::BINDING, [0x55; 12])
        .attr(kind, value)
        .finish();
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(&raw)
        .expect("crafted attribute decodes");
    msg.attributes()[0].clone()
}

pub(super) fn udp_transport() -> StunAttribute {
    RequestedTrasport::new(stun_rs::protocols::UDP).into()
}

pub(super) fn has<A: StunAttributeType>(msg: &StunMessage) -> bool {
    msg.get::<A>().is_some()
}

pub(super) fn error_code(msg: &StunMessage) -> Option<u16> {
    msg.get::<ErrorCode>()
        .map(|a| a.expect_error_code().error_code().error_code())
}

pub(super) fn nonce_of(msg: &StunMessage) -> String {
    msg.get::<Nonce>()
        .expect("NONCE")
        .expect_nonce()
        .as_str()
        .to_owned()
}

pub(super) fn relayed_addresses(msg: &StunMessage) -> Vec<SocketAddr> {
    msg.attributes()
        .iter()
        .filter_map(|a| a.as_xor_relayed_address().ok())
        .map(|a| *a.socket_address())
        .collect()
}

pub(super) fn lifetime_of(msg: &StunMessage) -> u32 {
    msg.get::<LifeTime>()
        .expect("LIFETIME")
        .expect_life_time()
        .as_u32()
}

/// A decoded response and whether it carried (and passed) an integrity check.
pub(super) struct Response {
    pub(super) msg: StunMessage,
    pub(super) signed: bool,
}

/// Decodes with stun-rs, validating FINGERPRINT always and the integrity with `key` if the
/// message carries one.
pub(super) fn decode(bytes: &[u8], key: Option<&HMACKey>) -> Response {
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
pub(super) struct Allocated {
    pub(super) relays: Vec<RelayId>,
    pub(super) response: StunMessage,
}

/// One server, its shared state and a fake clock.
pub(super) struct Harness {
    pub(super) server: Server,
    pub(super) ledger: Arc<Ledger>,
    pub(super) counters: Arc<Counters>,
    pub(super) denials: Arc<PeerDenials>,
    pub(super) config: ServerConfig,
    pub(super) t0: Instant,
    pub(super) now: Instant,
    pub(super) next_tid: u32,
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
    pub(super) fn new() -> Self {
        Self::with(base_config())
    }

    pub(super) fn with(config: ServerConfig) -> Self {
        Self::with_ports(config, PORT_MIN, PORT_MAX)
    }

    pub(super) fn with_ports(config: ServerConfig, min: u16, max: u16) -> Self {
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

    pub(super) fn reconfigure(&mut self, change: impl FnOnce(&mut ServerConfig)) {
        change(&mut self.config);
        self.server
            .set_config(Arc::new(self.config.clone()), self.now);
    }

    pub(super) fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Advances to `secs` after the start and runs the timers.
    pub(super) fn at(&mut self, secs: u64) {
        self.now = self.t0 + Duration::from_secs(secs);
        self.server.handle_timeout(self.now);
    }

    pub(super) fn unix_secs(&self) -> u64 {
        EPOCH_UNIX + (self.now - self.t0).as_secs()
    }

    pub(super) fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut bytes = [0xA5; 12];
        bytes[8..].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId::from(bytes)
    }

    pub(super) fn packet(&mut self, from: FiveTuple, bytes: &[u8]) -> ClientOutcome {
        self.server.handle_client_packet(from, bytes, self.now)
    }

    pub(super) fn commands(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.server.poll_command()).collect()
    }

    pub(super) fn assert_no_commands(&mut self) {
        let commands = self.commands();
        assert!(commands.is_empty(), "unexpected commands: {commands:?}");
    }

    /// Exactly one answer to `to`, nothing else queued.
    pub(super) fn expect_send(&mut self, to: FiveTuple) -> Vec<u8> {
        match self.commands().as_slice() {
            [Command::SendToClient { to: t, data }] if *t == to => data.clone(),
            other => panic!("expected exactly one answer to {to:?}, got {other:?}"),
        }
    }

    /// Only BindRelay commands, at least one.
    pub(super) fn expect_binds(&mut self) -> Vec<(RelayId, SocketAddr)> {
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
    pub(super) fn expect_closes(&mut self, relays: &[RelayId]) {
        let commands = self.commands();
        check_closes(commands, relays);
    }

    /// Sends an unauthenticated request and decodes its single answer.
    pub(super) fn unsigned(
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
    pub(super) fn challenge(&mut self, client: &mut Client) -> StunMessage {
        let msg = self.unsigned(client.from, ALLOCATE, vec![udp_transport()]);
        assert_eq!(msg.class(), MessageClass::ErrorResponse);
        assert_eq!(error_code(&msg), Some(401));
        client.nonce = Some(nonce_of(&msg));
        msg
    }

    pub(super) fn signed_bytes(
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
    pub(super) fn signed(
        &mut self,
        client: &Client,
        method: MessageMethod,
        attrs: Vec<StunAttribute>,
    ) -> StunMessage {
        let (tid, bytes) = self.signed_bytes(client, method, attrs);
        assert_eq!(self.packet(client.from, &bytes), ClientOutcome::Handled);
        self.answer(client, tid, method)
    }

    pub(super) fn answer(
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
    pub(super) fn signed_error(
        &mut self,
        client: &Client,
        method: MessageMethod,
        attrs: Vec<StunAttribute>,
    ) -> u16 {
        let msg = self.signed(client, method, attrs);
        assert_eq!(msg.class(), MessageClass::ErrorResponse, "{msg:?}");
        error_code(&msg).expect("ERROR-CODE")
    }

    pub(super) fn signed_ok(
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
    pub(super) fn allocate_error(&mut self, client: &mut Client, extra: Vec<StunAttribute>) -> u16 {
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
    pub(super) fn allocate(&mut self, client: &mut Client, extra: Vec<StunAttribute>) -> Allocated {
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
    pub(super) fn delete(&mut self, client: &Client, relays: &[RelayId]) {
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

    pub(super) fn create_permission(
        &mut self,
        client: &Client,
        peers: &[SocketAddr],
    ) -> StunMessage {
        let attrs = peers
            .iter()
            .map(|&p| XorPeerAddress::from(p).into())
            .collect();
        self.signed(client, CREATE_PERMMISSION, attrs)
    }

    pub(super) fn channel_bind(
        &mut self,
        client: &Client,
        number: u16,
        peer: SocketAddr,
    ) -> StunMessage {
        self.signed(
            client,
            CHANNEL_BIND,
            vec![
                ChannelNumber::new(number).into(),
                XorPeerAddress::from(peer).into(),
            ],
        )
    }

    pub(super) fn send_indication(
        &mut self,
        client: &Client,
        peer: SocketAddr,
        payload: &[u8],
    ) -> (Vec<u8>, ClientOutcome) {
        let tid = self.tid();
        let bytes = kit::send_indication(*tid.as_bytes(), peer, payload);
        let outcome = self.packet(client.from, &bytes);
        self.assert_no_commands();
        (bytes, outcome)
    }

    pub(super) fn channel_data(
        &mut self,
        client: &Client,
        number: u16,
        payload: &[u8],
    ) -> (Vec<u8>, ClientOutcome) {
        let bytes = kit::channel_data(number, payload);
        let outcome = self.packet(client.from, &bytes);
        self.assert_no_commands();
        (bytes, outcome)
    }

    pub(super) fn peer_packet(
        &mut self,
        relay: RelayId,
        from: SocketAddr,
        len: usize,
    ) -> Option<PeerRoute> {
        self.server.handle_peer_packet(relay, from, len, self.now)
    }

    pub(super) fn malformed(&self) -> u64 {
        Counters::get(&self.counters.malformed)
    }

    pub(super) fn dropped(&self, reason: DropReason) -> u64 {
        Counters::get(&self.counters.dropped[reason as usize])
    }

    pub(super) fn auth_failures(&self, reason: AuthFailure) -> u64 {
        Counters::get(&self.counters.auth_failures[reason as usize])
    }

    pub(super) fn requests(&self, method: MethodLabel, code: u16) -> u64 {
        Counters::get(&self.counters.requests[method as usize][crate::metrics::result_index(code)])
    }

    pub(super) fn quota_rejections(&self, kind: QuotaKind) -> u64 {
        Counters::get(&self.counters.quota_rejections[kind as usize])
    }
}

pub(super) fn check_closes(commands: Vec<Command>, relays: &[RelayId]) {
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
pub(super) fn assert_relayed(
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
