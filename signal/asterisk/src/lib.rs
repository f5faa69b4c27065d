//! The sans-IO Asterisk gateway of icegate-signal: a SIP user agent for SIP over WebSocket
//! ([`sip`]), an ARI (Stasis) controller ([`ari`]), the [`gateway`] that joins them to the
//! hub's PBX leg (`icegate_signal_proto::hub`), and the [`switchboard`] that owns the hub and
//! the gateway together and routes between them, so that one owner drives both.
//!
//! Nothing here opens a socket, spawns a task or reads a clock: browser requests, frames, REST
//! responses and `now` go in; messages for browsers, frames and REST requests are drained with
//! `poll_*`. The binary's shell (`signal/src/shell/switchboard_task.rs`,
//! `signal/src/shell/asterisk_io.rs`) does the I/O.
//!
//! ```text
//!   browser sessions ──► switchboard::Switchboard ──► messages to browsers
//!                          hub::Hub ⇄ gateway::Gateway (PBX outputs ⇄ PBX events, availability)
//!                                          │            │
//!        sip::UserAgent (SDP, call state)  ari::Controller (DTMF, play, transfer, routing)
//!        ◄─► SIP over WebSocket frames     ◄─► ARI events and REST requests
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ari;
pub mod gateway;
pub mod sip;
pub mod switchboard;
