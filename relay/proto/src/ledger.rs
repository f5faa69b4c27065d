//! What all workers must agree on: relay ports, quotas, EVEN-PORT reservations, the nonce key,
//! the clock epoch and the CONNECTION-IDs of TCP allocations.
//!
//! Touched only when allocations are made or freed (the control plane), never per relayed
//! packet, so one mutex is cheap and keeps the bookkeeping exact.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::QuotaKind;
use crate::nonce::NonceKey;
use crate::peer_connections::PeerConnections;

/// The shared bookkeeping of one relay process.
#[derive(Debug)]
pub struct Ledger {
    inner: Mutex<Inner>,
    nonce_key: NonceKey,
    epoch: Instant,
    epoch_unix: u64,
    connections: PeerConnections,
}

#[derive(Debug)]
struct Inner {
    pools: Vec<PortPool>,
    users: HashMap<String, u32>,
    total: u32,
    reservations: HashMap<u64, Reservation>,
}

#[derive(Debug, Clone, Copy)]
struct Reservation {
    ip: IpAddr,
    port: u16,
    expires: Instant,
}

/// The ports of one relay address: a bitmap over `min..=max`.
#[derive(Debug)]
struct PortPool {
    ip: IpAddr,
    min: u16,
    max: u16,
    used: Vec<u64>,
    in_use: u32,
    cursor: u16,
}

impl PortPool {
    fn new(ip: IpAddr, min: u16, max: u16) -> Self {
        let span = (max - min) as usize + 1;
        Self {
            ip,
            min,
            max,
            used: vec![0; span.div_ceil(64)],
            in_use: 0,
            cursor: 0,
        }
    }

    fn capacity(&self) -> u32 {
        (self.max - self.min) as u32 + 1
    }

    fn is_used(&self, port: u16) -> bool {
        let i = (port - self.min) as usize;
        self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, port: u16, used: bool) {
        let i = (port - self.min) as usize;
        let bit = 1u64 << (i % 64);
        let was = self.used[i / 64] & bit != 0;
        if used && !was {
            self.used[i / 64] |= bit;
            self.in_use += 1;
        } else if !used && was {
            self.used[i / 64] &= !bit;
            self.in_use -= 1;
        }
    }

    fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    /// Next free port from a moving cursor (so a just-freed port is not reused at once).
    /// With `pair`, an even port whose successor is free too.
    fn take(&mut self, even: bool, pair: bool, start: u16) -> Option<u16> {
        let cap = self.capacity();
        if self.in_use >= cap {
            return None;
        }
        let offset0 = (self.cursor as u32 + start as u32) % cap;
        for step in 0..cap {
            let port = self.min + ((offset0 + step) % cap) as u16;
            if (even || pair) && port % 2 != 0 {
                continue;
            }
            if self.is_used(port) {
                continue;
            }
            if pair {
                if port == self.max || self.is_used(port + 1) {
                    continue;
                }
                self.set(port + 1, true);
            }
            self.set(port, true);
            self.cursor = ((port - self.min) as u32 + 1) as u16 % cap as u16;
            return Some(port);
        }
        None
    }
}

/// A port taken from the pool, with the token of the reserved next port if asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakenPort {
    /// The port to bind.
    pub port: u16,
    /// The RESERVATION-TOKEN for `port + 1`, when EVEN-PORT asked to reserve it.
    pub reservation: Option<u64>,
}

impl Ledger {
    /// A ledger for relay sockets on `relay_ips`, ports `min_port..=max_port`.
    pub fn new(
        relay_ips: &[IpAddr],
        min_port: u16,
        max_port: u16,
        nonce_key: NonceKey,
        epoch: Instant,
        epoch_unix: u64,
    ) -> Self {
        let (min, max) = (min_port.min(max_port), min_port.max(max_port));
        Self {
            inner: Mutex::new(Inner {
                pools: relay_ips
                    .iter()
                    .map(|&ip| PortPool::new(ip, min, max))
                    .collect(),
                users: HashMap::new(),
                total: 0,
                reservations: HashMap::new(),
            }),
            nonce_key,
            epoch,
            epoch_unix,
            connections: PeerConnections::default(),
        }
    }

    /// The TCP peer connections of TCP allocations (RFC 6062), by CONNECTION-ID.
    pub fn connections(&self) -> &PeerConnections {
        &self.connections
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // matters more than refusing all allocations would, so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key that signs nonces.
    pub fn nonce_key(&self) -> &NonceKey {
        &self.nonce_key
    }

    /// Unix time (seconds) at `now`, derived from the epoch so the core never reads a clock.
    pub fn unix_time(&self, now: Instant) -> u64 {
        self.epoch_unix + now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Counts a new allocation against the quotas (0 = unlimited), or says which one is full.
    pub fn admit(&self, user: &str, user_quota: u32, total_quota: u32) -> Result<(), QuotaKind> {
        let mut inner = self.lock();
        if total_quota != 0 && inner.total >= total_quota {
            return Err(QuotaKind::Total);
        }
        let held = inner.users.get(user).copied().unwrap_or(0);
        if user_quota != 0 && held >= user_quota {
            return Err(QuotaKind::User);
        }
        inner.total += 1;
        *inner.users.entry(user.to_owned()).or_insert(0) += 1;
        Ok(())
    }

    /// Gives back what [`Ledger::admit`] counted.
    pub fn release(&self, user: &str) {
        let mut inner = self.lock();
        inner.total = inner.total.saturating_sub(1);
        if let Some(n) = inner.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                inner.users.remove(user);
            }
        }
    }

