//! The cluster: what one icegate-signal instance says to and hears from the others over the
//! bus (Redis pub/sub, `redis-url`), as a sans-IO state machine. No socket, no clock: the
//! shell passes the bus's payloads and its ups and downs in, with the time, and publishes what
//! comes out.
//!
//! ```text
//!   local sessions open/close ──► Joined / Left (broadcast, numbered by `seq`)
//!   local sessions join/leave rooms ──► Room (broadcast, numbered too)
//!   every heartbeat interval  ──► Heartbeat{seq} (broadcast)
//!   stopping (sessions closed) ──► Goodbye (broadcast, last; nothing after it)
//!   bus (re)connected         ──► Snapshot + Sync (broadcast): "here are mine, send me yours"
//!   hub's Send{to: Remote}    ──► Deliver (to the session's instance)
//!   local request in a call owned elsewhere ──► Request (to the owner)
//!
//!   heard: Joined/Left/Snapshot ──► hub: open/close remote sessions
//!          Deliver               ──► the local session (and the proxy table: its calls elsewhere)
//!          Request               ──► hub: handle_remote_message
//!          Goodbye               ──► hub: close_instance, at once
//!          own broadcasts   ──► proof the subscription hears; none for `instance_timeout`
//!                                ──► Reconnect, and the bus counts as lost
//!          nothing from an instance for `instance_timeout`, or the bus lost
//!                                ──► hub: close_instance (its calls end `unavailable`), and the
//!                                    local sessions in calls it owned get hangup `unavailable`
//! ```
//!
//! A call is owned by the instance where it started: its hub runs the call, and the legs on
//! other instances are [`Endpoint::Remote`](crate::hub::Endpoint::Remote). Each instance keeps
//! the presence of the others in memory (a replicated directory), so that ringing a user is a
//! lookup, not a round trip; presence changes are numbered, and a receiver that sees a gap (a
//! message lost while Redis was away) asks that instance for a snapshot.
//!
//! Call order: after any input, drain [`Cluster::poll_output`] until `None`, then re-arm the
//! timer from [`Cluster::poll_timeout`]. The hub and the cluster are joined synchronously by
//! the switchboard (`icegate_signal_asterisk::switchboard`), which routes [`Output::Hub`] into
//! the hub and the hub's messages for remote sessions into [`Cluster::send`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::hub::{InstanceId, RemoteSession};
use crate::protocol::{
    CallId, ClientMessage, HangupReason, RequestId, RoomId, ServerMessage, SessionId, UserId,
};

pub mod wire;

use wire::{Body, Envelope, WireError};

/// How often an instance says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long an instance may stay silent before it counts as gone: five heartbeats, so one or
/// two lost or late ones do not end its calls, and well within the 15 s in which the users of
/// a dead instance must disappear.
pub const INSTANCE_TIMEOUT: Duration = Duration::from_secs(10);

/// The prefix of the bus's channel names.
const CHANNEL_PREFIX: &str = "icegate:signal";

/// The cluster's identity and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This instance.
    pub instance: InstanceId,
    /// Between heartbeats.
    pub heartbeat: Duration,
    /// Silence after which another instance is gone.
    pub instance_timeout: Duration,
}

impl ClusterConfig {
    /// The defaults ([`HEARTBEAT`], [`INSTANCE_TIMEOUT`]) for `instance`.
    pub fn new(instance: InstanceId) -> Self {
        ClusterConfig {
            instance,
            heartbeat: HEARTBEAT,
            instance_timeout: INSTANCE_TIMEOUT,
        }
    }
}

/// A bus channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Every instance: presence, heartbeats, sync requests.
    All,
    /// One instance: messages for its sessions, requests for its calls, snapshots for it.
    Instance(InstanceId),
}

impl Channel {
    /// The Redis channel name.
    pub fn name(self) -> String {
        match self {
            Channel::All => format!("{CHANNEL_PREFIX}:all"),
            Channel::Instance(id) => format!("{CHANNEL_PREFIX}:instance:{id}"),
        }
    }
}

