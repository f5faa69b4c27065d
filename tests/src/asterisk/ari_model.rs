//! ARI's JSON objects (Channel, Playback, Bridge, events) with the field sets of the
//! recordings. Field order is not reproduced (serde_json sorts keys here); ARI clients
//! must not depend on it.

use super::clock;
use serde_json::{json, Map, Value};
use std::time::SystemTime;

/// The ARI Channel object.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub id: String,
    pub name: String,
    /// `Down`, `Ring`, `Ringing`, `Up`.
    pub state: String,
    /// The SIP Call-ID.
    pub protocol_id: String,
    pub caller: (String, String),
    pub connected: (String, String),
    pub context: String,
    pub exten: String,
    pub priority: u32,
    pub app_name: String,
    pub app_data: String,
    pub creationtime: String,
}

impl ChannelInfo {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "protocol_id": self.protocol_id,
            "caller": {"name": self.caller.0, "number": self.caller.1},
            "connected": {"name": self.connected.0, "number": self.connected.1},
            "accountcode": "",
            "dialplan": {
                "context": self.context,
                "exten": self.exten,
                "priority": self.priority,
                "app_name": self.app_name,
                "app_data": self.app_data,
            },
            "creationtime": self.creationtime,
            "language": "en",
        })
    }
}

/// A playback started by `POST /channels/{id}/play`.
#[derive(Debug, Clone)]
pub struct Playback {
    pub id: String,
    pub media_uri: String,
    pub target_uri: String,
    pub state: String,
}

impl Playback {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "media_uri": self.media_uri,
            "target_uri": self.target_uri,
            "language": "en",
            "state": self.state,
        })
    }
}

/// A bridge (`POST /bridges`). Not in the recordings: fields from the ARI documentation.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub id: String,
    pub bridge_type: String,
    pub name: String,
    pub channels: Vec<String>,
    pub creationtime: String,
}

impl Bridge {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "technology": "simple_bridge",
            "bridge_type": self.bridge_type,
            "bridge_class": "stasis",
            "creator": "Stasis",
            "name": self.name,
            "channels": self.channels,
            "creationtime": self.creationtime,
            "video_mode": "none",
        })
    }
}

/// An event: `type`, `timestamp`, the given fields, `asterisk_id`, `application`.
pub fn event(kind: &str, fields: Vec<(&str, Value)>, asterisk_id: &str, app: &str) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), kind.into());
    m.insert(
        "timestamp".into(),
        clock::ari_timestamp(SystemTime::now()).into(),
    );
    for (k, v) in fields {
        m.insert(k.into(), v);
    }
    m.insert("asterisk_id".into(), asterisk_id.into());
    m.insert("application".into(), app.into());
    Value::Object(m)
}

/// Asterisk's text for a Q.850 cause (`ast_cause2str`), for the causes the stand-in uses.
pub fn cause_txt(cause: u32) -> &'static str {
    match cause {
        1 => "Unallocated (unassigned) number",
        16 => "Normal Clearing",
        17 => "User busy",
        18 => "No user responding",
        19 => "User alerting, no answer",
        21 => "Call Rejected",
        34 => "Circuit/channel congestion",
        102 => "Recovery on timer expiry",
        127 => "Interworking, unspecified",
        _ => "Unknown",
    }
}

/// SIP final response → (Q.850 cause, Dial status), as chan_pjsip maps a callee's answer.
pub fn sip_to_cause(code: u16) -> (u32, &'static str) {
    match code {
        404 | 484 => (1, "CHANUNAVAIL"),
        408 => (102, "NOANSWER"),
        480 => (18, "NOANSWER"),
        486 | 600 => (17, "BUSY"),
        487 => (127, "CANCEL"),
        503 => (34, "CONGESTION"),
        603 => (21, "CHANUNAVAIL"),
        _ => (127, "CONGESTION"),
    }
}