    /// Takes a free port on `ip`: even if asked, with the next one reserved if asked.
    pub fn take_port(
        &self,
        ip: IpAddr,
        even: bool,
        reserve_next: bool,
        random: u64,
        now: Instant,
        reservation_lifetime: Duration,
    ) -> Option<TakenPort> {
        let mut inner = self.lock();
        let pool = inner.pools.iter_mut().find(|p| p.ip == ip)?;
        let port = pool.take(even, reserve_next, (random % 65536) as u16)?;
        let reservation = reserve_next.then(|| {
            // Zero is not a valid token so a zeroed attribute never matches.
            let token = random | 1;
            inner.reservations.insert(
                token,
                Reservation {
                    ip,
                    port: port + 1,
                    expires: now + reservation_lifetime,
                },
            );
            token
        });
        Some(TakenPort { port, reservation })
    }

    /// Claims the port a RESERVATION-TOKEN holds, if the token is known and unexpired.
    pub fn take_reserved(&self, token: u64, now: Instant) -> Option<(IpAddr, u16)> {
        let mut inner = self.lock();
        let r = inner.reservations.remove(&token)?;
        if r.expires <= now {
            if let Some(pool) = inner.pools.iter_mut().find(|p| p.ip == r.ip) {
                pool.set(r.port, false);
            }
            return None;
        }
        Some((r.ip, r.port))
    }

    /// Returns a port to the pool.
    pub fn release_port(&self, ip: IpAddr, port: u16) {
        let mut inner = self.lock();
        if let Some(pool) = inner
            .pools
            .iter_mut()
            .find(|p| p.ip == ip && p.contains(port))
        {
            pool.set(port, false);
        }
    }

    /// Frees ports of reservations nobody claimed in time.
    pub fn expire_reservations(&self, now: Instant) {
        let mut inner = self.lock();
        let Inner {
            reservations,
            pools,
            ..
        } = &mut *inner;
        reservations.retain(|_, r| {
            if r.expires > now {
                return true;
            }
            if let Some(pool) = pools.iter_mut().find(|p| p.ip == r.ip) {
                pool.set(r.port, false);
            }
            false
        });
    }

    /// Ports in use and the capacity, summed over all relay addresses.
    pub fn port_usage(&self) -> (u64, u64) {
        let inner = self.lock();
        inner.pools.iter().fold((0, 0), |(used, cap), p| {
            (used + p.in_use as u64, cap + p.capacity() as u64)
        })
    }

    /// Allocations counted against the quotas.
    pub fn total_allocations(&self) -> u32 {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    fn ledger(min: u16, max: u16) -> Ledger {
        Ledger::new(&[IP], min, max, NonceKey::new([0; 32]), Instant::now(), 0)
    }

    #[test]
    fn ports_run_out_and_come_back() {
        let l = ledger(50000, 50002);
        let now = Instant::now();
        let d = Duration::from_secs(30);
        let mut got: Vec<u16> = (0..3)
            .map(|i| l.take_port(IP, false, false, i, now, d).unwrap().port)
            .collect();
        got.sort();
        assert_eq!(got, vec![50000, 50001, 50002]);
        assert_eq!(l.take_port(IP, false, false, 0, now, d), None);
        assert_eq!(l.port_usage(), (3, 3));
        l.release_port(IP, 50001);
        assert_eq!(
            l.take_port(IP, false, false, 0, now, d).unwrap().port,
            50001
        );
    }

    #[test]
    fn even_port_with_reservation() {
        let l = ledger(50001, 50010);
        let now = Instant::now();
        let d = Duration::from_secs(30);
        let taken = l.take_port(IP, true, true, 42, now, d).unwrap();
        assert_eq!(taken.port % 2, 0);
        let token = taken.reservation.unwrap();
        assert_eq!(l.port_usage().0, 2);
        assert_eq!(l.take_reserved(token, now), Some((IP, taken.port + 1)));
        assert_eq!(l.take_reserved(token, now), None, "a token is used once");
        let again = l.take_port(IP, true, true, 43, now, d).unwrap();
        l.expire_reservations(now + d);
        assert_eq!(l.take_reserved(again.reservation.unwrap(), now + d), None);
        assert_eq!(
            l.port_usage().0,
            3,
            "the expired reservation's port is free"
        );
    }

    #[test]
    fn quotas() {
        let l = ledger(50000, 50010);
        assert_eq!(l.admit("a", 1, 2), Ok(()));
        assert_eq!(l.admit("a", 1, 2), Err(QuotaKind::User));
        assert_eq!(l.admit("b", 1, 2), Ok(()));
        assert_eq!(l.admit("c", 1, 2), Err(QuotaKind::Total));
        l.release("a");
        assert_eq!(l.admit("a", 1, 2), Ok(()));
        assert_eq!(l.total_allocations(), 2);
    }
}
