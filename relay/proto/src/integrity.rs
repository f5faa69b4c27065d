//! Long-term credential keys and MESSAGE-INTEGRITY / MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.5-6).
//!
//! RFC 8489 chooses the key derivation (PASSWORD-ALGORITHM: MD5 or SHA-256 of
//! `username:realm:password`) independently of the HMAC (SHA-1 for MESSAGE-INTEGRITY, SHA-256
//! for MESSAGE-INTEGRITY-SHA256). The codec couples the two, so the relay signs and verifies
//! here, with the codec still doing all parsing.

use hmac::{Hmac, Mac};
use sha2::Digest;
use stun_types::attribute::{
    Attribute, AttributeStaticType, Fingerprint, MessageIntegrity, MessageIntegritySha256,
    RawAttribute,
};
use stun_types::message::{Message, MessageWrite, MessageWriteVec};

/// How the long-term key is derived from the password (RFC 8489 PASSWORD-ALGORITHM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// `MD5(username ":" realm ":" password)`, the RFC 5389 default.
    Md5,
    /// `SHA-256(username ":" realm ":" password)`.
    Sha256,
}

/// Which integrity attribute protects a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlgorithm {
    /// MESSAGE-INTEGRITY: HMAC-SHA1.
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256: HMAC-SHA256, possibly truncated by the sender.
    Sha256,
}

/// A derived long-term key.
#[derive(Clone, PartialEq, Eq)]
pub struct LongTermKey {
    bytes: [u8; 32],
    len: u8,
}

impl std::fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LongTermKey(***)")
    }
}

