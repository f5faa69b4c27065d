//! Two icegate-signal processes joined by a real redis-server (`--redis-url`): a call between
//! users on different instances, an instance killed mid-call, Redis stopped and started again
//! under both, and the Asterisk stand-in calling a user through the instance she is not on,
//! with WebSocket clients on each instance.
#![deny(unsafe_code)]

use std::time::{Duration, Instant};

use icegate_tests::asterisk::pbx_calls::OFFER as PBX_OFFER;
use icegate_tests::asterisk::{AsteriskStandIn, Config};
use icegate_tests::redis::RedisServer;
use icegate_tests::signal::{eventually, Signal, SignalConfig, WsClient};
use serde_json::json;

const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
const ANSWER: &str = "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

/// How long a dead instance's users may stay (the bound), and the heartbeat timeout
/// is well within it.
const INSTANCE_LOSS_BOUND: Duration = Duration::from_secs(15);
/// How long joining or rejoining the cluster may take: a connect, a snapshot each way.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

fn instance(redis: &RedisServer) -> Signal {
    Signal::start(SignalConfig {
        args: vec!["--redis-url".into(), redis.url()],
        ..SignalConfig::default()
    })
}

fn metric(signal: &Signal, name: &str) -> f64 {
    signal.metrics().sum(name, &[])
}

/// Waits until every instance knows the other and its bus is up.
fn wait_joined(instances: &[&Signal]) {
    let joined = eventually(JOIN_TIMEOUT, || {
        instances.iter().all(|s| {
            metric(s, "icegate_signal_redis_connected") == 1.0
                && metric(s, "icegate_signal_cluster_instances") == (instances.len() - 1) as f64
        })
    });
    assert!(
        joined,
        "the instances did not find each other within {JOIN_TIMEOUT:?}"
    );
}

fn join(signal: &Signal, name: &str) -> WsClient {
    let mut client = signal.connect(&format!("name={name}"));
    assert_eq!(client.expect("welcome")["user"], name);
    client
}

/// Calls `user` once its presence has reached the caller's instance; returns the call id.
fn call(caller: &mut WsClient, user: &str) -> String {
    caller.call_when_known(json!({ "user": user }), OFFER, JOIN_TIMEOUT)
}

/// `caller` calls `callee`'s user, which answers; returns the call id.
fn answered_call(caller: &mut WsClient, callee: &mut WsClient, user: &str) -> String {
    let id = call(caller, user);
    let incoming = callee.expect("incoming");
    assert_eq!(incoming["call"], id.as_str());
    callee.send(json!({"v":1,"type":"answer","id":"a","call":id,"sdp":ANSWER}));
    assert_eq!(callee.expect("ack")["id"], "a");
    assert_eq!(caller.expect("answer")["sdp"], ANSWER);
    id
}

#[test]
fn a_call_between_users_on_two_instances_rings_answers_trickles_and_hangs_up() {
    let redis = RedisServer::start();
    let a = instance(&redis);
    let b = instance(&redis);
    wait_joined(&[&a, &b]);
    let mut alice = join(&a, "alice");
    let mut bob = join(&b, "bob");

    let id = call(&mut alice, "bob");
    let incoming = bob.expect("incoming");
    assert_eq!(
        (
            incoming["call"].as_str(),
            incoming["from"].as_str(),
            incoming["sdp"].as_str()
        ),
        (Some(id.as_str()), Some("alice"), Some(OFFER))
    );
    bob.send(json!({"v":1,"type":"ringing","id":1,"call":id}));
    assert_eq!(bob.expect("ack")["id"], 1);
    assert_eq!(alice.expect("ringing")["call"], id.as_str());

    let candidate = json!({"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host",
                           "sdpMid":"0","sdpMLineIndex":0});
    alice.send(json!({"v":1,"type":"candidate","call":id,"candidate":candidate}));
    assert_eq!(bob.expect("candidate")["candidate"], candidate);

    bob.send(json!({"v":1,"type":"answer","id":2,"call":id,"sdp":ANSWER}));
    assert_eq!(bob.expect("ack")["id"], 2);
    assert_eq!(alice.expect("answer")["sdp"], ANSWER);
    bob.send(json!({"v":1,"type":"candidate","call":id,"candidate":null}));
    assert!(alice.expect("candidate")["candidate"].is_null());

    // A renegotiation from the remote end, and DTMF from the local one.
    bob.send(json!({"v":1,"type":"offer","id":3,"call":id,"sdp":OFFER}));
    assert_eq!(bob.expect("ack")["id"], 3);
    assert_eq!(alice.expect("offer")["sdp"], OFFER);
    alice.send(json!({"v":1,"type":"answer","id":4,"call":id,"sdp":ANSWER}));
    assert_eq!(alice.expect("ack")["id"], 4);
    assert_eq!(bob.expect("answer")["sdp"], ANSWER);
    alice.send(json!({"v":1,"type":"dtmf","call":id,"digits":"1#"}));
    assert_eq!(bob.expect("dtmf")["digits"], "1#");

    bob.send(json!({"v":1,"type":"hangup","id":5,"call":id}));
    assert_eq!(bob.expect("ack")["id"], 5);
    let hangup = alice.expect("hangup");
    assert_eq!(
        (hangup["call"].as_str(), hangup["reason"].as_str()),
        (Some(id.as_str()), Some("normal"))
    );
    bob.send(json!({"v":1,"type":"hangup","id":6,"call":id}));
    assert_eq!(bob.expect_error("unknown_call")["id"], 6);

    for instance in [&a, &b] {
        let metrics = instance.metrics();
        assert!(metrics.sum("icegate_signal_bus_messages_total", &[("direction", "in")]) > 0.0);
        assert!(metrics.sum("icegate_signal_bus_messages_total", &[("direction", "out")]) > 0.0);
        assert_eq!(
            metrics.sum(
                "icegate_signal_bus_messages_total",
                &[("direction", "dropped")]
            ),
            0.0
        );
    }
    assert_eq!(
        a.metrics().sum("icegate_signal_calls_answered_total", &[]),
        1.0,
        "the call lived on the caller's instance"
    );
}

