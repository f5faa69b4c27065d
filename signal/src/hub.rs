//! The hub: sessions, users with several sessions, rooms, and calls with their state machine.
//! A sans-IO state machine: no tasks, no sockets, no clock.
//!
//! ```text
//!            call ──► [offering] ── every callee leg gets `incoming`
//!                       │   ringing ──► caller gets `ringing`
//!                       │   hangup by a callee ──► that leg leaves; the last one ends the call
//!                       │   ring timeout ──► everyone gets hangup(no_answer)
//!                answer │   (first wins: the other legs get hangup(answered_elsewhere))
//!                       ▼
//!                   [answered] ── candidates flow both ways
//!                       │ hangup by either end, or its disconnect ──► the other gets hangup
//!                       ▼
//!                    [ended]  (the call is forgotten)
//! ```
//!
//! Each leg of a call ends at an [`Endpoint`]. Today every endpoint is a browser session;
//! a gateway to a PBX becomes another kind of endpoint that receives the same outputs, so the
//! call logic does not change when the far end is not a browser.
//!
//! Call order: after any `open_session`, `close_session`, `handle_message` or `handle_timeout`,
//! drain [`Hub::poll_output`] until it returns `None`, then re-arm the timer from
//! [`Hub::poll_timeout`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::protocol::{
    CallId, ClientMessage, ErrorCode, HangupReason, IceCandidate, RequestId, RoomId, ServerMessage,
    SessionId, Target, UserId,
};

/// The hub's limits and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Sessions one user may have at once.
    pub max_sessions_per_user: usize,
    /// Calls one session may take part in at once.
    pub max_calls_per_session: usize,
    /// Rooms one session may be in.
    pub max_rooms_per_session: usize,
    /// Sessions in one room; it bounds how many legs a call to a room forks into.
    pub max_room_members: usize,
    /// How long a call may ring unanswered.
    pub ring_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_sessions_per_user: 8,
            max_calls_per_session: 8,
            max_rooms_per_session: 8,
            max_room_members: 32,
            ring_timeout: Duration::from_secs(60),
        }
    }
}

/// Where one leg of a call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A WebSocket session.
    Session(SessionId),
}

/// What happened to calls, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEvent {
    /// A call started ringing.
    Started,
    /// A call was answered.
    Answered,
    /// A call ended.
    Ended(HangupReason),
}

/// What the hub asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `message` to `to`.
    Send {
        /// The recipient.
        to: Endpoint,
        /// The message.
        message: ServerMessage,
    },
    /// Count a call event.
    Event(CallEvent),
}

/// Why a session could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The user already has the maximum number of sessions.
    #[error("too many sessions for this user")]
    TooManySessions,
}

