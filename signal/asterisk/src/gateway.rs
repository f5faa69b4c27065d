//! The Asterisk gateway: joins the hub's PBX leg to the SIP user agent (which carries the
//! SDP) and the ARI controller (which controls the channel). Sans-IO: no sockets, no clock.
//!
//! ```text
//!  hub ──PbxCall / Send{to: Pbx} / PbxRequest──► handle_hub ─┐
//!  SIP WebSocket frames ─────────────────────► handle_sip  ─┤   Gateway   ─► Output::Sip (frames)
//!  ARI events / REST responses ──────────────► handle_ari_* ┤  (call map)  ─► Output::Ari* (REST,
//!  connection changes, timers ───────────────► sip_/ari_*  ─┘              ─► Output::Hub   connect)
//!
//!  browser → extension: PbxCall ─ gather candidates (until end-of-candidates or the gather
//!     timeout) ─► sip.invite + ari.expect_call ─ 180/183 ─► Ringing ─ 2xx ─► Answer
//!     hub hangup ─► CANCEL (ringing) or BYE (answered); Failed{code} / BYE ─► Hangup{reason}
//!  Asterisk → browser: INVITE ─► Output::Hub(Offer) ─► offer_result(Ok(call)) ─► browser's
//!     ringing ─► 180, answer (gathered) ─► 200; refusals ─► 404/480/486/603
//!  renegotiation (answered calls): browser `offer` ─ gather if ICE restarts, else keep the
//!     previous candidates ─► re-INVITE ─ 2xx ─► Answer / failure ─► OfferFailed;
//!     Asterisk's re-INVITE with a new offer ─► Offer ─► browser's answer (gathered) ─► 200;
//!     the hub's OfferFailed or the renegotiation timeout ─► 488
//!  availability: SIP registered && ARI connected ─► Output::Hub(Available); when it goes,
//!     every call is torn down here (the hub ends them for the browsers with `unavailable`).
//! ```
//!
//! Call order: after any `handle_*`, `offer_result`, connection change or timeout, drain
//! [`Gateway::poll_output`] until `None`, then re-arm the timer from [`Gateway::poll_timeout`].
//!
//! Here: the types, the state, getters, timers and the plumbing that drains the UA and the
//! controller. Each input side has its own module: `gateway/hub.rs`, `gateway/sip.rs`,
//! `gateway/ari.rs`; `gateway/sdp.rs` edits the SDP.

mod ari;
mod hub;
pub mod sdp;
mod sip;

pub use ari::UNREADABLE_ARI_EVENT;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ari::controller::{
    CallKey as AriKey, Controller, ControllerConfig, Output as AriOutput, RequestId as AriRequestId,
};
use crate::ari::rest::Method;
use crate::sip::{CallKey as SipKey, Output as SipOutput, UaConfig, UaStats, UserAgent};
use icegate_signal_proto::hub::PbxEvent;
use icegate_signal_proto::protocol::{
    CallId, Extension, HangupReason, IceCandidate, ServerMessage, UserId,
};

/// The gateway's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The SIP user agent.
    pub sip: UaConfig,
    /// The ARI controller.
    pub ari: ControllerConfig,
    /// How long to wait for a browser's end-of-candidates before sending its SDP anyway.
    pub gather_timeout: Duration,
    /// Seconds of registration asked for.
    pub register_expires: u32,
}

/// What the gateway tells the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToHub {
    /// Feed to `Hub::handle_pbx`; a refusal needs no answer.
    Event(PbxEvent),
    /// Asterisk calls a browser user: feed `PbxEvent::Call` to the hub and report the result
    /// with [`Gateway::offer_result`] under `token`.
    Offer {
        /// Names the offer in `offer_result`.
        token: u64,
        /// The caller.
        from: UserId,
        /// The user to ring.
        to: UserId,
        /// Asterisk's offer.
        sdp: String,
    },
    /// Feed to `Hub::set_pbx_available`.
    Available(bool),
    /// Feed to `Hub::pause_pbx`: ARI is down while SIP is up, so answered calls go on but no
    /// new call can be controlled.
    Paused,
}

