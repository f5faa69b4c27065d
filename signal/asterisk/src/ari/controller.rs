//! Call control through ARI, as a sans-IO state machine: which ARI channel belongs to which
//! icegate call, what to do when one lands in the Stasis application, and the events-connection
//! lifecycle with reconnects and reconciliation.
//!
//! ```text
//!  browser call:  expect_call(key, SIP Call-ID) ─ StasisStart(protocol_id = Call-ID) ─► Linked
//!                   routing Answer:   ring, answer ─► Answered (when the channel is Up)
//!                   routing Continue: continue(context, exten) ─► StasisEnd ─► Released
//!                   routing Dial:     ring + originate peer ─► peer Ringing ─► Ringing
//!                                     peer StasisStart ─► answer + bridge both ─► Answered
//!  call to a browser: originate(key) ─► Linked (its protocol_id is the Call-ID of the INVITE
//!                   Asterisk sends to icegate's SIP UA) ─► Ringing ─► Answered
//!  any call:      hangup / send_dtmf / play / transfer ─► REST requests; a transfer first
//!                   stops the call's playbacks (a tone plays until stopped, and Asterisk runs
//!                   the `continue` only after it)
//!  released call: its channel's StasisStart again (a transfer to an extension that runs
//!                   Stasis) ─► Linked again under the same key, routed as a new one
//!                 ends with exactly one HungUp{cause} or Released, after which nothing of it
//!                 is left here and every peer channel and bridge it made is deleted in Asterisk
//! ```
//!
//! The events WebSocket: [`Output::Connect`] asks the shell to open it at
//! [`Controller::events_path`]; the shell reports [`Controller::connected`] or
//! [`Controller::connection_lost`]. A loss ends the calls that were still being set up (their
//! progress arrives only as events) and keeps answered calls for `reconnect_grace`; after the
//! reconnect, `GET /channels` tells which of them still exist: the gone ones end, the others are
//! subscribed again. Reconnect attempts follow [`crate::ari::backoff::reconnect_delay`].
//!
//! Call order: after `new` and after any `handle_*`, `connected`, `connection_lost` or command,
//! drain [`Controller::poll_output`] until `None`, then re-arm the timer from
//! [`Controller::poll_timeout`] and call [`Controller::handle_timeout`] when it fires. The shell
//! must call `expect_call` before its INVITE leaves, so the StasisStart can never come first in
//! practice; if it does, the channel waits `claim_timeout` to be claimed, then is hung up.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ari::backoff::reconnect_delay;
use crate::ari::events::{self, Channel, ChannelState, Event, EventError};
use crate::ari::rest::{HangupReason, Originate, Request, RestError};

mod handlers;
mod results;
mod types;

pub use types::{
    CallEvent, CallKey, CommandError, ControllerConfig, OriginateArgs, Output, RequestId, Routing,
};

/// Playbacks remembered per call; a browser playing more at once than this is not stopped
/// from them all on a transfer (Asterisk queues them, so the first ones finish first anyway).
const MAX_PLAYBACKS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    /// The channel of the browser's SIP dialog.
    Primary,
    /// The channel dialed for it (routing `Dial`).
    Peer,
}

#[derive(Debug, Default)]
struct Call {
    /// The primary channel was originated here, so its events continue after StasisEnd.
    originated: bool,
    /// The SIP Call-ID a browser's call is expected with.
    protocol_id: Option<String>,
    primary: Option<String>,
    peer: Option<String>,
    bridge: Option<String>,
    in_stasis: bool,
    /// The primary channel's last state reported to the call layer.
    state: Option<ChannelState>,
    ringing: bool,
    answered: bool,
    hangup_requested: bool,
    cause: Option<i32>,
    hanging_up: bool,
    continuing: bool,
    /// Playbacks started on the primary channel and not known to be finished.
    playbacks: Vec<String>,
    /// Kept through an events-connection loss, not yet reconciled.
    stale: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Ring { then_answer: bool },
    Answer,
    Hangup,
    Dtmf,
    Play,
    Continue { transfer: bool },
    Originate,
    DialPeer,
    CreateBridge,
    AddChannels,
}

#[derive(Debug, Clone)]
enum Purpose {
    Call(CallKey, Step),
    DestroyBridge(String),
    Reconcile,
    /// Requests whose outcome changes nothing here (hanging up leftovers, subscriptions).
    BestEffort,
}

