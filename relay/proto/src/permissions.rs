//! An allocation's permissions (RFC 8656 §9): which peer IP addresses may exchange data with it.
//!
//! Allocations talk to few peers, so a small vector beats a map on the hot path.

use std::net::IpAddr;
use std::time::Instant;

/// The permissions of one allocation.
#[derive(Debug, Default, Clone)]
pub struct Permissions {
    entries: Vec<(IpAddr, Instant)>,
}

/// The allocation already holds as many permissions as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Permissions {
    /// Installs or refreshes the permission for `ip` until `expires`.
    pub fn install(&mut self, ip: IpAddr, expires: Instant, max: usize) -> Result<(), Full> {
        if let Some(entry) = self.entries.iter_mut().find(|(p, _)| *p == ip) {
            entry.1 = expires;
            return Ok(());
        }
        if self.entries.len() >= max {
            return Err(Full);
        }
        self.entries.push((ip, expires));
        Ok(())
    }

    /// Whether `ip` may exchange data at `now`.
    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        self.entries.iter().any(|&(p, exp)| p == ip && now < exp)
    }

    /// Whether installing `count` new addresses would fit.
    pub fn has_room_for(&self, new: &[IpAddr], max: usize) -> bool {
        let fresh = new
            .iter()
            .enumerate()
            .filter(|(i, ip)| {
                !self.entries.iter().any(|(p, _)| p == *ip) && !new[..*i].contains(ip)
            })
            .count();
        self.entries.len() + fresh <= max
    }

    /// Drops expired permissions.
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|&(_, exp)| now < exp);
    }

    /// How many permissions are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no permission is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn install_refresh_expire_and_cap() {
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut p = Permissions::default();
        p.install(a, t0 + Duration::from_secs(300), 1).unwrap();
        assert!(p.allows(a, t0));
        assert!(!p.allows(b, t0));
        assert_eq!(p.install(b, t0, 1), Err(Full));
        assert!(!p.has_room_for(&[b], 1));
        assert!(p.has_room_for(&[a, a], 1));
        p.install(a, t0 + Duration::from_secs(600), 1).unwrap();
        assert!(p.allows(a, t0 + Duration::from_secs(599)));
        assert!(!p.allows(a, t0 + Duration::from_secs(600)));
        p.expire(t0 + Duration::from_secs(600));
        assert!(p.is_empty());
    }
}
