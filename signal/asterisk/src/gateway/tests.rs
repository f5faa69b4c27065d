//! The gateway driven without sockets: Asterisk's SIP side is built from the UA's own
//! requests, ARI events are written by hand in the recorded shapes. One file per topic over a
//! shared harness ([`harness::Rig`]: a gateway, a fake clock, and what it said to each side).

pub(crate) mod harness;

mod connections;
mod in_call;
mod incoming;
mod outgoing;
mod robustness;