#[test]
fn a_call_to_a_room_rings_its_members_on_both_instances() {
    let redis = RedisServer::start();
    let a = instance(&redis);
    let b = instance(&redis);
    wait_joined(&[&a, &b]);
    let mut alice = join(&a, "alice");
    let mut bob = join(&b, "bob");
    for client in [&mut alice, &mut bob] {
        client.send(json!({"v":1,"type":"join","id":"j","room":"standup"}));
        assert_eq!(client.expect("ack")["id"], "j");
    }
    // Once bob's membership has reached A.
    let id = alice.call_when_known(json!({ "room": "standup" }), OFFER, JOIN_TIMEOUT);
    let incoming = bob.expect("incoming");
    assert_eq!(
        (incoming["call"].as_str(), incoming["room"].as_str()),
        (Some(id.as_str()), Some("standup"))
    );
    bob.send(json!({"v":1,"type":"hangup","id":"h","call":id,"reason":"declined"}));
    assert_eq!(bob.expect("ack")["id"], "h");
    assert_eq!(alice.expect("hangup")["reason"], "declined");
}

#[test]
fn a_killed_instances_calls_end_unavailable_and_its_users_are_gone_within_15_s() {
    let redis = RedisServer::start();
    let a = instance(&redis);
    let b = instance(&redis);
    wait_joined(&[&a, &b]);
    let mut alice = join(&a, "alice");
    let mut bob = join(&b, "bob");
    let id = answered_call(&mut alice, &mut bob, "bob");

    let killed = Instant::now();
    drop(b); // SIGKILL: no goodbye on the bus
    alice.set_recv_timeout(INSTANCE_LOSS_BOUND);
    let hangup = alice.expect("hangup");
    let took = killed.elapsed();
    assert_eq!(
        (hangup["call"].as_str(), hangup["reason"].as_str()),
        (Some(id.as_str()), Some("unavailable"))
    );
    assert!(took < INSTANCE_LOSS_BOUND, "took {took:?}");
    alice.send(json!({"v":1,"type":"call","id":9,"to":{"user":"bob"},"sdp":OFFER}));
    assert_eq!(alice.expect_error("unknown_user")["id"], 9);
    assert_eq!(metric(&a, "icegate_signal_cluster_instances"), 0.0);
}

/// A stopped instance (SIGTERM) says goodbye last: the others drop it at once, not after
/// the silence of a killed one. Its users' sessions close first, as their WebSockets do.
#[test]
fn a_stopped_instance_says_goodbye_and_is_gone_at_once() {
    let redis = RedisServer::start();
    let a = instance(&redis);
    let mut b = instance(&redis);
    wait_joined(&[&a, &b]);
    let mut alice = join(&a, "alice");
    let _bob = join(&b, "bob");
    let probe = call(&mut alice, "bob");
    alice.send(json!({"v":1,"type":"hangup","call":probe}));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert!(
        eventually(JOIN_TIMEOUT, || !b.is_running()),
        "B did not stop"
    );
    // Gone by its goodbye, not by the timeout: A says which.
    assert!(
        eventually(JOIN_TIMEOUT, || a.log().contains("said goodbye")),
        "A heard no goodbye:\n{}",
        a.log()
    );
    assert!(!a.log().contains("silent for"), "{}", a.log());
    assert_eq!(metric(&a, "icegate_signal_cluster_instances"), 0.0);
    alice.send(json!({"v":1,"type":"call","id":9,"to":{"user":"bob"},"sdp":OFFER}));
    assert_eq!(alice.expect_error("unknown_user")["id"], 9);
}

