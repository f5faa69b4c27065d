//! What the controller does with the results of its REST requests: each step of a call
//! (ring, answer, originate, dial, bridge, continue, ...) succeeding or failing, and the
//! reconciliation after an events-connection loss (`GET /channels`: the gone calls end, the
//! others are subscribed again).

use std::collections::BTreeSet;
use std::time::Instant;

use super::{hangup_request, hung_up, CallEvent, CallKey, Controller, Purpose, Step};
use crate::ari::rest::{HangupReason, Reply, Request, RestError};

impl Controller {
    pub(super) fn on_result(
        &mut self,
        purpose: Purpose,
        result: Result<Reply, RestError>,
        now: Instant,
    ) {
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

    pub(super) fn on_call_result(
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

    /// Stops every playback of `call` (a 404 for one that just finished changes nothing).
    pub(super) fn stop_playbacks(&mut self, call: CallKey, now: Instant) {
        let playbacks = self
            .calls
            .get_mut(&call)
            .map(|c| std::mem::take(&mut c.playbacks))
            .unwrap_or_default();
        for playback in playbacks {
            self.send_best_effort(Request::StopPlayback { playback }, now);
        }
    }

    pub(super) fn answer(&mut self, key: CallKey, primary: Option<String>, now: Instant) {
        if let Some(channel) = primary.filter(|c| self.channels.contains_key(c)) {
            self.send(
                Request::Answer { channel },
                Purpose::Call(key, Step::Answer),
                now,
            );
        }
    }

    pub(super) fn reconcile(&mut self, live: &BTreeSet<String>, now: Instant) {
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

    pub(super) fn end_stale(&mut self, why: &str, now: Instant) {
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
}