/// What the cluster tells the hub.
#[derive(Debug, Clone, PartialEq)]
pub enum ToHub {
    /// Whether the other instances can be reached ([`Hub::set_cluster_reachable`](crate::hub::Hub::set_cluster_reachable)).
    Reachable(bool),
    /// A session opened on another instance.
    RemoteOpened {
        /// The session.
        session: RemoteSession,
        /// Its user.
        user: UserId,
    },
    /// A session on another instance closed: its calls end with `disconnected`.
    RemoteClosed(RemoteSession),
    /// A session on another instance joined or left a room.
    RemoteRoom {
        /// The session.
        session: RemoteSession,
        /// The room.
        room: RoomId,
        /// Joined, or left.
        joined: bool,
    },
    /// An instance is gone (silent too long, or the bus is lost): its sessions' calls end
    /// with `unavailable`.
    InstanceLost(InstanceId),
    /// A remote session's request about a call owned here.
    Request {
        /// The session.
        from: RemoteSession,
        /// The request's id.
        id: Option<RequestId>,
        /// The request.
        message: ClientMessage,
    },
}

/// What the cluster asks the shell (or the switchboard) to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Publish `payload` on `channel`.
    Publish {
        /// Where.
        channel: Channel,
        /// The encoded [`Envelope`].
        payload: String,
    },
    /// Send `message` to a session connected here.
    Session {
        /// The session.
        session: SessionId,
        /// The message.
        message: ServerMessage,
    },
    /// Feed this into the hub.
    Hub(ToHub),
    /// The bus's subscription has gone deaf: drop the connection and connect again (then
    /// call [`Cluster::disconnected`] and [`Cluster::connected`] as for any loss).
    Reconnect,
    /// Something for the log.
    Log(String),
}

/// Another instance, as far as this one knows.
struct Peer {
    /// The number of its last presence change applied here; `None` while this instance has
    /// missed one and waits for a snapshot.
    seq: Option<u64>,
    /// When it counts as gone unless it says something.
    deadline: Instant,
    /// When this instance last asked it for a snapshot.
    sync_asked: Option<Instant>,
    /// Its sessions.
    sessions: HashMap<SessionId, UserId>,
    /// The rooms its sessions are in.
    rooms: HashSet<(SessionId, RoomId)>,
}

/// One instance's side of the cluster.
pub struct Cluster {
    config: ClusterConfig,
    /// Whether the bus is up.
    connected: bool,
    /// The number of this instance's last presence change.
    seq: u64,
    /// This instance's sessions, for snapshots.
    local: BTreeMap<SessionId, UserId>,
    /// The rooms they are in.
    local_rooms: BTreeSet<(SessionId, RoomId)>,
    peers: HashMap<InstanceId, Peer>,
    /// Local sessions in calls owned by another instance, and that owner: where the
    /// session's requests about the call go.
    proxies: HashMap<(SessionId, CallId), InstanceId>,
    next_heartbeat: Option<Instant>,
    /// Said goodbye: stopping, and silent from now on.
    left: bool,
    /// While the bus is up: when it counts as lost unless one of this instance's own
    /// broadcasts has come back by then (see [`Cluster::handle_timeout`]).
    echo_deadline: Option<Instant>,
    out: VecDeque<Output>,
}

impl Cluster {
    /// A cluster whose bus is not connected yet; the hub hears at once that the other
    /// instances cannot be reached.
    pub fn new(config: ClusterConfig) -> Cluster {
        let mut out = VecDeque::new();
        out.push_back(Output::Hub(ToHub::Reachable(false)));
        Cluster {
            config,
            connected: false,
            seq: 0,
            local: BTreeMap::new(),
            local_rooms: BTreeSet::new(),
            peers: HashMap::new(),
            proxies: HashMap::new(),
            next_heartbeat: None,
            echo_deadline: None,
            left: false,
            out,
        }
    }

    // ---- getters ----

    /// This instance.
    pub fn instance(&self) -> InstanceId {
        self.config.instance
    }

    /// Whether the bus is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Other instances known now.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Local sessions' legs in calls owned elsewhere.
    pub fn proxy_count(&self) -> usize {
        self.proxies.len()
    }

    // ---- local sessions ----

    /// A session opened here: the others learn it.
    pub fn session_opened(&mut self, session: SessionId, user: UserId, _now: Instant) {
        self.seq += 1;
        self.local.insert(session, user.clone());
        let seq = self.seq;
        self.publish(Channel::All, Body::Joined { seq, session, user });
    }

    /// A session closed here: the others learn it (and end its legs in their calls).
    pub fn session_closed(&mut self, session: SessionId, _now: Instant) {
        if self.local.remove(&session).is_none() {
            return;
        }
        self.seq += 1;
        self.proxies.retain(|(s, _), _| *s != session);
        // Its rooms go with it, here and (from `Left`) at the others.
        self.local_rooms.retain(|(s, _)| *s != session);
        let seq = self.seq;
        self.publish(Channel::All, Body::Left { seq, session });
    }