struct Pending {
    deadline: Instant,
    request: Request,
    purpose: Purpose,
}

struct Unclaimed {
    channel: Channel,
    args: Vec<String>,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Connecting { attempt: u32 },
    Connected,
    Waiting { attempt: u32, retry_at: Instant },
}

/// The ARI side of icegate-signal.
pub struct Controller {
    config: ControllerConfig,
    calls: BTreeMap<CallKey, Call>,
    channels: HashMap<String, (CallKey, Leg)>,
    expected: HashMap<String, CallKey>,
    unclaimed: BTreeMap<String, Unclaimed>,
    /// Channels of calls released into the dialplan whose SIP dialog still goes on: one may
    /// come back into the application (a transfer to an extension that runs `Stasis()`), and
    /// is then the same call again, not a stranger to hang up. Gone when the call is forgotten.
    released: HashMap<String, CallKey>,
    bridges: BTreeSet<String>,
    pending: BTreeMap<RequestId, Pending>,
    outputs: VecDeque<Output>,
    link: Link,
    grace_deadline: Option<Instant>,
    next_request: u64,
    next_object: u64,
    prefix: String,
}

impl Controller {
    /// A controller that first asks to connect; `seed` makes the ids it gives channels and
    /// bridges reproducible in tests (and distinct between runs of the server).
    pub fn new(config: ControllerConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let prefix = format!("icegate-{:08x}", rng.random::<u32>());
        Controller {
            config,
            calls: BTreeMap::new(),
            channels: HashMap::new(),
            expected: HashMap::new(),
            unclaimed: BTreeMap::new(),
            released: HashMap::new(),
            bridges: BTreeSet::new(),
            pending: BTreeMap::new(),
            outputs: VecDeque::from([Output::Connect]),
            link: Link::Connecting { attempt: 0 },
            grace_deadline: None,
            next_request: 1,
            next_object: 1,
            prefix,
        }
    }

    /// Path and query of the events WebSocket; the shell adds credentials.
    pub fn events_path(&self) -> String {
        format!("/ari/events?app={}&subscribeAll=false", self.config.app)
    }

    /// Calls known now.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// ARI channels tracked now (of calls, and unclaimed ones).
    pub fn channel_count(&self) -> usize {
        self.channels.len() + self.unclaimed.len()
    }

    /// Bridges created and not yet destroyed.
    pub fn bridge_count(&self) -> usize {
        self.bridges.len()
    }

    /// REST requests awaiting their response.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Whether the events connection is up.
    pub fn is_connected(&self) -> bool {
        self.link == Link::Connected
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Controller::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let requests = self.pending.values().map(|p| p.deadline);
        let unclaimed = self.unclaimed.values().map(|u| u.deadline);
        let retry = match self.link {
            Link::Waiting { retry_at, .. } => Some(retry_at),
            _ => None,
        };
        requests
            .chain(unclaimed)
            .chain(retry)
            .chain(self.grace_deadline)
            .min()
    }

    // ---- commands from the call layer ----

    /// Registers a browser's call whose INVITE (with SIP Call-ID `sip_call_id`) is about to go
    /// to Asterisk; the StasisStart of its channel links it.
    pub fn expect_call(
        &mut self,
        call: CallKey,
        sip_call_id: &str,
        now: Instant,
    ) -> Result<(), CommandError> {
        if self.calls.contains_key(&call) || self.expected.contains_key(sip_call_id) {
            return Err(CommandError::DuplicateCall);
        }
        if !self.is_connected() {
            return Err(CommandError::NotConnected);
        }
        self.calls.insert(
            call,
            Call {
                protocol_id: Some(sip_call_id.to_owned()),
                ..Call::default()
            },
        );
        self.expected.insert(sip_call_id.to_owned(), call);
        let early = self
            .unclaimed
            .iter()
            .find(|(_, u)| u.channel.protocol_id.as_deref() == Some(sip_call_id))
            .map(|(id, _)| id.clone());
        if let Some(id) = early {
            if let Some(u) = self.unclaimed.remove(&id) {
                self.expected.remove(sip_call_id);
                self.link_and_route(call, &u.channel, &u.args, now);
            }
        }
        Ok(())
    }

