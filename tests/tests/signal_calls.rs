//! Call flows between real WebSocket clients through the icegate-signal binary.
#![deny(unsafe_code)]

use icegate_tests::signal::{Received, Signal, SignalConfig, WsClient};
use serde_json::{json, Value};

const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
const ANSWER: &str = "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

fn join(signal: &Signal, name: &str) -> (WsClient, Value) {
    let mut client = signal.connect(&format!("name={name}"));
    let welcome = client.expect("welcome");
    assert_eq!(welcome["v"], 1);
    assert_eq!(welcome["user"], name);
    (client, welcome)
}

/// Places a call from `caller` to `user`; returns the call id from the ack.
fn call(caller: &mut WsClient, user: &str) -> String {
    caller.send(json!({"v":1,"type":"call","id":"c1","to":{"user":user},"sdp":OFFER}));
    let ack = caller.expect("ack");
    assert_eq!(ack["id"], "c1");
    ack["call"]
        .as_str()
        .expect("the ack carries the call id")
        .to_owned()
}

#[test]
fn offer_ringing_answer_trickle_hangup() {
    let signal = Signal::start(SignalConfig::default());
    let (mut alice, _) = join(&signal, "alice");
    let (mut bob, _) = join(&signal, "bob");

    let id = call(&mut alice, "bob");
    let incoming = bob.expect("incoming");
    assert_eq!(incoming["call"], id.as_str());
    assert_eq!(incoming["from"], "alice");
    assert_eq!(incoming["sdp"], OFFER);

    bob.send(json!({"v":1,"type":"ringing","id":1,"call":id}));
    assert_eq!(bob.expect("ack")["id"], 1);
    assert_eq!(alice.expect("ringing")["call"], id.as_str());

    // The caller trickles before the answer.
    let candidate = json!({"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host",
                           "sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"});
    alice.send(json!({"v":1,"type":"candidate","id":2,"call":id,"candidate":candidate}));
    assert_eq!(alice.expect("ack")["id"], 2);
    let got = bob.expect("candidate");
    assert_eq!(got["candidate"], candidate);

    bob.send(json!({"v":1,"type":"answer","id":3,"call":id,"sdp":ANSWER}));
    assert_eq!(bob.expect("ack")["id"], 3);
    let answer = alice.expect("answer");
    assert_eq!(
        (answer["call"].as_str(), answer["sdp"].as_str()),
        (Some(id.as_str()), Some(ANSWER))
    );

    // The callee trickles and ends its candidates; without an id there is no ack.
    bob.send(json!({"v":1,"type":"candidate","call":id,"candidate":candidate}));
    bob.send(json!({"v":1,"type":"candidate","call":id,"candidate":null}));
    assert_eq!(alice.expect("candidate")["candidate"], candidate);
    let end = alice.expect("candidate");
    assert!(end["candidate"].is_null(), "end-of-candidates: {end}");

    alice.send(json!({"v":1,"type":"hangup","id":4,"call":id,"reason":"normal"}));
    assert_eq!(alice.expect("ack")["id"], 4);
    let hangup = bob.expect("hangup");
    assert_eq!(
        (hangup["call"].as_str(), hangup["reason"].as_str()),
        (Some(id.as_str()), Some("normal"))
    );

    // The call is gone for both.
    bob.send(json!({"v":1,"type":"hangup","id":5,"call":id}));
    assert_eq!(bob.expect_error("unknown_call")["id"], 5);

    let metrics = signal.metrics();
    assert_eq!(metrics.sum("icegate_signal_calls_started_total", &[]), 1.0);
    assert_eq!(metrics.sum("icegate_signal_calls_answered_total", &[]), 1.0);
    assert_eq!(
        metrics.sum("icegate_signal_calls_ended_total", &[("reason", "normal")]),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "icegate_signal_messages_total",
            &[("direction", "in"), ("type", "candidate")]
        ),
        3.0
    );
    assert_eq!(
        metrics.sum("icegate_signal_errors_total", &[("code", "unknown_call")]),
        1.0
    );
}

#[test]
fn calling_an_unknown_user_is_an_error_and_the_connection_stays() {
    let signal = Signal::start(SignalConfig::default());
    let (mut alice, _) = join(&signal, "alice");
    alice.send(json!({"v":1,"type":"call","id":"x","to":{"user":"nobody"},"sdp":OFFER}));
    let error = alice.expect_error("unknown_user");
    assert_eq!(error["id"], "x");
    assert!(error["message"].is_string());
    alice.ping(2);
}

#[test]
fn callee_disconnecting_mid_call_hangs_up_the_caller() {
    let signal = Signal::start(SignalConfig::default());
    let (mut alice, _) = join(&signal, "alice");
    let (mut bob, _) = join(&signal, "bob");
    let id = call(&mut alice, "bob");
    bob.expect("incoming");
    bob.send(json!({"v":1,"type":"answer","call":id,"sdp":ANSWER}));
    alice.expect("answer");

    // No close handshake: the TCP connection just goes, as with a crashed browser.
    bob.kill();
    let hangup = alice.expect("hangup");
    assert_eq!(hangup["call"], id.as_str());
    assert_eq!(hangup["reason"], "disconnected");
    alice.ping(1);
}

