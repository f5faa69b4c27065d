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

mod control;
mod events;
mod inbound;
mod outbound;

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
