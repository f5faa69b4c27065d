//! The DTLS 1.2 server side (coturn's DTLS on `tls-listening-port`), on the system OpenSSL:
//! rustls has no DTLS, and OpenSSL is what coturn and its clients speak it with.
//!
//! [`DtlsContext`] holds the OpenSSL context made from the TLS certificate and key, re-made
//! on SIGHUP for handshakes that start after it. Every context shares one cookie key, so a
//! cookie handed out before a reload is still good after it.
//!
//! A ClientHello from an address without a session goes through [`listen`], OpenSSL's
//! `DTLSv1_listen`: stateless, it answers a ClientHello without a valid cookie with a
//! HelloVerifyRequest and keeps nothing, and takes one with a valid cookie as the start of a
//! handshake that the same `SSL` object continues (OpenSSL then expects the ClientHello's
//! message sequence number 1, which a cookie exchange done outside OpenSSL could not tell
//! it). A spoofed source never gets past the cookie, so it creates no state.
//!
//! rust-openssl wraps neither `DTLSv1_listen` nor `DTLSv1_handle_timeout`: both are
//! declared here, from OpenSSL's `ssl.h` (3.0).

use std::ffi::{c_int, c_long, c_void};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use foreign_types::ForeignTypeRef;
use hmac::{Mac, SimpleHmac};
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslOptions, SslRef,
    SslSessionCacheMode, SslStream, SslVersion,
};
use sha2::Sha256;

/// The largest datagram OpenSSL is asked to send: handshake messages are fragmented to fit,
/// so that a certificate flight crosses paths with a 1280-byte IPv6 MTU unfragmented.
pub const MTU: u32 = 1200;
/// Bytes of HMAC-SHA256 a cookie keeps.
const COOKIE_LEN: usize = 16;
/// A cookie is good for the interval it was made in and the next one.
const COOKIE_INTERVAL_SECS: u64 = 30;

/// `DTLS_CTRL_HANDLE_TIMEOUT` of `ssl.h`: `DTLSv1_handle_timeout` is a macro over `SSL_ctrl`.
const DTLS_CTRL_HANDLE_TIMEOUT: c_int = 74;

extern "C" {
    fn DTLSv1_listen(ssl: *mut c_void, client: *mut c_void) -> c_int;
    fn BIO_ADDR_new() -> *mut c_void;
    fn BIO_ADDR_free(addr: *mut c_void);
    fn SSL_ctrl(ssl: *mut c_void, cmd: c_int, larg: c_long, parg: *mut c_void) -> c_long;
}

/// Why the DTLS context could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    /// OpenSSL refused the certificate, the key or a setting.
    #[error("DTLS with {} and {}: {source}", cert.display(), key.display())]
    OpenSsl {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What OpenSSL said.
        #[source]
        source: ErrorStack,
    },
}

/// The key of the cookies and the clock they are dated by.
struct CookieKey {
    key: [u8; 32],
    origin: Instant,
}

impl CookieKey {
    fn mac(&self, client: SocketAddr, interval: u64) -> SimpleHmac<Sha256> {
        let mut mac = <SimpleHmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(&interval.to_be_bytes());
        match client.ip() {
            std::net::IpAddr::V4(ip) => mac.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&client.port().to_be_bytes());
        mac
    }

    fn interval(&self) -> u64 {
        self.origin.elapsed().as_secs() / COOKIE_INTERVAL_SECS
    }

    fn generate(&self, client: SocketAddr, out: &mut [u8]) -> usize {
        let tag = self.mac(client, self.interval()).finalize().into_bytes();
        let n = COOKIE_LEN.min(out.len());
        out[..n].copy_from_slice(&tag[..n]);
        n
    }

    fn verify(&self, client: SocketAddr, cookie: &[u8]) -> bool {
        self.verify_at(client, cookie, self.interval())
    }

    /// Whether `cookie` was made for `client` in interval `now` or the one before.
    fn verify_at(&self, client: SocketAddr, cookie: &[u8], now: u64) -> bool {
        if cookie.len() != COOKIE_LEN {
            return false;
        }
        // Constant time: `verify_truncated_left` compares without an early exit.
        [now, now.saturating_sub(1)].into_iter().any(|interval| {
            self.mac(client, interval)
                .verify_truncated_left(cookie)
                .is_ok()
        })
    }
}

/// The `SSL` ex-data slot holding the client's address, for the cookie callbacks.
fn peer_index() -> Result<Index<Ssl, SocketAddr>, ErrorStack> {
    static INDEX: OnceLock<Index<Ssl, SocketAddr>> = OnceLock::new();
    if let Some(index) = INDEX.get() {
        return Ok(*index);
    }
    let index = Ssl::new_ex_index::<SocketAddr>()?;
    Ok(*INDEX.get_or_init(|| index))
}

/// The OpenSSL context new DTLS handshakes use, reloadable.
pub struct DtlsContext {
    cert: PathBuf,
    key: PathBuf,
    cookies: Arc<CookieKey>,
    // Readers clone the context (a reference count); only handshakes read it.
    current: RwLock<SslContext>,
}

