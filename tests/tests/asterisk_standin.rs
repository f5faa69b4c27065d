//! The Asterisk stand-in (tests/src/asterisk/) where the recordings of a real Asterisk do
//! not reach (asterisk_recordings.rs replays those): scripted behaviour and faults.
#![deny(unsafe_code)]

use futures_util::SinkExt;
use icegate_tests::asterisk::client::{self, ws_connect, Ws};
use icegate_tests::asterisk::recording;
use icegate_tests::asterisk::sip::SipMessage;
use icegate_tests::asterisk::{digest, AsteriskStandIn, Config, Faults};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

use icegate_tests::asterisk::client::checked::{
    http, options_answered_next, recv_event, recv_sip, recv_text, register, WAIT,
};

// ---- What the recordings do not show: scripted behaviour and faults. ----

/// The offer of the recorded browser call (real addresses, `a=sendrecv`).
fn recorded_offer() -> String {
    let rec = recording::load("browser-calls-echo");
    SipMessage::parse(
        rec.messages
            .iter()
            .find(|m| m.dir == "to-asterisk")
            .unwrap()
            .text(),
    )
    .unwrap()
    .body
}

fn invite_text(exten: &str, call_id: &str, cseq: u32, auth: Option<String>) -> String {
    invite_text_with(exten, call_id, cseq, auth, &recorded_offer())
}

fn invite_text_with(
    exten: &str,
    call_id: &str,
    cseq: u32,
    auth: Option<String>,
    offer: &str,
) -> String {
    let mut m = format!(
        "INVITE sip:{exten}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS c.invalid;branch=z9hG4bK{}\r\nMax-Forwards: 70\r\nFrom: <sip:icegate@127.0.0.1>;tag=f{call_id}\r\nTo: <sip:{exten}@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:icegate@c.invalid;transport=ws>\r\nContent-Type: application/sdp\r\n",
        rand::random::<u64>()
    );
    if let Some(a) = auth {
        m.push_str(&format!("Authorization: {a}\r\n"));
    }
    format!("{m}Content-Length: {}\r\n\r\n{offer}", offer.len())
}

/// INVITE with the digest round (401, then credentials); returns the call id.
async fn invite(ws: &mut Ws, exten: &str) -> String {
    invite_offer(ws, exten, &recorded_offer()).await
}

/// [`invite`] with `offer` as the SDP.
async fn invite_offer(ws: &mut Ws, exten: &str, offer: &str) -> String {
    let call_id = format!("inv{}", rand::random::<u32>());
    ws.send(Message::text(invite_text_with(
        exten, &call_id, 1, None, offer,
    )))
    .await
    .unwrap();
    let challenge = recv_sip(ws).await;
    assert_eq!(challenge.status(), Some(401));
    let auth = digest::authorization(
        challenge.header("WWW-Authenticate").unwrap(),
        "INVITE",
        &format!("sip:{exten}@127.0.0.1"),
        "icegate",
        "sip-secret",
    );
    ws.send(Message::text(invite_text_with(
        exten, &call_id, 2, auth, offer,
    )))
    .await
    .unwrap();
    call_id
}

/// As the real Asterisk does (asterisk_real_calls): an offer with `c=IN IP4 0.0.0.0` (a
/// trickling browser's placeholder, RFC 2543 hold) is answered `a=recvonly` and raises
/// ChannelHold; a re-INVITE with an address takes the hold off (ChannelUnhold).
#[tokio::test]
async fn asterisk_standin_zero_address_offer_is_hold() {
    let pbx = AsteriskStandIn::start(Config::default());
    let mut events = ws_connect(
        pbx.addr(),
        "/ari/events?app=icegate&api_key=icegate:ari-secret",
        None,
    )
    .await
    .unwrap();
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    let offer = recorded_offer();
    let zero = offer.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
    assert_ne!(zero, offer);
    invite_offer(&mut ws, "700", &zero).await;
    let start = recv_event(&mut events).await;
    let id = start["channel"]["id"].as_str().unwrap().to_string();
    let answer = http(
        pbx.addr(),
        "POST",
        &format!("/ari/channels/{id}/answer"),
        Some(("icegate", "ari-secret")),
    )
    .await;
    assert_eq!(answer.status, 204);
    let mut ok = recv_sip(&mut ws).await;
    while ok.status() != Some(200) {
        ok = recv_sip(&mut ws).await;
    }
    assert!(ok.body.contains("a=recvonly\r\n"), "{}", ok.body);
    assert!(!ok.body.contains("a=sendrecv"), "{}", ok.body);
    let mut kinds = Vec::new();
    while let Some(text) = client::recv_text(&mut events, Duration::from_millis(300)).await {
        let event: Value = serde_json::from_str(&text).unwrap();
        kinds.push(event["type"].as_str().unwrap_or_default().to_string());
    }
    assert!(kinds.iter().any(|k| k == "ChannelHold"), "{kinds:?}");
    // The recorded offer (a real address, sendrecv) is no hold.
    let pbx2 = AsteriskStandIn::start(Config::default());
    let mut ws2 = ws_connect(pbx2.addr(), "/ws", Some("sip")).await.unwrap();
    invite(&mut ws2, "600").await;
    let mut ok = recv_sip(&mut ws2).await;
    while ok.status() != Some(200) {
        ok = recv_sip(&mut ws2).await;
    }
    assert!(ok.body.contains("a=sendrecv\r\n"), "{}", ok.body);
}

