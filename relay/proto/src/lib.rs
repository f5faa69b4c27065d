//! The sans-IO core of icegate-relay: STUN (RFC 8489) and TURN (RFC 8656) as a state machine.
//!
//! Nothing here opens a socket, spawns a task or reads the clock. The runtime shell feeds the
//! [`Server`] what arrived and the current time, and carries out what it asks for:
//!
//! ```text
//!            client datagram / TCP frame                 peer datagram on a relay socket
//!                        │                                            │
//!                        ▼                                            ▼
//!      Server::handle_client_packet(from, bytes, now)   Server::handle_peer_packet(relay, peer, len, now)
//!             │                    │                                  │
//!   Relay{relay, peer, payload}  commands queued          PeerRoute{client, channel}
//!   (hot path: no allocation)      │                      (hot path: no allocation)
//!                                  ▼
//!              Server::poll_command() → SendToClient / BindRelay / CloseRelay
//!              Server::poll_timeout() → when to call Server::handle_timeout(now)
//! ```
//!
//! Call order for the shell: after any `handle_*` call, drain [`Server::poll_command`] until it
//! returns `None` (answering every [`Command::BindRelay`] with [`Server::relay_bound`], which may
//! queue more commands), then re-arm the timer from [`Server::poll_timeout`].
//!
//! Several workers each own a [`Server`]; what they must agree on (port range, quotas,
//! reservations, nonce key) lives in the shared [`Ledger`], touched only on the control plane;
//! each source's budget of unauthenticated requests lives in one lock-free
//! [`rate_limit::RateTable`] they share ([`Server::with_rate_table`]).
// The only unsafe code is the allocation-counting test allocator, which proves the data path
// allocates nothing; the library itself has none.
#![cfg_attr(not(test), forbid(unsafe_code))]
#![cfg_attr(test, deny(unsafe_code))]
#![warn(missing_docs)]

pub mod allocation;
pub mod auth;
pub mod channels;
pub mod config;
pub mod integrity;
pub mod ledger;
pub mod metrics;
pub mod nonce;
pub mod peer_connections;
pub mod peer_filter;
pub mod permissions;
pub mod rate_limit;
pub mod server;
pub mod transport;
pub mod wire;

pub use config::ServerConfig;
pub use ledger::Ledger;
pub use server::{ClientOutcome, Command, PeerRoute, RelayId, Server};
pub use transport::{Family, FiveTuple, Transport};
