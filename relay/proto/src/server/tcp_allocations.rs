//! TCP allocations (RFC 6062): Connect, the peer connections the relay makes or accepts on a
//! TCP relayed address, the ConnectionAttempt that announces an incoming one, and the
//! ConnectionBind that joins a peer connection to a new client data connection.
//!
//! The core only keeps the books: which connections an allocation has, who may bind them and
//! until when. The runtime connects, accepts and moves the bytes ([`Command::ConnectPeer`],
//! [`Command::JoinConnection`], [`Command::CloseConnection`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use stun_types::attribute::ErrorCode;
use stun_types::message::{
    Message, MessageClass, MessageWrite, MessageWriteExt, MessageWriteVec, TransactionId,
};
use turn_types::attribute::{ConnectionId, XorPeerAddress};
use turn_types::message::{CONNECT, CONNECTION_ATTEMPT};

use super::authenticate::Authed;
use super::replies::{push_error, write_header};
use super::{Command, RelayId, Server};
use crate::allocation::{PeerConnection, PendingConnect};
use crate::metrics::{self, MethodLabel};
use crate::peer_connections::ConnectionState;
use crate::transport::{Family, FiveTuple};

/// How long a peer connection waits for the client's ConnectionBind (RFC 6062 §5.2, §5.3).
pub const CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);

impl Server {
    /// Connect (RFC 6062 §5.2): checks the peer, then asks the runtime to connect out from
    /// the relayed address; answered in [`Server::peer_connected`].
    pub(super) fn connect(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: Authed,
        _now: Instant,
    ) {
        let label = MethodLabel::Connect;
        let Some(slot) = self.owned_allocation(from, msg, &authed, label) else {
            return;
        };
        let is_tcp = self.slots[slot as usize]
            .allocation
            .as_ref()
            .is_some_and(|a| a.tcp);
        let Ok(peer) = msg.attribute::<XorPeerAddress>() else {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        };
        if !is_tcp {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        }
        let peer = peer.addr(msg.transaction_id());
        if !self.check_peers(from, msg, slot, &[peer], &authed, label) {
            return;
        }
        self.prune_connections(slot);
        let max = self.config.max_permissions;
        let generation = self.slots[slot as usize].generation;
        let random = self.rng.random::<u32>();
        let Some(a) = self.slots[slot as usize].allocation.as_mut() else {
            return;
        };
        if a.connections.iter().any(|c| c.peer == peer) {
            return self.error(
                from,
                msg,
                ErrorCode::CONNECTION_ALREADY_EXISTS,
                Some(&authed),
                label,
            );
        }
        let family = Family::of(peer.ip());
        let (true, Some(relay)) = (a.connections.len() < max, a.relay(family).copied()) else {
            self.counters
                .peer_connection(metrics::PeerConnection::Outgoing, false);
            return self.error(
                from,
                msg,
                ErrorCode::INSUFFICIENT_CAPACITY,
                Some(&authed),
                label,
            );
        };
        let id =
            self.ledger
                .connections()
                .register(&a.username, ConnectionState::Connecting, random);
        a.connections.push(PeerConnection {
            id,
            peer,
            connect: Some(PendingConnect {
                transaction: msg.transaction_id(),
                key: authed.key,
                hmac: authed.hmac,
            }),
            bind_by: None,
        });
        self.commands.push_back(Command::ConnectPeer {
            connection: id,
            relay: RelayId {
                slot,
                generation,
                family,
            },
            from: relay.local,
            peer,
        });
    }

    /// What [`Server::peer_connected`] does: answers the Connect with CONNECTION-ID, or 447.
    pub(super) fn connect_result(
        &mut self,
        relay: RelayId,
        connection: u32,
        ok: bool,
        now: Instant,
    ) -> bool {
        let Some(a) = self
            .slots
            .get_mut(relay.slot as usize)
            .filter(|s| s.generation == relay.generation)
            .and_then(|s| s.allocation.as_mut())
        else {
            return false;
        };
        let Some(i) = a
            .connections
            .iter()
            .position(|c| c.id == connection && c.connect.is_some())
        else {
            return false;
        };
        let to = a.five_tuple;
        let registry = self.ledger.connections();
        let bind_by = now + CONNECTION_BIND_TIMEOUT;
        let kept = ok && registry.set_state(connection, ConnectionState::AwaitingBind(bind_by));
        let c = &mut a.connections[i];
        let Some(p) = c.connect.take() else {
            return false;
        };
        let mut out = MessageWriteVec::with_capacity(96);
        let code = if kept {
            c.bind_by = Some(bind_by);
            write_header(&mut out, MessageClass::Success, CONNECT, p.transaction);
            let _ = out.add_attribute(&ConnectionId::new(connection));
            0
        } else {
            a.connections.swap_remove(i);
            registry.remove(connection);
            write_header(&mut out, MessageClass::Error, CONNECT, p.transaction);
            push_error(&mut out, ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE);
            ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE
        };
        self.counters
            .peer_connection(metrics::PeerConnection::Outgoing, kept);
        self.send(to, out, Some((&p.key, p.hmac)), MethodLabel::Connect, code);
        kept
    }

