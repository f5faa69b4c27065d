//! Against a real Asterisk, started with the sample configuration of docs/asterisk/ in a
//! temp dir. Runs when `ASTERISK_BIN` is set or `asterisk` is on PATH (scripts/test sets it
//! to the Asterisk that scripts/install-deps installs from ../shared); otherwise each test
//! says SKIPPED and passes.
//!
//! Here: ARI and a SIP REGISTER straight to Asterisk; the sample configuration against the
//! stand-in's; and the demo page's call in headless Chromium (asterisk_browser_echo.rs with
//! the real Asterisk in place of the stand-in: icegate-signal's gateway → extension 600,
//! `Echo()`, both ends relay-only on one icegate-relay, audio echoed), ended by the browser
//! or by Asterisk on `#`. The other real-Asterisk flows are in asterisk_real_calls.rs,
//! asterisk_real_stasis.rs and asterisk_real_faults.rs.
#![deny(unsafe_code)]

use icegate_tests::asterisk::client::{self, ws_connect};
use icegate_tests::asterisk::real;
use icegate_tests::asterisk::real_rig::{conf_value, RealRig, RigOptions, WAIT};
use icegate_tests::asterisk::Config;
use icegate_tests::browser::run_script;
use icegate_tests::PortBlock;
use serde_json::Value;
use std::time::Duration;

