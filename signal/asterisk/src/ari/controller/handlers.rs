//! What the controller does with ARI events: a channel entering the application (claimed by
//! its call, routed, or left unclaimed), its state changes, leaving Stasis, being destroyed, and
//! playbacks starting and finishing.

use std::time::Instant;

use super::{
    hangup_request, hung_up, valid_extension, Call, CallEvent, CallKey, Controller, Leg, Purpose,
    Routing, Step, Unclaimed, MAX_PLAYBACKS,
};
use crate::ari::events::{self, Channel, ChannelState};
use crate::ari::rest::{HangupReason, Originate, Request};

impl Controller {
    pub(super) fn on_stasis_start(&mut self, channel: Channel, args: Vec<String>, now: Instant) {
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

    pub(super) fn link_and_route(
        &mut self,
        key: CallKey,
        channel: &Channel,
        args: &[String],
        now: Instant,
    ) {
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

    pub(super) fn peer_answered(&mut self, key: CallKey, now: Instant) {
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

    pub(super) fn on_state(&mut self, channel: Channel) {
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

    pub(super) fn on_stasis_end(&mut self, channel: &str, now: Instant) {
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

    pub(super) fn on_destroyed(
        &mut self,
        channel: &str,
        cause: i32,
        cause_txt: String,
        now: Instant,
    ) {
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

    /// A playback of `playback.target_uri` started (from the play reply or PlaybackStarted)
    /// or finished. One that starts on a call being transferred is stopped at once: its
    /// `continue` waits behind it.
    pub(super) fn on_playback(&mut self, playback: events::Playback, playing: bool, now: Instant) {
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
}