#[tokio::test]
async fn asterisk_standin_refuses_bad_ari_credentials_and_missing_subprotocol() {
    let pbx = AsteriskStandIn::start(Config::default());
    let addr = pbx.addr();
    let err = ws_connect(addr, "/ari/events?app=icegate&api_key=icegate:nope", None)
        .await
        .unwrap_err();
    assert!(err.contains("401"), "{err}");
    let err = ws_connect(addr, "/ws", None).await.unwrap_err();
    assert!(err.contains("400"), "{err}");
    let r = http(addr, "GET", "/ari/asterisk/info", None).await;
    assert_eq!(r.status, 401);
    let r = http(
        addr,
        "GET",
        "/ari/asterisk/info?api_key=icegate:ari-secret",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "api_key works like basic auth");
    assert_eq!(pbx.connections(), (0, 0));
}

#[tokio::test]
async fn asterisk_standin_drops_malformed_sip_and_keeps_the_connection() {
    let pbx = AsteriskStandIn::start(Config::default());
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    ws.send(Message::text("this is not SIP\r\n\r\n"))
        .await
        .unwrap();
    ws.send(Message::text(
        "INVITE sip:600@x SIP/2.0\r\nVia: SIP/2.0/WS x\r\n\r\n",
    ))
    .await
    .unwrap();
    options_answered_next(&mut ws, "pjsip answers nothing to unparsable messages").await;
    assert_eq!(register(&mut ws).await.status(), Some(200));
    let notes = pbx
        .log()
        .iter()
        .filter(|e| e.data.starts_with("malformed SIP dropped"))
        .count();
    assert_eq!(notes, 2);
}

#[tokio::test]
async fn asterisk_standin_never_answer_fault_stops_at_100_trying() {
    let pbx = AsteriskStandIn::start(Config::default());
    pbx.set_faults(Faults {
        never_answer: true,
        ..Faults::default()
    });
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    invite(&mut ws, "600").await;
    assert_eq!(recv_sip(&mut ws).await.status(), Some(100));
    // Without the fault, 600 (Echo) is answered at once, before the next message is read.
    options_answered_next(&mut ws, "never answers").await;
    assert_eq!(
        pbx.channels().len(),
        1,
        "the call exists, so a CANCEL can end it"
    );
}

#[tokio::test]
async fn asterisk_standin_sip_socket_loss_ends_stasis_calls_and_the_contact() {
    let pbx = AsteriskStandIn::start(Config::default());
    let mut events = ws_connect(
        pbx.addr(),
        "/ari/events?app=icegate&api_key=icegate:ari-secret",
        None,
    )
    .await
    .unwrap();
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    assert_eq!(register(&mut ws).await.status(), Some(200));
    let call_id = invite(&mut ws, "700").await;
    assert_eq!(recv_sip(&mut ws).await.status(), Some(100));
    let start = recv_event(&mut events).await;
    assert_eq!(start["type"], "StasisStart");
    assert_eq!(
        start["channel"]["protocol_id"],
        call_id.as_str(),
        "protocol_id is the Call-ID"
    );
    pbx.drop_sip(false);
    assert!(
        recv_text(&mut ws).await.is_none(),
        "the stand-in closed the socket"
    );
    let kinds: Vec<Value> = vec![
        recv_event(&mut events).await["type"].clone(),
        recv_event(&mut events).await["type"].clone(),
        recv_event(&mut events).await["type"].clone(),
    ];
    assert_eq!(
        kinds,
        [
            json!("ChannelHangupRequest"),
            json!("StasisEnd"),
            json!("ChannelDestroyed")
        ]
    );
    assert!(pbx.registrations().is_empty());
    let r = http(
        pbx.addr(),
        "GET",
        "/ari/endpoints/PJSIP/icegate",
        Some(("icegate", "ari-secret")),
    )
    .await;
    assert!(r.body.contains("\"offline\""), "{}", r.body);
}

