//! Building the UA's own requests and responses: the headers every message carries, in the
//! order the recorded client wrote them (Via, Max-Forwards, From, To, Call-ID, CSeq, ...).

use crate::sip::header::NameAddr;
use crate::sip::message::Message;
use crate::sip::method::Method;

/// RFC 3261 §8.1.1.6.
const MAX_FORWARDS: &str = "70";
/// The methods the UA answers; sent in Allow on INVITEs, 2xx and 405 (RFC 3261 §20.5).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO";
/// RFC 3261 §8.1.1.7: branches start with this magic cookie.
pub const BRANCH_COOKIE: &str = "z9hG4bK";

/// Who the UA is on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// The host in our Via: a random `.invalid` name, as RFC 7118 §5.2 allows.
    pub via_host: String,
    /// Our Contact URI (`sip:user@host.invalid;transport=ws`; `ws` also over TLS, RFC 7118
    /// §5.2).
    pub contact: String,
    /// The Via transport: `WS`, or `WSS` over TLS (RFC 7118 §5.2).
    pub via_transport: &'static str,
    /// The User-Agent value.
    pub user_agent: String,
}

impl Local {
    /// A request outside or inside a dialog with the headers every request carries.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        method: Method,
        uri: &str,
        branch: &str,
        from: &NameAddr,
        to: &NameAddr,
        call_id: &str,
        cseq: u32,
    ) -> Message {
        let cseq_method = method.to_string();
        let mut m = Message::request(method, uri);
        m.push(
            "Via",
            format!(
                "SIP/2.0/{} {};branch={branch};rport",
                self.via_transport, self.via_host
            ),
        );
        m.push("Max-Forwards", MAX_FORWARDS);
        m.push("From", from.to_string());
        m.push("To", to.to_string());
        m.push("Call-ID", call_id);
        m.push("CSeq", format!("{cseq} {cseq_method}"));
        m
    }

    /// `<contact>`, the Contact header value.
    pub fn contact_header(&self) -> String {
        format!("<{}>", self.contact)
    }
}

/// A response to `request` (RFC 3261 §8.2.6.2): Via, From, To, Call-ID and CSeq copied, the
/// To tag added when the request had none and `to_tag` is given.
pub fn response(request: &Message, code: u16, to_tag: Option<&str>) -> Message {
    let mut m = Message::response(code, reason_phrase(code));
    for via in request.headers_named("Via") {
        m.push("Via", via);
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        let value = request.header(name).unwrap_or_default();
        let value = match (name, to_tag, NameAddr::parse(value)) {
            ("To", Some(tag), Some(to)) if to.tag().is_none() => to.with_tag(tag).to_string(),
            _ => value.to_owned(),
        };
        m.push(name, value);
    }
    m
}

/// The ACK for a non-2xx final response (RFC 3261 §17.1.1.3): same branch and Request-URI as
/// the INVITE, To from the response, CSeq number of the INVITE, its Route headers.
pub fn ack_for_failure(invite: &Message, response: &Message) -> Message {
    let uri = invite.request_uri().unwrap_or_default().to_owned();
    let number = invite.cseq().map(|(n, _)| n).unwrap_or_default();
    let mut m = Message::request(Method::Ack, uri);
    for (name, value) in &invite.headers {
        match name.as_str() {
            "Via" | "Max-Forwards" | "From" | "Call-ID" | "Route" => m.push(name, value.clone()),
            "To" => m.push("To", response.header("To").unwrap_or(value)),
            "CSeq" => m.push("CSeq", format!("{number} ACK")),
            "User-Agent" => m.push(name, value.clone()),
            _ => {}
        }
    }
    m
}

/// The CANCEL for an INVITE (RFC 3261 §9.1): the INVITE's Request-URI, top Via, From, To,
/// Call-ID, CSeq number and Route headers.
pub fn cancel_for(invite: &Message) -> Message {
    let uri = invite.request_uri().unwrap_or_default().to_owned();
    let number = invite.cseq().map(|(n, _)| n).unwrap_or_default();
    let mut m = Message::request(Method::Cancel, uri);
    for (name, value) in &invite.headers {
        match name.as_str() {
            "Via" | "Max-Forwards" | "From" | "To" | "Call-ID" | "Route" | "User-Agent" => {
                m.push(name, value.clone())
            }
            "CSeq" => m.push("CSeq", format!("{number} CANCEL")),
            _ => {}
        }
    }
    m
}

/// The standard reason phrase of `code` (RFC 3261 §21).
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Message {
        let local = Local {
            via_host: "h.invalid".into(),
            via_transport: "WS",
            contact: "sip:icegate@h.invalid;transport=ws".into(),
            user_agent: "test".into(),
        };
        let from = NameAddr::new("sip:icegate@pbx").with_tag("f");
        let mut m = local.request(
            Method::Invite,
            "sip:600@pbx",
            "z9hG4bK1",
            &from,
            &NameAddr::new("sip:600@pbx"),
            "cid",
            2,
        );
        m.push("Route", "<sip:proxy;lr>");
        m.push("Contact", local.contact_header());
        m.set_body("application/sdp", "v=0\r\n");
        m
    }

    #[test]
    fn response_copies_and_tags() {
        let r = response(&invite(), 180, Some("t1"));
        assert_eq!(r.code(), Some(180));
        assert_eq!(r.header("To"), Some("<sip:600@pbx>;tag=t1"));
        assert_eq!(r.top_branch(), Some("z9hG4bK1"));
        assert_eq!(r.header("CSeq"), Some("2 INVITE"));
        assert!(Message::parse(r.encode().as_bytes()).is_ok());
    }

    #[test]
    fn ack_and_cancel_keep_the_invite_branch() {
        let inv = invite();
        let resp = response(&inv, 487, Some("t2"));
        let ack = ack_for_failure(&inv, &resp);
        assert_eq!(ack.top_branch(), Some("z9hG4bK1"));
        assert_eq!(ack.header("To"), Some("<sip:600@pbx>;tag=t2"));
        assert_eq!(ack.header("CSeq"), Some("2 ACK"));
        assert_eq!(ack.header("Route"), Some("<sip:proxy;lr>"));
        assert!(ack.body.is_empty() && ack.header("Contact").is_none());
        let cancel = cancel_for(&inv);
        assert_eq!(cancel.top_branch(), Some("z9hG4bK1"));
        assert_eq!(cancel.header("To"), Some("<sip:600@pbx>"));
        assert_eq!(cancel.header("CSeq"), Some("2 CANCEL"));
        assert!(Message::parse(cancel.encode().as_bytes()).is_ok());
    }
}
