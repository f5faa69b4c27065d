//! The requests other than Allocate: Binding, and the ones that act on an existing
//! allocation (Refresh, CreatePermission, ChannelBind).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_types::attribute::{Attribute, AttributeStaticType, ErrorCode};
use stun_types::message::{Message, MessageWriteExt, MessageWriteVec};
use stun_types::AddressFamily;
use turn_types::attribute::{ChannelNumber, Lifetime, RequestedAddressFamily, XorPeerAddress};

use super::authenticate::Authed;
use super::Server;
use crate::metrics::{AuthFailure, MethodLabel};
use crate::peer_filter::DenyReason;
use crate::transport::{Family, FiveTuple};

impl Server {
    /// Binding (RFC 8489): unauthenticated, so rate limited like every other such answer;
    /// with RFC 5780 when it is on (`nat_discovery.rs`).
    pub(super) fn binding(&mut self, from: FiveTuple, msg: &Message<'_>, now: Instant) {
        if !self.rate_ok(from, now) {
            return;
        }
        self.answer_binding(from, msg);
    }

    /// The allocation of `from`, checked against the requester (437, 441).
    pub(super) fn owned_allocation(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
        label: MethodLabel,
    ) -> Option<u32> {
        // An allocation whose sockets are still binding is one the client cannot know yet.
        let found = self.by_client.get(&from).and_then(|&slot| {
            let a = self.slots[slot as usize].allocation.as_ref()?;
            a.pending.is_none().then_some((slot, a))
        });
        let Some((slot, a)) = found else {
            self.error(
                from,
                msg,
                ErrorCode::ALLOCATION_MISMATCH,
                Some(authed),
                label,
            );
            return None;
        };
        if a.username != authed.username {
            self.counters.auth_failure(AuthFailure::WrongCredentials);
            self.error(from, msg, ErrorCode::WRONG_CREDENTIALS, Some(authed), label);
            return None;
        }
        Some(slot)
    }

    /// Refresh (RFC 8656 §8): a new lifetime, or 0 to delete the allocation now.
    pub(super) fn refresh(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: Authed,
        now: Instant,
    ) {
        let label = MethodLabel::Refresh;
        let Some(slot) = self.owned_allocation(from, msg, &authed, label) else {
            return;
        };
        if let Ok(requested) = msg.attribute::<RequestedAddressFamily>() {
            let family = match requested.family() {
                AddressFamily::IPV4 => Family::V4,
                AddressFamily::IPV6 => Family::V6,
            };
            let has = self.slots[slot as usize]
                .allocation
                .as_ref()
                .is_some_and(|a| a.relay(family).is_some());
            if !has {
                return self.error(
                    from,
                    msg,
                    ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
                    Some(&authed),
                    label,
                );
            }
        }
        let timers = self.config.timers;
        let requested = msg
            .attribute::<Lifetime>()
            .map(|l| Duration::from_secs(l.seconds() as u64))
            .unwrap_or(timers.default_lifetime);
        let lifetime = if requested.is_zero() {
            self.destroy(slot);
            Duration::ZERO
        } else {
            // RFC 8656 §7.3: as for Allocate, never less than the default lifetime.
            let lifetime = requested
                .min(timers.max_lifetime)
                .max(timers.default_lifetime);
            if let Some(a) = self.slots[slot as usize].allocation.as_mut() {
                a.expires = now + lifetime;
            }
            lifetime
        };
        let mut out = Message::builder_success(msg, MessageWriteVec::with_capacity(96));
        let _ = out.add_attribute(&Lifetime::new(lifetime.as_secs() as u32));
        self.send(from, out, Some((&authed.key, authed.hmac)), label, 0);
    }

