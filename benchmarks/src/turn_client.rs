//! One client's control exchanges, without sockets: TURN (with the long-term 401 challenge
//! and TURN REST credentials) or the floor's mapping requests.
//!
//! The driver hands a [`Session`] every datagram its socket receives and sends whatever the
//! session returns; retransmission is driven by [`Session::on_timer`].

use crate::floor;
use icegate_common::credentials::Secret;
use icegate_testkit as kit;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Which server protocol a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TURN over UDP.
    Turn,
    /// The floor forwarder's mapping requests.
    Floor,
}

/// What a session does once allocated.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// CreatePermission and ChannelBind to `peer`, then carry data.
    Channel {
        /// The peer that data goes to.
        peer: SocketAddrV4,
        /// The channel number to bind.
        channel: u16,
    },
    /// Release the allocation at once (Refresh with lifetime 0).
    Cycle {
        /// The peer a floor mapping names (unused by TURN).
        peer: SocketAddrV4,
    },
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing sent yet.
    Start,
    /// Allocate without credentials sent, waiting for the 401.
    Challenge,
    /// Authenticated Allocate (or floor map) sent.
    Allocate,
    /// CreatePermission sent.
    Permission,
    /// ChannelBind sent.
    Bind,
    /// Ready to carry data.
    Ready,
    /// Refresh(0) (or floor unmap) sent.
    Release,
    /// Allocated and released.
    Done,
    /// Gave up; see [`Session::error`].
    Failed,
}

/// The TURN REST credentials of one client.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    /// Mints `EXPIRY:user` credentials under `secret`.
    pub fn rest(secret: &Secret, user: &str, expiry_unix: u64) -> Self {
        let (username, password) = kit::rest_credentials(secret.expose(), user, expiry_unix);
        Self { username, password }
    }
}

/// Time before a request is sent again.
const RETRANSMIT: Duration = Duration::from_millis(500);
/// Sends of one request before giving up.
const TRIES: u8 = 7;

/// One client's control state.
pub struct Session {
    proto: Protocol,
    plan: Plan,
    creds: Credentials,
    /// The long-term key (MD5), once the realm is known.
    key: Option<[u8; 16]>,
    realm: Option<String>,
    nonce: Option<String>,
    /// Where the session is.
    pub phase: Phase,
    /// The relayed address, once allocated.
    pub relay: Option<SocketAddrV4>,
    /// Why the session failed.
    pub error: Option<String>,
    request: Vec<u8>,
    tid: [u8; 12],
    serial: u32,
    id: u32,
    sent_at: Instant,
    tries: u8,
}

impl Session {
    /// A session for client `id`.
    pub fn new(proto: Protocol, plan: Plan, creds: Credentials, id: u32) -> Self {
        Self {
            proto,
            plan,
            creds,
            key: None,
            realm: None,
            nonce: None,
            phase: Phase::Start,
            relay: None,
            error: None,
            request: Vec::new(),
            tid: [0; 12],
            serial: 0,
            id,
            sent_at: Instant::now(),
            tries: 0,
        }
    }

    /// Starts over as a new client on a new socket. The long-term key (from the
    /// credentials and the realm) is kept, as a client keeps its password; the nonce is not.
    pub fn restart(&mut self) {
        self.phase = Phase::Start;
        self.relay = None;
        self.nonce = None;
        self.error = None;
    }

    /// The first request.
    pub fn begin(&mut self, now: Instant) -> &[u8] {
        match self.proto {
            Protocol::Turn => self.send_turn(Phase::Challenge, now),
            Protocol::Floor => {
                let peer = match self.plan {
                    Plan::Channel { peer, .. } | Plan::Cycle { peer } => peer,
                };
                self.send_raw(
                    Phase::Allocate,
                    floor::control(floor::OP_MAP, peer).to_vec(),
                    now,
                )
            }
        }
    }

    /// Handles a datagram; returns the next request to send, if any.
    pub fn on_datagram(&mut self, bytes: &[u8], now: Instant) -> Option<&[u8]> {
        match self.proto {
            Protocol::Turn => self.on_turn(bytes, now),
            Protocol::Floor => self.on_floor(bytes, now),
        }
    }

    /// The request to send again, if the last one is overdue; fails the session after
    /// [`TRIES`] sends.
    pub fn on_timer(&mut self, now: Instant) -> Option<&[u8]> {
        if !self.waiting() || now.duration_since(self.sent_at) < RETRANSMIT {
            return None;
        }
        if self.tries >= TRIES {
            self.fail(format!("no answer in phase {:?}", self.phase));
            return None;
        }
        self.tries += 1;
        self.sent_at = now;
        Some(&self.request)
    }

    /// Whether a request is outstanding.
    pub fn waiting(&self) -> bool {
        matches!(
            self.phase,
            Phase::Challenge | Phase::Allocate | Phase::Permission | Phase::Bind | Phase::Release
        )
    }