    /// A session here joined (`joined`) or left a room: the others learn it, so that calls
    /// to the room ring it.
    pub fn room_changed(&mut self, session: SessionId, room: RoomId, joined: bool, _now: Instant) {
        if !self.local.contains_key(&session) {
            return;
        }
        let key = (session, room.clone());
        let changed = if joined {
            self.local_rooms.insert(key)
        } else {
            self.local_rooms.remove(&key)
        };
        if !changed {
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        self.publish(
            Channel::All,
            Body::Room {
                seq,
                session,
                room,
                joined,
            },
        );
    }

    /// The instance that owns the call `message` is about, when that call is not here but
    /// `session` is a leg of it elsewhere: the request goes there with [`Cluster::forward`].
    pub fn owner(&self, session: SessionId, message: &ClientMessage) -> Option<InstanceId> {
        let call = message.call()?;
        self.proxies.get(&(session, call)).copied()
    }

    /// Sends a local session's request to the instance that owns its call.
    pub fn forward(
        &mut self,
        owner: InstanceId,
        session: SessionId,
        id: Option<RequestId>,
        message: ClientMessage,
        _now: Instant,
    ) {
        // Only callees are ever remote, and a callee's hangup always ends its part.
        if let ClientMessage::Hangup { call, .. } = message {
            self.proxies.remove(&(session, call));
        }
        self.publish(
            Channel::Instance(owner),
            Body::Request {
                session,
                id,
                message,
            },
        );
    }

    /// A message of the hub for a session on another instance.
    pub fn send(&mut self, to: RemoteSession, message: ServerMessage, _now: Instant) {
        self.publish(
            Channel::Instance(to.instance),
            Body::Deliver {
                session: to.session,
                message,
            },
        );
    }

    /// This instance is stopping: a last [`Body::Goodbye`] tells the others to drop its
    /// sessions and end their calls with them now; after it, nothing more is published (a
    /// heartbeat would bring this instance back to their view).
    pub fn leave(&mut self, _now: Instant) {
        if self.left {
            return;
        }
        self.publish(Channel::All, Body::Goodbye);
        self.left = true;
        self.next_heartbeat = None;
        self.echo_deadline = None;
    }

    /// Whether [`Cluster::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    // ---- the bus ----

    /// The bus is up (again): announce this instance's sessions and ask for everyone's.
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.out.push_back(Output::Hub(ToHub::Reachable(true)));
        self.publish(Channel::All, self.snapshot());
        self.publish(Channel::All, Body::Sync);
        self.next_heartbeat = Some(now + self.config.heartbeat);
        self.echo_deadline = Some(now + self.config.instance_timeout);
    }

    /// The bus is lost: every other instance is out of reach, so their sessions' calls end
    /// here, and local sessions' legs in calls they own end too, with `unavailable`.
    pub fn disconnected(&mut self, _now: Instant) {
        if !self.connected {
            return;
        }
        self.connected = false;
        self.next_heartbeat = None;
        self.echo_deadline = None;
        let mut peers: Vec<InstanceId> = self.peers.keys().copied().collect();
        peers.sort_unstable();
        for peer in peers {
            self.lose(peer);
        }
        self.out.push_back(Output::Hub(ToHub::Reachable(false)));
    }

    /// A message from the bus. This instance's own broadcasts come back: they prove that its
    /// subscription still hears the bus, and are otherwise ignored.
    pub fn handle_bus(&mut self, payload: &[u8], now: Instant) -> Result<(), WireError> {
        let Envelope { from, body, .. } = Envelope::decode(payload)?;
        if !self.connected {
            return Ok(());
        }
        if from == self.config.instance {
            // (Its own goodbye comes back too; after it, nothing is expected.)
            if !self.left {
                self.echo_deadline = Some(now + self.config.instance_timeout);
            }
            return Ok(());
        }
        if matches!(body, Body::Goodbye) {
            self.out.push_back(Output::Log(format!(
                "instance {from} said goodbye: its sessions are gone"
            )));
            // Known or not (a goodbye can be the first word heard of one), it is gone.
            self.lose(from);
            return Ok(());
        }
        let deadline = now + self.config.instance_timeout;
        let peer = self.peers.entry(from).or_insert_with(|| Peer {
            seq: None,
            deadline,
            sync_asked: None,
            sessions: HashMap::new(),
            rooms: HashSet::new(),
        });
        peer.deadline = deadline;
        match body {
            Body::Heartbeat { seq } => {
                if peer.seq != Some(seq) {
                    self.ask_sync(from, now);
                }
            }
            Body::Joined { seq, session, user } => {
                if self.in_sequence(from, seq, now) {
                    self.remote_opened(from, session, user);
                }
            }
            Body::Left { seq, session } => {
                if self.in_sequence(from, seq, now) {
                    self.remote_closed(from, session);
                }
            }
            Body::Room {
                seq,
                session,
                room,
                joined,
            } => {
                if self.in_sequence(from, seq, now) {
                    self.remote_room(from, session, room, joined);
                }
            }
            Body::Sync => self.publish(Channel::Instance(from), self.snapshot()),
            // Handled before the sender was (re)entered as a peer.
            Body::Goodbye => {}
            Body::Snapshot {
                seq,
                sessions,
                rooms,
            } => self.apply_snapshot(from, seq, sessions, rooms),
            Body::Deliver { session, message } => self.deliver(from, session, message),
            Body::Request {
                session,
                id,
                message,
            } => self.out.push_back(Output::Hub(ToHub::Request {
                from: RemoteSession {
                    instance: from,
                    session,
                },
                id,
                message,
            })),
        }
        Ok(())
    }

