//! The structured header values the UA reads: name-addr (From, To, Contact, Route), Via
//! branch, CSeq, comma-separated lists. Everything else stays text.

use std::fmt;

use crate::sip::method::Method;

/// `[display] <uri>;params` or `uri;params` (RFC 3261 §20.10, §25.1 name-addr / addr-spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name as written, quotes included (`"Reception"`), if any.
    pub display: Option<String>,
    /// The URI without angle brackets.
    pub uri: String,
    /// Header parameters (after the `>`), e.g. `tag`, `expires`, `lr` for bare Route URIs.
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    /// A bare URI with no display name or parameters.
    pub fn new(uri: impl Into<String>) -> NameAddr {
        NameAddr {
            display: None,
            uri: uri.into(),
            params: Vec::new(),
        }
    }

    /// Parse one name-addr; `None` if it is not one.
    pub fn parse(value: &str) -> Option<NameAddr> {
        let value = value.trim();
        if let Some(open) = find_unquoted(value, b'<') {
            let display = value[..open].trim();
            let close = value[open..].find('>')? + open;
            let uri = value[open + 1..close].trim();
            if uri.is_empty() {
                return None;
            }
            return Some(NameAddr {
                display: (!display.is_empty()).then(|| display.to_owned()),
                uri: uri.to_owned(),
                params: parse_params(&value[close + 1..])?,
            });
        }
        // addr-spec form: the parameters after the URI belong to the header (§20.10).
        let (uri, params) = value.split_at(value.find(';').unwrap_or(value.len()));
        // LWS may come before the `;` (RFC 4475 wsinv: `To: sip:v@h ;   tag = 1`).
        let uri = uri.trim_end();
        // No whitespace, quote or `>` in a bare URI (RFC 3261 §25.1 allows none of them
        // unescaped), so that `Display`, which brackets it, reads back as the same URI.
        if uri.is_empty()
            || !uri.contains(':')
            || uri.contains(|c: char| c.is_whitespace() || c == '"' || c == '>')
        {
            return None;
        }
        Some(NameAddr {
            display: None,
            uri: uri.to_owned(),
            params: parse_params(params)?,
        })
    }

    /// The value of parameter `name`; `Some(None)` for a flag parameter.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    /// This name-addr with `tag` set to `tag`.
    pub fn with_tag(mut self, tag: &str) -> NameAddr {
        self.params.retain(|(n, _)| !n.eq_ignore_ascii_case("tag"));
        self.params.push(("tag".to_owned(), Some(tag.to_owned())));
        self
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(display) = &self.display {
            write!(f, "{display} ")?;
        }
        write!(f, "<{}>", self.uri)?;
        for (name, value) in &self.params {
            match value {
                Some(value) => write!(f, ";{name}={value}")?,
                None => write!(f, ";{name}")?,
            }
        }
        Ok(())
    }
}

/// `;a=b;c` → `[(a, Some(b)), (c, None)]`; `None` on an empty parameter name.
fn parse_params(text: &str) -> Option<Vec<(String, Option<String>)>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    let text = text.strip_prefix(';')?;
    text.split(';')
        .map(|param| {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().to_owned())),
                None => (param.trim(), None),
            };
            (!name.is_empty()).then(|| (name.to_owned(), value))
        })
        .collect()
}

/// The `branch` of one Via value; `None` without one.
pub fn via_branch(via: &str) -> Option<&str> {
    // A Via header line may hold several values; the first is the topmost.
    let first = split_list(via).into_iter().next()?;
    let params = first.split_once(';')?.1;
    params.split(';').find_map(|p| {
        let (name, value) = p.split_once('=')?;
        let value = value.trim();
        (name.trim().eq_ignore_ascii_case("branch") && !value.is_empty()).then_some(value)
    })
}

/// `CSeq: 2 INVITE` → `(2, Invite)`; RFC 3261 §8.1.1.5 limits the number to 2**31.
pub fn parse_cseq(value: &str) -> Option<(u32, Method)> {
    let mut parts = value.split_whitespace();
    let number: u32 = parts.next()?.parse().ok()?;
    let method = Method::parse(parts.next()?)?;
    (parts.next().is_none() && number < 1 << 31).then_some((number, method))
}

/// Split a comma-separated header value, leaving commas inside quotes and `<>` alone.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut quoted, mut angled, mut escaped, mut start) = (false, false, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angled = true,
            '>' if !quoted => angled = false,
            ',' if !quoted && !angled => {
                items.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(value[start..].trim());
    items.retain(|item| !item.is_empty());
    items
}

/// The index of `byte` outside a quoted string.
fn find_unquoted(text: &str, byte: u8) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, b) in text.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == byte && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_forms() {
        let a = NameAddr::parse(r#""Recep, <tion>" <sip:100@vm>;tag=e18e"#).unwrap();
        assert_eq!(a.display.as_deref(), Some(r#""Recep, <tion>""#));
        assert_eq!(a.uri, "sip:100@vm");
        assert_eq!(a.tag(), Some("e18e"));
        assert_eq!(NameAddr::parse(&a.to_string()), Some(a));

        let b = NameAddr::parse("sip:icegate@h;transport=ws;expires=60").unwrap();
        assert_eq!(b.uri, "sip:icegate@h");
        assert_eq!(b.param("expires"), Some(Some("60")));
        assert_eq!(b.param("transport"), Some(Some("ws")));

        let w = NameAddr::parse("sip:v@h.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(
            (w.uri.as_str(), w.tag()),
            ("sip:v@h.example.com", Some("1918181833n"))
        );

        let c = NameAddr::parse("<sip:p;lr>").unwrap().with_tag("x");
        assert_eq!(c.to_string(), "<sip:p;lr>;tag=x");
        assert_eq!(
            c.param("lr"),
            None,
            "uri parameters are not header parameters"
        );

        // Found by the `sip_message` fuzz target: a bare URI with `>` in it was accepted and
        // printed as `<sip:601@h>>`, which reads back differently. Whitespace inside a bare URI
        // is refused for the same reason (whitespace before its `;` is trimmed, see above).
        for bad in [
            "",
            "<>",
            "no uri here",
            "<sip:a",
            "<sip:a>;=1",
            "sip:601@h>;tag=1",
            "sip:a\tb;x",
        ] {
            assert_eq!(NameAddr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn via_and_cseq() {
        let via = "SIP/2.0/WS 127.0.0.1:8088;rport;branch=z9hG4bKPj4d;alias, SIP/2.0/WS x;branch=z9hG4bK2";
        assert_eq!(via_branch(via), Some("z9hG4bKPj4d"));
        assert_eq!(via_branch("SIP/2.0/WS h;rport"), None);
        assert_eq!(parse_cseq("15996 INVITE"), Some((15996, Method::Invite)));
        assert_eq!(parse_cseq("2147483648 BYE"), None);
        assert_eq!(parse_cseq("1 BYE x"), None);
        assert_eq!(parse_cseq("x BYE"), None);
    }

    #[test]
    fn list_split_respects_quotes_and_brackets() {
        assert_eq!(
            split_list(r#"<sip:a;x=1,2>, "b,c" <sip:b>,<sip:c>"#),
            vec!["<sip:a;x=1,2>", r#""b,c" <sip:b>"#, "<sip:c>"]
        );
        assert!(split_list(" , ").is_empty());
    }
}
