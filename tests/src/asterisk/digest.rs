//! SIP digest authentication as Asterisk (res_pjsip_authenticator_digest) does it:
//! `WWW-Authenticate: Digest realm="asterisk",nonce="<unix>/<hex>",opaque="<hex>",
//! algorithm=MD5,qop="auth"` (RFC 2617 with qop=auth). Also the client side, for tests.

use super::clock;
use md5::{Digest, Md5};

fn md5_hex(s: &str) -> String {
    let d = Md5::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// One challenge sent in a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: String,
}

impl Challenge {
    /// A fresh challenge. The nonce has Asterisk's `<unix time>/<32 hex>` shape; the opaque
    /// is new for every challenge, as in the recordings.
    pub fn fresh(realm: &str) -> Challenge {
        Challenge {
            realm: realm.into(),
            nonce: format!("{}/{}", clock::unix_now(), clock::hex(32)),
            opaque: clock::hex(16),
        }
    }

    /// The `WWW-Authenticate` value, parameters in the recorded order.
    pub fn header_value(&self) -> String {
        format!(
            "Digest realm=\"{}\",nonce=\"{}\",opaque=\"{}\",algorithm=MD5,qop=\"auth\"",
            self.realm, self.nonce, self.opaque
        )
    }
}

/// Parses `Digest k=v,k="v, with comma",...` into (lowercase key, unquoted value) pairs.
/// None if the scheme is not Digest.
pub fn parse_params(value: &str) -> Option<Vec<(String, String)>> {
    let rest = value.trim();
    let (scheme, rest) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.trim().is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
        }
        out.push((key.trim().to_ascii_lowercase(), val.trim().to_string()));
    }
    Some(out)
}

fn get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The digest `response` (RFC 2617 §3.2.2.1; qop=auth or none, algorithm MD5).
#[allow(clippy::too_many_arguments)]
pub fn response(
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>, // (nc, cnonce) when qop=auth
) -> String {
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// Why an Authorization header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotDigest,
    Missing(&'static str),
    UnknownUser(String),
    WrongRealm,
    /// The nonce was not issued by this server (or has been forgotten).
    UnknownNonce,
    WrongResponse,
}

/// Checks an `Authorization` value for `method`. `password_of` maps a user to its secret;
/// `nonce_known` says whether this server issued the nonce. Returns the user name.
pub fn verify(
    authorization: &str,
    method: &str,
    realm: &str,
    password_of: impl Fn(&str) -> Option<String>,
    nonce_known: impl Fn(&str) -> bool,
) -> Result<String, Refusal> {
    let p = parse_params(authorization).ok_or(Refusal::NotDigest)?;
    let user = get(&p, "username").ok_or(Refusal::Missing("username"))?;
    let nonce = get(&p, "nonce").ok_or(Refusal::Missing("nonce"))?;
    let uri = get(&p, "uri").ok_or(Refusal::Missing("uri"))?;
    let given = get(&p, "response").ok_or(Refusal::Missing("response"))?;
    if get(&p, "realm") != Some(realm) {
        return Err(Refusal::WrongRealm);
    }
    let password = password_of(user).ok_or_else(|| Refusal::UnknownUser(user.into()))?;
    if !nonce_known(nonce) {
        return Err(Refusal::UnknownNonce);
    }
    let qop = match get(&p, "qop") {
        Some(_) => Some((
            get(&p, "nc").ok_or(Refusal::Missing("nc"))?,
            get(&p, "cnonce").ok_or(Refusal::Missing("cnonce"))?,
        )),
        None => None,
    };
    let expected = response(user, realm, &password, method, uri, nonce, qop);
    if expected.eq_ignore_ascii_case(given) {
        Ok(user.to_string())
    } else {
        Err(Refusal::WrongResponse)
    }
}

/// Client side: the `Authorization` value answering `www_authenticate` (as a browser-side
/// SIP UA would send it), in the recorded parameter order.
pub fn authorization(
    www_authenticate: &str,
    method: &str,
    uri: &str,
    user: &str,
    password: &str,
) -> Option<String> {
    let p = parse_params(www_authenticate)?;
    let realm = get(&p, "realm")?;
    let nonce = get(&p, "nonce")?;
    let cnonce = clock::hex(16);
    let nc = "00000001";
    let resp = response(
        user,
        realm,
        password,
        method,
        uri,
        nonce,
        Some((nc, &cnonce)),
    );
    let mut v = format!(
        "Digest username=\"{user}\",realm=\"{realm}\",nonce=\"{nonce}\",uri=\"{uri}\",response=\"{resp}\",algorithm=MD5,qop=auth,nc={nc},cnonce=\"{cnonce}\""
    );
    if let Some(opaque) = get(&p, "opaque") {
        v.push_str(&format!(",opaque=\"{opaque}\""));
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credentials of register.json, as a real Asterisk accepted them.
    const RECORDED: &str = "Digest username=\"icegate\",realm=\"asterisk\",nonce=\"1795551893/041dc43dfafb9a9e11ce44f75f6c2674\",uri=\"sip:127.0.0.1\",response=\"10cfae636c07be2254bd99f054e95479\",algorithm=MD5,qop=auth,nc=00000001,cnonce=\"432ddb079bd8296e\",opaque=\"12e85f4832906a8c\"";

    fn pw(u: &str) -> Option<String> {
        (u == "icegate").then(|| "sip-secret".to_string())
    }

    #[test]
    fn accepts_the_recorded_register_credentials() {
        assert_eq!(
            verify(RECORDED, "REGISTER", "asterisk", pw, |_| true),
            Ok("icegate".into())
        );
    }

    #[test]
    fn refuses_wrong_method_nonce_and_password() {
        assert_eq!(
            verify(RECORDED, "INVITE", "asterisk", pw, |_| true),
            Err(Refusal::WrongResponse)
        );
        assert_eq!(
            verify(RECORDED, "REGISTER", "asterisk", pw, |_| false),
            Err(Refusal::UnknownNonce)
        );
        let other = |u: &str| (u == "icegate").then(|| "nope".to_string());
        assert_eq!(
            verify(RECORDED, "REGISTER", "asterisk", other, |_| true),
            Err(Refusal::WrongResponse)
        );
    }

    #[test]
    fn client_side_round_trip() {
        let ch = Challenge::fresh("asterisk");
        let auth = authorization(
            &ch.header_value(),
            "INVITE",
            "sip:600@127.0.0.1",
            "icegate",
            "sip-secret",
        )
        .unwrap();
        assert_eq!(
            verify(&auth, "INVITE", "asterisk", pw, |n| n == ch.nonce),
            Ok("icegate".into())
        );
    }
}