    /// Calls a browser: originates a channel to icegate's endpoint; Asterisk then sends an
    /// INVITE whose Call-ID arrives in [`CallEvent::Linked`].
    pub fn originate(
        &mut self,
        call: CallKey,
        args: OriginateArgs,
        now: Instant,
    ) -> Result<(), CommandError> {
        if self.calls.contains_key(&call) {
            return Err(CommandError::DuplicateCall);
        }
        if !self.is_connected() {
            return Err(CommandError::NotConnected);
        }
        let channel = self.new_object_id();
        self.channels.insert(channel.clone(), (call, Leg::Primary));
        self.calls.insert(
            call,
            Call {
                originated: true,
                primary: Some(channel.clone()),
                ..Call::default()
            },
        );
        let request = Request::Originate(Originate {
            endpoint: self.config.originate_endpoint.clone(),
            app: self.config.app.clone(),
            app_args: args.app_args,
            caller_id: args.caller_id,
            timeout: Some(self.config.originate_timeout),
            channel_id: Some(channel),
        });
        self.send(request, Purpose::Call(call, Step::Originate), now);
        Ok(())
    }

    /// Hangs the call up; [`CallEvent::HungUp`] follows.
    pub fn hangup(
        &mut self,
        call: CallKey,
        reason: HangupReason,
        now: Instant,
    ) -> Result<(), CommandError> {
        let state = self.calls.get_mut(&call).ok_or(CommandError::UnknownCall)?;
        if state.hanging_up {
            return Ok(());
        }
        match state
            .primary
            .clone()
            .filter(|c| self.channels.contains_key(c))
        {
            Some(channel) => {
                state.hanging_up = true;
                self.send(
                    Request::Hangup { channel, reason },
                    Purpose::Call(call, Step::Hangup),
                    now,
                );
            }
            // A browser's call that never reached Stasis: nothing to hang up here.
            None => self.end(call, Some(hung_up(None, None)), None, now),
        }
        Ok(())
    }

    /// Sends DTMF digits to the call's channel.
    pub fn send_dtmf(
        &mut self,
        call: CallKey,
        digits: &str,
        now: Instant,
    ) -> Result<(), CommandError> {
        let valid = (1..=64).contains(&digits.len())
            && digits
                .chars()
                .all(|c| c.is_ascii_digit() || "ABCDabcd*#".contains(c));
        if !valid {
            return Err(CommandError::Invalid("dtmf"));
        }
        let channel = self.live_primary(call)?;
        self.send(
            Request::SendDtmf {
                channel,
                dtmf: digits.to_owned(),
            },
            Purpose::Call(call, Step::Dtmf),
            now,
        );
        Ok(())
    }

    /// Plays a media URI (`sound:NAME`, `tone:ring;tonezone=us`) on the call's channel.
    pub fn play(&mut self, call: CallKey, media: &str, now: Instant) -> Result<(), CommandError> {
        let valid = (1..=256).contains(&media.len())
            && [
                "sound:",
                "tone:",
                "digits:",
                "number:",
                "characters:",
                "recording:",
            ]
            .iter()
            .any(|scheme| media.starts_with(scheme));
        if !valid {
            return Err(CommandError::Invalid("media"));
        }
        let channel = self.live_primary(call)?;
        self.send(
            Request::Play {
                channel,
                media: media.to_owned(),
            },
            Purpose::Call(call, Step::Play),
            now,
        );
        Ok(())
    }

    /// Sends the call's channel on to `extension` in the transfer context; a dialed peer is
    /// hung up and the bridge destroyed. [`CallEvent::Released`] follows.
    pub fn transfer(
        &mut self,
        call: CallKey,
        extension: &str,
        now: Instant,
    ) -> Result<(), CommandError> {
        if !valid_extension(extension) {
            return Err(CommandError::Invalid("extension"));
        }
        let channel = self.live_primary(call)?;
        let (peer, bridge) = match self.calls.get_mut(&call) {
            Some(state) => {
                state.continuing = true;
                (state.peer.take(), state.bridge.take())
            }
            None => return Err(CommandError::UnknownCall),
        };
        self.release_peer_and_bridge(peer, bridge, HangupReason::Normal, now);
        self.stop_playbacks(call, now);
        let request = Request::Continue {
            channel,
            context: self.config.transfer_context.clone(),
            extension: extension.to_owned(),
            priority: 1,
        };
        self.send(
            request,
            Purpose::Call(call, Step::Continue { transfer: true }),
            now,
        );
        Ok(())
    }

