//! The host's interface addresses, as the kernel lists them now: what a wildcard listener
//! answers on, and where relay sockets go when `relay-ip` is not set.

use std::io;
use std::net::IpAddr;

/// Every address of every interface, loopback included.
pub fn host_ips() -> io::Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect())
}

/// Whether peers elsewhere can reach a relay socket bound to `ip`: not loopback, not
/// link-local (it needs an interface to mean anything, and a link-local relay address in
/// XOR-RELAYED-ADDRESS carries none), not multicast or unspecified.
pub fn usable_for_relaying(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_multicast() || ip.is_unspecified() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_link_local_multicast_and_unspecified_are_not_relay_addresses() {
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "ff02::1",
            "::",
        ] {
            assert!(!usable_for_relaying(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["192.0.2.2", "10.1.2.3", "2001:db8::2", "fd00::2"] {
            assert!(usable_for_relaying(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_host_has_at_least_loopback() {
        let ips = host_ips().unwrap();
        assert!(ips.iter().any(IpAddr::is_loopback), "{ips:?}");
    }
}