/// How a call with the PBX ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// It was answered (counted when answered).
    Answered,
    /// Refused or ended before an answer, with this reason.
    Failed(HangupReason),
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this text frame on the SIP WebSocket.
    Sip(String),
    /// Open the ARI events WebSocket at this path (the shell adds the credentials).
    AriConnect(String),
    /// Perform this ARI REST request, then call [`Gateway::handle_ari_response`].
    AriRequest {
        /// Its id.
        id: AriRequestId,
        /// The method.
        method: Method,
        /// Path and query below `/ari`.
        path: String,
        /// JSON body.
        body: Option<String>,
    },
    /// Tell the hub.
    Hub(ToHub),
    /// Count a call's outcome.
    Result(CallResult),
    /// Something for the log (never holds a secret).
    Log(String),
}

/// Where a call with the PBX is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Browser → PBX: collecting candidates before the INVITE.
    Gathering,
    /// Browser → PBX: the INVITE is out.
    Inviting,
    /// PBX → browser: waiting for the hub to accept the offer.
    Offered,
    /// PBX → browser: the browser's answer is collecting candidates.
    Answering,
    /// The call is answered.
    Answered,
    /// Answered; the browser's new offer is collecting candidates before the re-INVITE.
    Reoffering,
    /// Answered; our re-INVITE is out.
    Reinviting,
    /// Answered; Asterisk's re-INVITE offer is with the browser.
    Reoffered,
    /// Answered; the browser's answer to Asterisk's re-INVITE is collecting candidates.
    Reanswering,
}

impl Phase {
    /// Whether the call was answered (a renegotiation may be going on).
    fn is_answered(&self) -> bool {
        matches!(
            self,
            Phase::Answered
                | Phase::Reoffering
                | Phase::Reinviting
                | Phase::Reoffered
                | Phase::Reanswering
        )
    }

    /// Whether the browser's SDP is being completed with trickled candidates.
    fn is_gathering(&self) -> bool {
        matches!(
            self,
            Phase::Gathering | Phase::Answering | Phase::Reoffering | Phase::Reanswering
        )
    }
}

#[derive(Debug)]
struct Call {
    hub: Option<CallId>,
    sip: SipKey,
    phase: Phase,
    /// The SDP being completed with candidates (the gathering phases), then ours as sent.
    sdp: String,
    /// Ours as Asterisk last accepted it, to go back to when a renegotiation fails.
    agreed: String,
    candidates: Vec<IceCandidate>,
    /// Gathering phases: the gather timeout; Offered: how long the hub may take; Reoffered:
    /// how long the browser may take to answer.
    deadline: Option<Instant>,
    extension: Option<Extension>,
}

/// The gateway between the hub and Asterisk.
pub struct Gateway {
    config: GatewayConfig,
    ua: UserAgent,
    ari: Controller,
    calls: BTreeMap<u64, Call>,
    by_hub: HashMap<CallId, u64>,
    by_sip: HashMap<SipKey, u64>,
    next: u64,
    sip_up: bool,
    registered: bool,
    ari_up: bool,
    /// Whether the hub was told that new calls may go to the PBX.
    available: bool,
    /// Whether SIP was up (connected, registered, not closing) at the last check: its loss,
    /// unlike ARI's, ends every call.
    sip_ok: bool,
    /// icegate-signal is stopping: no new calls, and availability stays off.
    closing: bool,
    out: VecDeque<Output>,
}

impl Gateway {
    /// A gateway; the ARI controller asks to connect at once, SIP waits for `sip_connected`.
    pub fn new(config: GatewayConfig, seed: u64, now: Instant) -> Gateway {
        let ua = UserAgent::new(config.sip.clone(), seed);
        let ari = Controller::new(config.ari.clone(), seed.wrapping_add(1));
        let mut gateway = Gateway {
            config,
            ua,
            ari,
            calls: BTreeMap::new(),
            by_hub: HashMap::new(),
            by_sip: HashMap::new(),
            next: 1,
            sip_up: false,
            registered: false,
            ari_up: false,
            available: false,
            sip_ok: false,
            closing: false,
            out: VecDeque::new(),
        };
        gateway.pump(now);
        gateway
    }

    // ---- getters ----

    /// Calls the gateway maps now.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Calls the SIP user agent tracks now.
    pub fn sip_call_count(&self) -> usize {
        self.ua.live_calls()
    }

