//! The relay's own listening addresses, which the peer filter refuses as peers.
//!
//! The core only compares a peer with the list; what is on it is known here: the TURN ports
//! (UDP, TCP, TLS, and RFC 5780's `alt-listening-port`) and the metrics port, on each listening
//! address. A wildcard listener
//! (`0.0.0.0`, `::`) answers on every local address, so it stands for all of them as the
//! kernel lists them now (a reload lists them again), plus all of loopback. The unspecified
//! address is on the list for every port, since a datagram sent to it is delivered locally,
//! and so are the advertised `external-ip` addresses, which a 1:1 NAT hairpins back here.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use icegate_relay_proto::peer_filter::SelfAddresses;
use ipnet::IpNet;

use crate::config::Settings;

/// The relay's own listening addresses for the peer filter, or why the local addresses could
/// not be listed (the list then lacks what a wildcard listener stands for).
pub fn own_addresses(settings: &Settings) -> (SelfAddresses, Option<io::Error>) {
    let mut listing_error = None;
    let mut local = || match crate::host_addresses::host_ips() {
        Ok(ips) => ips,
        Err(error) => {
            listing_error.get_or_insert(error);
            Vec::new()
        }
    };
    let mut entries = Vec::new();
    let mut turn_ports = Vec::new();
    if settings.udp || settings.tcp {
        turn_ports.push(settings.port);
    }
    if settings.tls.is_some() {
        turn_ports.push(settings.tls_port);
    }
    // RFC 5780's second port (`alt-listening-port`) is a UDP listener like the first.
    if let Some(nat) = &settings.server.nat_discovery {
        turn_ports.push(nat.ports.1);
    }
    let advertised: Vec<IpAddr> = settings
        .server
        .relay_addresses
        .iter()
        .map(|r| r.advertised)
        .collect();
    for &port in &turn_ports {
        for &ip in &settings.listening_ips {
            // TURN listeners are IPv6-only sockets: `::` does not stand for IPv4 addresses.
            entries.extend(listener_nets(ip, false, &mut local).map(|net| (net, port)));
        }
        entries.extend(advertised.iter().map(|&ip| (IpNet::from(ip), port)));
    }
    if let Some(metrics) = settings.metrics_listen {
        // The metrics listener is a plain std socket: on `::` it is dual-stack.
        entries.extend(listener_nets(metrics.ip(), true, &mut local).map(|n| (n, metrics.port())));
    }
    (SelfAddresses::new(entries), listing_error)
}

/// The nets of addresses that reach a listener bound to `ip`.
fn listener_nets(
    ip: IpAddr,
    dual_stack: bool,
    local: &mut impl FnMut() -> Vec<IpAddr>,
) -> impl Iterator<Item = IpNet> {
    let v4_any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let v6_any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let mut nets = vec![IpNet::from(v4_any), IpNet::from(v6_any)];
    if ip.is_unspecified() {
        let families_v4 = ip.is_ipv4() || dual_stack;
        let families_v6 = ip.is_ipv6();
        if families_v4 {
            nets.push("127.0.0.0/8".parse().expect("a valid net"));
        }
        if families_v6 {
            nets.push(IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        }
        nets.extend(
            local()
                .into_iter()
                .filter(|a| a.is_ipv4() && families_v4 || a.is_ipv6() && families_v6)
                .map(IpNet::from),
        );
    } else {
        nets.push(IpNet::from(ip));
    }
    nets.into_iter()
}

/// Every address configured on a local interface now.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::Parser;
    use std::net::SocketAddr;

    fn settings(args: &[&str]) -> Settings {
        let mut all = vec!["icegate-relay", "--user", "a:b"];
        all.extend_from_slice(args);
        Settings::load(&Cli::parse_from(all)).unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn exact_listeners_are_their_address_on_every_port() {
        let s = settings(&[
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            "3478",
            "--metrics-listen",
            "127.0.0.2:9641",
            "--external-ip",
            "203.0.113.5/127.0.0.1",
        ]);
        let (own, error) = own_addresses(&s);
        assert!(error.is_none());
        for peer in [
            "127.0.0.1:3478",
            "203.0.113.5:3478",
            "0.0.0.0:3478",
            "127.0.0.2:9641",
        ] {
            assert!(own.contains(sa(peer)), "{peer}");
        }
        for peer in ["127.0.0.2:3478", "127.0.0.1:9641", "127.0.0.1:50000"] {
            assert!(!own.contains(sa(peer)), "{peer}");
        }
        // No TLS configured: its port is nobody's.
        assert!(!own.contains(sa("127.0.0.1:5349")));
    }

    #[test]
    fn rfc5780s_alternate_port_is_one_of_ours_while_it_is_on() {
        let two = [
            "-L",
            "127.0.0.1",
            "-L",
            "127.0.0.2",
            "--alt-listening-port",
            "4000",
        ];
        let (own, _) = own_addresses(&settings(&two));
        for peer in ["127.0.0.1:4000", "127.0.0.2:4000", "127.0.0.2:3478"] {
            assert!(own.contains(sa(peer)), "{peer}");
        }
        let mut off = two.to_vec();
        off.push("--no-rfc5780");
        let (own, _) = own_addresses(&settings(&off));
        assert!(!own.contains(sa("127.0.0.1:4000")));
    }

    #[test]
    fn a_wildcard_listener_is_every_local_address() {
        let s = settings(&[
            "--listening-ip",
            "0.0.0.0",
            "--relay-ip",
            "127.0.0.1",
            "--metrics-listen",
            "[::]:9641",
        ]);
        let (own, error) = own_addresses(&s);
        assert!(error.is_none(), "{error:?}");
        for ip in crate::host_addresses::host_ips()
            .unwrap()
            .into_iter()
            .filter(IpAddr::is_ipv4)
        {
            assert!(own.contains(SocketAddr::new(ip, 3478)), "{ip}");
            assert!(own.contains(SocketAddr::new(ip, 9641)), "{ip}");
        }
        assert!(own.contains(sa("127.3.2.1:3478")));
        assert!(own.contains(sa("[::1]:9641")));
        // The IPv4 TURN listener does not answer on IPv6.
        assert!(!own.contains(sa("[::1]:3478")));
        assert!(!own.contains(sa("8.8.8.8:3478")));
    }
}
