//! Test-only access to the recordings of a real Asterisk in `fixtures/asterisk/`
//! (the repository's copy of the shared recordings, so a clean clone has them).

use std::path::PathBuf;

use serde_json::Value;

/// The recordings that carry ARI traffic.
pub const ARI_FLOWS: [&str; 4] = [
    "ari-basics.json",
    "browser-calls-stasis.json",
    "asterisk-calls-browser.json",
    "asterisk-call-rejected.json",
];

/// One message of a recording.
#[derive(Debug, Clone)]
pub enum Message {
    /// An events-WebSocket frame, as text.
    Event(String),
    /// A REST request icegate's side sent.
    Request { method: String, path: String },
    /// Asterisk's REST response.
    Response {
        status: u16,
        /// The body as Asterisk sent it: `""` for a 204.
        body: String,
    },
}

/// One recording.
pub struct Flow {
    /// The ARI messages in recorded order.
    pub messages: Vec<Message>,
}

impl Flow {
    /// The events, as text.
    pub fn events(&self) -> impl Iterator<Item = String> + '_ {
        self.messages.iter().filter_map(|m| match m {
            Message::Event(text) => Some(text.clone()),
            _ => None,
        })
    }

    /// The requests with the response that followed each.
    pub fn exchanges(&self) -> Vec<(String, String, u16, String)> {
        let mut out = Vec::new();
        let mut open: Option<(String, String)> = None;
        for m in &self.messages {
            match m {
                Message::Request { method, path } => open = Some((method.clone(), path.clone())),
                Message::Response { status, body } => {
                    let (method, path) = open.take().expect("a response without a request");
                    out.push((method, path, *status, body.clone()));
                }
                Message::Event(_) => {}
            }
        }
        out
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/asterisk")
}

/// Loads one recording's ARI messages; panics with the path when it is missing.
pub fn load(name: &str) -> Flow {
    let path = dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {} is needed: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).expect("fixture is JSON");
    let mut messages = Vec::new();
    for m in json["messages"].as_array().expect("messages") {
        let data = &m["data"];
        match m["channel"].as_str() {
            Some("ari-events") => {
                // The recorder stored the event as received; it is JSON, so re-serialising keeps
                // every field.
                let text = match data {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                messages.push(Message::Event(text));
            }
            Some("ari-rest") if m["dir"] == "to-asterisk" => messages.push(Message::Request {
                method: data["method"].as_str().expect("method").to_owned(),
                path: data["path"].as_str().expect("path").to_owned(),
            }),
            Some("ari-rest") => messages.push(Message::Response {
                status: data["status"].as_u64().expect("status") as u16,
                body: match &data["body"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            }),
            _ => {}
        }
    }
    Flow { messages }
}

/// Every recording in the folder, by name (most have no ARI messages).
pub fn all() -> Vec<(String, Flow)> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap_or_else(|e| panic!("fixtures folder {} is needed: {e}", dir().display()))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    for needed in ARI_FLOWS {
        assert!(
            names.iter().any(|n| n == needed),
            "fixture {needed} is missing"
        );
    }
    names
        .into_iter()
        .map(|name| {
            let flow = load(&name);
            (name, flow)
        })
        .collect()
}
