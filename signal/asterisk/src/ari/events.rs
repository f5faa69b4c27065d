//! ARI events from the events WebSocket, as the typed subset icegate acts on.
//!
//! Parsing is lenient on purpose: Asterisk adds event types and fields between releases, and a
//! parse failure must never drop the events connection (every call depends on it). So unknown
//! event types become [`Event::Other`], unknown fields are ignored, and fields icegate does not
//! need default when absent. Only text that is not a JSON object with a string `type`, or a
//! known event whose required parts (the channel, the playback, ...) are missing or mistyped,
//! is an [`EventError`]; the caller logs it and goes on.

use serde::Deserialize;
use serde_json::Value;

/// Why an event could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The text is not JSON.
    #[error("event is not JSON: {0}")]
    NotJson(String),
    /// The JSON is not an object with a string `type`.
    #[error("event has no string \"type\"")]
    NoType,
    /// A known event type whose required fields are missing or mistyped.
    #[error("malformed {kind} event: {reason}")]
    Malformed {
        /// The event's `type`.
        kind: String,
        /// What serde said.
        reason: String,
    },
}

/// A channel's state as ARI names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ChannelState {
    /// Allocated, not yet dialed or ringing.
    #[default]
    Down,
    /// Reserved.
    Rsrved,
    /// Off hook.
    OffHook,
    /// Digits being dialed.
    Dialing,
    /// An incoming channel that rings here (the browser's INVITE before it is answered).
    Ring,
    /// The far end is ringing (an outgoing channel).
    Ringing,
    /// Answered.
    Up,
    /// The far end is busy.
    Busy,
    /// Dialing while off hook.
    DialingOffhook,
    /// Before ringing.
    PreRing,
    /// A state this module does not know, kept verbatim.
    Other(String),
}

impl From<String> for ChannelState {
    fn from(text: String) -> Self {
        match text.as_str() {
            "Down" => ChannelState::Down,
            "Rsrved" => ChannelState::Rsrved,
            "OffHook" => ChannelState::OffHook,
            "Dialing" => ChannelState::Dialing,
            "Ring" => ChannelState::Ring,
            "Ringing" => ChannelState::Ringing,
            "Up" => ChannelState::Up,
            "Busy" => ChannelState::Busy,
            "Dialing Offhook" => ChannelState::DialingOffhook,
            "Pre-ring" => ChannelState::PreRing,
            _ => ChannelState::Other(text),
        }
    }
}

impl<'de> Deserialize<'de> for ChannelState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(ChannelState::from)
    }
}

/// A caller id: name and number.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct CallerId {
    /// The display name.
    pub name: String,
    /// The number.
    pub number: String,
}

/// Where a channel is in the dialplan.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct Dialplan {
    /// The context.
    pub context: String,
    /// The extension.
    pub exten: String,
    /// The priority.
    pub priority: i64,
    /// The application running now (`Stasis`, `AppDial2`, ...).
    pub app_name: String,
    /// That application's arguments.
    pub app_data: String,
}

/// An ARI channel snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Channel {
    /// The channel's unique id (`1795551895.1`), the handle for every REST call on it.
    pub id: String,
    /// The channel name (`PJSIP/icegate-00000001`).
    #[serde(default)]
    pub name: String,
    /// The state.
    #[serde(default)]
    pub state: ChannelState,
    /// The caller.
    #[serde(default)]
    pub caller: CallerId,
    /// The connected line.
    #[serde(default)]
    pub connected: CallerId,
    /// The dialplan location, when Asterisk sends it.
    #[serde(default)]
    pub dialplan: Option<Dialplan>,
    /// For a PJSIP channel, the SIP Call-ID of its dialog: the link between an ARI channel and
    /// the SIP dialog icegate's user agent holds (its INVITE, or Asterisk's INVITE to it).
    #[serde(default)]
    pub protocol_id: Option<String>,
}

/// A playback of media on a channel or bridge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Playback {
    /// The playback's id.
    pub id: String,
    /// What is played (`tone:ring;tonezone=us`).
    #[serde(default)]
    pub media_uri: String,
    /// Where it plays (`channel:ID`).
    #[serde(default)]
    pub target_uri: String,
    /// `queued`, `playing`, `done`, `failed`, ...
    #[serde(default)]
    pub state: String,
}

