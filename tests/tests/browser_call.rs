//! The demo page in headless Chromium: two pages of icegate-signal's demo call each other
//! with `iceTransportPolicy: "relay"` through icegate-relay, driven by
//! `tests/browser/call.mjs` (npm's playwright-core pointed at Debian's `/usr/bin/chromium`).
//!
//! The script checks what the browsers see (ICE connected, a relay candidate of this relay
//! selected, data-channel messages and audio both ways, the hangup arriving); this test
//! checks what the servers saw: the relay allocated and relayed both ways, the signal server
//! counted the calls. Before the real call the script also calls a name nobody uses
//! (`unknown_user`) and has the callee decline one call.
//!
//! Chromium and the npm packages come from `scripts/install-deps` (`tests/browser/install.sh`);
//! when they are missing this test fails and says so, it does not skip.
#![deny(unsafe_code)]

use icegate_tests::browser::run_script;
use icegate_tests::signal::{Signal, SignalConfig};
use icegate_tests::{Relay, RelayConfig, ServerKind};

use std::time::Duration;

const SECRET: &str = "browser-call-secret";
/// The script's own watchdog; a normal run takes under 10 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);
/// Ours, in case the script's watchdog does not fire.
const HARD_TIMEOUT: Duration = Duration::from_secs(50);

#[test]
fn two_chromium_pages_call_each_other_through_icegate_relay() {
    icegate_tests::browser::require_browser_deps(&icegate_tests::browser::browser_dir());

    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            users: vec![],
            auth_secrets: vec![SECRET.into()],
            // Both browsers' relayed addresses are on 127.0.0.1: each is the other's peer.
            allow_loopback_peers: true,
            ..RelayConfig::default()
        },
    );
    let signal = Signal::start(SignalConfig {
        anonymous: true,
        static_auth_secret: Some(SECRET.into()),
        relays: vec![format!(
            "turn:127.0.0.1:{}?transport=udp",
            relay.ports.listen()
        )],
        tls: false,
        ..SignalConfig::default()
    });
    let before = relay.metrics();
    let (min_port, max_port) = relay.ports.relay_range();
    let url = format!("http://{}/", signal.addr());

    let run = run_script(
        "call.mjs",
        &url,
        (min_port, max_port),
        SCRIPT_TIMEOUT,
        HARD_TIMEOUT,
        &[],
        || {},
    );
    let (status, result) = (run.status, run.result);
    assert_eq!(
        result["ok"], true,
        "the browser call failed at {}: {}",
        result["step"], result["error"]
    );
    assert!(
        status.success(),
        "call.mjs reported ok but exited with {status}"
    );
    for side in ["alice", "bob"] {
        assert_eq!(result[side]["local"]["type"], "relay", "{result}");
        assert_eq!(result[side]["local"]["address"], "127.0.0.1", "{result}");
    }

    // What the relay saw: an allocation per browser, and the call relayed both ways.
    // A few seconds of audio and video at 50+ packets a second per browser.
    let relayed = relay.assert_relayed(&before, 2.0, 200.0);
    for (direction, packets) in ["client_to_peer", "peer_to_client"]
        .into_iter()
        .zip(relayed)
    {
        let bytes = relay
            .metrics()
            .sum("icegate_relay_bytes_total", &[("direction", direction)]);
        assert!(
            bytes >= packets * 20.0,
            "icegate_relay_bytes_total{{direction={direction}}} is {bytes} for {packets} packets"
        );
    }

    // What the signal server saw: the declined call and the real one; the call to nobody
    // was refused before it started.
    let metrics = signal.metrics();
    let sum = |name: &str, labels: &[(&str, &str)]| metrics.sum(name, labels);
    assert_eq!(
        sum("icegate_signal_calls_started_total", &[]),
        2.0,
        "{}",
        metrics.raw
    );
    assert_eq!(
        sum("icegate_signal_calls_answered_total", &[]),
        1.0,
        "{}",
        metrics.raw
    );
    for reason in ["declined", "normal"] {
        assert_eq!(
            sum("icegate_signal_calls_ended_total", &[("reason", reason)]),
            1.0,
            "calls ended with {reason}: {}",
            metrics.raw
        );
    }
    assert!(
        sum(
            "icegate_signal_messages_total",
            &[("direction", "in"), ("type", "candidate")]
        ) >= 2.0,
        "trickled candidates went through the signal server"
    );
    assert_eq!(
        sum("icegate_signal_errors_total", &[("code", "unknown_user")]),
        1.0,
        "{}",
        metrics.raw
    );
    // A candidate of the declined call may race its hangup (unknown_call); nothing else.
    let unexpected = sum("icegate_signal_errors_total", &[])
        - sum("icegate_signal_errors_total", &[("code", "unknown_user")])
        - sum("icegate_signal_errors_total", &[("code", "unknown_call")]);
    assert_eq!(unexpected, 0.0, "unexpected errors: {}", metrics.raw);
}
