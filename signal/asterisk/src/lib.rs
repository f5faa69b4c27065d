//! The sans-IO Asterisk gateway of icegate-signal: a SIP user agent for SIP over WebSocket
//! ([`sip`]), an ARI (Stasis) controller ([`ari`]), and the [`gateway`] that joins them to the
//! hub's PBX leg (`icegate_signal_proto::hub`).
//!
//! Nothing here opens a socket, spawns a task or reads a clock: frames, REST responses and
//! `now` go in; frames, REST requests and events for the hub are drained with `poll_*`. The
//! binary's shell (`signal/src/shell/gateway_task.rs`, `signal/src/shell/asterisk_io.rs`) does
//! the I/O.
//!
//! ```text
//!   hub PBX outputs ──► gateway::Gateway ──► hub events (PbxEvent), availability
//!                         │            │
//!        sip::UserAgent (SDP, call state)  ari::Controller (DTMF, play, transfer, routing)
//!        ◄─► SIP over WebSocket frames     ◄─► ARI events and REST requests
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ari;
pub mod gateway;
pub mod sip;
