//! The call layer's commands to the [`UserAgent`]: register, place, cancel, end, answer,
//! reject and renegotiate calls, send DTMF as INFO. Each queues what to send; a refusal is a
//! [`CommandError`] and changes nothing.

use std::time::Instant;

use super::{hex, AwaitAck, Call, CallState, CommandError, UserAgent, DTMF_INFO_DURATION_MS};
use crate::sip::builder::{self, ALLOW};
use crate::sip::call_key::CallKey;
use crate::sip::header::NameAddr;
use crate::sip::method::{is_token_byte, Method};
use crate::sip::transaction::Purpose;

impl UserAgent {
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
}
