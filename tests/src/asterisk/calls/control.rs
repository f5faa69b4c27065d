//! The ARI control side of a call in Stasis: ring, answer, play, continue.

use super::*;

impl Core {
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
    pub(super) fn with_answer(
        &mut self,
        idx: usize,
        then: fn(&mut Core, usize, Result<String, String>),
    ) {
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
                let made = super::super::media::EchoEndpoint::answer(&offer, &turn).await;
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
    pub(super) fn refuse_offer(&mut self, idx: usize, why: &str) {
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
}
