//! What every hub test shares: the [`World`] (a hub on a fake clock and what it said, split by
//! recipient), the messages tests expect, and helpers that drive calls to users and extensions.
//!
//! Its imports are re-exported, so a test module needs only `use super::harness::*;`.

pub(super) use std::time::Duration;

pub(super) use super::super::*;
pub(super) use crate::protocol::{Extension, Media};

pub(super) const SEED: u64 = 7;

/// A hub, a fake clock, and what the hub said, split by recipient.
pub(super) struct World {
    pub(super) hub: Hub,
    pub(super) now: Instant,
    pub(super) sent: Vec<(SessionId, ServerMessage)>,
    /// What the hub addressed to the PBX: `Send`s to it, `PbxCall`s and `PbxRequest`s.
    pub(super) pbx: Vec<Output>,
    pub(super) events: Vec<CallEvent>,
    /// Room memberships the hub reported for the cluster.
    pub(super) rooms: Vec<(SessionId, RoomId, bool)>,
}

impl World {
    pub(super) fn new() -> Self {
        Self::with(HubConfig::default())
    }

    pub(super) fn with(config: HubConfig) -> Self {
        World {
            hub: Hub::new(config, SEED),
            now: Instant::now(),
            sent: Vec::new(),
            pbx: Vec::new(),
            events: Vec::new(),
            rooms: Vec::new(),
        }
    }

    pub(super) fn open(&mut self, user: &str) -> SessionId {
        let session = self
            .hub
            .open_session(UserId::new(user).unwrap(), self.now)
            .unwrap();
        self.drain();
        session
    }

    pub(super) fn drain(&mut self) {
        while let Some(output) = self.hub.poll_output() {
            match output {
                Output::Send {
                    to: Endpoint::Session(to),
                    message,
                } => self.sent.push((to, message)),
                Output::Event(event) => self.events.push(event),
                // For the cluster only; hub/tests/remote.rs reads them from `rooms`.
                Output::Membership {
                    session,
                    room,
                    joined,
                } => self.rooms.push((session, room, joined)),
                other => self.pbx.push(other),
            }
        }
    }

    pub(super) fn request(&mut self, session: SessionId, id: u64, message: ClientMessage) {
        self.hub
            .handle_message(session, Some(RequestId::Number(id)), message, self.now);
        self.drain();
    }

    /// The PBX answers `call` with `sdp`.
    pub(super) fn pbx_answer(&mut self, call: CallId, sdp: &str) {
        self.hub
            .handle_pbx(
                PbxEvent::Answer {
                    call,
                    sdp: sdp.into(),
                },
                self.now,
            )
            .unwrap();
    }

    /// Everything sent since the last call, in order.
    pub(super) fn take(&mut self) -> Vec<(SessionId, ServerMessage)> {
        std::mem::take(&mut self.sent)
    }

    /// Starts a call from `caller` to `user` and returns its id, checking the ack.
    pub(super) fn call_user(&mut self, caller: SessionId, user: &str) -> CallId {
        self.request(
            caller,
            1,
            ClientMessage::Call {
                to: Target::User(UserId::new(user).unwrap()),
                sdp: "offer".into(),
            },
        );
        let sent = self.take();
        let call = sent
            .iter()
            .find_map(|(to, message)| match message {
                ServerMessage::Ack {
                    id: RequestId::Number(1),
                    call: Some(call),
                } if *to == caller => Some(*call),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no ack with a call id in {sent:?}"));
        self.sent = sent;
        call
    }
}

pub(super) fn ack(id: u64) -> ServerMessage {
    ServerMessage::Ack {
        id: RequestId::Number(id),
        call: None,
    }
}

pub(super) fn error_code(message: &ServerMessage) -> Option<ErrorCode> {
    match message {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    }
}

pub(super) fn incoming(call: CallId, from: &str) -> ServerMessage {
    ServerMessage::Incoming {
        call,
        from: UserId::new(from).unwrap(),
        room: None,
        sdp: "offer".into(),
    }
}

pub(super) fn hangup(call: CallId, reason: HangupReason) -> ServerMessage {
    ServerMessage::Hangup { call, reason }
}

/// A world whose hub has a PBX gateway that can reach the PBX.
pub(super) fn with_pbx() -> World {
    let mut world = World::with(HubConfig {
        pbx: true,
        ..HubConfig::default()
    });
    world.hub.set_pbx_available(true, world.now);
    world
}

pub(super) fn extension(ext: &str) -> Target {
    Target::Extension(Extension::new(ext).unwrap())
}

/// Calls extension `ext` from `caller`; returns the call id from the ack.
pub(super) fn call_extension(world: &mut World, caller: SessionId, ext: &str) -> CallId {
    world.request(
        caller,
        1,
        ClientMessage::Call {
            to: extension(ext),
            sdp: "offer".into(),
        },
    );
    let sent = world.take();
    let [(
        to,
        ServerMessage::Ack {
            call: Some(call), ..
        },
    )] = &sent[..]
    else {
        panic!("expected only an ack, got {sent:?}");
    };
    assert_eq!(*to, caller);
    *call
}

/// Answers `call` (made by `call_user`) from `callee` and forgets what that sent.
pub(super) fn answer_call(world: &mut World, callee: SessionId, call: CallId) {
    world.request(
        callee,
        9,
        ClientMessage::Answer {
            call,
            sdp: "answer".into(),
        },
    );
    world.take();
}

pub(super) fn offer(call: CallId, sdp: &str) -> ClientMessage {
    ClientMessage::Offer {
        call,
        sdp: sdp.into(),
    }
}
