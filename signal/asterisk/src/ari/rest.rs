//! ARI REST requests as values: each typed [`Request`] becomes a method, a path with its query
//! (relative to the `/ari` prefix, as the fixtures record it) and an optional JSON body; the
//! shell adds the base URL and basic auth. Responses are read per request type.
//!
//! Every value a caller controls is percent-encoded: channel ids into path segments, the rest
//! into query values. The encoding keeps the characters that are legal in a query and that
//! Asterisk reads literally (`:` `;` `=` `/` ...) so a request reads as in Asterisk's own docs
//! (`media=tone:ring;tonezone=us`), and escapes the ones that would split or alter it (`&`, `#`,
//! `+`, which Asterisk's form decoding would read as a space, `%`, spaces, `<`, `>`).

use std::fmt::Write;

use crate::ari::events::{Bridge, Channel, Playback};

/// An HTTP method ARI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// DELETE.
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// A request ready for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// Path and query below `/ari` (`/channels/1.2/answer`).
    pub path: String,
    /// A JSON body, if any.
    pub body: Option<String>,
}

/// Why ARI hangs a channel up (the `reason` of `DELETE /channels/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupReason {
    /// Normal clearing (cause 16).
    Normal,
    /// User busy (17).
    Busy,
    /// Congestion (34).
    Congestion,
    /// No answer (19).
    NoAnswer,
    /// Call rejected (21).
    Rejected,
    /// Unallocated number (1).
    Unallocated,
    /// Network out of order / failure (38).
    Failure,
    /// Answered elsewhere.
    AnsweredElsewhere,
}

impl HangupReason {
    /// The reason's name in ARI.
    pub fn as_str(self) -> &'static str {
        match self {
            HangupReason::Normal => "normal",
            HangupReason::Busy => "busy",
            HangupReason::Congestion => "congestion",
            HangupReason::NoAnswer => "no_answer",
            HangupReason::Rejected => "rejected",
            HangupReason::Unallocated => "unallocated",
            HangupReason::Failure => "failure",
            HangupReason::AnsweredElsewhere => "answered_elsewhere",
        }
    }

    /// The reason that passes a Q.850 cause on to another channel (a dialed leg's busy to the
    /// caller's leg).
    pub fn from_cause(cause: Option<i32>) -> Self {
        match cause {
            Some(17) => HangupReason::Busy,
            Some(18) | Some(19) => HangupReason::NoAnswer,
            Some(21) => HangupReason::Rejected,
            Some(1) => HangupReason::Unallocated,
            Some(34) | Some(42) => HangupReason::Congestion,
            Some(38) | Some(41) => HangupReason::Failure,
            _ => HangupReason::Normal,
        }
    }
}

/// `POST /channels`: a new outgoing channel that enters the Stasis application when answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Originate {
    /// The endpoint to call (`PJSIP/icegate`).
    pub endpoint: String,
    /// The Stasis application.
    pub app: String,
    /// The application arguments, comma separated.
    pub app_args: Option<String>,
    /// The caller id (`Reception <100>`).
    pub caller_id: Option<String>,
    /// Seconds to ring before giving up.
    pub timeout: Option<u32>,
    /// The id the channel gets; chosen by the caller so events can be matched to it even if
    /// they arrive before the response.
    pub channel_id: Option<String>,
}

