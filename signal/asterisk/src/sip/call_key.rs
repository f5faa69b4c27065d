//! How the user agent and its call layer name a call. Below both [`crate::sip::ua`] and
//! [`crate::sip::transaction`], whose client transactions belong to a call.

/// Names a call. The call layer picks `Outgoing` keys; the UA picks `Incoming` ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallKey {
    /// A call the call layer placed with [`UserAgent::invite`](crate::sip::UserAgent::invite).
    Outgoing(u64),
    /// A call Asterisk placed to us, announced by
    /// [`Event::IncomingCall`](crate::sip::Event::IncomingCall).
    Incoming(u64),
}
