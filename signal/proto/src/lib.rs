//! The sans-IO signaling core of icegate-signal: everything that decides about browsers.
//!
//! Nothing here opens a socket, spawns a task or reads a clock: inputs take `now` (and the
//! wall-clock time in Unix seconds where credentials need it) and outputs are drained with
//! `poll_*`. The binary's shell (`signal/src/main.rs`, `signal/src/shell/`) does the I/O; the
//! Asterisk gateway is the other sans-IO core, `icegate-signal-asterisk`.
//!
//! ```text
//!   WebSocket frames ──► conn::Connection ──► hub::Hub ──► outputs to sessions
//!   (one per connection:   rate limit, parse,   (one per server: sessions, users,
//!    auth state, timers)                          rooms, calls, ring timers)
//!   auth::Authenticator: JWT → user id      ice: relays + REST credentials → iceServers
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod cluster;
pub mod conn;
pub mod hub;
pub mod ice;
pub mod limits;
pub mod origin;
pub mod protocol;
