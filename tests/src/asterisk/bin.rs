//! `asterisk-standin [PORT]`: runs the Asterisk stand-in on 127.0.0.1 until killed, for
//! trying icegate-signal by hand or from a script. Prints the URLs, then the log.
#![deny(unsafe_code)]

use icegate_tests::asterisk::{AsteriskStandIn, Config};
use std::time::Duration;

fn main() {
    let port = std::env::args()
        .nth(1)
        .map(|p| p.parse().expect("PORT must be a number"))
        .unwrap_or(8088);
    let pbx = AsteriskStandIn::start(Config {
        port,
        ..Config::default()
    });
    println!(
        "SIP over WebSocket: {} (subprotocol sip, user icegate/sip-secret)",
        pbx.sip_ws_url()
    );
    println!("ARI: {} (icegate/ari-secret)", pbx.ari_url());
    println!("ARI events: {}", pbx.ari_events_url("icegate"));
    let mut shown = 0;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let log = pbx.log();
        for e in &log[shown..] {
            println!(
                "[{} ms] {} {:?}\n{}",
                e.t_ms,
                e.stream.name(),
                e.dir,
                e.data.replace("\r\n", "\n")
            );
        }
        shown = log.len();
    }
}
