//! icegate-signal's library part: the two sans-IO cores under the paths they had before they
//! became crates of their own.
//!
//! - [`icegate_signal_proto`] (`signal/proto/`): protocol, connections, hub, auth, ICE servers,
//!   limits.
//! - [`icegate_signal_asterisk`] (`signal/asterisk/`): the SIP user agent, the ARI controller
//!   and the Asterisk gateway.
//!
//! The binary's shell (`src/main.rs`, `src/shell/`) does the I/O and imports from those crates
//! directly; these re-exports keep `icegate_signal::hub` and the like working for other users.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use icegate_signal_asterisk::{ari, gateway, sip};
pub use icegate_signal_proto::{auth, conn, hub, ice, limits, protocol};
