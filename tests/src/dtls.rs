//! DTLS clients for tests of the relay's DTLS listener: OpenSSL's (a whole handshake, then
//! records), and a hand-made DTLS 1.2 ClientHello with the cookie exchange, for a client that
//! gets past the cookie (so the relay keeps a session for it) and then says no more, which no
//! real client can be made to do on cue.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use openssl::ssl::{Ssl, SslContextBuilder, SslMethod, SslOptions, SslStream, SslVerifyMode};

/// A connected UDP socket as OpenSSL's transport: one datagram per read and per write.
pub struct UdpIo(pub UdpSocket);

impl Read for UdpIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
}

impl Write for UdpIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A DTLS 1.2 session with `server` made by OpenSSL's client (the certificate is not
/// checked: the tests' is self-signed), its handshake done. Reads wait at most 5 s.
pub fn dtls_connect(server: SocketAddr) -> Result<SslStream<UdpIo>, String> {
    dtls_connect_from("127.0.0.1:0".parse().unwrap(), server)
}

/// [`dtls_connect`] from the local address `local` (port 0: any).
pub fn dtls_connect_from(
    local: SocketAddr,
    server: SocketAddr,
) -> Result<SslStream<UdpIo>, String> {
    let socket = UdpSocket::bind(local).map_err(|e| e.to_string())?;
    socket.connect(server).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut context =
        SslContextBuilder::new(SslMethod::dtls_client()).map_err(|e| e.to_string())?;
    context.set_verify(SslVerifyMode::NONE);
    context.set_options(SslOptions::NO_QUERY_MTU);
    let context = context.build();
    let mut ssl = Ssl::new(&context).map_err(|e| e.to_string())?;
    ssl.set_mtu(1200).map_err(|e| e.to_string())?;
    let mut stream = SslStream::new(ssl, UdpIo(socket)).map_err(|e| e.to_string())?;
    stream
        .connect()
        .map_err(|e| format!("DTLS handshake: {e}"))?;
    Ok(stream)
}

const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const HELLO_VERIFY_REQUEST: u8 = 3;
const SERVER_HELLO: u8 = 2;
const RECORD_HEADER: usize = 13;
const HANDSHAKE_HEADER: usize = 12;

/// A ClientHello record: DTLS 1.2, ECDHE with AES-GCM (ECDSA or RSA certificates), P-256,
/// `cookie` (empty for the first one), handshake message sequence and record sequence
/// `seq`.
pub fn client_hello(cookie: &[u8], seq: u16) -> Vec<u8> {
    client_hello_with_random(cookie, seq, rand::random())
}

/// [`client_hello`] with the given client random (a late copy of another's).
pub fn client_hello_with_random(cookie: &[u8], seq: u16, random: [u8; 32]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0xfe, 0xfd]);
    body.extend_from_slice(&random);
    body.push(0); // session id
    body.push(cookie.len() as u8);
    body.extend_from_slice(cookie);
    // ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let extensions: &[u8] = &[
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, // supported_groups: secp256r1
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, // sig algs
        0x00, 0x17, 0x00, 0x00, // extended_master_secret
    ];
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(extensions);

    let len = (body.len() as u32).to_be_bytes();
    let mut handshake = vec![CLIENT_HELLO, len[1], len[2], len[3]];
    handshake.extend_from_slice(&seq.to_be_bytes());
    handshake.extend_from_slice(&[0, 0, 0]); // fragment offset
    handshake.extend_from_slice(&len[1..]); // fragment length
    handshake.extend_from_slice(&body);

    let mut record = vec![
        CONTENT_HANDSHAKE,
        0xfe,
        0xfd,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        seq as u8,
    ];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The handshake type of the first message in a record, if it is a handshake record.
fn handshake_type(datagram: &[u8]) -> Option<u8> {
    (datagram.len() > RECORD_HEADER && datagram[0] == CONTENT_HANDSHAKE)
        .then(|| datagram[RECORD_HEADER])
}

/// The cookie of a HelloVerifyRequest.
pub fn cookie_of(datagram: &[u8]) -> Option<Vec<u8>> {
    if handshake_type(datagram)? != HELLO_VERIFY_REQUEST {
        return None;
    }
    let at = RECORD_HEADER + HANDSHAKE_HEADER + 2;
    let len = *datagram.get(at)? as usize;
    datagram.get(at + 1..at + 1 + len).map(<[u8]>::to_vec)
}

/// Sends a ClientHello from `socket` to `server` and answers the HelloVerifyRequest with a
/// ClientHello that carries the cookie.
pub fn exchange_cookie(socket: &UdpSocket, server: SocketAddr) -> Result<(), String> {
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    socket
        .send_to(&client_hello(&[], 0), server)
        .map_err(|e| e.to_string())?;
    let n = socket
        .recv(&mut buf)
        .map_err(|e| format!("no HelloVerifyRequest: {e}"))?;
    let cookie = cookie_of(&buf[..n]).ok_or("not a HelloVerifyRequest")?;
    socket
        .send_to(&client_hello(&cookie, 1), server)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// [`exchange_cookie`], then waits for the server's flight (its ServerHello): the relay then
/// holds a session for the client, which sends nothing more.
pub fn start_handshake_and_stop(socket: &UdpSocket, server: SocketAddr) -> Result<(), String> {
    exchange_cookie(socket, server)?;
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .map_err(|e| format!("no ServerHello: {e}"))?;
    match handshake_type(&buf[..n]) {
        Some(SERVER_HELLO) => Ok(()),
        other => Err(format!(
            "expected a ServerHello, got handshake type {other:?}"
        )),
    }
}