/// An ARI REST request icegate makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET /asterisk/info`.
    AsteriskInfo,
    /// `GET /channels`.
    ListChannels,
    /// `GET /channels/{id}`.
    GetChannel {
        /// The channel.
        channel: String,
    },
    /// `POST /channels/{id}/ring`: indicate ringing to the channel (SIP 180).
    Ring {
        /// The channel.
        channel: String,
    },
    /// `POST /channels/{id}/answer`.
    Answer {
        /// The channel.
        channel: String,
    },
    /// `DELETE /channels/{id}?reason=...`.
    Hangup {
        /// The channel.
        channel: String,
        /// Why.
        reason: HangupReason,
    },
    /// `POST /channels/{id}/play?media=...`.
    Play {
        /// The channel.
        channel: String,
        /// A media URI: `sound:NAME`, `tone:NAME;tonezone=ZONE`, `digits:123`, ...
        media: String,
    },
    /// `DELETE /playbacks/{id}`: stop a playback (a `tone:` plays until stopped).
    StopPlayback {
        /// The playback.
        playback: String,
    },
    /// `POST /channels/{id}/dtmf?dtmf=...`.
    SendDtmf {
        /// The channel.
        channel: String,
        /// The digits.
        dtmf: String,
    },
    /// `POST /channels/{id}/continue?context&extension&priority`: leave Stasis for the dialplan.
    Continue {
        /// The channel.
        channel: String,
        /// The dialplan context.
        context: String,
        /// The extension.
        extension: String,
        /// The priority.
        priority: u32,
    },
    /// `POST /channels/{id}/redirect?endpoint=...`: a SIP-level redirect (302) to an endpoint.
    Redirect {
        /// The channel.
        channel: String,
        /// The endpoint (`PJSIP/200`).
        endpoint: String,
    },
    /// `POST /channels?...`.
    Originate(Originate),
    /// `POST /bridges?type=mixing&bridgeId=...`.
    CreateBridge {
        /// The id the bridge gets.
        bridge: String,
    },
    /// `POST /bridges/{id}/addChannel?channel=a,b`.
    AddChannels {
        /// The bridge.
        bridge: String,
        /// The channels.
        channels: Vec<String>,
    },
    /// `DELETE /bridges/{id}`.
    DestroyBridge {
        /// The bridge.
        bridge: String,
    },
    /// `POST /applications/{app}/subscription?eventSource=...`: events of these sources
    /// (`channel:ID`, `bridge:ID`) go to the application again after it reconnected.
    Subscribe {
        /// The application.
        app: String,
        /// The event sources.
        sources: Vec<String>,
    },
}

impl Request {
    /// The request on the wire.
    pub fn to_http(&self) -> HttpRequest {
        let (method, path) = match self {
            Request::AsteriskInfo => (Method::Get, "/asterisk/info".to_owned()),
            Request::ListChannels => (Method::Get, "/channels".to_owned()),
            Request::GetChannel { channel } => (Method::Get, channel_path(channel, "")),
            Request::Ring { channel } => (Method::Post, channel_path(channel, "/ring")),
            Request::Answer { channel } => (Method::Post, channel_path(channel, "/answer")),
            Request::Hangup { channel, reason } => (
                Method::Delete,
                with_query(channel_path(channel, ""), &[("reason", reason.as_str())]),
            ),
            Request::Play { channel, media } => (
                Method::Post,
                with_query(channel_path(channel, "/play"), &[("media", media)]),
            ),
            Request::StopPlayback { playback } => {
                (Method::Delete, format!("/playbacks/{}", segment(playback)))
            }
            Request::SendDtmf { channel, dtmf } => (
                Method::Post,
                with_query(channel_path(channel, "/dtmf"), &[("dtmf", dtmf)]),
            ),
            Request::Continue {
                channel,
                context,
                extension,
                priority,
            } => (
                Method::Post,
                with_query(
                    channel_path(channel, "/continue"),
                    &[
                        ("context", context),
                        ("extension", extension),
                        ("priority", &priority.to_string()),
                    ],
                ),
            ),
            Request::Redirect { channel, endpoint } => (
                Method::Post,
                with_query(
                    channel_path(channel, "/redirect"),
                    &[("endpoint", endpoint)],
                ),
            ),
            Request::Originate(o) => {
                let timeout = o.timeout.map(|t| t.to_string());
                let params: Vec<(&str, &str)> = [
                    ("endpoint", Some(o.endpoint.as_str())),
                    ("app", Some(o.app.as_str())),
                    ("appArgs", o.app_args.as_deref()),
                    ("callerId", o.caller_id.as_deref()),
                    ("timeout", timeout.as_deref()),
                    ("channelId", o.channel_id.as_deref()),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect();
                (Method::Post, with_query("/channels".to_owned(), &params))
            }
            Request::CreateBridge { bridge } => (
                Method::Post,
                with_query(
                    "/bridges".to_owned(),
                    &[("type", "mixing"), ("bridgeId", bridge)],
                ),
            ),
            Request::AddChannels { bridge, channels } => (
                Method::Post,
                with_query(
                    format!("/bridges/{}/addChannel", segment(bridge)),
                    &[("channel", &channels.join(","))],
                ),
            ),
            Request::DestroyBridge { bridge } => {
                (Method::Delete, format!("/bridges/{}", segment(bridge)))
            }
            Request::Subscribe { app, sources } => (
                Method::Post,
                with_query(
                    format!("/applications/{}/subscription", segment(app)),
                    &[("eventSource", &sources.join(","))],
                ),
            ),
        };
        HttpRequest {
            method,
            path,
            body: None,
        }
    }

    /// Reads the response to this request.
    pub fn parse_response(&self, status: u16, body: &str) -> Result<Reply, RestError> {
        if !(200..300).contains(&status) {
            // ARI errors are `{"message": "..."}`; anything else is kept as text.
            let message = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| body.chars().take(200).collect());
            return Err(match status {
                401 => RestError::Unauthorized(message),
                404 => RestError::NotFound(message),
                _ => RestError::Status { status, message },
            });
        }
        fn json<T: for<'de> serde::Deserialize<'de>>(body: &str) -> Result<T, RestError> {
            serde_json::from_str(body).map_err(|e| RestError::InvalidBody(e.to_string()))
        }
        Ok(match self {
            Request::GetChannel { .. } | Request::Originate(_) => Reply::Channel(json(body)?),
            Request::ListChannels => Reply::Channels(json(body)?),
            Request::Play { .. } => Reply::Playback(json(body)?),
            Request::CreateBridge { .. } => Reply::Bridge(json(body)?),
            Request::AsteriskInfo | Request::Subscribe { .. } => Reply::Json(json(body)?),
            _ => Reply::Empty,
        })
    }
}

