//! The SIP side of the PBX: REGISTER, the dialplan for browser-originated INVITEs,
//! Asterisk-originated INVITEs (ARI originate), CANCEL, BYE both ways, and the ARI events
//! each step causes. Message shapes follow the recordings (see recordings/README.md).

use super::ari_model::{self, ChannelInfo, Playback};
use super::clock;
use super::dialplan::Route;
use super::digest::{self, Challenge};
use super::sdp;
use super::sip::{self, SipMessage};
use super::state::{Call, Core, Dir, MediaMode, Phase, Registration, Stream};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

pub const ALLOW: &str = "OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, INVITE, ACK, BYE, CANCEL, UPDATE, PRACK, MESSAGE, INFO, REFER";
const SERVER: &str = "Asterisk PBX";
/// How many nonces stay valid (Asterisk accepts a nonce for a while, not forever).
const NONCES_KEPT: usize = 256;
/// `max_contacts` of the recorded AOR.
const MAX_CONTACTS: usize = 5;

/// How a channel ends, which decides what goes out on SIP and which events follow.
#[derive(Debug, Clone, Copy)]
pub enum Hangup {
    /// ARI `DELETE /channels/{id}` (or the test's `hangup`): BYE, CANCEL or 603.
    Ari { cause: u32 },
    /// The client's BYE or CANCEL, already answered.
    Remote { cause: u32 },
    /// The dialplan application ended and the dialplan hung up (`Echo()` on `#`): a BYE
    /// with the cause, as from ARI, but no soft hangup.
    Dialplan { cause: u32 },
    /// The client rejected an Asterisk-originated INVITE.
    Rejected { code: u16 },
    /// An originate's timeout ran out: CANCEL.
    NoAnswer,
    /// The SIP WebSocket is gone; nothing can be sent.
    TransportLost,
}

type Headers<'a> = Vec<(&'a str, String)>;

/// The top Via of a response: `received`/`rport` filled in before the other parameters,
/// as pjsip writes it.
fn via_received(via: &str, peer: SocketAddr) -> String {
    let mut parts = via.split(';');
    let sent_by = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts
        .filter(|p| {
            let k = p.split('=').next().unwrap_or_default().trim();
            !k.eq_ignore_ascii_case("rport") && !k.eq_ignore_ascii_case("received")
        })
        .collect();
    let mut out = format!("{sent_by};rport={};received={}", peer.port(), peer.ip());
    for p in rest {
        out.push(';');
        out.push_str(p);
    }
    out
}

fn with_transport_upper(uri: &str) -> String {
    match uri.to_ascii_lowercase().find(";transport=ws") {
        Some(i) => format!("{};transport=WS{}", &uri[..i], &uri[i + 13..]),
        None => uri.to_string(),
    }
}

/// `Reason: Q.850;cause=N` → N.
/// `sip:USER@host...` with another user part.
fn with_user(uri: &str, user: &str) -> String {
    match uri.split_once(':').zip(uri.split_once('@')) {
        Some(((scheme, _), (_, host))) => format!("{scheme}:{user}@{host}"),
        None => uri.to_string(),
    }
}

