//! The user agent's API types: its configuration, what it reports ([`Event`]) and asks the
//! shell to do ([`Output`]), why a command is refused, its counters.

use std::time::Duration;

use crate::sip::call_key::CallKey;
use crate::sip::header::NameAddr;

/// The UA's identity and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UaConfig {
    /// The PJSIP endpoint / digest user name (`icegate`).
    pub user: String,
    /// The digest password.
    pub password: String,
    /// Asterisk's domain or host: REGISTER goes to `sip:domain`, calls to `sip:ext@domain`.
    pub domain: String,
    /// The host of our Via and Contact; a random `<hex>.invalid` name when `None` (RFC 7118 §5.2).
    pub contact_host: Option<String>,
    /// The User-Agent header.
    pub user_agent: String,
    /// T1, the RTT estimate (RFC 3261 §17.1.1.1): Timers B/F/H are 64·T1.
    pub t1: Duration,
    /// T2, the cap of the 2xx retransmission interval (§13.3.1.4).
    pub t2: Duration,
    /// How long a REGISTER waits for its final response before it counts as failed and is
    /// retried. Shorter than Timer F (64·T1 = 32 s): Asterisk that is still loading accepts
    /// the WebSocket but drops the REGISTER unanswered, and a registrar on a reliable
    /// transport that has not answered in seconds will not.
    pub register_timeout: Duration,
    /// How long an outgoing call may stay unanswered after a provisional before the UA
    /// cancels it itself (RFC 3261 leaves this to the TU; without it an INVITE that got only
    /// `100 Trying` would live forever).
    pub max_ring: Duration,
    /// Calls at once; more incoming INVITEs get 486.
    pub max_calls: usize,
    /// Whether the WebSocket runs over TLS (`wss://`): the Via says `WSS` then.
    pub secure: bool,
}

impl UaConfig {
    /// A configuration with RFC 3261's default timers.
    pub fn new(user: &str, password: &str, domain: &str) -> UaConfig {
        UaConfig {
            user: user.to_owned(),
            password: password.to_owned(),
            domain: domain.to_owned(),
            contact_host: None,
            user_agent: concat!("icegate-signal/", env!("CARGO_PKG_VERSION")).to_owned(),
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            register_timeout: Duration::from_secs(5),
            max_ring: Duration::from_secs(180),
            max_calls: 64,
            secure: false,
        }
    }
}

/// Who ended an established call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// Asterisk sent BYE.
    Remote,
    /// Our BYE completed.
    Local,
    /// The dialog died: no ACK to our 2xx, 481/408 to a re-INVITE, or the WebSocket closed.
    Lost,
}

/// A From or To party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// The display name without quotes, if any.
    pub display: Option<String>,
    /// The URI.
    pub uri: String,
}

impl Party {
    pub(super) fn from_header(value: Option<&str>) -> Party {
        let addr = value.and_then(NameAddr::parse);
        Party {
            display: addr
                .as_ref()
                .and_then(|a| a.display.as_deref())
                .map(|d| d.trim_matches('"').to_owned()),
            uri: addr.map(|a| a.uri).unwrap_or_default(),
        }
    }
}

/// What the call layer learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The binding is in place for `expires` seconds (refreshed by the UA).
    Registered {
        /// Granted seconds.
        expires: u32,
    },
    /// A REGISTER with expiry 0 succeeded.
    Unregistered,
    /// REGISTER failed: 401/403 (credentials), 408 (no answer), 503 (WebSocket closed)...
    RegistrationFailed {
        /// The final status, or 408/503 for timeout/transport.
        code: u16,
    },
    /// 180/183 for an outgoing call: it rings.
    Provisional {
        /// The call.
        call_key: CallKey,
        /// 180, 183, ...
        code: u16,
    },
    /// 2xx for an outgoing call; the ACK is sent.
    Answered {
        /// The call.
        call_key: CallKey,
        /// Asterisk's SDP answer.
        sdp: String,
    },
    /// An outgoing call ended without being answered.
    Failed {
        /// The call.
        call_key: CallKey,
        /// 486, 404, 487 (cancelled), 403, 408 (timeout), 503 (WebSocket closed), ...
        code: u16,
        /// The reason phrase.
        reason: String,
    },
    /// An established call ended.
    Ended {
        /// The call.
        call_key: CallKey,
        /// Who ended it.
        by: EndedBy,
    },
    /// Asterisk calls us (100 Trying is already sent).
    IncomingCall {
        /// The key for answering, rejecting, ringing.
        call_key: CallKey,
        /// The caller.
        from: Party,
        /// The callee.
        to: Party,
        /// The Request-URI: `Dial(PJSIP/alice@icegate)` puts the user there (and in `To`).
        request_uri: String,
        /// The SDP offer; `None` for an offerless INVITE (the answer then comes in the ACK).
        sdp: Option<String>,
    },
    /// Asterisk cancelled an incoming call before it was answered (487 sent).
    IncomingCancelled {
        /// The call.
        call_key: CallKey,
    },
    /// Asterisk sent a re-INVITE with a changed offer; answer with `answer_incoming`.
    ReinviteOffer {
        /// The call.
        call_key: CallKey,
        /// The new offer; `None` if Asterisk asks us for an offer.
        sdp: Option<String>,
    },
    /// Our re-INVITE was answered.
    ReinviteAnswered {
        /// The call.
        call_key: CallKey,
        /// Asterisk's SDP answer.
        sdp: String,
    },
    /// Our re-INVITE was refused; the call goes on with the old session.
    ReinviteFailed {
        /// The call.
        call_key: CallKey,
        /// The status.
        code: u16,
    },
    /// A DTMF digit in an INFO from Asterisk (a key pressed on the PBX side; 200 is sent).
    Dtmf {
        /// The call.
        call_key: CallKey,
        /// The digit (`0-9 * # A-D`).
        digit: char,
        /// How long it was pressed, if the INFO says.
        duration_ms: Option<u32>,
    },
    /// The SDP answer in an ACK, after we offered in a 2xx to an offerless INVITE.
    LateAnswer {
        /// The call.
        call_key: CallKey,
        /// The answer.
        sdp: String,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this SIP message as one text frame on the WebSocket.
    Send(String),
    /// Tell the call layer.
    Event(Event),
}

/// Why a command from the call layer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No call with this key.
    #[error("no such call")]
    UnknownCall,
    /// `invite` with a key in use or an `Incoming` key.
    #[error("call key in use or not an outgoing key")]
    BadCallKey,
    /// The call is not in a state where the command applies.
    #[error("not possible in this call state: {0}")]
    WrongState(&'static str),
    /// The target has characters that cannot go into a SIP URI.
    #[error("invalid call target")]
    InvalidTarget,
    /// A rejection code outside 300–699.
    #[error("invalid status code {0}")]
    InvalidCode(u16),
    /// The call limit is reached.
    #[error("too many calls")]
    TooManyCalls,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UaStats {
    /// Frames that were not SIP.
    pub malformed: u64,
    /// Responses and requests that matched no transaction or dialog.
    pub unmatched: u64,
    /// DTMF INFOs Asterisk refused (e.g. 415 from a peer without INFO DTMF).
    pub info_refused: u64,
}
