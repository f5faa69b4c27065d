//! SIP message text (RFC 3261): parsing and building, just what the stand-in and its
//! tests need. One WebSocket message carries exactly one SIP message (RFC 7118 §5.1).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// One SIP message. Header names keep their spelling; lookups ignore case and accept
/// the compact forms (`i`, `f`, `t`, `v`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    pub start: StartLine,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Compact header forms (RFC 3261 §7.3.3) → full names.
fn full_name(name: &str) -> &str {
    match name.to_ascii_lowercase().as_str() {
        "i" => "Call-ID",
        "f" => "From",
        "t" => "To",
        "v" => "Via",
        "m" => "Contact",
        "l" => "Content-Length",
        "c" => "Content-Type",
        "k" => "Supported",
        _ => name,
    }
}

impl SipMessage {
    /// Parses one message. Errors describe what is wrong (the stand-in logs them: a real
    /// Asterisk silently drops what pjsip cannot parse).
    pub fn parse(text: &str) -> Result<SipMessage, String> {
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i], &text[i + 4..]),
            None => return Err("no empty line after the headers".into()),
        };
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or_default();
        let start = if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            let code: u16 = code
                .parse()
                .map_err(|_| format!("bad status line {first:?}"))?;
            if !(100..700).contains(&code) {
                return Err(format!("bad status code {code}"));
            }
            StartLine::Response {
                code,
                reason: reason.to_string(),
            }
        } else {
            let mut parts = first.split(' ');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(m), Some(u), Some("SIP/2.0"), None)
                    if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) =>
                {
                    StartLine::Request {
                        method: m.to_string(),
                        uri: u.to_string(),
                    }
                }
                _ => return Err(format!("bad start line {first:?}")),
            }
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // Header folding: continuation of the previous value.
                let last = headers.last_mut().ok_or("continuation line first")?;
                last.1.push(' ');
                last.1.push_str(line.trim());
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("header line without a colon: {line:?}"))?;
            let name = name.trim();
            if name.is_empty() || name.contains(' ') {
                return Err(format!("bad header name in {line:?}"));
            }
            headers.push((full_name(name).to_string(), value.trim().to_string()));
        }
        let mut msg = SipMessage {
            start,
            headers,
            body: body.to_string(),
        };
        for required in ["Via", "From", "To", "Call-ID", "CSeq"] {
            if msg.header(required).is_none() {
                return Err(format!("missing {required}"));
            }
        }
        if msg.cseq().is_none() {
            return Err("bad CSeq".into());
        }
        if let Some(len) = msg.header("Content-Length") {
            let len: usize = len.parse().map_err(|_| "bad Content-Length")?;
            if len > msg.body.len() {
                return Err(format!(
                    "Content-Length {len} but {} body bytes",
                    msg.body.len()
                ));
            }
            msg.body.truncate(len);
        }
        Ok(msg)
    }

    /// A request with the given headers (in order) and body; Content-Length is appended.
    pub fn request(method: &str, uri: &str, headers: Vec<(String, String)>, body: &str) -> Self {
        SipMessage {
            start: StartLine::Request {
                method: method.into(),
                uri: uri.into(),
            },
            headers,
            body: body.into(),
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, or for a response the method of its CSeq.
    pub fn method(&self) -> String {
        match &self.start {
            StartLine::Request { method, .. } => method.clone(),
            StartLine::Response { .. } => self.cseq().map(|c| c.1).unwrap_or_default(),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            _ => None,
        }
    }

    /// The first header called `name` (case-insensitive, compact forms accepted).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = full_name(name);
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of `name`, in order (Via may repeat).
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let name = full_name(name);
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The header names in order, for shape comparisons.
    pub fn header_names(&self) -> Vec<String> {
        self.headers.iter().map(|(k, _)| k.clone()).collect()
    }

    pub fn call_id(&self) -> &str {
        self.header("Call-ID").unwrap_or_default()
    }

    /// (sequence number, method).
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("CSeq")?;
        let (n, m) = v.split_once(' ')?;
        Some((n.trim().parse().ok()?, m.trim().to_string()))
    }

    /// The `branch` of the top Via.
    pub fn branch(&self) -> String {
        self.header("Via")
            .and_then(|v| param(v, "branch"))
            .unwrap_or_default()
    }

    pub fn from_tag(&self) -> Option<String> {
        self.header("From").and_then(|v| param(v, "tag"))
    }

    pub fn to_tag(&self) -> Option<String> {
        self.header("To").and_then(|v| param(v, "tag"))
    }

    /// Replaces the value of the first header called `name`, or appends it.
    pub fn set_header(&mut self, name: &str, value: String) {
        match self
            .headers
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(h) => h.1 = value,
            None => self.headers.push((name.to_string(), value)),
        }
    }

    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

