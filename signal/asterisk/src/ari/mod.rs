//! The ARI side of the Asterisk gateway: icegate-signal as a Stasis application that controls
//! the calls its SIP user agent carries to and from Asterisk.
//!
//! ```text
//!   events WebSocket text ──► events::parse_event ──┐
//!   REST responses ─────────► rest::Request::parse_response ──► controller::Controller
//!   call-layer commands ────────────────────────────┘     │ poll_output: REST requests,
//!                                                          │ call events, Connect
//!                                                          ▼ poll_timeout
//! ```
//! Sans-IO like the rest of the crate: no sockets, no clock, no tokio. The shell opens the
//! events WebSocket (`/ari/events?app=icegate&subscribeAll=false`, basic auth or `api_key`),
//! performs each [`controller::Output::Request`] under `/ari` with basic auth, and feeds
//! frames, responses and timeouts back with `now`.
//!
//! # Why not an ARI client crate
//! Evaluated: `asterisk-rs-ari` 0.8.0 (the most complete and recently released one; typed
//! events with an `Unknown` fallback, REST resource handles, reconnecting WebSocket). Its
//! tokio-tungstenite is 0.30 like ours, but it enables rustls' `aws_lc_rs` provider
//! unconditionally (no feature to turn it off) and pulls reqwest 0.13 with
//! rustls-platform-verifier: a second crypto provider beside our ring-only rustls, and a second
//! HTTP client stack beside hyper. More decisive, it is an async client that owns its sockets,
//! spawns tasks and times its own reconnects, so it cannot live in this sans-IO core; we would
//! use only its serde types and re-derive everything else. Older crates (`asterisk-ari`,
//! `asterisk-ari-client-rs`, `arirs`) pin older tungstenite/reqwest releases or are unmaintained.
//! So icegate keeps its own small typed model of the part of ARI it uses: the events
//! ([`events`]), the REST requests ([`rest`]) and the call control ([`controller`]).

pub mod backoff;
pub mod controller;
pub mod events;
pub mod rest;

#[cfg(test)]
mod fixtures;
