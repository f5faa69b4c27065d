//! The recordings of a real Asterisk (recordings/*.json) and the shape comparisons used
//! to check the stand-in (and, later, icegate-signal) against them.

use super::sdp::Sdp;
use super::sip::{self, SipMessage};
use serde_json::Value;
use std::path::PathBuf;

/// One recorded message.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub t_ms: u64,
    /// `sip-ws`, `ari-events`, `ari-rest`.
    pub channel: String,
    /// `to-asterisk`, `from-asterisk`, `note`.
    pub dir: String,
    /// SIP text, or the JSON value.
    pub data: Value,
}

impl Recorded {
    pub fn text(&self) -> &str {
        self.data.as_str().unwrap_or_default()
    }
    pub fn sip(&self) -> SipMessage {
        SipMessage::parse(self.text()).expect("recorded SIP parses")
    }
}

/// One flow file.
#[derive(Debug, Clone)]
pub struct Recording {
    pub flow: String,
    pub messages: Vec<Recorded>,
}

/// The directory of the recordings shipped with this crate.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/asterisk")
}

/// Loads `recordings/<flow>.json`.
pub fn load(flow: &str) -> Recording {
    let path = dir().join(format!("{flow}.json"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("recording is JSON");
    let messages = v["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| Recorded {
            t_ms: m["t_ms"].as_u64().unwrap_or(0),
            channel: m["channel"].as_str().unwrap_or_default().into(),
            dir: m["dir"].as_str().unwrap_or_default().into(),
            data: m["data"].clone(),
        })
        .collect();
    Recording {
        flow: v["flow"].as_str().unwrap_or(flow).into(),
        messages,
    }
}

/// Differences in JSON shape: the same keys at every level and the same value types
/// (arrays compared by their first elements). Values themselves are not compared.
pub fn json_shape_diff(expected: &Value, actual: &Value, at: &str) -> Vec<String> {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if kind(expected) != kind(actual) {
        return vec![format!(
            "{at}: {} expected, got {}",
            kind(expected),
            kind(actual)
        )];
    }
    let mut out = vec![];
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for k in e.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{at}.{k}: missing"));
            }
            for k in a.keys().filter(|k| !e.contains_key(*k)) {
                out.push(format!("{at}.{k}: unexpected"));
            }
            for (k, ev) in e {
                if let Some(av) = a.get(k) {
                    out.extend(json_shape_diff(ev, av, &format!("{at}.{k}")));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if let (Some(e0), Some(a0)) = (e.first(), a.first()) {
                out.extend(json_shape_diff(e0, a0, &format!("{at}[0]")));
            }
        }
        _ => {}
    }
    out
}

/// Headers whose values do not depend on identifiers and must match exactly.
const FIXED_HEADERS: [&str; 10] = [
    "Server",
    "User-Agent",
    "Allow",
    "Supported",
    "Reason",
    "Content-Type",
    "Max-Forwards",
    "Session-Expires",
    "Min-SE",
    "Expires",
];