impl fmt::Display for SipMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.start {
            StartLine::Request { method, uri } => write!(f, "{method} {uri} SIP/2.0\r\n")?,
            StartLine::Response { code, reason } => write!(f, "SIP/2.0 {code} {reason}\r\n")?,
        }
        for (k, v) in &self.headers {
            write!(f, "{k}: {v}\r\n")?;
        }
        write!(f, "\r\n{}", self.body)
    }
}

/// A `;name=value` parameter of a header value (outside any `<...>`), unquoted.
pub fn param(value: &str, name: &str) -> Option<String> {
    let after_uri = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    after_uri.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Appends `;tag=...` to a From/To value that has none.
pub fn with_tag(value: &str, tag: &str) -> String {
    if param(value, "tag").is_some() {
        value.to_string()
    } else {
        format!("{value};tag={tag}")
    }
}

/// The URI inside a name-addr (`"x" <sip:a@b>;tag=1` → `sip:a@b`), or the bare URI.
pub fn addr_uri(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

/// The user part of a SIP URI (`sip:600@127.0.0.1` → `600`).
pub fn uri_user(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    rest.split_once('@').map(|(u, _)| u)
}

/// Asterisk (pjsip) pads `Content-Length` (`Content-Length:  0`, `Content-Length:   918`);
/// reproduced so that clients are tested against the real spacing.
pub fn asterisk_content_length(len: usize) -> String {
    if len == 0 {
        " 0".into()
    } else {
        format!("  {len}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bK1;rport\r\nFrom: <sip:icegate@127.0.0.1>;tag=abc\r\nTo: <sip:icegate@127.0.0.1>\r\ni: cid1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn parses_and_prints() {
        let m = SipMessage::parse(REG).unwrap();
        assert_eq!(m.method(), "REGISTER");
        assert_eq!(m.call_id(), "cid1");
        assert_eq!(m.branch(), "z9hG4bK1");
        assert_eq!(m.from_tag().as_deref(), Some("abc"));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.cseq(), Some((1, "REGISTER".into())));
        let again = SipMessage::parse(&m.to_string()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn rejects_garbage() {
        assert!(SipMessage::parse("hello").is_err());
        assert!(SipMessage::parse("FOO bar\r\n\r\n").is_err());
        assert!(SipMessage::parse(&REG.replace("CSeq: 1 REGISTER\r\n", "")).is_err());
        assert!(SipMessage::parse(&REG.replace("Content-Length: 0", "Content-Length: 9")).is_err());
    }

    #[test]
    fn uri_helpers() {
        assert_eq!(addr_uri("\"R\" <sip:100@vm>;tag=1"), "sip:100@vm");
        assert_eq!(uri_user("sip:600@127.0.0.1"), Some("600"));
        assert_eq!(
            param("<sip:a@b;transport=ws>;expires=600", "expires").as_deref(),
            Some("600")
        );
        assert_eq!(param("<sip:a@b;transport=ws>", "transport"), None);
    }
}