#[test]
fn without_redis_local_calls_work_and_remote_ones_fail_clearly_until_it_returns() {
    let mut redis = RedisServer::start();
    let a = instance(&redis);
    let b = instance(&redis);
    wait_joined(&[&a, &b]);
    let mut alice = join(&a, "alice");
    let mut carol = join(&a, "carol");
    let mut bob = join(&b, "bob");
    let id = answered_call(&mut alice, &mut bob, "bob");

    redis.stop();
    // Both ends of the cross-instance call hear that it ended, and why.
    for client in [&mut alice, &mut bob] {
        let hangup = client.expect("hangup");
        assert_eq!(
            (hangup["call"].as_str(), hangup["reason"].as_str()),
            (Some(id.as_str()), Some("unavailable"))
        );
    }
    assert!(eventually(JOIN_TIMEOUT, || metric(
        &a,
        "icegate_signal_redis_connected"
    ) == 0.0));
    alice.send(json!({"v":1,"type":"call","id":1,"to":{"user":"bob"},"sdp":OFFER}));
    assert_eq!(alice.expect_error("cluster_unavailable")["id"], 1);
    let local = answered_call(&mut alice, &mut carol, "carol");
    alice.send(json!({"v":1,"type":"hangup","id":2,"call":local}));
    assert_eq!(alice.expect("ack")["id"], 2);
    assert_eq!(carol.expect("hangup")["reason"], "normal");

    // Redis returns, empty: the instances reconnect, re-announce their users and call again,
    // with nobody restarted or reconnected.
    redis.restart();
    wait_joined(&[&a, &b]);
    let again = answered_call(&mut alice, &mut bob, "bob");
    bob.send(json!({"v":1,"type":"hangup","id":3,"call":again}));
    assert_eq!(bob.expect("ack")["id"], 3);
    assert_eq!(alice.expect("hangup")["reason"], "normal");
}

#[test]
fn asterisk_reaches_a_user_through_the_instance_she_is_not_connected_to() {
    let redis = RedisServer::start();
    let pbx = AsteriskStandIn::start(Config::default());
    // Each instance its own gateway, SIP contact and Stasis application (Asterisk gives an
    // application to one WebSocket only).
    let gateway = |app: &str| {
        let mut args = pbx.gateway_args();
        args.extend(["--asterisk-app".into(), app.into()]);
        args.extend(["--redis-url".into(), redis.url()]);
        let signal = Signal::start(SignalConfig {
            args,
            ..SignalConfig::default()
        });
        signal.assert_gateway_up(JOIN_TIMEOUT);
        signal
    };
    let a = gateway("icegate-a");
    // B registers last, so the stand-in's INVITEs for the endpoint go to B's contact.
    let b = gateway("icegate-b");
    wait_joined(&[&a, &b]);
    let mut bob = join(&a, "bob");
    // Once a user on B can ring bob, B knows where he is.
    let mut probe = join(&b, "probe");
    let probe_call = call(&mut probe, "bob");
    assert_eq!(bob.expect("incoming")["from"], "probe");
    probe.send(json!({"v":1,"type":"hangup","call":probe_call}));
    assert_eq!(bob.expect("hangup")["call"], probe_call.as_str());

    let channel = pbx
        .lock()
        .originate(
            "PJSIP/bob@icegate",
            None,
            vec![],
            Some("\"Reception\" <100>"),
            None,
        )
        .expect("originate");
    let channel = channel["id"].as_str().unwrap().to_owned();
    let incoming = bob.expect("incoming");
    assert_eq!(incoming["from"], "100");
    let call = incoming["call"].as_str().unwrap().to_owned();
    bob.send(
        json!({"v":1,"type":"answer","call":call,"sdp":PBX_OFFER.replace("actpass", "active")}),
    );
    bob.send(json!({"v":1,"type":"candidate","call":call,"candidate":null}));
    assert!(
        eventually(JOIN_TIMEOUT, || pbx
            .channels()
            .iter()
            .any(|c| c["id"] == channel.as_str() && c["state"] == "Up")),
        "{:?}",
        pbx.channels()
    );
    // The SIP leg is B's: its gateway answered, A's saw no call.
    let answered = |s: &Signal| {
        s.metrics().sum(
            "icegate_signal_asterisk_calls_total",
            &[("result", "answered")],
        )
    };
    assert_eq!((answered(&a), answered(&b)), (0.0, 1.0));

    assert!(pbx.hangup(&channel, 16));
    let hangup = bob.expect("hangup");
    assert_eq!(
        (hangup["call"].as_str(), hangup["reason"].as_str()),
        (Some(call.as_str()), Some("normal"))
    );
}
