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
//!                       │   offer by either end ──► the other gets `offer`, answers with
//!                       │   `answer`; one offer at a time (a crossing one gets `glare`)
//!                       │ hangup by either end, or its disconnect ──► the other gets hangup
//!                       ▼
//!                    [ended]  (the call is forgotten)
//! ```
//!
//! Each leg of a call ends at an [`Endpoint`]: a browser session, or the PBX (Asterisk) behind
//! the gateway. The PBX is one more participant: it gets the same [`ServerMessage`]s a browser
//! would (`answer`, `candidate`, `hangup`, `dtmf`) through [`Output::Send`], plus
//! [`Output::PbxCall`] to start a call to an extension and [`Output::PbxRequest`] for what only a
//! PBX can do (transfer, play); what the PBX says comes back through [`Hub::handle_pbx`]. The
//! call logic is the same whichever end is a browser.
//!
//! In a cluster (`redis-url`), a leg may also end at a session on another instance
//! ([`Endpoint::Remote`]): a call is owned by the instance where it started, whose hub runs
//! it; what the hub sends to a remote session goes out as [`Output::Send`] for the cluster core
//! to put on the bus, and what that session says comes back through
//! [`Hub::handle_remote_message`]. Which remote sessions exist is told by the cluster core
//! (`hub/remote.rs`: [`Hub::open_remote_session`], [`Hub::close_instance`], …).
//!
//! Call order: after any `open_session`, `close_session`, `handle_message`, `handle_pbx`,
//! `set_pbx_available` or `handle_timeout`, drain [`Hub::poll_output`] until it returns `None`,
//! then re-arm the timer from [`Hub::poll_timeout`].
//!
//! The API types are in `hub/types.rs`; here is the hub itself.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::protocol::{
    CallId, ClientMessage, Digits, ErrorCode, HangupReason, IceCandidate, RequestId, RoomId,
    ServerMessage, SessionId, Target, UserId,
};

mod remote;
mod types;

