//! Asterisk-originated calls (ARI originate) and what follows them: the client's
//! responses, re-INVITEs and INFO from Asterisk, and every hangup.

use super::*;

impl Core {
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

    pub(super) fn ack_for(
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
    pub(super) fn on_response(&mut self, conn: u64, resp: &SipMessage) {
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

    pub(super) fn ended_invite(&self, call_id: &str) -> Option<SipMessage> {
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
    pub(super) fn dialog_request(
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

    pub(super) fn dialog_parties(&self, call: &Call) -> (String, String, String) {
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
    pub(super) fn on_reinvite_response(&mut self, conn: u64, idx: usize, resp: &SipMessage) {
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
    pub(super) fn hangup_sip(&mut self, call: &Call, cause: u32) {
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
}