    /// What [`Server::peer_connection`] does: a peer with a permission gets a connection id,
    /// announced to the client in a ConnectionAttempt (RFC 6062 §5.3).
    pub(super) fn incoming_connection(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<u32> {
        let kind = metrics::PeerConnection::Incoming;
        let found = self
            .slots
            .get(relay.slot as usize)
            .filter(|s| s.generation == relay.generation)
            .and_then(|s| s.allocation.as_ref())
            .is_some_and(|a| a.tcp && a.pending.is_none());
        if !found {
            return None;
        }
        self.prune_connections(relay.slot);
        let max = self.config.max_permissions;
        let random = self.rng.random::<u32>();
        let tid = TransactionId::from(self.rng.random::<u128>() >> 32);
        let a = self.slots[relay.slot as usize].allocation.as_mut()?;
        if !a.permissions.allows(peer.ip(), now) || a.connections.len() >= max {
            self.counters.peer_connection(kind, false);
            return None;
        }
        let bind_by = now + CONNECTION_BIND_TIMEOUT;
        let id = self.ledger.connections().register(
            &a.username,
            ConnectionState::AwaitingBind(bind_by),
            random,
        );
        a.connections.push(PeerConnection {
            id,
            peer,
            connect: None,
            bind_by: Some(bind_by),
        });
        let to = a.five_tuple;
        let mut out = MessageWriteVec::with_capacity(64);
        write_header(&mut out, MessageClass::Indication, CONNECTION_ATTEMPT, tid);
        let _ = out.add_attribute(&XorPeerAddress::new(peer, tid));
        let _ = out.add_attribute(&ConnectionId::new(id));
        let _ = out.add_fingerprint();
        self.counters.peer_connection(kind, true);
        self.commands.push_back(Command::SendToClient {
            to,
            data: out.finish(),
        });
        Some(id)
    }

    /// ConnectionBind (RFC 6062 §5.4): on a new TCP/TLS connection without an allocation, it
    /// claims a peer connection of the same user's allocation; from the answer on, that
    /// connection carries the peer's bytes.
    pub(super) fn connection_bind(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: Authed,
        now: Instant,
    ) {
        let label = MethodLabel::ConnectionBind;
        let id = msg.attribute::<ConnectionId>().ok().map(|c| c.id());
        let Some(id) = id.filter(|_| from.transport.is_stream() && !self.has_allocation(&from))
        else {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        };
        // One answer for an unknown id and another user's: ids are no oracle.
        if let Err(refused) = self.ledger.connections().bind(id, &authed.username, now) {
            tracing::debug!(client = %from.client, %refused, "ConnectionBind refused (400)");
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        }
        let out = Message::builder_success(msg, MessageWriteVec::with_capacity(64));
        self.send(from, out, Some((&authed.key, authed.hmac)), label, 0);
        self.commands.push_back(Command::JoinConnection {
            client: from,
            connection: id,
        });
    }

    /// Closes the connections of `slot` still waiting for a ConnectionBind past their time.
    pub(super) fn expire_connections(&mut self, slot: u32, now: Instant) {
        let Some(a) = self.slots[slot as usize].allocation.as_mut() else {
            return;
        };
        let registry = self.ledger.connections();
        let mut expired = false;
        for c in &mut a.connections {
            if c.bind_by.is_some_and(|t| t <= now) {
                c.bind_by = None;
                expired = true;
                if registry.expire(c.id, now) {
                    self.commands
                        .push_back(Command::CloseConnection { connection: c.id });
                }
            }
        }
        if expired {
            self.prune_connections(slot);
        }
    }

    /// Forgets the connections of `slot` that are gone (closed by whichever worker carried
    /// them, or expired).
    fn prune_connections(&mut self, slot: u32) {
        let registry = self.ledger.connections();
        if let Some(a) = self.slots[slot as usize].allocation.as_mut() {
            a.connections.retain(|c| registry.state(c.id).is_some());
        }
    }
}