#[tokio::test]
async fn asterisk_standin_ari_socket_loss_keeps_channels_and_unregisters_the_app() {
    let pbx = AsteriskStandIn::start(Config::default());
    let mut events = ws_connect(
        pbx.addr(),
        "/ari/events?app=icegate&api_key=icegate:ari-secret",
        None,
    )
    .await
    .unwrap();
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    invite(&mut ws, "700").await;
    assert_eq!(recv_sip(&mut ws).await.status(), Some(100));
    assert_eq!(recv_event(&mut events).await["type"], "StasisStart");
    pbx.drop_ari_events(true);
    assert!(recv_text(&mut events).await.is_none());
    assert!(pbx.wait_until(WAIT, |c| c.event_conns.is_empty()));
    let auth = Some(("icegate", "ari-secret"));
    assert_eq!(
        http(pbx.addr(), "GET", "/ari/applications/icegate", auth)
            .await
            .status,
        404
    );
    let channels = http(pbx.addr(), "GET", "/ari/channels", auth).await;
    assert!(
        channels.body.contains("\"Ring\""),
        "the channel waits in Stasis: {}",
        channels.body
    );
    // Without its application, a new Stasis call is declined.
    invite(&mut ws, "701").await;
    assert_eq!(recv_sip(&mut ws).await.status(), Some(100));
    let declined = recv_sip(&mut ws).await;
    assert_eq!(declined.status(), Some(603));
    assert_eq!(declined.header("Reason"), Some("Q.850;cause=16"));
}

#[tokio::test]
async fn asterisk_standin_raw_injection_and_originate_without_contact() {
    let pbx = AsteriskStandIn::start(Config::default());
    let mut events = ws_connect(
        pbx.addr(),
        "/ari/events?app=icegate&api_key=icegate:ari-secret",
        None,
    )
    .await
    .unwrap();
    let auth = Some(("icegate", "ari-secret"));
    let r = http(
        pbx.addr(),
        "POST",
        "/ari/channels?endpoint=PJSIP/icegate&app=icegate",
        auth,
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (500, "{\"message\":\"Allocation failed\"}")
    );
    pbx.send_ari_raw("{not json");
    assert_eq!(recv_text(&mut events).await.as_deref(), Some("{not json"));
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    assert!(pbx.wait_until(WAIT, |c| !c.sip_conns.is_empty()));
    pbx.send_sip_raw("SIP/2.0 999 Garbage\r\n\r\n");
    assert_eq!(
        recv_text(&mut ws).await.as_deref(),
        Some("SIP/2.0 999 Garbage\r\n\r\n")
    );
}

#[tokio::test]
async fn asterisk_standin_stasis_answer_play_dtmf_continue() {
    let pbx = AsteriskStandIn::start(Config {
        playback_ms: 50,
        ..Config::default()
    });
    let mut events = ws_connect(
        pbx.addr(),
        "/ari/events?app=icegate&api_key=icegate:ari-secret",
        None,
    )
    .await
    .unwrap();
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    invite(&mut ws, "700").await;
    let start = recv_event(&mut events).await;
    let id = start["channel"]["id"].as_str().unwrap().to_string();
    let auth = Some(("icegate", "ari-secret"));
    let addr = pbx.addr();
    let post = |path: String| async move { http(addr, "POST", &path, auth).await };
    assert_eq!(
        post(format!("/ari/channels/{id}/play?media=sound:hello-world"))
            .await
            .status,
        201
    );
    assert_eq!(recv_event(&mut events).await["type"], "PlaybackStarted");
    let done = recv_event(&mut events).await;
    assert_eq!(
        (done["type"].as_str(), done["playback"]["state"].as_str()),
        (Some("PlaybackFinished"), Some("done"))
    );
    assert_eq!(
        post(format!("/ari/channels/{id}/dtmf?dtmf=12%23"))
            .await
            .status,
        204
    );
    assert_eq!(pbx.dtmf_sent(&id).as_deref(), Some("12#"));
    // continue to 600: StasisEnd, then Echo answers the call.
    assert_eq!(
        post(format!(
            "/ari/channels/{id}/continue?context=from-icegate&extension=600&priority=1"
        ))
        .await
        .status,
        204
    );
    assert_eq!(recv_event(&mut events).await["type"], "StasisEnd");
    let mut last = recv_sip(&mut ws).await;
    while last.status() != Some(200) {
        last = recv_sip(&mut ws).await;
    }
    assert!(last.body.contains("a=setup:active"));
    assert_eq!(
        post(format!("/ari/channels/{id}/answer")).await.status,
        409,
        "not in Stasis any more"
    );
}

