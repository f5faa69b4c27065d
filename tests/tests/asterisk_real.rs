//! Against a real Asterisk, started with the sample configuration of docs/asterisk/ in a
//! temp dir. Runs when `ASTERISK_BIN` is set or `asterisk` is on PATH; otherwise each test
//! says it was skipped and passes. (Asterisk is not packaged where icegate is built; the
//! stand-in in tests/src/asterisk/ covers the suite, this checks the sample configs.)
//!
//! The browser call through icegate-signal and icegate-relay is added on top of this.

use icegate_tests::asterisk::client::{self, ws_connect};
use icegate_tests::asterisk::{real, Config};
use icegate_tests::PortBlock;
use serde_json::Value;
use std::time::{Duration, Instant};

const ARI_AUTH: Option<(&str, &str)> = Some(("icegate", "ari-secret"));

fn asterisk_or_skip(test: &str) -> Option<std::path::PathBuf> {
    let bin = real::binary();
    if bin.is_none() {
        eprintln!(
            "SKIPPED {test}: no Asterisk here (set ASTERISK_BIN or put `asterisk` on PATH to run it)"
        );
    }
    bin
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
        let deadline = Instant::now() + Duration::from_secs(60);
        let info = loop {
            match client::http(ast.addr, "GET", "/ari/asterisk/info", ARI_AUTH, wait).await {
                Ok(r) if r.status == 200 => break r,
                other if Instant::now() > deadline => {
                    panic!("ARI never answered 200: {other:?}\n{}", ast.logs())
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
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
