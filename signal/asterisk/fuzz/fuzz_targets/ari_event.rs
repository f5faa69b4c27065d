//! Feeds fuzzer bytes, as the text of one events-WebSocket frame, to the ARI event decoder,
//! `parse_event` in `signal/asterisk/src/ari/events.rs` (input that is not UTF-8 is dropped
//! here, as the WebSocket layer would refuse such a text frame).
//!
//! Beyond "no panic", it checks what the module promises (its leniency is what keeps the
//! events connection up when Asterisk adds event types and fields):
//! - `NotJson` exactly when `serde_json` cannot read the text as a JSON value;
//! - `NoType` exactly when the value is not an object with a string `type`;
//! - `Malformed` only for one of the event types the module knows, with that type as its kind;
//! - an unknown string `type` is always accepted, as `Event::Other` with that name, and a
//!   known one never becomes `Other`;
//! - `Event::channel` answers for every decoded event, with a channel id for the variants
//!   whose channel is required.
#![no_main]

use icegate_signal_asterisk::ari::events::{parse_event, Event, EventError};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const KNOWN: [&str; 14] = [
    "StasisStart",
    "StasisEnd",
    "ChannelStateChange",
    "ChannelDtmfReceived",
    "ChannelHangupRequest",
    "ChannelDestroyed",
    "ChannelVarset",
    "PlaybackStarted",
    "PlaybackFinished",
    "Dial",
    "ChannelEnteredBridge",
    "ChannelLeftBridge",
    "BridgeDestroyed",
    "ApplicationReplaced",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let result = parse_event(text);
    let value = serde_json::from_str::<Value>(text);
    let kind = value
        .as_ref()
        .ok()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str);
    match (&result, &value, kind) {
        (Err(EventError::NotJson(_)), Err(_), _) => {}
        (Err(EventError::NotJson(_)), Ok(_), _) => panic!("valid JSON called NotJson: {text}"),
        (_, Err(_), _) => panic!("invalid JSON accepted: {result:?}"),
        (Err(EventError::NoType), Ok(_), None) => {}
        (Err(EventError::NoType), Ok(_), Some(kind)) => panic!("type {kind:?} not seen"),
        (_, Ok(_), None) => panic!("an event without a string type: {result:?}"),
        (Err(EventError::Malformed { kind: k, .. }), Ok(_), Some(kind)) => {
            assert_eq!(k, kind);
            assert!(
                KNOWN.contains(&kind),
                "unknown type {kind:?} called malformed"
            );
        }
        (Ok(event), Ok(_), Some(kind)) => {
            if KNOWN.contains(&kind) {
                assert!(!matches!(event, Event::Other(_)), "{kind} decoded as Other");
            } else {
                assert_eq!(event, &Event::Other(kind.to_owned()));
            }
            // The variants whose channel is required always carry one; ChannelVarset may
            // (a global variable has none); the others never do.
            match event {
                Event::ChannelVarset(_) => {}
                Event::PlaybackStarted(_)
                | Event::PlaybackFinished(_)
                | Event::BridgeDestroyed(_)
                | Event::ApplicationReplaced
                | Event::Other(_) => assert!(event.channel().is_none()),
                _ => assert!(event.channel().is_some()),
            }
        }
    }
});