/// As the real Asterisk does (asterisk_real_stasis): a `tone:` plays until stopped, and a
/// `continue` is answered at once but runs only after it; `DELETE /playbacks/{id}` stops it
/// (PlaybackFinished, state `done`), and then the channel leaves Stasis.
#[tokio::test]
async fn asterisk_standin_continue_waits_for_the_playback() {
    let pbx = AsteriskStandIn::start(Config::default());
    let mut events = ws_connect(
        pbx.addr(),
        "/ari/events?app=icegate&api_key=icegate:ari-secret",
        None,
    )
    .await
    .unwrap();
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    invite(&mut ws, "700").await;
    let start = recv_event(&mut events).await;
    let id = start["channel"]["id"].as_str().unwrap().to_string();
    let auth = Some(("icegate", "ari-secret"));
    let addr = pbx.addr();
    let request =
        |method: &'static str, path: String| async move { http(addr, method, &path, auth).await };
    let played = request("POST", format!("/ari/channels/{id}/play?media=tone:ring")).await;
    assert_eq!(played.status, 201);
    let playback: Value = serde_json::from_str(&played.body).unwrap();
    let pb = playback["id"].as_str().unwrap().to_string();
    assert_eq!(recv_event(&mut events).await["type"], "PlaybackStarted");
    let cont = format!("/ari/channels/{id}/continue?context=from-icegate&extension=600&priority=1");
    assert_eq!(request("POST", cont).await.status, 204);
    // The continue waits behind the tone: its StasisEnd comes only after the playback's end,
    // which the DELETE below causes (the events of one socket come in order).
    assert_eq!(
        request("DELETE", format!("/ari/playbacks/{pb}"))
            .await
            .status,
        204
    );
    let done = recv_event(&mut events).await;
    assert_eq!(
        (done["type"].as_str(), done["playback"]["state"].as_str()),
        (Some("PlaybackFinished"), Some("done"))
    );
    assert_eq!(recv_event(&mut events).await["type"], "StasisEnd");
    assert_eq!(
        request("DELETE", format!("/ari/playbacks/{pb}"))
            .await
            .status,
        404,
        "stopped already"
    );
}

/// Answers every INVITE from the stand-in with 180 only; returns the INVITE.
async fn ring_only(ws: &mut Ws) -> SipMessage {
    let inv = recv_sip(ws).await;
    assert_eq!(inv.method(), "INVITE");
    let ringing = format!(
        "SIP/2.0 180 Ringing\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=cal1\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        inv.header("Via").unwrap(),
        inv.header("From").unwrap(),
        inv.header("To").unwrap(),
        inv.call_id(),
        inv.header("CSeq").unwrap()
    );
    ws.send(Message::text(ringing)).await.unwrap();
    inv
}

