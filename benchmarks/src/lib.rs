//! icegate-bench: a TURN load generator and the harness that runs it against icegate-relay,
//! coturn and a bare UDP forwarder (the floor), icegate-signal against Janus, and writes
//! RESULTS.md.
#![deny(unsafe_code)]

pub mod contender;
pub mod error;
pub mod floor;
#[allow(unsafe_code)]
pub mod generator;
pub mod harness;
pub mod janus;
#[allow(unsafe_code)]
pub mod measure;
#[allow(unsafe_code)]
pub mod mmsg;
pub mod report;
pub mod scenario;
pub mod turn_client;
pub mod uclient;