/// A refused request: the code and a message for people.
type Refusal = (ErrorCode, &'static str);

struct Session {
    user: UserId,
    calls: Vec<CallId>,
    rooms: Vec<RoomId>,
}

struct Leg {
    endpoint: Endpoint,
}

struct Call {
    caller: Leg,
    callees: Vec<Leg>,
    answered: bool,
    ring_deadline: Instant,
}

/// The state of all sessions and calls of one signal server.
pub struct Hub {
    config: HubConfig,
    sessions: HashMap<SessionId, Session>,
    users: HashMap<UserId, Vec<SessionId>>,
    rooms: HashMap<RoomId, Vec<SessionId>>,
    calls: HashMap<CallId, Call>,
    /// Ring deadlines of unanswered calls, earliest first.
    deadlines: BTreeSet<(Instant, CallId)>,
    outputs: VecDeque<Output>,
    rng: StdRng,
}

impl Hub {
    /// An empty hub; `seed` makes its session and call ids reproducible in tests.
    pub fn new(config: HubConfig, seed: u64) -> Self {
        Hub {
            config,
            sessions: HashMap::new(),
            users: HashMap::new(),
            rooms: HashMap::new(),
            calls: HashMap::new(),
            deadlines: BTreeSet::new(),
            outputs: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Sessions open now.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Calls ringing or answered now.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Opens a session for an authenticated user.
    pub fn open_session(&mut self, user: UserId, _now: Instant) -> Result<SessionId, OpenError> {
        let sessions = self.users.entry(user.clone()).or_default();
        if sessions.len() >= self.config.max_sessions_per_user {
            return Err(OpenError::TooManySessions);
        }
        let id = loop {
            // Random rather than sequential ids: they say nothing about how busy the server is.
            let candidate = SessionId(self.rng.random());
            if !self.sessions.contains_key(&candidate) {
                break candidate;
            }
        };
        sessions.push(id);
        self.sessions.insert(
            id,
            Session {
                user,
                calls: Vec::new(),
                rooms: Vec::new(),
            },
        );
        Ok(id)
    }

    /// Closes a session: its calls end for the other parties with `disconnected`.
    pub fn close_session(&mut self, session: SessionId, _now: Instant) {
        let Some(state) = self.sessions.get_mut(&session) else {
            return;
        };
        let calls = std::mem::take(&mut state.calls);
        let rooms = std::mem::take(&mut state.rooms);
        for call in calls {
            // The call may already be gone if an earlier one in this loop ended it.
            let _ = self.leave_call(call, Endpoint::Session(session), HangupReason::Disconnected);
        }
        for room in rooms {
            self.remove_from_room(&room, session);
        }
        if let Some(state) = self.sessions.remove(&session) {
            if let Some(sessions) = self.users.get_mut(&state.user) {
                sessions.retain(|s| *s != session);
                if sessions.is_empty() {
                    self.users.remove(&state.user);
                }
            }
        }
    }

    /// Handles one request from an open session; replies with `ack` when it has an `id`,
    /// and with `error` (echoing the `id`, if any) when it is refused.
    pub fn handle_message(
        &mut self,
        session: SessionId,
        id: Option<RequestId>,
        message: ClientMessage,
        now: Instant,
    ) {
        if !self.sessions.contains_key(&session) {
            return;
        }
        let result = match message {
            ClientMessage::Call { to, sdp } => self.call(session, to, sdp, now).map(Some),
            ClientMessage::Ringing { call } => self.ringing(session, call).map(|()| None),
            ClientMessage::Answer { call, sdp } => self.answer(session, call, sdp).map(|()| None),
            ClientMessage::Candidate { call, candidate } => {
                self.candidate(session, call, candidate).map(|()| None)
            }
            ClientMessage::Hangup { call, reason } => self
                .leave_call(call, Endpoint::Session(session), reason)
                .map(|()| None),
            ClientMessage::Join { room } => self.join(session, room).map(|()| None),
            ClientMessage::Leave { room } => self.leave_room(session, room).map(|()| None),
            ClientMessage::Hello { .. } | ClientMessage::RefreshIce | ClientMessage::Ping => {
                Err((ErrorCode::BadMessage, "not a call or room message"))
            }
        };
        let to = Endpoint::Session(session);
        match (result, id) {
            (Ok(call), Some(id)) => self.send(to, ServerMessage::Ack { id, call }),
            (Ok(_), None) => {}
            (Err((code, message)), id) => self.send(to, ServerMessage::error(id, code, message)),
        }
    }

    /// Ends calls whose ring timeout has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, call)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(state) = self.calls.get(&call) else {
                continue;
            };
            let everyone = std::iter::once(state.caller.endpoint)
                .chain(state.callees.iter().map(|leg| leg.endpoint))
                .collect();
            self.end_call(call, HangupReason::NoAnswer, everyone);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// The next thing to do, or `None` when there is nothing left.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn send(&mut self, to: Endpoint, message: ServerMessage) {
        self.outputs.push_back(Output::Send { to, message });
    }

    fn call(
        &mut self,
        session: SessionId,
        to: Target,
        sdp: String,
        now: Instant,
    ) -> Result<CallId, Refusal> {
        let caller = &self.sessions[&session];
        if caller.calls.len() >= self.config.max_calls_per_session {
            return Err((ErrorCode::TooManyCalls, "this session has too many calls"));
        }
        let from = caller.user.clone();
        let (targets, room): (Vec<SessionId>, _) = match to {
            Target::User(user) => {
                let targets: Vec<SessionId> = self
                    .users
                    .get(&user)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|s| *s != session)
                    .collect();
                if targets.is_empty() {
                    return Err((ErrorCode::UnknownUser, "no such user is connected"));
                }
                (targets, None)
            }
            Target::Room(room) => {
                if !caller.rooms.contains(&room) {
                    return Err((ErrorCode::UnknownRoom, "join the room before calling it"));
                }
                let targets: Vec<SessionId> = self.rooms[&room]
                    .iter()
                    .copied()
                    .filter(|s| *s != session)
                    .collect();
                if targets.is_empty() {
                    return Err((ErrorCode::UnknownRoom, "nobody else is in the room"));
                }
                (targets, Some(room))
            }
        };

        let id = loop {
            let candidate = CallId(self.rng.random());
            if !self.calls.contains_key(&candidate) {
                break candidate;
            }
        };
        let ring_deadline = now + self.config.ring_timeout;
        for endpoint in std::iter::once(session).chain(targets.iter().copied()) {
            if let Some(state) = self.sessions.get_mut(&endpoint) {
                state.calls.push(id);
            }
        }
        for &target in &targets {
            self.send(
                Endpoint::Session(target),
                ServerMessage::Incoming {
                    call: id,
                    from: from.clone(),
                    room: room.clone(),
                    sdp: sdp.clone(),
                },
            );
        }
        self.calls.insert(
            id,
            Call {
                caller: Leg {
                    endpoint: Endpoint::Session(session),
                },
                callees: targets
                    .into_iter()
                    .map(|s| Leg {
                        endpoint: Endpoint::Session(s),
                    })
                    .collect(),
                answered: false,
                ring_deadline,
            },
        );
        self.deadlines.insert((ring_deadline, id));
        self.outputs.push_back(Output::Event(CallEvent::Started));
        Ok(id)
    }

    /// The call and the index of `session`'s callee leg; refuses callers and strangers.
    fn callee_leg(&self, session: SessionId, call: CallId) -> Result<(&Call, usize), Refusal> {
        let endpoint = Endpoint::Session(session);
        let state = self
            .calls
            .get(&call)
            .ok_or((ErrorCode::UnknownCall, "no such call"))?;
        if state.caller.endpoint == endpoint {
            return Err((ErrorCode::InvalidState, "only a callee can do that"));
        }
        let index = state
            .callees
            .iter()
            .position(|leg| leg.endpoint == endpoint)
            // The same answer as for a call that does not exist: call ids cannot be probed.
            .ok_or((ErrorCode::UnknownCall, "no such call"))?;
        Ok((state, index))
    }

    fn ringing(&mut self, session: SessionId, call: CallId) -> Result<(), Refusal> {
        let (state, _) = self.callee_leg(session, call)?;
        if state.answered {
            return Err((ErrorCode::InvalidState, "the call is already answered"));
        }
        let caller = state.caller.endpoint;
        self.send(caller, ServerMessage::Ringing { call });
        Ok(())
    }

    fn answer(&mut self, session: SessionId, call: CallId, sdp: String) -> Result<(), Refusal> {
        let (state, index) = self.callee_leg(session, call)?;
        if state.answered {
            return Err((ErrorCode::InvalidState, "the call is already answered"));
        }
        let state = self
            .calls
            .get_mut(&call)
            .expect("callee_leg found the call");
        state.answered = true;
        let winner = state.callees.swap_remove(index);
        let losers: Vec<Endpoint> = state.callees.drain(..).map(|leg| leg.endpoint).collect();
        state.callees.push(winner);
        let caller = state.caller.endpoint;
        let deadline = (state.ring_deadline, call);
        self.deadlines.remove(&deadline);
        for loser in losers {
            self.detach(loser, call);
            self.send(
                loser,
                ServerMessage::Hangup {
                    call,
                    reason: HangupReason::AnsweredElsewhere,
                },
            );
        }
        self.send(caller, ServerMessage::Answer { call, sdp });
        self.outputs.push_back(Output::Event(CallEvent::Answered));
        Ok(())
    }

    fn candidate(
        &mut self,
        session: SessionId,
        call: CallId,
        candidate: Option<IceCandidate>,
    ) -> Result<(), Refusal> {
        let endpoint = Endpoint::Session(session);
        let state = self
            .calls
            .get(&call)
            .ok_or((ErrorCode::UnknownCall, "no such call"))?;
        // The caller's candidates go to every leg still ringing (each tries ICE once it has
        // the offer); a callee's go to the caller.
        let recipients: Vec<Endpoint> = if state.caller.endpoint == endpoint {
            state.callees.iter().map(|leg| leg.endpoint).collect()
        } else if state.callees.iter().any(|leg| leg.endpoint == endpoint) {
            vec![state.caller.endpoint]
        } else {
            return Err((ErrorCode::UnknownCall, "no such call"));
        };
        for to in recipients {
            self.send(
                to,
                ServerMessage::Candidate {
                    call,
                    candidate: candidate.clone(),
                },
            );
        }
        Ok(())
    }

    /// `endpoint` leaves `call`: a caller ends it for everyone; an answered callee ends it
    /// for the caller; a ringing callee only drops its leg, unless it was the last one.
    fn leave_call(
        &mut self,
        call: CallId,
        endpoint: Endpoint,
        reason: HangupReason,
    ) -> Result<(), Refusal> {
        let unknown = (ErrorCode::UnknownCall, "no such call");
        let state = self.calls.get_mut(&call).ok_or(unknown)?;
        if state.caller.endpoint == endpoint {
            let others = state.callees.iter().map(|leg| leg.endpoint).collect();
            self.end_call(call, reason, others);
            return Ok(());
        }
        let index = state
            .callees
            .iter()
            .position(|leg| leg.endpoint == endpoint)
            .ok_or(unknown)?;
        state.callees.swap_remove(index);
        let ends = state.answered || state.callees.is_empty();
        let caller = state.caller.endpoint;
        self.detach(endpoint, call);
        if ends {
            self.end_call(call, reason, vec![caller]);
        }
        Ok(())
    }

    /// Forgets `call`, telling `notify` that it ended.
    fn end_call(&mut self, call: CallId, reason: HangupReason, notify: Vec<Endpoint>) {
        let Some(state) = self.calls.remove(&call) else {
            return;
        };
        self.deadlines.remove(&(state.ring_deadline, call));
        for leg in std::iter::once(&state.caller).chain(&state.callees) {
            self.detach(leg.endpoint, call);
        }
        for to in notify {
            self.send(to, ServerMessage::Hangup { call, reason });
        }
        self.outputs
            .push_back(Output::Event(CallEvent::Ended(reason)));
    }

    /// Removes `call` from the endpoint's list of calls.
    fn detach(&mut self, endpoint: Endpoint, call: CallId) {
        let Endpoint::Session(session) = endpoint;
        if let Some(state) = self.sessions.get_mut(&session) {
            state.calls.retain(|c| *c != call);
        }
    }

    fn join(&mut self, session: SessionId, room: RoomId) -> Result<(), Refusal> {
        let state = self.sessions.get_mut(&session).expect("checked by caller");
        if state.rooms.contains(&room) {
            return Ok(());
        }
        if state.rooms.len() >= self.config.max_rooms_per_session {
            return Err((ErrorCode::TooManyRooms, "this session is in too many rooms"));
        }
        let members = self.rooms.entry(room.clone()).or_default();
        if members.len() >= self.config.max_room_members {
            return Err((ErrorCode::TooManyRooms, "the room is full"));
        }
        members.push(session);
        state.rooms.push(room);
        Ok(())
    }

    fn leave_room(&mut self, session: SessionId, room: RoomId) -> Result<(), Refusal> {
        let state = self.sessions.get_mut(&session).expect("checked by caller");
        let Some(index) = state.rooms.iter().position(|r| *r == room) else {
            return Err((ErrorCode::UnknownRoom, "this session is not in the room"));
        };
        state.rooms.swap_remove(index);
        self.remove_from_room(&room, session);
        Ok(())
    }

    fn remove_from_room(&mut self, room: &RoomId, session: SessionId) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.retain(|s| *s != session);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }
}

#[cfg(test)]
mod tests;
