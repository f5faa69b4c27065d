//! The user agent: registration, outgoing and incoming INVITE sessions, over one WebSocket.
//!
//! ```text
//!  outgoing:  invite ─► [Calling] ─1xx─► [Proceeding] ─2xx─► [Confirmed] ─bye/BYE─► gone
//!                │ 401/407: ACK, resend with credentials     │ reinvite / their re-INVITE
//!                └─ cancel ─► [Cancelling] (CANCEL once a 1xx came) ─487─► gone
//!  incoming:  INVITE ─► [Incoming] ─answer─► [Confirmed] (200 resent until ACK) ─► ...
//!                        │ reject / their CANCEL ─► gone
//! ```
//!
//! Call order: after `handle_message`, `handle_timeout`, `handle_disconnect` or any command,
//! drain [`UserAgent::poll_output`] until `None`, then re-arm the timer from
//! [`UserAgent::poll_timeout`]. Every [`Output::Send`] goes on the SIP WebSocket, in order.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::sip::builder::{self, Local, ALLOW, BRANCH_COOKIE};
use crate::sip::call_key::CallKey;
use crate::sip::dialog::Dialog;
use crate::sip::digest::Challenge;
use crate::sip::header::NameAddr;
use crate::sip::info;
use crate::sip::message::{Message, ParseError, StartLine};
use crate::sip::method::{is_token_byte, Method};
use crate::sip::registration::Registration;
use crate::sip::transaction::{key_of, ClientTx, Purpose, Transactions};

/// The UA's identity and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UaConfig {
    /// The PJSIP endpoint / digest user name (`icegate`).
    pub user: String,
    /// The digest password.
    pub password: String,
    /// Asterisk's domain or host: REGISTER goes to `sip:domain`, calls to `sip:ext@domain`.
    pub domain: String,
    /// The host of our Via and Contact; a random `<hex>.invalid` name when `None` (RFC 7118 §5.2).
    pub contact_host: Option<String>,
    /// The User-Agent header.
    pub user_agent: String,
    /// T1, the RTT estimate (RFC 3261 §17.1.1.1): Timers B/F/H are 64·T1.
    pub t1: Duration,
    /// T2, the cap of the 2xx retransmission interval (§13.3.1.4).
    pub t2: Duration,
    /// How long a REGISTER waits for its final response before it counts as failed and is
    /// retried. Shorter than Timer F (64·T1 = 32 s): Asterisk that is still loading accepts
    /// the WebSocket but drops the REGISTER unanswered, and a registrar on a reliable
    /// transport that has not answered in seconds will not.
    pub register_timeout: Duration,
    /// How long an outgoing call may stay unanswered after a provisional before the UA
    /// cancels it itself (RFC 3261 leaves this to the TU; without it an INVITE that got only
    /// `100 Trying` would live forever).
    pub max_ring: Duration,
    /// Calls at once; more incoming INVITEs get 486.
    pub max_calls: usize,
    /// Whether the WebSocket runs over TLS (`wss://`): the Via says `WSS` then.
    pub secure: bool,
}

impl UaConfig {
    /// A configuration with RFC 3261's default timers.
    pub fn new(user: &str, password: &str, domain: &str) -> UaConfig {
        UaConfig {
            user: user.to_owned(),
            password: password.to_owned(),
            domain: domain.to_owned(),
            contact_host: None,
            user_agent: concat!("icegate-signal/", env!("CARGO_PKG_VERSION")).to_owned(),
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            register_timeout: Duration::from_secs(5),
            max_ring: Duration::from_secs(180),
            max_calls: 64,
            secure: false,
        }
    }
}

/// Who ended an established call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// Asterisk sent BYE.
    Remote,
    /// Our BYE completed.
    Local,
    /// The dialog died: no ACK to our 2xx, 481/408 to a re-INVITE, or the WebSocket closed.
    Lost,
}

/// A From or To party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// The display name without quotes, if any.
    pub display: Option<String>,
    /// The URI.
    pub uri: String,
}

impl Party {
    fn from_header(value: Option<&str>) -> Party {
        let addr = value.and_then(NameAddr::parse);
        Party {
            display: addr
                .as_ref()
                .and_then(|a| a.display.as_deref())
                .map(|d| d.trim_matches('"').to_owned()),
            uri: addr.map(|a| a.uri).unwrap_or_default(),
        }
    }
}

/// What the call layer learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The binding is in place for `expires` seconds (refreshed by the UA).
    Registered {
        /// Granted seconds.
        expires: u32,
    },
    /// A REGISTER with expiry 0 succeeded.
    Unregistered,
    /// REGISTER failed: 401/403 (credentials), 408 (no answer), 503 (WebSocket closed)...
    RegistrationFailed {
        /// The final status, or 408/503 for timeout/transport.
        code: u16,
    },
    /// 180/183 for an outgoing call: it rings.
    Provisional {
        /// The call.
        call_key: CallKey,
        /// 180, 183, ...
        code: u16,
    },
    /// 2xx for an outgoing call; the ACK is sent.
    Answered {
        /// The call.
        call_key: CallKey,
        /// Asterisk's SDP answer.
        sdp: String,
    },
    /// An outgoing call ended without being answered.
    Failed {
        /// The call.
        call_key: CallKey,
        /// 486, 404, 487 (cancelled), 403, 408 (timeout), 503 (WebSocket closed), ...
        code: u16,
        /// The reason phrase.
        reason: String,
    },
    /// An established call ended.
    Ended {
        /// The call.
        call_key: CallKey,
        /// Who ended it.
        by: EndedBy,
    },
    /// Asterisk calls us (100 Trying is already sent).
    IncomingCall {
        /// The key for answering, rejecting, ringing.
        call_key: CallKey,
        /// The caller.
        from: Party,
        /// The callee.
        to: Party,
        /// The Request-URI: `Dial(PJSIP/alice@icegate)` puts the user there (and in `To`).
        request_uri: String,
        /// The SDP offer; `None` for an offerless INVITE (the answer then comes in the ACK).
        sdp: Option<String>,
    },
    /// Asterisk cancelled an incoming call before it was answered (487 sent).
    IncomingCancelled {
        /// The call.
        call_key: CallKey,
    },
    /// Asterisk sent a re-INVITE with a changed offer; answer with `answer_incoming`.
    ReinviteOffer {
        /// The call.
        call_key: CallKey,
        /// The new offer; `None` if Asterisk asks us for an offer.
        sdp: Option<String>,
    },
    /// Our re-INVITE was answered.
    ReinviteAnswered {
        /// The call.
        call_key: CallKey,
        /// Asterisk's SDP answer.
        sdp: String,
    },
    /// Our re-INVITE was refused; the call goes on with the old session.
    ReinviteFailed {
        /// The call.
        call_key: CallKey,
        /// The status.
        code: u16,
    },
    /// A DTMF digit in an INFO from Asterisk (a key pressed on the PBX side; 200 is sent).
    Dtmf {
        /// The call.
        call_key: CallKey,
        /// The digit (`0-9 * # A-D`).
        digit: char,
        /// How long it was pressed, if the INFO says.
        duration_ms: Option<u32>,
    },
    /// The SDP answer in an ACK, after we offered in a 2xx to an offerless INVITE.
    LateAnswer {
        /// The call.
        call_key: CallKey,
        /// The answer.
        sdp: String,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this SIP message as one text frame on the WebSocket.
    Send(String),
    /// Tell the call layer.
    Event(Event),
}