/// An ARI bridge snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Bridge {
    /// The bridge's id.
    pub id: String,
    /// `mixing`, `holding`, ...
    #[serde(default)]
    pub bridge_type: String,
    /// The channels in it.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// A channel entered the Stasis application.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StasisStart {
    /// The application arguments (`Stasis(icegate,700)` gives `["700"]`).
    #[serde(default)]
    pub args: Vec<String>,
    /// The channel.
    pub channel: Channel,
}

/// An event that carries only the channel it is about.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelEvent {
    /// The channel.
    pub channel: Channel,
}

/// A DTMF digit received on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DtmfReceived {
    /// The digit (`0`–`9`, `A`–`D`, `*`, `#`).
    pub digit: String,
    /// How long it was pressed.
    #[serde(default)]
    pub duration_ms: u32,
    /// The channel.
    pub channel: Channel,
}

/// Someone asked to hang a channel up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HangupRequest {
    /// The Q.850 cause, when given (a BYE from the far end gives none).
    #[serde(default)]
    pub cause: Option<i32>,
    /// A soft hangup (ARI DELETE, `continue`): the channel leaves what it runs first.
    #[serde(default)]
    pub soft: bool,
    /// The channel.
    pub channel: Channel,
}

/// A channel is gone.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelDestroyed {
    /// The Q.850 cause (17 = user busy).
    #[serde(default)]
    pub cause: i32,
    /// The cause as text (`User busy`).
    #[serde(default)]
    pub cause_txt: String,
    /// The channel.
    pub channel: Channel,
}

/// A channel (or global, when `channel` is absent) variable was set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Varset {
    /// The variable's name.
    #[serde(default)]
    pub variable: String,
    /// Its new value.
    #[serde(default)]
    pub value: String,
    /// The channel, for a channel variable.
    #[serde(default)]
    pub channel: Option<Channel>,
}

/// A playback started or finished.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlaybackEvent {
    /// The playback.
    pub playback: Playback,
}

/// Progress of a dial to a channel (`peer`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Dial {
    /// The channel being dialed.
    pub peer: Channel,
    /// The dialing channel, when there is one (none for an ARI originate).
    #[serde(default)]
    pub caller: Option<Channel>,
    /// `""` at the start, then `RINGING`, `ANSWER`, `BUSY`, `NOANSWER`, `CANCEL`, ...
    #[serde(default)]
    pub dialstatus: String,
    /// The dial string.
    #[serde(default)]
    pub dialstring: String,
}

/// A channel entered or left a bridge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BridgeMembership {
    /// The bridge.
    pub bridge: Bridge,
    /// The channel.
    pub channel: Channel,
}

/// A bridge is gone.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BridgeDestroyed {
    /// The bridge.
    pub bridge: Bridge,
}

/// One ARI event.
// Events are read one at a time and consumed at once, never stored in bulk, so the size of
// the channel-carrying variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `StasisStart`.
    StasisStart(StasisStart),
    /// `StasisEnd`: the channel left the application (hung up, or sent on into the dialplan).
    StasisEnd(ChannelEvent),
    /// `ChannelStateChange`.
    ChannelStateChange(ChannelEvent),
    /// `ChannelDtmfReceived`.
    ChannelDtmfReceived(DtmfReceived),
    /// `ChannelHangupRequest`.
    ChannelHangupRequest(HangupRequest),
    /// `ChannelDestroyed`.
    ChannelDestroyed(ChannelDestroyed),
    /// `ChannelVarset`.
    ChannelVarset(Varset),
    /// `PlaybackStarted`.
    PlaybackStarted(PlaybackEvent),
    /// `PlaybackFinished`.
    PlaybackFinished(PlaybackEvent),
    /// `Dial`.
    Dial(Dial),
    /// `ChannelEnteredBridge`.
    ChannelEnteredBridge(BridgeMembership),
    /// `ChannelLeftBridge`.
    ChannelLeftBridge(BridgeMembership),
    /// `BridgeDestroyed`.
    BridgeDestroyed(BridgeDestroyed),
    /// `ApplicationReplaced`: another events connection took the application over.
    ApplicationReplaced,
    /// Any other event type, by name.
    Other(String),
}