#[test]
fn asterisk_real_ari_info_and_sip_register() {
    let Some(bin) = real::binary_or_skip("asterisk_real_ari_info_and_sip_register") else {
        return;
    };
    let ports = PortBlock::claim();
    let ast = real::RealAsterisk::start(&bin, &ports);
    let info = ast.wait_ready();
    assert!(info["system"]["version"].is_string(), "{info}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let wait = Duration::from_secs(2);
        let denied = client::http(
            ast.addr,
            "GET",
            "/ari/asterisk/info",
            Some(("icegate", "wrong")),
            wait,
        )
        .await
        .unwrap();
        assert_eq!(denied.status, 401);

        let mut ws = ws_connect(ast.addr, "/ws", Some("sip"))
            .await
            .expect("SIP WebSocket");
        let ok = client::register(&mut ws, "icegate", real::SIP_PASSWORD)
            .await
            .expect("REGISTER");
        assert_eq!(ok.status(), Some(200), "{ok}");
        // While the WebSocket is open, Asterisk has the contact (it goes when it closes). It
        // answers the REGISTER before it publishes the endpoint's new state, so the state is
        // polled until it shows (seen once as "offline" 1 ms after the 200 OK).
        let auth = Some(real::ARI_AUTH);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let ep = loop {
            let ep = client::http(ast.addr, "GET", "/ari/endpoints/PJSIP/icegate", auth, wait)
                .await
                .unwrap();
            let ep: Value = serde_json::from_str(&ep.body).expect("JSON");
            if ep["state"] == "online" || tokio::time::Instant::now() >= deadline {
                break ep;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(ep["state"], "online", "{ep}");
    });
}

/// The sample configuration and the stand-in describe the same Asterisk: same ports,
/// credentials, application and dialplan. Runs everywhere.
#[test]
fn asterisk_sample_config_matches_the_standin() {
    let read = |f: &str| std::fs::read_to_string(real::docs_dir().join(f)).unwrap();
    let cfg = Config::default();
    let http = read("http.conf");
    assert!(http.contains("bindport = 8088") && http.contains("bindaddr = 127.0.0.1"));
    let ari = read("ari.conf");
    assert!(ari.contains(&format!("[{}]", cfg.ari_user)));
    assert!(ari.contains(&format!("password = {}", cfg.ari_password)));
    let pjsip = read("pjsip.conf");
    for needle in [
        format!("username = {}", cfg.sip_user),
        format!("password = {}", cfg.sip_password),
        format!("default_realm = {}", cfg.realm),
        "webrtc = yes".into(),
        "rewrite_contact = yes".into(),
        "max_contacts = 5".into(),
        "remove_existing = yes".into(),
        "allow = ulaw,alaw,opus".into(),
        "protocol = ws".into(),
        format!("context = {}", cfg.dialplan.context),
    ] {
        assert!(pjsip.contains(&needle), "pjsip.conf lacks {needle:?}");
    }
    let ext = read("extensions.conf");
    assert!(ext.contains(&format!("[{}]", cfg.dialplan.context)));
    for needle in [
        "exten => 600,1,Answer()",
        "Echo()",
        "exten => 601,1,Busy()",
        "exten => 602,1,Ringing()",
    ] {
        assert!(ext.contains(needle), "extensions.conf lacks {needle:?}");
    }
    assert!(ext.contains(&format!("Stasis({},${{EXTEN}})", cfg.dialplan.stasis_app)));
    let rtp = read("rtp.conf");
    for needle in [
        "icesupport = yes",
        "turnaddr =",
        "turnusername =",
        "turnpassword =",
        "ice_deny =",
    ] {
        assert!(rtp.contains(needle), "rtp.conf lacks {needle:?}");
    }
}

/// The script's own watchdog; a run takes under 10 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);
/// Ours, in case the script's watchdog does not fire.
const HARD_TIMEOUT: Duration = Duration::from_secs(50);

/// asterisk_browser_echo.rs against a real Asterisk: headless Chromium calls 600, Asterisk
/// answers with `Echo()`, its media relayed through the test's icegate-relay (rtp.conf's
/// turnaddr/turnusername/turnpassword, `ice_deny` everything else), and the audio comes
/// back; DTMF without `#`, hold and resume; then the browser (`hangup`) or Asterisk (after
/// `#`, which ends `Echo()`) ends the call.
fn chromium_calls_echo(test: &str, end_with: &str) {
    let Some(rig) = RealRig::start(test, RigOptions::default()) else {
        return;
    };
    icegate_tests::browser::require_browser_deps(&icegate_tests::browser::browser_dir());
    // The temp copy of rtp.conf points Asterisk's TURN at this test's relay.
    let written = std::fs::read_to_string(rig.ast.dir.path().join("rtp.conf")).unwrap();
    assert_eq!(
        conf_value(&written, "turnaddr"),
        format!("127.0.0.1:{}", rig.relay.ports.listen()),
        "rtp.conf's TURN server is not this test's relay:\n{written}"
    );

    let before = rig.relay.metrics();
    let (min_port, max_port) = rig.relay.ports.relay_range();
    let url = format!("http://{}/", rig.signal.addr());
    let run = run_script(
        "pbx.mjs",
        &url,
        (min_port, max_port),
        SCRIPT_TIMEOUT,
        HARD_TIMEOUT,
        &["--extension", "600", "--end-with", end_with],
        || {},
    );
    run.assert_echo_call_relayed(&rig.signal);
    assert_eq!(
        run.result["endedBy"],
        if end_with == "hash" {
            "remote"
        } else {
            "local"
        },
        "{}",
        run.result
    );

    // Asterisk: one channel, in Echo() at 600, up; it received the keypad's digits as DTMF
    // (SIP INFO), and it is gone now, ended as the test ended it.
    let created = rig.observer.of_type("ChannelCreated");
    assert_eq!(created.len(), 1, "{created:#?}");
    let id = created[0]["channel"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created[0]["channel"]["dialplan"]["exten"], "600");
    let digits: String = rig
        .observer
        .of_type("ChannelDtmfReceived")
        .iter()
        .filter_map(|e| e["digit"].as_str().map(str::to_owned))
        .collect();
    let expected = if end_with == "hash" {
        "12*09#"
    } else {
        "12*09"
    };
    assert_eq!(digits, expected, "the DTMF Asterisk received");
    let destroyed = rig
        .observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    // Hangup() after Echo() is normal clearing (16); the browser's BYE carries no cause (0).
    let cause = if end_with == "hash" { 16 } else { 0 };
    assert_eq!(destroyed["cause"], cause, "{destroyed}");
    // Hold and resume were re-INVITEs Asterisk took: the channel never left Up until the end.
    let states: Vec<Value> = rig
        .observer
        .of_type("ChannelStateChange")
        .iter()
        .filter(|e| e["channel"]["id"] == id.as_str())
        .map(|e| e["channel"]["state"].clone())
        .collect();
    assert_eq!(
        states,
        [Value::from("Up")],
        "channel states after the first"
    );
    // On hold once, by the Hold button (a=sendonly), and off it once, by Resume. The page
    // trickles, so its SDP has the placeholder `c=IN IP4 0.0.0.0`, which Asterisk takes for
    // hold; the gateway writes the default candidate in, or the call would be held from the
    // start and never resumed.
    let count = |kind: &str| {
        rig.observer
            .of_type(kind)
            .iter()
            .filter(|e| e["channel"]["id"] == id.as_str())
            .count()
    };
    assert_eq!(
        (count("ChannelHold"), count("ChannelUnhold")),
        (1, 1),
        "hold events"
    );
    rig.assert_no_leaks();

    // The relay: Asterisk allocates over TCP (res_rtp_asterisk's TURN client does), the
    // browser over UDP; the audio crossed it both ways (each packet twice: into the
    // sender's allocation, out of the other end's).
    let tcp = [("transport", "tcp")];
    let min = before.sum("icegate_relay_allocations_total", &tcp) + 1.0;
    assert!(
        rig.relay
            .wait_metric_at_least("icegate_relay_allocations_total", &tcp, min)
            >= min,
        "Asterisk made no TURN allocation over TCP"
    );
    rig.relay.assert_relayed(&before, 1.0, 100.0);

    // The gateway: one answered call to the PBX, ended, none held.
    rig.signal.assert_one_pbx_call_answered_and_released(WAIT);
}

#[test]
fn real_asterisk_echo_call_from_chromium() {
    chromium_calls_echo("real_asterisk_echo_call_from_chromium", "hangup");
}

#[test]
fn real_asterisk_hash_ends_echo_call_from_chromium() {
    chromium_calls_echo("real_asterisk_hash_ends_echo_call_from_chromium", "hash");
}
