//! The whole chain against a real Asterisk, as a deployment runs it: icegate-relay (which
//! Asterisk uses as its TURN server, rtp.conf's `turnaddr`), a real Asterisk with the sample
//! configuration of docs/asterisk/, icegate-signal with its gateway pointed at that Asterisk,
//! and an [`AriObserver`] that sees every channel. Browsers are signal-protocol WebSocket
//! clients ([`RealRig::browser`]); tests check both what the browser is told and what
//! Asterisk did.

use super::pbx_calls::{after_ringing, call};
use super::real::{self, AriObserver, Options, RealAsterisk, ARI_AUTH, SIP_PASSWORD};
use crate::server::write_self_signed_cert;
use crate::signal::{eventually, Signal, SignalConfig, WsClient};
use crate::{Relay, RelayConfig, ServerKind};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// How long a step may take: Asterisk answers in milliseconds, but a loaded CI machine
/// running two test processes is slower.
pub const WAIT: Duration = Duration::from_secs(15);
/// Registration and ARI after a start or a restart: Asterisk loads ~300 modules first, and
/// the gateway retries with backoff.
pub const REGISTER_WAIT: Duration = Duration::from_secs(45);
/// The TURN REST secret browsers get their credentials from.
pub const SECRET: &str = "real-asterisk-secret";

/// What differs between rigs.
#[derive(Debug, Clone, Default)]
pub struct RigOptions {
    /// Asterisk serves TLS on its HTTPS port, and icegate-signal reaches it only there
    /// (`wss://`, `https://`), trusting its certificate through `asterisk-ca`.
    pub tls: bool,
    /// More icegate-signal flags.
    pub signal_args: Vec<String>,
    /// Sections appended to Asterisk's pjsip.conf.
    pub extra_pjsip: String,
}

/// icegate-relay, a real Asterisk, icegate-signal's gateway and an ARI observer.
pub struct RealRig {
    // Dropped in this order: the signal server first (it unregisters), Asterisk, the relay.
    pub signal: Signal,
    pub observer: AriObserver,
    pub ast: RealAsterisk,
    pub relay: Relay,
    _tls_dir: Option<tempfile::TempDir>,
}

impl RealRig {
    /// Starts all four and waits until the gateway is registered and ARI is connected.
    /// None (after saying so) when there is no Asterisk: the test is skipped.
    pub fn start(test: &str, options: RigOptions) -> Option<RealRig> {
        let bin = real::binary_or_skip(test)?;
        let rtp_conf = std::fs::read_to_string(real::docs_dir().join("rtp.conf")).unwrap();
        let relay = Relay::start(
            ServerKind::Icegate,
            RelayConfig {
                // Asterisk: the long-term user of rtp.conf; browsers: TURN REST credentials.
                users: vec![(
                    conf_value(&rtp_conf, "turnusername"),
                    conf_value(&rtp_conf, "turnpassword"),
                )],
                auth_secrets: vec![SECRET.into()],
                // Browsers' and Asterisk's relayed addresses are all on 127.0.0.1.
                allow_loopback_peers: true,
                ..RelayConfig::default()
            },
        );
        let tls_dir = options.tls.then(|| tempfile::tempdir().expect("temp dir"));
        let tls = tls_dir.as_ref().map(|d| write_self_signed_cert(d.path()));
        let ast = RealAsterisk::start_with(
            &bin,
            &relay.ports,
            &Options {
                tls: tls.clone(),
                extra_pjsip: options.extra_pjsip.clone(),
            },
        );
        ast.wait_ready();
        let observer = AriObserver::connect(ast.addr);
        let turn_url = format!("turn:127.0.0.1:{}?transport=udp", relay.ports.listen());
        let mut args = match (&tls, ast.tls_addr) {
            (Some((cert, _)), Some(tls_addr)) => {
                gateway_args(&format!("wss://{tls_addr}"), &format!("https://{tls_addr}"))
                    .into_iter()
                    .chain(["--asterisk-ca".into(), path_arg(cert)])
                    .collect()
            }
            _ => gateway_args(
                &format!("ws://{}", ast.addr),
                &format!("http://{}", ast.addr),
            ),
        };
        // A browser's offer carries every candidate before the INVITE (Asterisk takes no
        // trickle); the fake offers here have one, so do not wait long for more.
        args.extend(["--candidate-gather-timeout".into(), "300".into()]);
        args.extend(options.signal_args);
        let signal = Signal::start(SignalConfig {
            anonymous: true,
            static_auth_secret: Some(SECRET.into()),
            relays: vec![turn_url],
            tls: false,
            args,
            ..SignalConfig::default()
        });
        let rig = RealRig {
            signal,
            observer,
            ast,
            relay,
            _tls_dir: tls_dir,
        };
        rig.wait_available(REGISTER_WAIT);
        Some(rig)
    }