/// The `a=` attribute names of an SDP, per section, in order.
fn sdp_attr_names(sdp: &Sdp) -> Vec<Vec<String>> {
    let names = |attrs: &[String]| {
        attrs
            .iter()
            .map(|a| a.split([':', ' ']).next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    std::iter::once(names(&sdp.session_attrs))
        .chain(sdp.media.iter().map(|m| names(&m.attrs)))
        .collect()
}

/// Differences between two SDPs that matter to a peer: the attribute sequence, the
/// m-line protocols and payload types, the DTLS role and the candidate types.
pub fn sdp_shape_diff(expected: &str, actual: &str) -> Vec<String> {
    let (e, a) = match (Sdp::parse(expected), Sdp::parse(actual)) {
        (Ok(e), Ok(a)) => (e, a),
        (Ok(_), Err(err)) => return vec![format!("SDP does not parse: {err}")],
        _ => return vec![],
    };
    let mut out = vec![];
    if sdp_attr_names(&e) != sdp_attr_names(&a) {
        out.push(format!(
            "SDP attributes differ:\n  expected {:?}\n  actual   {:?}",
            sdp_attr_names(&e),
            sdp_attr_names(&a)
        ));
    }
    for (em, am) in e.media.iter().zip(&a.media) {
        if (em.media.as_str(), em.proto.as_str(), &em.formats)
            != (am.media.as_str(), am.proto.as_str(), &am.formats)
        {
            out.push(format!(
                "m-line: expected {} {} {:?}, got {} {} {:?}",
                em.media, em.proto, em.formats, am.media, am.proto, am.formats
            ));
        }
        for attr in ["setup", "mid"] {
            if em.attr(attr) != am.attr(attr) {
                out.push(format!(
                    "a={attr}: expected {:?}, got {:?}",
                    em.attr(attr),
                    am.attr(attr)
                ));
            }
        }
        let typ = |m: &super::sdp::MediaSection| -> Vec<String> {
            m.attrs
                .iter()
                .filter(|x| x.starts_with("candidate:"))
                .filter_map(|c| c.split(" typ ").nth(1))
                .map(|t| t.split(' ').next().unwrap_or_default().to_string())
                .collect()
        };
        if typ(em) != typ(am) {
            out.push(format!(
                "candidate types: expected {:?}, got {:?}",
                typ(em),
                typ(am)
            ));
        }
    }
    if e.media.len() != a.media.len() {
        out.push(format!(
            "{} m-lines expected, got {}",
            e.media.len(),
            a.media.len()
        ));
    }
    out
}

/// Differences in SIP shape: start line (exact status line; method for requests), the
/// set of header names, identifier-free header values, tag presence, digest challenge
/// parameters and the SDP shape.
pub fn sip_shape_diff(expected: &SipMessage, actual: &SipMessage) -> Vec<String> {
    let mut out = vec![];
    match (&expected.start, &actual.start) {
        (
            sip::StartLine::Response {
                code: ec,
                reason: er,
            },
            sip::StartLine::Response {
                code: ac,
                reason: ar,
            },
        ) if (ec, er) != (ac, ar) => out.push(format!("status: expected {ec} {er}, got {ac} {ar}")),
        (
            sip::StartLine::Request { method: em, .. },
            sip::StartLine::Request { method: am, .. },
        ) if em != am => out.push(format!("method: expected {em}, got {am}")),
        (e, a) if std::mem::discriminant(e) != std::mem::discriminant(a) => {
            out.push(format!("expected {e:?}, got {a:?}"))
        }
        _ => {}
    }
    let mut en: Vec<String> = expected
        .header_names()
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let mut an: Vec<String> = actual
        .header_names()
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    en.sort();
    an.sort();
    if en != an {
        out.push(format!("headers: expected {en:?}, got {an:?}"));
    }
    for h in FIXED_HEADERS {
        if expected.header(h) != actual.header(h) {
            out.push(format!(
                "{h}: expected {:?}, got {:?}",
                expected.header(h),
                actual.header(h)
            ));
        }
    }
    if expected.cseq().map(|c| c.1) != actual.cseq().map(|c| c.1) {
        out.push("CSeq method differs".into());
    }
    if expected.to_tag().is_some() != actual.to_tag().is_some() {
        out.push(format!(
            "To tag presence: expected {:?}, got {:?}",
            expected.header("To"),
            actual.header("To")
        ));
    }
    if let (Some(e), Some(a)) = (
        expected.header("WWW-Authenticate"),
        actual.header("WWW-Authenticate"),
    ) {
        let (ep, ap) = (
            super::digest::parse_params(e).unwrap_or_default(),
            super::digest::parse_params(a).unwrap_or_default(),
        );
        let keys = |p: &[(String, String)]| p.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        if keys(&ep) != keys(&ap) {
            out.push(format!(
                "challenge parameters: expected {:?}, got {:?}",
                keys(&ep),
                keys(&ap)
            ));
        }
        for k in ["realm", "algorithm", "qop"] {
            let get =
                |p: &[(String, String)]| p.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
            if get(&ep) != get(&ap) {
                out.push(format!(
                    "challenge {k}: expected {:?}, got {:?}",
                    get(&ep),
                    get(&ap)
                ));
            }
        }
    }
    if expected.body.is_empty() != actual.body.is_empty() {
        out.push("body presence differs".into());
    } else if !expected.body.is_empty() {
        out.extend(sdp_shape_diff(&expected.body, &actual.body));
    }
    out
}
