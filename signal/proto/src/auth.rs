//! Client authentication with JWT bearer tokens: HS256 with a shared secret, RS256 or ES256
//! with a public key. `sub` is the user id; `exp` is required and enforced.
//!
//! Expiry is checked here against the `now` the caller passes in, not by `jsonwebtoken`
//! (whose own check reads the system clock), so that tests can run on a fake clock.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::protocol::{ErrorCode, UserId};

/// Seconds of clock skew tolerated between the token issuer and this server.
pub const LEEWAY_SECS: u64 = 30;

/// Why the configured keys are unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The public key PEM is neither an RSA nor an EC public key.
    #[error("not an RSA or EC public key in PEM form (expected -----BEGIN PUBLIC KEY-----)")]
    BadPublicKey,
    /// The HMAC secret is empty.
    #[error("the JWT secret must not be empty")]
    EmptySecret,
    /// An EC key on a curve other than P-256: ES256 tokens could never verify against it.
    #[error("an EC public key must be on curve P-256 (ES256); other curves are not supported")]
    UnsupportedCurve,
}

/// The DER encoding of the P-256 curve's OID (1.2.840.10045.3.1.7) inside an EC SPKI.
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

/// Whether a PEM public key names the P-256 curve. jsonwebtoken accepts any EC curve here and
/// then fails every ES256 signature, which would look like a flood of forged tokens.
fn is_p256(pem: &[u8]) -> bool {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect::<String>()
        .split_whitespace()
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .is_ok_and(|der| der.windows(P256_OID.len()).any(|w| w == P256_OID))
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was given.
    #[error("a token is required")]
    Missing,
    /// The token is not a JWT, or its claims do not parse.
    #[error("malformed token")]
    Malformed,
    /// The token's algorithm has no configured key (or is not HS256, RS256 or ES256).
    #[error("token algorithm not accepted")]
    Algorithm,
    /// The signature does not verify.
    #[error("bad token signature")]
    Signature,
    /// `exp` is missing.
    #[error("token has no exp claim")]
    NoExpiry,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// `sub` is missing or not a usable user id.
    #[error("token sub is missing or not a valid user id")]
    Subject,
}

impl AuthError {
    /// The protocol error code a client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing => ErrorCode::TokenRequired,
            AuthError::Expired => ErrorCode::TokenExpired,
            _ => ErrorCode::InvalidToken,
        }
    }
}

/// The claims read from a token; numbers may be floats in some issuers' tokens.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
}

/// Verifies tokens against the configured keys.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    public: Option<(Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of Debug output and therefore out of logs.
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs256.is_some())
            .field("public", &self.public.as_ref().map(|(alg, _)| alg))
            .finish()
    }
}

impl Authenticator {
    /// An authenticator with an HS256 secret and/or a PEM public key (RSA → RS256, EC → ES256).
    pub fn new(secret: Option<&[u8]>, public_key_pem: Option<&[u8]>) -> Result<Self, KeyError> {
        let hs256 = match secret {
            Some([]) => return Err(KeyError::EmptySecret),
            Some(secret) => Some(DecodingKey::from_secret(secret)),
            None => None,
        };
        let public = match public_key_pem {
            Some(pem) => Some(
                DecodingKey::from_rsa_pem(pem)
                    .map(|key| (Algorithm::RS256, key))
                    .or_else(|_| DecodingKey::from_ec_pem(pem).map(|key| (Algorithm::ES256, key)))
                    .map_err(|_| KeyError::BadPublicKey)
                    .and_then(|(alg, key)| match alg {
                        Algorithm::ES256 if !is_p256(pem) => Err(KeyError::UnsupportedCurve),
                        _ => Ok((alg, key)),
                    })?,
            ),
            None => None,
        };
        Ok(Authenticator { hs256, public })
    }

    /// Whether any key is configured, i.e. whether tokens can be accepted at all.
    pub fn is_configured(&self) -> bool {
        self.hs256.is_some() || self.public.is_some()
    }

