//! Stateless nonces (RFC 8489 §9.2): any worker can check a nonce another worker issued.
//!
//! A nonce is `obMatJos2` + the base64 security-feature bits + the expiry time + a truncated
//! HMAC over both and the client's IP address, under a key held by the [`crate::Ledger`]. The
//! relay keeps no table of nonces, so floods of unauthenticated requests cost no memory, and
//! a nonce stolen from one client address is useless from another.

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

/// The prefix RFC 8489 §9.2 reserves for nonces that carry security feature bits.
pub const COOKIE: &str = "obMatJos2";

/// The security feature bits we set, base64-encoded: bit 0 (the most significant),
/// "Password algorithms", so clients may use PASSWORD-ALGORITHM with SHA-256 keys.
pub const FEATURES: &str = "gAAA";

const MAC_HEX_LEN: usize = 16;
const EXPIRY_HEX_LEN: usize = 16;

/// The length of every nonce we issue.
pub const NONCE_LEN: usize = COOKIE.len() + FEATURES.len() + EXPIRY_HEX_LEN + MAC_HEX_LEN;

/// The secret that signs nonces.
#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(***)")
    }
}

/// Why a nonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    /// Ours, but past its expiry: answer 438 Stale Nonce.
    Stale,
    /// Not a nonce we issued (or issued to another address): also 438, so the client retries.
    Invalid,
}

impl NonceKey {
    /// Wraps 32 random bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self, expiry_hex: &[u8], client: IpAddr) -> [u8; 8] {
        let mut mac = <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(expiry_hex);
        match client {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 8];
        out.copy_from_slice(&full[..8]);
        out
    }

    /// Issues a nonce for `client`, valid until `expiry_unix`.
    pub fn issue(&self, client: IpAddr, expiry_unix: u64) -> String {
        let expiry_hex = format!("{expiry_unix:016x}");
        let mac = self.mac(expiry_hex.as_bytes(), client);
        let mut nonce = String::with_capacity(NONCE_LEN);
        nonce.push_str(COOKIE);
        nonce.push_str(FEATURES);
        nonce.push_str(&expiry_hex);
        for b in mac {
            nonce.push_str(&format!("{b:02x}"));
        }
        nonce
    }

    /// Checks a nonce presented by `client` at `now_unix`.
    pub fn check(&self, nonce: &str, client: IpAddr, now_unix: u64) -> Result<(), NonceError> {
        let rest = nonce
            .strip_prefix(COOKIE)
            .and_then(|r| r.strip_prefix(FEATURES))
            .ok_or(NonceError::Invalid)?;
        if rest.len() != EXPIRY_HEX_LEN + MAC_HEX_LEN || !rest.is_ascii() {
            return Err(NonceError::Invalid);
        }
        let (expiry_hex, mac_hex) = rest.split_at(EXPIRY_HEX_LEN);
        let expiry = u64::from_str_radix(expiry_hex, 16).map_err(|_| NonceError::Invalid)?;
        let mut presented = [0u8; 8];
        for (i, byte) in presented.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&mac_hex[2 * i..2 * i + 2], 16)
                .map_err(|_| NonceError::Invalid)?;
        }
        let expected = self.mac(expiry_hex.as_bytes(), client);
        if !bool::from(expected.ct_eq(&presented)) {
            return Err(NonceError::Invalid);
        }
        if expiry < now_unix {
            return Err(NonceError::Stale);
        }
        Ok(())
    }
}

/// Whether a nonce advertises the "Password algorithms" security feature.
pub fn has_password_algorithms_feature(nonce: &str) -> bool {
    nonce.starts_with(COOKIE) && nonce[COOKIE.len()..].starts_with(FEATURES)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn round_trip_and_expiry() {
        let key = NonceKey::new([7; 32]);
        let nonce = key.issue(A, 1000);
        assert_eq!(nonce.len(), NONCE_LEN);
        assert!(has_password_algorithms_feature(&nonce));
        assert_eq!(key.check(&nonce, A, 999), Ok(()));
        assert_eq!(key.check(&nonce, A, 1000), Ok(()));
        assert_eq!(key.check(&nonce, A, 1001), Err(NonceError::Stale));
    }

    #[test]
    fn bound_to_client_and_key() {
        let key = NonceKey::new([7; 32]);
        let nonce = key.issue(A, 1000);
        assert_eq!(key.check(&nonce, B, 0), Err(NonceError::Invalid));
        assert_eq!(
            NonceKey::new([8; 32]).check(&nonce, A, 0),
            Err(NonceError::Invalid)
        );
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        let key = NonceKey::new([7; 32]);
        for junk in ["", "obMatJos2", "obMatJos2gAAA", "obMatJos2gAAAzz", "héllo"] {
            assert_eq!(key.check(junk, A, 0), Err(NonceError::Invalid));
        }
        let mut tampered = key.issue(A, 1000).into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(key.check(&tampered, A, 0), Err(NonceError::Invalid));
        let multibyte = format!("{COOKIE}{FEATURES}{}", "é".repeat(16));
        assert_eq!(key.check(&multibyte, A, 0), Err(NonceError::Invalid));
    }
}