fn reason_cause(msg: &SipMessage) -> Option<u32> {
    msg.header("Reason")
        .and_then(|r| sip::param(r, "cause"))
        .and_then(|c| c.parse().ok())
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    fn build_response(
        &self,
        req: &SipMessage,
        peer: SocketAddr,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        pre: Headers,
        post: Headers,
        body: Option<&str>,
    ) -> SipMessage {
        let mut h: Vec<(String, String)> = Vec::new();
        for (i, via) in req.header_all("Via").enumerate() {
            let v = if i == 0 {
                via_received(via, peer)
            } else {
                via.to_string()
            };
            h.push(("Via".into(), v));
        }
        let to = req.header("To").unwrap_or_default();
        h.push(("Call-ID".into(), req.call_id().to_string()));
        h.push(("From".into(), req.header("From").unwrap_or_default().into()));
        h.push((
            "To".into(),
            match to_tag {
                Some(t) => sip::with_tag(to, t),
                None => to.to_string(),
            },
        ));
        h.push(("CSeq".into(), req.header("CSeq").unwrap_or_default().into()));
        h.extend(pre.into_iter().map(|(k, v)| (k.to_string(), v)));
        h.push(("Server".into(), SERVER.into()));
        h.extend(post.into_iter().map(|(k, v)| (k.to_string(), v)));
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            h.push(("Content-Type".into(), "application/sdp".into()));
        }
        h.push((
            "Content-Length".into(),
            sip::asterisk_content_length(body.len()),
        ));
        SipMessage {
            start: sip::StartLine::Response {
                code,
                reason: reason.into(),
            },
            headers: h,
            body: body.into(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        conn: u64,
        peer: SocketAddr,
        req: &SipMessage,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        pre: Headers,
        post: Headers,
        body: Option<&str>,
    ) {
        let msg = self.build_response(req, peer, code, reason, to_tag, pre, post, body);
        self.sip_send(conn, &msg);
    }

    /// Our own Contact, as in Asterisk's 200 OK: `<sip:127.0.0.1:8088;transport=ws>`.
    /// 481 for an in-dialog request that names no call Asterisk knows.
    fn no_such_call(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
        self.respond(
            conn,
            peer,
            req,
            481,
            "Call/Transaction Does Not Exist",
            None,
            vec![],
            vec![],
            None,
        );
    }

    fn own_contact(&self) -> String {
        format!("<sip:{};transport=ws>", self.listen)
    }

    /// Entry point for one WebSocket text message from a SIP client.
    pub fn on_sip_text(&mut self, conn: u64, text: &str) {
        self.record(Stream::SipWs, Dir::ToAsterisk, text.to_string());
        let msg = match SipMessage::parse(text) {
            Ok(m) => m,
            Err(e) => {
                // pjsip drops what it cannot parse without answering; so does the stand-in.
                self.note(format!("malformed SIP dropped: {e}"));
                return;
            }
        };
        if self.faults.sip_silent {
            return;
        }
        let Some(peer) = self.sip_conns.get(&conn).map(|c| c.peer) else {
            return;
        };
        if msg.is_request() {
            match msg.method().as_str() {
                "REGISTER" => self.on_register(conn, peer, &msg),
                "INVITE" => self.on_invite(conn, peer, &msg),
                "ACK" => {}
                "BYE" => self.on_bye(conn, peer, &msg),
                "CANCEL" => self.on_cancel(conn, peer, &msg),
                "INFO" => self.on_info(conn, peer, &msg),
                "OPTIONS" => self.respond(
                    conn,
                    peer,
                    &msg,
                    200,
                    "OK",
                    Some(&msg.branch()),
                    vec![],
                    vec![
                        ("Allow", ALLOW.into()),
                        ("Accept", "application/sdp".into()),
                    ],
                    None,
                ),
                _ => self.respond(
                    conn,
                    peer,
                    &msg,
                    501,
                    "Not Implemented",
                    None,
                    vec![],
                    vec![],
                    None,
                ),
            }
        } else {
            self.on_response(conn, &msg);
        }
    }

    /// Digest check; sends the 401 (To tag = the Via branch, as recorded) when it fails.
    fn authenticate(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) -> bool {
        if let Some(auth) = req.header("Authorization") {
            let (user, pw) = (self.cfg.sip_user.clone(), self.cfg.sip_password.clone());
            let verdict = digest::verify(
                auth,
                &req.method(),
                &self.cfg.realm,
                |u| (u == user).then(|| pw.clone()),
                |n| self.nonces.iter().any(|k| k == n),
            );
            match verdict {
                Ok(_) => return true,
                Err(e) => self.note(format!("digest refused: {e:?}")),
            }
        }
        let ch = Challenge::fresh(&self.cfg.realm);
        self.nonces.push_back(ch.nonce.clone());
        while self.nonces.len() > NONCES_KEPT {
            self.nonces.pop_front();
        }
        let branch = req.branch();
        self.respond(
            conn,
            peer,
            req,
            401,
            "Unauthorized",
            Some(&branch),
            vec![("WWW-Authenticate", ch.header_value())],
            vec![],
            None,
        );
        false
    }

    fn on_register(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
        if !self.authenticate(conn, peer, req) {
            return;
        }
        let user = self.cfg.sip_user.clone();
        let aor = sip::addr_uri(req.header("To").unwrap_or_default()).to_string();
        let header_expires: Option<u32> = req.header("Expires").and_then(|e| e.parse().ok());
        let mut contact_reply = None;
        if let Some(contact) = req.header("Contact") {
            if contact.trim() == "*" {
                self.registrations.retain(|r| r.user != user);
            } else {
                let uri = sip::addr_uri(contact).to_string();
                // RFC 3261 §10.2.1.1: the contact's own expires wins over the header
                // (so the recorded "unregister" with expires=600 stays registered).
                let expires = sip::param(contact, "expires")
                    .and_then(|e| e.parse().ok())
                    .or(header_expires)
                    .unwrap_or(3600);
                self.registrations.retain(|r| r.contact != uri);
                if expires > 0 {
                    if self.registrations.len() >= MAX_CONTACTS {
                        // remove_existing=yes: the oldest contact makes room.
                        self.registrations.remove(0);
                    }
                    self.registrations.push(Registration {
                        user,
                        contact: uri.clone(),
                        aor,
                        conn,
                        peer,
                        expires,
                    });
                    contact_reply = Some(format!(
                        "<{}>;expires={}",
                        with_transport_upper(&uri),
                        expires.saturating_sub(1)
                    ));
                }
            }
        }
        let mut pre = vec![("Date", clock::http_date(SystemTime::now()))];
        pre.extend(contact_reply.map(|c| ("Contact", c)));
        pre.extend(header_expires.map(|e| ("Expires", e.to_string())));
        let branch = req.branch();
        self.respond(conn, peer, req, 200, "OK", Some(&branch), pre, vec![], None);
    }

    fn new_inbound_call(
        &mut self,
        conn: u64,
        peer: SocketAddr,
        req: &SipMessage,
        route: &Route,
        state: &str,
        to_tag: &str,
    ) -> usize {
        let (id, name) = self.new_channel_ids();
        let exten = sip::uri_user(req.request_uri().unwrap_or_default())
            .unwrap_or_default()
            .to_string();
        let from = req.header("From").unwrap_or_default();
        let from_user = sip::uri_user(sip::addr_uri(from)).unwrap_or_default();
        let display = from
            .split('<')
            .next()
            .unwrap_or_default()
            .trim()
            .trim_matches('"');
        let (app_name, app_data, stasis, args) = match route {
            Route::Stasis { app, args } => (
                "Stasis".to_string(),
                format!("{app},{}", args.join(",")),
                Some(app.clone()),
                args.clone(),
            ),
            Route::Echo => ("Echo".into(), String::new(), None, vec![]),
            Route::Ringing => ("Wait".into(), "60".into(), None, vec![]),
            _ => (String::new(), String::new(), None, vec![]),
        };
        let channel = ChannelInfo {
            id,
            name,
            state: state.into(),
            protocol_id: req.call_id().into(),
            caller: (display.into(), from_user.into()),
            connected: (String::new(), String::new()),
            context: self.cfg.dialplan.context.clone(),
            exten,
            priority: 1,
            app_name,
            app_data,
            creationtime: clock::ari_timestamp(SystemTime::now()),
        };
        self.calls.push(Call {
            channel,
            conn,
            peer,
            outbound: false,
            invite: req.clone(),
            local_tag: to_tag.into(),
            remote_tag: req.from_tag(),
            local_cseq: rand::random::<u32>() % 30_000 + 1,
            phase: Phase::Early,
            ringing_sent: false,
            stasis_app: stasis.clone(),
            events_app: stasis,
            app_args: args,
            route: Some(route.clone()),
            local_sdp: None,
            remote_sdp: Some(req.body.clone()),
            playbacks: vec![],
            dtmf_sent: String::new(),
            cancelled: false,
            held: false,
            queued_continue: None,
            reinvite: None,
            #[cfg(feature = "media-echo")]
            media: None,
        });
        self.calls.len() - 1
    }

    fn on_invite(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
        if req.to_tag().is_some() {
            return self.on_reinvite(conn, peer, req);
        }
        if !self.authenticate(conn, peer, req) {
            return;
        }
        if self.call_index_by_call_id(req.call_id()).is_some() {
            return; // a retransmission of an INVITE in progress
        }
        let exten = sip::uri_user(req.request_uri().unwrap_or_default()).unwrap_or_default();
        let route = self.cfg.dialplan.route(exten);
        let to_tag = clock::uuid();
        if route == Route::NotFound {
            // Recorded: 404 straight away, without 100 Trying.
            return self.respond(
                conn,
                peer,
                req,
                404,
                "Not Found",
                Some(&to_tag),
                vec![],
                vec![],
                None,
            );
        }
        self.respond(conn, peer, req, 100, "Trying", None, vec![], vec![], None);
        if self.faults.never_answer {
            self.new_inbound_call(conn, peer, req, &route, "Ring", &to_tag);
            return;
        }
        match &route {
            Route::Busy => self.respond(
                conn,
                peer,
                req,
                486,
                "Busy Here",
                Some(&to_tag),
                vec![],
                vec![("Reason", "Q.850;cause=17".into())],
                None,
            ),
            Route::Echo => {
                let idx = self.new_inbound_call(conn, peer, req, &route, "Up", &to_tag);
                self.with_answer(idx, |core, i, answer| match answer {
                    Ok(answer) => core.send_answer(i, answer),
                    Err(e) => core.refuse_offer(i, &e),
                });
            }
            Route::Ringing => {
                let idx = self.new_inbound_call(conn, peer, req, &route, "Ringing", &to_tag);
                self.send_ringing(idx);
            }
            Route::Stasis { app, args } => {
                if !self.app_registered(app) {
                    // Stasis() fails without its application; the dialplan ends and
                    // chan_pjsip turns the unanswered hangup (cause 16) into 603.
                    self.note(format!("Stasis app {app} not registered"));
                    return self.respond(
                        conn,
                        peer,
                        req,
                        603,
                        "Decline",
                        Some(&to_tag),
                        vec![],
                        vec![("Reason", "Q.850;cause=16".into())],
                        None,
                    );
                }
                let idx = self.new_inbound_call(conn, peer, req, &route, "Ring", &to_tag);
                let ch = self.calls[idx].channel.json();
                let ev = ari_model::event(
                    "StasisStart",
                    vec![("args", json!(args)), ("channel", ch)],
                    &self.cfg.asterisk_id,
                    app,
                );
                self.emit(&app.clone(), ev);
            }
            Route::NotFound => {}
        }
    }

    /// A re-INVITE (ICE restart, hold): answered with a new SDP answer.
    fn on_reinvite(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
        if self.call_index_by_call_id(req.call_id()).is_none() {
            return self.no_such_call(conn, peer, req);
        }
        self.respond(conn, peer, req, 100, "Trying", None, vec![], vec![], None);
        #[cfg(feature = "media-echo")]
        if let Some(media) = self
            .call_index_by_call_id(req.call_id())
            .and_then(|i| self.calls[i].media.clone())
        {
            // The echo endpoint renegotiates for real (hold, resume): answer once it has.
            let (req, me) = (req.clone(), self.me.clone());
            self.rt.spawn(async move {
                let answer = media.reanswer(&req.body).await;
                if let Some(core) = me.upgrade() {
                    let mut core = core.lock().unwrap_or_else(|e| e.into_inner());
                    core.answer_reinvite(conn, peer, &req, answer);
                }
            });
            return;
        }
        let answer = sdp::answer(&req.body, &self.media_params());
        self.answer_reinvite(conn, peer, req, answer);
    }

    /// The final response to a re-INVITE: 200 with `answer`, or 488.
    fn answer_reinvite(
        &mut self,
        conn: u64,
        peer: SocketAddr,
        req: &SipMessage,
        answer: Result<String, String>,
    ) {
        let Some(idx) = self.call_index_by_call_id(req.call_id()) else {
            return; // the call ended meanwhile
        };
        match answer {
            Ok(answer) => {
                let answer = sdp::with_direction_for(&answer, &req.body);
                self.calls[idx].remote_sdp = Some(req.body.clone());
                self.calls[idx].local_sdp = Some(answer.clone());
                let contact = self.own_contact();
                self.respond(
                    conn,
                    peer,
                    req,
                    200,
                    "OK",
                    None,
                    vec![],
                    vec![("Contact", contact), ("Allow", ALLOW.into())],
                    Some(&answer),
                );
                self.remote_hold(idx, &req.body);
            }
            Err(_) => self.respond(
                conn,
                peer,
                req,
                488,
                "Not Acceptable Here",
                None,
                vec![],
                vec![],
                None,
            ),
        }
    }

    fn send_ringing(&mut self, idx: usize) {
        let c = &self.calls[idx];
        let (conn, peer, invite, tag) = (c.conn, c.peer, c.invite.clone(), c.local_tag.clone());
        let contact = self.own_contact();
        self.calls[idx].ringing_sent = true;
        self.respond(
            conn,
            peer,
            &invite,
            180,
            "Ringing",
            Some(&tag),
            vec![],
            vec![("Contact", contact), ("Allow", ALLOW.into())],
            None,
        );
    }

    /// 200 OK with the SDP answer for an inbound call.
    fn send_answer(&mut self, idx: usize, answer: String) {
        let offer = self.calls[idx].invite.body.clone();
        let answer = sdp::with_direction_for(&answer, &offer);
        let contact = self.own_contact();
        let c = &mut self.calls[idx];
        c.phase = Phase::Up;
        c.channel.state = "Up".into();
        c.local_sdp = Some(answer.clone());
        let (conn, peer, invite, tag) = (c.conn, c.peer, c.invite.clone(), c.local_tag.clone());
        self.respond(
            conn,
            peer,
            &invite,
            200,
            "OK",
            Some(&tag),
            vec![],
            vec![
                ("Contact", contact),
                ("Allow", ALLOW.into()),
                ("Supported", "100rel, timer, replaces, norefersub".into()),
            ],
            Some(&answer),
        );
        self.remote_hold(idx, &offer);
    }

    /// The caller's SDP `sdp` was accepted: ChannelHold when it puts the channel on hold
    /// (`c=0.0.0.0`, `sendonly`, `inactive`), ChannelUnhold when it takes it off.
    fn remote_hold(&mut self, idx: usize, sdp: &str) {
        let held = sdp::held(sdp);
        if self.calls[idx].held == held {
            return;
        }
        self.calls[idx].held = held;
        self.note(format!(
            "channel {} held: {held}",
            self.calls[idx].channel.id
        ));
        let kind = if held { "ChannelHold" } else { "ChannelUnhold" };
        self.emit_channel(idx, kind, vec![]);
    }

    fn on_bye(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
        let Some(idx) = self.call_index_by_call_id(req.call_id()) else {
            return self.no_such_call(conn, peer, req);
        };
        self.respond(conn, peer, req, 200, "OK", None, vec![], vec![], None);
        let cause = reason_cause(req).unwrap_or(0);
        self.hangup(idx, Hangup::Remote { cause });
    }

    fn on_cancel(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
        let found = self.calls.iter().position(|c| {
            !c.outbound
                && c.phase == Phase::Early
                && c.call_id() == req.call_id()
                && c.invite.branch() == req.branch()
        });
        let Some(idx) = found else {
            return self.no_such_call(conn, peer, req);
        };
        let (invite, tag) = (
            self.calls[idx].invite.clone(),
            self.calls[idx].local_tag.clone(),
        );
        self.respond(conn, peer, req, 200, "OK", Some(&tag), vec![], vec![], None);
        self.respond(
            conn,
            peer,
            &invite,
            487,
            "Request Terminated",
            Some(&tag),
            vec![],
            vec![("Allow", ALLOW.into()), ("Reason", "Q.850;cause=0".into())],
            None,
        );
        self.hangup(idx, Hangup::Remote { cause: 0 });
    }

    /// SIP INFO with `application/dtmf-relay` (`Signal=5`): a DTMF digit.
    fn on_info(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
        let Some(idx) = self.call_index_by_call_id(req.call_id()) else {
            return self.no_such_call(conn, peer, req);
        };
        self.respond(conn, peer, req, 200, "OK", None, vec![], vec![], None);
        let field = |name: &str| {
            req.body.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
            })
        };
        if let Some(d) = field("Signal") {
            // Asterisk reports the INFO's own Duration (160 ms from the gateway), as the real
            // runs show; 100 ms (the stand-in's choice) when there is none.
            let duration = field("Duration")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            let id = self.calls[idx].channel.id.clone();
            self.dtmf_received(&id, &d, duration);
            // Asterisk's Echo() returns when it reads `#`, and the dialplan's next step,
            // Hangup(), ends the call with a BYE (cause 16, normal clearing).
            if d == "#" && self.calls[idx].route == Some(Route::Echo) {
                self.hangup(idx, Hangup::Dialplan { cause: 16 });
            }
        }
    }

    /// A `ChannelDtmfReceived` for the channel (DTMF arriving from the caller).
    pub fn dtmf_received(&mut self, channel_id: &str, digit: &str, duration_ms: u32) -> bool {
        let Some(idx) = self.call_index_by_channel(channel_id) else {
            return false;
        };
        let c = &self.calls[idx];
        if let Some(app) = c.stasis_app.clone() {
            let ev = ari_model::event(
                "ChannelDtmfReceived",
                vec![
                    ("digit", digit.into()),
                    ("duration_ms", duration_ms.into()),
                    ("channel", c.channel.json()),
                ],
                &self.cfg.asterisk_id,
                &app,
            );
            self.emit(&app, ev);
        }
        true
    }

    fn emit_channel(&mut self, idx: usize, kind: &str, mut fields: Vec<(&str, Value)>) {
        let c = &self.calls[idx];
        let Some(app) = c.events_app.clone() else {
            return;
        };
        let key = if kind == "Dial" { "peer" } else { "channel" };
        fields.push((key, c.channel.json()));
        let ev = ari_model::event(kind, fields, &self.cfg.asterisk_id, &app);
        self.emit(&app, ev);
    }

    fn dial_event(&mut self, idx: usize, status: &str) {
        let user = self.cfg.sip_user.clone();
        self.emit_channel(
            idx,
            "Dial",
            vec![
                ("dialstatus", status.into()),
                ("forward", "".into()),
                ("dialstring", user.into()),
            ],
        );
    }

    fn asterisk_request(
        &self,
        method: &str,
        uri: &str,
        branch: Option<&str>,
        dialog: Headers,
        extra: Headers,
        body: Option<&str>,
    ) -> SipMessage {
        let branch = branch
            .map(str::to_string)
            .unwrap_or_else(|| format!("z9hG4bKPj{}", clock::uuid()));
        let mut h: Vec<(String, String)> = vec![(
            "Via".into(),
            format!("SIP/2.0/WS {};rport;branch={branch};alias", self.listen),
        )];
        h.extend(dialog.into_iter().map(|(k, v)| (k.to_string(), v)));
        h.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        h.push(("Max-Forwards".into(), "70".into()));
        h.push(("User-Agent".into(), SERVER.into()));
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            h.push(("Content-Type".into(), "application/sdp".into()));
        }
        h.push((
            "Content-Length".into(),
            sip::asterisk_content_length(body.len()),
        ));
        SipMessage::request(method, uri, h, body)
    }

    /// The client's contact as Asterisk rewrites it (rewrite_contact=yes).
    fn rewritten_contact(&self, peer: SocketAddr, transport: &str) -> String {
        format!(
            "sip:{}@{}:{};transport={transport}",
            self.cfg.sip_user,
            peer.ip(),
            peer.port()
        )
    }

    /// ARI originate to `PJSIP/<user>`: sends the INVITE on the newest registered contact.
    pub fn originate(
        &mut self,
        endpoint: &str,
        app: Option<String>,
        app_args: Vec<String>,
        caller_id: Option<&str>,
        timeout_s: Option<u64>,
    ) -> Result<Value, (u16, String)> {
        let resource = endpoint
            .strip_prefix("PJSIP/")
            .ok_or((400, "Invalid endpoint technology".to_string()))?;
        // `PJSIP/alice@icegate`: the endpoint's contact, with `alice` as the user of the
        // Request-URI and of the To URI (Asterisk's ast_sip_create_dialog_uac).
        let (request_user, resource) = match resource.split_once('@') {
            Some((user, endpoint)) => (Some(user), endpoint),
            None => (None, resource),
        };
        if resource != self.cfg.sip_user {
            return Err((404, "Endpoint not found".into()));
        }
        let Some(reg) = self.registrations.last().cloned() else {
            // No contact: the channel cannot be requested.
            return Err((500, "Allocation failed".into()));
        };
        let (id, name) = self.new_channel_ids();
        let call_id = clock::uuid();
        let tag = clock::uuid();
        let cseq = rand::random::<u32>() % 30_000 + 1;
        let (cname, cnum) = match caller_id {
            Some(c) => match c.split_once('<') {
                Some((n, rest)) => (
                    n.trim().trim_matches('"').to_string(),
                    rest.trim_end_matches('>').trim().to_string(),
                ),
                None => (String::new(), c.trim().to_string()),
            },
            None => (String::new(), String::new()),
        };
        let from = if cnum.is_empty() {
            format!("\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag={tag}")
        } else {
            format!("\"{cname}\" <sip:{cnum}@{}>;tag={tag}", self.cfg.hostname)
        };
        let offer = sdp::offer(&self.media_params());
        let mut uri = self.rewritten_contact(reg.peer, "WS");
        let mut to = reg.aor.clone();
        if let Some(user) = request_user {
            uri = with_user(&uri, user);
            to = with_user(&to, user);
        }
        let invite = self.asterisk_request(
            "INVITE",
            &uri,
            None,
            vec![
                ("From", from),
                ("To", format!("<{to}>")),
                (
                    "Contact",
                    format!("<sip:asterisk@{}:5060;transport=ws>", self.cfg.hostname),
                ),
                ("Call-ID", call_id.clone()),
                ("CSeq", format!("{cseq} INVITE")),
            ],
            vec![
                ("Allow", ALLOW.into()),
                (
                    "Supported",
                    "100rel, timer, replaces, norefersub, histinfo".into(),
                ),
                ("Session-Expires", "1800".into()),
                ("Min-SE", "90".into()),
            ],
            Some(&offer),
        );
        let channel = ChannelInfo {
            id: id.clone(),
            name,
            state: "Down".into(),
            protocol_id: call_id,
            caller: (cname.clone(), cnum.clone()),
            connected: (cname, cnum),
            context: self.cfg.dialplan.context.clone(),
            exten: "s".into(),
            priority: 1,
            app_name: "AppDial2".into(),
            app_data: "(Outgoing Line)".into(),
            creationtime: clock::ari_timestamp(SystemTime::now()),
        };
        let json = channel.json();
        self.calls.push(Call {
            channel,
            conn: reg.conn,
            peer: reg.peer,
            outbound: true,
            invite: invite.clone(),
            local_tag: tag,
            remote_tag: None,
            local_cseq: cseq,
            phase: Phase::Early,
            ringing_sent: false,
            stasis_app: None,
            events_app: app,
            app_args,
            route: None,
            local_sdp: Some(offer),
            remote_sdp: None,
            playbacks: vec![],
            dtmf_sent: String::new(),
            cancelled: false,
            held: false,
            queued_continue: None,
            reinvite: None,
            #[cfg(feature = "media-echo")]
            media: None,
        });
        self.sip_send(reg.conn, &invite);
        let idx = self.calls.len() - 1;
        self.dial_event(idx, "");
        if let (Some(t), true) = (timeout_s, self.cfg.honour_originate_timeout) {
            let me = self.me.clone();
            self.rt.spawn(async move {
                tokio::time::sleep(Duration::from_secs(t)).await;
                if let Some(core) = me.upgrade() {
                    let mut core = core.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(i) = core.call_index_by_channel(&id) {
                        if core.calls[i].phase == Phase::Early {
                            core.hangup(i, Hangup::NoAnswer);
                        }
                    }
                }
            });
        }
        Ok(json)
    }

    fn ack_for(
        &self,
        invite: &SipMessage,
        resp: &SipMessage,
        uri: &str,
        new_branch: bool,
    ) -> SipMessage {
        let branch = (!new_branch).then(|| invite.branch());
        let cseq = invite.cseq().map(|c| c.0).unwrap_or(1);
        self.asterisk_request(
            "ACK",
            uri,
            branch.as_deref(),
            vec![
                ("From", invite.header("From").unwrap_or_default().into()),
                ("To", resp.header("To").unwrap_or_default().into()),
                ("Call-ID", invite.call_id().into()),
                ("CSeq", format!("{cseq} ACK")),
            ],
            vec![],
            None,
        )
    }

    /// Responses from the client: to Asterisk's INVITE (ring, answer, reject) or to its
    /// BYE/CANCEL (nothing to do).
    fn on_response(&mut self, conn: u64, resp: &SipMessage) {
        let code = resp.status().unwrap_or(0);
        if resp.method() != "INVITE" {
            return;
        }
        let reinvite = self.calls.iter().position(|c| {
            c.call_id() == resp.call_id()
                && c.reinvite
                    .as_ref()
                    .is_some_and(|(r, _)| r.cseq().map(|x| x.0) == resp.cseq().map(|x| x.0))
        });
        if let Some(idx) = reinvite {
            return self.on_reinvite_response(conn, idx, resp);
        }
        let Some(idx) = self
            .calls
            .iter()
            .position(|c| c.outbound && c.call_id() == resp.call_id())
        else {
            // The final response to an INVITE we already gave up on (CANCEL sent).
            if code >= 300 {
                if let Some(invite) = self.ended_invite(resp.call_id()) {
                    let uri = invite.request_uri().unwrap_or_default().to_string();
                    let ack = self.ack_for(&invite, resp, &uri, false);
                    self.sip_send(conn, &ack);
                }
            }
            return;
        };
        match code {
            101..=199 if !self.calls[idx].ringing_sent => {
                let c = &mut self.calls[idx];
                c.ringing_sent = true;
                c.remote_tag = resp.to_tag();
                c.channel.state = "Ringing".into();
                self.emit_channel(idx, "ChannelStateChange", vec![]);
                self.dial_event(idx, "RINGING");
            }
            200..=299 => {
                let peer = self.calls[idx].peer;
                let uri = self.rewritten_contact(peer, "ws");
                let invite = self.calls[idx].invite.clone();
                let ack = self.ack_for(&invite, resp, &uri, true);
                self.sip_send(conn, &ack);
                if self.calls[idx].phase == Phase::Up {
                    return; // a retransmitted 200: the ACK again is all
                }
                let args = self.calls[idx].app_args.clone();
                let c = &mut self.calls[idx];
                c.remote_tag = resp.to_tag();
                c.remote_sdp = Some(resp.body.clone());
                c.phase = Phase::Up;
                c.channel.state = "Up".into();
                self.emit_channel(idx, "ChannelStateChange", vec![]);
                self.remote_hold(idx, &resp.body);
                self.dial_event(idx, "ANSWER");
                let Some(app) = self.calls[idx].events_app.clone() else {
                    return;
                };
                let c = &mut self.calls[idx];
                c.channel.app_name = "Stasis".into();
                c.channel.app_data = std::iter::once(app.clone())
                    .chain(args.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(",");
                c.stasis_app = Some(app);
                self.emit_channel(
                    idx,
                    "ChannelVarset",
                    vec![("variable", "STASISSTATUS".into()), ("value", "".into())],
                );
                self.emit_channel(idx, "StasisStart", vec![("args", json!(args))]);
            }
            300.. => {
                let invite = self.calls[idx].invite.clone();
                let uri = invite.request_uri().unwrap_or_default().to_string();
                let ack = self.ack_for(&invite, resp, &uri, false);
                self.sip_send(conn, &ack);
                self.hangup(idx, Hangup::Rejected { code });
            }
            _ => {}
        }
    }

    fn ended_invite(&self, call_id: &str) -> Option<SipMessage> {
        self.ended_invites
            .iter()
            .rev()
            .find(|m| m.call_id() == call_id)
            .cloned()
    }

    /// Ends a call: the SIP side (unless already done) and the ARI events, in the
    /// recorded order (ChannelVarset RTPAUDIOQOS*, ChannelHangupRequest, PlaybackFinished,
    /// StasisEnd, STASISSTATUS, ChannelDestroyed).
    pub fn hangup(&mut self, idx: usize, how: Hangup) {
        let call = self.calls[idx].clone();
        match how {
            Hangup::Ari { cause } | Hangup::Dialplan { cause } => self.hangup_sip(&call, cause),
            Hangup::NoAnswer => self.hangup_sip(&call, 19),
            Hangup::Remote { .. } | Hangup::Rejected { .. } | Hangup::TransportLost => {}
        }
        let answered = call.phase == Phase::Up;
        if answered && !matches!(how, Hangup::Rejected { .. }) {
            for (var, value) in [
                ("RTPAUDIOQOS", "ssrc=0;themssrc=0;lp=0;rxjitter=0.000000;rxcount=0;txjitter=0.000000;txcount=0;rlp=0;rtt=0.000000;rxmes=0.000000;txmes=0.000000"),
                ("RTPAUDIOQOSJITTER", "minrxjitter=000.000000;maxrxjitter=000.000000;avgrxjitter=000.000000;stdevrxjitter=000.000000;mintxjitter=000.000000;maxtxjitter=000.000000;avgtxjitter=000.000000;stdevtxjitter=000.000000;"),
                ("RTPAUDIOQOSLOSS", "  minrxlost=000.000000;  maxrxlost=000.000000;  avgrxlost=000.000000;  stdevrxlost=000.000000;  mintxlost=000.000000;  maxtxlost=000.000000;  avgtxlost=000.000000;  stdevtxlost=000.000000;"),
                ("RTPAUDIOQOSRTT", "     minrtt=000.000000;     maxrtt=000.000000;     avgrtt=000.000000;     stdevrtt=000.000000;"),
                ("RTPAUDIOQOSMES", "   minrxmes=000.000000;   maxrxmes=000.000000;   avgrxmes=000.000000;   stdevrxmes=000.000000;   mintxmes=000.000000;   maxtxmes=000.000000;   avgtxmes=000.000000;   stdevtxmes=000.000000;"),
            ] {
                self.emit_channel(idx, "ChannelVarset", vec![("variable", var.into()), ("value", value.into())]);
            }
        }
        let (destroy_cause, tech) = match how {
            Hangup::Ari { cause } => {
                // ARI hangs up with a soft hangup; `cause` carries the flag
                // AST_SOFTHANGUP_EXPLICIT (32), as recorded.
                self.emit_channel(
                    idx,
                    "ChannelHangupRequest",
                    vec![("cause", 32.into()), ("soft", true.into())],
                );
                (cause, None)
            }
            Hangup::Remote { cause } | Hangup::Dialplan { cause } => {
                self.emit_channel(idx, "ChannelHangupRequest", vec![]);
                (cause, None)
            }
            Hangup::Rejected { code } => {
                let (cause, status) = ari_model::sip_to_cause(code);
                self.emit_channel(
                    idx,
                    "ChannelHangupRequest",
                    vec![("cause", cause.into()), ("tech_cause", code.into())],
                );
                self.dial_event(idx, status);
                (cause, Some(code))
            }
            Hangup::NoAnswer => {
                self.dial_event(idx, "NOANSWER");
                (19, None)
            }
            Hangup::TransportLost => {
                self.emit_channel(idx, "ChannelHangupRequest", vec![]);
                (16, None)
            }
        };
        for pb in &call.playbacks {
            if pb.state == "playing" || pb.state == "queued" {
                let mut pb = pb.clone();
                pb.state = "failed".into();
                self.emit_playback(&call, "PlaybackFinished", &pb);
            }
        }
        if call.stasis_app.is_some() {
            self.emit_channel(idx, "StasisEnd", vec![]);
            if call.outbound {
                self.emit_channel(
                    idx,
                    "ChannelVarset",
                    vec![
                        ("variable", "STASISSTATUS".into()),
                        ("value", "SUCCESS".into()),
                    ],
                );
            }
        }
        if call.outbound {
            // Recorded: ChannelDestroyed shows the dial leg's dialplan again.
            let c = &mut self.calls[idx];
            c.channel.app_name = "AppDial2".into();
            c.channel.app_data = "(Outgoing Line)".into();
        }
        let mut fields = vec![
            ("cause", destroy_cause.into()),
            ("cause_txt", ari_model::cause_txt(destroy_cause).into()),
        ];
        fields.extend(tech.map(|t| ("tech_cause", Value::from(t))));
        self.emit_channel(idx, "ChannelDestroyed", fields);
        let id = call.channel.id.clone();
        for b in &mut self.bridges {
            b.channels.retain(|c| *c != id);
        }
        let _gone = self.calls.remove(idx);
        #[cfg(feature = "media-echo")]
        if let Some(endpoint) = _gone.media {
            self.rt.spawn(async move { endpoint.close().await });
        }
    }

    /// From, To and the request URI of a request Asterisk sends in the call's dialog.
    /// Asterisk's next request in `call`'s dialog (CSeq one past its last); the caller records
    /// that CSeq when the dialog goes on after it.
    fn dialog_request(
        &self,
        call: &Call,
        method: &str,
        extra: Headers,
        body: Option<&str>,
    ) -> SipMessage {
        let (from, to, uri) = self.dialog_parties(call);
        let cseq = call.local_cseq + 1;
        self.asterisk_request(
            method,
            &uri,
            None,
            vec![
                ("From", from),
                ("To", to),
                ("Call-ID", call.call_id().into()),
                ("CSeq", format!("{cseq} {method}")),
            ],
            extra,
            body,
        )
    }

    fn dialog_parties(&self, call: &Call) -> (String, String, String) {
        if call.outbound {
            (
                call.invite.header("From").unwrap_or_default().to_string(),
                sip::with_tag(
                    call.invite.header("To").unwrap_or_default(),
                    call.remote_tag.as_deref().unwrap_or_default(),
                ),
                self.rewritten_contact(call.peer, "ws"),
            )
        } else {
            (
                sip::with_tag(
                    call.invite.header("To").unwrap_or_default(),
                    &call.local_tag,
                ),
                call.invite.header("From").unwrap_or_default().to_string(),
                self.rewritten_contact(call.peer, "WS"),
            )
        }
    }

    /// A re-INVITE from Asterisk with a changed offer (as after a bridge change or hold):
    /// its own SDP with the next `o=` version. False when the call is not up or one is open.
    pub fn reinvite(&mut self, idx: usize) -> bool {
        let call = &self.calls[idx];
        let Some(ours) = call.local_sdp.as_deref() else {
            return false;
        };
        if call.phase != Phase::Up || call.reinvite.is_some() {
            return false;
        }
        let offer = sdp::next_version(ours);
        let cseq = call.local_cseq + 1;
        let invite = self.dialog_request(
            call,
            "INVITE",
            vec![("Contact", self.own_contact()), ("Allow", ALLOW.into())],
            Some(&offer),
        );
        let conn = call.conn;
        let c = &mut self.calls[idx];
        c.local_cseq = cseq;
        c.reinvite = Some((invite.clone(), offer));
        self.sip_send(conn, &invite);
        true
    }

    /// A key pressed on the PBX side, sent as res_pjsip_dtmf_info does for an endpoint with
    /// `dtmf_mode=info`: an INFO in the call's dialog (`application/dtmf-relay`). Its response
    /// needs nothing more. False when the call is not up.
    pub fn send_dtmf_info(&mut self, idx: usize, digit: &str) -> bool {
        let call = &self.calls[idx];
        if call.phase != Phase::Up {
            return false;
        }
        let cseq = call.local_cseq + 1;
        let body = format!("Signal={digit}\r\nDuration=100\r\n");
        let mut info = self.dialog_request(
            call,
            "INFO",
            vec![("Contact", self.own_contact())],
            Some(&body),
        );
        for (name, value) in &mut info.headers {
            if name.eq_ignore_ascii_case("Content-Type") {
                *value = "application/dtmf-relay".into();
            }
        }
        let conn = call.conn;
        self.calls[idx].local_cseq = cseq;
        self.sip_send(conn, &info);
        true
    }

    /// The final response to Asterisk's re-INVITE: ACK it (§13.2.2.4 / §17.1.1.3).
    fn on_reinvite_response(&mut self, conn: u64, idx: usize, resp: &SipMessage) {
        let code = resp.status().unwrap_or(0);
        if code < 200 {
            return;
        }
        let Some((invite, offer)) = self.calls[idx].reinvite.take() else {
            return;
        };
        let ok = code < 300;
        let uri = if ok {
            self.rewritten_contact(self.calls[idx].peer, "ws")
        } else {
            invite.request_uri().unwrap_or_default().to_string()
        };
        let ack = self.ack_for(&invite, resp, &uri, ok);
        self.sip_send(conn, &ack);
        if ok {
            let c = &mut self.calls[idx];
            c.local_sdp = Some(offer);
            c.remote_sdp = Some(resp.body.clone());
            self.remote_hold(idx, &resp.body);
        }
        self.note(format!("re-INVITE answered with {code}"));
    }

    /// What goes out on SIP when Asterisk ends a call: BYE when up, CANCEL for its own
    /// unanswered INVITE, a final response (603 for cause 16) for the caller's.
    fn hangup_sip(&mut self, call: &Call, cause: u32) {
        if call.phase == Phase::Up {
            let bye = self.dialog_request(
                call,
                "BYE",
                vec![("Reason", format!("Q.850;cause={cause}"))],
                None,
            );
            self.sip_send(call.conn, &bye);
        } else if call.outbound {
            let inv = &call.invite;
            let cseq = inv.cseq().map(|c| c.0).unwrap_or(1);
            let branch = inv.branch();
            let cancel = self.asterisk_request(
                "CANCEL",
                inv.request_uri().unwrap_or_default(),
                Some(&branch),
                vec![
                    ("From", inv.header("From").unwrap_or_default().into()),
                    ("To", inv.header("To").unwrap_or_default().into()),
                    ("Call-ID", inv.call_id().into()),
                    ("CSeq", format!("{cseq} CANCEL")),
                ],
                vec![],
                None,
            );
            self.ended_invites.push(inv.clone());
            self.sip_send(call.conn, &cancel);
        } else {
            let (code, reason) = match cause {
                1 | 3 => (404, "Not Found"),
                17 => (486, "Busy Here"),
                19 => (480, "Temporarily Unavailable"),
                21 => (403, "Forbidden"),
                34 => (503, "Service Unavailable"),
                _ => (603, "Decline"),
            };
            self.respond(
                call.conn,
                call.peer,
                &call.invite.clone(),
                code,
                reason,
                Some(&call.local_tag.clone()),
                vec![],
                vec![("Reason", format!("Q.850;cause={cause}"))],
                None,
            );
        }
    }

    pub fn emit_playback(&mut self, call: &Call, kind: &str, pb: &Playback) {
        if let Some(app) = call.events_app.clone() {
            let ev = ari_model::event(
                kind,
                vec![("playback", pb.json())],
                &self.cfg.asterisk_id,
                &app,
            );
            self.emit(&app, ev);
        }
    }

    /// ARI `ring`: 180 Ringing for a caller's INVITE still unanswered.
    pub fn ari_ring(&mut self, idx: usize) {
        let c = &self.calls[idx];
        if !c.outbound && c.phase == Phase::Early && !c.ringing_sent {
            self.send_ringing(idx);
        }
    }

    /// ARI `answer`: ChannelStateChange, then 200 OK with the SDP answer (recorded order).
    pub fn ari_answer(&mut self, idx: usize) -> Result<(), (u16, String)> {
        let c = &self.calls[idx];
        if c.phase == Phase::Up {
            return Ok(());
        }
        if c.outbound {
            return Err((409, "Channel not answerable".into()));
        }
        if self.cfg.media == MediaMode::Static {
            // Checked first so that a bad offer fails the request, as in Asterisk.
            sdp::answer(&c.invite.body, &self.media_params())
                .map_err(|e| (500, format!("Failed to answer channel: {e}")))?;
        }
        self.with_answer(idx, |core, i, answer| match answer {
            Ok(answer) => {
                core.calls[i].channel.state = "Up".into();
                core.emit_channel(i, "ChannelStateChange", vec![]);
                core.send_answer(i, answer);
            }
            Err(e) => {
                core.note(format!("answer failed: {e}"));
                core.hangup(i, Hangup::Ari { cause: 58 });
            }
        });
        Ok(())
    }

    /// The SDP answer to call `idx`'s offer, handed to `then` under the lock: at once
    /// (static media), or once the echo endpoint has gathered its candidates.
    fn with_answer(&mut self, idx: usize, then: fn(&mut Core, usize, Result<String, String>)) {
        let turn = match &self.cfg.media {
            MediaMode::Static => {
                let answer = sdp::answer(&self.calls[idx].invite.body, &self.media_params());
                return then(self, idx, answer);
            }
            MediaMode::Echo(turn) => turn.clone(),
        };
        #[cfg(feature = "media-echo")]
        {
            let offer = self.calls[idx].invite.body.clone();
            let id = self.calls[idx].channel.id.clone();
            let me = self.me.clone();
            self.rt.spawn(async move {
                let made = super::media::EchoEndpoint::answer(&offer, &turn).await;
                let Some(core) = me.upgrade() else { return };
                let orphan = {
                    let mut core = core.lock().unwrap_or_else(|e| e.into_inner());
                    match (core.call_index_by_channel(&id), made) {
                        (Some(i), Ok((endpoint, sdp))) => {
                            core.calls[i].media = Some(std::sync::Arc::new(endpoint));
                            then(&mut core, i, Ok(sdp));
                            None
                        }
                        (Some(i), Err(e)) => {
                            then(&mut core, i, Err(e));
                            None
                        }
                        // The call ended while the endpoint was being made.
                        (None, Ok((endpoint, _))) => Some(endpoint),
                        (None, Err(_)) => None,
                    }
                };
                if let Some(endpoint) = orphan {
                    endpoint.close().await;
                }
            });
        }
        #[cfg(not(feature = "media-echo"))]
        {
            let _ = turn;
            then(
                self,
                idx,
                Err("MediaMode::Echo needs the media-echo feature".into()),
            );
        }
    }

    /// 488 for an offer the media side cannot answer; the call is forgotten.
    fn refuse_offer(&mut self, idx: usize, why: &str) {
        self.note(format!("offer refused: {why}"));
        let c = self.calls.remove(idx);
        self.respond(
            c.conn,
            c.peer,
            &c.invite,
            488,
            "Not Acceptable Here",
            Some(&c.local_tag),
            vec![],
            vec![],
            None,
        );
    }

    /// ARI `continue`: the channel leaves Stasis (StasisEnd) and runs the dialplan at
    /// `extension` (or ends, as `from-icegate` has nothing after `Stasis()`).
    pub fn ari_continue(&mut self, idx: usize, extension: Option<&str>) {
        self.emit_channel(idx, "StasisEnd", vec![]);
        let c = &mut self.calls[idx];
        c.stasis_app = None;
        c.events_app = None;
        let route = extension.map(|e| self.cfg.dialplan.route(e));
        match route {
            Some(Route::Echo) => {
                let c = &mut self.calls[idx];
                c.channel.app_name = "Echo".into();
                c.channel.app_data = String::new();
                c.route = Some(Route::Echo);
                if c.phase == Phase::Early && !c.outbound {
                    self.with_answer(idx, |core, i, answer| match answer {
                        Ok(answer) => core.send_answer(i, answer),
                        Err(e) => core.refuse_offer(i, &e),
                    });
                }
            }
            Some(Route::Stasis { app, args }) => {
                let c = &mut self.calls[idx];
                c.stasis_app = Some(app.clone());
                c.events_app = Some(app.clone());
                c.app_args = args.clone();
                self.emit_channel(idx, "StasisStart", vec![("args", json!(args))]);
            }
            Some(Route::Busy) => self.hangup(idx, Hangup::Ari { cause: 17 }),
            Some(Route::Ringing) => self.ari_ring(idx),
            Some(Route::NotFound) => self.hangup(idx, Hangup::Ari { cause: 1 }),
            None => self.hangup(idx, Hangup::Ari { cause: 16 }),
        }
    }

    /// The SIP WebSocket `conn` closed: its contacts go, its calls end.
    pub fn sip_closed(&mut self, conn: u64) {
        self.sip_conns.remove(&conn);
        self.registrations.retain(|r| r.conn != conn);
        while let Some(idx) = self.calls.iter().position(|c| c.conn == conn) {
            self.hangup(idx, Hangup::TransportLost);
        }
        self.note(format!("SIP WebSocket {conn} closed"));
    }
}
