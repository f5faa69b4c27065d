//! Faults between icegate-signal's gateway and a real Asterisk (the sample configuration of
//! docs/asterisk/): ARI lost and regained while SIP stays, Asterisk killed and restarted in
//! the middle of a call, and the gateway reaching Asterisk only over `wss://` and `https://`
//! with `asterisk-ca`. Each test checks what the browser is told and what Asterisk itself
//! has (CLI, ARI, the ARI observer), and that neither side keeps a call.
//!
//! How the faults are made on the real Asterisk 22:
//! - `module reload res_ari.so` does NOT drop ARI WebSockets (the session stays, events keep
//!   coming); `ari shutdown websocket session <id>` does, with a WebSocket close.
//! - To keep ARI down, the ARI user's password in ari.conf is changed and res_ari reloaded:
//!   sessions already open stay, new ones get 401, so the gateway's reconnects fail (with
//!   backoff) until the password is put back.
//! - A crash is SIGKILL (`RealAsterisk::crash_and_restart`): no BYE, no WebSocket close.
//!
//! What the real one does that matters here:
//! - A channel in Stasis outlives its application's WebSocket: the application stays (with
//!   the channel, `ari show app icegate`) and the reconnected client gets it back.
//! - While booting, Asterisk answers `/ws` with 404 and ARI with 503 for a moment, and then
//!   accepts the SIP WebSocket before pjsip takes requests: a REGISTER sent then is ignored
//!   without an answer (pjsip leaves it to a retransmission, which a WebSocket never has),
//!   and Asterisk closes the idle transport after 32 s ("no request was received in 32
//!   seconds"). The gateway gives a REGISTER 5 s (`register_timeout`) and then sends it
//!   again on the same connection, so it is back within seconds; the restart test holds it
//!   to that (it took 33 s before that fix, in about a third of the runs).
//! - An ARI `tone:` playback lasts until stopped and holds the channel's Stasis commands:
//!   a `transfer` after a `play` of a tone waits behind it, so the test stops its tones.
//! - Over `wss://` the contact is stored with `transport=ws` (what the gateway sends), and
//!   Asterisk still reaches the browser on that connection; the `[transport-wss]` section is
//!   not needed for it, but Asterisk accepts it beside `[transport-ws]`.
//!
//! Without an Asterisk (`ASTERISK_BIN`), each test says SKIPPED and passes.
#![deny(unsafe_code)]