    /// Calls the ARI controller tracks now.
    pub fn ari_call_count(&self) -> usize {
        self.ari.call_count()
    }

    /// Whether the SIP registration is in place.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Whether the ARI events connection is up.
    pub fn is_ari_connected(&self) -> bool {
        self.ari_up
    }

    /// Whether the hub was told the PBX is available.
    pub fn is_available(&self) -> bool {
        self.available
    }

    /// After [`Gateway::shutdown`]: whether every BYE, CANCEL and the unregistration have been
    /// answered (or given up on), so that the SIP WebSocket may close.
    pub fn is_quiet(&self) -> bool {
        self.ua.live_transactions() == 0
    }

    /// icegate-signal is stopping: end every call with Asterisk (BYE, CANCEL, a final
    /// response) and unregister, so that Asterisk keeps no channel and routes no call to a
    /// contact that is going away. Drive it on until [`Gateway::is_quiet`].
    pub fn shutdown(&mut self, now: Instant) {
        self.closing = true;
        self.pump(now);
        if self.sip_up && self.registered {
            self.ua.register(0, now);
        }
        self.pump(now);
    }

    /// The SIP user agent's counters (malformed frames...).
    pub fn sip_stats(&self) -> UaStats {
        self.ua.stats()
    }

    // ---- poll ----

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Gateway::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let gathers = self.calls.values().filter_map(|c| c.deadline);
        [self.ua.poll_timeout(), self.ari.poll_timeout()]
            .into_iter()
            .flatten()
            .chain(gathers)
            .min()
    }

    /// Timers of the UA, the controller and candidate gathering.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.ua.handle_timeout(now);
        self.ari.handle_timeout(now);
        let due: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let phase = self.calls.get(&id).map(|c| c.phase.clone());
            if phase == Some(Phase::Reoffered) {
                self.log(format!(
                    "call {id}: the browser did not answer Asterisk's new offer"
                ));
                self.renegotiation_failed(id, now);
            } else if phase == Some(Phase::Offered) {
                // The hub never said what became of the offer (its reply was lost).
                if let Some(call) = self.calls.get(&id) {
                    let _ = self.ua.reject_incoming(call.sip, 480, now);
                }
                self.result(CallResult::Failed(HangupReason::Unavailable));
                self.end_for_hub(id, HangupReason::Unavailable);
                self.drop_call(id, now);
            } else {
                self.gathered(id, now);
            }
        }
        self.pump(now);
    }

    // ---- plumbing ----

    /// Moves the UA's and the controller's outputs out, reacting to their events, and tells
    /// the hub when availability changed.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(output) = self.ua.poll_output() {
                progressed = true;
                match output {
                    SipOutput::Send(frame) => self.out.push_back(Output::Sip(frame)),
                    SipOutput::Event(event) => self.on_sip(event, now),
                }
            }
            while let Some(output) = self.ari.poll_output() {
                progressed = true;
                match output {
                    AriOutput::Connect => self
                        .out
                        .push_back(Output::AriConnect(self.ari.events_path())),
                    AriOutput::Request {
                        id,
                        method,
                        path,
                        body,
                    } => self.out.push_back(Output::AriRequest {
                        id,
                        method,
                        path,
                        body,
                    }),
                    AriOutput::Call { call, event } => self.on_ari(call, event),
                    AriOutput::ApplicationReplaced => {
                        self.log("another client took the ARI application over".into())
                    }
                }
            }
            self.ari_up = self.ari.is_connected();
            let sip_ok = self.sip_up && self.registered && !self.closing;
            let available = sip_ok && self.ari_up;
            let sip_lost = self.sip_ok && !sip_ok;
            self.sip_ok = sip_ok;
            if sip_lost || available != self.available {
                progressed = true;
                let was_available = std::mem::replace(&mut self.available, available);
                if available {
                    self.tell_hub(ToHub::Available(true));
                } else if !sip_ok {
                    self.tell_hub(ToHub::Available(false));
                    self.tear_down_all(now);
                } else if was_available {
                    // ARI alone went away: Asterisk and the SIP dialogs are up. Answered calls
                    // go on (the controller finds their channels again after the reconnect);
                    // calls still being set up needed Stasis and end.
                    self.log("ARI is down: answered calls go on, new calls wait for it".into());
                    self.tell_hub(ToHub::Paused);
                    self.tear_down_unanswered(now);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Ends the calls not yet answered, for the hub as well (`unavailable`).
    fn tear_down_unanswered(&mut self, now: Instant) {
        let ids: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| !c.phase.is_answered())
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.end_for_hub(*id, HangupReason::Unavailable);
        }
        self.tear_down(ids, now);
    }

    /// The PBX went away: the hub ends every call with `unavailable`; end them here too.
    fn tear_down_all(&mut self, now: Instant) {
        let ids: Vec<u64> = self.calls.keys().copied().collect();
        self.tear_down(ids, now);
    }

    /// Ends `ids` on the SIP side (while it is up) and forgets them.
    fn tear_down(&mut self, ids: Vec<u64>, now: Instant) {
        for id in ids {
            let Some(call) = self.calls.get(&id) else {
                continue;
            };
            let key = call.sip;
            if self.sip_up {
                let _ = match call.phase {
                    Phase::Gathering => Ok(()),
                    Phase::Inviting => self.ua.cancel(key, now),
                    Phase::Offered | Phase::Answering => self.ua.reject_incoming(key, 480, now),
                    Phase::Reoffered | Phase::Reanswering => self
                        .ua
                        .reject_incoming(key, 488, now)
                        .and_then(|()| self.ua.bye(key, now)),
                    Phase::Answered | Phase::Reoffering | Phase::Reinviting => {
                        self.ua.bye(key, now)
                    }
                };
            }
            if !call.phase.is_answered() {
                self.result(CallResult::Failed(HangupReason::Unavailable));
            }
            self.drop_call(id, now);
        }
    }

    /// Forgets a call here and in the controller.
    fn drop_call(&mut self, id: u64, now: Instant) {
        if let Some(call) = self.calls.remove(&id) {
            if let Some(hub) = call.hub {
                self.by_hub.remove(&hub);
            }
            self.by_sip.remove(&call.sip);
        }
        self.ari.forget(AriKey(id), now);
    }

    fn hub_call_of(&self, key: SipKey) -> Option<CallId> {
        self.by_sip
            .get(&key)
            .and_then(|id| self.calls.get(id))
            .and_then(|c| c.hub)
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }

    fn tell_hub(&mut self, message: ToHub) {
        self.out.push_back(Output::Hub(message));
    }

    fn result(&mut self, result: CallResult) {
        self.out.push_back(Output::Result(result));
    }

    fn log(&mut self, text: String) {
        self.out.push_back(Output::Log(text));
    }
}