/// Why a command from the call layer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No call with this key.
    #[error("no such call")]
    UnknownCall,
    /// `invite` with a key in use or an `Incoming` key.
    #[error("call key in use or not an outgoing key")]
    BadCallKey,
    /// The call is not in a state where the command applies.
    #[error("not possible in this call state: {0}")]
    WrongState(&'static str),
    /// The target has characters that cannot go into a SIP URI.
    #[error("invalid call target")]
    InvalidTarget,
    /// A rejection code outside 300–699.
    #[error("invalid status code {0}")]
    InvalidCode(u16),
    /// The call limit is reached.
    #[error("too many calls")]
    TooManyCalls,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UaStats {
    /// Frames that were not SIP.
    pub malformed: u64,
    /// Responses and requests that matched no transaction or dialog.
    pub unmatched: u64,
    /// DTMF INFOs Asterisk refused (e.g. 415 from a peer without INFO DTMF).
    pub info_refused: u64,
}

/// The duration written into DTMF INFOs: Asterisk plays each digit for this long.
const DTMF_INFO_DURATION_MS: u32 = 160;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// UAC: INVITE sent, nothing heard.
    Calling,
    /// UAC: a provisional came.
    Proceeding,
    /// UAC: cancel asked; `sent` once the CANCEL went out, `notify` if `Failed` is still owed.
    Cancelling { sent: bool, notify: bool },
    /// UAS: INVITE received, not answered.
    Incoming,
    /// The dialog is established (UAS: possibly still waiting for the ACK).
    Confirmed,
}

/// A 2xx we keep resending until its ACK (RFC 3261 §13.3.1.4).
#[derive(Debug)]
struct AwaitAck {
    response: Message,
    cseq: u32,
    next: Instant,
    interval: Duration,
    give_up: Instant,
    /// Whether our 2xx carried the offer (offerless INVITE): the ACK then holds the answer.
    expects_sdp: bool,
}

#[derive(Debug)]
struct Call {
    state: CallState,
    dialog: Option<Dialog>,
    /// The INVITE or re-INVITE from Asterisk still waiting for our final response.
    pending_server: Option<Message>,
    /// Our tag for incoming calls.
    local_tag: String,
    /// The ACK sent for a 2xx, resent when the 2xx is retransmitted.
    last_ack: Option<(u32, String)>,
    await_ack: Option<AwaitAck>,
    /// `bye` was asked while waiting for the ACK to our 2xx (§15: no BYE before it).
    bye_after_ack: bool,
    ring_deadline: Option<Instant>,
    local_sdp: Option<String>,
    /// Our re-INVITE's offer, which becomes `local_sdp` only when Asterisk accepts it.
    offered_sdp: Option<String>,
    remote_sdp: Option<String>,
}

impl Call {
    fn new(state: CallState, local_tag: String) -> Call {
        Call {
            state,
            dialog: None,
            pending_server: None,
            local_tag,
            last_ack: None,
            await_ack: None,
            bye_after_ack: false,
            ring_deadline: None,
            local_sdp: None,
            offered_sdp: None,
            remote_sdp: None,
        }
    }
}

/// One SIP user agent on one WebSocket to Asterisk. Sans-IO: no socket, no clock.
pub struct UserAgent {
    config: UaConfig,
    local: Local,
    aor: String,
    registration: Registration,
    txs: Transactions,
    calls: HashMap<CallKey, Call>,
    next_incoming: u64,
    rng: StdRng,
    out: VecDeque<Output>,
    stats: UaStats,
}

impl UserAgent {
    /// A UA; `seed` makes its tags, branches and Call-IDs reproducible in tests.
    pub fn new(config: UaConfig, seed: u64) -> UserAgent {
        let mut rng = StdRng::seed_from_u64(seed);
        let host = config
            .contact_host
            .clone()
            .unwrap_or_else(|| format!("{}.invalid", hex(&mut rng, 4)));
        let local = Local {
            contact: format!("sip:{}@{host};transport=ws", config.user),
            via_host: host,
            via_transport: if config.secure { "WSS" } else { "WS" },
            user_agent: config.user_agent.clone(),
        };
        let registration = Registration::new(hex(&mut rng, 12), hex(&mut rng, 8));
        UserAgent {
            aor: format!("sip:{}@{}", config.user, config.domain),
            config,
            local,
            registration,
            txs: Transactions::default(),
            calls: HashMap::new(),
            next_incoming: 1,
            rng,
            out: VecDeque::new(),
            stats: UaStats::default(),
        }
    }

    // ---- getters ----

    /// Our Contact URI.
    pub fn contact(&self) -> &str {
        &self.local.contact
    }

