//! The ARI controller without sockets, on a clock the tests advance themselves: recorded
//! Asterisk flows replayed, commands, routing, the events connection, and random input; one
//! file per topic over a shared harness.

mod harness;

mod commands;
mod connection;
mod replay;
mod robustness;
mod routing;