    /// Forgets a call the SIP side ended, without an event: its peer channel and bridge are
    /// deleted; its own channel is left to the SIP dialog's end.
    pub fn forget(&mut self, call: CallKey, now: Instant) {
        self.released.retain(|_, key| *key != call);
        if self.calls.contains_key(&call) {
            self.end(call, None, None, now);
        }
    }

    // ---- the events connection ----

    /// The events WebSocket is open (and so the application subscribed again).
    pub fn connected(&mut self, now: Instant) {
        self.link = Link::Connected;
        if self.calls.values().any(|c| c.stale) {
            self.send(Request::ListChannels, Purpose::Reconcile, now);
        }
    }

    /// The events WebSocket closed, or could not be opened.
    pub fn connection_lost(&mut self, now: Instant) {
        let attempt = match self.link {
            Link::Connected => 0,
            Link::Connecting { attempt } => attempt.saturating_add(1),
            Link::Waiting { .. } => return,
        };
        let was_connected = self.link == Link::Connected;
        self.link = Link::Waiting {
            attempt,
            retry_at: now + reconnect_delay(attempt),
        };
        if !was_connected {
            return;
        }
        for (id, _) in std::mem::take(&mut self.unclaimed) {
            self.send_best_effort(hangup_request(id, HangupReason::Normal), now);
        }
        // Calls still being set up move on only through events, which are gone now; answered
        // calls keep their media and are checked after the reconnect.
        let keys: Vec<CallKey> = self.calls.keys().copied().collect();
        for key in keys {
            let Some(call) = self.calls.get_mut(&key) else {
                continue;
            };
            if call.answered && !call.hanging_up && !call.continuing {
                call.stale = true;
            } else {
                let event = hung_up(call.cause, Some("ARI connection lost".into()));
                self.end(key, Some(event), Some(HangupReason::Normal), now);
            }
        }
        if self.grace_deadline.is_none() && self.calls.values().any(|c| c.stale) {
            self.grace_deadline = Some(now + self.config.reconnect_grace);
        }
    }

    // ---- inputs from Asterisk ----

