//! What icegate-relay and icegate-signal share.
//!
//! Without the default `runtime` feature only [`credentials`] is built, so the relay's
//! sans-IO core can depend on this crate without pulling in tokio.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod credentials;
