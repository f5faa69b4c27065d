//! icegate-bench: a TURN load generator and the harness that runs it against icegate-relay,
//! coturn and a bare UDP forwarder (the floor), and writes RESULTS.md.

pub mod contender;
pub mod error;
pub mod floor;
pub mod generator;
pub mod harness;
pub mod measure;
pub mod mmsg;
pub mod report;
pub mod scenario;
pub mod turn_client;
pub mod uclient;