/// How long the hub may take to say what became of an offer (it answers at once).
const OFFER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a browser may take to answer Asterisk's re-INVITE (it answers in milliseconds;
/// Asterisk gives up on the transaction after 32 s).
const RENEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Candidates kept per call while gathering; a browser has a handful.
const MAX_CANDIDATES: usize = 64;

/// The call a message to the PBX is about.
fn message_call(message: &ServerMessage) -> Option<CallId> {
    match message {
        ServerMessage::Candidate { call, .. }
        | ServerMessage::Ringing { call }
        | ServerMessage::Answer { call, .. }
        | ServerMessage::Offer { call, .. }
        | ServerMessage::OfferFailed { call }
        | ServerMessage::Hangup { call, .. }
        | ServerMessage::Dtmf { call, .. } => Some(*call),
        _ => None,
    }
}

/// Why a call failed, from the final SIP status.
pub fn failure_reason(code: u16) -> HangupReason {
    match code {
        486 | 600 => HangupReason::Busy,
        404 | 410 | 484 | 604 => HangupReason::NotFound,
        603 => HangupReason::Declined,
        408 | 487 => HangupReason::NoAnswer,
        _ => HangupReason::Unavailable,
    }
}

/// The user part of a SIP URI (`sip:alice@host;params` → `alice`).
fn uri_user(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))?;
    let (user, _) = rest.split_once('@')?;
    let user = user.split(';').next().unwrap_or(user);
    (!user.is_empty()).then_some(user)
}

#[cfg(test)]
pub(crate) mod tests;
