//! Client transactions over a reliable transport (RFC 3261 §17.1, RFC 7118 §5).
//!
//! On a WebSocket nothing is retransmitted (Timers A, E, G are off) and the wait states after
//! a final response are zero (Timers D, K = 0), so a client transaction is: the request, what
//! it was for, and one deadline — Timer B (INVITE, until a provisional) or Timer F
//! (non-INVITE), both 64·T1. Transactions are keyed by top Via branch and CSeq method, since a
//! CANCEL shares its INVITE's branch (§9.1, §17.1.3).

use std::collections::HashMap;
use std::time::Instant;

use crate::sip::call_key::CallKey;
use crate::sip::message::Message;
use crate::sip::method::Method;

/// What a client transaction was started for: where its response goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A REGISTER.
    Register,
    /// The initial INVITE of an outgoing call.
    Invite(CallKey),
    /// A re-INVITE in an established dialog.
    Reinvite(CallKey),
    /// The CANCEL of an outgoing call's INVITE.
    Cancel(CallKey),
    /// An INFO carrying a DTMF digit (`application/dtmf-relay`).
    Info(CallKey),
    /// A BYE; `notify` says whether its end is reported as `Ended { by: Local }`.
    Bye {
        /// The call.
        call: CallKey,
        /// Report the end when the BYE completes.
        notify: bool,
    },
}

/// One client transaction.
#[derive(Debug, Clone)]
pub struct ClientTx {
    /// What it is for.
    pub purpose: Purpose,
    /// The request as sent, kept to build its ACK, CANCEL or authorized retry.
    pub request: Message,
    /// Timer B or F; `None` once a provisional stopped Timer B.
    pub deadline: Option<Instant>,
    /// How many times it was resent with credentials.
    pub auth_tries: u8,
}

/// The key of a client transaction.
pub type TxKey = (String, Method);

/// All client transactions of a UA.
#[derive(Debug, Default)]
pub struct Transactions {
    txs: HashMap<TxKey, ClientTx>,
}

impl Transactions {
    /// Start tracking `tx`, keyed by the request's branch and method.
    pub fn insert(&mut self, tx: ClientTx) {
        let key = key_of(&tx.request);
        self.txs.insert(key, tx);
    }

    /// The transaction a response belongs to.
    pub fn get_mut(&mut self, key: &TxKey) -> Option<&mut ClientTx> {
        self.txs.get_mut(key)
    }

    /// Stop tracking and return a transaction.
    pub fn remove(&mut self, key: &TxKey) -> Option<ClientTx> {
        self.txs.remove(key)
    }

    /// Drop every transaction of `call` except BYEs (their end is still reported).
    pub fn forget_call(&mut self, call: CallKey) {
        self.txs.retain(|_, tx| match tx.purpose {
            Purpose::Invite(k) | Purpose::Reinvite(k) | Purpose::Cancel(k) | Purpose::Info(k) => {
                k != call
            }
            Purpose::Register | Purpose::Bye { .. } => true,
        });
    }

    /// The INVITE or re-INVITE transaction of `call`, if one is in flight.
    pub fn invite_of(&mut self, call: CallKey) -> Option<(&TxKey, &mut ClientTx)> {
        self.txs.iter_mut().find(
            |(_, tx)| matches!(tx.purpose, Purpose::Invite(k) | Purpose::Reinvite(k) if k == call),
        )
    }

    /// The Call-ID of `call`'s INVITE transaction, if one is in flight.
    pub fn call_id_of(&self, call: CallKey) -> Option<&str> {
        self.txs
            .values()
            .find(|tx| matches!(tx.purpose, Purpose::Invite(k) | Purpose::Reinvite(k) if k == call))
            .map(|tx| tx.request.call_id())
    }

    /// Remove and return every transaction whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<ClientTx> {
        let due: Vec<TxKey> = self
            .txs
            .iter()
            .filter(|(_, tx)| tx.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        due.iter().filter_map(|k| self.txs.remove(k)).collect()
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.txs.values().filter_map(|tx| tx.deadline).min()
    }

    /// Drop everything (the WebSocket is gone) and return what was in flight.
    pub fn drain(&mut self) -> Vec<ClientTx> {
        self.txs.drain().map(|(_, tx)| tx).collect()
    }

    /// How many are in flight.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether none is in flight.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }
}

/// The key of the transaction `message` (a request we sent, or a response to it) belongs to.
pub fn key_of(message: &Message) -> TxKey {
    let branch = message.top_branch().unwrap_or_default().to_owned();
    let method = message.cseq().map(|(_, m)| m).unwrap_or(Method::Ack);
    (branch, method)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn request(method: &str, branch: &str) -> Message {
        let text = format!(
            "{method} sip:a SIP/2.0\r\nVia: SIP/2.0/WS h;branch={branch}\r\nFrom: <sip:b>;tag=1\r\n\
             To: <sip:a>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\r\n"
        );
        Message::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn cancel_and_invite_share_a_branch_but_not_a_key() {
        let now = Instant::now();
        let mut txs = Transactions::default();
        let call = CallKey::Outgoing(1);
        for (method, purpose, deadline) in [
            ("INVITE", Purpose::Invite(call), None),
            ("CANCEL", Purpose::Cancel(call), Some(now)),
        ] {
            txs.insert(ClientTx {
                purpose,
                request: request(method, "z9hG4bK1"),
                deadline,
                auth_tries: 0,
            });
        }
        assert_eq!(txs.len(), 2);
        assert_eq!(txs.next_deadline(), Some(now));
        let expired = txs.expire(now + Duration::from_millis(1));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].purpose, Purpose::Cancel(call));
        assert!(txs.invite_of(call).is_some());
        txs.forget_call(call);
        assert!(txs.is_empty());
    }
}
