//! The ARI side of the gateway: the events connection, ARI events and REST responses, and the
//! controller's call events (hangups, DTMF) turned into what the hub hears.

use std::time::Instant;

use icegate_signal_proto::hub::PbxEvent;
use icegate_signal_proto::protocol::Digits;

use super::{Gateway, ToHub};
use crate::ari::controller::{CallEvent as AriEvent, CallKey as AriKey, RequestId as AriRequestId};

/// What [`Gateway::handle_ari_event`] calls a frame that is no ARI event it can read.
pub const UNREADABLE_ARI_EVENT: &str = "unreadable";

impl Gateway {
    /// The ARI events WebSocket is open.
    pub fn ari_connected(&mut self, now: Instant) {
        self.ari.connected(now);
        self.pump(now);
    }

    /// The ARI events WebSocket closed, or could not be opened.
    pub fn ari_connection_lost(&mut self, now: Instant) {
        self.ari.connection_lost(now);
        self.pump(now);
    }

    /// A text frame of the ARI events WebSocket; malformed ones are logged. Returns the
    /// event's type for the metrics (see [`Event::name`](crate::ari::events::Event::name)),
    /// [`UNREADABLE_ARI_EVENT`] for a malformed one.
    pub fn handle_ari_event(&mut self, text: &str, now: Instant) -> &'static str {
        let name = match self.ari.handle_event(text, now) {
            Ok(name) => name,
            Err(error) => {
                self.log(format!("unreadable ARI event: {error}"));
                UNREADABLE_ARI_EVENT
            }
        };
        self.pump(now);
        name
    }

    /// The response to an [`Output::AriRequest`](super::Output::AriRequest): status and body
    /// (status 0 when the request could not be made at all).
    pub fn handle_ari_response(&mut self, id: AriRequestId, status: u16, body: &str, now: Instant) {
        self.ari.handle_response(id, status, body, now);
        self.pump(now);
    }

    pub(super) fn on_ari(&mut self, key: AriKey, event: AriEvent) {
        if !self.calls.contains_key(&key.0) {
            return;
        }
        match event {
            AriEvent::Dtmf { digit, .. } => self.pbx_digit(key.0, digit),
            AriEvent::CommandFailed { command, error } => {
                self.log(format!("ARI {command} failed: {error}"));
            }
            // The SIP dialog tells the hub how the call ends; ARI only controls it.
            AriEvent::Linked { .. }
            | AriEvent::Ringing
            | AriEvent::Answered
            | AriEvent::StateChanged(_)
            | AriEvent::HungUp { .. }
            | AriEvent::Released => {}
        }
    }

    /// A key pressed on the PBX side (ARI, from the dialed peer; or a SIP INFO): the browser
    /// gets it as `dtmf` once the call is answered.
    pub(super) fn pbx_digit(&mut self, id: u64, digit: char) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if let (Some(hub), Ok(digits)) = (call.hub, Digits::new(digit.to_string())) {
            if call.phase.is_answered() {
                self.tell_hub(ToHub::Event(PbxEvent::Dtmf { call: hub, digits }));
            }
        }
    }
}
