//! A worker's relay sockets, watched by an epoll set of their own.
//!
//! With one tokio task per relay socket, every relayed datagram from a peer would cost a task
//! wake-up and a poll. Instead the relay sockets are registered (level-triggered) in a private
//! epoll set, and only that set's descriptor is registered with tokio: one wake-up per round
//! tells the worker which sockets have datagrams, and it reads them in one go.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use icegate_relay_proto::{Family, RelayId};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The epoll set's descriptor, for tokio to watch.
pub struct EpollSet(Epoll);

impl AsRawFd for EpollSet {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

/// One relayed transport address's socket.
struct Entry {
    generation: u32,
    socket: UdpSocket,
}

/// The relay sockets of one worker, by allocation slot and address family. Shared by the
/// worker's tasks (which never run at once); no borrow is held across an `.await`.
pub struct RelaySet {
    epoll: AsyncFd<EpollSet>,
    sockets: RefCell<Vec<[Option<Entry>; 2]>>,
}

impl RelaySet {
    /// An empty set; needs a tokio runtime (the set's descriptor is registered with it).
    pub fn new() -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        // SAFETY: the set owns the epoll descriptor (an OwnedFd inside `Epoll`), which stays
        // open and the same until the AsyncFd drops it, and `as_raw_fd` always returns it.
        let epoll = unsafe { AsyncFd::register_with_interest(EpollSet(epoll), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(RelaySet {
            epoll,
            sockets: RefCell::default(),
        })
    }

    /// The set's descriptor as tokio watches it: readable when a relay socket is.
    pub fn watcher(&self) -> &AsyncFd<EpollSet> {
        &self.epoll
    }

    /// Adds `socket` (non-blocking) as `relay`'s, replacing (and closing) an older one in
    /// the same slot.
    pub fn insert(&self, relay: RelayId, socket: UdpSocket) -> io::Result<()> {
        let event = EpollEvent::new(EpollFlags::EPOLLIN, token(relay));
        self.epoll
            .get_ref()
            .0
            .add(socket.as_fd(), event)
            .map_err(io::Error::from)?;
        let slot = relay.slot as usize;
        let mut sockets = self.sockets.borrow_mut();
        if sockets.len() <= slot {
            sockets.resize_with(slot + 1, Default::default);
        }
        if let Some(old) = sockets[slot][relay.family as usize].replace(Entry {
            generation: relay.generation,
            socket,
        }) {
            let _ = self.epoll.get_ref().0.delete(old.socket.as_fd());
        }
        Ok(())
    }

    /// Closes `relay`'s socket, if it is still this generation's; its port is free at once.
    pub fn remove(&self, relay: RelayId) {
        let mut sockets = self.sockets.borrow_mut();
        let Some(entry) = sockets
            .get_mut(relay.slot as usize)
            .map(|pair| &mut pair[relay.family as usize])
        else {
            return;
        };
        if entry
            .as_ref()
            .is_some_and(|e| e.generation == relay.generation)
        {
            if let Some(e) = entry.take() {
                let _ = self.epoll.get_ref().0.delete(e.socket.as_fd());
            }
        }
    }

    /// Runs `f` on `relay`'s socket, if it is open and of this generation.
    fn with<R>(&self, relay: RelayId, f: impl FnOnce(&UdpSocket) -> R) -> Option<R> {
        let sockets = self.sockets.borrow();
        sockets
            .get(relay.slot as usize)?
            .get(relay.family as usize)?
            .as_ref()
            .filter(|e| e.generation == relay.generation)
            .map(|e| f(&e.socket))
    }

    /// The descriptor of `relay`'s socket, to read it; `None` when closed or stale.
    pub fn fd(&self, relay: RelayId) -> Option<RawFd> {
        self.with(relay, |s| s.as_raw_fd())
    }

    /// Sends `bytes` to `peer` from `relay`'s socket without waiting; `None` when the socket
    /// is closed or stale.
    pub fn send_to(
        &self,
        relay: RelayId,
        bytes: &[u8],
        peer: SocketAddr,
    ) -> Option<io::Result<usize>> {
        self.with(relay, |s| s.send_to(bytes, peer))
    }

    /// Fills `events` with the relay sockets that are readable now, without waiting.
    pub fn ready(&self, events: &mut [EpollEvent]) -> io::Result<usize> {
        self.epoll
            .get_ref()
            .0
            .wait(events, EpollTimeout::ZERO)
            .map_err(io::Error::from)
    }
}

/// An epoll token naming a relay: slot, family and generation.
fn token(relay: RelayId) -> u64 {
    (u64::from(relay.slot) << 33) | ((relay.family as u64) << 32) | u64::from(relay.generation)
}

/// The relay an epoll token names.
pub fn relay_of(event: &EpollEvent) -> RelayId {
    let data = event.data();
    RelayId {
        slot: (data >> 33) as u32,
        generation: data as u32,
        family: if (data >> 32) & 1 == 0 {
            Family::V4
        } else {
            Family::V6
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(slot: u32, generation: u32, family: Family) -> RelayId {
        RelayId {
            slot,
            generation,
            family,
        }
    }

    #[test]
    fn tokens_name_their_relay() {
        for r in [
            relay(0, 0, Family::V4),
            relay(7, u32::MAX, Family::V6),
            relay(u32::MAX >> 1, 3, Family::V4),
        ] {
            let event = EpollEvent::new(EpollFlags::EPOLLIN, token(r));
            assert_eq!(relay_of(&event), r);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn readable_sockets_are_reported_and_stale_generations_miss() {
        let set = RelaySet::new().unwrap();
        let a = relay(1, 5, Family::V4);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        set.insert(a, socket).unwrap();
        assert!(set.fd(a).is_some());
        assert!(
            set.fd(relay(1, 4, Family::V4)).is_none(),
            "an older generation"
        );
        let mut events = [EpollEvent::empty(); 8];
        assert_eq!(set.ready(&mut events).unwrap(), 0);

        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"hi", addr).unwrap();
        let mut guard = set.watcher().readable().await.unwrap();
        assert_eq!(set.ready(&mut events).unwrap(), 1);
        assert_eq!(relay_of(&events[0]), a);
        // Level-triggered: still reported until read.
        assert_eq!(set.ready(&mut events).unwrap(), 1);
        let mut batch = crate::mmsg::RecvBatch::new(0);
        assert_eq!(batch.recv_fd(set.fd(a).unwrap(), 0, 4).unwrap(), 1);
        assert_eq!(set.ready(&mut events).unwrap(), 0);
        guard.clear_ready();

        // A stale close misses; the right one frees the port at once.
        set.remove(relay(1, 4, Family::V4));
        assert!(set.fd(a).is_some());
        set.remove(a);
        assert!(set.fd(a).is_none());
        UdpSocket::bind(addr).expect("the port is free again");
    }
}
