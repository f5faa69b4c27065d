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

pub mod sdp;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ari::controller::{
    self as ari, CallEvent as AriEvent, Controller, ControllerConfig, Output as AriOutput,
};
use crate::ari::rest::Method;
use crate::sip::{self, EndedBy, Event as SipEvent, UaConfig, UserAgent};
use icegate_signal_proto::hub::{Endpoint, Output as HubOutput, PbxEvent, PbxRequest};
use icegate_signal_proto::protocol::{
    CallId, Digits, ErrorCode, Extension, HangupReason, IceCandidate, ServerMessage, UserId,
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
        id: ari::RequestId,
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
    sip: sip::CallKey,
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
    by_sip: HashMap<sip::CallKey, u64>,
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
    pub fn sip_stats(&self) -> sip::UaStats {
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

    // ---- the hub's side ----

    /// A hub output addressed to the PBX; other outputs are ignored.
    pub fn handle_hub(&mut self, output: HubOutput, now: Instant) {
        match output {
            HubOutput::PbxCall {
                call,
                from: _,
                extension,
                sdp,
            } => self.start_outgoing(call, extension, sdp, now),
            HubOutput::Send {
                to: Endpoint::Pbx,
                message,
            } => self.on_hub_message(message, now),
            HubOutput::PbxRequest { call, request } => {
                let Some(&id) = self.by_hub.get(&call) else {
                    return;
                };
                let key = ari::CallKey(id);
                let result = match &request {
                    PbxRequest::Transfer(to) => self.ari.transfer(key, to.as_str(), now),
                    PbxRequest::Play(media) => self.ari.play(key, media.as_str(), now),
                };
                if let Err(error) = result {
                    self.log(format!("{request:?} in call {call}: {error}"));
                }
            }
            HubOutput::Send { .. } | HubOutput::Event(_) => {}
        }
        self.pump(now);
    }

    /// What the hub made of an [`ToHub::Offer`]: the new call, or why it was refused.
    pub fn offer_result(&mut self, token: u64, result: Result<CallId, ErrorCode>, now: Instant) {
        let Some(call) = self.calls.get_mut(&token) else {
            // The offer was cancelled meanwhile: the hub's call must end too.
            if let Ok(call) = result {
                self.tell_hub(ToHub::Event(PbxEvent::Hangup {
                    call,
                    reason: HangupReason::Normal,
                }));
            }
            return;
        };
        let key = call.sip;
        match result {
            Ok(hub) => {
                call.hub = Some(hub);
                call.deadline = None;
                self.by_hub.insert(hub, token);
            }
            Err(code) => {
                let status = match code {
                    ErrorCode::UnknownUser => 404,
                    ErrorCode::TooManyCalls => 486,
                    _ => 480,
                };
                let _ = self.ua.reject_incoming(key, status, now);
                self.result(CallResult::Failed(match status {
                    404 => HangupReason::NotFound,
                    486 => HangupReason::Busy,
                    _ => HangupReason::Unavailable,
                }));
                self.drop_call(token, now);
            }
        }
        self.pump(now);
    }

    fn start_outgoing(&mut self, call: CallId, extension: Extension, sdp: String, now: Instant) {
        if self.by_hub.contains_key(&call) {
            // The hub never reuses a call id; a second call under one would orphan the first.
            self.log(format!("call {call} is already with the PBX; ignored"));
            return;
        }
        if !self.available {
            self.tell_hub(ToHub::Event(PbxEvent::Hangup {
                call,
                reason: HangupReason::Unavailable,
            }));
            self.result(CallResult::Failed(HangupReason::Unavailable));
            return;
        }
        let id = self.next_id();
        let complete = sdp::is_complete(&sdp);
        self.calls.insert(
            id,
            Call {
                hub: Some(call),
                sip: sip::CallKey::Outgoing(id),
                phase: Phase::Gathering,
                sdp,
                agreed: String::new(),
                candidates: Vec::new(),
                deadline: Some(now + self.config.gather_timeout),
                extension: Some(extension),
            },
        );
        self.by_hub.insert(call, id);
        self.by_sip.insert(sip::CallKey::Outgoing(id), id);
        if complete {
            self.gathered(id, now);
        }
    }

    fn on_hub_message(&mut self, message: ServerMessage, now: Instant) {
        let Some(hub_call) = message_call(&message) else {
            return;
        };
        let Some(&id) = self.by_hub.get(&hub_call) else {
            return;
        };
        match message {
            ServerMessage::Candidate { candidate, .. } => {
                let Some(call) = self.calls.get_mut(&id) else {
                    return;
                };
                if !call.phase.is_gathering() {
                    return; // Asterisk has the SDP already; late candidates cannot follow.
                }
                if sdp::is_end_marker(candidate.as_ref()) {
                    self.gathered(id, now);
                } else if let Some(candidate) = candidate {
                    if call.candidates.len() < MAX_CANDIDATES {
                        call.candidates.push(candidate);
                    }
                }
            }
            ServerMessage::Ringing { .. } => {
                if let Some(call) = self.calls.get(&id) {
                    if call.phase == Phase::Offered {
                        let _ = self.ua.ringing_incoming(call.sip, now);
                    }
                }
            }
            ServerMessage::Answer { sdp, .. } => {
                let next = match self.calls.get(&id).map(|c| &c.phase) {
                    Some(Phase::Offered) => Phase::Answering,
                    Some(Phase::Reoffered) => Phase::Reanswering,
                    _ => return,
                };
                self.collect(id, next, sdp, now);
            }
            ServerMessage::Offer { sdp, .. } => {
                if self.calls.get(&id).map(|c| &c.phase) == Some(&Phase::Answered) {
                    self.collect(id, Phase::Reoffering, sdp, now);
                } else {
                    // Only while Asterisk's own offer is open; the hub reports glare first.
                    self.tell_hub(ToHub::Event(PbxEvent::OfferFailed { call: hub_call }));
                }
            }
            ServerMessage::OfferFailed { .. }
                if self.calls.get(&id).map(|c| &c.phase) == Some(&Phase::Reoffered) =>
            {
                self.renegotiation_failed(id, now);
            }
            ServerMessage::Hangup { reason, .. } => self.hub_hangup(id, reason, now),
            ServerMessage::Dtmf { digits, .. } => {
                let via_ari = self.ari.send_dtmf(ari::CallKey(id), digits.as_str(), now);
                if let Err(ari::CommandError::UnknownCall | ari::CommandError::NoChannel) = via_ari
                {
                    // Not in Stasis (the dialplan runs the call): SIP INFO reaches it instead.
                    let Some(key) = self.calls.get(&id).map(|c| c.sip) else {
                        return;
                    };
                    if let Err(error) = self.ua.send_dtmf_info(key, digits.as_str(), now) {
                        self.log(format!("DTMF in call {hub_call}: {error}"));
                    }
                } else if let Err(error) = via_ari {
                    self.log(format!("DTMF in call {hub_call}: {error}"));
                }
            }
            _ => {}
        }
    }

    /// Starts completing the browser's `sdp` with its candidates, in `phase`. A renegotiation
    /// without an ICE restart is complete at once: the previous candidates still hold.
    fn collect(&mut self, id: u64, phase: Phase, sdp: String, now: Instant) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let renegotiating = matches!(phase, Phase::Reoffering | Phase::Reanswering);
        let carried = renegotiating
            .then(|| sdp::carry_candidates(&call.agreed, &sdp))
            .flatten();
        let complete = carried.is_some() || sdp::is_complete(&sdp);
        call.phase = phase;
        call.sdp = carried.unwrap_or(sdp);
        call.candidates.clear();
        call.deadline = Some(now + self.config.gather_timeout);
        if complete {
            self.gathered(id, now);
        }
    }

    /// A renegotiation failed or was refused: the call goes on with the SDP agreed before.
    fn renegotiation_failed(&mut self, id: u64, now: Instant) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let phase = std::mem::replace(&mut call.phase, Phase::Answered);
        call.sdp = call.agreed.clone();
        call.candidates.clear();
        call.deadline = None;
        let (key, hub) = (call.sip, call.hub);
        if matches!(phase, Phase::Reoffered | Phase::Reanswering) {
            // Asterisk's re-INVITE waits for a final response.
            let _ = self.ua.reject_incoming(key, 488, now);
        }
        // Whichever end offered, the hub's offer in progress is over.
        if let Some(call) = hub.filter(|_| phase.is_answered() && phase != Phase::Answered) {
            self.tell_hub(ToHub::Event(PbxEvent::OfferFailed { call }));
        }
    }

    /// The browser's SDP is complete (or the gather timeout passed): send it to Asterisk.
    fn gathered(&mut self, id: u64, now: Instant) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.deadline = None;
        let sdp = sdp::with_candidates(&call.sdp, &call.candidates);
        call.candidates = Vec::new();
        call.sdp = sdp.clone();
        let key = call.sip;
        match call.phase {
            Phase::Gathering => {
                call.phase = Phase::Inviting;
                let extension = call
                    .extension
                    .as_ref()
                    .map(|e| e.as_str().to_owned())
                    .unwrap_or_default();
                if let Err(error) = self.ua.invite(key, &extension, &sdp, now) {
                    self.log(format!("INVITE to {extension}: {error}"));
                    self.fail(id, HangupReason::Unavailable, now);
                    return;
                }
                self.expect_in_ari(id, now);
            }
            Phase::Answering => {
                call.phase = Phase::Answered;
                call.agreed = sdp.clone();
                if self.ua.answer_incoming(key, &sdp, now).is_ok() {
                    self.result(CallResult::Answered);
                } else {
                    self.fail(id, HangupReason::Unavailable, now);
                }
            }
            Phase::Reoffering => {
                call.phase = Phase::Reinviting;
                if let Err(error) = self.ua.reinvite(key, &sdp, now) {
                    self.log(format!("re-INVITE in call {id}: {error}"));
                    self.renegotiation_failed(id, now);
                }
            }
            Phase::Reanswering => {
                call.phase = Phase::Answered;
                call.agreed = sdp.clone();
                if let Err(error) = self.ua.answer_incoming(key, &sdp, now) {
                    self.log(format!("answering the re-INVITE in call {id}: {error}"));
                }
            }
            Phase::Inviting
            | Phase::Offered
            | Phase::Answered
            | Phase::Reinviting
            | Phase::Reoffered => {}
        }
    }

    /// Lets the ARI controller link the channel Asterisk creates for the call's dialog.
    fn expect_in_ari(&mut self, id: u64, now: Instant) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let Some(call_id) = self.ua.call_id(call.sip).map(str::to_owned) else {
            return;
        };
        if let Err(error) = self.ari.expect_call(ari::CallKey(id), &call_id, now) {
            // The SIP call goes on; only ARI control (DTMF, transfer, play) is missing.
            self.log(format!("ARI cannot follow SIP call {call_id}: {error}"));
        }
    }

    /// The hub ended the call for the PBX.
    fn hub_hangup(&mut self, id: u64, reason: HangupReason, now: Instant) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let key = call.sip;
        match call.phase {
            Phase::Gathering => self.result(CallResult::Failed(reason)),
            Phase::Inviting => {
                let _ = self.ua.cancel(key, now);
                self.result(CallResult::Failed(reason));
            }
            Phase::Offered | Phase::Answering => {
                let status = match reason {
                    HangupReason::Busy => 486,
                    HangupReason::Declined => 603,
                    HangupReason::NotFound => 404,
                    _ => 480,
                };
                let _ = self.ua.reject_incoming(key, status, now);
                self.result(CallResult::Failed(reason));
            }
            Phase::Reoffered | Phase::Reanswering => {
                let _ = self.ua.reject_incoming(key, 488, now);
                let _ = self.ua.bye(key, now);
            }
            Phase::Answered | Phase::Reoffering | Phase::Reinviting => {
                let _ = self.ua.bye(key, now);
            }
        }
        self.drop_call(id, now);
    }

    // ---- the SIP side ----

    /// The SIP WebSocket is open: register.
    pub fn sip_connected(&mut self, now: Instant) {
        self.sip_up = true;
        self.ua.register(self.config.register_expires, now);
        self.pump(now);
    }

    /// The SIP WebSocket closed (or could not be opened).
    pub fn sip_disconnected(&mut self, now: Instant) {
        self.sip_up = false;
        self.registered = false;
        self.ua.handle_disconnect();
        self.pump(now);
    }

    /// A text frame from the SIP WebSocket; malformed ones are counted and logged.
    pub fn handle_sip(&mut self, frame: &[u8], now: Instant) {
        if let Err(error) = self.ua.handle_message(frame, now) {
            self.log(format!("malformed SIP frame: {error}"));
        }
        self.pump(now);
    }

    fn on_sip(&mut self, event: SipEvent, now: Instant) {
        match event {
            SipEvent::Registered { .. } => self.registered = true,
            SipEvent::Unregistered => self.registered = false,
            SipEvent::RegistrationFailed { code } => {
                self.registered = false;
                self.log(format!("SIP registration failed with {code}"));
            }
            SipEvent::Provisional { call_key, code } => {
                if matches!(code, 180 | 183) {
                    if let Some(call) = self.hub_call_of(call_key) {
                        self.tell_hub(ToHub::Event(PbxEvent::Ringing { call }));
                    }
                }
            }
            SipEvent::Answered { call_key, sdp } => {
                let Some(&id) = self.by_sip.get(&call_key) else {
                    // An answer to a call the hub already ended: hang it up.
                    let _ = self.ua.bye(call_key, now);
                    return;
                };
                if let Some(call) = self.calls.get_mut(&id) {
                    call.phase = Phase::Answered;
                    call.agreed = call.sdp.clone();
                    if let Some(hub) = call.hub {
                        self.tell_hub(ToHub::Event(PbxEvent::Answer { call: hub, sdp }));
                        self.result(CallResult::Answered);
                    }
                }
            }
            SipEvent::Failed { call_key, code, .. } => {
                let Some(&id) = self.by_sip.get(&call_key) else {
                    return;
                };
                self.fail(id, failure_reason(code), now);
            }
            SipEvent::Ended { call_key, by } => {
                let Some(&id) = self.by_sip.get(&call_key) else {
                    return;
                };
                let reason = match by {
                    EndedBy::Remote | EndedBy::Local => HangupReason::Normal,
                    EndedBy::Lost => HangupReason::Unavailable,
                };
                self.end_for_hub(id, reason);
                self.drop_call(id, now);
            }
            SipEvent::IncomingCall {
                call_key,
                from,
                to,
                request_uri,
                sdp,
            } => self.incoming(call_key, &from, &to, &request_uri, sdp, now),
            SipEvent::Dtmf {
                call_key, digit, ..
            } => {
                if let Some(&id) = self.by_sip.get(&call_key) {
                    self.pbx_digit(id, digit);
                }
            }
            SipEvent::IncomingCancelled { call_key } => {
                let Some(&id) = self.by_sip.get(&call_key) else {
                    return;
                };
                self.end_for_hub(id, HangupReason::Normal);
                self.result(CallResult::Failed(HangupReason::Normal));
                self.drop_call(id, now);
            }
            SipEvent::ReinviteOffer { call_key, sdp } => {
                // Session refreshes never get here: the UA answers them itself.
                let Some(&id) = self.by_sip.get(&call_key) else {
                    let _ = self.ua.reject_incoming(call_key, 481, now);
                    return;
                };
                let Some(call) = self.calls.get_mut(&id) else {
                    return;
                };
                match (sdp, call.hub, call.phase == Phase::Answered) {
                    (Some(offer), Some(hub), true) => {
                        call.phase = Phase::Reoffered;
                        call.deadline = Some(now + RENEGOTIATION_TIMEOUT);
                        self.tell_hub(ToHub::Event(PbxEvent::Offer {
                            call: hub,
                            sdp: offer,
                        }));
                    }
                    (None, _, true) => {
                        // An offerless re-INVITE asks for our offer: the one it has still holds.
                        let ours = call.agreed.clone();
                        let _ = self.ua.answer_incoming(call_key, &ours, now);
                    }
                    // §14.2: a renegotiation of ours is under way.
                    _ => {
                        let _ = self.ua.reject_incoming(call_key, 491, now);
                    }
                }
            }
            SipEvent::ReinviteAnswered { call_key, sdp } => {
                let Some(&id) = self.by_sip.get(&call_key) else {
                    return;
                };
                let Some(call) = self.calls.get_mut(&id) else {
                    return;
                };
                if call.phase != Phase::Reinviting {
                    return;
                }
                call.phase = Phase::Answered;
                call.agreed = call.sdp.clone();
                if let Some(hub) = call.hub {
                    self.tell_hub(ToHub::Event(PbxEvent::Answer { call: hub, sdp }));
                }
            }
            SipEvent::ReinviteFailed { call_key, code } => {
                let Some(&id) = self.by_sip.get(&call_key) else {
                    return;
                };
                if self.calls.get(&id).map(|c| &c.phase) == Some(&Phase::Reinviting) {
                    self.log(format!(
                        "Asterisk refused the re-INVITE in call {id} with {code}"
                    ));
                    self.renegotiation_failed(id, now);
                }
            }
            SipEvent::LateAnswer { .. } => {}
        }
    }

    fn incoming(
        &mut self,
        key: sip::CallKey,
        from: &sip::Party,
        to: &sip::Party,
        request_uri: &str,
        sdp: Option<String>,
        now: Instant,
    ) {
        let Some(sdp) = sdp else {
            // An offerless INVITE would need our own offer, which only a browser can make.
            let _ = self.ua.reject_incoming(key, 488, now);
            return;
        };
        if !self.available {
            let _ = self.ua.reject_incoming(key, 480, now);
            self.result(CallResult::Failed(HangupReason::Unavailable));
            return;
        }
        // `Dial(PJSIP/alice@icegate)` names the user in the Request-URI and the To URI; a
        // plain `PJSIP/icegate` names only the endpoint itself.
        let user = [to.uri.as_str(), request_uri]
            .into_iter()
            .filter_map(uri_user)
            .find(|u| *u != self.config.sip.user)
            .and_then(|u| UserId::new(u).ok());
        let Some(user) = user else {
            self.log(format!("incoming call to {} names no browser user", to.uri));
            let _ = self.ua.reject_incoming(key, 404, now);
            self.result(CallResult::Failed(HangupReason::NotFound));
            return;
        };
        let caller = uri_user(&from.uri)
            .and_then(|u| UserId::new(u).ok())
            .or_else(|| from.display.clone().and_then(|d| UserId::new(d).ok()))
            .unwrap_or_else(|| UserId::new("asterisk").expect("a valid name"));
        let id = self.next_id();
        self.calls.insert(
            id,
            Call {
                hub: None,
                sip: key,
                phase: Phase::Offered,
                sdp: String::new(),
                agreed: String::new(),
                candidates: Vec::new(),
                deadline: Some(now + OFFER_TIMEOUT),
                extension: None,
            },
        );
        self.by_sip.insert(key, id);
        self.expect_in_ari(id, now);
        self.tell_hub(ToHub::Offer {
            token: id,
            from: caller,
            to: user,
            sdp,
        });
    }

    /// An unanswered call failed on the SIP side: tell the hub and forget it.
    fn fail(&mut self, id: u64, reason: HangupReason, now: Instant) {
        self.end_for_hub(id, reason);
        self.result(CallResult::Failed(reason));
        self.drop_call(id, now);
    }

    fn end_for_hub(&mut self, id: u64, reason: HangupReason) {
        if let Some(call) = self.calls.get(&id).and_then(|c| c.hub) {
            self.tell_hub(ToHub::Event(PbxEvent::Hangup { call, reason }));
        }
    }

    // ---- the ARI side ----

    /// The ARI events WebSocket is open.
    pub fn ari_connected(&mut self, now: Instant) {
        self.ari.connected(now);
        self.pump(now);
    }

    /// The ARI events WebSocket closed, or could not be opened.
    pub fn ari_connection_lost(&mut self, now: Instant) {
        self.ari.connection_lost(now);
        self.pump(now);
    }

    /// A text frame of the ARI events WebSocket; malformed ones are logged.
    pub fn handle_ari_event(&mut self, text: &str, now: Instant) {
        if let Err(error) = self.ari.handle_event(text, now) {
            self.log(format!("unreadable ARI event: {error}"));
        }
        self.pump(now);
    }

    /// The response to an [`Output::AriRequest`]: status and body (status 0 when the request
    /// could not be made at all).
    pub fn handle_ari_response(
        &mut self,
        id: ari::RequestId,
        status: u16,
        body: &str,
        now: Instant,
    ) {
        self.ari.handle_response(id, status, body, now);
        self.pump(now);
    }

    fn on_ari(&mut self, key: ari::CallKey, event: AriEvent) {
        if !self.calls.contains_key(&key.0) {
            return;
        }
        match event {
            AriEvent::Dtmf { digit, .. } => self.pbx_digit(key.0, digit),
            AriEvent::CommandFailed { command, error } => {
                self.log(format!("ARI {command} failed: {error}"));
            }
            // The SIP dialog tells the hub how the call ends; ARI only controls it.
            AriEvent::Linked { .. }
            | AriEvent::Ringing
            | AriEvent::Answered
            | AriEvent::StateChanged(_)
            | AriEvent::HungUp { .. }
            | AriEvent::Released => {}
        }
    }

    /// A key pressed on the PBX side (ARI, from the dialed peer; or a SIP INFO): the browser
    /// gets it as `dtmf` once the call is answered.
    fn pbx_digit(&mut self, id: u64, digit: char) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if let (Some(hub), Ok(digits)) = (call.hub, Digits::new(digit.to_string())) {
            if call.phase.is_answered() {
                self.tell_hub(ToHub::Event(PbxEvent::Dtmf { call: hub, digits }));
            }
        }
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
                    sip::Output::Send(frame) => self.out.push_back(Output::Sip(frame)),
                    sip::Output::Event(event) => self.on_sip(event, now),
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
        self.ari.forget(ari::CallKey(id), now);
    }

    fn hub_call_of(&self, key: sip::CallKey) -> Option<CallId> {
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
mod tests;
