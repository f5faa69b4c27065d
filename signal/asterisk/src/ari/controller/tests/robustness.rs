//! Random events, responses and commands never panic and leave nothing behind.

use super::harness::*;

/// A random JSON value, biased towards ARI-shaped objects.
fn random_json(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    const KINDS: [&str; 16] = [
        "StasisStart",
        "StasisEnd",
        "ChannelStateChange",
        "ChannelDtmfReceived",
        "ChannelHangupRequest",
        "ChannelDestroyed",
        "ChannelVarset",
        "PlaybackStarted",
        "PlaybackFinished",
        "Dial",
        "ChannelEnteredBridge",
        "ChannelLeftBridge",
        "BridgeDestroyed",
        "ApplicationReplaced",
        "Unheard",
        "",
    ];
    const KEYS: [&str; 12] = [
        "type",
        "channel",
        "peer",
        "id",
        "state",
        "protocol_id",
        "args",
        "digit",
        "cause",
        "cause_txt",
        "bridge",
        "playback",
    ];
    match rng.random_range(0..if depth == 0 { 5 } else { 8 }) {
        0 => serde_json::Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(["c1", "c2", "sip-1", "Up", "Ringing", "1", "", "é#&"][rng.random_range(0..8)]),
        4 => json!(KINDS[rng.random_range(0..KINDS.len())]),
        5 => json!((0..rng.random_range(0..3))
            .map(|_| random_json(rng, depth - 1))
            .collect::<Vec<_>>()),
        _ => {
            let mut o = serde_json::Map::new();
            if rng.random_bool(0.8) {
                o.insert(
                    "type".into(),
                    json!(KINDS[rng.random_range(0..KINDS.len())]),
                );
            }
            for _ in 0..rng.random_range(0..6) {
                let key = KEYS[rng.random_range(0..KEYS.len())];
                o.insert(key.into(), random_json(rng, depth - 1));
            }
            serde_json::Value::Object(o)
        }
    }
}

fn random_event(rng: &mut StdRng, known: &[String]) -> String {
    const KINDS: [&str; 7] = [
        "StasisStart",
        "StasisEnd",
        "ChannelStateChange",
        "ChannelDtmfReceived",
        "ChannelHangupRequest",
        "ChannelDestroyed",
        "BridgeDestroyed",
    ];
    let id = &known[rng.random_range(0..known.len())];
    let state = ["Ring", "Ringing", "Up", "Down"][rng.random_range(0..4)];
    let sip = ["sip-1", "sip-2"][rng.random_range(0..2)];
    let kind = KINDS[rng.random_range(0..KINDS.len())];
    let extra = json!({"args": ["201"], "digit": "5", "cause": 17, "cause_txt": "User busy",
                       "bridge": {"id": id}});
    event(kind, channel(id, state, sip), extra)
}

/// Arbitrary text and JSON never panic, and whatever happens, a controller that is finally
/// disconnected for good, with every request answered, holds nothing.
#[test]
fn arbitrary_input_never_panics_or_leaks() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut peak = 0;
    for case in 0..300 {
        let now = t0();
        let mut c = connected(dial_config(), now);
        let mut t = now;
        let mut open: Vec<RequestId> = Vec::new();
        let mut known: Vec<String> = vec!["c1".into(), "c2".into()];
        for _ in 0..40 {
            t += Duration::from_millis(rng.random_range(0..3000));
            let key = CallKey(rng.random_range(0..3));
            match rng.random_range(0..12) {
                0 => {
                    let bytes: Vec<u8> =
                        (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
                    let _ = c.handle_event(&String::from_utf8_lossy(&bytes), t);
                }
                1 | 2 => {
                    let _ = c.handle_event(&random_json(&mut rng, 3).to_string(), t);
                }
                3 | 4 => {
                    // Well-formed events on the channels this run knows, in any order.
                    let _ = c.handle_event(&random_event(&mut rng, &known), t);
                }
                5 => {
                    let sip = ["sip-1", "sip-2"][rng.random_range(0..2)];
                    let _ = c.expect_call(key, sip, t);
                }
                6 => {
                    let _ = c.originate(key, OriginateArgs::default(), t);
                }
                7 => {
                    let _ = match rng.random_range(0..4) {
                        0 => c.hangup(key, HangupReason::Normal, t),
                        1 => c.send_dtmf(key, "1#", t),
                        2 => c.play(key, "tone:ring", t),
                        _ => c.transfer(key, "600", t),
                    };
                }
                8 => c.forget(key, t),
                9 => {
                    if rng.random_bool(0.5) {
                        c.connection_lost(t)
                    } else {
                        c.connected(t)
                    }
                }
                10 => {
                    if !open.is_empty() {
                        let id = open.swap_remove(rng.random_range(0..open.len()));
                        let status = [200, 204, 404, 500][rng.random_range(0..4)];
                        let body = random_json(&mut rng, 2).to_string();
                        c.handle_response(id, status, &body, t);
                    }
                }
                _ => c.handle_timeout(t),
            }
            for o in drain(&mut c) {
                if let Output::Request { id, path, .. } = o {
                    open.push(id);
                    // Learn the channel and bridge ids the controller chose.
                    if let Some((_, id)) = path.split_once("Id=") {
                        known.push(id.to_owned());
                    }
                }
            }
            peak = peak.max(c.bridge_count() + c.call_count());
        }
        // The end: the events connection is gone for good and Asterisk answers 404 to all.
        c.connection_lost(t);
        for _ in 0..1000 {
            for o in drain(&mut c) {
                match o {
                    Output::Request { id, .. } => c.handle_response(id, 404, "{}", t),
                    Output::Connect => c.connection_lost(t),
                    _ => {}
                }
            }
            match c.poll_timeout() {
                Some(next) => {
                    t = t.max(next);
                    c.handle_timeout(t);
                }
                None => break,
            }
            if c.call_count() == 0 && c.pending_requests() == 0 && c.channel_count() == 0 {
                break;
            }
        }
        assert_eq!(
            (
                c.call_count(),
                c.channel_count(),
                c.bridge_count(),
                c.pending_requests()
            ),
            (0, 0, 0, 0),
            "case {case}"
        );
    }
    // The runs did build calls and bridges, so the check above means something.
    assert!(peak >= 3, "peak {peak}");
}