impl DtlsContext {
    /// Reads the PEM certificate chain and key, as the TLS listener does.
    pub fn new(cert: &Path, key: &Path) -> Result<Self, DtlsError> {
        let cookies = Arc::new(CookieKey {
            key: rand::random(),
            origin: Instant::now(),
        });
        let context = build(cert, key, &cookies)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            cookies,
            current: RwLock::new(context),
        })
    }

    /// Re-reads the files (SIGHUP): handshakes from now on use them; a broken pair keeps
    /// the old ones.
    pub fn reload(&self) -> Result<(), DtlsError> {
        let context = build(&self.cert, &self.key, &self.cookies)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = context;
        Ok(())
    }

    /// A session for a datagram from `client`, on the current certificate.
    pub fn session<S: Read + Write>(
        &self,
        client: SocketAddr,
        io: S,
    ) -> Result<SslStream<S>, ErrorStack> {
        let context = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut ssl = Ssl::new(&context)?;
        ssl.set_ex_data(peer_index()?, client);
        ssl.set_mtu(MTU)?;
        SslStream::new(ssl, io)
    }
}

fn build(cert: &Path, key: &Path, cookies: &Arc<CookieKey>) -> Result<SslContext, DtlsError> {
    let error = |source| DtlsError::OpenSsl {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    let mut b = SslContextBuilder::new(SslMethod::dtls_server()).map_err(error)?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(error)?;
    b.set_certificate_chain_file(cert).map_err(error)?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(error)?;
    b.check_private_key().map_err(error)?;
    // No session resumption: a session lives as long as the client's 5-tuple, and a cache
    // would be state a client could fill.
    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    b.set_options(SslOptions::COOKIE_EXCHANGE | SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
    // An idle session gives its record buffers back.
    b.set_mode(SslMode::RELEASE_BUFFERS);
    peer_index().map_err(error)?;
    let generate = Arc::clone(cookies);
    b.set_cookie_generate_cb(move |ssl, out| {
        let client = client_of(ssl).ok_or_else(ErrorStack::get)?;
        Ok(generate.generate(client, out))
    });
    let verify = Arc::clone(cookies);
    b.set_cookie_verify_cb(move |ssl, cookie| {
        client_of(ssl).is_some_and(|client| verify.verify(client, cookie))
    });
    Ok(b.build())
}

fn client_of(ssl: &SslRef) -> Option<SocketAddr> {
    ssl.ex_data(peer_index().ok()?).copied()
}

/// What [`listen`] made of a first datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listened {
    /// A ClientHello with a valid cookie: the handshake goes on with `accept`.
    Verified,
    /// Answered with a HelloVerifyRequest, or not a usable ClientHello: drop the session.
    Stateless,
}

/// Runs OpenSSL's stateless cookie exchange on the datagrams `session`'s I/O holds.
pub fn listen<S>(session: &mut SslStream<S>) -> Listened {
    // SAFETY: the SSL pointer is valid for as long as `session` is borrowed, and its BIOs
    // are set (SslStream::new did). DTLSv1_listen writes the client's address into the
    // BIO_ADDR, which is allocated here, checked for null and freed before returning.
    unsafe {
        let addr = BIO_ADDR_new();
        if addr.is_null() {
            return Listened::Stateless;
        }
        let ret = DTLSv1_listen(session.ssl().as_ptr().cast(), addr);
        BIO_ADDR_free(addr);
        if ret > 0 {
            Listened::Verified
        } else {
            // Errors of a bad datagram stay on the thread's queue otherwise.
            let _ = ErrorStack::get();
            Listened::Stateless
        }
    }
}

/// Retransmits the last handshake flight if its timer ran out (`DTLSv1_handle_timeout`).
pub fn handle_timeout<S>(session: &mut SslStream<S>) {
    // SAFETY: a valid SSL pointer, as in `listen`; this control takes no argument.
    unsafe {
        SSL_ctrl(
            session.ssl().as_ptr().cast(),
            DTLS_CTRL_HANDLE_TIMEOUT,
            0,
            std::ptr::null_mut(),
        );
    }
    let _ = ErrorStack::get();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CookieKey {
        CookieKey {
            key: [7; 32],
            origin: Instant::now(),
        }
    }

    #[test]
    fn a_cookie_is_good_for_its_address_only() {
        let k = key();
        let a: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let mut cookie = [0u8; 255];
        let n = k.generate(a, &mut cookie);
        assert_eq!(n, COOKIE_LEN);
        assert!(k.verify(a, &cookie[..n]));
        assert!(!k.verify("192.0.2.1:4001".parse().unwrap(), &cookie[..n]));
        assert!(!k.verify("192.0.2.2:4000".parse().unwrap(), &cookie[..n]));
        let mut bad = cookie;
        bad[0] ^= 1;
        assert!(!k.verify(a, &bad[..n]));
        assert!(!k.verify(a, &cookie[..n - 1]));
    }

    #[test]
    fn a_cookie_is_good_for_two_intervals() {
        let k = key();
        let a: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let made = k.mac(a, 10).finalize().into_bytes();
        let cookie = &made[..COOKIE_LEN];
        assert!(!k.verify_at(a, cookie, 9));
        assert!(k.verify_at(a, cookie, 10));
        assert!(k.verify_at(a, cookie, 11));
        assert!(!k.verify_at(a, cookie, 12));
        let other_key = CookieKey {
            key: [8; 32],
            origin: k.origin,
        };
        assert!(!other_key.verify_at(a, cookie, 10));
    }
}
