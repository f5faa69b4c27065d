//! Long-term credential authentication of a request (RFC 8489 §9.2): the nonce, the realm, the
//! password algorithm, the credentials and the message integrity, and the 401/438 challenge
//! that tells a client what to try next.
//!
//! Which users and secrets exist is [`crate::auth`]'s business; this module only asks it for
//! candidate keys and checks the request against them.

use std::time::Instant;

use stun_types::attribute::{
    AttributeStaticType, ErrorCode, Nonce, PasswordAlgorithm, PasswordAlgorithmValue,
    PasswordAlgorithms, Realm, Username,
};
use stun_types::message::{Message, MessageWriteExt, MessageWriteVec};

use super::replies::push_error;
use super::Server;
use crate::integrity::{self, HmacAlgorithm, KeyAlgorithm, LongTermKey};
use crate::metrics::{AuthFailure, MethodLabel};
use crate::nonce;
use crate::transport::FiveTuple;

/// A request that passed authentication: who sent it, and the key and HMAC its response is
/// signed with (RFC 8489 §9.2.4: the response uses the request's algorithm).
pub(super) struct Authed {
    pub(super) username: String,
    pub(super) key: LongTermKey,
    pub(super) hmac: HmacAlgorithm,
}

impl Server {
    /// Long-term credential authentication (RFC 8489 §9.2.4). Answers and returns `None` when
    /// the request does not pass.
    ///
    /// Every refusal is unauthenticated and so rate limited: a forged source must not turn the
    /// relay's challenges into a reflector.
    pub(super) fn authenticate(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        label: MethodLabel,
        now: Instant,
    ) -> Option<Authed> {
        if integrity::find(msg).is_none() {
            if self.rate_ok(from, now) {
                self.counters.auth_failure(AuthFailure::MissingIntegrity);
                self.challenge(from, msg, ErrorCode::UNAUTHORIZED, label, now);
            }
            return None;
        }
        let (Ok(username), Ok(realm), Ok(nonce)) = (
            msg.attribute::<Username>(),
            msg.attribute::<Realm>(),
            msg.attribute::<Nonce>(),
        ) else {
            if self.rate_ok(from, now) {
                self.counters.auth_failure(AuthFailure::Malformed);
                self.error(from, msg, ErrorCode::BAD_REQUEST, None, label);
            }
            return None;
        };
        let unix = self.ledger.unix_time(now);
        if self
            .ledger
            .nonce_key()
            .check(nonce.nonce(), from.client.ip(), unix)
            .is_err()
        {
            if self.rate_ok(from, now) {
                self.counters.auth_failure(AuthFailure::StaleNonce);
                self.challenge(from, msg, ErrorCode::STALE_NONCE, label, now);
            }
            return None;
        }
        let key_algorithm = match password_algorithm(msg, nonce.nonce()) {
            Ok(a) => a,
            Err(()) => {
                if self.rate_ok(from, now) {
                    self.counters.auth_failure(AuthFailure::Malformed);
                    self.error(from, msg, ErrorCode::BAD_REQUEST, None, label);
                }
                return None;
            }
        };
        let failure = if realm.realm() != self.config.realm {
            AuthFailure::UnknownUser
        } else {
            match self.config.credentials.candidate_keys(
                username.username(),
                &self.config.realm,
                key_algorithm,
                unix,
            ) {
                Ok(keys) => {
                    for key in keys {
                        if let Ok(hmac) = integrity::verify(msg, &key) {
                            return Some(Authed {
                                username: username.username().to_owned(),
                                key,
                                hmac,
                            });
                        }
                    }
                    AuthFailure::BadIntegrity
                }
                Err(failure) => failure,
            }
        };
        if self.rate_ok(from, now) {
            self.counters.auth_failure(failure);
            self.challenge(from, msg, ErrorCode::UNAUTHORIZED, label, now);
        }
        None
    }

    /// A 401 or 438 with a fresh nonce, the realm and the password algorithms on offer.
    fn challenge(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        code: u16,
        label: MethodLabel,
        now: Instant,
    ) {
        let expiry = self.ledger.unix_time(now) + self.config.timers.nonce_lifetime.as_secs();
        let nonce = self.ledger.nonce_key().issue(from.client.ip(), expiry);
        let mut out = Message::builder_error(msg, MessageWriteVec::with_capacity(128));
        push_error(&mut out, code);
        if let Ok(realm) = Realm::new(&self.config.realm) {
            let _ = out.add_attribute(&realm);
        }
        if let Ok(nonce) = Nonce::new(&nonce) {
            let _ = out.add_attribute(&nonce);
        }
        let _ = out.add_attribute(&offered_algorithms());
        self.send(from, out, None, label, code);
    }
}

fn offered_algorithms() -> PasswordAlgorithms {
    PasswordAlgorithms::new(&[PasswordAlgorithmValue::MD5, PasswordAlgorithmValue::SHA256])
}

/// The key derivation a request asks for (RFC 8489 §9.2.4): MD5 unless it echoes our
/// PASSWORD-ALGORITHMS and picks one with PASSWORD-ALGORITHM. Anything inconsistent is 400.
fn password_algorithm(msg: &Message<'_>, nonce: &str) -> Result<KeyAlgorithm, ()> {
    let algorithms = msg.attribute::<PasswordAlgorithms>().ok();
    let algorithm = msg.attribute::<PasswordAlgorithm>().ok();
    let has_algorithms = msg.has_attribute(PasswordAlgorithms::TYPE);
    let has_algorithm = msg.has_attribute(PasswordAlgorithm::TYPE);
    if !has_algorithms && !has_algorithm {
        return Ok(KeyAlgorithm::Md5);
    }
    // Only a nonce we issued with the feature bit set offered the algorithms; without it, a
    // man in the middle could have stripped them (the bid-down attack of RFC 8489 §9.2.1).
    if !nonce::has_password_algorithms_feature(nonce) || has_algorithms != has_algorithm {
        return Err(());
    }
    let (Some(algorithms), Some(algorithm)) = (algorithms, algorithm) else {
        return Err(());
    };
    if algorithms.algorithms() != offered_algorithms().algorithms() {
        return Err(());
    }
    match algorithm.algorithm() {
        PasswordAlgorithmValue::MD5 => Ok(KeyAlgorithm::Md5),
        PasswordAlgorithmValue::SHA256 => Ok(KeyAlgorithm::Sha256),
    }
}
