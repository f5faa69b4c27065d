//! Responses: every answer to a client is finished, counted and queued here, so signing,
//! SOFTWARE and FINGERPRINT are decided in one place.

use std::net::SocketAddr;

use stun_types::attribute::{AttributeType, ErrorCode, Software, UnknownAttributes};
use stun_types::message::{
    Message, MessageClass, MessageWrite, MessageWriteExt, MessageWriteVec, Method, TransactionId,
};

use super::authenticate::Authed;
use super::{Command, Server};
use crate::config::ServerConfig;
use crate::integrity::{self, HmacAlgorithm, LongTermKey};
use crate::metrics::MethodLabel;
use crate::transport::FiveTuple;

impl Server {
    /// An error response to `msg`, signed when the request was authenticated.
    pub(super) fn error(
        &mut self,
        to: FiveTuple,
        msg: &Message<'_>,
        code: u16,
        authed: Option<&Authed>,
        label: MethodLabel,
    ) {
        let mut out = Message::builder_error(msg, MessageWriteVec::with_capacity(96));
        push_error(&mut out, code);
        self.send(to, out, authed.map(|a| (&a.key, a.hmac)), label, code);
    }

    /// A 420 naming the comprehension-required attributes we do not understand.
    pub(super) fn unknown_attributes(
        &mut self,
        to: FiveTuple,
        msg: &Message<'_>,
        unknown: &[AttributeType],
        label: MethodLabel,
    ) {
        let mut out = Message::builder_error(msg, MessageWriteVec::with_capacity(64));
        push_error(&mut out, ErrorCode::UNKNOWN_ATTRIBUTE);
        let _ = out.add_attribute(&UnknownAttributes::new(unknown));
        self.send(to, out, None, label, ErrorCode::UNKNOWN_ATTRIBUTE);
    }

    /// Signs (when the request was authenticated), adds FINGERPRINT, counts and queues.
    pub(super) fn send(
        &mut self,
        to: FiveTuple,
        out: MessageWriteVec,
        signer: Option<(&LongTermKey, HmacAlgorithm)>,
        label: MethodLabel,
        code: u16,
    ) {
        let data = self.seal(out, signer, label, code);
        self.commands.push_back(Command::SendToClient { to, data });
    }

    /// A successful Binding answer sent over UDP from the listener at `from` to `to`
    /// (RFC 5780: another address or port of ours, another port of the client's).
    pub(super) fn send_from(&mut self, from: SocketAddr, to: SocketAddr, out: MessageWriteVec) {
        let data = self.seal(out, None, MethodLabel::Binding, 0);
        self.commands
            .push_back(Command::SendFrom { from, to, data });
    }

    /// Finishes an answer: SOFTWARE where it belongs, signed when the request was
    /// authenticated, FINGERPRINT; counted.
    fn seal(
        &mut self,
        mut out: MessageWriteVec,
        signer: Option<(&LongTermKey, HmacAlgorithm)>,
        label: MethodLabel,
        code: u16,
    ) -> Vec<u8> {
        match signer {
            Some((key, hmac)) => {
                // Authenticated answers may name our software; unauthenticated ones stay minimal
                // so the relay is no amplifier (SOFTWARE still goes on Binding, RFC 8489 asks for it).
                add_software(&self.config, &mut out);
                integrity::sign(&mut out, key, hmac);
            }
            None if label == MethodLabel::Binding && code == 0 => {
                add_software(&self.config, &mut out)
            }
            None => {}
        }
        let _ = out.add_fingerprint();
        self.counters.request(label, code);
        out.finish()
    }
}

/// What [`add_software`] adds to an unsigned Binding answer, in bytes, and what FINGERPRINT
/// adds after it: for sizing PADDING before they are written.
pub(super) fn unsigned_binding_trailer_len(config: &ServerConfig) -> usize {
    const FINGERPRINT: usize = 8;
    let software = config
        .software
        .as_deref()
        .filter(|s| Software::new(s).is_ok())
        .map_or(0, |s| 4 + s.len().div_ceil(4) * 4);
    software + FINGERPRINT
}

/// SOFTWARE, when one is configured (and valid). Takes the configuration rather than the
/// server so it can be called while an allocation of the server is borrowed.
pub(super) fn add_software(config: &ServerConfig, out: &mut MessageWriteVec) {
    if let Some(s) = config
        .software
        .as_deref()
        .and_then(|s| Software::new(s).ok())
    {
        let _ = out.add_attribute(&s);
    }
}

/// Replaces `out` with a fresh message header: for answers written after the request's bytes
/// are gone (an Allocate answered once its sockets are bound).
pub(super) fn write_header(
    out: &mut MessageWriteVec,
    class: MessageClass,
    method: Method,
    tid: TransactionId,
) {
    let mtype = stun_types::message::MessageType::from_class_method(class, method);
    *out = Message::builder(mtype, tid, std::mem::take(out));
}

/// ERROR-CODE with the standard reason phrase for `code`.
pub(super) fn push_error(out: &mut MessageWriteVec, code: u16) {
    if let Ok(attr) = ErrorCode::builder(code).build() {
        let _ = out.add_attribute(&attr);
    }
}
