//! icegate-signal's protocol core: everything that decides, as sans-IO state machines.
//!
//! Nothing here opens a socket, spawns a task or reads a clock: inputs take `now` (and the
//! wall-clock time in Unix seconds where credentials need it) and outputs are drained with
//! `poll_*`. The binary's shell (`src/main.rs`, `src/shell/`) does the I/O.
//!
//! ```text
//!   WebSocket frames ──► conn::Connection ──► hub::Hub ──► outputs to sessions
//!   (one per connection:   rate limit, parse,   (one per server: sessions, users,
//!    auth state, timers)                          rooms, calls, ring timers)
//!   auth::Authenticator: JWT → user id      ice: relays + REST credentials → iceServers
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ari;
pub mod auth;
pub mod conn;
pub mod gateway;
pub mod hub;
pub mod ice;
pub mod limits;
pub mod protocol;
pub mod sip;