pub use types::{
    CallEvent, Endpoint, HubConfig, InstanceId, OpenError, Output, PbxEvent, PbxRequest,
    RemoteSession,
};

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
    /// Who made the renegotiation offer in progress, if one is.
    offer_from: Option<Endpoint>,
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
    /// Whether the gateway can reach the PBX now.
    pbx_available: bool,
    /// Calls with a PBX leg, to end when the PBX goes away.
    pbx_calls: Vec<CallId>,
    /// Sessions on other instances of the cluster, as the cluster core reports them.
    remote: HashMap<RemoteSession, remote::RemotePeer>,
    /// The remote sessions of each user.
    remote_users: HashMap<UserId, Vec<RemoteSession>>,
    /// The remote members of each room.
    remote_rooms: HashMap<RoomId, Vec<RemoteSession>>,
    /// Set while the cluster's other instances cannot be reached: a call to a user with no
    /// session here is then `cluster_unavailable` rather than `unknown_user`.
    cluster_unreachable: bool,
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
            pbx_available: false,
            pbx_calls: Vec::new(),
            remote: HashMap::new(),
            remote_users: HashMap::new(),
            remote_rooms: HashMap::new(),
            cluster_unreachable: false,
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
        let me = Endpoint::Session(session);
        let result = match message {
            ClientMessage::Call { to, sdp } => self.call(session, to, sdp, now).map(Some),
            ClientMessage::Join { room } => self.join(session, room).map(|()| None),
            ClientMessage::Leave { room } => self.leave_room(session, room).map(|()| None),
            other => self.in_call(me, other).map(|()| None),
        };
        self.reply(me, id, result);
    }

    /// What a session says within a call it is part of, whichever instance it is on.
    fn in_call(&mut self, me: Endpoint, message: ClientMessage) -> Result<(), Refusal> {
        match message {
            ClientMessage::Ringing { call } => self.ringing(me, call),
            ClientMessage::Answer { call, sdp } => self.answer(me, call, sdp),
            ClientMessage::Offer { call, sdp } => self.offer(me, call, sdp),
            ClientMessage::Candidate { call, candidate } => self.candidate(me, call, candidate),
            ClientMessage::Hangup { call, reason } => self.leave_call(call, me, reason),
            ClientMessage::Dtmf { call, digits } => self.dtmf(me, call, digits),
            ClientMessage::Transfer { call, to } => {
                self.pbx_request(me, call, PbxRequest::Transfer(to))
            }
            ClientMessage::Play { call, media } => {
                self.pbx_request(me, call, PbxRequest::Play(media))
            }
            ClientMessage::Call { .. }
            | ClientMessage::Join { .. }
            | ClientMessage::Leave { .. }
            | ClientMessage::Hello { .. }
            | ClientMessage::RefreshIce
            | ClientMessage::Ping => Err((ErrorCode::BadMessage, "not a call or room message")),
        }
    }

    /// The `ack` or `error` for a request with `id`; only an error when there is no `id`.
    fn reply(
        &mut self,
        me: Endpoint,
        id: Option<RequestId>,
        result: Result<Option<CallId>, Refusal>,
    ) {
        match (result, id) {
            (Ok(call), Some(id)) => self.send(me, ServerMessage::Ack { id, call }),
            (Ok(_), None) => {}
            (Err((code, message)), id) => self.send(me, ServerMessage::error(id, code, message)),
        }
    }

    /// Handles what the PBX says; `Call` returns the new call's id. A refusal is for the
    /// gateway to turn into a SIP or ARI answer (e.g. 480 for a user who is not connected).
    pub fn handle_pbx(
        &mut self,
        event: PbxEvent,
        now: Instant,
    ) -> Result<Option<CallId>, (ErrorCode, &'static str)> {
        if !self.config.pbx {
            return Err((ErrorCode::PbxUnavailable, "no PBX is configured"));
        }
        let me = Endpoint::Pbx;
        match event {
            PbxEvent::Call { from, to, sdp } => {
                let targets = self.user_sessions(&to, None)?;
                let id = self.start_call(me, from, None, targets, sdp, now);
                Ok(Some(id))
            }
            PbxEvent::Ringing { call } => self.ringing(me, call).map(|()| None),
            PbxEvent::Answer { call, sdp } => self.answer(me, call, sdp).map(|()| None),
            PbxEvent::Hangup { call, reason } => self.leave_call(call, me, reason).map(|()| None),
            PbxEvent::Offer { call, sdp } => {
                let result = self.offer(me, call, sdp);
                if result.is_err() {
                    // The gateway holds a re-INVITE open: it needs an answer either way.
                    self.send(me, ServerMessage::OfferFailed { call });
                }
                result.map(|()| None)
            }
            PbxEvent::OfferFailed { call } => self.offer_failed(call).map(|()| None),
            PbxEvent::Dtmf { call, digits } => self.dtmf(me, call, digits).map(|()| None),
        }
    }

    /// Tells the hub whether the gateway can reach the PBX. When it goes away, every call
    /// with it ends for the browsers with `unavailable`.
    pub fn set_pbx_available(&mut self, available: bool, _now: Instant) {
        self.pbx_available = available;
        if available {
            return;
        }
        for call in std::mem::take(&mut self.pbx_calls) {
            let _ = self.leave_call(call, Endpoint::Pbx, HangupReason::Unavailable);
        }
    }

    /// The PBX takes no new calls for now (its control connection is down) but its calls go
    /// on: calls to extensions are refused with `pbx_unavailable` until
    /// [`Hub::set_pbx_available`] says it is back.
    pub fn pause_pbx(&mut self, _now: Instant) {
        self.pbx_available = false;
    }

    /// Calls that have a PBX leg now.
    pub fn pbx_call_count(&self) -> usize {
        self.pbx_calls.len()
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
        let me = Endpoint::Session(session);
        let (targets, room) = match to {
            Target::User(user) => (self.user_sessions(&user, Some(session))?, None),
            Target::Room(room) => {
                if !caller.rooms.contains(&room) {
                    return Err((ErrorCode::UnknownRoom, "join the room before calling it"));
                }
                let remote = self.remote_rooms.get(&room).into_iter().flatten();
                let targets: Vec<Endpoint> = self.rooms[&room]
                    .iter()
                    .filter(|s| **s != session)
                    .map(|s| Endpoint::Session(*s))
                    .chain(remote.map(|r| Endpoint::Remote(*r)))
                    .collect();
                if targets.is_empty() {
                    return Err((ErrorCode::UnknownRoom, "nobody else is in the room"));
                }
                (targets, Some(room))
            }
            Target::Extension(extension) => {
                if !self.config.pbx || !self.pbx_available {
                    return Err((ErrorCode::PbxUnavailable, "the PBX cannot be reached"));
                }
                let id = self.start_call(
                    me,
                    from.clone(),
                    None,
                    vec![Endpoint::Pbx],
                    sdp.clone(),
                    now,
                );
                self.outputs.push_back(Output::PbxCall {
                    call: id,
                    from,
                    extension,
                    sdp,
                });
                return Ok(id);
            }
        };
        Ok(self.start_call(me, from, room, targets, sdp, now))
    }

    /// The sessions of `user` other than `except`, here and on the cluster's other instances;
    /// `unknown_user` when there are none (`cluster_unavailable` when the other instances
    /// cannot be asked).
    fn user_sessions(
        &self,
        user: &UserId,
        except: Option<SessionId>,
    ) -> Result<Vec<Endpoint>, Refusal> {
        let local = self
            .users
            .get(user)
            .into_iter()
            .flatten()
            .filter(|s| Some(**s) != except)
            .map(|s| Endpoint::Session(*s));
        let remote = self
            .remote_users
            .get(user)
            .into_iter()
            .flatten()
            .map(|r| Endpoint::Remote(*r));
        let targets: Vec<Endpoint> = local.chain(remote).collect();
        if targets.is_empty() {
            if self.cluster_unreachable {
                return Err((
                    ErrorCode::ClusterUnavailable,
                    "the user is not connected here and the other instances cannot be reached",
                ));
            }
            return Err((ErrorCode::UnknownUser, "no such user is connected"));
        }
        Ok(targets)
    }

    /// Creates the call and rings every browser among `targets` (the PBX is rung by the
    /// caller of this function, which knows the extension).
    fn start_call(
        &mut self,
        caller: Endpoint,
        from: UserId,
        room: Option<RoomId>,
        targets: Vec<Endpoint>,
        sdp: String,
        now: Instant,
    ) -> CallId {
        let id = loop {
            let candidate = CallId(self.rng.random());
            if !self.calls.contains_key(&candidate) {
                break candidate;
            }
        };
        let ring_deadline = now + self.config.ring_timeout;
        for &endpoint in std::iter::once(&caller).chain(&targets) {
            self.attach(endpoint, id);
        }
        for &target in &targets {
            if target == Endpoint::Pbx {
                continue;
            }
            self.send(
                target,
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
                caller: Leg { endpoint: caller },
                callees: targets
                    .into_iter()
                    .map(|endpoint| Leg { endpoint })
                    .collect(),
                answered: false,
                ring_deadline,
                offer_from: None,
            },
        );
        self.deadlines.insert((ring_deadline, id));
        self.outputs.push_back(Output::Event(CallEvent::Started));
        id
    }

    /// The call and the index of `endpoint`'s callee leg; refuses callers and strangers.
    fn callee_leg(&self, endpoint: Endpoint, call: CallId) -> Result<(&Call, usize), Refusal> {
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

    fn ringing(&mut self, endpoint: Endpoint, call: CallId) -> Result<(), Refusal> {
        let (state, _) = self.callee_leg(endpoint, call)?;
        if state.answered {
            return Err((ErrorCode::InvalidState, "the call is already answered"));
        }
        let caller = state.caller.endpoint;
        self.send(caller, ServerMessage::Ringing { call });
        Ok(())
    }

    fn answer(&mut self, endpoint: Endpoint, call: CallId, sdp: String) -> Result<(), Refusal> {
        if self.calls.get(&call).is_some_and(|c| c.answered) {
            return self.answer_offer(endpoint, call, sdp);
        }
        let (state, index) = self.callee_leg(endpoint, call)?;
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

    /// A new offer in an answered call, for the other end.
    fn offer(&mut self, endpoint: Endpoint, call: CallId, sdp: String) -> Result<(), Refusal> {
        let peer = self.peer_in_answered_call(endpoint, call)?;
        let state = self
            .calls
            .get_mut(&call)
            .expect("peer_in_answered_call found it");
        match state.offer_from {
            Some(from) if from == endpoint => {
                return Err((ErrorCode::InvalidState, "an offer of yours is in progress"));
            }
            Some(_) => return Err((ErrorCode::Glare, "the other end's offer goes first")),
            None => state.offer_from = Some(endpoint),
        }
        self.send(peer, ServerMessage::Offer { call, sdp });
        Ok(())
    }

    /// The answer to the other end's renegotiation offer.
    fn answer_offer(
        &mut self,
        endpoint: Endpoint,
        call: CallId,
        sdp: String,
    ) -> Result<(), Refusal> {
        let peer = self.peer_in_answered_call(endpoint, call)?;
        let state = self
            .calls
            .get_mut(&call)
            .expect("peer_in_answered_call found it");
        if state.offer_from != Some(peer) {
            return Err((ErrorCode::InvalidState, "there is no offer to answer"));
        }
        state.offer_from = None;
        self.send(peer, ServerMessage::Answer { call, sdp });
        Ok(())
    }

    /// The offer in progress failed at the PBX: its maker goes back to the previous session.
    fn offer_failed(&mut self, call: CallId) -> Result<(), Refusal> {
        let state = self
            .calls
            .get_mut(&call)
            .ok_or((ErrorCode::UnknownCall, "no such call"))?;
        let Some(from) = state.offer_from.take() else {
            return Err((ErrorCode::InvalidState, "there is no offer in progress"));
        };
        if from != Endpoint::Pbx {
            self.send(from, ServerMessage::OfferFailed { call });
        }
        Ok(())
    }

    fn candidate(
        &mut self,
        endpoint: Endpoint,
        call: CallId,
        candidate: Option<IceCandidate>,
    ) -> Result<(), Refusal> {
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

    /// The other party of an answered call, as seen from `endpoint`.
    fn peer_in_answered_call(&self, endpoint: Endpoint, call: CallId) -> Result<Endpoint, Refusal> {
        let unknown = (ErrorCode::UnknownCall, "no such call");
        let state = self.calls.get(&call).ok_or(unknown)?;
        let peer = if state.caller.endpoint == endpoint {
            state
                .callees
                .first()
                .map(|leg| leg.endpoint)
                .ok_or(unknown)?
        } else if state.callees.iter().any(|leg| leg.endpoint == endpoint) {
            state.caller.endpoint
        } else {
            return Err(unknown);
        };
        if !state.answered {
            return Err((ErrorCode::InvalidState, "the call is not answered yet"));
        }
        Ok(peer)
    }

    fn dtmf(&mut self, endpoint: Endpoint, call: CallId, digits: Digits) -> Result<(), Refusal> {
        let peer = self.peer_in_answered_call(endpoint, call)?;
        self.send(peer, ServerMessage::Dtmf { call, digits });
        Ok(())
    }

    fn pbx_request(
        &mut self,
        endpoint: Endpoint,
        call: CallId,
        request: PbxRequest,
    ) -> Result<(), Refusal> {
        if self.peer_in_answered_call(endpoint, call)? != Endpoint::Pbx {
            return Err((
                ErrorCode::InvalidState,
                "only a call with the PBX can do that",
            ));
        }
        self.outputs.push_back(Output::PbxRequest { call, request });
        Ok(())
    }

    /// Adds `call` to the endpoint's list of calls.
    fn attach(&mut self, endpoint: Endpoint, call: CallId) {
        match endpoint {
            Endpoint::Session(session) => {
                if let Some(state) = self.sessions.get_mut(&session) {
                    state.calls.push(call);
                }
            }
            Endpoint::Pbx => self.pbx_calls.push(call),
            Endpoint::Remote(remote) => {
                if let Some(state) = self.remote.get_mut(&remote) {
                    state.calls.push(call);
                }
            }
        }
    }

    /// Removes `call` from the endpoint's list of calls.
    fn detach(&mut self, endpoint: Endpoint, call: CallId) {
        match endpoint {
            Endpoint::Session(session) => {
                if let Some(state) = self.sessions.get_mut(&session) {
                    state.calls.retain(|c| *c != call);
                }
            }
            Endpoint::Pbx => self.pbx_calls.retain(|c| *c != call),
            Endpoint::Remote(remote) => {
                if let Some(state) = self.remote.get_mut(&remote) {
                    state.calls.retain(|c| *c != call);
                }
            }
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
        let remote_members = self.remote_rooms.get(&room).map_or(0, Vec::len);
        let members = self.rooms.entry(room.clone()).or_default();
        if members.len() + remote_members >= self.config.max_room_members {
            if members.is_empty() {
                self.rooms.remove(&room);
            }
            return Err((ErrorCode::TooManyRooms, "the room is full"));
        }
        members.push(session);
        state.rooms.push(room.clone());
        self.outputs.push_back(Output::Membership {
            session,
            room,
            joined: true,
        });
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
        self.outputs.push_back(Output::Membership {
            session,
            room: room.clone(),
            joined: false,
        });
    }
}

#[cfg(test)]
mod tests;
