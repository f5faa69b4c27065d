//! The server core driven without sockets, on a clock the tests advance themselves.
//!
//! Requests are built and responses decoded with `stun-rs`, a codec written independently of
//! the `stun-types` codec the core uses, so the wire format is checked from the outside rather
//! than against itself. `stun-types` only builds what `stun-rs` refuses to encode (unknown
//! attributes and methods).
//!
//! Every [`harness::Harness`] checks on drop that the core queued nothing the test did not look at.

mod harness;

mod allocate;
mod auth;
mod binding;
mod data_path;
mod data_path_allocations;
mod malformed;
mod nat_discovery;
mod peer_filter;
mod permissions_channels;
mod quotas;
mod rate_limit;
mod redirect;
mod refresh;
mod tcp_allocations;
