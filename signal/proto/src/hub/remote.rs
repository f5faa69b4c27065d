//! The hub's view of the cluster: sessions connected to other instances, which calls here can
//! ring, and what those sessions say in calls owned here. The cluster core
//! (`crate::cluster`) decides which remote sessions exist and when an instance is gone; the
//! hub only keeps them, like its own sessions, so that a call to a user rings every session of
//! theirs wherever it is connected.

use std::time::Instant;

use super::{Endpoint, Hub, InstanceId, RemoteSession};
use crate::protocol::{CallId, ClientMessage, HangupReason, RequestId, RoomId, UserId};

/// A session on another instance, as far as this hub cares.
pub(super) struct RemotePeer {
    user: UserId,
    /// Calls owned here that it is a leg of.
    pub(super) calls: Vec<CallId>,
    /// Rooms it is in.
    rooms: Vec<RoomId>,
}

impl Hub {
    /// A session of `user` is connected to another instance: calls to `user` ring it too.
    /// Telling it twice is harmless.
    pub fn open_remote_session(&mut self, session: RemoteSession, user: UserId) {
        if let Some(known) = self.remote.get(&session) {
            if known.user == user {
                return;
            }
            // Session ids are unique per instance; a new user under a known id means the
            // old session's end was missed, so it ends now.
            self.close_remote_session(session, HangupReason::Disconnected);
        }
        self.remote_users
            .entry(user.clone())
            .or_default()
            .push(session);
        self.remote.insert(
            session,
            RemotePeer {
                user,
                calls: Vec::new(),
                rooms: Vec::new(),
            },
        );
    }

    /// A remote session is gone: its calls here end for the other parties with `reason`
    /// (`disconnected` when it closed, `unavailable` when its instance was lost).
    pub fn close_remote_session(&mut self, session: RemoteSession, reason: HangupReason) {
        let Some(peer) = self.remote.get_mut(&session) else {
            return;
        };
        let calls = std::mem::take(&mut peer.calls);
        for call in calls {
            // An earlier call in this loop may have ended it already.
            let _ = self.leave_call(call, Endpoint::Remote(session), reason);
        }
        if let Some(peer) = self.remote.remove(&session) {
            for room in &peer.rooms {
                self.remove_remote_member(room, session);
            }
            if let Some(sessions) = self.remote_users.get_mut(&peer.user) {
                sessions.retain(|s| *s != session);
                if sessions.is_empty() {
                    self.remote_users.remove(&peer.user);
                }
            }
        }
    }

    /// Every session of `instance` is gone (it stopped, died, or cannot be reached): their
    /// calls here end with `reason`.
    pub fn close_instance(&mut self, instance: InstanceId, reason: HangupReason) {
        let mut sessions: Vec<RemoteSession> = self
            .remote
            .keys()
            .filter(|s| s.instance == instance)
            .copied()
            .collect();
        // In a fixed order, so that what the hub says does not depend on hashing.
        sessions.sort_unstable();
        for session in sessions {
            self.close_remote_session(session, reason);
        }
    }

    /// A remote session joined `room`: calls to the room from here ring it too. Rooms have no
    /// member limit across instances beyond each instance's own check when joining.
    pub fn join_remote_room(&mut self, session: RemoteSession, room: RoomId) {
        let Some(peer) = self.remote.get_mut(&session) else {
            return;
        };
        if peer.rooms.contains(&room) {
            return;
        }
        peer.rooms.push(room.clone());
        self.remote_rooms.entry(room).or_default().push(session);
    }

    /// A remote session left `room`.
    pub fn leave_remote_room(&mut self, session: RemoteSession, room: &RoomId) {
        let Some(peer) = self.remote.get_mut(&session) else {
            return;
        };
        let before = peer.rooms.len();
        peer.rooms.retain(|r| r != room);
        if peer.rooms.len() != before {
            self.remove_remote_member(room, session);
        }
    }

    fn remove_remote_member(&mut self, room: &RoomId, session: RemoteSession) {
        if let Some(members) = self.remote_rooms.get_mut(room) {
            members.retain(|s| *s != session);
            if members.is_empty() {
                self.remote_rooms.remove(room);
            }
        }
    }

    /// Whether the cluster's other instances can be reached now. While they cannot, a call to
    /// a user with no session here is refused with `cluster_unavailable`.
    pub fn set_cluster_reachable(&mut self, reachable: bool) {
        self.cluster_unreachable = !reachable;
    }

    /// Sessions on other instances known now.
    pub fn remote_session_count(&self) -> usize {
        self.remote.len()
    }

    /// A request of a remote session about a call owned here (`ringing`, `answer`, `offer`,
    /// `candidate`, `hangup`, `dtmf`, `transfer`, `play`); the `ack` or `error` goes back to
    /// it like any message. Requests of sessions this hub does not know are dropped: their
    /// instance learns of the call only from this hub, which rings only sessions it knows.
    pub fn handle_remote_message(
        &mut self,
        from: RemoteSession,
        id: Option<RequestId>,
        message: ClientMessage,
        _now: Instant,
    ) {
        if !self.remote.contains_key(&from) {
            return;
        }
        let me = Endpoint::Remote(from);
        let result = self.in_call(me, message).map(|()| None);
        self.reply(me, id, result);
    }
}
