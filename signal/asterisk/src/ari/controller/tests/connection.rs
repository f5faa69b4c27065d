//! The events connection: reconnect backoff, reconciliation, the grace of answered calls,
//! a replaced application.

use super::harness::*;

#[test]
fn reconnect_backoff_and_reconciliation() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    answered_call(&mut c, now);
    // A second call still being set up: it cannot survive the loss.
    c.expect_call(CallKey(8), "sip-9", now).unwrap();

    c.connection_lost(now);
    let outs = drain(&mut c);
    assert_eq!(
        outs,
        [Output::Call {
            call: CallKey(8),
            event: CallEvent::HungUp {
                cause: None,
                cause_txt: Some("ARI connection lost".into())
            }
        }]
    );
    assert!(!c.is_connected());
    assert_eq!(
        c.expect_call(CallKey(9), "sip-10", now),
        Err(CommandError::NotConnected)
    );
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_millis(250)));
    c.handle_timeout(now + Duration::from_millis(250));
    assert_eq!(drain(&mut c), [Output::Connect]);
    // That attempt fails: the next waits twice as long.
    let t1 = now + Duration::from_millis(300);
    c.connection_lost(t1);
    assert_eq!(c.poll_timeout(), Some(t1 + Duration::from_millis(500)));
    c.handle_timeout(t1 + Duration::from_millis(500));
    assert_eq!(drain(&mut c), [Output::Connect]);

    c.connected(t1);
    let outs = drain(&mut c);
    assert_eq!(paths(&outs), ["GET /channels"]);
    let list = json!([channel("c1", "Up", "sip-1")]).to_string();
    answer_all(&mut c, &outs, 200, &list, t1);
    let outs = drain(&mut c);
    assert_eq!(
        paths(&outs),
        ["POST /applications/icegate/subscription?eventSource=channel:c1"]
    );
    answer_all(&mut c, &outs, 200, "{}", t1);
    assert_eq!(c.call_count(), 1);
    assert_eq!(c.poll_timeout(), None);

    // Lost again; this time Asterisk restarted and the channel is gone (the recorded empty list).
    let (_, _, status, body) = fixtures::load("ari-basics.json")
        .exchanges()
        .into_iter()
        .find(|(_, p, _, _)| p == "/channels")
        .unwrap();
    c.connection_lost(t1);
    c.handle_timeout(t1 + Duration::from_millis(250));
    assert_eq!(drain(&mut c), [Output::Connect]);
    c.connected(t1);
    let outs = drain(&mut c);
    answer_all(&mut c, &outs, status, &body, t1);
    assert_eq!(
        events(&drain(&mut c)),
        [CallEvent::HungUp {
            cause: None,
            cause_txt: Some("channel gone after ARI reconnect".into())
        }]
    );
    assert_nothing_left(&c);
}

#[test]
fn answered_calls_end_when_the_grace_runs_out() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    answered_call(&mut c, now);
    c.connection_lost(now);
    assert!(drain(&mut c).is_empty());
    let mut t = now;
    // Asterisk stays away: attempts keep failing until the grace is over.
    while c.call_count() > 0 {
        t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
        for o in drain(&mut c) {
            if o == Output::Connect {
                c.connection_lost(t);
            } else if let Output::Request { id, .. } = o {
                c.handle_response(id, 204, "", t);
            }
        }
    }
    assert_eq!(t, now + Duration::from_secs(30));
    assert_eq!(c.channel_count(), 0);
}

#[test]
fn application_replaced_is_reported() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    c.handle_event(
        r#"{"type":"ApplicationReplaced","application":"icegate"}"#,
        now,
    )
    .unwrap();
    assert_eq!(drain(&mut c), [Output::ApplicationReplaced]);
    assert_eq!(
        c.events_path(),
        "/ari/events?app=icegate&subscribeAll=false"
    );
}
