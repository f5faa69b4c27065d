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
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ari::backoff::reconnect_delay;
use crate::ari::events::{self, Channel, ChannelState, Event, EventError};
use crate::ari::rest::{HangupReason, Method, Originate, Reply, Request, RestError};

/// Playbacks remembered per call; a browser playing more at once than this is not stopped
/// from them all on a transfer (Asterisk queues them, so the first ones finish first anyway).
const MAX_PLAYBACKS: usize = 16;

/// The caller's name for a call; the controller never makes one up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(pub u64);

/// Names one REST request so its response can be handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// What to do with a browser's call when it lands in the Stasis application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// Ring, then answer: the application itself is the far end (tones, DTMF, transfers).
    Answer,
    /// Send it on into the dialplan at the requested extension.
    Continue {
        /// The dialplan context.
        context: String,
        /// The priority.
        priority: u32,
    },
    /// Dial the requested extension and bridge the two channels.
    Dial {
        /// The endpoint to dial; `{exten}` is replaced by the extension (`PJSIP/{exten}`,
        /// `Local/{exten}@internal`).
        endpoint: String,
        /// Seconds to ring.
        timeout: u32,
    },
}

/// The controller's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// The Stasis application's name.
    pub app: String,
    /// What happens to a browser's call in Stasis.
    pub routing: Routing,
    /// The dialplan context a transfer sends a call to.
    pub transfer_context: String,
    /// The endpoint a call to a browser is originated to (icegate's own PJSIP endpoint).
    pub originate_endpoint: String,
    /// Seconds a call to a browser rings.
    pub originate_timeout: u32,
    /// How long a REST request may take.
    pub request_timeout: Duration,
    /// How long an unclaimed channel may wait in Stasis for its call.
    pub claim_timeout: Duration,
    /// How long answered calls survive without the events connection.
    pub reconnect_grace: Duration,
    /// Unclaimed channels held at once; more are hung up at once.
    pub max_unclaimed: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            app: "icegate".into(),
            routing: Routing::Answer,
            transfer_context: "from-icegate".into(),
            originate_endpoint: "PJSIP/icegate".into(),
            originate_timeout: 20,
            request_timeout: Duration::from_secs(10),
            claim_timeout: Duration::from_secs(5),
            reconnect_grace: Duration::from_secs(30),
            max_unclaimed: 64,
        }
    }
}

/// Extra parameters of a call to a browser.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OriginateArgs {
    /// Stasis arguments the channel gets.
    pub app_args: Option<String>,
    /// The caller id the browser sees (`Reception <100>`).
    pub caller_id: Option<String>,
}

/// What happened to a call, for the call layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// The call has an ARI channel; `protocol_id` is its SIP Call-ID.
    Linked {
        /// The channel's id.
        channel: String,
        /// The SIP Call-ID (known once Asterisk created the channel).
        protocol_id: Option<String>,
    },
    /// The far end rings.
    Ringing,
    /// The call is answered.
    Answered,
    /// A DTMF digit pressed on the PBX side: received on the channel dialed for the call
    /// (routing `Dial`). Digits received on the call's own channel are the browser's, sent to
    /// Asterisk, and are not reported back.
    Dtmf {
        /// The digit.
        digit: char,
        /// How long it was pressed.
        duration_ms: u32,
    },
    /// The channel's state changed.
    StateChanged(ChannelState),
    /// A command failed without ending the call.
    CommandFailed {
        /// Which command (`play`, `dtmf`, `transfer`, ...).
        command: &'static str,
        /// Why.
        error: RestError,
    },
    /// The call ended. The last event of the call.
    HungUp {
        /// The Q.850 cause, when Asterisk gave one.
        cause: Option<i32>,
        /// The cause as text, or why icegate ended it.
        cause_txt: Option<String>,
    },
    /// ARI no longer controls the call, which goes on in the dialplan. The last event of the
    /// call.
    Released,
}

