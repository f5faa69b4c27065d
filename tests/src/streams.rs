//! TCP and TLS clients of a relay: connecting from a chosen loopback source address (so that
//! an attacker's per-IP cap is not the legitimate client's), trusting the test relay's
//! self-signed certificate, allocating over a stream, and telling whether the relay closed
//! a connection.

use crate::server::Relay;
use crate::stun::{
    assert_success, decode, encode, request, requested_transport_udp, stream_transact, TurnClient,
    ALLOCATE,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// A TLS client connection over a blocking TCP stream.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TCP connection to `to` from `from` (port chosen by the kernel), or the error of
/// `connect` (a refused or reset connection is an answer too under attack).
pub fn try_connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// [`try_connect_from`], panicking on failure.
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    try_connect_from(from, to).unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"))
}

/// Whether the relay has closed `stream` (end of stream or reset), without waiting; what it
/// sent before (a TLS close_notify) is read and dropped.
pub fn is_closed(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) => break e.kind() != ErrorKind::WouldBlock,
        }
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// A rustls client configuration that trusts `relay`'s self-signed certificate (written in
/// the relay's directory when it was started with `tls: true`).
pub fn tls_client_config(relay: &Relay) -> Arc<rustls::ClientConfig> {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(relay.dir().join("cert.pem")).expect("read cert");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body is base64");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).expect("trust the test certificate");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// A TLS session over `tcp` with `config`, for the name the test certificate carries. The
/// handshake happens on first use.
pub fn tls_over(config: &Arc<rustls::ClientConfig>, tcp: TcpStream) -> TlsStream {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(Arc::clone(config), name).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

/// A TLS connection to `relay`'s TLS listener from 127.0.0.1.
pub fn tls_connect(relay: &Relay) -> TlsStream {
    let tcp = TcpStream::connect(relay.tls_addr()).unwrap();
    tls_over(&tls_client_config(relay), tcp)
}

/// An authenticated Allocate as alice over `stream` (TCP or TLS): the 401 challenge, then
/// the signed request; panics unless it succeeds. Returns the client that signed it (its
/// UDP socket is unused: it only builds and signs messages here).
pub fn allocate_over<S: Read + Write>(relay: &Relay, stream: &mut S) -> TurnClient {
    let mut client = TurnClient::new(relay.udp_addr(), "alice", "secret");
    let challenge = request(ALLOCATE, &[requested_transport_udp()]);
    let raw = stream_transact(stream, &encode(&challenge));
    client.learn(&decode(&raw, None).unwrap());
    let allocate = client.build_authed(ALLOCATE, &[requested_transport_udp()]);
    let raw = stream_transact(stream, &encode(&allocate));
    let resp = decode(&raw, client.key().as_ref()).unwrap();
    assert_success(&resp, "allocate over a stream");
    client
}

/// A TCP connection from 127.0.0.1 with an allocation made over it (3 s read timeout).
pub fn allocate_over_tcp(relay: &Relay) -> (TcpStream, TurnClient) {
    let mut stream = TcpStream::connect(relay.tcp_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let client = allocate_over(relay, &mut stream);
    (stream, client)
}
