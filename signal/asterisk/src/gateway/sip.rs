//! The SIP side of the gateway: the SIP WebSocket's frames and connection, and what the user
//! agent reports (registration, ringing, answers, failures, Asterisk's calls and re-INVITEs,
//! DTMF in INFO, ended dialogs) turned into what the hub hears.

use std::time::Instant;

use icegate_signal_proto::hub::PbxEvent;
use icegate_signal_proto::protocol::{HangupReason, UserId};

use super::{
    failure_reason, uri_user, Call, CallResult, Gateway, Phase, ToHub, OFFER_TIMEOUT,
    RENEGOTIATION_TIMEOUT,
};
use crate::sip::{CallKey as SipKey, EndedBy, Event as SipEvent, Party};

impl Gateway {
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

    pub(super) fn on_sip(&mut self, event: SipEvent, now: Instant) {
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

    pub(super) fn incoming(
        &mut self,
        key: SipKey,
        from: &Party,
        to: &Party,
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
    pub(super) fn fail(&mut self, id: u64, reason: HangupReason, now: Instant) {
        self.end_for_hub(id, reason);
        self.result(CallResult::Failed(reason));
        self.drop_call(id, now);
    }

    pub(super) fn end_for_hub(&mut self, id: u64, reason: HangupReason) {
        if let Some(call) = self.calls.get(&id).and_then(|c| c.hub) {
            self.tell_hub(ToHub::Event(PbxEvent::Hangup { call, reason }));
        }
    }
}
