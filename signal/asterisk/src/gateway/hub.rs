//! The hub's side of the gateway: its PBX outputs (a browser calling an extension, messages
//! for the PBX leg, requests such as DTMF, play and transfer), the result of an offer from
//! Asterisk, and gathering a browser's trickled candidates into the SDP that goes to Asterisk.

use std::time::Instant;

use icegate_signal_proto::hub::{Endpoint, Output as HubOutput, PbxEvent, PbxRequest};
use icegate_signal_proto::protocol::{CallId, ErrorCode, Extension, HangupReason, ServerMessage};

use super::{message_call, sdp, Call, CallResult, Gateway, Phase, ToHub, MAX_CANDIDATES};
use crate::ari::controller::{CallKey as AriKey, CommandError as AriCommandError};
use crate::sip::CallKey as SipKey;

impl Gateway {
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
                let key = AriKey(id);
                let result = match &request {
                    PbxRequest::Transfer(to) => self.ari.transfer(key, to.as_str(), now),
                    PbxRequest::Play(media) => self.ari.play(key, media.as_str(), now),
                };
                if let Err(error) = result {
                    self.log(format!("{request:?} in call {call}: {error}"));
                }
            }
            HubOutput::Send { .. } | HubOutput::Event(_) | HubOutput::Membership { .. } => {}
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

    pub(super) fn start_outgoing(
        &mut self,
        call: CallId,
        extension: Extension,
        sdp: String,
        now: Instant,
    ) {
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
                sip: SipKey::Outgoing(id),
                phase: Phase::Gathering,
                sdp,
                agreed: String::new(),
                candidates: Vec::new(),
                deadline: Some(now + self.config.gather_timeout),
                extension: Some(extension),
            },
        );
        self.by_hub.insert(call, id);
        self.by_sip.insert(SipKey::Outgoing(id), id);
        if complete {
            self.gathered(id, now);
        }
    }

    pub(super) fn on_hub_message(&mut self, message: ServerMessage, now: Instant) {
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
                let via_ari = self.ari.send_dtmf(AriKey(id), digits.as_str(), now);
                if let Err(AriCommandError::UnknownCall | AriCommandError::NoChannel) = via_ari {
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
    pub(super) fn collect(&mut self, id: u64, phase: Phase, sdp: String, now: Instant) {
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
    pub(super) fn renegotiation_failed(&mut self, id: u64, now: Instant) {
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
    pub(super) fn gathered(&mut self, id: u64, now: Instant) {
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
    pub(super) fn expect_in_ari(&mut self, id: u64, now: Instant) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let Some(call_id) = self.ua.call_id(call.sip).map(str::to_owned) else {
            return;
        };
        if let Err(error) = self.ari.expect_call(AriKey(id), &call_id, now) {
            // The SIP call goes on; only ARI control (DTMF, transfer, play) is missing.
            self.log(format!("ARI cannot follow SIP call {call_id}: {error}"));
        }
    }

    /// The hub ended the call for the PBX.
    pub(super) fn hub_hangup(&mut self, id: u64, reason: HangupReason, now: Instant) {
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
}
