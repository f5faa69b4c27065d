//! An allocation's channel bindings (RFC 8656 §12): 4-byte ChannelData headers instead of
//! 36-byte Send/Data indications.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The first valid channel number.
pub const MIN_CHANNEL: u16 = 0x4000;
/// The last channel number accepted. RFC 8656 §12 narrowed RFC 5766's range to 0x4FFF, but
/// RFC 5766 clients (coturn's own `turnutils_uclient` among them) still pick numbers up to
/// 0x7FFF, and coturn accepts them; every such number still starts with the ChannelData bits
/// `01`, so accepting them is unambiguous.
pub const MAX_CHANNEL: u16 = 0x7FFF;

/// After a binding expires, neither its number nor its peer may be bound to anything else for
/// this long (RFC 8656 §12), so that late packets are not misdelivered.
pub const COOLDOWN: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Binding {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

/// The channel bindings of one allocation.
#[derive(Debug, Default, Clone)]
pub struct Channels {
    bindings: Vec<Binding>,
}

/// Why a ChannelBind cannot be done (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// The number is outside 0x4000..=0x7FFF.
    InvalidNumber,
    /// The number is bound (or cooling down) to another peer.
    NumberInUse,
    /// The peer is bound (or cooling down) to another number.
    PeerInUse,
}

impl Channels {
    /// Binds `number` to `peer`, or refreshes the same binding, until `expires`.
    pub fn bind(
        &mut self,
        number: u16,
        peer: SocketAddr,
        expires: Instant,
    ) -> Result<(), BindError> {
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&number) {
            return Err(BindError::InvalidNumber);
        }
        for b in &mut self.bindings {
            match (b.number == number, b.peer == peer) {
                (true, true) => {
                    b.expires = expires;
                    return Ok(());
                }
                (true, false) => return Err(BindError::NumberInUse),
                (false, true) => return Err(BindError::PeerInUse),
                (false, false) => {}
            }
        }
        self.bindings.push(Binding {
            number,
            peer,
            expires,
        });
        Ok(())
    }

    /// The peer bound to `number` at `now`.
    pub fn peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.bindings
            .iter()
            .find(|b| b.number == number && now < b.expires)
            .map(|b| b.peer)
    }

    /// The channel bound to `peer` at `now`.
    pub fn number(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.bindings
            .iter()
            .find(|b| b.peer == peer && now < b.expires)
            .map(|b| b.number)
    }

    /// Forgets bindings whose cooldown is over.
    pub fn expire(&mut self, now: Instant) {
        self.bindings.retain(|b| now < b.expires + COOLDOWN);
    }

    /// How many bindings are held, including those cooling down.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether no binding is held.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_refresh_conflicts_and_cooldown() {
        let t0 = Instant::now();
        let p1: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let p2: SocketAddr = "192.0.2.2:1000".parse().unwrap();
        let life = Duration::from_secs(600);
        let mut c = Channels::default();
        assert_eq!(c.bind(0x3FFF, p1, t0 + life), Err(BindError::InvalidNumber));
        assert_eq!(
            c.bind(MAX_CHANNEL + 1, p1, t0 + life),
            Err(BindError::InvalidNumber)
        );
        c.bind(0x4000, p1, t0 + life).unwrap();
        assert_eq!(c.peer(0x4000, t0), Some(p1));
        assert_eq!(c.number(p1, t0), Some(0x4000));
        assert_eq!(c.bind(0x4000, p2, t0 + life), Err(BindError::NumberInUse));
        assert_eq!(c.bind(0x4001, p1, t0 + life), Err(BindError::PeerInUse));
        c.bind(0x4000, p1, t0 + life + life).unwrap();
        let expired = t0 + life + life;
        assert_eq!(c.peer(0x4000, expired), None);
        c.expire(expired);
        assert_eq!(c.len(), 1, "cooling down");
        assert_eq!(c.bind(0x4000, p2, expired), Err(BindError::NumberInUse));
        c.expire(expired + COOLDOWN);
        assert!(c.is_empty());
        c.bind(0x4000, p2, expired + COOLDOWN + life).unwrap();
    }
}