impl Event {
    /// The ARI event type (`StasisStart`, ...), or `other` for a type this gateway does not
    /// read: a bounded set, fit for a metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Event::StasisStart(_) => "StasisStart",
            Event::StasisEnd(_) => "StasisEnd",
            Event::ChannelStateChange(_) => "ChannelStateChange",
            Event::ChannelDtmfReceived(_) => "ChannelDtmfReceived",
            Event::ChannelHangupRequest(_) => "ChannelHangupRequest",
            Event::ChannelDestroyed(_) => "ChannelDestroyed",
            Event::ChannelVarset(_) => "ChannelVarset",
            Event::PlaybackStarted(_) => "PlaybackStarted",
            Event::PlaybackFinished(_) => "PlaybackFinished",
            Event::Dial(_) => "Dial",
            Event::ChannelEnteredBridge(_) => "ChannelEnteredBridge",
            Event::ChannelLeftBridge(_) => "ChannelLeftBridge",
            Event::BridgeDestroyed(_) => "BridgeDestroyed",
            Event::ApplicationReplaced => "ApplicationReplaced",
            Event::Other(_) => "other",
        }
    }

    /// The channel the event is about, if it is about one.
    pub fn channel(&self) -> Option<&Channel> {
        match self {
            Event::StasisStart(e) => Some(&e.channel),
            Event::StasisEnd(e) | Event::ChannelStateChange(e) => Some(&e.channel),
            Event::ChannelDtmfReceived(e) => Some(&e.channel),
            Event::ChannelHangupRequest(e) => Some(&e.channel),
            Event::ChannelDestroyed(e) => Some(&e.channel),
            Event::ChannelVarset(e) => e.channel.as_ref(),
            Event::Dial(e) => Some(&e.peer),
            Event::ChannelEnteredBridge(e) | Event::ChannelLeftBridge(e) => Some(&e.channel),
            Event::PlaybackStarted(_)
            | Event::PlaybackFinished(_)
            | Event::BridgeDestroyed(_)
            | Event::ApplicationReplaced
            | Event::Other(_) => None,
        }
    }
}

