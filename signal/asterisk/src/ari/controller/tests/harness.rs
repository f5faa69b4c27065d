//! What every controller test shares: a connected controller, its outputs read as REST requests,
//! paths and call events, ARI events and channels written in the recorded shapes, an answered
//! call, and the check that nothing is left behind.
//!
//! Its imports are re-exported, so a test module needs only `use super::harness::*;`.

pub(super) use std::collections::VecDeque;
pub(super) use std::time::Duration;

pub(super) use rand::rngs::StdRng;
pub(super) use rand::{Rng, SeedableRng};
pub(super) use serde_json::json;

pub(super) use super::super::*;
pub(super) use crate::ari::fixtures::{self, Message};

pub(super) const K: CallKey = CallKey(7);

pub(super) fn t0() -> Instant {
    Instant::now()
}

pub(super) fn drain(c: &mut Controller) -> Vec<Output> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

/// A controller whose events connection is up, with nothing left to drain.
pub(super) fn connected(config: ControllerConfig, now: Instant) -> Controller {
    let mut c = Controller::new(config, 1);
    assert_eq!(drain(&mut c), vec![Output::Connect]);
    c.connected(now);
    assert!(drain(&mut c).is_empty());
    c
}

pub(super) fn requests(outputs: &[Output]) -> Vec<(RequestId, &'static str, String)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Request {
                id, method, path, ..
            } => Some((*id, method.as_str(), path.clone())),
            _ => None,
        })
        .collect()
}

pub(super) fn paths(outputs: &[Output]) -> Vec<String> {
    requests(outputs)
        .into_iter()
        .map(|(_, m, p)| format!("{m} {p}"))
        .collect()
}

pub(super) fn events(outputs: &[Output]) -> Vec<CallEvent> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Call { event, .. } => Some(event.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn assert_nothing_left(c: &Controller) {
    assert_eq!(
        (
            c.call_count(),
            c.channel_count(),
            c.bridge_count(),
            c.pending_requests()
        ),
        (0, 0, 0, 0)
    );
}

pub(super) fn channel(id: &str, state: &str, protocol_id: &str) -> serde_json::Value {
    json!({"id": id, "name": "PJSIP/icegate-00000009", "state": state, "protocol_id": protocol_id,
           "caller": {"name": "Alice", "number": "100"}, "connected": {"name": "", "number": ""},
           "dialplan": {"context": "from-icegate", "exten": "201", "priority": 1,
                        "app_name": "Stasis", "app_data": "icegate,201"}})
}

pub(super) fn event(kind: &str, channel: serde_json::Value, extra: serde_json::Value) -> String {
    let mut e = json!({"type": kind, "timestamp": "2026-11-24T20:24:55.021+0000",
                       "application": "icegate", "channel": channel});
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    e.to_string()
}

/// Answers every request in `outputs` with `status` and `body`.
pub(super) fn answer_all(
    c: &mut Controller,
    outputs: &[Output],
    status: u16,
    body: &str,
    now: Instant,
) {
    for (id, _, _) in requests(outputs) {
        c.handle_response(id, status, body, now);
    }
}

/// A browser's call linked and answered in Stasis (routing `Answer`), nothing left to drain.
pub(super) fn answered_call(c: &mut Controller, now: Instant) {
    c.expect_call(K, "sip-1", now).unwrap();
    c.handle_event(
        &event(
            "StasisStart",
            channel("c1", "Ring", "sip-1"),
            json!({"args": ["700"]}),
        ),
        now,
    )
    .unwrap();
    let outs = drain(c);
    assert_eq!(paths(&outs), ["POST /channels/c1/ring"]);
    answer_all(c, &outs, 204, "", now);
    let outs = drain(c);
    assert_eq!(paths(&outs), ["POST /channels/c1/answer"]);
    answer_all(c, &outs, 204, "", now);
    c.handle_event(
        &event(
            "ChannelStateChange",
            channel("c1", "Up", "sip-1"),
            json!({}),
        ),
        now,
    )
    .unwrap();
    assert!(events(&drain(c)).contains(&CallEvent::Answered));
}

pub(super) fn dial_config() -> ControllerConfig {
    ControllerConfig {
        routing: Routing::Dial {
            endpoint: "PJSIP/{exten}".into(),
            timeout: 30,
        },
        ..ControllerConfig::default()
    }
}