    // ---- time ----

    /// Sends the heartbeat when due, and drops instances silent for too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Publishing can go on working while the subscription hears nothing (a connection
        // cut without a reset): the others would think this instance fine while it thinks
        // them all gone. Its own heartbeats not coming back shows it; start over.
        if self.echo_deadline.is_some_and(|due| due <= now) {
            self.out.push_back(Output::Log(format!(
                "this instance's own messages have not come back over the bus for {:?}: \
                 reconnecting",
                self.config.instance_timeout
            )));
            self.out.push_back(Output::Reconnect);
            self.disconnected(now);
            return;
        }
        if self.next_heartbeat.is_some_and(|due| due <= now) {
            let seq = self.seq;
            self.publish(Channel::All, Body::Heartbeat { seq });
            self.next_heartbeat = Some(now + self.config.heartbeat);
        }
        let mut silent: Vec<InstanceId> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        silent.sort_unstable();
        for instance in silent {
            self.out.push_back(Output::Log(format!(
                "instance {instance} silent for {:?}: its sessions are gone",
                self.config.instance_timeout
            )));
            self.lose(instance);
        }
    }

    /// When [`Cluster::handle_timeout`] is due: the next heartbeat, the earliest deadline of
    /// another instance, or the one for this instance's own messages to come back.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self
            .peers
            .values()
            .map(|peer| peer.deadline)
            .chain(self.echo_deadline)
            .min();
        match (self.next_heartbeat, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    // ---- plumbing ----

    fn publish(&mut self, channel: Channel, body: Body) {
        // While the bus is down there is nobody to tell; a reconnect announces everything.
        // After goodbye, this instance stays silent.
        if !self.connected || self.left {
            return;
        }
        let payload = Envelope {
            v: wire::WIRE_VERSION,
            from: self.config.instance,
            body,
        }
        .encode();
        self.out.push_back(Output::Publish { channel, payload });
    }

    fn snapshot(&self) -> Body {
        Body::Snapshot {
            seq: self.seq,
            sessions: self
                .local
                .iter()
                .map(|(session, user)| (*session, user.clone()))
                .collect(),
            rooms: self.local_rooms.iter().cloned().collect(),
        }
    }

    /// Asks `instance` for a snapshot, at most once per heartbeat interval.
    fn ask_sync(&mut self, instance: InstanceId, now: Instant) {
        let heartbeat = self.config.heartbeat;
        let Some(peer) = self.peers.get_mut(&instance) else {
            return;
        };
        if peer.sync_asked.is_some_and(|at| now < at + heartbeat) {
            return;
        }
        peer.sync_asked = Some(now);
        self.publish(Channel::Instance(instance), Body::Sync);
    }

    /// Whether a presence change numbered `seq` of `instance` is to be applied: not when it is
    /// older than what is known. A gap (one was missed) asks for a snapshot, and the change is
    /// applied meanwhile.
    fn in_sequence(&mut self, instance: InstanceId, seq: u64, now: Instant) -> bool {
        let Some(peer) = self.peers.get_mut(&instance) else {
            return false;
        };
        match peer.seq {
            Some(known) if seq <= known => false,
            Some(known) if seq == known + 1 => {
                peer.seq = Some(seq);
                true
            }
            _ => {
                peer.seq = None;
                self.ask_sync(instance, now);
                true
            }
        }
    }

    fn remote_opened(&mut self, instance: InstanceId, session: SessionId, user: UserId) {
        if let Some(peer) = self.peers.get_mut(&instance) {
            peer.sessions.insert(session, user.clone());
        }
        self.out.push_back(Output::Hub(ToHub::RemoteOpened {
            session: RemoteSession { instance, session },
            user,
        }));
    }

    fn remote_closed(&mut self, instance: InstanceId, session: SessionId) {
        if let Some(peer) = self.peers.get_mut(&instance) {
            peer.sessions.remove(&session);
            // The hub drops a closed session's rooms with it.
            peer.rooms.retain(|(s, _)| *s != session);
        }
        self.out
            .push_back(Output::Hub(ToHub::RemoteClosed(RemoteSession {
                instance,
                session,
            })));
    }

    fn remote_room(
        &mut self,
        instance: InstanceId,
        session: SessionId,
        room: RoomId,
        joined: bool,
    ) {
        if let Some(peer) = self.peers.get_mut(&instance) {
            if joined {
                peer.rooms.insert((session, room.clone()));
            } else {
                peer.rooms.remove(&(session, room.clone()));
            }
        }
        self.out.push_back(Output::Hub(ToHub::RemoteRoom {
            session: RemoteSession { instance, session },
            room,
            joined,
        }));
    }

    /// Replaces what is known of `instance`'s sessions and their rooms.
    fn apply_snapshot(
        &mut self,
        instance: InstanceId,
        seq: u64,
        sessions: Vec<(SessionId, UserId)>,
        rooms: Vec<(SessionId, RoomId)>,
    ) {
        let Some(peer) = self.peers.get_mut(&instance) else {
            return;
        };
        if peer.seq.is_some_and(|known| seq < known) {
            return;
        }
        peer.seq = Some(seq);
        peer.sync_asked = None;
        let fresh: HashMap<SessionId, UserId> = sessions.into_iter().collect();
        let mut gone: Vec<SessionId> = peer
            .sessions
            .keys()
            .filter(|s| !fresh.contains_key(s))
            .copied()
            .collect();
        gone.sort_unstable();
        let mut new: Vec<(SessionId, UserId)> = fresh
            .iter()
            .filter(|(s, user)| peer.sessions.get(s) != Some(user))
            .map(|(s, user)| (*s, user.clone()))
            .collect();
        new.sort_unstable();
        // Rooms left by sessions that stay; those of closed sessions go with them.
        let fresh_rooms: HashSet<(SessionId, RoomId)> = rooms.into_iter().collect();
        let mut left: Vec<(SessionId, RoomId)> = peer
            .rooms
            .iter()
            .filter(|entry| !fresh_rooms.contains(*entry) && fresh.contains_key(&entry.0))
            .cloned()
            .collect();
        left.sort_unstable();
        let mut joined: Vec<(SessionId, RoomId)> = fresh_rooms
            .iter()
            .filter(|entry| !peer.rooms.contains(*entry) && fresh.contains_key(&entry.0))
            .cloned()
            .collect();
        joined.sort_unstable();
        for (session, room) in left {
            self.remote_room(instance, session, room, false);
        }
        for session in gone {
            self.remote_closed(instance, session);
        }
        for (session, user) in new {
            self.remote_opened(instance, session, user);
        }
        for (session, room) in joined {
            self.remote_room(instance, session, room, true);
        }
    }

    /// A message from the hub of `owner` for a local session.
    fn deliver(&mut self, owner: InstanceId, session: SessionId, message: ServerMessage) {
        // A session that closed meanwhile: its owner learns it from `Left`.
        if !self.local.contains_key(&session) {
            return;
        }
        match message {
            ServerMessage::Incoming { call, .. } => {
                self.proxies.insert((session, call), owner);
            }
            ServerMessage::Hangup { call, .. } => {
                self.proxies.remove(&(session, call));
            }
            _ => {}
        }
        self.out.push_back(Output::Session { session, message });
    }

    /// `instance` is gone: the hub ends its sessions' calls, and local sessions' legs in
    /// calls it owned end with `unavailable`.
    fn lose(&mut self, instance: InstanceId) {
        if self.peers.remove(&instance).is_none() {
            return;
        }
        self.out
            .push_back(Output::Hub(ToHub::InstanceLost(instance)));
        let mut orphans: Vec<(SessionId, CallId)> = self
            .proxies
            .iter()
            .filter(|(_, owner)| **owner == instance)
            .map(|(key, _)| *key)
            .collect();
        orphans.sort_unstable();
        for (session, call) in orphans {
            self.proxies.remove(&(session, call));
            self.out.push_back(Output::Session {
                session,
                message: ServerMessage::Hangup {
                    call,
                    reason: HangupReason::Unavailable,
                },
            });
        }
    }
}

#[cfg(test)]
mod tests;
