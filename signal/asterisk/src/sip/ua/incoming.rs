//! Requests from Asterisk: new INVITEs, re-INVITEs, ACK, CANCEL, BYE and INFO, matched to
//! their call by dialog.

use std::time::Instant;

use super::{hex, origin_line, Call, CallState, EndedBy, Event, Party, UserAgent};
use crate::sip::builder::{self, ALLOW};
use crate::sip::call_key::CallKey;
use crate::sip::dialog::Dialog;
use crate::sip::header::NameAddr;
use crate::sip::info;
use crate::sip::message::Message;
use crate::sip::method::Method;

impl UserAgent {
    pub(super) fn on_request(&mut self, request: Message, now: Instant) {
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

    pub(super) fn on_new_invite(&mut self, request: Message, _now: Instant) {
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

    pub(super) fn on_reinvite(&mut self, request: Message, now: Instant) {
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

    pub(super) fn on_ack(&mut self, ack: &Message, now: Instant) {
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

    pub(super) fn on_cancel(&mut self, cancel: &Message) {
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

    pub(super) fn on_bye(&mut self, bye: &Message) {
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
    pub(super) fn on_info(&mut self, request: &Message) {
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
    pub(super) fn call_of_request(&self, request: &Message) -> Option<CallKey> {
        self.calls.iter().find_map(|(k, c)| {
            c.dialog
                .as_ref()
                .is_some_and(|d| d.matches_request(request))
                .then_some(*k)
        })
    }
}