use icegate_tests::asterisk::pbx_calls::{expect_hangup, OFFER};
use icegate_tests::asterisk::real::{ARI_AUTH, SIP_PASSWORD};
use icegate_tests::asterisk::real_rig::{RealRig, RigOptions, REGISTER_WAIT, WAIT};
use icegate_tests::server::write_self_signed_cert;
use icegate_tests::signal::{eventually, Signal, SignalConfig, WsClient};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The ids of Asterisk's ARI WebSocket sessions serving the application `app`
/// (`ari show websocket sessions`: id, type, remote address, state, applications).
fn ari_sessions(rig: &RealRig, app: &str) -> Vec<String> {
    rig.ast
        .cli("ari show websocket sessions")
        .lines()
        .filter(|l| l.split_whitespace().skip(4).any(|a| a == app))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Asterisk closes the gateway's one ARI events WebSocket; returns the session it closed.
fn drop_gateway_ari(rig: &RealRig) -> String {
    let sessions = ari_sessions(rig, "icegate");
    assert_eq!(
        sessions.len(),
        1,
        "{}",
        rig.ast.cli("ari show websocket sessions")
    );
    let out = rig
        .ast
        .cli(&format!("ari shutdown websocket session {}", sessions[0]));
    assert!(out.contains("Shutting down websocket session"), "{out}");
    sessions[0].clone()
}

/// Sets the ARI user's password in ari.conf and reloads res_ari: open sessions stay, new
/// connections need the new password.
fn set_ari_password(rig: &RealRig, password: &str) {
    let path = rig.ast.dir.path().join("ari.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("password =") {
                format!("password = {password}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, text + "\n").unwrap();
    let out = rig.ast.cli("module reload res_ari.so");
    assert!(out.contains("reloaded successfully"), "{out}");
}

/// The gateway's log lines containing `text`.
fn log_lines(rig: &RealRig, text: &str) -> Vec<String> {
    rig.signal
        .log()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_owned)
        .collect()
}

/// How many of the gateway's log lines contain `text`.
fn logged(rig: &RealRig, text: &str) -> usize {
    log_lines(rig, text).len()
}

/// The time of a log line (`2026-12-02T19:02:13.826746Z ...`), in seconds of the day.
fn log_time(line: &str) -> f64 {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let clock = stamp
        .split_once('T')
        .map(|(_, c)| c.trim_end_matches('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let parts: Vec<f64> = clock.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

/// Checks that consecutive attempts (log lines) are at least the gateway's backoff apart:
/// 250 ms, then doubling (a loaded machine only makes the gaps longer).
fn assert_backoff(attempts: &[String]) {
    let times: Vec<f64> = attempts.iter().map(|l| log_time(l)).collect();
    for (k, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        // Attempt k+1 waited reconnect_delay(k) after attempt k failed; failing is quick.
        let nominal = 0.25 * f64::from(1u32 << (k + 1).min(7));
        assert!(
            gap >= nominal * 0.9,
            "attempt {} came {gap:.3} s after the one before, less than the backoff \
             {nominal} s: {attempts:#?}",
            k + 2
        );
    }
}

/// Asterisk's view of a channel through ARI: 200, up, running `app`.
fn assert_up_in(rig: &RealRig, channel: &str, app: &str) {
    let up = eventually(WAIT, || {
        let (status, ch) = rig.ast.ari("GET", &format!("/ari/channels/{channel}"));
        status == 200 && ch["state"] == "Up" && ch["dialplan"]["app_name"] == app
    });
    assert!(
        up,
        "channel {channel} should be up in {app}: {:?}",
        rig.ast.ari("GET", &format!("/ari/channels/{channel}"))
    );
}

/// The channel as `core show channels concise` lists it (CLI: works while ARI refuses
/// logins): `name!context!exten!priority!state!app!...!uniqueid`.
fn cli_channel(rig: &RealRig, channel: &str) -> Option<String> {
    rig.ast
        .cli("core show channels concise")
        .lines()
        .find(|l| l.ends_with(&format!("!{channel}")))
        .map(str::to_owned)
}

/// The browser asks for a tone on a Stasis call; Asterisk starts a playback on its channel
/// (the observer sees `PlaybackStarted` for it): proof that ARI controls the call. A tone
/// plays until stopped and holds the channel's Stasis command queue, so the test stops it
/// (ARI `DELETE /playbacks/{id}`) and waits for `PlaybackFinished`.
fn play_reaches_asterisk(rig: &RealRig, browser: &mut WsClient, call_id: &str, channel: &str) {
    let target = format!("channel:{channel}");
    let playbacks = |kind: &str| -> Vec<Value> {
        rig.observer
            .of_type(kind)
            .into_iter()
            .filter(|e| e["playback"]["target_uri"] == target.as_str())
            .collect()
    };
    let before = playbacks("PlaybackStarted").len();
    browser
        .send(json!({"v":1,"type":"play","id":"p","call":call_id,"media":"tone:ring;tonezone=us"}));
    assert_eq!(browser.expect("ack")["id"], "p");
    let started = eventually(WAIT, || playbacks("PlaybackStarted").len() > before);
    assert!(
        started,
        "Asterisk started no playback on {channel}; events: {:#?}",
        rig.observer.events()
    );
    let playback = playbacks("PlaybackStarted")[before]["playback"].clone();
    assert_eq!(playback["media_uri"], "tone:ring;tonezone=us", "{playback}");
    let id = playback["id"].as_str().unwrap();
    let (status, body) = rig.ast.ari("DELETE", &format!("/ari/playbacks/{id}"));
    assert_eq!(status, 204, "{body}");
    let finished = eventually(WAIT, || {
        playbacks("PlaybackFinished")
            .iter()
            .any(|e| e["playback"]["id"] == id)
    });
    assert!(finished, "{:#?}", rig.observer.events());
}

/// The browser hangs up; Asterisk destroys the channel.
fn hang_up(rig: &RealRig, browser: &mut WsClient, call_id: &str, channel: &str) {
    browser.send(json!({"v":1,"type":"hangup","call":call_id}));
    rig.observer
        .expect_channel_event("ChannelDestroyed", channel, WAIT);
}

#[test]
fn asterisk_real_ari_lost_and_regained_keeps_answered_calls() {
    let Some(rig) = RealRig::start(
        "asterisk_real_ari_lost_and_regained_keeps_answered_calls",
        RigOptions::default(),
    ) else {
        return;
    };
    let mut alice = rig.browser("alice");
    // Two answered calls: 600 runs in the dialplan (Echo), 700 in icegate's Stasis
    // application, answered by the gateway through ARI.
    let (c600, ch600) = rig.answered_call(&mut alice, "600", 0);
    let (c700, ch700) = rig.answered_call(&mut alice, "700", 1);
    assert_up_in(&rig, &ch600, "Echo");
    assert_up_in(&rig, &ch700, "Stasis");

    // 1. Asterisk closes the gateway's events WebSocket; SIP is untouched.
    let first = drop_gateway_ari(&rig);
    let noticed = eventually(WAIT, || {
        logged(&rig, "ARI events WebSocket closed") == 1
            && logged(&rig, "ARI is down: answered calls go on") == 1
    });
    assert!(noticed, "the gateway did not notice: {}", rig.signal.log());
    // It reconnects after the first backoff step; Asterisk sees a new session.
    let reconnected = eventually(WAIT, || logged(&rig, "ARI events WebSocket open") == 2);
    assert!(reconnected, "{}", rig.signal.log());
    rig.wait_available(WAIT);
    let second = ari_sessions(&rig, "icegate");
    assert!(
        second.len() == 1 && second[0] != first,
        "Asterisk's sessions for icegate: {second:?} (the dropped one was {first})"
    );
    // Neither call noticed: the browser gets nothing but its pong, Asterisk keeps both
    // channels where they were, and the Stasis call is under ARI control again.
    alice.ping(1);
    assert_up_in(&rig, &ch600, "Echo");
    assert_up_in(&rig, &ch700, "Stasis");
    play_reaches_asterisk(&rig, &mut alice, &c700, &ch700);
    assert_eq!(rig.gauge("icegate_signal_asterisk_sip_registered"), 1.0);

    // 2. ARI kept down: Asterisk closes the session and refuses the gateway's logins.
    set_ari_password(&rig, "locked-out");
    let lost_at = Instant::now();
    drop_gateway_ari(&rig);
    let failed = "ARI events: WebSocket handshake";
    assert!(
        eventually(WAIT, || logged(&rig, failed) >= 3),
        "the gateway should retry: {}",
        rig.signal.log()
    );
    let attempts = log_lines(&rig, failed);
    assert!(attempts.iter().all(|l| l.contains("401")), "{attempts:#?}");
    assert_backoff(&attempts);
    assert_eq!(rig.gauge("icegate_signal_asterisk_ari_connected"), 0.0);
    assert_eq!(rig.gauge("icegate_signal_asterisk_sip_registered"), 1.0);
    // Asterisk: no session for icegate, but the application still holds its Stasis channel
    // (it waits for its client), and both calls are up.
    assert!(ari_sessions(&rig, "icegate").is_empty());
    let app = rig.ast.cli("ari show app icegate");
    assert!(app.contains(&ch700), "{app}");
    for (channel, app) in [(&ch600, "!Echo!"), (&ch700, "!Stasis!")] {
        let line = cli_channel(&rig, channel).unwrap_or_default();
        assert!(
            line.contains("!Up!") && line.contains(app),
            "{channel}: {line:?}"
        );
    }
    // The browser: new calls to extensions are refused at once, its answered calls go on.
    alice.send(json!({"v":1,"type":"call","id":"refused","to":{"extension":"601"},"sdp":OFFER}));
    let error = alice.expect_error("pbx_unavailable");
    assert_eq!(error["id"], "refused", "{error}");
    alice.ping(2);

    // 3. Asterisk takes the gateway's login again; the next attempt gets in.
    set_ari_password(&rig, ARI_AUTH.1);
    rig.wait_available(REGISTER_WAIT);
    eprintln!(
        "ARI down for {:?}, {} refused attempts",
        lost_at.elapsed(),
        logged(&rig, failed)
    );
    assert_eq!(logged(&rig, "ARI events WebSocket open"), 3);
    assert_eq!(ari_sessions(&rig, "icegate").len(), 1);
    alice.ping(3);
    assert_up_in(&rig, &ch600, "Echo");
    assert_up_in(&rig, &ch700, "Stasis");
    // ARI controls the Stasis call again: the browser transfers it to 600, and Asterisk
    // moves the channel out of Stasis into the dialplan's Echo().
    alice.send(json!({"v":1,"type":"transfer","id":"t","call":c700,"to":"600"}));
    assert_eq!(alice.expect("ack")["id"], "t");
    assert_up_in(&rig, &ch700, "Echo");
    alice.ping(4);
    // A new Stasis call: the gateway answers it through ARI.
    let (c701, ch701) = rig.answered_call(&mut alice, "701", 2);
    assert_up_in(&rig, &ch701, "Stasis");

    for (call_id, channel) in [(&c600, &ch600), (&c700, &ch700), (&c701, &ch701)] {
        hang_up(&rig, &mut alice, call_id, channel);
    }
    rig.assert_no_leaks();
    let m = rig.signal.metrics();
    assert_eq!(
        m.sum(
            "icegate_signal_asterisk_calls_total",
            &[("result", "answered")]
        ),
        3.0,
        "{}",
        m.raw
    );
}

#[test]
fn asterisk_real_restarted_mid_call_hangs_up_and_registers_again() {
    let Some(mut rig) = RealRig::start(
        "asterisk_real_restarted_mid_call_hangs_up_and_registers_again",
        RigOptions::default(),
    ) else {
        return;
    };
    let mut alice = rig.browser("alice");
    let (c600, ch600) = rig.answered_call(&mut alice, "600", 0);
    assert_up_in(&rig, &ch600, "Echo");
    let old_pid = rig.ast.pid();

    // SIGKILL, then systemd-style respawn on the same configuration.
    let crashed_at = Instant::now();
    rig.ast.crash_and_restart();
    assert_ne!(rig.ast.pid(), old_pid);
    // The browser is told at once: the SIP WebSocket is gone, so is the call.
    let hangup = expect_hangup(&mut alice, "unavailable");
    assert_eq!(hangup["call"], c600.as_str(), "{hangup}");
    let told_after = crashed_at.elapsed();
    assert!(told_after < WAIT, "hangup after {told_after:?}");
    alice.ping(1);

    // The gateway reconnects with backoff and registers with the new Asterisk.
    rig.wait_available(REGISTER_WAIT);
    let back_after = crashed_at.elapsed();
    let sip_retries = log_lines(&rig, "SIP WebSocket: ");
    eprintln!(
        "Asterisk restarted: the browser was told after {told_after:?}, the gateway was \
         registered again after {back_after:?}; failed SIP connects: {sip_retries:#?}"
    );
    assert!(
        !sip_retries.is_empty(),
        "the gateway should have retried while Asterisk started: {}",
        rig.signal.log()
    );
    assert_backoff(&sip_retries);
    let ari_retries = log_lines(&rig, "ARI events: ");
    assert!(!ari_retries.is_empty(), "{}", rig.signal.log());
    assert_backoff(&ari_retries);
    let closed = logged(&rig, "SIP WebSocket to Asterisk closed");
    let opened = logged(&rig, "SIP WebSocket to Asterisk open; registering");
    assert!(closed >= 1 && opened == closed + 1, "{}", rig.signal.log());
    // Even when the gateway's REGISTER reached an Asterisk that was still booting and was
    // dropped unanswered (see the module doc), it times out after a few seconds and goes
    // again on the same connection: never the 32 s until Asterisk closes the idle transport.
    assert!(
        back_after < Duration::from_secs(12),
        "registering again took {back_after:?}:\n{}\n{}",
        rig.ast.messages(),
        rig.signal.log()
    );
    // Asterisk (the new process): the contact is there, no channel is left.
    let contacts = rig.ast.cli("pjsip show contacts");
    assert!(contacts.contains("icegate/"), "{contacts}");
    rig.assert_no_leaks();
    let m = rig.signal.metrics();
    assert_eq!(
        m.sum(
            "icegate_signal_asterisk_calls_total",
            &[("result", "answered")]
        ),
        1.0,
        "{}",
        m.raw
    );

    // A new call works (once the test's own ARI observer is back too, to see its channel).
    let observing = eventually(WAIT, || ari_sessions(&rig, "observer").len() == 1);
    assert!(observing, "{}", rig.ast.cli("ari show websocket sessions"));
    let created = rig.observer.of_type("ChannelCreated").len();
    let (c, ch) = rig.answered_call(&mut alice, "600", created);
    assert_up_in(&rig, &ch, "Echo");
    hang_up(&rig, &mut alice, &c, &ch);
    rig.assert_no_leaks();
}

/// Established TCP connections whose local port is `port` (the server's side of them),
/// from /proc/net/tcp: how many clients Asterisk has on one of its listeners.
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() > 3
                && fields[3] == "01"
                && fields[1].rsplit(':').next() == Some(&format!("{port:04X}"))
        })
        .count()
}

#[test]
fn asterisk_real_wss_and_https_with_asterisk_ca() {
    let Some(rig) = RealRig::start(
        "asterisk_real_wss_and_https_with_asterisk_ca",
        RigOptions {
            tls: true,
            ..RigOptions::default()
        },
    ) else {
        return;
    };
    // Asterisk serves HTTPS, and has the wss transport of pjsip.conf besides the ws one.
    let tls_addr = rig.ast.tls_addr.expect("TLS address");
    let http = rig.ast.cli("http show status");
    assert!(
        http.contains(&format!("HTTPS Server Enabled and Bound to {tls_addr}")),
        "{http}"
    );
    let transports = rig.ast.cli("pjsip show transports");
    assert!(
        transports.contains("transport-wss") && transports.contains(" wss "),
        "{transports}"
    );
    // The gateway registered over wss:// and holds the ARI events WebSocket over https: both
    // are connections to the TLS port (the plain port has only the observer).
    let aor = rig.ast.cli("pjsip show aor icegate");
    let contact = aor
        .lines()
        .find(|l| l.trim_start().starts_with("contact "))
        .unwrap_or_else(|| panic!("no contact: {aor}"));
    assert!(contact.contains("sip:icegate@127.0.0.1:"), "{contact}");
    assert_eq!(ari_sessions(&rig, "icegate").len(), 1);
    let on_tls = connections_to(tls_addr.port());
    assert!(on_tls >= 2, "{on_tls} connections to {tls_addr}");
    eprintln!("over TLS: {contact}; {on_tls} connections to {tls_addr}\n{transports}");

    // Calls: a Stasis call answered through ARI (REST over https), the echo test, and
    // Asterisk calling a browser over the wss connection.
    let mut alice = rig.browser("alice");
    let (c700, ch700) = rig.answered_call(&mut alice, "700", 0);
    assert_up_in(&rig, &ch700, "Stasis");
    hang_up(&rig, &mut alice, &c700, &ch700);
    let (c600, ch600) = rig.answered_call(&mut alice, "600", 1);
    assert_up_in(&rig, &ch600, "Echo");
    hang_up(&rig, &mut alice, &c600, &ch600);
    rig.assert_no_leaks();
    let mut bob = rig.browser("bob");
    let channel = rig.originate("PJSIP/bob@icegate", "600");
    let id = channel["id"].as_str().unwrap().to_owned();
    let incoming = bob.expect("incoming");
    let call_id = incoming["call"].as_str().unwrap().to_owned();
    let answer = OFFER.replace("a=setup:actpass", "a=setup:active");
    bob.send(json!({"v":1,"type":"answer","id":"a","call":call_id,"sdp":answer}));
    assert_eq!(bob.expect("ack")["id"], "a");
    bob.send(json!({"v":1,"type":"candidate","call":call_id,"candidate":null}));
    assert_up_in(&rig, &id, "Echo");
    let (status, _) = rig.ast.ari("DELETE", &format!("/ari/channels/{id}"));
    assert_eq!(status, 204);
    let hangup = bob.expect("hangup");
    assert_eq!(hangup["reason"], "normal", "{hangup}");
    rig.observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    rig.assert_no_leaks();

    // A gateway that does not trust Asterisk's certificate (another CA) never gets in.
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _) = write_self_signed_cert(other.path());
    let args: Vec<String> = [
        "--asterisk-sip-ws",
        &format!("wss://{tls_addr}/ws"),
        "--asterisk-sip-password",
        SIP_PASSWORD,
        "--asterisk-ari-url",
        &format!("https://{tls_addr}/ari"),
        "--asterisk-ari-password",
        ARI_AUTH.1,
        "--asterisk-ca",
        wrong_ca.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let distrustful = Signal::start(SignalConfig {
        anonymous: true,
        args,
        ..SignalConfig::default()
    });
    let refused = eventually(WAIT, || {
        let log = distrustful.log();
        ["SIP WebSocket: TLS with", "ARI events: TLS with"]
            .iter()
            .all(|what| {
                log.lines()
                    .any(|l| l.contains(what) && l.contains("invalid peer certificate"))
            })
    });
    assert!(refused, "{}", distrustful.log());
    let m = distrustful.metrics();
    assert_eq!(m.sum("icegate_signal_asterisk_sip_registered", &[]), 0.0);
    assert_eq!(m.sum("icegate_signal_asterisk_ari_connected", &[]), 0.0);
    let mut carol = distrustful.connect("name=carol");
    carol.expect("welcome");
    carol.send(json!({"v":1,"type":"call","id":"c","to":{"extension":"600"},"sdp":OFFER}));
    carol.expect_error("pbx_unavailable");
    // Asterisk: still the first gateway's one contact and one ARI session, no channel.
    let aor = rig.ast.cli("pjsip show aor icegate");
    assert_eq!(aor.matches("Contact:  icegate/").count(), 1, "{aor}");
    assert_eq!(ari_sessions(&rig, "icegate").len(), 1);
    assert!(rig.ast.channels().is_empty());
    // Asterisk saw the handshakes fail: the gateway aborted them at Asterisk's certificate.
    let asterisk_refused = eventually(WAIT, || {
        rig.ast
            .messages()
            .contains("Unable to set up ssl connection with peer")
    });
    assert!(asterisk_refused, "{}", rig.ast.messages());
}
