//! Against a real Asterisk, started with the sample configuration of docs/asterisk/ in a
//! temp dir. Runs when `ASTERISK_BIN` is set or `asterisk` is on PATH; otherwise each test
//! says it was skipped and passes. (Asterisk is not packaged where icegate is built; the
//! stand-in in tests/src/asterisk/ covers the suite, this checks the sample configs.)
//!
//! `real_asterisk_echo_call_from_chromium` is the browser call of asterisk_browser_echo.rs
//! (headless Chromium → icegate-signal's gateway → extension 600, `Echo()`, both ends
//! relay-only on one icegate-relay) with the real Asterisk in place of the stand-in. Its
//! code follows that test line for line; only the Asterisk parts differ (start, readiness,
//! the end-of-call check over ARI).
//!
//! NOTE: no test in this file has ever run against a real Asterisk in this repository's CI
//! (no machine there has Asterisk, so they all skip). They were written against the
//! recordings and the stand-in; expect to adjust them the first time they meet Asterisk.

use icegate_tests::asterisk::client::{self, ws_connect, HttpReply};
use icegate_tests::asterisk::{real, Config};
use icegate_tests::browser::run_script;
use icegate_tests::signal::{eventually, Signal, SignalConfig};
use icegate_tests::{PortBlock, Relay, RelayConfig, ServerKind};
use serde_json::Value;
use std::time::{Duration, Instant};

const ARI_AUTH: Option<(&str, &str)> = Some(("icegate", "ari-secret"));

fn asterisk_or_skip(test: &str) -> Option<std::path::PathBuf> {
    let bin = real::binary();
    if bin.is_none() {
        eprintln!(
            "SKIPPED: no Asterisk (set ASTERISK_BIN or put asterisk on PATH) — {test} needs a \
             real Asterisk and was not run"
        );
    }
    bin
}