impl LongTermKey {
    /// Derives the key for a user.
    pub fn derive(algorithm: KeyAlgorithm, username: &str, realm: &str, password: &str) -> Self {
        let mut bytes = [0u8; 32];
        let len = match algorithm {
            KeyAlgorithm::Md5 => {
                let mut h = md5::Md5::new();
                for part in [username, ":", realm, ":", password] {
                    h.update(part.as_bytes());
                }
                bytes[..16].copy_from_slice(&h.finalize());
                16
            }
            KeyAlgorithm::Sha256 => {
                let mut h = sha2::Sha256::new();
                for part in [username, ":", realm, ":", password] {
                    h.update(part.as_bytes());
                }
                bytes.copy_from_slice(&h.finalize());
                32
            }
        };
        Self { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Why a message's integrity could not be verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    /// The message carries no integrity attribute.
    #[error("no MESSAGE-INTEGRITY attribute")]
    Missing,
    /// The attribute is malformed.
    #[error("malformed integrity attribute")]
    Malformed,
    /// The HMAC does not match: wrong key.
    #[error("integrity check failed")]
    Mismatch,
}

/// Finds the integrity attribute that counts: MESSAGE-INTEGRITY-SHA256 when present
/// (RFC 8489 §14.6 lets it supersede MESSAGE-INTEGRITY), else MESSAGE-INTEGRITY.
pub fn find(msg: &Message<'_>) -> Option<(HmacAlgorithm, usize)> {
    let mut found = None;
    for (offset, attr) in msg.iter_attributes() {
        match attr.get_type() {
            t if t == MessageIntegritySha256::TYPE => {
                return Some((HmacAlgorithm::Sha256, offset));
            }
            t if t == MessageIntegrity::TYPE && found.is_none() => {
                found = Some((HmacAlgorithm::Sha1, offset));
            }
            _ => {}
        }
    }
    found
}

/// Verifies `msg` with `key`, in constant time.
pub fn verify(msg: &Message<'_>, key: &LongTermKey) -> Result<HmacAlgorithm, IntegrityError> {
    let (algorithm, offset) = find(msg).ok_or(IntegrityError::Missing)?;
    let data = msg.as_bytes();
    let attr = RawAttribute::from_bytes(&data[offset..]).map_err(|_| IntegrityError::Malformed)?;
    let value = attr.value.as_ref();
    let value_len = value.len();
    let ok = match algorithm {
        HmacAlgorithm::Sha1 => {
            if value_len != 20 {
                return Err(IntegrityError::Malformed);
            }
            let mut mac = new_mac::<Hmac<sha1::Sha1>>(key);
            feed(&mut mac, data, offset, value_len);
            mac.verify_slice(value).is_ok()
        }
        HmacAlgorithm::Sha256 => {
            // RFC 8489 §14.6: at least 16 bytes, a multiple of 4, at most 32.
            if !(16..=32).contains(&value_len) || value_len % 4 != 0 {
                return Err(IntegrityError::Malformed);
            }
            let mut mac = new_mac::<Hmac<sha2::Sha256>>(key);
            feed(&mut mac, data, offset, value_len);
            mac.verify_truncated_left(value).is_ok()
        }
    };
    if ok {
        Ok(algorithm)
    } else {
        Err(IntegrityError::Mismatch)
    }
}

fn new_mac<M: Mac + hmac::digest::KeyInit>(key: &LongTermKey) -> M {
    <M as hmac::digest::KeyInit>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

/// Feeds the bytes covered by an integrity attribute at `offset`: the message up to the
/// attribute, with the header's length field as if the attribute were the last one.
fn feed(mac: &mut impl Mac, data: &[u8], offset: usize, value_len: usize) {
    let covered_len = (offset - 20 + 4 + value_len) as u16;
    mac.update(&data[..2]);
    mac.update(&covered_len.to_be_bytes());
    mac.update(&data[4..offset]);
}

/// Appends the integrity attribute of `algorithm` under `key` to a message being written.
pub fn sign(out: &mut MessageWriteVec, key: &LongTermKey, algorithm: HmacAlgorithm) {
    // `add_attribute` panics on integrity attributes (the codec wants to sign with its own
    // coupled key derivation), so the checks it would make are made here and the attribute
    // is pushed directly.
    if out
        .has_any_attribute(&[
            MessageIntegrity::TYPE,
            MessageIntegritySha256::TYPE,
            Fingerprint::TYPE,
        ])
        .is_some()
    {
        debug_assert!(false, "integrity is added once, before FINGERPRINT");
        return;
    }
    let offset = out.len();
    let bytes: &[u8] = out;
    match algorithm {
        HmacAlgorithm::Sha1 => {
            let mut mac = new_mac::<Hmac<sha1::Sha1>>(key);
            feed(&mut mac, bytes, offset, 20);
            let hmac: [u8; 20] = mac.finalize().into_bytes().into();
            out.push_attribute_unchecked(&MessageIntegrity::new(hmac));
        }
        HmacAlgorithm::Sha256 => {
            let mut mac = new_mac::<Hmac<sha2::Sha256>>(key);
            feed(&mut mac, bytes, offset, 32);
            let hmac = mac.finalize().into_bytes();
            if let Ok(attr) = MessageIntegritySha256::new(&hmac) {
                out.push_attribute_unchecked(&attr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_types::attribute::{Realm, Username};
    use stun_types::message::{
        IntegrityAlgorithm, LongTermKeyCredentials, MessageIntegrityCredentials, MessageWriteExt,
        BINDING,
    };

    fn credentials() -> MessageIntegrityCredentials {
        LongTermKeyCredentials::new("alice".into(), "pw".into(), "example.org".into()).into()
    }

    #[test]
    fn verifies_what_the_codec_signs_with_both_hmacs() {
        for (codec_algo, ours, key_algo) in [
            (
                IntegrityAlgorithm::Sha1,
                HmacAlgorithm::Sha1,
                KeyAlgorithm::Md5,
            ),
            (
                IntegrityAlgorithm::Sha256,
                HmacAlgorithm::Sha256,
                KeyAlgorithm::Sha256,
            ),
        ] {
            let mut msg = Message::builder_request(BINDING, MessageWriteVec::new());
            msg.add_attribute(&Username::new("alice").unwrap()).unwrap();
            msg.add_attribute(&Realm::new("example.org").unwrap())
                .unwrap();
            msg.add_message_integrity(&credentials(), codec_algo)
                .unwrap();
            msg.add_fingerprint().unwrap();
            let bytes = msg.finish();
            let parsed = Message::from_bytes(&bytes).unwrap();
            let key = LongTermKey::derive(key_algo, "alice", "example.org", "pw");
            assert_eq!(verify(&parsed, &key), Ok(ours));
            let wrong = LongTermKey::derive(key_algo, "alice", "example.org", "nope");
            assert_eq!(verify(&parsed, &wrong), Err(IntegrityError::Mismatch));
        }
    }

    #[test]
    fn the_codec_verifies_what_we_sign() {
        for (ours, codec_key, key_algo) in [
            (
                HmacAlgorithm::Sha1,
                IntegrityAlgorithm::Sha1,
                KeyAlgorithm::Md5,
            ),
            (
                HmacAlgorithm::Sha256,
                IntegrityAlgorithm::Sha256,
                KeyAlgorithm::Sha256,
            ),
        ] {
            let mut msg = Message::builder_request(BINDING, MessageWriteVec::new());
            msg.add_attribute(&Username::new("alice").unwrap()).unwrap();
            let key = LongTermKey::derive(key_algo, "alice", "example.org", "pw");
            sign(&mut msg, &key, ours);
            msg.add_fingerprint().unwrap();
            let bytes = msg.finish();
            let parsed = Message::from_bytes(&bytes).unwrap();
            assert_eq!(
                parsed.validate_integrity(&credentials()).ok(),
                Some(codec_key)
            );
            assert_eq!(verify(&parsed, &key), Ok(ours));
        }
    }

    #[test]
    fn missing_integrity_is_reported() {
        let bytes = Message::builder_request(BINDING, MessageWriteVec::new()).finish();
        let parsed = Message::from_bytes(&bytes).unwrap();
        let key = LongTermKey::derive(KeyAlgorithm::Md5, "a", "b", "c");
        assert_eq!(verify(&parsed, &key), Err(IntegrityError::Missing));
    }
}