#[tokio::test]
async fn asterisk_standin_originate_timeout_cancels_and_acks_the_487() {
    let pbx = AsteriskStandIn::start(Config::default());
    let mut events = ws_connect(
        pbx.addr(),
        "/ari/events?app=icegate&api_key=icegate:ari-secret",
        None,
    )
    .await
    .unwrap();
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    assert_eq!(register(&mut ws).await.status(), Some(200));
    let path = "/ari/channels?endpoint=PJSIP/icegate&app=icegate&appArgs=x&timeout=1";
    assert_eq!(
        http(pbx.addr(), "POST", path, Some(("icegate", "ari-secret")))
            .await
            .status,
        200
    );
    let inv = ring_only(&mut ws).await;
    let cancel = recv_sip(&mut ws).await;
    assert_eq!(cancel.method(), "CANCEL");
    assert_eq!(
        cancel.branch(),
        inv.branch(),
        "CANCEL matches the INVITE's transaction"
    );
    let terminated = format!(
        "SIP/2.0 487 Request Terminated\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=cal1\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        inv.header("Via").unwrap(),
        inv.header("From").unwrap(),
        inv.header("To").unwrap(),
        inv.call_id(),
        inv.header("CSeq").unwrap()
    );
    ws.send(Message::text(terminated)).await.unwrap();
    let ack = recv_sip(&mut ws).await;
    assert_eq!((ack.method().as_str(), ack.branch()), ("ACK", inv.branch()));
    let mut kinds = vec![];
    for _ in 0..5 {
        kinds.push(
            recv_event(&mut events).await["type"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        kinds,
        [
            "Dial",
            "ChannelStateChange",
            "Dial",
            "Dial",
            "ChannelDestroyed"
        ]
    );
    assert!(pbx.channels().is_empty());
}

#[tokio::test]
async fn asterisk_standin_ari_hangup_of_an_unanswered_caller_is_603() {
    let pbx = AsteriskStandIn::start(Config::default());
    let mut events = ws_connect(
        pbx.addr(),
        "/ari/events?app=icegate&api_key=icegate:ari-secret",
        None,
    )
    .await
    .unwrap();
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    let call_id = invite(&mut ws, "700").await;
    assert_eq!(recv_sip(&mut ws).await.status(), Some(100));
    recv_event(&mut events).await;
    let id = pbx
        .channel_for_call_id(&call_id)
        .expect("a channel for the call");
    let bad = http(
        pbx.addr(),
        "DELETE",
        &format!("/ari/channels/{id}?reason=sleepy"),
        Some(("icegate", "ari-secret")),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(
        pbx.channels().len(),
        1,
        "a refused hangup leaves the channel"
    );
    let r = http(
        pbx.addr(),
        "DELETE",
        &format!("/ari/channels/{id}"),
        Some(("icegate", "ari-secret")),
    )
    .await;
    assert_eq!(r.status, 204);
    let fin = recv_sip(&mut ws).await;
    assert_eq!(fin.status(), Some(603));
    let destroyed = loop {
        let e = recv_event(&mut events).await;
        if e["type"] == "ChannelDestroyed" {
            break e;
        }
    };
    assert_eq!(
        (destroyed["cause"].as_u64(), destroyed["cause_txt"].as_str()),
        (Some(16), Some("Normal Clearing"))
    );
    let again = http(
        pbx.addr(),
        "DELETE",
        &format!("/ari/channels/{id}"),
        Some(("icegate", "ari-secret")),
    )
    .await;
    assert_eq!(
        (again.status, again.body.as_str()),
        (404, "{\"message\":\"Channel not found\"}")
    );
}

#[tokio::test]
async fn asterisk_standin_reinvite_info_dtmf_and_bye_from_asterisk() {
    let pbx = AsteriskStandIn::start(Config::default());
    let mut events = ws_connect(
        pbx.addr(),
        "/ari/events?app=icegate&api_key=icegate:ari-secret",
        None,
    )
    .await
    .unwrap();
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    let call_id = invite(&mut ws, "700").await;
    assert_eq!(recv_sip(&mut ws).await.status(), Some(100));
    recv_event(&mut events).await;
    let id = pbx.channel_for_call_id(&call_id).unwrap();
    let auth = Some(("icegate", "ari-secret"));
    assert_eq!(
        http(
            pbx.addr(),
            "POST",
            &format!("/ari/channels/{id}/answer"),
            auth
        )
        .await
        .status,
        204
    );
    assert_eq!(recv_event(&mut events).await["channel"]["state"], "Up");
    let ok = recv_sip(&mut ws).await;
    assert_eq!(ok.status(), Some(200));
    let to = ok.header("To").unwrap().to_string();
    // In-dialog requests reuse the dialog's identifiers.
    let in_dialog = |method: &str, cseq: u32, ctype: &str, body: &str| {
        format!(
            "{method} sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS c.invalid;branch=z9hG4bK{method}{cseq}\r\nFrom: <sip:icegate@127.0.0.1>;tag=f{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    ws.send(Message::text(in_dialog(
        "INFO",
        3,
        "application/dtmf-relay",
        "Signal=5\r\nDuration=160\r\n",
    )))
    .await
    .unwrap();
    assert_eq!(recv_sip(&mut ws).await.status(), Some(200));
    let dtmf = recv_event(&mut events).await;
    assert_eq!(
        (dtmf["type"].as_str(), dtmf["digit"].as_str()),
        (Some("ChannelDtmfReceived"), Some("5"))
    );
    let offer = SipMessage::parse(&invite_text("700", &call_id, 4, None))
        .unwrap()
        .body;
    ws.send(Message::text(in_dialog(
        "INVITE",
        4,
        "application/sdp",
        &offer,
    )))
    .await
    .unwrap();
    assert_eq!(recv_sip(&mut ws).await.status(), Some(100));
    let re = recv_sip(&mut ws).await;
    assert_eq!(re.status(), Some(200));
    assert!(re.body.contains("a=setup:active"));
    assert!(pbx.hangup(&id, 16));
    let bye = recv_sip(&mut ws).await;
    assert_eq!(bye.method(), "BYE");
    assert_eq!(bye.header("Reason"), Some("Q.850;cause=16"));
    assert_eq!(
        bye.from_tag(),
        ok.to_tag(),
        "Asterisk's BYE comes from its side of the dialog"
    );
    assert!(bye
        .request_uri()
        .unwrap()
        .starts_with("sip:icegate@127.0.0.1:"));
}

#[tokio::test]
async fn asterisk_standin_bridges() {
    let pbx = AsteriskStandIn::start(Config::default());
    let mut events = ws_connect(
        pbx.addr(),
        "/ari/events?app=icegate&api_key=icegate:ari-secret",
        None,
    )
    .await
    .unwrap();
    let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
    let call_id = invite(&mut ws, "700").await;
    recv_event(&mut events).await;
    let id = pbx.channel_for_call_id(&call_id).unwrap();
    let auth = Some(("icegate", "ari-secret"));
    let b = http(pbx.addr(), "POST", "/ari/bridges?type=mixing", auth).await;
    assert_eq!(b.status, 200);
    let bridge: Value = serde_json::from_str(&b.body).unwrap();
    let bid = bridge["id"].as_str().unwrap();
    let add = http(
        pbx.addr(),
        "POST",
        &format!("/ari/bridges/{bid}/addChannel?channel={id}"),
        auth,
    )
    .await;
    assert_eq!(add.status, 204);
    let entered = recv_event(&mut events).await;
    assert_eq!(entered["type"], "ChannelEnteredBridge");
    assert_eq!(entered["bridge"]["channels"], json!([id]));
    let missing = http(
        pbx.addr(),
        "POST",
        &format!("/ari/bridges/{bid}/addChannel?channel=nope"),
        auth,
    )
    .await;
    assert_eq!(missing.status, 422);
    assert_eq!(
        http(pbx.addr(), "DELETE", &format!("/ari/bridges/{bid}"), auth)
            .await
            .status,
        204
    );
    assert_eq!(recv_event(&mut events).await["type"], "ChannelLeftBridge");
    assert_eq!(
        http(pbx.addr(), "GET", &format!("/ari/bridges/{bid}"), auth)
            .await
            .status,
        404
    );
}

/// MediaMode::Echo: a WebRTC client (webrtc-rs, relay-only, like the recorded Chromium)
/// calls 600 and gets its audio back through icegate-relay.
#[cfg(feature = "media-echo")]
mod echo {
    use super::*;
    use icegate_tests::asterisk::media;
    use icegate_tests::asterisk::{MediaMode, TurnServer};
    use icegate_tests::{Relay, RelayConfig, ServerKind};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use webrtc::api::media_engine::MIME_TYPE_PCMU;
    use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
    use webrtc::rtp::packet::Packet;
    use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
    use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
    use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

    fn invite_with(sdp: &str, call_id: &str, cseq: u32, auth: Option<String>) -> String {
        let mut m = format!(
            "INVITE sip:600@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS c.invalid;branch=z9hG4bKe{call_id}{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:icegate@127.0.0.1>;tag=f{call_id}\r\nTo: <sip:600@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:icegate@c.invalid;transport=ws>\r\nContent-Type: application/sdp\r\n"
        );
        if let Some(a) = auth {
            m.push_str(&format!("Authorization: {a}\r\n"));
        }
        format!("{m}Content-Length: {}\r\n\r\n{sdp}", sdp.len())
    }

    /// `sdp` with its `c=` address and `m=` port those of its first candidate.
    fn at_first_candidate(sdp: &str) -> String {
        let fields: Vec<&str> = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=candidate:"))
            .expect("a candidate")
            .split(' ')
            .collect();
        let (ip, port) = (fields[4], fields[5]);
        sdp.replace("c=IN IP4 0.0.0.0", &format!("c=IN IP4 {ip}"))
            .replace("m=audio 9 ", &format!("m=audio {port} "))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asterisk_standin_echo_media_through_icegate_relay() {
        let relay = Relay::start(ServerKind::Icegate, RelayConfig::default());
        let turn = TurnServer {
            url: format!("turn:127.0.0.1:{}?transport=udp", relay.ports.listen()),
            username: "alice".into(),
            password: "secret".into(),
        };
        let pbx = AsteriskStandIn::start(Config {
            media: MediaMode::Echo(turn.clone()),
            ..Config::default()
        });

        // The caller: PCMU, relay candidates only, all of them in the offer.
        let pc = media::peer_connection(&turn).await.unwrap();
        let codec = RTCRtpCodecCapability {
            mime_type: MIME_TYPE_PCMU.into(),
            clock_rate: 8000,
            ..Default::default()
        };
        let track = Arc::new(TrackLocalStaticRTP::new(
            codec,
            "mic".into(),
            "caller".into(),
        ));
        pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>)
            .await
            .unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        pc.on_track(Box::new(move |remote, _, _| {
            let counter = Arc::clone(&counter);
            Box::pin(async move {
                tokio::spawn(async move {
                    while remote.read_rtp().await.is_ok() {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            })
        }));
        let offer = pc.create_offer(None).await.unwrap();
        let offer = media::complete_local_sdp(&pc, offer).await.unwrap();
        assert!(offer.contains("typ relay"), "{offer}");
        // webrtc-rs leaves the placeholder `c=0.0.0.0` and port 9 with its candidates; Asterisk
        // reads that as hold. The gateway writes the default candidate in; so does this test.
        let offer = at_first_candidate(&offer);

        let mut ws = ws_connect(pbx.addr(), "/ws", Some("sip")).await.unwrap();
        let call_id = format!("echo{}", rand::random::<u32>());
        ws.send(Message::text(invite_with(&offer, &call_id, 1, None)))
            .await
            .unwrap();
        let challenge = recv_sip(&mut ws).await;
        let auth = digest::authorization(
            challenge.header("WWW-Authenticate").unwrap(),
            "INVITE",
            "sip:600@127.0.0.1",
            "icegate",
            "sip-secret",
        );
        ws.send(Message::text(invite_with(&offer, &call_id, 2, auth)))
            .await
            .unwrap();
        assert_eq!(recv_sip(&mut ws).await.status(), Some(100));
        // Gathering through the relay takes a moment before the 200 comes.
        let ok = loop {
            let text = client::recv_text(&mut ws, Duration::from_secs(15))
                .await
                .expect("200 OK");
            let m = SipMessage::parse(&text).unwrap();
            if m.status() == Some(200) {
                break m;
            }
        };
        assert!(ok.body.contains("typ relay"), "{}", ok.body);
        assert!(
            !ok.body.contains("typ host"),
            "relayed candidates only: {}",
            ok.body
        );
        assert!(ok.body.contains("a=setup:active"), "{}", ok.body);
        pc.set_remote_description(RTCSessionDescription::answer(ok.body.clone()).unwrap())
            .await
            .unwrap();

        // 20 ms of PCMU silence per packet until enough comes back.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut seq: u16 = 0;
        while received.load(Ordering::Relaxed) < 25 && std::time::Instant::now() < deadline {
            let mut p = Packet::default();
            p.header.version = 2;
            p.header.sequence_number = seq;
            p.header.timestamp = u32::from(seq) * 160;
            p.payload = vec![0xFFu8; 160].into();
            let _ = track.write_rtp(&p).await;
            seq = seq.wrapping_add(1);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let echoed = {
            let c = pbx.lock();
            c.calls
                .iter()
                .filter_map(|x| x.media.as_ref())
                .map(|m| m.echoed())
                .sum::<u64>()
        };
        assert!(
            received.load(Ordering::Relaxed) >= 25,
            "only {} packets came back ({} echoed, {} sent)",
            received.load(Ordering::Relaxed),
            echoed,
            seq
        );
        assert!(echoed >= 25);
        let _ = pc.close().await;
    }
}