    /// Checks `token` at `now_unix` and returns its subject.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<UserId, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        // The key is chosen by the header's algorithm among the configured ones only, so an
        // RSA public key can never be used as an HMAC secret (algorithm confusion).
        let key = match (header.alg, &self.hs256, &self.public) {
            (Algorithm::HS256, Some(key), _) => key,
            (alg, _, Some((public_alg, key))) if alg == *public_alg => key,
            _ => return Err(AuthError::Algorithm),
        };
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::Signature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => AuthError::Algorithm,
                _ => AuthError::Malformed,
            })?
            .claims;
        let now = now_unix as f64;
        let exp = claims.exp.ok_or(AuthError::NoExpiry)?;
        if exp + (LEEWAY_SECS as f64) < now {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECS as f64) {
            return Err(AuthError::NotYetValid);
        }
        claims
            .sub
            .and_then(|sub| UserId::new(sub).ok())
            .ok_or(AuthError::Subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn hs(claims: serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    /// An ES256 key pair made with rcgen (PKCS#8 private key, SPKI public key).
    fn es256_pair() -> (EncodingKey, Vec<u8>) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        (private, pair.public_key_pem().into_bytes())
    }

    #[test]
    fn hs256_accepts_a_good_token() {
        let auth = Authenticator::new(Some(b"secret"), None).unwrap();
        let token = hs(json!({"sub":"alice","exp":NOW + 60}), b"secret");
        assert_eq!(auth.verify(&token, NOW), Ok(UserId::new("alice").unwrap()));
    }

    #[test]
    fn refuses_bad_tokens_with_the_right_reason() {
        let auth = Authenticator::new(Some(b"secret"), None).unwrap();
        let check = |claims, secret: &[u8]| auth.verify(&hs(claims, secret), NOW);
        assert_eq!(
            check(
                json!({"sub":"alice","exp":NOW - LEEWAY_SECS - 1}),
                b"secret"
            ),
            Err(AuthError::Expired)
        );
        assert!(
            check(json!({"sub":"alice","exp":NOW - 5}), b"secret").is_ok(),
            "leeway"
        );
        assert_eq!(
            check(json!({"sub":"alice","exp":NOW + 60}), b"other"),
            Err(AuthError::Signature)
        );
        assert_eq!(
            check(json!({"sub":"alice"}), b"secret"),
            Err(AuthError::NoExpiry)
        );
        assert_eq!(
            check(json!({"exp":NOW + 60}), b"secret"),
            Err(AuthError::Subject)
        );
        assert_eq!(
            check(json!({"sub":"a:b","exp":NOW + 60}), b"secret"),
            Err(AuthError::Subject)
        );
        assert_eq!(
            check(
                json!({"sub":"alice","exp":NOW + 60,"nbf":NOW + 600}),
                b"secret"
            ),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(auth.verify("", NOW), Err(AuthError::Missing));
        assert_eq!(auth.verify("a.b.c", NOW), Err(AuthError::Malformed));
        assert_eq!(AuthError::Expired.code(), ErrorCode::TokenExpired);
        assert_eq!(AuthError::Signature.code(), ErrorCode::InvalidToken);
    }

    #[test]
    fn es256_public_key_and_no_algorithm_confusion() {
        let (private, public_pem) = es256_pair();
        let auth = Authenticator::new(None, Some(&public_pem)).unwrap();
        let claims = json!({"sub":"bob","exp":NOW + 60});
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &private).unwrap();
        assert_eq!(auth.verify(&token, NOW), Ok(UserId::new("bob").unwrap()));

        // An HS256 token signed with the public key's bytes must not pass as the public key.
        let forged = hs(claims.clone(), &public_pem);
        assert_eq!(auth.verify(&forged, NOW), Err(AuthError::Algorithm));

        // Another key pair's signature fails.
        let (other, _) = es256_pair();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &other).unwrap();
        assert_eq!(auth.verify(&token, NOW), Err(AuthError::Signature));
    }

    #[test]
    fn rsa_public_key_selects_rs256() {
        // A 2048-bit RSA key pair, generated once with openssl for the tests (never used elsewhere).
        let public = include_bytes!("../tests/data/rsa-public.pem");
        let private = include_bytes!("../tests/data/rsa-private.pem");
        let auth = Authenticator::new(None, Some(public)).unwrap();
        assert!(matches!(auth.public, Some((Algorithm::RS256, _))));
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &json!({"sub":"carol","exp":NOW + 60}),
            &EncodingKey::from_rsa_pem(private).unwrap(),
        )
        .unwrap();
        assert_eq!(auth.verify(&token, NOW), Ok(UserId::new("carol").unwrap()));
        assert!(matches!(
            Authenticator::new(
                None,
                Some(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            ),
            Err(KeyError::BadPublicKey)
        ));
        assert!(matches!(
            Authenticator::new(Some(b""), None),
            Err(KeyError::EmptySecret)
        ));
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(
            Authenticator::new(None, Some(p384.public_key_pem().as_bytes())),
            Err(KeyError::UnsupportedCurve)
        ));
        assert!(!Authenticator::new(None, None).unwrap().is_configured());
    }
}
