//! ARI REST under `/ari`: basic auth (or `api_key=user:pass`), and the resources the
//! recordings use with their recorded status codes and bodies. Resources the recordings
//! do not show (bridges, continue, dtmf) follow the ARI documentation.

use super::ari_model::{self, Bridge, Playback};
use super::calls::Hangup;
use super::clock;
use super::state::{Core, Dir, Stream};
use base64::Engine;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// A REST answer: status and JSON body (None = no body, e.g. 204).
pub type Reply = (u16, Option<Value>);

fn err(status: u16, message: &str) -> Reply {
    (status, Some(json!({ "message": message })))
}

/// Percent-decoding for query values (`callerId=Reception%20%3C100%3E`).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=x%20y` → pairs.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Whether the request carries the ARI credentials (Basic auth or `api_key`).
pub fn authorized(core: &Core, authorization: Option<&str>, query: &[(String, String)]) -> bool {
    let want = format!("{}:{}", core.cfg.ari_user, core.cfg.ari_password);
    if let Some((_, k)) = query.iter().find(|(k, _)| k == "api_key") {
        return *k == want;
    }
    authorization
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .is_some_and(|d| d == want.as_bytes())
}

impl Core {
    /// Handles one REST request; `path` is below `/ari`, `query` undecoded.
    pub fn ari_rest(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Reply {
        let shown = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        self.record(
            Stream::AriRest,
            Dir::ToAsterisk,
            json!({"method": method, "path": shown}).to_string(),
        );
        let mut params = parse_query(query);
        let reply = if !authorized(self, authorization, &params) {
            err(401, "Authentication required")
        } else if let Some(status) = self.faults.ari_rest_status {
            err(status, "Injected failure")
        } else {
            // ARI also takes parameters as a JSON object body.
            if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
                for (k, v) in m {
                    let v = v.as_str().map(str::to_string).unwrap_or(v.to_string());
                    params.push((k, v));
                }
            }
            let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
            self.route(method, &segs, &params)
        };
        self.record(
            Stream::AriRest,
            Dir::FromAsterisk,
            json!({
                "status": reply.0,
                "content_type": reply.1.as_ref().map(|_| "application/json"),
                "body": reply.1.clone().unwrap_or(Value::String(String::new())),
            })
            .to_string(),
        );
        reply
    }

    fn endpoint_json(&self) -> Value {
        let online = !self.registrations.is_empty();
        json!({
            "technology": "PJSIP",
            "resource": self.cfg.sip_user,
            "state": if online { "online" } else { "offline" },
            "channel_ids": self.calls.iter().map(|c| c.channel.id.clone()).collect::<Vec<_>>(),
        })
    }

    fn application_json(&self, app: &str) -> Value {
        let channels: Vec<String> = self
            .calls
            .iter()
            .filter(|c| c.events_app.as_deref() == Some(app))
            .map(|c| c.channel.id.clone())
            .collect();
        json!({
            "name": app,
            "channel_ids": channels,
            "bridge_ids": [],
            "endpoint_ids": [],
            "device_names": [],
            "events_allowed": [],
            "events_disallowed": [],
        })
    }