    /// One text frame of the events WebSocket; the event's [name](Event::name) once handled.
    /// An error is for the log: the connection and every call go on.
    pub fn handle_event(&mut self, text: &str, now: Instant) -> Result<&'static str, EventError> {
        let event = events::parse_event(text)?;
        let name = event.name();
        match event {
            Event::StasisStart(start) => self.on_stasis_start(start.channel, start.args, now),
            Event::StasisEnd(e) => self.on_stasis_end(&e.channel.id, now),
            Event::ChannelStateChange(e) => self.on_state(e.channel),
            Event::ChannelDtmfReceived(d) => {
                // `Received` is from Asterisk's view: on the primary channel these are the
                // browser's own digits; keys pressed on the far side arrive on the peer.
                if let (Some((call, Leg::Peer)), Some(digit)) =
                    (self.channels.get(&d.channel.id), d.digit.chars().next())
                {
                    self.emit(
                        *call,
                        CallEvent::Dtmf {
                            digit,
                            duration_ms: d.duration_ms,
                        },
                    );
                }
            }
            Event::ChannelHangupRequest(h) => {
                if let Some((key, Leg::Primary)) = self.channels.get(&h.channel.id) {
                    if let Some(call) = self.calls.get_mut(key) {
                        call.hangup_requested = true;
                        call.cause = h.cause.or(call.cause);
                    }
                }
            }
            Event::ChannelDestroyed(d) => {
                self.on_destroyed(&d.channel.id, d.cause, d.cause_txt, now)
            }
            Event::BridgeDestroyed(b) => {
                self.bridges.remove(&b.bridge.id);
                for call in self.calls.values_mut() {
                    if call.bridge.as_deref() == Some(b.bridge.id.as_str()) {
                        call.bridge = None;
                    }
                }
            }
            Event::ApplicationReplaced => self.outputs.push_back(Output::ApplicationReplaced),
            Event::PlaybackStarted(p) => self.on_playback(p.playback, true, now),
            Event::PlaybackFinished(p) => self.on_playback(p.playback, false, now),
            Event::ChannelVarset(_)
            | Event::Dial(_)
            | Event::ChannelEnteredBridge(_)
            | Event::ChannelLeftBridge(_)
            | Event::Other(_) => {}
        }
        Ok(name)
    }

    /// The response to request `id`: its HTTP status and body (`""` for none).
    pub fn handle_response(&mut self, id: RequestId, status: u16, body: &str, now: Instant) {
        // Unknown ids are responses that came after their timeout.
        if let Some(pending) = self.pending.remove(&id) {
            let result = pending.request.parse_response(status, body);
            self.on_result(pending.purpose, result, now);
        }
    }

    /// Expires requests and unclaimed channels, reconnects, ends calls after the grace.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(pending) = self.pending.remove(&id) {
                self.on_result(pending.purpose, Err(RestError::Timeout), now);
            }
        }
        let unclaimed: Vec<String> = self
            .unclaimed
            .iter()
            .filter(|(_, u)| u.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in unclaimed {
            self.unclaimed.remove(&id);
            self.send_best_effort(hangup_request(id, HangupReason::Normal), now);
        }
        if let Link::Waiting { attempt, retry_at } = self.link {
            if retry_at <= now {
                self.link = Link::Connecting { attempt };
                self.outputs.push_back(Output::Connect);
            }
        }
        if self.grace_deadline.is_some_and(|d| d <= now) {
            self.grace_deadline = None;
            self.end_stale("ARI connection lost", now);
        }
    }

    // ---- helpers ----

    /// Forgets a call: `primary` says whether (and why) its own channel is hung up; a dialed
    /// peer is always hung up and a bridge always destroyed. Emits `event` last.
    fn end(
        &mut self,
        key: CallKey,
        event: Option<CallEvent>,
        primary: Option<HangupReason>,
        now: Instant,
    ) {
        let Some(call) = self.calls.remove(&key) else {
            return;
        };
        if let Some(protocol_id) = &call.protocol_id {
            if self.expected.get(protocol_id) == Some(&key) {
                self.expected.remove(protocol_id);
            }
        }
        if let Some(channel) = call.primary {
            if self.channels.remove(&channel).is_some() {
                if let Some(reason) = primary {
                    self.send_best_effort(hangup_request(channel, reason), now);
                }
            }
        }
        self.release_peer_and_bridge(call.peer, call.bridge, HangupReason::Normal, now);
        if let Some(event) = event {
            self.emit(key, event);
        }
    }

    fn release_peer_and_bridge(
        &mut self,
        peer: Option<String>,
        bridge: Option<String>,
        reason: HangupReason,
        now: Instant,
    ) {
        if let Some(peer) = peer {
            if self.channels.remove(&peer).is_some() {
                self.send_best_effort(hangup_request(peer, reason), now);
            }
        }
        if let Some(bridge) = bridge {
            if self.bridges.contains(&bridge) {
                self.send(
                    Request::DestroyBridge {
                        bridge: bridge.clone(),
                    },
                    Purpose::DestroyBridge(bridge),
                    now,
                );
            }
        }
    }

    fn live_primary(&self, call: CallKey) -> Result<String, CommandError> {
        let state = self.calls.get(&call).ok_or(CommandError::UnknownCall)?;
        state
            .primary
            .clone()
            .filter(|c| self.channels.contains_key(c) && !state.hanging_up)
            .ok_or(CommandError::NoChannel)
    }

    fn send(&mut self, request: Request, purpose: Purpose, now: Instant) {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let http = request.to_http();
        self.outputs.push_back(Output::Request {
            id,
            method: http.method,
            path: http.path,
            body: http.body,
        });
        self.pending.insert(
            id,
            Pending {
                deadline: now + self.config.request_timeout,
                request,
                purpose,
            },
        );
    }

    fn send_best_effort(&mut self, request: Request, now: Instant) {
        self.send(request, Purpose::BestEffort, now);
    }

    fn emit(&mut self, call: CallKey, event: CallEvent) {
        self.outputs.push_back(Output::Call { call, event });
    }

    fn new_object_id(&mut self) -> String {
        let id = format!("{}-{}", self.prefix, self.next_object);
        self.next_object += 1;
        id
    }
}

fn hung_up(cause: Option<i32>, cause_txt: Option<String>) -> CallEvent {
    CallEvent::HungUp { cause, cause_txt }
}

fn hangup_request(channel: String, reason: HangupReason) -> Request {
    Request::Hangup { channel, reason }
}

/// Extensions go into dial strings and dialplan lookups: digits, letters and `*#+` only.
fn valid_extension(extension: &str) -> bool {
    (1..=32).contains(&extension.len())
        && extension
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "*#+".contains(c))
}

#[cfg(test)]
mod tests;