/// Polls `GET /ari/asterisk/info` until Asterisk answers 200 (it takes a few seconds to load
/// its modules); panics with Asterisk's log after 60 s.
async fn wait_for_ari(ast: &real::RealAsterisk) -> HttpReply {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wait = Duration::from_secs(2);
        match client::http(ast.addr, "GET", "/ari/asterisk/info", ARI_AUTH, wait).await {
            Ok(r) if r.status == 200 => return r,
            other if Instant::now() > deadline => {
                panic!("ARI never answered 200: {other:?}\n{}", ast.logs())
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// One ARI GET from synchronous code: the status and the parsed body (`Null` if not JSON).
fn ari_get(ast: &real::RealAsterisk, path: &str) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(client::http(
            ast.addr,
            "GET",
            path,
            ARI_AUTH,
            Duration::from_secs(2),
        ))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

/// The value of the first uncommented `key = value` line of a sample config file.
fn conf_value(text: &str, key: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("no `{key} =` line"))
}

#[test]
fn asterisk_real_ari_info_and_sip_register() {
    let Some(bin) = asterisk_or_skip("asterisk_real_ari_info_and_sip_register") else {
        return;
    };
    let ports = PortBlock::claim();
    let ast = real::RealAsterisk::start(&bin, &ports);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let wait = Duration::from_secs(2);
        let info = wait_for_ari(&ast).await;
        let info: Value = serde_json::from_str(&info.body).expect("JSON");
        assert!(info["system"]["version"].is_string(), "{info}");

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
        let ok = client::register(&mut ws, "icegate", "sip-secret")
            .await
            .expect("REGISTER");
        assert_eq!(ok.status(), Some(200), "{ok}");

        let ep = client::http(
            ast.addr,
            "GET",
            "/ari/endpoints/PJSIP/icegate",
            ARI_AUTH,
            wait,
        )
        .await
        .unwrap();
        let ep: Value = serde_json::from_str(&ep.body).expect("JSON");
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

const SECRET: &str = "browser-pbx-secret";
const WAIT: Duration = Duration::from_secs(10);
/// Asterisk needs longer than the stand-in to register a contact and connect ARI.
const REGISTER_WAIT: Duration = Duration::from_secs(30);
/// The script's own watchdog; the stand-in run takes under 10 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);
/// Ours, in case the script's watchdog does not fire.
const HARD_TIMEOUT: Duration = Duration::from_secs(50);

/// asterisk_browser_echo.rs against a real Asterisk: headless Chromium calls 600, Asterisk
/// answers with `Echo()`, its media relayed through the test's icegate-relay (rtp.conf's
/// turnaddr/turnusername/turnpassword, `ice_deny` everything else), and the audio comes back.
#[test]
fn real_asterisk_echo_call_from_chromium() {
    let Some(bin) = asterisk_or_skip("real_asterisk_echo_call_from_chromium") else {
        return;
    };
    icegate_tests::browser::require_browser_deps(&icegate_tests::browser::browser_dir());

    // --- Asterisk-specific: the relay knows Asterisk as the static user of rtp.conf.
    let rtp_conf = std::fs::read_to_string(real::docs_dir().join("rtp.conf")).unwrap();
    let turn_user = (
        conf_value(&rtp_conf, "turnusername"),
        conf_value(&rtp_conf, "turnpassword"),
    );
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            // Asterisk: a long-term user (rtp.conf); the browser: TURN REST credentials.
            users: vec![turn_user],
            auth_secrets: vec![SECRET.into()],
            // The browser's and Asterisk's relayed addresses are both on 127.0.0.1.
            allow_loopback_peers: true,
            ..RelayConfig::default()
        },
    );
    let turn_url = format!("turn:127.0.0.1:{}?transport=udp", relay.ports.listen());
    // --- Asterisk-specific: started on the relay's port block, so that real::write_config's
    // temp copy of rtp.conf says `turnaddr = 127.0.0.1:<this relay's port>`, http.conf the
    // block's Asterisk port and rtpstart/rtpend the block's relay range (which the relay's
    // allocations share: each side skips a port the other holds).
    let ast = real::RealAsterisk::start(&bin, &relay.ports);
    let written = std::fs::read_to_string(ast.dir.path().join("rtp.conf")).unwrap();
    assert_eq!(
        conf_value(&written, "turnaddr"),
        format!("127.0.0.1:{}", relay.ports.listen()),
        "rtp.conf's TURN server is not this test's relay:\n{written}"
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(wait_for_ari(&ast));

    let signal = Signal::start(SignalConfig {
        anonymous: true,
        static_auth_secret: Some(SECRET.into()),
        relays: vec![turn_url],
        tls: false,
        args: [
            "--asterisk-sip-ws",
            &format!("ws://{}/ws", ast.addr),
            "--asterisk-sip-password",
            "sip-secret",
            "--asterisk-ari-url",
            &format!("http://{}/ari", ast.addr),
            "--asterisk-ari-password",
            ARI_AUTH.unwrap().1,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..SignalConfig::default()
    });
    let gauge = |name: &str| signal.metrics().sum(name, &[]);
    if !eventually(REGISTER_WAIT, || {
        gauge("icegate_signal_asterisk_sip_registered") == 1.0
            && gauge("icegate_signal_asterisk_ari_connected") == 1.0
    }) {
        signal.dump_log(60);
        panic!("the gateway did not register with Asterisk and connect ARI");
    }
    // --- Asterisk-specific: Asterisk agrees that the gateway's contact is registered.
    let (status, ep) = ari_get(&ast, "/ari/endpoints/PJSIP/icegate");
    assert_eq!(
        (status, &ep["state"]),
        (200, &Value::from("online")),
        "{ep}"
    );

    let before = relay.metrics();
    let (min_port, max_port) = relay.ports.relay_range();
    let url = format!("http://{}/", signal.addr());

    let run = run_script(
        "pbx.mjs",
        &url,
        (min_port, max_port),
        SCRIPT_TIMEOUT,
        HARD_TIMEOUT,
        &["--extension", "600"],
        || {},
    );
    run.assert_echo_call_relayed(&signal);

    // --- Asterisk-specific: the browser's hangup ended the call there too; no channel left.
    let mut channels = Value::Null;
    assert!(
        eventually(WAIT, || {
            channels = ari_get(&ast, "/ari/channels").1;
            channels == Value::Array(vec![])
        }),
        "channels left in Asterisk: {channels}"
    );

    // The relay: one allocation per end at least, the audio relayed both ways (each packet
    // crosses it twice: into the sender's allocation, out of the other end's).
    relay.assert_relayed(&before, 2.0, 100.0);

    // The gateway: one answered call to the PBX, ended, none held.
    signal.assert_one_pbx_call_answered_and_released(WAIT);
}
