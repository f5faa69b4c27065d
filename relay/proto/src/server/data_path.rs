//! The data path: ChannelData and Send indications from clients out to peers, and peer
//! datagrams back to clients.
//!
//! Every function here answers with a route rather than a command and touches no heap, because
//! it runs once per relayed packet (`tests/data_path_allocations.rs` counts).

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use stun_types::attribute::AttributeStaticType;
use stun_types::message::Message;
use turn_types::attribute::{Data, XorPeerAddress};

use super::{ClientOutcome, PeerRoute, RelayId, Server};
use crate::allocation::take_bandwidth;
use crate::metrics::{Direction, DropReason};
use crate::transport::{Family, FiveTuple};

impl Server {
    /// A datagram from `peer` to one of our relay sockets: which client it goes to, and how.
    pub(super) fn route_to_client(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        len: usize,
        now: Instant,
    ) -> Option<PeerRoute> {
        let max_bps = self.config.max_bps;
        let slot = self.slots.get_mut(relay.slot as usize)?;
        if slot.generation != relay.generation {
            return None;
        }
        let a = slot.allocation.as_mut()?;
        if !a.permissions.allows(peer.ip(), now) {
            self.counters.dropped(DropReason::NoPermission);
            return None;
        }
        if !take_bandwidth(&mut a.bandwidth[1], len, max_bps, now) {
            self.counters.dropped(DropReason::Bandwidth);
            return None;
        }
        self.counters.relayed(Direction::PeerToClient, len);
        Some(PeerRoute {
            client: a.five_tuple,
            channel: a.channels.number(peer, now),
        })
    }

    /// A ChannelData frame (RFC 8656 §12.4): the channel names the peer.
    pub(super) fn channel_data(
        &mut self,
        from: FiveTuple,
        packet: &[u8],
        now: Instant,
    ) -> ClientOutcome {
        if packet.len() < 4 {
            return self.malformed();
        }
        let number = u16::from_be_bytes([packet[0], packet[1]]);
        let len = u16::from_be_bytes([packet[2], packet[3]]) as usize;
        if 4 + len > packet.len() {
            return self.malformed();
        }
        let Some(&slot) = self.by_client.get(&from) else {
            self.counters.dropped(DropReason::UnboundChannel);
            return ClientOutcome::Dropped;
        };
        let max_bps = self.config.max_bps;
        let generation = self.slots[slot as usize].generation;
        let Some(a) = self.slots[slot as usize].allocation.as_mut() else {
            self.counters.dropped(DropReason::UnboundChannel);
            return ClientOutcome::Dropped;
        };
        let Some(peer) = a.channels.peer(number, now) else {
            self.counters.dropped(DropReason::UnboundChannel);
            return ClientOutcome::Dropped;
        };
        self.route_to_peer(slot, generation, peer, 4..4 + len, max_bps, now)
    }

    /// A Send indication (RFC 8656 §11.2): XOR-PEER-ADDRESS names the peer, DATA the payload.
    pub(super) fn send_indication(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        now: Instant,
    ) -> ClientOutcome {
        let Some(&slot) = self.by_client.get(&from) else {
            self.counters.dropped(DropReason::NoPermission);
            return ClientOutcome::Dropped;
        };
        let Ok(peer) = msg.attribute::<XorPeerAddress>() else {
            return self.malformed();
        };
        let peer = peer.addr(msg.transaction_id());
        // A permission names an address, not a port: one made for another port of the relay's
        // own address must not carry a Send to its listener.
        if self.config.peer_filter.is_self(peer) {
            self.counters.dropped(DropReason::NoPermission);
            return ClientOutcome::Dropped;
        }
        let Some((offset, data)) = msg.raw_attribute_and_offset(Data::TYPE) else {
            return self.malformed();
        };
        let start = offset + 4;
        let payload = start..start + data.value.len();
        let generation = self.slots[slot as usize].generation;
        let max_bps = self.config.max_bps;
        self.route_to_peer(slot, generation, peer, payload, max_bps, now)
    }

    /// What ChannelData and Send share: the permission, a bound relay of the peer's family,
    /// and the client-to-peer bandwidth budget.
    fn route_to_peer(
        &mut self,
        slot: u32,
        generation: u32,
        peer: SocketAddr,
        payload: Range<usize>,
        max_bps: u64,
        now: Instant,
    ) -> ClientOutcome {
        let Some(a) = self.slots[slot as usize].allocation.as_mut() else {
            self.counters.dropped(DropReason::NoPermission);
            return ClientOutcome::Dropped;
        };
        let family = Family::of(peer.ip());
        // A TCP allocation's relayed address is a listener: nothing to send datagrams from.
        if a.tcp
            || !a.permissions.allows(peer.ip(), now)
            || !a.relay(family).is_some_and(|r| r.bound)
        {
            self.counters.dropped(DropReason::NoPermission);
            return ClientOutcome::Dropped;
        }
        if !take_bandwidth(&mut a.bandwidth[0], payload.len(), max_bps, now) {
            self.counters.dropped(DropReason::Bandwidth);
            return ClientOutcome::Dropped;
        }
        self.counters
            .relayed(Direction::ClientToPeer, payload.len());
        ClientOutcome::Relay {
            relay: RelayId {
                slot,
                generation,
                family,
            },
            peer,
            payload,
        }
    }
}
