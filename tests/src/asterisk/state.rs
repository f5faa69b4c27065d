//! The stand-in's shared state: configuration, connections, registrations, calls, the
//! log of everything received and sent, and the scripted faults. One mutex guards it all;
//! handlers never await while holding it (outgoing messages go into unbounded channels).

use super::ari_model::{Bridge, ChannelInfo, Playback};
use super::dialplan::{Dialplan, Route};
use super::sdp::MediaParams;
use super::sip::SipMessage;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, Weak};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// How the stand-in's media side behaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MediaMode {
    /// A valid SDP answer with one `typ relay` candidate, and no media behind it.
    #[default]
    Static,
    /// A webrtc-rs peer connection answers browser-originated calls (600, ARI answer,
    /// continue to 600) and echoes their audio, relayed through this TURN server. Needs the
    /// `media-echo` feature; without it such calls are refused with 488. Calls Asterisk
    /// originates and re-INVITEs keep static SDP.
    Echo(TurnServer),
}

/// A TURN server the echo endpoint relays through (icegate-relay in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// `turn:127.0.0.1:3478?transport=udp`
    pub url: String,
    pub username: String,
    pub password: String,
}

/// Everything a test may choose. `Default` is the recorded setup.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP port on 127.0.0.1; 0 picks a free one (see [`crate::PortBlock::asterisk`]).
    pub port: u16,
    pub realm: String,
    pub sip_user: String,
    pub sip_password: String,
    pub ari_user: String,
    pub ari_password: String,
    /// Asterisk's host name as it appears in its own `Contact` (`sip:asterisk@HOST:5060`).
    pub hostname: String,
    pub asterisk_id: String,
    pub dialplan: Dialplan,
    pub media: MediaMode,
    /// The address in the SDP's one relayed candidate.
    pub relay_candidate: SocketAddr,
    /// How long a `sound:` playback lasts before `PlaybackFinished` (tones never finish).
    pub playback_ms: u64,
    /// Whether an ARI originate with `timeout=N` cancels the call after N seconds.
    pub honour_originate_timeout: bool,
    /// Serve HTTPS and `wss://` with this PEM certificate chain and key (Asterisk's
    /// `tlsenable=yes` on 8089), instead of plain HTTP.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 0,
            realm: "asterisk".into(),
            sip_user: "icegate".into(),
            sip_password: "sip-secret".into(),
            ari_user: "icegate".into(),
            ari_password: "ari-secret".into(),
            hostname: "asterisk-standin.invalid".into(),
            asterisk_id: "02:fc:00:00:00:01".into(),
            dialplan: Dialplan::default(),
            media: MediaMode::Static,
            relay_candidate: "127.0.0.1:45381".parse().expect("static address"),
            playback_ms: 1000,
            honour_originate_timeout: true,
            tls: None,
        }
    }
}

/// Misbehaviour a test can switch on at any time.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// INVITEs get `100 Trying` and nothing more (what Asterisk does without
    /// res_pjsip_pubsub).
    pub never_answer: bool,
    /// SIP requests are logged and otherwise ignored (no response at all).
    pub sip_silent: bool,
    /// New ARI event WebSockets are refused with 503.
    pub refuse_ari_events: bool,
    /// Every ARI REST request is answered with this status and a JSON error.
    pub ari_rest_status: Option<u16>,
}

/// Which stream a log entry belongs to (the names of the recordings' `channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    SipWs,
    AriEvents,
    AriRest,
    Note,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::SipWs => "sip-ws",
            Stream::AriEvents => "ari-events",
            Stream::AriRest => "ari-rest",
            Stream::Note => "note",
        }
    }
}

/// Direction, as in the recordings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToAsterisk,
    FromAsterisk,
    Note,
}

/// One thing received or sent, in the recordings' format.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub t_ms: u64,
    pub stream: Stream,
    pub dir: Dir,
    /// SIP text; event JSON; REST `{"method","path"}` / `{"status","content_type","body"}`;
    /// or a note.
    pub data: String,
}

/// What a connection task is told to do.
#[derive(Debug)]
pub enum WsCmd {
    Text(String),
    /// A close frame, then the end of the connection.
    Close,
    /// Drop the TCP connection without a close frame.
    Abort,
}

pub struct SipConn {
    pub tx: UnboundedSender<WsCmd>,
    pub peer: SocketAddr,
}

pub struct EventConn {
    pub tx: UnboundedSender<WsCmd>,
    pub apps: Vec<String>,
}

/// A registered contact (rewrite_contact=yes: reached on the WebSocket it came from).
#[derive(Debug, Clone)]
pub struct Registration {
    pub user: String,
    /// The contact URI as the client sent it.
    pub contact: String,
    /// The address-of-record (the REGISTER's To URI).
    pub aor: String,
    pub conn: u64,
    pub peer: SocketAddr,
    pub expires: u32,
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// INVITE sent or received, no final response yet.
    Early,
    Up,
}

