//! The registration binding (RFC 3261 §10): one Call-ID and CSeq space for every REGISTER of
//! this UA, the granted expiry, and when to refresh it.

use std::time::{Duration, Instant};

use crate::sip::builder::Local;
use crate::sip::header::{split_list, NameAddr};
use crate::sip::message::Message;
use crate::sip::method::Method;

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
    /// How long to wait before the next retry of a failed REGISTER; doubles with each
    /// failure up to [`RETRY_MAX`], back to [`RETRY_FIRST`] after a success.
    retry_delay: Duration,
}

/// The first retry of a failed REGISTER: Asterisk that is still loading drops requests, and is
/// usually ready within a second or two.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between REGISTER retries on an open connection.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

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
            retry_delay: RETRY_FIRST,
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
        self.retry_delay = RETRY_FIRST;
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

    /// The connection is gone: no binding, no refresh (a new connection registers anew).
    pub fn on_failure(&mut self) {
        self.in_flight = None;
        self.registered = false;
        self.refresh_at = None;
    }

    /// The REGISTER was refused or timed out on a connection that stays open: no binding,
    /// and the same REGISTER again after a backoff, so that a registrar that was briefly
    /// unable to answer (still starting, overloaded, reconfigured) gets us back without
    /// waiting for the connection to drop. An unregistration is not retried.
    pub fn on_rejected(&mut self, now: Instant) {
        self.on_failure();
        if self.expires > 0 {
            self.refresh_at = Some(now + self.retry_delay);
            self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
        }
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
            via_transport: "WS",
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

    #[test]
    fn a_refused_register_is_retried_with_backoff_until_one_succeeds() {
        let local = Local {
            via_host: "h.invalid".into(),
            via_transport: "WS",
            contact: "sip:icegate@h.invalid;transport=ws".into(),
            user_agent: "t".into(),
        };
        let mut reg = Registration::new("c".into(), "f".into());
        let now = Instant::now();
        let mut waits = vec![];
        for i in 0..9 {
            let req = reg.request(&local, "sip:icegate@pbx", "sip:pbx", 600, &format!("b{i}"));
            reg.on_rejected(now);
            assert!(!reg.registered && reg.in_flight.is_none());
            waits.push(reg.refresh_at.expect("a retry") - now);
            assert_eq!(req.cseq().map(|c| c.0), Some(i + 1));
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);

        // A success resets the backoff.
        let req = reg.request(&local, "sip:icegate@pbx", "sip:pbx", 600, "ok");
        let mut ok = crate::sip::builder::response(&req, 200, Some("t"));
        ok.push("Expires", "600");
        reg.on_success(&ok, &local.contact, now);
        reg.request(&local, "sip:icegate@pbx", "sip:pbx", 600, "again");
        reg.on_rejected(now);
        assert_eq!(reg.refresh_at, Some(now + RETRY_FIRST));

        // An unregistration that fails is not retried, and a lost connection retries nothing.
        reg.request(&local, "sip:icegate@pbx", "sip:pbx", 0, "unreg");
        reg.on_rejected(now);
        assert_eq!(reg.refresh_at, None);
        reg.request(&local, "sip:icegate@pbx", "sip:pbx", 600, "lost");
        reg.on_failure();
        assert_eq!(reg.refresh_at, None);
    }
}
