//! A dialog (RFC 3261 §12): the Call-ID, tags, CSeq spaces, remote target and route set that
//! in-dialog requests (ACK for 2xx, BYE, re-INVITE) are built from.
//!
//! The remote target only fills the Request-URI: every request still goes over the one
//! WebSocket (RFC 7118 §5), whatever host Asterisk's Contact names (`asterisk@vm:5060`).

use crate::sip::builder::Local;
use crate::sip::header::{split_list, NameAddr};
use crate::sip::message::Message;
use crate::sip::method::Method;

/// One confirmed (or, for the UAS, about to be confirmed) dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// The Call-ID.
    pub call_id: String,
    /// Our From (UAC) or To (UAS), with our tag.
    pub local: NameAddr,
    /// Their party, with their tag.
    pub remote: NameAddr,
    /// The CSeq of our last request in this dialog.
    pub local_seq: u32,
    /// The CSeq of their last request, once they sent one.
    pub remote_seq: Option<u32>,
    /// Their Contact URI: the Request-URI of our in-dialog requests.
    pub remote_target: String,
    /// Route header values for our requests, in order.
    pub route_set: Vec<String>,
}

impl Dialog {
    /// The dialog a 2xx (or tagged 1xx) to our INVITE creates (RFC 3261 §12.1.2).
    pub fn as_uac(invite: &Message, response: &Message) -> Option<Dialog> {
        let remote = NameAddr::parse(response.header("To")?)?;
        remote.tag()?;
        let mut route_set = record_routes(response);
        route_set.reverse();
        Some(Dialog {
            call_id: invite.call_id().to_owned(),
            local: NameAddr::parse(invite.header("From")?)?,
            remote,
            local_seq: invite.cseq()?.0,
            remote_seq: None,
            remote_target: contact_uri(response)?,
            route_set,
        })
    }

    /// The dialog our answer to an INVITE creates (RFC 3261 §12.1.1); `local_tag` goes in To.
    pub fn as_uas(invite: &Message, local_tag: &str) -> Option<Dialog> {
        let remote = NameAddr::parse(invite.header("From")?)?;
        remote.tag()?;
        Some(Dialog {
            call_id: invite.call_id().to_owned(),
            local: NameAddr::parse(invite.header("To")?)?.with_tag(local_tag),
            remote,
            // Any start works (§12.1.1); 1 makes our first BYE CSeq 2, as the recorded client's.
            local_seq: 1,
            remote_seq: Some(invite.cseq()?.0),
            remote_target: contact_uri(invite)?,
            route_set: record_routes(invite),
        })
    }

    /// Whether `request` from the remote party belongs to this dialog (§12.2.2).
    pub fn matches_request(&self, request: &Message) -> bool {
        let tags = |name| request.header(name).and_then(NameAddr::parse);
        request.call_id() == self.call_id
            && tags("From").is_some_and(|f| f.tag() == self.remote.tag())
            && tags("To").is_some_and(|t| t.tag() == self.local.tag())
    }

    /// Whether `response` to one of our requests belongs to this dialog.
    pub fn matches_response(&self, response: &Message) -> bool {
        let tags = |name| response.header(name).and_then(NameAddr::parse);
        response.call_id() == self.call_id
            && tags("From").is_some_and(|f| f.tag() == self.local.tag())
            && tags("To").is_some_and(|t| t.tag() == self.remote.tag())
    }

    /// A new in-dialog request with the next CSeq (§12.2.1.1); ACK uses [`Dialog::ack`].
    pub fn request(&mut self, local: &Local, method: Method, branch: &str) -> Message {
        self.local_seq = self.local_seq.saturating_add(1);
        self.build(local, method, branch, self.local_seq)
    }

    /// The ACK for a 2xx: a request of its own, with the INVITE's CSeq number (§13.2.2.4).
    pub fn ack(&self, local: &Local, invite_seq: u32, branch: &str) -> Message {
        self.build(local, Method::Ack, branch, invite_seq)
    }

