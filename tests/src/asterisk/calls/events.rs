//! ARI events and the SIP request builders that calls on both sides use.

use super::*;

impl Core {
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

    pub(super) fn emit_channel(&mut self, idx: usize, kind: &str, mut fields: Vec<(&str, Value)>) {
        let c = &self.calls[idx];
        let Some(app) = c.events_app.clone() else {
            return;
        };
        let key = if kind == "Dial" { "peer" } else { "channel" };
        fields.push((key, c.channel.json()));
        let ev = ari_model::event(kind, fields, &self.cfg.asterisk_id, &app);
        self.emit(&app, ev);
    }

    pub(super) fn dial_event(&mut self, idx: usize, status: &str) {
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

    pub(super) fn asterisk_request(
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
    pub(super) fn rewritten_contact(&self, peer: SocketAddr, transport: &str) -> String {
        format!(
            "sip:{}@{}:{};transport={transport}",
            self.cfg.sip_user,
            peer.ip(),
            peer.port()
        )
    }
}
