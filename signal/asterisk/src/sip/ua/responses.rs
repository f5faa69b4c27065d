//! Responses from Asterisk to our client transactions: digest challenges answered once,
//! REGISTER results, and the provisional and final responses of INVITEs and re-INVITEs.

use std::time::Instant;

use super::{failed, hex, reason_of, CallState, EndedBy, Event, Output, UserAgent};
use crate::sip::builder;
use crate::sip::call_key::CallKey;
use crate::sip::dialog::Dialog;
use crate::sip::digest::Challenge;
use crate::sip::header::NameAddr;
use crate::sip::message::Message;
use crate::sip::method::Method;
use crate::sip::transaction::{key_of, ClientTx, Purpose};

impl UserAgent {
    pub(super) fn on_response(&mut self, response: Message, now: Instant) {
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
    pub(super) fn on_stray_final(&mut self, response: &Message) {
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
    pub(super) fn retry_with_credentials(
        &mut self,
        tx: &ClientTx,
        response: &Message,
        now: Instant,
    ) -> bool {
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

    pub(super) fn on_register_final(&mut self, response: &Message, now: Instant) {
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

    pub(super) fn on_invite_provisional(&mut self, key: CallKey, code: u16, now: Instant) {
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

    pub(super) fn on_invite_final(
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

    pub(super) fn on_reinvite_final(
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
}
