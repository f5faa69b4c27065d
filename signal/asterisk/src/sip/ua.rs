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
//!
//! Here: the UA's state, its getters, inputs, timers and helpers. Beside it: `ua/types.rs` (the
//! API types), `ua/commands.rs` (the call layer's commands), `ua/incoming.rs` (requests from
//! Asterisk) and `ua/responses.rs` (responses to our requests).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::sip::builder::{self, Local, BRANCH_COOKIE};
use crate::sip::call_key::CallKey;
use crate::sip::dialog::Dialog;
use crate::sip::message::{Message, ParseError, StartLine};
use crate::sip::method::Method;
use crate::sip::registration::Registration;
use crate::sip::transaction::{ClientTx, Purpose, Transactions};

mod commands;
mod incoming;
mod responses;
mod types;

pub use types::{CommandError, EndedBy, Event, Output, Party, UaConfig, UaStats};

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