    fn route(&mut self, method: &str, segs: &[&str], params: &[(String, String)]) -> Reply {
        let p = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        match (method, segs) {
            ("GET", ["asterisk", "info"]) => (
                200,
                Some(json!({
                    "build": {"os": "Linux", "kernel": "stand-in", "machine": "x86_64",
                              "options": "OPTIONAL_API", "date": "2026-11-24 20:05:41 UTC", "user": "root"},
                    "system": {"version": "22.10.1", "entity_id": self.cfg.asterisk_id},
                    "config": {"name": "", "default_language": "en", "setid": {"user": "", "group": ""}},
                    "status": {"startup_time": clock::ari_timestamp(SystemTime::now()),
                               "last_reload_time": clock::ari_timestamp(SystemTime::now())},
                })),
            ),
            ("GET", ["endpoints"]) | ("GET", ["endpoints", "PJSIP"]) => {
                (200, Some(json!([self.endpoint_json()])))
            }
            ("GET", ["endpoints", "PJSIP", res]) if *res == self.cfg.sip_user => {
                (200, Some(self.endpoint_json()))
            }
            ("GET", ["endpoints", ..]) => err(404, "Endpoint not found"),
            ("GET", ["applications"]) => {
                let mut apps: Vec<String> = self
                    .event_conns
                    .values()
                    .flat_map(|c| c.apps.clone())
                    .collect();
                apps.sort();
                apps.dedup();
                (
                    200,
                    Some(Value::Array(
                        apps.iter().map(|a| self.application_json(a)).collect(),
                    )),
                )
            }
            ("GET", ["applications", app]) => {
                if self.app_registered(app) {
                    (200, Some(self.application_json(app)))
                } else {
                    err(404, "Application not found")
                }
            }
            ("GET", ["channels"]) => (
                200,
                Some(Value::Array(
                    self.calls.iter().map(|c| c.channel.json()).collect(),
                )),
            ),
            ("POST", ["channels"]) => {
                let Some(endpoint) = p("endpoint") else {
                    return err(400, "Endpoint must be specified");
                };
                let args: Vec<String> = p("appArgs")
                    .map(|a| a.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                let timeout = p("timeout").and_then(|t| t.parse().ok()).or(Some(30));
                match self.originate(&endpoint, p("app"), args, p("callerId").as_deref(), timeout) {
                    Ok(ch) => (200, Some(ch)),
                    Err((s, m)) => err(s, &m),
                }
            }
            (_, ["channels", id, rest @ ..]) => {
                let Some(idx) = self.call_index_by_channel(id) else {
                    return err(404, "Channel not found");
                };
                self.channel_op(method, idx, rest, params)
            }
            ("GET", ["bridges"]) => (
                200,
                Some(Value::Array(
                    self.bridges.iter().map(Bridge::json).collect(),
                )),
            ),
            ("POST", ["bridges"]) | ("POST", ["bridges", _]) => {
                let id = segs
                    .get(1)
                    .map(|s| s.to_string())
                    .or(p("bridgeId"))
                    .unwrap_or_else(clock::uuid);
                let b = Bridge {
                    id,
                    bridge_type: p("type").unwrap_or_else(|| "mixing".into()),
                    name: p("name").unwrap_or_default(),
                    channels: vec![],
                    creationtime: clock::ari_timestamp(SystemTime::now()),
                };
                let j = b.json();
                self.bridges.retain(|x| x.id != b.id);
                self.bridges.push(b);
                (200, Some(j))
            }
            (_, ["bridges", id, rest @ ..]) => {
                let Some(bi) = self.bridges.iter().position(|b| b.id == *id) else {
                    return err(404, "Bridge not found");
                };
                self.bridge_op(method, bi, rest, params)
            }
            ("DELETE", ["playbacks", id]) => {
                let found = self.calls.iter().enumerate().find_map(|(i, c)| {
                    c.playbacks
                        .iter()
                        .any(|pb| pb.id == *id && pb.state == "playing")
                        .then_some(i)
                });
                match found {
                    Some(idx) => {
                        self.playback_done(idx, id);
                        (204, None)
                    }
                    None => err(404, "Playback not found"),
                }
            }
            ("GET", ["playbacks", id]) => self
                .calls
                .iter()
                .flat_map(|c| c.playbacks.iter())
                .find(|pb| pb.id == *id)
                .map(|pb| (200, Some(pb.json())))
                .unwrap_or_else(|| err(404, "Playback not found")),
            _ => err(404, "Resource not found"),
        }
    }

    fn channel_op(
        &mut self,
        method: &str,
        idx: usize,
        rest: &[&str],
        params: &[(String, String)],
    ) -> Reply {
        let p = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let in_stasis = self.calls[idx].stasis_app.is_some();
        match (method, rest) {
            ("GET", []) => (200, Some(self.calls[idx].channel.json())),
            ("DELETE", []) => {
                // `reason_code` (a Q.850 number) or `reason` (a name), as ARI documents.
                let cause = match (p("reason_code"), p("reason").as_deref()) {
                    (Some(code), _) => match code.parse() {
                        Ok(c) => c,
                        Err(_) => return err(400, "Invalid reason for hangup provided"),
                    },
                    (None, Some("normal") | None) => 16,
                    (None, Some("busy")) => 17,
                    (None, Some("no_answer") | Some("timeout")) => 19,
                    (None, Some("rejected")) => 21,
                    (None, Some("unallocated")) => 1,
                    (None, Some("congestion")) => 34,
                    (None, Some(_)) => return err(400, "Invalid reason for hangup provided"),
                };
                self.hangup(idx, Hangup::Ari { cause });
                (204, None)
            }
            _ if !in_stasis => err(409, "Channel not in Stasis application"),
            ("POST", ["ring"]) => {
                self.ari_ring(idx);
                (204, None)
            }
            ("DELETE", ["ring"]) => (204, None),
            ("POST", ["answer"]) => match self.ari_answer(idx) {
                Ok(()) => (204, None),
                Err((s, m)) => err(s, &m),
            },
            ("POST", ["play"]) | ("POST", ["play", _]) => {
                let Some(media) = p("media") else {
                    return err(400, "media must be specified");
                };
                let pb = Playback {
                    id: rest
                        .get(1)
                        .map(|s| s.to_string())
                        .or(p("playbackId"))
                        .unwrap_or_else(clock::uuid),
                    media_uri: media.clone(),
                    target_uri: format!("channel:{}", self.calls[idx].channel.id),
                    state: "playing".into(),
                };
                self.calls[idx].playbacks.push(pb.clone());
                let call = self.calls[idx].clone();
                self.emit_playback(&call, "PlaybackStarted", &pb);
                if media.starts_with("sound:") {
                    self.finish_playback_later(call.channel.id.clone(), pb.id.clone());
                }
                (201, Some(pb.json()))
            }
            ("POST", ["dtmf"]) => {
                let Some(d) = p("dtmf") else {
                    return err(400, "DTMF is required");
                };
                self.calls[idx].dtmf_sent.push_str(&d);
                (204, None)
            }
            ("POST", ["continue"]) => {
                let ext = p("extension");
                if self.calls[idx]
                    .playbacks
                    .iter()
                    .any(|pb| pb.state == "playing")
                {
                    // Queued behind the playback (a tone never ends by itself), as Asterisk's
                    // control queue does; answered at once all the same.
                    self.note("continue waits for the playback to end");
                    self.calls[idx].queued_continue = Some(ext);
                } else {
                    self.ari_continue(idx, ext.as_deref());
                }
                (204, None)
            }
            ("POST", [op]) | ("DELETE", [op])
                if ["hold", "moh", "silence", "mute"].contains(op) =>
            {
                (204, None)
            }
            _ => err(404, "Resource not found"),
        }
    }

    fn finish_playback_later(&self, channel: String, playback: String) {
        let me = self.me.clone();
        let ms = self.cfg.playback_ms;
        self.rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let Some(core) = me.upgrade() else { return };
            let mut core = core.lock().unwrap_or_else(|e| e.into_inner());
            let Some(idx) = core.call_index_by_channel(&channel) else {
                return;
            };
            core.playback_done(idx, &playback);
        });
    }

    /// Playback `playback` of call `idx` ended (played out, or stopped by `DELETE
    /// /playbacks/{id}`): PlaybackFinished with state `done`, and a `continue` that waited for
    /// it runs once nothing plays any more.
    fn playback_done(&mut self, idx: usize, playback: &str) {
        let Some(pb) = self.calls[idx]
            .playbacks
            .iter_mut()
            .find(|p| p.id == playback && p.state == "playing")
        else {
            return;
        };
        pb.state = "done".into();
        let pb = pb.clone();
        let call = self.calls[idx].clone();
        self.emit_playback(&call, "PlaybackFinished", &pb);
        let playing = call.playbacks.iter().any(|p| p.state == "playing");
        if !playing {
            if let Some(extension) = self.calls[idx].queued_continue.take() {
                self.ari_continue(idx, extension.as_deref());
            }
        }
    }

    fn bridge_op(
        &mut self,
        method: &str,
        bi: usize,
        rest: &[&str],
        params: &[(String, String)],
    ) -> Reply {
        let channels: Vec<String> = params
            .iter()
            .find(|(k, _)| k == "channel")
            .map(|(_, v)| v.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        match (method, rest) {
            ("GET", []) => (200, Some(self.bridges[bi].json())),
            ("DELETE", []) => {
                let b = self.bridges.remove(bi);
                for ch in &b.channels {
                    self.bridge_event("ChannelLeftBridge", &b, ch);
                }
                (204, None)
            }
            ("POST", ["addChannel"]) | ("POST", ["removeChannel"]) => {
                if channels.is_empty() {
                    return err(400, "Channel parameter is required");
                }
                if channels
                    .iter()
                    .any(|c| self.call_index_by_channel(c).is_none())
                {
                    return err(422, "Channel not found");
                }
                let add = rest == ["addChannel"];
                for ch in channels {
                    let b = &mut self.bridges[bi];
                    if add {
                        if !b.channels.contains(&ch) {
                            b.channels.push(ch.clone());
                        }
                    } else {
                        b.channels.retain(|c| *c != ch);
                    }
                    let b = b.clone();
                    let kind = if add {
                        "ChannelEnteredBridge"
                    } else {
                        "ChannelLeftBridge"
                    };
                    self.bridge_event(kind, &b, &ch);
                }
                (204, None)
            }
            _ => err(404, "Resource not found"),
        }
    }

    fn bridge_event(&mut self, kind: &str, b: &Bridge, channel: &str) {
        let Some(idx) = self.call_index_by_channel(channel) else {
            return;
        };
        let c = &self.calls[idx];
        if let Some(app) = c.events_app.clone() {
            let ev = ari_model::event(
                kind,
                vec![("bridge", b.json()), ("channel", c.channel.json())],
                &self.cfg.asterisk_id,
                &app,
            );
            self.emit(&app, ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        let q = parse_query("endpoint=PJSIP/icegate&callerId=Reception%20%3C100%3E&timeout=20");
        assert_eq!(q[1].1, "Reception <100>");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