/// One SIP dialog and its ARI channel.
#[derive(Debug, Clone)]
pub struct Call {
    pub channel: ChannelInfo,
    pub conn: u64,
    pub peer: SocketAddr,
    /// True when Asterisk sent the INVITE (ARI originate).
    pub outbound: bool,
    /// The INVITE that set up the dialog (received, or sent by the stand-in).
    pub invite: SipMessage,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    pub local_cseq: u32,
    pub phase: Phase,
    pub ringing_sent: bool,
    /// Stasis application the channel is in (None when only in the dialplan).
    pub stasis_app: Option<String>,
    /// Application that receives this channel's events (originate's `app`).
    pub events_app: Option<String>,
    pub app_args: Vec<String>,
    pub route: Option<Route>,
    pub local_sdp: Option<String>,
    pub remote_sdp: Option<String>,
    pub playbacks: Vec<Playback>,
    /// An ARI `continue` (its extension) waiting for the playing playbacks to end: Asterisk
    /// runs a channel's commands in order, after the playback in progress.
    pub queued_continue: Option<Option<String>>,
    /// Digits ARI asked to send to the caller (`POST .../dtmf`).
    pub dtmf_sent: String,
    /// Set once CANCEL was sent for an unanswered outbound call.
    pub cancelled: bool,
    /// Whether the caller's last SDP put the channel on hold (ChannelHold raised).
    pub held: bool,
    /// The re-INVITE Asterisk sent and the offer in it, until its final response.
    pub reinvite: Option<(SipMessage, String)>,
    /// The echoing media endpoint (MediaMode::Echo).
    #[cfg(feature = "media-echo")]
    pub media: Option<std::sync::Arc<super::media::EchoEndpoint>>,
}

impl Call {
    pub fn call_id(&self) -> &str {
        self.invite.call_id()
    }
}

pub struct Core {
    pub cfg: Config,
    pub listen: SocketAddr,
    pub started: Instant,
    pub log: Vec<LogEntry>,
    pub sip_conns: BTreeMap<u64, SipConn>,
    pub event_conns: BTreeMap<u64, EventConn>,
    pub registrations: Vec<Registration>,
    /// Nonces issued recently (Asterisk accepts a nonce for a while; so does this).
    pub nonces: VecDeque<String>,
    pub calls: Vec<Call>,
    pub bridges: Vec<Bridge>,
    /// INVITEs of outbound calls given up on (CANCEL sent), to ACK their final 487.
    pub ended_invites: Vec<SipMessage>,
    pub faults: Faults,
    pub next_conn: u64,
    pub channel_seq: u32,
    /// For timers that need to lock the core again later.
    pub me: Weak<Mutex<Core>>,
    pub rt: tokio::runtime::Handle,
}

impl Core {
    pub fn new(cfg: Config, listen: SocketAddr, rt: tokio::runtime::Handle) -> Core {
        Core {
            cfg,
            listen,
            started: Instant::now(),
            log: Vec::new(),
            sip_conns: BTreeMap::new(),
            event_conns: BTreeMap::new(),
            registrations: Vec::new(),
            nonces: VecDeque::new(),
            calls: Vec::new(),
            bridges: Vec::new(),
            ended_invites: Vec::new(),
            faults: Faults::default(),
            next_conn: 1,
            channel_seq: 0,
            me: Weak::new(),
            rt,
        }
    }

    pub fn record(&mut self, stream: Stream, dir: Dir, data: String) {
        self.log.push(LogEntry {
            t_ms: self.started.elapsed().as_millis() as u64,
            stream,
            dir,
            data,
        });
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.record(Stream::Note, Dir::Note, text.into());
    }

    pub fn media_params(&self) -> MediaParams {
        MediaParams {
            relay_candidate: self.cfg.relay_candidate,
        }
    }

    /// Sends a SIP message on a connection and logs it.
    pub fn sip_send(&mut self, conn: u64, msg: &SipMessage) {
        let text = msg.to_string();
        self.record(Stream::SipWs, Dir::FromAsterisk, text.clone());
        match self.sip_conns.get(&conn) {
            Some(c) => {
                let _ = c.tx.send(WsCmd::Text(text));
            }
            None => self.note(format!("SIP connection {conn} is gone; message dropped")),
        }
    }

    /// Sends an ARI event to every connection subscribed to `app`.
    pub fn emit(&mut self, app: &str, event: Value) {
        let text = event.to_string();
        let mut delivered = false;
        for c in self.event_conns.values() {
            if c.apps.iter().any(|a| a == app) {
                delivered |= c.tx.send(WsCmd::Text(text.clone())).is_ok();
            }
        }
        if delivered {
            self.record(Stream::AriEvents, Dir::FromAsterisk, text);
        } else {
            self.note(format!(
                "no ARI connection for {app}; event dropped: {text}"
            ));
        }
    }

    pub fn app_registered(&self, app: &str) -> bool {
        self.event_conns
            .values()
            .any(|c| c.apps.iter().any(|a| a == app))
    }

    pub fn call_index_by_call_id(&self, call_id: &str) -> Option<usize> {
        self.calls.iter().position(|c| c.call_id() == call_id)
    }

    pub fn call_index_by_channel(&self, id: &str) -> Option<usize> {
        self.calls.iter().position(|c| c.channel.id == id)
    }

    /// A new channel id and name (`<unix>.<n>`, `PJSIP/icegate-0000000n`).
    pub fn new_channel_ids(&mut self) -> (String, String) {
        self.channel_seq += 1;
        (
            format!("{}.{}", super::clock::unix_now(), self.channel_seq),
            format!("PJSIP/{}-{:08x}", self.cfg.sip_user, self.channel_seq),
        )
    }
}
