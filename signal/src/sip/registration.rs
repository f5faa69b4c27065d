//! The registration binding (RFC 3261 §10): one Call-ID and CSeq space for every REGISTER of
//! this UA, the granted expiry, and when to refresh it.

use std::time::{Duration, Instant};

use crate::sip::builder::Local;
use crate::sip::header::{split_list, NameAddr};
use crate::sip::message::{Message, Method};

/// The REGISTER side of the UA.
#[derive(Debug)]
pub struct Registration {
    /// Call-ID of every REGISTER (§10.2: the same for all registrations of one UA).
    pub call_id: String,
    /// Our From tag.
    pub from_tag: String,
    /// CSeq of the last REGISTER sent.
    pub cseq: u32,
    /// The expiry asked for last; refreshes ask for it again.
    pub expires: u32,
    /// Branch of the REGISTER in flight.
    pub in_flight: Option<String>,
    /// An expiry asked for while a REGISTER was in flight; sent when it completes.
    pub queued: Option<u32>,
    /// When to send the refreshing REGISTER.
    pub refresh_at: Option<Instant>,
    /// Whether the binding is in place.
    pub registered: bool,
}

impl Registration {
    /// A binding not yet registered.
    pub fn new(call_id: String, from_tag: String) -> Registration {
        Registration {
            call_id,
            from_tag,
            cseq: 0,
            expires: 0,
            in_flight: None,
            queued: None,
            refresh_at: None,
            registered: false,
        }
    }

    /// The next REGISTER for `aor` (`sip:user@domain`) at `registrar` (`sip:domain`).
    pub fn request(
        &mut self,
        local: &Local,
        aor: &str,
        registrar: &str,
        expires: u32,
        branch: &str,
    ) -> Message {
        self.cseq = self.cseq.saturating_add(1);
        self.expires = expires;
        self.in_flight = Some(branch.to_owned());
        let from = NameAddr::new(aor).with_tag(&self.from_tag);
        let mut m = local.request(
            Method::Register,
            registrar,
            branch,
            &from,
            &NameAddr::new(aor),
            &self.call_id,
            self.cseq,
        );
        m.push(
            "Contact",
            format!("{};expires={expires}", local.contact_header()),
        );
        m.push("User-Agent", local.user_agent.clone());
        if expires == 0 {
            m.push("Expires", "0");
        }
        m
    }

    /// A 2xx arrived: the expiry the registrar granted, and the refresh timer set from it.
    pub fn on_success(&mut self, response: &Message, contact: &str, now: Instant) -> u32 {
        self.in_flight = None;
        let granted = granted_expires(response, contact).unwrap_or(self.expires);
        self.registered = granted > 0 && self.expires > 0;
        self.refresh_at = self.registered.then(|| {
            // Refresh at 90% of the granted time so the binding never lapses on a slow reply.
            let secs = (u64::from(granted) * 9 / 10).max(1);
            now + Duration::from_secs(secs)
        });
        if self.registered {
            granted
        } else {
            0
        }
    }

    /// The REGISTER failed or timed out: no binding, no refresh.
    pub fn on_failure(&mut self) {
        self.in_flight = None;
        self.registered = false;
        self.refresh_at = None;
    }
}

/// The `expires` of our entry in the 2xx's Contact list, else its Expires header (§10.2.4).
fn granted_expires(response: &Message, contact: &str) -> Option<u32> {
    let ours = response
        .headers_named("Contact")
        .flat_map(split_list)
        .filter_map(NameAddr::parse)
        .find(|c| c.uri.eq_ignore_ascii_case(contact));
    if let Some(expires) = ours.as_ref().and_then(|c| c.param("expires").flatten()) {
        return expires.parse().ok();
    }
    response.header("Expires")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_expiry_prefers_our_contact_and_sets_the_refresh() {
        let local = Local {
            via_host: "h.invalid".into(),
            contact: "sip:icegate@h.invalid;transport=ws".into(),
            user_agent: "t".into(),
        };
        let mut reg = Registration::new("c".into(), "f".into());
        let req = reg.request(&local, "sip:icegate@pbx", "sip:pbx", 600, "z9hG4bK1");
        assert_eq!(req.cseq(), Some((1, Method::Register)));
        assert_eq!(
            req.header("Contact"),
            Some("<sip:icegate@h.invalid;transport=ws>;expires=600")
        );
        let mut ok = crate::sip::builder::response(&req, 200, Some("t"));
        ok.push(
            "Contact",
            "<sip:other@x>;expires=10, <sip:icegate@h.invalid;transport=WS>;expires=599",
        );
        ok.push("Expires", "3600");
        let now = Instant::now();
        assert_eq!(reg.on_success(&ok, &local.contact, now), 599);
        assert_eq!(reg.refresh_at, Some(now + Duration::from_secs(539)));
        assert!(reg.registered && reg.in_flight.is_none());

        ok.remove("Contact");
        assert_eq!(granted_expires(&ok, &local.contact), Some(3600));
        let unreg = reg.request(&local, "sip:icegate@pbx", "sip:pbx", 0, "z9hG4bK2");
        assert_eq!(unreg.header("Expires"), Some("0"));
        assert_eq!(reg.on_success(&ok, &local.contact, now), 0);
        assert!(!reg.registered && reg.refresh_at.is_none());
    }
}