/// A successful response, read.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// No body needed (204, or a body this request does not use).
    Empty,
    /// A channel (GET channel, originate).
    Channel(Channel),
    /// All channels.
    Channels(Vec<Channel>),
    /// A playback.
    Playback(Playback),
    /// A bridge.
    Bridge(Bridge),
    /// Other JSON.
    Json(serde_json::Value),
}

/// A failed REST request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// 404: the channel, bridge or application does not exist (`Channel not found`).
    #[error("not found: {0}")]
    NotFound(String),
    /// 401: the ARI user or password is wrong.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Any other non-2xx status.
    #[error("status {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// ARI's message.
        message: String,
    },
    /// A 2xx whose body is not what this request returns.
    #[error("unexpected body: {0}")]
    InvalidBody(String),
    /// No response in time (raised by the controller, not by parsing).
    #[error("no response in time")]
    Timeout,
}

fn channel_path(channel: &str, tail: &str) -> String {
    format!("/channels/{}{tail}", segment(channel))
}

fn with_query(mut path: String, params: &[(&str, &str)]) -> String {
    for (i, (key, value)) in params.iter().enumerate() {
        path.push(if i == 0 { '?' } else { '&' });
        path.push_str(key);
        path.push('=');
        encode_into(&mut path, value, b"/:;=@!$'()*,");
    }
    path
}

/// A path segment: `/`, `?` and `#` must not survive.
fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    encode_into(&mut out, value, b":@!$'()*,;=");
    out
}