    /// Client transactions in flight.
    pub fn live_transactions(&self) -> usize {
        self.txs.len()
    }

    /// Calls the UA tracks (ringing, established, or being torn down).
    pub fn live_calls(&self) -> usize {
        self.calls.len()
    }

    /// Whether the registration binding is in place.
    pub fn is_registered(&self) -> bool {
        self.registration.registered
    }

    /// The SIP Call-ID of a call (known from `invite` on), to link it to its ARI channel.
    pub fn call_id(&self, call_key: CallKey) -> Option<&str> {
        let call = self.calls.get(&call_key)?;
        if let Some(dialog) = &call.dialog {
            return Some(&dialog.call_id);
        }
        if let Some(request) = &call.pending_server {
            return Some(request.call_id());
        }
        self.txs.call_id_of(call_key)
    }

    /// Counters.
    pub fn stats(&self) -> UaStats {
        self.stats
    }

    // ---- poll ----

    /// The next thing to send or report.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`UserAgent::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.calls.values().flat_map(|c| {
            [
                c.ring_deadline,
                c.await_ack.as_ref().map(|a| a.next.min(a.give_up)),
            ]
        });
        [self.txs.next_deadline(), self.registration.refresh_at]
            .into_iter()
            .chain(calls)
            .flatten()
            .min()
    }

    // ---- inputs ----

    /// A frame from the SIP WebSocket. Malformed input is counted and returned as an error;
    /// the UA's state is unchanged by it.
    pub fn handle_message(&mut self, frame: &[u8], now: Instant) -> Result<(), ParseError> {
        let message = match Message::parse(frame) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e);
            }
        };
        match message.start {
            StartLine::Request { .. } => self.on_request(message, now),
            StartLine::Response { .. } => self.on_response(message, now),
        }
        Ok(())
    }

    /// Timers: transaction timeouts, 2xx retransmission, ring limit, registration refresh.
    pub fn handle_timeout(&mut self, now: Instant) {
        for tx in self.txs.expire(now) {
            self.on_tx_timeout(tx, now);
        }
        if self.registration.refresh_at.is_some_and(|t| t <= now) {
            self.registration.refresh_at = None;
            let expires = self.registration.expires;
            self.send_register(expires, now);
        }
        let mut keys: Vec<CallKey> = self.calls.keys().copied().collect();
        keys.sort();
        for key in keys {
            self.call_timers(key, now);
        }
    }

    /// The WebSocket closed: every transaction, call and the binding are gone.
    pub fn handle_disconnect(&mut self) {
        let was_registered = self.registration.registered || self.registration.in_flight.is_some();
        self.registration.on_failure();
        self.registration.queued = None;
        for tx in self.txs.drain() {
            if let Purpose::Bye { call, notify: true } = tx.purpose {
                self.event(Event::Ended {
                    call_key: call,
                    by: EndedBy::Local,
                });
            }
        }
        if was_registered {
            self.event(Event::RegistrationFailed { code: 503 });
        }
        let mut calls: Vec<(CallKey, Call)> = self.calls.drain().collect();
        calls.sort_by_key(|(k, _)| *k);
        for (key, call) in calls {
            let event = match call.state {
                CallState::Calling | CallState::Proceeding => Some(failed(key, 503)),
                CallState::Cancelling { notify, .. } => notify.then(|| failed(key, 487)),
                CallState::Incoming => Some(Event::IncomingCancelled { call_key: key }),
                CallState::Confirmed => Some(Event::Ended {
                    call_key: key,
                    by: EndedBy::Lost,
                }),
            };
            if let Some(event) = event {
                self.event(event);
            }
        }
    }

    // ---- commands ----

    /// REGISTER with `expires` seconds (0 unregisters); refreshed before it lapses.
    pub fn register(&mut self, expires: u32, now: Instant) {
        if self.registration.in_flight.is_some() {
            self.registration.queued = Some(expires);
        } else {
            self.send_register(expires, now);
        }
    }

    /// Call `target` (an extension, or a user part) at Asterisk with `sdp` as the offer.
    pub fn invite(
        &mut self,
        call_key: CallKey,
        target: &str,
        sdp: &str,
        now: Instant,
    ) -> Result<(), CommandError> {
        if matches!(call_key, CallKey::Incoming(_)) || self.calls.contains_key(&call_key) {
            return Err(CommandError::BadCallKey);
        }
        if target.is_empty() || !target.bytes().all(is_token_byte) {
            return Err(CommandError::InvalidTarget);
        }
        if self.calls.len() >= self.config.max_calls {
            return Err(CommandError::TooManyCalls);
        }
        let uri = format!("sip:{target}@{}", self.config.domain);
        let from = NameAddr::new(self.aor.clone()).with_tag(&hex(&mut self.rng, 8));
        let call_id = hex(&mut self.rng, 12);
        let branch = self.branch();
        let mut m = self.local.request(
            Method::Invite,
            &uri,
            &branch,
            &from,
            &NameAddr::new(uri.clone()),
            &call_id,
            1,
        );
        m.push("Contact", self.local.contact_header());
        m.push("Allow", ALLOW);
        m.push("User-Agent", self.local.user_agent.clone());
        m.set_body("application/sdp", sdp);
        let mut call = Call::new(CallState::Calling, String::new());
        call.local_sdp = Some(sdp.to_owned());
        self.calls.insert(call_key, call);
        self.start_tx(Purpose::Invite(call_key), m, now);
        Ok(())
    }

    /// Cancel an outgoing call that is not answered yet.
    pub fn cancel(&mut self, call_key: CallKey, now: Instant) -> Result<(), CommandError> {
        let call = self
            .calls
            .get_mut(&call_key)
            .ok_or(CommandError::UnknownCall)?;
        match call.state {
            // §9.1: no CANCEL before a provisional; it goes out when one arrives.
            CallState::Calling => {
                call.state = CallState::Cancelling {
                    sent: false,
                    notify: true,
                };
                Ok(())
            }
            CallState::Proceeding => {
                call.state = CallState::Cancelling {
                    sent: true,
                    notify: true,
                };
                self.send_cancel(call_key, now);
                Ok(())
            }
            CallState::Cancelling { .. } => Ok(()),
            CallState::Incoming | CallState::Confirmed => {
                Err(CommandError::WrongState("only unanswered outgoing calls"))
            }
        }
    }

    /// Hang up an established call.
    pub fn bye(&mut self, call_key: CallKey, now: Instant) -> Result<(), CommandError> {
        let call = self
            .calls
            .get_mut(&call_key)
            .ok_or(CommandError::UnknownCall)?;
        if call.state != CallState::Confirmed {
            return Err(CommandError::WrongState("only established calls"));
        }
        if call.await_ack.is_some() {
            call.bye_after_ack = true;
            return Ok(());
        }
        self.send_bye(call_key, true, now);
        Ok(())
    }

    /// Answer Asterisk's pending INVITE (initial or re-INVITE) with `sdp`.
    pub fn answer_incoming(
        &mut self,
        call_key: CallKey,
        sdp: &str,
        now: Instant,
    ) -> Result<(), CommandError> {
        let contact = self.local.contact_header();
        let t1 = self.config.t1;
        let call = self
            .calls
            .get_mut(&call_key)
            .ok_or(CommandError::UnknownCall)?;
        let request = call
            .pending_server
            .take()
            .ok_or(CommandError::WrongState("no INVITE to answer"))?;
        let mut ok = builder::response(&request, 200, Some(&call.local_tag));
        if call.state == CallState::Incoming {
            // §12.1.1: the dialog-creating response echoes the Record-Route set.
            for rr in request.headers_named("Record-Route") {
                ok.push("Record-Route", rr);
            }
        }
        ok.push("Contact", contact);
        ok.push("Allow", ALLOW);
        ok.set_body("application/sdp", sdp);
        call.state = CallState::Confirmed;
        call.local_sdp = Some(sdp.to_owned());
        call.await_ack = Some(AwaitAck {
            cseq: request.cseq().map(|(n, _)| n).unwrap_or_default(),
            response: ok.clone(),
            next: now + t1,
            interval: t1,
            give_up: now + 64 * t1,
            expects_sdp: request.sdp().is_none(),
        });
        self.send(&ok);
        Ok(())
    }

    /// Refuse Asterisk's pending INVITE with `code` (300–699); a refused re-INVITE keeps the call.
    pub fn reject_incoming(
        &mut self,
        call_key: CallKey,
        code: u16,
        _now: Instant,
    ) -> Result<(), CommandError> {
        if !(300..=699).contains(&code) {
            return Err(CommandError::InvalidCode(code));
        }
        let call = self
            .calls
            .get_mut(&call_key)
            .ok_or(CommandError::UnknownCall)?;
        let request = call
            .pending_server
            .take()
            .ok_or(CommandError::WrongState("no INVITE to reject"))?;
        let response = builder::response(&request, code, Some(&call.local_tag));
        if call.state == CallState::Incoming {
            // Over a reliable transport the ACK needs no retransmission handling (Timer I = 0).
            self.forget(call_key);
        }
        self.send(&response);
        Ok(())
    }

    /// Send 180 Ringing for an incoming call.
    pub fn ringing_incoming(
        &mut self,
        call_key: CallKey,
        _now: Instant,
    ) -> Result<(), CommandError> {
        let contact = self.local.contact_header();
        let call = self.calls.get(&call_key).ok_or(CommandError::UnknownCall)?;
        let request = match (&call.state, &call.pending_server) {
            (CallState::Incoming, Some(request)) => request,
            _ => return Err(CommandError::WrongState("only unanswered incoming calls")),
        };
        let mut ringing = builder::response(request, 180, Some(&call.local_tag));
        for rr in request.headers_named("Record-Route") {
            ringing.push("Record-Route", rr);
        }
        ringing.push("Contact", contact);
        self.send(&ringing);
        Ok(())
    }

    /// Send DTMF digits as SIP INFO (`application/dtmf-relay`, one request per digit), for
    /// calls whose channel ARI cannot reach (the dialplan, not Stasis, handles them).
    pub fn send_dtmf_info(
        &mut self,
        call_key: CallKey,
        digits: &str,
        now: Instant,
    ) -> Result<(), CommandError> {
        let call = self.calls.get(&call_key).ok_or(CommandError::UnknownCall)?;
        if call.state != CallState::Confirmed || call.dialog.is_none() {
            return Err(CommandError::WrongState("only established calls"));
        }
        for digit in digits.chars() {
            let branch = self.branch();
            let Some(dialog) = self
                .calls
                .get_mut(&call_key)
                .and_then(|c| c.dialog.as_mut())
            else {
                break;
            };
            let mut info = dialog.request(&self.local, Method::Other("INFO".into()), &branch);
            info.push("User-Agent", self.local.user_agent.clone());
            info.set_body(
                "application/dtmf-relay",
                format!("Signal={digit}\r\nDuration={DTMF_INFO_DURATION_MS}\r\n"),
            );
            self.start_tx(Purpose::Info(call_key), info, now);
        }
        Ok(())
    }

    /// Send a re-INVITE with a new offer (ICE restart, hold).
    pub fn reinvite(
        &mut self,
        call_key: CallKey,
        sdp: &str,
        now: Instant,
    ) -> Result<(), CommandError> {
        let branch = self.branch();
        let busy = self.txs.invite_of(call_key).is_some();
        let call = self
            .calls
            .get_mut(&call_key)
            .ok_or(CommandError::UnknownCall)?;
        if call.state != CallState::Confirmed
            || busy
            || call.pending_server.is_some()
            || call.await_ack.is_some()
        {
            return Err(CommandError::WrongState("an offer is already pending"));
        }
        let Some(dialog) = call.dialog.as_mut() else {
            return Err(CommandError::WrongState("no dialog"));
        };
        let mut m = dialog.request(&self.local, Method::Invite, &branch);
        m.push("Contact", self.local.contact_header());
        m.push("Allow", ALLOW);
        m.push("User-Agent", self.local.user_agent.clone());
        m.set_body("application/sdp", sdp);
        call.offered_sdp = Some(sdp.to_owned());
        self.start_tx(Purpose::Reinvite(call_key), m, now);
        Ok(())
    }

    // ---- requests from Asterisk ----

    fn on_request(&mut self, request: Message, now: Instant) {
        let Some(method) = request.method().cloned() else {
            return;
        };
        match method {
            Method::Ack => self.on_ack(&request, now),
            Method::Cancel => self.on_cancel(&request),
            Method::Invite => {
                let to_tag = request
                    .header("To")
                    .and_then(NameAddr::parse)
                    .and_then(|t| t.tag().map(str::to_owned));
                match to_tag {
                    None => self.on_new_invite(request, now),
                    Some(_) => self.on_reinvite(request, now),
                }
            }
            Method::Bye => self.on_bye(&request),
            Method::Options => {
                let mut ok = builder::response(&request, 200, Some(&hex(&mut self.rng, 8)));
                ok.push("Allow", ALLOW);
                self.send(&ok);
            }
            Method::Other(name) if name.eq_ignore_ascii_case("INFO") => self.on_info(&request),
            Method::Register | Method::Other(_) => {
                let mut refused = builder::response(&request, 405, Some(&hex(&mut self.rng, 8)));
                refused.push("Allow", ALLOW);
                self.send(&refused);
            }
        }
    }

    fn on_new_invite(&mut self, request: Message, _now: Instant) {
        let branch = request.top_branch().unwrap_or_default();
        let retransmission = self.calls.values().any(|c| {
            c.pending_server
                .as_ref()
                .is_some_and(|p| p.top_branch() == Some(branch) && p.call_id() == request.call_id())
        });
        if retransmission {
            return;
        }
        let tag = hex(&mut self.rng, 8);
        if self.calls.len() >= self.config.max_calls {
            self.send(&builder::response(&request, 486, Some(&tag)));
            return;
        }
        let Some(dialog) = Dialog::as_uas(&request, &tag) else {
            // No From tag or no Contact: no dialog can be built from it (§8.2.6).
            self.send(&builder::response(&request, 400, Some(&tag)));
            return;
        };
        self.send(&builder::response(&request, 100, None));
        let key = CallKey::Incoming(self.next_incoming);
        self.next_incoming += 1;
        let event = Event::IncomingCall {
            call_key: key,
            from: Party::from_header(request.header("From")),
            to: Party::from_header(request.header("To")),
            request_uri: request.request_uri().unwrap_or_default().to_owned(),
            sdp: request.sdp().map(str::to_owned),
        };
        let mut call = Call::new(CallState::Incoming, tag);
        call.remote_sdp = request.sdp().map(str::to_owned);
        call.dialog = Some(dialog);
        call.pending_server = Some(request);
        self.calls.insert(key, call);
        self.event(event);
    }

    fn on_reinvite(&mut self, request: Message, now: Instant) {
        let Some(key) = self.call_of_request(&request) else {
            self.stats.unmatched += 1;
            self.send(&builder::response(&request, 481, None));
            return;
        };
        let ours_pending = self.txs.invite_of(key).is_some();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.state != CallState::Confirmed
            || ours_pending
            || call.pending_server.is_some()
            || call.await_ack.is_some()
        {
            // §14.2: an offer crossing ours.
            let busy = builder::response(&request, 491, None);
            self.send(&busy);
            return;
        }
        let seq = request.cseq().map(|(n, _)| n).unwrap_or_default();
        let Some(dialog) = call.dialog.as_mut() else {
            return;
        };
        if dialog.remote_seq.is_some_and(|last| seq <= last) {
            let stale = builder::response(&request, 500, None);
            self.send(&stale);
            return;
        }
        dialog.remote_seq = Some(seq);
        if let Some(target) = request
            .header("Contact")
            .and_then(NameAddr::parse)
            .map(|c| c.uri)
        {
            // §12.2.2: a re-INVITE refreshes the remote target.
            dialog.remote_target = target;
        }
        let offer = request.sdp().map(str::to_owned);
        let unchanged = match (&offer, &call.remote_sdp, &call.local_sdp) {
            (Some(new), Some(old), Some(_)) => origin_line(new) == origin_line(old),
            _ => false,
        };
        if unchanged {
            // RFC 3264 §8: same o= version, same session — a session-timer refresh.
            // Answer it with our current SDP instead of bothering the browser.
            let sdp = call.local_sdp.clone().unwrap_or_default();
            call.pending_server = Some(request);
            let _ = self.answer_incoming(key, &sdp, now);
            return;
        }
        call.remote_sdp = offer.clone().or(call.remote_sdp.take());
        self.send(&builder::response(&request, 100, None));
        if let Some(call) = self.calls.get_mut(&key) {
            call.pending_server = Some(request);
        }
        self.event(Event::ReinviteOffer {
            call_key: key,
            sdp: offer,
        });
    }

    fn on_ack(&mut self, ack: &Message, now: Instant) {
        let Some(key) = self.call_of_request(ack) else {
            // ACKs for our non-2xx answers land here: nothing to do (§17.2.1).
            return;
        };
        let seq = ack.cseq().map(|(n, _)| n);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(waiting) = call.await_ack.take_if(|a| Some(a.cseq) == seq) else {
            return;
        };
        let late_answer = waiting
            .expects_sdp
            .then(|| ack.sdp().map(str::to_owned))
            .flatten();
        if let Some(sdp) = &late_answer {
            call.remote_sdp = Some(sdp.clone());
        }
        let bye = std::mem::take(&mut call.bye_after_ack);
        if let Some(sdp) = late_answer {
            self.event(Event::LateAnswer { call_key: key, sdp });
        }
        if bye {
            self.send_bye(key, true, now);
        }
    }

    fn on_cancel(&mut self, cancel: &Message) {
        let branch = cancel.top_branch();
        let found = self.calls.iter().find_map(|(k, c)| {
            let p = c.pending_server.as_ref()?;
            (p.top_branch() == branch && p.call_id() == cancel.call_id()).then_some(*k)
        });
        let Some(key) = found else {
            self.stats.unmatched += 1;
            self.send(&builder::response(cancel, 481, None));
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let tag = call.local_tag.clone();
        let initial = call.state == CallState::Incoming;
        let Some(invite) = call.pending_server.take() else {
            return;
        };
        self.send(&builder::response(cancel, 200, Some(&tag)));
        self.send(&builder::response(&invite, 487, Some(&tag)));
        if initial {
            self.forget(key);
            self.event(Event::IncomingCancelled { call_key: key });
        }
    }

    fn on_bye(&mut self, bye: &Message) {
        let Some(key) = self.call_of_request(bye) else {
            self.stats.unmatched += 1;
            self.send(&builder::response(bye, 481, None));
            return;
        };
        self.send(&builder::response(bye, 200, None));
        if let Some(pending) = self
            .calls
            .get_mut(&key)
            .and_then(|c| c.pending_server.take())
        {
            // §15.1.2: requests still open in the dialog are answered 487.
            self.send(&builder::response(&pending, 487, None));
        }
        self.forget(key);
        self.event(Event::Ended {
            call_key: key,
            by: EndedBy::Remote,
        });
    }

    /// An INFO in a dialog: DTMF is reported (200), other bodies are refused (415).
    fn on_info(&mut self, request: &Message) {
        let Some(key) = self.call_of_request(request) else {
            self.stats.unmatched += 1;
            self.send(&builder::response(request, 481, None));
            return;
        };
        match info::parse(request.header("Content-Type"), &request.body) {
            Ok(parsed) => {
                self.send(&builder::response(request, 200, None));
                if let info::Info::Dtmf { digit, duration_ms } = parsed {
                    self.event(Event::Dtmf {
                        call_key: key,
                        digit,
                        duration_ms,
                    });
                }
            }
            Err(_) => {
                let mut refused = builder::response(request, 415, None);
                refused.push("Accept", info::ACCEPT);
                self.send(&refused);
            }
        }
    }

    /// The call whose dialog `request` (from Asterisk) belongs to.
    fn call_of_request(&self, request: &Message) -> Option<CallKey> {
        self.calls.iter().find_map(|(k, c)| {
            c.dialog
                .as_ref()
                .is_some_and(|d| d.matches_request(request))
                .then_some(*k)
        })
    }

    // ---- responses from Asterisk ----

    fn on_response(&mut self, response: Message, now: Instant) {
        let code = response.code().unwrap_or_default();
        let key = key_of(&response);
        if code < 200 {
            let Some(tx) = self.txs.get_mut(&key) else {
                self.stats.unmatched += 1;
                return;
            };
            if let Purpose::Invite(call) | Purpose::Reinvite(call) = tx.purpose {
                // Timer B stops once the INVITE is answered provisionally (§17.1.1.2).
                tx.deadline = None;
                if let Purpose::Invite(_) = tx.purpose {
                    self.on_invite_provisional(call, code, now);
                }
            }
            return;
        }
        let Some(tx) = self.txs.remove(&key) else {
            self.on_stray_final(&response);
            return;
        };
        if matches!(code, 401 | 407) && self.retry_with_credentials(&tx, &response, now) {
            return;
        }
        match tx.purpose {
            Purpose::Register => self.on_register_final(&response, now),
            Purpose::Invite(call) => self.on_invite_final(call, &tx.request, &response, now),
            Purpose::Reinvite(call) => self.on_reinvite_final(call, &tx.request, &response, now),
            Purpose::Cancel(_) => {}
            Purpose::Info(call) => {
                if matches!(code, 408 | 481) {
                    // §12.2.1.2: the dialog is gone.
                    self.forget(call);
                    self.event(Event::Ended {
                        call_key: call,
                        by: EndedBy::Lost,
                    });
                } else if code >= 300 {
                    self.stats.info_refused += 1;
                }
            }
            Purpose::Bye { call, notify } => {
                if notify {
                    self.event(Event::Ended {
                        call_key: call,
                        by: EndedBy::Local,
                    });
                }
            }
        }
    }

    /// A final response with no transaction: a retransmitted 2xx whose ACK must be resent.
    fn on_stray_final(&mut self, response: &Message) {
        let seq = response.cseq();
        let ack = self.calls.values().find_map(|c| {
            let (n, text) = c.last_ack.as_ref()?;
            let ours = c.dialog.as_ref()?.matches_response(response);
            (ours && seq == Some((*n, Method::Invite))).then(|| text.clone())
        });
        match ack {
            Some(text) if response.code().is_some_and(|c| c < 300) => {
                self.out.push_back(Output::Send(text))
            }
            _ => self.stats.unmatched += 1,
        }
    }

    /// §22.2: answer a 401/407 once (again only if the nonce went stale). Returns whether a new
    /// request went out.
    fn retry_with_credentials(&mut self, tx: &ClientTx, response: &Message, now: Instant) -> bool {
        let (challenge_header, answer_header) = match response.code() {
            Some(407) => ("Proxy-Authenticate", "Proxy-Authorization"),
            _ => ("WWW-Authenticate", "Authorization"),
        };
        let challenge = response
            .headers_named(challenge_header)
            .find_map(|v| Challenge::parse(v).ok());
        let Some(challenge) = challenge else {
            return false;
        };
        if tx.auth_tries >= 3 || (tx.auth_tries > 0 && !challenge.stale) {
            return false;
        }
        let method = tx.request.method().cloned().unwrap_or(Method::Ack);
        if method == Method::Invite {
            // §17.1.1.3: the INVITE transaction ACKs its non-2xx response itself.
            self.send(&builder::ack_for_failure(&tx.request, response));
        }
        let (seq, _) = tx.request.cseq().unwrap_or((0, Method::Ack));
        let seq = seq.saturating_add(1);
        let mut request = tx.request.clone();
        let branch = self.branch();
        request.set(
            "Via",
            format!("SIP/2.0/WS {};branch={branch};rport", self.local.via_host),
        );
        request.set("CSeq", format!("{seq} {method}"));
        request.remove("Authorization");
        request.remove("Proxy-Authorization");
        let uri = request.request_uri().unwrap_or_default().to_owned();
        let cnonce = hex(&mut self.rng, 8);
        let value = challenge.authorize(
            &self.config.user,
            &self.config.password,
            method.as_str(),
            &uri,
            &cnonce,
            1,
        );
        // Before Content-Type, where the recorded client put it.
        let at = request
            .headers
            .iter()
            .position(|(n, _)| n == "Content-Type")
            .unwrap_or(request.headers.len());
        request
            .headers
            .insert(at, (answer_header.to_owned(), value));
        match tx.purpose {
            Purpose::Register => {
                self.registration.cseq = seq;
                self.registration.in_flight = Some(branch.clone());
            }
            Purpose::Invite(k)
            | Purpose::Reinvite(k)
            | Purpose::Info(k)
            | Purpose::Bye { call: k, .. } => {
                if let Some(d) = self.calls.get_mut(&k).and_then(|c| c.dialog.as_mut()) {
                    d.local_seq = d.local_seq.max(seq);
                }
            }
            Purpose::Cancel(_) => return false,
        }
        let deadline = Some(now + 64 * self.config.t1);
        self.send(&request);
        self.txs.insert(ClientTx {
            purpose: tx.purpose,
            request,
            deadline,
            auth_tries: tx.auth_tries + 1,
        });
        true
    }

    fn on_register_final(&mut self, response: &Message, now: Instant) {
        let code = response.code().unwrap_or_default();
        let event = if (200..300).contains(&code) {
            match self
                .registration
                .on_success(response, &self.local.contact, now)
            {
                0 => Event::Unregistered,
                expires => Event::Registered { expires },
            }
        } else if code == 423 && self.registration.expires > 0 {
            // §10.2.8: retry with the registrar's Min-Expires.
            let min = response
                .header("Min-Expires")
                .and_then(|v| v.trim().parse::<u32>().ok())
                .filter(|m| *m > self.registration.expires);
            if let Some(min) = min {
                self.registration.in_flight = None;
                self.send_register(min, now);
                return;
            }
            self.registration.on_rejected(now);
            Event::RegistrationFailed { code }
        } else {
            self.registration.on_rejected(now);
            Event::RegistrationFailed { code }
        };
        self.event(event);
        if let Some(expires) = self.registration.queued.take() {
            self.send_register(expires, now);
        }
    }

    fn on_invite_provisional(&mut self, key: CallKey, code: u16, now: Instant) {
        let max_ring = self.config.max_ring;
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        match call.state {
            CallState::Calling => {
                call.state = CallState::Proceeding;
                call.ring_deadline = Some(now + max_ring);
            }
            CallState::Cancelling {
                sent: false,
                notify,
            } => {
                call.state = CallState::Cancelling { sent: true, notify };
                self.send_cancel(key, now);
                return;
            }
            _ => {}
        }
        if code > 100 && call.state == CallState::Proceeding {
            self.event(Event::Provisional {
                call_key: key,
                code,
            });
        }
    }

    fn on_invite_final(
        &mut self,
        key: CallKey,
        invite: &Message,
        response: &Message,
        now: Instant,
    ) {
        let code = response.code().unwrap_or_default();
        let branch = self.branch();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let state = call.state;
        if code >= 300 {
            self.send(&builder::ack_for_failure(invite, response));
            self.forget(key);
            let owed = !matches!(state, CallState::Cancelling { notify: false, .. });
            if owed {
                self.event(Event::Failed {
                    call_key: key,
                    code,
                    reason: reason_of(response),
                });
            }
            return;
        }
        let Some(mut dialog) = Dialog::as_uac(invite, response) else {
            // A 2xx without a To tag cannot be acknowledged in a dialog.
            self.stats.unmatched += 1;
            self.forget(key);
            self.event(failed(key, 502));
            return;
        };
        let seq = invite.cseq().map(|(n, _)| n).unwrap_or_default();
        dialog.local_seq = dialog.local_seq.max(seq);
        let mut ack = dialog.ack(&self.local, seq, &branch);
        ack.push("User-Agent", self.local.user_agent.clone());
        let ack = ack.encode();
        self.out.push_back(Output::Send(ack.clone()));
        call.last_ack = Some((seq, ack));
        call.dialog = Some(dialog);
        call.ring_deadline = None;
        match (state, response.sdp()) {
            (CallState::Cancelling { notify, .. }, _) => {
                // §9.1: the 2xx won the race with our CANCEL; end the session at once.
                call.state = CallState::Confirmed;
                self.send_bye(key, false, now);
                if notify {
                    self.event(failed(key, 487));
                }
            }
            (_, Some(sdp)) => {
                call.state = CallState::Confirmed;
                call.remote_sdp = Some(sdp.to_owned());
                let sdp = sdp.to_owned();
                self.event(Event::Answered { call_key: key, sdp });
            }
            (_, None) => {
                // Our INVITE carried the offer; a 2xx without an answer is unusable.
                call.state = CallState::Confirmed;
                self.send_bye(key, false, now);
                self.event(failed(key, 488));
            }
        }
    }

    fn on_reinvite_final(
        &mut self,
        key: CallKey,
        invite: &Message,
        response: &Message,
        now: Instant,
    ) {
        let code = response.code().unwrap_or_default();
        let branch = self.branch();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let offered = call.offered_sdp.take();
        if code >= 300 {
            self.send(&builder::ack_for_failure(invite, response));
            if matches!(code, 408 | 481) {
                // §12.2.1.2: the dialog is gone.
                self.forget(key);
                self.event(Event::Ended {
                    call_key: key,
                    by: EndedBy::Lost,
                });
            } else {
                self.event(Event::ReinviteFailed {
                    call_key: key,
                    code,
                });
            }
            return;
        }
        let seq = invite.cseq().map(|(n, _)| n).unwrap_or_default();
        let Some(dialog) = call.dialog.as_mut() else {
            return;
        };
        if let Some(target) = response
            .header("Contact")
            .and_then(NameAddr::parse)
            .map(|c| c.uri)
        {
            dialog.remote_target = target;
        }
        let mut ack = dialog.ack(&self.local, seq, &branch);
        ack.push("User-Agent", self.local.user_agent.clone());
        let ack = ack.encode();
        self.out.push_back(Output::Send(ack.clone()));
        call.last_ack = Some((seq, ack));
        match response.sdp() {
            Some(sdp) => {
                call.remote_sdp = Some(sdp.to_owned());
                call.local_sdp = offered.or(call.local_sdp.take());
                let sdp = sdp.to_owned();
                self.event(Event::ReinviteAnswered { call_key: key, sdp });
            }
            None => {
                self.send_bye(key, false, now);
                self.event(Event::Ended {
                    call_key: key,
                    by: EndedBy::Lost,
                });
            }
        }
    }

    // ---- timers ----

    fn on_tx_timeout(&mut self, tx: ClientTx, now: Instant) {
        match tx.purpose {
            Purpose::Register => {
                self.registration.on_rejected(now);
                self.event(Event::RegistrationFailed { code: 408 });
                if let Some(expires) = self.registration.queued.take() {
                    self.send_register(expires, now);
                }
            }
            Purpose::Invite(key) => {
                let state = self.calls.get(&key).map(|c| c.state);
                self.forget(key);
                match state {
                    Some(CallState::Cancelling { notify: true, .. }) => {
                        self.event(failed(key, 487))
                    }
                    Some(CallState::Cancelling { notify: false, .. }) | None => {}
                    Some(_) => self.event(failed(key, 408)),
                }
            }
            Purpose::Reinvite(key) => {
                self.forget(key);
                self.event(Event::Ended {
                    call_key: key,
                    by: EndedBy::Lost,
                });
            }
            // A lost INFO loses a digit, not the call.
            Purpose::Cancel(_) | Purpose::Info(_) => {}
            Purpose::Bye { call, notify } => {
                if notify {
                    self.event(Event::Ended {
                        call_key: call,
                        by: EndedBy::Local,
                    });
                }
            }
        }
    }

    fn call_timers(&mut self, key: CallKey, now: Instant) {
        let t2 = self.config.t2;
        let t1 = self.config.t1;
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.ring_deadline.is_some_and(|d| d <= now) {
            call.ring_deadline = None;
            if call.state == CallState::Proceeding {
                call.state = CallState::Cancelling {
                    sent: true,
                    notify: false,
                };
                self.send_cancel(key, now);
                if let Some((_, tx)) = self.txs.invite_of(key) {
                    tx.deadline = Some(now + 64 * t1);
                }
                self.event(failed(key, 408));
            }
            return;
        }
        let Some(waiting) = call.await_ack.as_mut() else {
            return;
        };
        if waiting.give_up <= now {
            // §13.3.1.4: no ACK for 64·T1 — confirm, then end the session with a BYE.
            call.await_ack = None;
            call.bye_after_ack = false;
            self.send_bye(key, false, now);
            self.event(Event::Ended {
                call_key: key,
                by: EndedBy::Lost,
            });
        } else if waiting.next <= now {
            waiting.interval = (waiting.interval * 2).min(t2);
            waiting.next = now + waiting.interval;
            let text = waiting.response.encode();
            self.out.push_back(Output::Send(text));
        }
    }

    // ---- helpers ----

    fn send_register(&mut self, expires: u32, now: Instant) {
        let branch = self.branch();
        let registrar = format!("sip:{}", self.config.domain);
        let m = self
            .registration
            .request(&self.local, &self.aor, &registrar, expires, &branch);
        self.start_tx(Purpose::Register, m, now);
    }

    fn send_cancel(&mut self, key: CallKey, now: Instant) {
        let Some((_, tx)) = self.txs.invite_of(key) else {
            return;
        };
        // After the CANCEL, the INVITE waits 64·T1 for its final response (§9.1).
        tx.deadline = Some(now + 64 * self.config.t1);
        let cancel = builder::cancel_for(&tx.request);
        self.start_tx(Purpose::Cancel(key), cancel, now);
    }

    /// Send BYE for `key` and forget the call; the BYE transaction outlives it.
    fn send_bye(&mut self, key: CallKey, notify: bool, now: Instant) {
        let branch = self.branch();
        let Some(mut dialog) = self.calls.get_mut(&key).and_then(|c| c.dialog.take()) else {
            return;
        };
        let mut bye = dialog.request(&self.local, Method::Bye, &branch);
        bye.push("User-Agent", self.local.user_agent.clone());
        self.forget(key);
        self.start_tx(Purpose::Bye { call: key, notify }, bye, now);
    }

    fn start_tx(&mut self, purpose: Purpose, request: Message, now: Instant) {
        self.send(&request);
        let timeout = match purpose {
            Purpose::Register => self.config.register_timeout.min(64 * self.config.t1),
            _ => 64 * self.config.t1,
        };
        self.txs.insert(ClientTx {
            purpose,
            request,
            deadline: Some(now + timeout),
            auth_tries: 0,
        });
    }

    /// Drop a call and the transactions that only it needed.
    fn forget(&mut self, key: CallKey) {
        self.calls.remove(&key);
        self.txs.forget_call(key);
    }

    fn send(&mut self, message: &Message) {
        self.out.push_back(Output::Send(message.encode()));
    }

    fn event(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }

    fn branch(&mut self) -> String {
        format!("{BRANCH_COOKIE}{}", hex(&mut self.rng, 8))
    }
}

fn failed(call_key: CallKey, code: u16) -> Event {
    Event::Failed {
        call_key,
        code,
        reason: builder::reason_phrase(code).to_owned(),
    }
}

fn reason_of(response: &Message) -> String {
    match &response.start {
        StartLine::Response { reason, .. } => reason.clone(),
        StartLine::Request { .. } => String::new(),
    }
}

/// The `o=` line of an SDP: its version changes whenever the session does (RFC 3264 §8).
fn origin_line(sdp: &str) -> Option<&str> {
    sdp.lines().find(|l| l.starts_with("o="))
}

/// `bytes` random bytes as lowercase hex.
fn hex(rng: &mut StdRng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}