    /// Another icegate-signal with a gateway to the same Asterisk (plain `ws://` and
    /// `http://`), registering as `sip_user` and taking ARI events for `app`, with `args`
    /// appended: a second instance of a cluster. Waits until its gateway is up.
    pub fn another_signal(&self, sip_user: &str, app: &str, args: Vec<String>) -> Signal {
        let mut all = gateway_args(
            &format!("ws://{}", self.ast.addr),
            &format!("http://{}", self.ast.addr),
        );
        all.extend(["--asterisk-sip-user".into(), sip_user.into()]);
        all.extend(["--asterisk-app".into(), app.into()]);
        all.extend(["--candidate-gather-timeout".into(), "300".into()]);
        all.extend(args);
        let signal = Signal::start(SignalConfig {
            anonymous: true,
            static_auth_secret: Some(SECRET.into()),
            relays: vec![format!(
                "turn:127.0.0.1:{}?transport=udp",
                self.relay.ports.listen()
            )],
            tls: false,
            args: all,
            ..SignalConfig::default()
        });
        signal.assert_gateway_up(REGISTER_WAIT);
        signal
    }

    /// A metric of the signal server, summed over its labels.
    pub fn gauge(&self, name: &str) -> f64 {
        self.signal.metrics().sum(name, &[])
    }

    /// Waits until the gateway says it is registered and connected to ARI, and Asterisk
    /// agrees: its endpoint `icegate` is online (a registered contact) and the application
    /// `icegate` has a WebSocket.
    pub fn wait_available(&self, timeout: Duration) {
        self.signal.assert_gateway_up(timeout);
        let online = eventually(timeout, || {
            let (status, ep) = self.ast.ari("GET", "/ari/endpoints/PJSIP/icegate");
            status == 200 && ep["state"] == "online"
        });
        assert!(online, "Asterisk does not see the gateway's contact");
        let app = eventually(timeout, || {
            self.ast.ari("GET", "/ari/applications/icegate").0 == 200
        });
        assert!(app, "Asterisk does not know the application icegate");
    }

    /// A browser signed in as `name`.
    pub fn browser(&self, name: &str) -> WsClient {
        let mut client = self.signal.connect(&format!("name={name}"));
        client.expect("welcome");
        client
    }

    /// Waits until Asterisk holds no channel and icegate-signal no call; panics otherwise
    /// with both sides' state.
    pub fn assert_no_leaks(&self) {
        let mut channels = vec![];
        let asterisk_clean = eventually(WAIT, || {
            channels = self.ast.channels();
            channels.is_empty()
        });
        assert!(asterisk_clean, "channels left in Asterisk: {channels:#?}");
        let signal_clean = eventually(WAIT, || {
            let m = self.signal.metrics();
            m.sum("icegate_signal_asterisk_calls_active", &[]) == 0.0
                && m.sum("icegate_signal_calls_started_total", &[])
                    == m.sum("icegate_signal_calls_ended_total", &[])
        });
        if !signal_clean {
            self.signal.dump_log(80);
            panic!(
                "calls left in icegate-signal: {}",
                self.signal.metrics().raw
            );
        }
    }

    /// The channel Asterisk made for the newest call from the browser (the newest
    /// `ChannelCreated` whose caller is the gateway's endpoint), waiting for it.
    pub fn newest_channel(&self, after: usize) -> Value {
        let found = eventually(WAIT, || {
            self.observer.of_type("ChannelCreated").len() > after
        });
        assert!(
            found,
            "Asterisk made no channel: {:#?}",
            self.observer.events()
        );
        self.observer.of_type("ChannelCreated")[after]["channel"].clone()
    }

    /// The browser calls `extension` and is answered; Asterisk's channel for it is its
    /// `nth` (from 0) and is at that extension. Returns the call id and the channel id.
    pub fn answered_call(
        &self,
        browser: &mut WsClient,
        extension: &str,
        nth: usize,
    ) -> (String, String) {
        let call_id = call(browser, extension);
        let (answer, _) = after_ringing(browser);
        assert_eq!(answer["type"], "answer", "{extension}: {answer}");
        assert_eq!(answer["call"], call_id.as_str(), "{answer}");
        let channel = self.newest_channel(nth);
        assert_eq!(channel["dialplan"]["exten"], extension, "{channel}");
        (call_id, channel["id"].as_str().unwrap().to_owned())
    }

    /// ARI originate: Asterisk calls `endpoint` and, once answered, runs the dialplan at
    /// `extension` of `from-icegate`. Returns the channel.
    pub fn originate(&self, endpoint: &str, extension: &str) -> Value {
        let path = format!(
            "/ari/channels?endpoint={endpoint}&context=from-icegate&extension={extension}\
             &priority=1&timeout=30&callerId=asterisk"
        );
        let (status, channel) = self.ast.ari("POST", &path);
        assert_eq!(status, 200, "originate: {channel}");
        channel
    }
}

/// The gateway flags for these URLs and the sample configuration's secrets.
fn gateway_args(sip_base: &str, ari_base: &str) -> Vec<String> {
    [
        "--asterisk-sip-ws",
        &format!("{sip_base}/ws"),
        "--asterisk-sip-password",
        SIP_PASSWORD,
        "--asterisk-ari-url",
        &format!("{ari_base}/ari"),
        "--asterisk-ari-password",
        ARI_AUTH.1,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// The value of the first uncommented `key = value` line of a sample config file.
pub fn conf_value(text: &str, key: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("no `{key} =` line"))
}