fn encode_into(out: &mut String, value: &str, keep: &[u8]) {
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ari::events::ChannelState;
    use crate::ari::fixtures;

    fn path(r: Request) -> String {
        r.to_http().path
    }

    /// The typed request that produces each recorded request.
    fn typed(method: &str, recorded: &str) -> Request {
        let ch = |s: &str| s.to_owned();
        match (method, recorded) {
            ("GET", "/asterisk/info") => Request::AsteriskInfo,
            ("GET", "/channels") => Request::ListChannels,
            ("POST", "/channels/nope/answer") => Request::Answer { channel: ch("nope") },
            ("POST", "/channels/1795551895.1/ring") => Request::Ring {
                channel: ch("1795551895.1"),
            },
            ("POST", "/channels/1795551895.1/answer") => Request::Answer {
                channel: ch("1795551895.1"),
            },
            ("POST", "/channels/1795551895.1/play?media=tone:ring;tonezone=us") => Request::Play {
                channel: ch("1795551895.1"),
                media: ch("tone:ring;tonezone=us"),
            },
            ("POST", "/channels/1795551898.2/play?media=tone:dial;tonezone=us") => Request::Play {
                channel: ch("1795551898.2"),
                media: ch("tone:dial;tonezone=us"),
            },
            ("GET", "/channels/1795551895.1") => Request::GetChannel {
                channel: ch("1795551895.1"),
            },
            ("DELETE", "/channels/1795551895.1?reason=normal") => Request::Hangup {
                channel: ch("1795551895.1"),
                reason: HangupReason::Normal,
            },
            ("POST", "/channels?endpoint=PJSIP/icegate&app=icegate&appArgs=to-browser&callerId=Reception%20%3C100%3E&timeout=20") => {
                Request::Originate(Originate {
                    endpoint: ch("PJSIP/icegate"),
                    app: ch("icegate"),
                    app_args: Some(ch("to-browser")),
                    caller_id: Some(ch("Reception <100>")),
                    timeout: Some(20),
                    channel_id: None,
                })
            }
            ("POST", "/channels?endpoint=PJSIP/icegate&app=icegate&timeout=20") => {
                Request::Originate(Originate {
                    endpoint: ch("PJSIP/icegate"),
                    app: ch("icegate"),
                    timeout: Some(20),
                    ..Originate::default()
                })
            }
            other => panic!("no typed request for recorded {other:?}"),
        }
    }

    #[test]
    fn typed_requests_give_the_recorded_paths_and_read_the_recorded_responses() {
        let mut checked = 0;
        for (file, flow) in fixtures::all() {
            for (method, recorded, status, body) in flow.exchanges() {
                if recorded.starts_with("/endpoints") || recorded.starts_with("/applications") {
                    // Diagnostics the recorder made; icegate does not send them.
                    continue;
                }
                let request = typed(&method, &recorded);
                let http = request.to_http();
                assert_eq!(http.method.as_str(), method, "{file}");
                assert_eq!(http.path, recorded, "{file}");
                assert_eq!(http.body, None);
                let reply = request.parse_response(status, &body);
                match (status, &request, reply) {
                    (204, _, Ok(Reply::Empty)) => {}
                    (
                        200 | 201,
                        Request::Originate(_) | Request::GetChannel { .. },
                        Ok(Reply::Channel(c)),
                    ) => {
                        assert!(c.id.starts_with("17955518"), "{file}: {c:?}");
                        assert!(c.protocol_id.is_some());
                    }
                    (201, Request::Play { .. }, Ok(Reply::Playback(p))) => {
                        assert!(p.media_uri.starts_with("tone:"))
                    }
                    (200, Request::ListChannels, Ok(Reply::Channels(list))) => {
                        assert!(list.is_empty())
                    }
                    (200, Request::AsteriskInfo, Ok(Reply::Json(info))) => {
                        assert_eq!(info["system"]["version"], "22.10.1")
                    }
                    (404, _, Err(RestError::NotFound(m))) => assert_eq!(m, "Channel not found"),
                    (401, _, Err(RestError::Unauthorized(m))) => {
                        assert_eq!(m, "Authentication required")
                    }
                    (status, request, reply) => {
                        panic!("{file}: {status} to {request:?} read as {reply:?}")
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 12);
    }

    #[test]
    fn get_channel_reads_the_full_snapshot() {
        let flow = fixtures::load("browser-calls-stasis.json");
        let (_, _, status, body) = flow
            .exchanges()
            .into_iter()
            .find(|(m, _, _, _)| m == "GET")
            .unwrap();
        let request = Request::GetChannel {
            channel: "1795551895.1".into(),
        };
        let Ok(Reply::Channel(c)) = request.parse_response(status, &body) else {
            panic!()
        };
        assert_eq!(c.state, ChannelState::Up);
        assert_eq!(c.caller.number, "icegate");
    }

    #[test]
    fn values_are_encoded() {
        assert_eq!(
            path(Request::SendDtmf {
                channel: "1.2".into(),
                dtmf: "12#*".into()
            }),
            "/channels/1.2/dtmf?dtmf=12%23*"
        );
        assert_eq!(
            path(Request::Play {
                channel: "a/b?c#d".into(),
                media: "sound:hello world&x=1+2".into()
            }),
            "/channels/a%2Fb%3Fc%23d/play?media=sound:hello%20world%26x=1%2B2"
        );
        assert_eq!(
            path(Request::Continue {
                channel: "1.2".into(),
                context: "from-icegate".into(),
                extension: "600".into(),
                priority: 1
            }),
            "/channels/1.2/continue?context=from-icegate&extension=600&priority=1"
        );
        assert_eq!(
            path(Request::Redirect {
                channel: "1.2".into(),
                endpoint: "PJSIP/200".into()
            }),
            "/channels/1.2/redirect?endpoint=PJSIP/200"
        );
        assert_eq!(
            path(Request::Hangup {
                channel: "é".into(),
                reason: HangupReason::Busy
            }),
            "/channels/%C3%A9?reason=busy"
        );
    }

    #[test]
    fn bridges_and_subscriptions() {
        let create = Request::CreateBridge {
            bridge: "icegate-b1".into(),
        }
        .to_http();
        assert_eq!(
            (create.method, create.path.as_str()),
            (Method::Post, "/bridges?type=mixing&bridgeId=icegate-b1")
        );
        assert_eq!(
            path(Request::AddChannels {
                bridge: "b1".into(),
                channels: vec!["c1".into(), "c2".into()]
            }),
            "/bridges/b1/addChannel?channel=c1,c2"
        );
        let stop = Request::StopPlayback {
            playback: "a b".into(),
        }
        .to_http();
        assert_eq!(
            (stop.method, stop.path.as_str()),
            (Method::Delete, "/playbacks/a%20b")
        );
        let destroy = Request::DestroyBridge {
            bridge: "b1".into(),
        }
        .to_http();
        assert_eq!(
            (destroy.method, destroy.path.as_str()),
            (Method::Delete, "/bridges/b1")
        );
        assert_eq!(
            path(Request::Subscribe {
                app: "icegate".into(),
                sources: vec!["channel:c1".into(), "bridge:b1".into()]
            }),
            "/applications/icegate/subscription?eventSource=channel:c1,bridge:b1"
        );
        assert_eq!(
            path(Request::Originate(Originate {
                endpoint: "PJSIP/icegate".into(),
                app: "icegate".into(),
                channel_id: Some("icegate-1".into()),
                ..Originate::default()
            })),
            "/channels?endpoint=PJSIP/icegate&app=icegate&channelId=icegate-1"
        );
    }

    #[test]
    fn error_statuses() {
        let answer = Request::Answer {
            channel: "x".into(),
        };
        assert_eq!(
            answer.parse_response(409, r#"{"message":"Channel not in Stasis application"}"#),
            Err(RestError::Status {
                status: 409,
                message: "Channel not in Stasis application".into()
            })
        );
        assert_eq!(
            answer.parse_response(500, "boom"),
            Err(RestError::Status {
                status: 500,
                message: "boom".into()
            })
        );
        assert!(matches!(
            Request::ListChannels.parse_response(200, "{}"),
            Err(RestError::InvalidBody(_))
        ));
    }

    #[test]
    fn causes_map_to_reasons() {
        assert_eq!(HangupReason::from_cause(Some(17)), HangupReason::Busy);
        assert_eq!(HangupReason::from_cause(Some(19)), HangupReason::NoAnswer);
        assert_eq!(HangupReason::from_cause(Some(16)), HangupReason::Normal);
        assert_eq!(HangupReason::from_cause(None), HangupReason::Normal);
    }
}
