//! A browser's side of calls with the PBX, as a signal-protocol WebSocket client: the offer
//! it sends, and the steps of placing a call and reading what comes back. Shared by the
//! tests against the stand-in (asterisk_gateway.rs) and against a real Asterisk
//! (asterisk_real*.rs).

use crate::signal::{Received, WsClient};
use serde_json::{json, Value};

/// A browser's offer as Chromium makes it (audio only; ICE, DTLS fingerprint, rtcp-mux),
/// with no media behind it: Asterisk (and the stand-in) accepts it and answers, which is
/// all the signalling tests need. Its ICE never completes, which Asterisk tolerates for a
/// call's lifetime.
pub const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Ab12\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0\r\n\
a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n";

/// Calls `extension` with [`OFFER`] and one trickled candidate; returns the call id.
pub fn call(browser: &mut WsClient, extension: &str) -> String {
    browser.send(json!({"v":1,"type":"call","id":"c","to":{"extension":extension},"sdp":OFFER}));
    let ack = browser.expect("ack");
    let call = ack["call"].as_str().expect("call id").to_owned();
    browser.send(json!({"v":1,"type":"candidate","call":call,"candidate":{
        "candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host","sdpMid":"0","sdpMLineIndex":0}}));
    browser.send(json!({"v":1,"type":"candidate","call":call,"candidate":null}));
    call
}

/// The next message that is not a `ringing`, noting whether a `ringing` came first.
pub fn after_ringing(browser: &mut WsClient) -> (Value, bool) {
    let mut rang = false;
    loop {
        match browser.recv() {
            Received::Json(m) if m["type"] == "ringing" => rang = true,
            Received::Json(m) => return (m, rang),
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// The next message that is not a `ringing`, which must be a `hangup` with `reason`.
pub fn expect_hangup(browser: &mut WsClient, reason: &str) -> Value {
    let (hangup, _) = after_ringing(browser);
    assert_eq!(hangup["type"], "hangup", "{hangup}");
    assert_eq!(hangup["reason"], reason, "{hangup}");
    hangup
}