    fn fail(&mut self, why: String) {
        self.phase = Phase::Failed;
        self.error = Some(why);
    }

    fn send_raw(&mut self, phase: Phase, bytes: Vec<u8>, now: Instant) -> &[u8] {
        self.phase = phase;
        self.request = bytes;
        self.sent_at = now;
        self.tries = 1;
        &self.request
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.serial = self.serial.wrapping_add(1);
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(b"ibnc");
        t[4..8].copy_from_slice(&self.id.to_be_bytes());
        t[8..].copy_from_slice(&self.serial.to_be_bytes());
        t
    }

    /// Builds and records the request of `phase`.
    fn send_turn(&mut self, phase: Phase, now: Instant) -> &[u8] {
        let tid = self.next_tid();
        self.tid = tid;
        let mut msg = match (phase, self.plan) {
            (Phase::Challenge | Phase::Allocate, _) => kit::allocate(tid),
            (Phase::Permission, Plan::Channel { peer, .. }) => {
                kit::create_permission(tid, &[SocketAddr::V4(peer)])
            }
            (Phase::Bind, Plan::Channel { peer, channel }) => {
                kit::channel_bind(tid, channel, SocketAddr::V4(peer))
            }
            _ => kit::refresh(tid, 0),
        };
        if phase != Phase::Challenge {
            if let (Some(key), Some(realm), Some(nonce)) = (&self.key, &self.realm, &self.nonce) {
                msg = msg
                    .credentials(&self.creds.username, realm, nonce)
                    .integrity(key);
            }
        }
        self.send_raw(phase, msg.finish(), now)
    }

    fn on_turn(&mut self, bytes: &[u8], now: Instant) -> Option<&[u8]> {
        // Cheap filters first: a STUN response (class bit set) to our outstanding request.
        if !self.waiting() || bytes.len() < 20 || bytes[0] & 0xC0 != 0 || bytes[8..20] != self.tid {
            return None;
        }
        let Some(msg) = kit::Reply::parse(bytes) else {
            self.fail(format!(
                "decode: not one STUN message ({} bytes)",
                bytes.len()
            ));
            return None;
        };
        if msg.class == kit::Class::Error {
            let code = msg.error_code().unwrap_or(0);
            let retry = match (code, self.phase) {
                (401, Phase::Challenge) => Phase::Allocate,
                // Stale nonce: the same request again with the new one.
                (438, phase) => phase,
                _ => {
                    self.fail(format!("error {code} in phase {:?}", self.phase));
                    return None;
                }
            };
            if let Some(realm) = msg.realm() {
                if self.realm.as_deref() != Some(realm.as_str()) {
                    self.key = Some(kit::long_term_key_md5(
                        &self.creds.username,
                        &realm,
                        &self.creds.password,
                    ));
                    self.realm = Some(realm);
                }
            }
            self.nonce = msg.nonce().or(self.nonce.take());
            if self.key.is_none() || self.nonce.is_none() {
                self.fail(format!("{code} without usable realm and nonce"));
                return None;
            }
            return Some(self.send_turn(retry, now));
        }
        let next = match self.phase {
            Phase::Allocate => {
                self.relay = match msg.xor_relayed().first() {
                    Some(SocketAddr::V4(v4)) => Some(*v4),
                    _ => None,
                };
                if self.relay.is_none() {
                    self.fail("Allocate success without an IPv4 relayed address".into());
                    return None;
                }
                match self.plan {
                    Plan::Channel { .. } => Phase::Permission,
                    Plan::Cycle { .. } => Phase::Release,
                }
            }
            Phase::Permission => Phase::Bind,
            Phase::Bind => {
                self.phase = Phase::Ready;
                return None;
            }
            Phase::Release => {
                self.phase = Phase::Done;
                return None;
            }
            _ => return None,
        };
        Some(self.send_turn(next, now))
    }

    fn on_floor(&mut self, bytes: &[u8], now: Instant) -> Option<&[u8]> {
        let (op, addr) = floor::parse_control(bytes)?;
        match (self.phase, op) {
            (Phase::Allocate, o) if o == floor::OP_MAP | floor::REPLY => {
                if addr.port() == 0 {
                    self.fail("floor could not map".into());
                    return None;
                }
                self.relay = Some(addr);
                match self.plan {
                    Plan::Channel { .. } => {
                        self.phase = Phase::Ready;
                        None
                    }
                    Plan::Cycle { peer } => Some(self.send_raw(
                        Phase::Release,
                        floor::control(floor::OP_UNMAP, peer).to_vec(),
                        now,
                    )),
                }
            }
            (Phase::Release, o) if o == floor::OP_UNMAP | floor::REPLY => {
                self.phase = Phase::Done;
                None
            }
            _ => None,
        }
    }
}