/// Reads one events-WebSocket text frame.
pub fn parse_event(text: &str) -> Result<Event, EventError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| EventError::NotJson(e.to_string()))?;
    let kind = match value.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        _ => return Err(EventError::NoType),
    };
    fn typed<T: for<'de> Deserialize<'de>>(kind: &str, value: Value) -> Result<T, EventError> {
        serde_json::from_value(value).map_err(|e| EventError::Malformed {
            kind: kind.to_owned(),
            reason: e.to_string(),
        })
    }
    Ok(match kind.as_str() {
        "StasisStart" => Event::StasisStart(typed(&kind, value)?),
        "StasisEnd" => Event::StasisEnd(typed(&kind, value)?),
        "ChannelStateChange" => Event::ChannelStateChange(typed(&kind, value)?),
        "ChannelDtmfReceived" => Event::ChannelDtmfReceived(typed(&kind, value)?),
        "ChannelHangupRequest" => Event::ChannelHangupRequest(typed(&kind, value)?),
        "ChannelDestroyed" => Event::ChannelDestroyed(typed(&kind, value)?),
        "ChannelVarset" => Event::ChannelVarset(typed(&kind, value)?),
        "PlaybackStarted" => Event::PlaybackStarted(typed(&kind, value)?),
        "PlaybackFinished" => Event::PlaybackFinished(typed(&kind, value)?),
        "Dial" => Event::Dial(typed(&kind, value)?),
        "ChannelEnteredBridge" => Event::ChannelEnteredBridge(typed(&kind, value)?),
        "ChannelLeftBridge" => Event::ChannelLeftBridge(typed(&kind, value)?),
        "BridgeDestroyed" => Event::BridgeDestroyed(typed(&kind, value)?),
        "ApplicationReplaced" => Event::ApplicationReplaced,
        _ => Event::Other(kind),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ari::fixtures;

    #[test]
    fn every_recorded_event_parses_and_none_is_other() {
        let mut count = 0;
        for (file, flow) in fixtures::all() {
            for text in flow.events() {
                let event = parse_event(&text).unwrap_or_else(|e| panic!("{file}: {e}: {text}"));
                assert!(!matches!(event, Event::Other(_)), "{file}: {text}");
                count += 1;
            }
        }
        // The four ARI recordings hold 36 events; fewer means one went missing or was cut.
        assert!(count >= 36, "only {count} events");
    }

    #[test]
    fn stasis_start_carries_args_and_the_sip_call_id() {
        let flow = fixtures::load("browser-calls-stasis.json");
        let first = flow.events().next().unwrap();
        let Event::StasisStart(start) = parse_event(&first).unwrap() else {
            panic!("not a StasisStart");
        };
        assert_eq!(start.args, vec!["700".to_owned()]);
        assert_eq!(start.channel.id, "1795551895.1");
        assert_eq!(start.channel.state, ChannelState::Ring);
        assert_eq!(
            start.channel.protocol_id.as_deref(),
            Some("f18b6cd4179effe0e4277c58")
        );
        assert_eq!(start.channel.dialplan.unwrap().exten, "700");
    }

    #[test]
    fn dtmf_hangup_and_destroyed_fields() {
        let stasis: Vec<Event> = fixtures::load("browser-calls-stasis.json")
            .events()
            .map(|t| parse_event(&t).unwrap())
            .collect();
        let digits: Vec<(String, u32)> = stasis
            .iter()
            .filter_map(|e| match e {
                Event::ChannelDtmfReceived(d) => Some((d.digit.clone(), d.duration_ms)),
                _ => None,
            })
            .collect();
        assert_eq!(
            digits,
            [("1", 120), ("2", 120), ("#", 120)].map(|(d, n)| (d.to_owned(), n))
        );
        let hangup = stasis
            .iter()
            .find_map(|e| match e {
                Event::ChannelHangupRequest(h) => Some(h),
                _ => None,
            })
            .unwrap();
        assert_eq!((hangup.cause, hangup.soft), (Some(32), true));

        let rejected: Vec<Event> = fixtures::load("asterisk-call-rejected.json")
            .events()
            .map(|t| parse_event(&t).unwrap())
            .collect();
        let Some(Event::ChannelDestroyed(gone)) = rejected.last() else {
            panic!("last event is not ChannelDestroyed");
        };
        assert_eq!((gone.cause, gone.cause_txt.as_str()), (17, "User busy"));
        let Event::Dial(dial) = &rejected[2] else {
            panic!("third event is not Dial");
        };
        assert_eq!(dial.dialstatus, "BUSY");
    }

    #[test]
    fn unknown_types_and_fields_are_accepted() {
        let other = parse_event(r#"{"type":"ChannelTalkingStarted","x":1}"#).unwrap();
        assert_eq!(other, Event::Other("ChannelTalkingStarted".into()));
        let end = parse_event(
            r#"{"type":"StasisEnd","new_field":[1,2],"channel":{"id":"c1","state":"Weird","extra":{}}}"#,
        )
        .unwrap();
        let Event::StasisEnd(end) = end else { panic!() };
        assert_eq!(end.channel.state, ChannelState::Other("Weird".into()));
        assert_eq!(end.channel.protocol_id, None);
        assert_eq!(
            parse_event(r#"{"type":"ApplicationReplaced","application":"icegate"}"#).unwrap(),
            Event::ApplicationReplaced
        );
    }

    #[test]
    fn bridge_events_parse() {
        let text = r#"{"type":"ChannelEnteredBridge","bridge":{"id":"b1","bridge_type":"mixing","channels":["c1","c2"]},"channel":{"id":"c2"}}"#;
        let Event::ChannelEnteredBridge(m) = parse_event(text).unwrap() else {
            panic!()
        };
        assert_eq!(m.bridge.channels, vec!["c1".to_owned(), "c2".to_owned()]);
        let gone = parse_event(r#"{"type":"BridgeDestroyed","bridge":{"id":"b1"}}"#).unwrap();
        assert!(matches!(gone, Event::BridgeDestroyed(b) if b.bridge.id == "b1"));
    }

    #[test]
    fn broken_input_is_an_error_not_a_panic() {
        assert!(matches!(
            parse_event("not json"),
            Err(EventError::NotJson(_))
        ));
        assert_eq!(parse_event("[1]"), Err(EventError::NoType));
        assert_eq!(parse_event(r#"{"type":7}"#), Err(EventError::NoType));
        assert!(matches!(
            parse_event(r#"{"type":"StasisStart"}"#),
            Err(EventError::Malformed { kind, .. }) if kind == "StasisStart"
        ));
        assert!(matches!(
            parse_event(r#"{"type":"ChannelDtmfReceived","digit":5,"channel":{"id":"c"}}"#),
            Err(EventError::Malformed { .. })
        ));
    }
}
