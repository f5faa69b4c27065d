//! Who a packet came from: transports, address families and the 5-tuple that names a client.

use std::net::{IpAddr, SocketAddr};

/// The transport between a client and the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// STUN/TURN over UDP.
    Udp,
    /// STUN/TURN over TCP.
    Tcp,
    /// STUN/TURN over TLS over TCP.
    Tls,
    /// STUN/TURN over DTLS over UDP: one STUN message or ChannelData frame per record.
    Dtls,
}

impl Transport {
    /// All transports, in metric-label order.
    pub const ALL: [Transport; 4] = [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Dtls,
    ];

    /// Stable lower-case name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Dtls => "dtls",
        }
    }

    /// Whether the transport is a byte stream, where ChannelData must be padded to 4 bytes.
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp | Transport::Dtls)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, in metric-label order.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Stable name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The 5-tuple that identifies a client's allocation (RFC 8656 §2): transport, client address
/// and the relay's own address the client sent to.
///
/// `server` is the address the client's packets reach, not the unspecified address a
/// wildcard listener is bound to: the runtime reads it from each datagram (IP_PKTINFO,
/// IPV6_RECVPKTINFO) or connection (getsockname), and keeps the listener's own address only
/// when the kernel does not say. Keeping it here rather than in the runtime
/// alone means the core sees the true 5-tuple: a client reaching the relay on two of its
/// addresses has two allocations, as RFC 8656 has it; RESPONSE-ORIGIN, OTHER-ADDRESS and
/// the alternate-server choice use the address the request really came to; and every answer
/// or relayed datagram for the client names the address the runtime must send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The transport the client speaks.
    pub transport: Transport,
    /// The client's address, as the relay sees it.
    pub client: SocketAddr,
    /// The relay's address the client sent to (on a wildcard listener, the local address the
    /// packet reached; its port is the listener's).
    pub server: SocketAddr,
}
