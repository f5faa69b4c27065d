//! A stand-in for Asterisk 22 (chan_pjsip + ARI) for icegate-signal's tests: SIP over
//! WebSocket (RFC 7118) with digest auth, the `from-icegate` dialplan, ARI REST and the
//! ARI events WebSocket, shaped after the recordings of a real Asterisk 22.10.1 in
//! `fixtures/asterisk/` at the repository root (a copy of the shared recordings, so a clean
//! clone has them).
//!
//! ```no_run
//! use icegate_tests::asterisk::{AsteriskStandIn, Config};
//! let pbx = AsteriskStandIn::start(Config::default());
//! let sip_url = pbx.sip_ws_url();            // ws://127.0.0.1:PORT/ws, subprotocol sip
//! let events = pbx.ari_events_url("icegate"); // ws://.../ari/events?app=icegate&api_key=...
//! // ... run icegate-signal against it, then assert on what it received:
//! assert!(pbx.sip_requests("REGISTER").len() >= 1);
//! ```
//!
//! The handle ([`AsteriskStandIn`]): URLs (`sip_ws_url`, `ari_url`, `ari_events_url`);
//! what it saw (`log` in the recordings' format, `sip_received`, `sip_requests`,
//! `ari_requests`, `events_sent`, `channels`, `registrations`, `connections`, `dtmf_sent`,
//! `idle`, `wait_until`, `lock` for anything else); what it does on request (`hangup`,
//! `inject_dtmf`); faults (`set_faults`: never answer, silent SIP, refuse the events
//! socket, fail every REST call; `drop_sip`, `drop_ari_events`, `send_sip_raw`,
//! `send_ari_raw`, `stop`, `restart`). Behaviour the recordings do not show is marked
//! as such where it is implemented (calls.rs, ari_rest.rs).
//!
//! Every address is 127.0.0.1. Media is static (valid SDP, nothing behind it) unless
//! [`MediaMode::Echo`] is chosen (feature `media-echo`).

pub mod ari_events;
pub mod ari_model;
pub mod ari_rest;
pub mod calls;
pub mod client;
pub mod clock;
pub mod dialplan;
pub mod digest;
#[cfg(feature = "media-echo")]
pub mod media;
pub mod pbx_calls;
pub mod real;
pub mod real_rig;
pub mod recording;
pub mod sdp;
pub mod server;
pub mod sip;
pub mod sip_ws;
pub mod state;
mod ws;

pub use dialplan::{Dialplan, Route};
pub use server::AsteriskStandIn;
pub use state::{Config, Faults, LogEntry, MediaMode, TurnServer};
