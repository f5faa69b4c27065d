//! The demo page in headless Chromium calls a PBX extension: one page of icegate-signal's
//! demo calls `ext:600` through the Asterisk gateway to the Asterisk stand-in, whose media
//! side (`MediaMode::Echo`, a webrtc-rs peer connection) answers like Asterisk's echo test
//! and sends the audio back. Both ends are relay-only on the same icegate-relay, so the audio
//! goes browser → icegate-relay → stand-in → icegate-relay → browser. Driven by
//! `tests/browser/pbx.mjs` (npm's playwright-core pointed at Debian's `/usr/bin/chromium`).
//!
//! The script checks what the browser sees (ICE connected over a relay candidate of this
//! relay, echoed audio arriving and growing, the DTMF keypad's digits acknowledged, the
//! hangup); this test checks what the servers saw: the stand-in echoed RTP and ended the call
//! with a BYE, the relay allocated for both ends and relayed both ways, the gateway counted
//! one answered call and holds nothing afterwards.
//!
//! Needs the `media-echo` feature (`cargo nextest run --features icegate-tests/media-echo`,
//! as scripts/test does). Chromium and the npm packages come from `scripts/install-deps`;
//! when they are missing this test fails and says so, it does not skip.
#![deny(unsafe_code)]
#![cfg(feature = "media-echo")]

use icegate_tests::asterisk::{AsteriskStandIn, Config, MediaMode, TurnServer};
use icegate_tests::browser::run_script;
use icegate_tests::signal::{eventually, rest_password, unix_now, Signal, SignalConfig};
use icegate_tests::{Relay, RelayConfig, ServerKind};

use std::time::Duration;

const SECRET: &str = "browser-pbx-secret";
const WAIT: Duration = Duration::from_secs(10);
/// The script's own watchdog; a normal run takes under 10 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);
/// Ours, in case the script's watchdog does not fire.
const HARD_TIMEOUT: Duration = Duration::from_secs(50);

/// RTP packets the stand-in's echo endpoints have sent back, over the calls it holds now.
fn echoed(pbx: &AsteriskStandIn) -> u64 {
    pbx.lock()
        .calls
        .iter()
        .filter_map(|c| c.media.as_ref())
        .map(|m| m.echoed())
        .sum()
}

#[test]
fn chromium_calls_extension_600_and_hears_the_echo_through_icegate_relay() {
    icegate_tests::browser::require_browser_deps(&icegate_tests::browser::browser_dir());

    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            users: vec![],
            auth_secrets: vec![SECRET.into()],
            // The browser's and the stand-in's relayed addresses are both on 127.0.0.1.
            allow_loopback_peers: true,
            ..RelayConfig::default()
        },
    );
    let turn_url = format!("turn:127.0.0.1:{}?transport=udp", relay.ports.listen());
    // The stand-in authenticates like any TURN REST client: "EXPIRY:NAME" and its HMAC.
    let username = format!("{}:asterisk", unix_now() + 3600);
    let pbx = AsteriskStandIn::start(Config {
        media: MediaMode::Echo(TurnServer {
            url: turn_url.clone(),
            password: rest_password(SECRET, &username),
            username,
        }),
        ..Config::default()
    });
    let signal = Signal::start(SignalConfig {
        anonymous: true,
        static_auth_secret: Some(SECRET.into()),
        relays: vec![turn_url],
        tls: false,
        args: pbx.gateway_args(),
        ..SignalConfig::default()
    });
    signal.assert_gateway_up(WAIT);

    let before = relay.metrics();
    let (min_port, max_port) = relay.ports.relay_range();
    let url = format!("http://{}/", signal.addr());

    // The stand-in forgets a call's endpoint when it ends: note the most it echoed meanwhile.
    let mut most_echoed = 0;
    let run = run_script(
        "pbx.mjs",
        &url,
        (min_port, max_port),
        SCRIPT_TIMEOUT,
        HARD_TIMEOUT,
        &["--extension", "600"],
        || {
            most_echoed = most_echoed.max(echoed(&pbx));
        },
    );
    run.assert_echo_call_relayed(&signal);

    // The stand-in: a real endpoint echoed the audio, and the call ended with the BYE the
    // gateway sent for the browser's hangup; nothing is left.
    assert!(
        most_echoed >= 25,
        "the stand-in echoed only {most_echoed} RTP packets"
    );
    // The INVITE (challenged once), then Hold and Resume as re-INVITEs in its dialog, each
    // answered by the echo endpoint; DTMF to the dialplan's Echo() went as SIP INFO.
    let invites = pbx.sip_requests("INVITE");
    let call_id = invites[0].call_id().to_owned();
    let directions: Vec<&str> = invites
        .iter()
        .filter(|m| m.call_id() == call_id)
        .filter_map(|m| {
            ["a=sendonly", "a=sendrecv"]
                .into_iter()
                .find(|d| m.body.contains(d))
        })
        .collect();
    assert_eq!(
        directions,
        ["a=sendrecv", "a=sendrecv", "a=sendonly", "a=sendrecv"],
        "INVITE, its authenticated retry, hold, resume"
    );
    assert_eq!(
        pbx.sip_requests("INFO").len(),
        5,
        "one INFO per digit of 12#*9"
    );
    assert!(
        eventually(WAIT, || pbx.sip_requests("BYE").len() == 1),
        "the stand-in got {} BYE",
        pbx.sip_requests("BYE").len()
    );
    assert!(
        eventually(WAIT, || pbx.idle()),
        "calls left in the stand-in: {:?}",
        pbx.channels()
    );

    // The relay: one allocation per end at least, the audio relayed both ways (each packet
    // crosses it twice: into the sender's allocation, out of the other end's).
    relay.assert_relayed(&before, 2.0, 100.0);

    // The gateway: one answered call to the PBX, ended, none held.
    signal.assert_one_pbx_call_answered_and_released(WAIT);
}