#[test]
fn forked_call_first_answer_wins() {
    let signal = Signal::start(SignalConfig::default());
    let (mut alice, _) = join(&signal, "alice");
    let (mut bob_phone, _) = join(&signal, "bob");
    let (mut bob_laptop, _) = join(&signal, "bob");
    let id = call(&mut alice, "bob");
    assert_eq!(bob_phone.expect("incoming")["call"], id.as_str());
    assert_eq!(bob_laptop.expect("incoming")["call"], id.as_str());

    bob_laptop.send(json!({"v":1,"type":"answer","id":1,"call":id,"sdp":ANSWER}));
    bob_laptop.expect("ack");
    alice.expect("answer");
    let hangup = bob_phone.expect("hangup");
    assert_eq!(hangup["reason"], "answered_elsewhere");

    bob_phone.send(json!({"v":1,"type":"answer","id":2,"call":id,"sdp":ANSWER}));
    bob_phone.expect_error("unknown_call");

    // The caller hangs up: the winner hears it.
    alice.send(json!({"v":1,"type":"hangup","call":id}));
    assert_eq!(bob_laptop.expect("hangup")["reason"], "normal");
}

#[test]
fn declining_and_room_calls() {
    let signal = Signal::start(SignalConfig::default());
    let (mut alice, _) = join(&signal, "alice");
    let (mut bob, _) = join(&signal, "bob");
    let id = call(&mut alice, "bob");
    bob.expect("incoming");
    bob.send(json!({"v":1,"type":"hangup","call":id,"reason":"busy"}));
    assert_eq!(alice.expect("hangup")["reason"], "busy");

    for (client, id) in [(&mut alice, 1), (&mut bob, 2)] {
        client.send(json!({"v":1,"type":"join","id":id,"room":"standup"}));
        assert_eq!(client.expect("ack")["id"], id);
    }
    alice.send(json!({"v":1,"type":"call","id":3,"to":{"room":"standup"},"sdp":OFFER}));
    let ack = alice.expect("ack");
    let incoming = bob.expect("incoming");
    assert_eq!(incoming["call"], ack["call"]);
    assert_eq!(incoming["room"], "standup");
}

#[test]
fn hello_message_authenticates_like_the_url() {
    let signal = Signal::start(SignalConfig::default());
    let mut carol = signal.connect("");
    // Anything but hello and ping is refused until then, and the connection stays.
    carol.send(json!({"v":1,"type":"join","id":1,"room":"r"}));
    assert_eq!(carol.expect_error("not_authenticated")["id"], 1);
    carol.ping(2);
    let welcome = carol.hello_name("carol");
    assert_eq!(welcome["id"], "hello");
    assert_eq!(welcome["user"], "carol");
    carol.send(json!({"v":1,"type":"hello","id":3,"name":"carol"}));
    carol.expect_error("already_authenticated");

    let (mut dave, _) = join(&signal, "dave");
    let id = call(&mut dave, "carol");
    assert_eq!(carol.expect("incoming")["call"], id.as_str());
    carol.close();
    match dave.recv() {
        Received::Json(hangup) => assert_eq!(hangup["reason"], "disconnected", "{hangup}"),
        other => panic!("expected a hangup, got {other:?}"),
    }
}

#[test]
fn dtmf_between_browsers_and_pbx_requests_without_a_pbx() {
    let signal = Signal::start(SignalConfig::default());
    let (mut alice, _) = join(&signal, "alice");
    let (mut bob, _) = join(&signal, "bob");
    // No gateway is configured: extensions are refused with a typed error, connection kept.
    alice.send(json!({"v":1,"type":"call","id":"e","to":{"extension":"600"},"sdp":OFFER}));
    assert_eq!(alice.expect_error("pbx_unavailable")["id"], "e");

    let call = call(&mut alice, "bob");
    assert_eq!(bob.expect("incoming")["call"], call.as_str());
    alice.send(json!({"v":1,"type":"dtmf","id":"d0","call":call,"digits":"1"}));
    assert_eq!(alice.expect_error("invalid_state")["id"], "d0");
    bob.send(json!({"v":1,"type":"answer","id":"a","call":call,"sdp":ANSWER}));
    assert_eq!(bob.expect("ack")["id"], "a");
    assert_eq!(alice.expect("answer")["call"], call.as_str());

    alice.send(json!({"v":1,"type":"dtmf","id":"d1","call":call,"digits":"12#"}));
    assert_eq!(alice.expect("ack")["id"], "d1");
    let dtmf = bob.expect("dtmf");
    assert_eq!(
        (dtmf["call"].as_str(), dtmf["digits"].as_str()),
        (Some(call.as_str()), Some("12#"))
    );
    // Transfer needs the PBX on the other end; bad digits are a typed error.
    alice.send(json!({"v":1,"type":"transfer","id":"t","call":call,"to":"700"}));
    assert_eq!(alice.expect_error("invalid_state")["id"], "t");
    alice.send(json!({"v":1,"type":"dtmf","id":"d2","call":call,"digits":"x"}));
    assert_eq!(alice.expect_error("bad_message")["id"], "d2");
    alice.ping(9);
}
