//! The TCP peer connections of TCP allocations (RFC 6062), as the workers hand them over.
//!
//! The worker of the allocation connects or accepts a peer connection; the client's
//! ConnectionBind may reach any worker, which then carries the bytes. Between the two, the
//! connection waits here, parked as a plain `std` stream (so that the other worker's runtime
//! can take it up), with its place in the descriptor budget. Once taken, what stays is how to
//! tell the worker carrying it to close it (the allocation ended).
//!
//! One mutex for all workers, taken once per connection event, never per byte.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::stream_admission::Ticket;

/// A peer connection waiting for its ConnectionBind.
#[derive(Debug)]
pub struct Parked {
    /// The connection, non-blocking.
    pub stream: std::net::TcpStream,
    /// Its place in the descriptor budget.
    pub ticket: Ticket,
}

#[derive(Debug)]
enum Entry {
    Waiting(Parked),
    /// Carried by a worker, which closes it when this is notified.
    Joined(Arc<Notify>),
}

/// The peer connections of the relay process, by CONNECTION-ID.
#[derive(Debug, Default)]
pub struct PeerStreams {
    entries: Mutex<HashMap<u32, Entry>>,
}

impl PeerStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks connection `id` until a ConnectionBind takes it or it is closed.
    pub fn park(&self, id: u32, parked: Parked) {
        self.lock().insert(id, Entry::Waiting(parked));
    }

    /// Takes parked connection `id` for a data connection; `close` is notified if it is to be
    /// closed meanwhile. `None` if it is not parked (closed already).
    pub fn take(&self, id: u32, close: Arc<Notify>) -> Option<Parked> {
        let mut entries = self.lock();
        match entries.remove(&id) {
            Some(Entry::Waiting(parked)) => {
                entries.insert(id, Entry::Joined(close));
                Some(parked)
            }
            Some(joined) => {
                entries.insert(id, joined);
                None
            }
            None => None,
        }
    }

    /// Closes connection `id`: a parked one at once, a carried one by telling its worker.
    pub fn close(&self, id: u32) {
        let entry = self.lock().remove(&id);
        match entry {
            Some(Entry::Joined(close)) => close.notify_one(),
            // Dropped outside the lock: closing a socket is a system call.
            Some(Entry::Waiting(parked)) => drop(parked),
            None => {}
        }
    }

    /// A carried connection has ended.
    pub fn finished(&self, id: u32) {
        self.lock().remove(&id);
    }
}