/// What the controller asks the shell to do, or tells the call layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open the events WebSocket at [`Controller::events_path`].
    Connect,
    /// Perform this REST request under the ARI base URL with basic auth, then call
    /// [`Controller::handle_response`].
    Request {
        /// Its id.
        id: RequestId,
        /// The method.
        method: Method,
        /// Path and query below `/ari`.
        path: String,
        /// A JSON body.
        body: Option<String>,
    },
    /// An event for the call layer.
    Call {
        /// The call.
        call: CallKey,
        /// What happened.
        event: CallEvent,
    },
    /// Another events connection took the application over; this one receives nothing more.
    ApplicationReplaced,
}

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No such call.
    #[error("unknown call")]
    UnknownCall,
    /// The key is already in use.
    #[error("call key already in use")]
    DuplicateCall,
    /// The call has no ARI channel (yet).
    #[error("call has no channel")]
    NoChannel,
    /// An argument is not acceptable.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// The events connection is down: a new call could not be followed (and Asterisk cannot
    /// put a channel into a disconnected application), so the caller refuses it at once.
    #[error("ARI events connection is down")]
    NotConnected,
}

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

    /// One text frame of the events WebSocket. An error is for the log: the connection and
    /// every call go on.
    pub fn handle_event(&mut self, text: &str, now: Instant) -> Result<(), EventError> {
        let event = events::parse_event(text)?;
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
        Ok(())
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

    // ---- event handling ----

    fn on_stasis_start(&mut self, channel: Channel, args: Vec<String>, now: Instant) {
        match self.channels.get(&channel.id).copied() {
            Some((key, Leg::Primary)) => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.in_stasis = true;
                }
                self.on_state(channel);
            }
            Some((key, Leg::Peer)) => self.peer_answered(key, now),
            None => {
                if let Some(key) = self.released.remove(&channel.id) {
                    if let std::collections::btree_map::Entry::Vacant(slot) = self.calls.entry(key)
                    {
                        slot.insert(Call {
                            protocol_id: channel.protocol_id.clone(),
                            ..Call::default()
                        });
                        self.link_and_route(key, &channel, &args, now);
                        return;
                    }
                }
                let expected = channel
                    .protocol_id
                    .as_deref()
                    .and_then(|p| self.expected.remove(p));
                match expected {
                    Some(key) => self.link_and_route(key, &channel, &args, now),
                    None if self.unclaimed.len() < self.config.max_unclaimed => {
                        let deadline = now + self.config.claim_timeout;
                        self.unclaimed.insert(
                            channel.id.clone(),
                            Unclaimed {
                                channel,
                                args,
                                deadline,
                            },
                        );
                    }
                    None => {
                        self.send_best_effort(hangup_request(channel.id, HangupReason::Normal), now)
                    }
                }
            }
        }
    }

    fn link_and_route(&mut self, key: CallKey, channel: &Channel, args: &[String], now: Instant) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.primary = Some(channel.id.clone());
        call.in_stasis = true;
        self.channels
            .insert(channel.id.clone(), (key, Leg::Primary));
        self.emit(
            key,
            CallEvent::Linked {
                channel: channel.id.clone(),
                protocol_id: channel.protocol_id.clone(),
            },
        );
        self.on_state(channel.clone());
        let extension = args
            .first()
            .cloned()
            .or_else(|| channel.dialplan.as_ref().map(|d| d.exten.clone()))
            .unwrap_or_default();
        let id = channel.id.clone();
        let up = channel.state == ChannelState::Up;
        match self.config.routing.clone() {
            // Back from a transfer, already answered: nothing to ring or answer.
            Routing::Answer if up => {}
            Routing::Answer => self.send(
                Request::Ring { channel: id },
                Purpose::Call(key, Step::Ring { then_answer: true }),
                now,
            ),
            Routing::Continue { context, priority } => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.continuing = true;
                }
                self.send(
                    Request::Continue {
                        channel: id,
                        context,
                        extension,
                        priority,
                    },
                    Purpose::Call(key, Step::Continue { transfer: false }),
                    now,
                );
            }
            Routing::Dial { endpoint, timeout } => {
                if !valid_extension(&extension) {
                    if let Some(call) = self.calls.get_mut(&key) {
                        call.hanging_up = true;
                    }
                    let request = hangup_request(id, HangupReason::Unallocated);
                    self.send(request, Purpose::Call(key, Step::Hangup), now);
                    return;
                }
                self.send(
                    Request::Ring { channel: id },
                    Purpose::Call(key, Step::Ring { then_answer: false }),
                    now,
                );
                let peer = self.new_object_id();
                self.channels.insert(peer.clone(), (key, Leg::Peer));
                if let Some(call) = self.calls.get_mut(&key) {
                    call.peer = Some(peer.clone());
                }
                let caller = &channel.caller;
                let caller_id = match (caller.name.is_empty(), caller.number.is_empty()) {
                    (_, true) => None,
                    (true, false) => Some(caller.number.clone()),
                    (false, false) => Some(format!("{} <{}>", caller.name, caller.number)),
                };
                let request = Request::Originate(Originate {
                    endpoint: endpoint.replace("{exten}", &extension),
                    app: self.config.app.clone(),
                    app_args: Some("dialed".into()),
                    caller_id,
                    timeout: Some(timeout),
                    channel_id: Some(peer),
                });
                self.send(request, Purpose::Call(key, Step::DialPeer), now);
            }
        }
    }

    fn peer_answered(&mut self, key: CallKey, now: Instant) {
        let bridge = self.new_object_id();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.bridge.is_some() || call.hanging_up {
            return;
        }
        call.bridge = Some(bridge.clone());
        let answer = (!call.answered)
            .then(|| call.primary.clone())
            .flatten()
            .map(|channel| Request::Answer { channel });
        self.bridges.insert(bridge.clone());
        if let Some(answer) = answer {
            self.send(answer, Purpose::Call(key, Step::Answer), now);
        }
        self.send(
            Request::CreateBridge { bridge },
            Purpose::Call(key, Step::CreateBridge),
            now,
        );
    }

    fn on_state(&mut self, channel: Channel) {
        let Some((key, leg)) = self.channels.get(&channel.id).copied() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let mut events = Vec::new();
        if channel.state == ChannelState::Ringing && !call.ringing && !call.answered {
            call.ringing = true;
            events.push(CallEvent::Ringing);
        }
        if leg == Leg::Primary {
            if channel.state == ChannelState::Up && !call.answered {
                call.answered = true;
                events.push(CallEvent::Answered);
            }
            if call.state.as_ref() != Some(&channel.state) {
                call.state = Some(channel.state.clone());
                events.push(CallEvent::StateChanged(channel.state));
            }
        }
        for event in events {
            self.emit(key, event);
        }
    }

    fn on_stasis_end(&mut self, channel: &str, now: Instant) {
        self.unclaimed.remove(channel);
        let Some((key, Leg::Primary)) = self.channels.get(channel).copied() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.in_stasis = false;
        if call.continuing {
            self.released.insert(channel.to_owned(), key);
            self.end(key, Some(CallEvent::Released), None, now);
        } else if call.hangup_requested || call.hanging_up {
            if call.originated {
                // Still subscribed as its originator: ChannelDestroyed brings the cause text.
                return;
            }
            self.channels.remove(channel);
            let event = hung_up(call.cause, None);
            self.end(key, Some(event), None, now);
        } else {
            // Something else took the channel out of the application.
            self.released.insert(channel.to_owned(), key);
            self.end(key, Some(CallEvent::Released), None, now);
        }
    }

    fn on_destroyed(&mut self, channel: &str, cause: i32, cause_txt: String, now: Instant) {
        self.unclaimed.remove(channel);
        let Some((key, leg)) = self.channels.remove(channel) else {
            return;
        };
        let event = hung_up(Some(cause), Some(cause_txt));
        let reason = match leg {
            Leg::Primary => None,
            // The dialed side ended: the browser's side ends with its cause (busy, no answer).
            Leg::Peer => Some(HangupReason::from_cause(Some(cause))),
        };
        self.end(key, Some(event), reason, now);
    }

    // ---- responses ----

    fn on_result(&mut self, purpose: Purpose, result: Result<Reply, RestError>, now: Instant) {
        match purpose {
            Purpose::Call(key, step) => self.on_call_result(key, step, result, now),
            Purpose::DestroyBridge(bridge) => {
                // Whatever the outcome, there is nothing more to do: a 404 means it is gone,
                // and a failure is for the log; keeping it would only grow the count.
                self.bridges.remove(&bridge);
            }
            Purpose::Reconcile => match result {
                Ok(Reply::Channels(list)) => {
                    let live: BTreeSet<String> = list.into_iter().map(|c| c.id).collect();
                    self.reconcile(&live, now);
                }
                _ => self.end_stale("ARI reconciliation failed", now),
            },
            Purpose::BestEffort => {}
        }
    }

    fn on_call_result(
        &mut self,
        key: CallKey,
        step: Step,
        result: Result<Reply, RestError>,
        now: Instant,
    ) {
        let Some(call) = self.calls.get(&key) else {
            // The call ended meanwhile. A channel created for it now would be left over.
            if let (Step::Originate | Step::DialPeer, Ok(Reply::Channel(c))) = (step, result) {
                self.send_best_effort(hangup_request(c.id, HangupReason::Normal), now);
            }
            return;
        };
        let primary = call.primary.clone();
        let (in_stasis, originated, cause) = (call.in_stasis, call.originated, call.cause);
        let (peer, bridge) = (call.peer.clone(), call.bridge.clone());
        let error = match result {
            Ok(reply) => {
                match (step, reply) {
                    (Step::Ring { then_answer: true }, _) => self.answer(key, primary, now),
                    (Step::Originate, Reply::Channel(c)) => {
                        if let Some(call) = self.calls.get_mut(&key) {
                            call.protocol_id = c.protocol_id.clone();
                        }
                        self.emit(
                            key,
                            CallEvent::Linked {
                                channel: c.id,
                                protocol_id: c.protocol_id,
                            },
                        );
                    }
                    (Step::Play, Reply::Playback(p)) => {
                        let playing = !matches!(p.state.as_str(), "done" | "failed");
                        self.on_playback(p, playing, now);
                    }
                    (Step::Hangup, _) if !in_stasis && !originated => {
                        // No StasisEnd will come for a channel outside the application.
                        let event = hung_up(cause, None);
                        self.end(key, Some(event), None, now);
                    }
                    (Step::CreateBridge, _) => {
                        let channels: Vec<String> = [primary, peer].into_iter().flatten().collect();
                        if let Some(bridge) = bridge {
                            self.send(
                                Request::AddChannels { bridge, channels },
                                Purpose::Call(key, Step::AddChannels),
                                now,
                            );
                        }
                    }
                    _ => {}
                }
                return;
            }
            Err(error) => error,
        };
        let timed_out = error == RestError::Timeout;
        match step {
            // The channel does not exist (any more): the call is over.
            _ if matches!(error, RestError::NotFound(_))
                && !matches!(step, Step::DialPeer | Step::Originate) =>
            {
                if let Some(channel) = &primary {
                    self.channels.remove(channel);
                }
                self.end(key, Some(hung_up(None, Some(error.to_string()))), None, now);
            }
            Step::Ring { then_answer } => {
                if then_answer {
                    self.answer(key, primary, now);
                }
            }
            Step::Answer => self.emit(
                key,
                CallEvent::CommandFailed {
                    command: "answer",
                    error,
                },
            ),
            Step::Dtmf => self.emit(
                key,
                CallEvent::CommandFailed {
                    command: "dtmf",
                    error,
                },
            ),
            Step::Play => self.emit(
                key,
                CallEvent::CommandFailed {
                    command: "play",
                    error,
                },
            ),
            Step::Continue { transfer: true } => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.continuing = false;
                }
                self.emit(
                    key,
                    CallEvent::CommandFailed {
                        command: "transfer",
                        error,
                    },
                );
            }
            Step::Continue { transfer: false } => {
                let event = hung_up(None, Some(format!("continue failed: {error}")));
                self.end(key, Some(event), Some(HangupReason::Failure), now);
            }
            Step::Hangup => {
                // Asked to end it: it ends here, even if Asterisk did not confirm.
                let event = hung_up(None, Some(format!("hangup failed: {error}")));
                self.end(key, Some(event), None, now);
            }
            Step::Originate => {
                // Without a response the channel may exist after all; otherwise it does not.
                if !timed_out {
                    if let Some(channel) = &primary {
                        self.channels.remove(channel);
                    }
                }
                let event = hung_up(None, Some(format!("originate failed: {error}")));
                self.end(key, Some(event), Some(HangupReason::Normal), now);
            }
            Step::DialPeer => {
                if !timed_out {
                    if let Some(peer) = self.calls.get_mut(&key).and_then(|c| c.peer.take()) {
                        self.channels.remove(&peer);
                    }
                }
                let event = hung_up(None, Some(format!("dial failed: {error}")));
                self.end(key, Some(event), Some(HangupReason::Failure), now);
            }
            Step::CreateBridge | Step::AddChannels => {
                if step == Step::CreateBridge && !timed_out {
                    if let Some(bridge) = self.calls.get_mut(&key).and_then(|c| c.bridge.take()) {
                        self.bridges.remove(&bridge);
                    }
                }
                let event = hung_up(None, Some(format!("bridging failed: {error}")));
                self.end(key, Some(event), Some(HangupReason::Failure), now);
            }
        }
    }

    /// A playback of `playback.target_uri` started (from the play reply or PlaybackStarted)
    /// or finished. One that starts on a call being transferred is stopped at once: its
    /// `continue` waits behind it.
    fn on_playback(&mut self, playback: events::Playback, playing: bool, now: Instant) {
        let Some(channel) = playback.target_uri.strip_prefix("channel:") else {
            return;
        };
        let Some((key, Leg::Primary)) = self.channels.get(channel).copied() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let known = call.playbacks.contains(&playback.id);
        if !playing {
            call.playbacks.retain(|id| *id != playback.id);
        } else if call.continuing {
            if !known {
                self.send_best_effort(
                    Request::StopPlayback {
                        playback: playback.id,
                    },
                    now,
                );
            }
        } else if !known && call.playbacks.len() < MAX_PLAYBACKS {
            call.playbacks.push(playback.id);
        }
    }

    /// Stops every playback of `call` (a 404 for one that just finished changes nothing).
    fn stop_playbacks(&mut self, call: CallKey, now: Instant) {
        let playbacks = self
            .calls
            .get_mut(&call)
            .map(|c| std::mem::take(&mut c.playbacks))
            .unwrap_or_default();
        for playback in playbacks {
            self.send_best_effort(Request::StopPlayback { playback }, now);
        }
    }

    fn answer(&mut self, key: CallKey, primary: Option<String>, now: Instant) {
        if let Some(channel) = primary.filter(|c| self.channels.contains_key(c)) {
            self.send(
                Request::Answer { channel },
                Purpose::Call(key, Step::Answer),
                now,
            );
        }
    }

    fn reconcile(&mut self, live: &BTreeSet<String>, now: Instant) {
        let stale: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(_, c)| c.stale)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            let Some(call) = self.calls.get_mut(&key) else {
                continue;
            };
            let legs = [call.primary.clone(), call.peer.clone()];
            let gone: Vec<String> = legs
                .iter()
                .flatten()
                .filter(|c| !live.contains(*c))
                .cloned()
                .collect();
            if gone.is_empty() {
                call.stale = false;
                let mut sources: Vec<String> = legs
                    .iter()
                    .flatten()
                    .map(|c| format!("channel:{c}"))
                    .collect();
                sources.extend(call.bridge.iter().map(|b| format!("bridge:{b}")));
                let app = self.config.app.clone();
                self.send_best_effort(Request::Subscribe { app, sources }, now);
            } else {
                for channel in gone {
                    self.channels.remove(&channel);
                }
                let event = hung_up(None, Some("channel gone after ARI reconnect".into()));
                self.end(key, Some(event), Some(HangupReason::Normal), now);
            }
        }
        self.grace_deadline = None;
    }

    fn end_stale(&mut self, why: &str, now: Instant) {
        let stale: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(_, c)| c.stale)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            let event = hung_up(None, Some(why.to_owned()));
            self.end(key, Some(event), Some(HangupReason::Normal), now);
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
