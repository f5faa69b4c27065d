//! 300 (Try Alternate) with ALTERNATE-SERVER (RFC 8489 §10; coturn's `alternate-server`):
//! Allocates sent on to other relays, round-robin, to move load off this one.
//!
//! Only authenticated requests are redirected, and the answer is signed: RFC 8489 §10 has
//! clients ignore an unauthenticated 300, since anyone could forge one to send them elsewhere.

use std::net::SocketAddr;

use stun_types::attribute::{AlternateServer, ErrorCode};
use stun_types::message::{Message, MessageWriteExt, MessageWriteVec};

use super::authenticate::Authed;
use super::replies::push_error;
use super::Server;
use crate::config::RedirectWhen;
use crate::metrics::MethodLabel;
use crate::transport::FiveTuple;

/// Why an Allocate is being looked at for a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// Any Allocate, before it is carried out.
    Arrived,
    /// One this relay cannot take: total quota reached, or draining.
    Full,
}

impl Server {
    /// Answers `msg` with 300 and the next alternate for the client's transport and family,
    /// if the configuration redirects for `reason`; whether it did.
    pub(super) fn try_redirect(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
        reason: Reason,
    ) -> bool {
        let alternates = &self.config.alternates;
        if reason == Reason::Arrived && alternates.when != RedirectWhen::Always {
            return false;
        }
        let Some(to) = next_alternate(
            alternates.for_transport(from.transport),
            from.server,
            &mut self.next_alternate,
        ) else {
            return false;
        };
        let mut out = Message::builder_error(msg, MessageWriteVec::with_capacity(128));
        push_error(&mut out, ErrorCode::TRY_ALTERNATE);
        let _ = out.add_attribute(&AlternateServer::new(to));
        self.send(
            from,
            out,
            Some((&authed.key, authed.hmac)),
            MethodLabel::Allocate,
            ErrorCode::TRY_ALTERNATE,
        );
        true
    }
}

/// The next of `list` after `cursor` in the family of `own` (a client reaches the alternate
/// the way it reached us) and not `own` itself (a relay listed among its own alternates would
/// send clients round in a loop); `cursor` moves past it.
fn next_alternate(list: &[SocketAddr], own: SocketAddr, cursor: &mut usize) -> Option<SocketAddr> {
    for _ in 0..list.len() {
        let at = *cursor % list.len();
        *cursor = at + 1;
        let candidate = list[at];
        if candidate.is_ipv4() == own.is_ipv4() && candidate != own {
            return Some(candidate);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_robin_in_the_clients_family_skipping_ourselves() {
        let list = [
            sa("192.0.2.1:3478"),
            sa("[2001:db8::1]:3478"),
            sa("192.0.2.2:3478"),
            sa("192.0.2.9:3478"),
        ];
        let own = sa("192.0.2.9:3478");
        let mut cursor = 0;
        let picks: Vec<_> = (0..4)
            .map(|_| next_alternate(&list, own, &mut cursor).unwrap())
            .collect();
        assert_eq!(
            picks,
            [
                sa("192.0.2.1:3478"),
                sa("192.0.2.2:3478"),
                sa("192.0.2.1:3478"),
                sa("192.0.2.2:3478")
            ]
        );
        let own6 = sa("[2001:db8::9]:3478");
        assert_eq!(
            next_alternate(&list, own6, &mut cursor),
            Some(sa("[2001:db8::1]:3478"))
        );
    }

    #[test]
    fn nothing_to_offer_is_none() {
        let mut cursor = 7;
        assert_eq!(next_alternate(&[], sa("192.0.2.9:3478"), &mut cursor), None);
        let only_ourselves = [sa("192.0.2.9:3478"), sa("[2001:db8::1]:3478")];
        assert_eq!(
            next_alternate(&only_ourselves, sa("192.0.2.9:3478"), &mut cursor),
            None
        );
    }
}
