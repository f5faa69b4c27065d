//! The hub on a fake clock: every call flow, checked message by message, one file per topic
//! over a shared harness ([`harness::World`]: a hub, a fake clock, and what the hub said).

mod harness;

mod calls;
mod forking;
mod limits;
mod pbx;
mod remote;
mod renegotiation;
