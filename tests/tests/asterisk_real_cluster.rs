//! Two icegate-signal instances joined by Redis (`redis-url`) in front of one real Asterisk,
//! set up as docs/operations.md ("Scaling out icegate-signal") says: each instance its own
//! PJSIP endpoint and Stasis application. Asterisk dials a browser user through the endpoint
//! of the instance she is *not* connected to; that instance keeps the SIP leg and bridges the
//! browser leg over Redis. The stand-in's version is in signal_cluster.rs; this one checks
//! what a real Asterisk 22 does with two registered gateways. Without an Asterisk
//! (`ASTERISK_BIN`), it says SKIPPED and passes.
#![deny(unsafe_code)]

use icegate_tests::asterisk::pbx_calls::{after_ringing, OFFER};
use icegate_tests::asterisk::real_rig::{RealRig, RigOptions, REGISTER_WAIT, WAIT};
use icegate_tests::redis::RedisServer;
use icegate_tests::signal::{eventually, Signal};
use serde_json::{json, Value};

/// The second instance's endpoint, auth and AOR: the sample's `icegate` ones under another
/// name, with its own Stasis application for the dialplan (operations.md).
const SECOND_ENDPOINT: &str = "
[icegate-2](webrtc-endpoint)
auth = icegate-2-auth
aors = icegate-2
set_var = ICEGATE_APP=icegate-2

[icegate-2-auth]
type = auth
auth_type = userpass
username = icegate-2
password = sip-secret

[icegate-2]
type = aor
max_contacts = 5
remove_existing = yes
";

/// The channel's state as ARI reports it now.
fn state(rig: &RealRig, id: &str) -> Value {
    rig.ast.ari("GET", &format!("/ari/channels/{id}")).1["state"].clone()
}

fn metric(signal: &Signal, name: &str, labels: &[(&str, &str)]) -> f64 {
    signal.metrics().sum(name, labels)
}

#[test]
fn asterisk_real_cluster_dials_a_user_through_the_other_instance() {
    let test = "asterisk_real_cluster_dials_a_user_through_the_other_instance";
    let redis = RedisServer::start();
    let Some(rig) = RealRig::start(
        test,
        RigOptions {
            signal_args: vec!["--redis-url".into(), redis.url()],
            extra_pjsip: SECOND_ENDPOINT.into(),
            ..RigOptions::default()
        },
    ) else {
        return;
    };
    // Instance A is the rig's (endpoint and application `icegate`); B is the second.
    let a = &rig.signal;
    let b = rig.another_signal(
        "icegate-2",
        "icegate-2",
        vec!["--redis-url".into(), redis.url()],
    );
    // Asterisk sees both: each endpoint has its contact, each application its WebSocket.
    for (endpoint, app) in [("icegate", "icegate"), ("icegate-2", "icegate-2")] {
        let online = eventually(REGISTER_WAIT, || {
            let (status, ep) = rig
                .ast
                .ari("GET", &format!("/ari/endpoints/PJSIP/{endpoint}"));
            status == 200 && ep["state"] == "online"
        });
        assert!(online, "endpoint {endpoint} has no contact");
        let (status, _) = rig.ast.ari("GET", &format!("/ari/applications/{app}"));
        assert_eq!(status, 200, "application {app}");
    }

    // Bob signs in on B; once a user of A can ring him, A knows where he is.
    let mut bob = {
        let mut client = b.connect("name=bob");
        client.expect("welcome");
        client
    };
    let mut probe = rig.browser("probe");
    let probe_call = probe.call_when_known(json!({ "user": "bob" }), OFFER, WAIT);
    assert_eq!(bob.expect("incoming")["from"], "probe");
    probe.send(json!({"v":1,"type":"hangup","call":probe_call}));
    assert_eq!(bob.expect("hangup")["call"], probe_call.as_str());

    // Asterisk dials bob through A's endpoint: A's gateway gets the INVITE, bob rings on B.
    let channel = rig.originate("PJSIP/bob@icegate", "600");
    let id = channel["id"].as_str().unwrap().to_owned();
    let incoming = bob.expect("incoming");
    let call_id = incoming["call"].as_str().unwrap().to_owned();
    let offer = incoming["sdp"].as_str().unwrap();
    assert!(
        offer.contains("typ relay"),
        "Asterisk's offer, via A: {offer}"
    );
    let answer = OFFER.replace("a=setup:actpass", "a=setup:active");
    bob.send(json!({"v":1,"type":"answer","id":"a","call":call_id,"sdp":answer}));
    assert_eq!(bob.expect("ack")["id"], "a");
    bob.send(json!({"v":1,"type":"candidate","call":call_id,"candidate":null}));
    assert!(
        eventually(WAIT, || state(&rig, &id) == "Up"),
        "Asterisk's channel: {:?}",
        rig.ast.ari("GET", &format!("/ari/channels/{id}"))
    );
    // The SIP leg is A's: A's gateway answered it, B's never saw a call.
    let answered = [("result", "answered")];
    assert_eq!(
        metric(a, "icegate_signal_asterisk_calls_total", &answered),
        1.0
    );
    assert_eq!(metric(&b, "icegate_signal_asterisk_calls_total", &[]), 0.0);
    assert!(metric(&b, "icegate_signal_bus_messages_total", &[]) > 0.0);

    // Asterisk hangs up: bob, on B, is told, normal clearing.
    let (status, _) = rig.ast.ari("DELETE", &format!("/ari/channels/{id}"));
    assert_eq!(status, 204);
    let hangup = bob.expect("hangup");
    assert_eq!(
        (&hangup["call"], &hangup["reason"]),
        (&Value::from(call_id.as_str()), &Value::from("normal")),
        "{hangup}"
    );
    rig.observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);

    // Bob's own call to the echo extension goes through his instance's endpoint.
    let channels_before = rig.observer.of_type("ChannelCreated").len();
    bob.send(json!({"v":1,"type":"call","id":"e","to":{"extension":"600"},"sdp":OFFER}));
    let echo_call = bob.expect("ack")["call"].as_str().unwrap().to_owned();
    let (answered_echo, _) = after_ringing(&mut bob);
    assert_eq!(answered_echo["type"], "answer", "{answered_echo}");
    let channel = rig.newest_channel(channels_before);
    assert!(
        channel["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("PJSIP/icegate-2-")),
        "bob's call entered Asterisk through B's endpoint: {channel}"
    );
    bob.send(json!({"v":1,"type":"hangup","call":echo_call}));
    let echo_id = channel["id"].as_str().unwrap().to_owned();
    rig.observer
        .expect_channel_event("ChannelDestroyed", &echo_id, WAIT);
    rig.assert_no_leaks();
    drop(b);
}