    /// Checks peers against the allocation's families (443) and the peer filter (403).
    pub(super) fn check_peers(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        slot: u32,
        peers: &[SocketAddr],
        authed: &Authed,
        label: MethodLabel,
    ) -> bool {
        for peer in peers {
            let family = Family::of(peer.ip());
            let has_family = self.slots[slot as usize]
                .allocation
                .as_ref()
                .is_some_and(|a| a.relay(family).is_some());
            if !has_family {
                self.error(
                    from,
                    msg,
                    ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
                    Some(authed),
                    label,
                );
                return false;
            }
            if let Err(reason) = self.config.peer_filter.check_peer(*peer) {
                self.denials.inc(reason.as_str());
                if reason == DenyReason::SelfAddress {
                    tracing::info!(
                        %peer,
                        user = %authed.username,
                        "peer is one of the relay's own listening addresses (403)"
                    );
                } else {
                    tracing::info!(
                        %peer,
                        reason = reason.as_str(),
                        user = %authed.username,
                        "peer address denied by the peer filter (403); allow it with allowed-peer-ip if intended"
                    );
                }
                self.error(from, msg, ErrorCode::FORBIDDEN, Some(authed), label);
                return false;
            }
        }
        true
    }

    /// CreatePermission (RFC 8656 §10): all the peers pass or none is installed, so a client
    /// never holds half of what it asked for.
    pub(super) fn create_permission(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: Authed,
        now: Instant,
    ) {
        let label = MethodLabel::CreatePermission;
        let Some(slot) = self.owned_allocation(from, msg, &authed, label) else {
            return;
        };
        let mut peers = Vec::new();
        for (_, raw) in msg.iter_attributes() {
            if raw.get_type() == XorPeerAddress::TYPE {
                match XorPeerAddress::try_from(&raw) {
                    Ok(p) => peers.push(p.addr(msg.transaction_id())),
                    Err(_) => {
                        return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label)
                    }
                }
            }
        }
        if peers.is_empty() {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        }
        if !self.check_peers(from, msg, slot, &peers, &authed, label) {
            return;
        }
        let ips: Vec<_> = peers.iter().map(|p| p.ip()).collect();
        let max = self.config.max_permissions;
        let expires = now + self.config.timers.permission_lifetime;
        let Some(a) = self.slots[slot as usize].allocation.as_mut() else {
            return;
        };
        if !a.permissions.has_room_for(&ips, max) {
            return self.error(
                from,
                msg,
                ErrorCode::INSUFFICIENT_CAPACITY,
                Some(&authed),
                label,
            );
        }
        for ip in ips {
            let _ = a.permissions.install(ip, expires, max);
        }
        let out = Message::builder_success(msg, MessageWriteVec::with_capacity(64));
        self.send(from, out, Some((&authed.key, authed.hmac)), label, 0);
    }

    /// ChannelBind (RFC 8656 §12): binds a channel and installs or refreshes the peer's
    /// permission with it, since a channel is useless without one.
    pub(super) fn channel_bind(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: Authed,
        now: Instant,
    ) {
        let label = MethodLabel::ChannelBind;
        let Some(slot) = self.owned_allocation(from, msg, &authed, label) else {
            return;
        };
        let (Ok(number), Ok(peer)) = (
            msg.attribute::<ChannelNumber>(),
            msg.attribute::<XorPeerAddress>(),
        ) else {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        };
        let peer = peer.addr(msg.transaction_id());
        // RFC 6062 §6: a TCP allocation has no channels; its data goes on connections.
        let tcp = self.slots[slot as usize]
            .allocation
            .as_ref()
            .is_some_and(|a| a.tcp);
        if tcp {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        }
        if !self.check_peers(from, msg, slot, &[peer], &authed, label) {
            return;
        }
        let timers = self.config.timers;
        let max = self.config.max_permissions;
        let Some(a) = self.slots[slot as usize].allocation.as_mut() else {
            return;
        };
        if !a.permissions.has_room_for(&[peer.ip()], max) {
            return self.error(
                from,
                msg,
                ErrorCode::INSUFFICIENT_CAPACITY,
                Some(&authed),
                label,
            );
        }
        if a.channels
            .bind(number.channel(), peer, now + timers.channel_lifetime)
            .is_err()
        {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        }
        let _ = a
            .permissions
            .install(peer.ip(), now + timers.permission_lifetime, max);
        let out = Message::builder_success(msg, MessageWriteVec::with_capacity(64));
        self.send(from, out, Some((&authed.key, authed.hmac)), label, 0);
    }
}