    fn build(&self, local: &Local, method: Method, branch: &str, seq: u32) -> Message {
        let mut m = local.request(
            method,
            &self.remote_target,
            branch,
            &self.local,
            &self.remote,
            &self.call_id,
            seq,
        );
        for route in &self.route_set {
            m.push("Route", route.clone());
        }
        m
    }
}

/// All Record-Route entries in order, however they are split over header lines.
fn record_routes(message: &Message) -> Vec<String> {
    message
        .headers_named("Record-Route")
        .flat_map(split_list)
        .map(str::to_owned)
        .collect()
}

fn contact_uri(message: &Message) -> Option<String> {
    let first = split_list(message.header("Contact")?).into_iter().next()?;
    Some(NameAddr::parse(first)?.uri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::builder::response;

    fn local() -> Local {
        Local {
            via_host: "h.invalid".into(),
            via_transport: "WS",
            contact: "sip:icegate@h.invalid;transport=ws".into(),
            user_agent: "t".into(),
        }
    }

    fn incoming_invite() -> Message {
        let text = "INVITE sip:icegate@127.0.0.1:48126;transport=WS SIP/2.0\r\n\
            Via: SIP/2.0/WS 127.0.0.1:8088;rport;branch=z9hG4bKPj1;alias\r\n\
            Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\n\
            Record-Route: <sip:p3;lr>\r\n\
            From: \"Reception\" <sip:100@vm>;tag=r1\r\n\
            To: <sip:icegate@127.0.0.1>\r\n\
            Contact: <sip:asterisk@vm:5060;transport=ws>\r\n\
            Call-ID: c1\r\n\
            CSeq: 15996 INVITE\r\n\
            Content-Length: 0\r\n\r\n";
        Message::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn uas_dialog_routes_in_order_and_bye_goes_to_the_contact() {
        let invite = incoming_invite();
        let mut d = Dialog::as_uas(&invite, "l1").unwrap();
        assert_eq!(d.route_set, ["<sip:p1;lr>", "<sip:p2;lr>", "<sip:p3;lr>"]);
        assert_eq!(d.remote_seq, Some(15996));
        let bye = d.request(&local(), Method::Bye, "z9hG4bKb");
        assert_eq!(bye.request_uri(), Some("sip:asterisk@vm:5060;transport=ws"));
        assert_eq!(bye.header("From"), Some("<sip:icegate@127.0.0.1>;tag=l1"));
        assert_eq!(bye.header("To"), Some("\"Reception\" <sip:100@vm>;tag=r1"));
        assert_eq!(bye.cseq(), Some((2, Method::Bye)));
        assert_eq!(bye.headers_named("Route").count(), 3);

        let mut theirs = response(&invite, 200, Some("l1"));
        theirs.start = crate::sip::message::StartLine::Request {
            method: Method::Bye,
            uri: "sip:x".into(),
        };
        theirs.set("CSeq", "15997 BYE");
        assert!(d.matches_request(&theirs));
        theirs.set("From", "<sip:100@vm>;tag=other");
        assert!(!d.matches_request(&theirs));
    }

    #[test]
    fn uac_dialog_reverses_the_route_set() {
        let mut invite = incoming_invite();
        invite.remove("Record-Route");
        let mut ok = response(&invite, 200, Some("t9"));
        ok.push("Record-Route", "<sip:p1;lr>, <sip:p2;lr>");
        ok.push("Contact", "<sip:127.0.0.1:8088;transport=ws>");
        let d = Dialog::as_uac(&invite, &ok).unwrap();
        assert_eq!(d.route_set, ["<sip:p2;lr>", "<sip:p1;lr>"]);
        assert_eq!(d.remote_target, "sip:127.0.0.1:8088;transport=ws");
        assert!(d.matches_response(&ok));
        let ack = d.ack(&local(), 15996, "z9hG4bKa");
        assert_eq!(ack.cseq(), Some((15996, Method::Ack)));
        ok.remove("Contact");
        assert_eq!(Dialog::as_uac(&invite, &ok), None, "a 2xx without Contact");
    }
}
