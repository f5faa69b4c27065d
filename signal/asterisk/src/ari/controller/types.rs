//! The controller's API types: the names of calls and requests, routing, the configuration,
//! what it reports ([`CallEvent`]) and asks the shell to do ([`Output`]), why a command is
//! refused.

use std::time::Duration;

use crate::ari::events::ChannelState;
use crate::ari::rest::{Method, RestError};

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
    /// Open the events WebSocket at [`Controller::events_path`](super::Controller::events_path).
    Connect,
    /// Perform this REST request under the ARI base URL with basic auth, then call
    /// [`Controller::handle_response`](super::Controller::handle_response).
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
