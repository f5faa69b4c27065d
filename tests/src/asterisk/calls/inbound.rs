//! Requests from the client (icegate's gateway): REGISTER, INVITEs for the dialplan,
//! re-INVITEs, BYE, CANCEL and INFO, and the answers the stand-in gives them.

use super::*;

impl Core {
    pub(super) fn on_register(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
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

    pub(super) fn new_inbound_call(
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

    pub(super) fn on_invite(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
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
    pub(super) fn on_reinvite(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
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
    pub(super) fn answer_reinvite(
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

    pub(super) fn send_ringing(&mut self, idx: usize) {
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
    pub(super) fn send_answer(&mut self, idx: usize, answer: String) {
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
    pub(super) fn remote_hold(&mut self, idx: usize, sdp: &str) {
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

    pub(super) fn on_bye(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
        let Some(idx) = self.call_index_by_call_id(req.call_id()) else {
            return self.no_such_call(conn, peer, req);
        };
        self.respond(conn, peer, req, 200, "OK", None, vec![], vec![], None);
        let cause = reason_cause(req).unwrap_or(0);
        self.hangup(idx, Hangup::Remote { cause });
    }

    pub(super) fn on_cancel(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
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
    pub(super) fn on_info(&mut self, conn: u64, peer: SocketAddr, req: &SipMessage) {
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
}
