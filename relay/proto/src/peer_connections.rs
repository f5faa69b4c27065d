//! The TCP peer connections of TCP allocations (RFC 6062), by CONNECTION-ID, as all workers
//! see them.
//!
//! A client's ConnectionBind arrives on a new TCP/TLS connection, which the kernel may hand
//! to any worker, not necessarily the one holding the allocation. The ids therefore live in
//! one table the workers share (through the [`crate::Ledger`]): the owner's worker registers a
//! connection, whichever worker the ConnectionBind reaches claims it, and whoever sees its
//! data connection end removes it. Touched once per connection event, never per byte.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Where a peer connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// The relay is connecting out to the peer (Connect).
    Connecting,
    /// Connected; waiting until the given time for the client's ConnectionBind.
    AwaitingBind(Instant),
    /// Bound to a client data connection: bytes flow.
    Bound,
}

#[derive(Debug)]
struct Entry {
    owner: String,
    state: ConnectionState,
}

/// Why a ConnectionBind cannot claim a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindRefused {
    /// No connection with that id waits for a ConnectionBind (never made, already bound,
    /// closed, or its 30 s are over).
    #[error("no connection with that id is waiting to be bound")]
    NotPending,
    /// The connection belongs to another user's allocation.
    #[error("the connection belongs to another user")]
    WrongUser,
}

/// The CONNECTION-IDs in use in one relay process.
#[derive(Debug, Default)]
pub struct PeerConnections {
    entries: Mutex<HashMap<u32, Entry>>,
}

impl PeerConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection of `owner`'s allocation under a fresh id derived from `random`,
    /// and returns the id. Ids are never 0, so a zeroed attribute names nothing.
    pub fn register(&self, owner: &str, state: ConnectionState, random: u32) -> u32 {
        let mut entries = self.lock();
        let mut id = random.max(1);
        while entries.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        entries.insert(
            id,
            Entry {
                owner: owner.to_owned(),
                state,
            },
        );
        id
    }

    /// Moves a connection to `state`; false when it is gone.
    pub fn set_state(&self, id: u32, state: ConnectionState) -> bool {
        match self.lock().get_mut(&id) {
            Some(entry) => {
                entry.state = state;
                true
            }
            None => false,
        }
    }

    /// The state of a connection, `None` once it is gone.
    pub fn state(&self, id: u32) -> Option<ConnectionState> {
        self.lock().get(&id).map(|e| e.state)
    }

    /// A ConnectionBind of `user` claims connection `id`: it must be waiting for one, within
    /// its time, and belong to that user.
    pub fn bind(&self, id: u32, user: &str, now: Instant) -> Result<(), BindRefused> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&id).ok_or(BindRefused::NotPending)?;
        match entry.state {
            ConnectionState::AwaitingBind(until) if now < until => {}
            _ => return Err(BindRefused::NotPending),
        }
        if entry.owner != user {
            return Err(BindRefused::WrongUser);
        }
        entry.state = ConnectionState::Bound;
        Ok(())
    }

    /// Removes a connection still waiting for its ConnectionBind at `now` past its time;
    /// true if it was removed (and so must be closed).
    pub fn expire(&self, id: u32, now: Instant) -> bool {
        let mut entries = self.lock();
        match entries.get(&id).map(|e| e.state) {
            Some(ConnectionState::AwaitingBind(until)) if until <= now => {
                entries.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Removes a connection; false if it was already gone.
    pub fn remove(&self, id: u32) -> bool {
        self.lock().remove(&id).is_some()
    }

    /// How many connections exist, in any state.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_are_unique_and_never_zero() {
        let t = PeerConnections::default();
        let a = t.register("alice", ConnectionState::Connecting, 0);
        let b = t.register("alice", ConnectionState::Connecting, 0);
        let c = t.register("alice", ConnectionState::Connecting, u32::MAX);
        let d = t.register("alice", ConnectionState::Connecting, u32::MAX);
        assert_eq!((a, b, c), (1, 2, u32::MAX));
        assert_eq!(d, 3, "wraps past 0");
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn bind_only_the_owner_within_its_time_and_once() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(30);
        let t = PeerConnections::default();
        let id = t.register("alice", ConnectionState::Connecting, 7);
        assert_eq!(t.bind(id, "alice", t0), Err(BindRefused::NotPending));
        assert!(t.set_state(id, ConnectionState::AwaitingBind(until)));
        assert_eq!(t.bind(id, "bob", t0), Err(BindRefused::WrongUser));
        assert_eq!(t.bind(id + 1, "alice", t0), Err(BindRefused::NotPending));
        assert_eq!(t.bind(id, "alice", until), Err(BindRefused::NotPending));
        assert_eq!(t.bind(id, "alice", t0), Ok(()));
        assert_eq!(t.state(id), Some(ConnectionState::Bound));
        assert_eq!(t.bind(id, "alice", t0), Err(BindRefused::NotPending));
        assert!(!t.expire(id, until), "a bound connection does not expire");
        assert!(t.remove(id));
        assert!(!t.remove(id));
        assert!(!t.set_state(id, ConnectionState::Bound));
    }

    #[test]
    fn expire_removes_only_overdue_pending_ones() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(30);
        let t = PeerConnections::default();
        let id = t.register("alice", ConnectionState::AwaitingBind(until), 1);
        assert!(!t.expire(id, t0));
        assert!(t.expire(id, until));
        assert!(t.is_empty());
    }
}
