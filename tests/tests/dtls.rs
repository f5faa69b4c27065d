//! DTLS on `tls-listening-port` cannot be made to hold state: ClientHellos without a cookie
//! are answered and forgotten, a client that stops after the cookie exchange is dropped when
//! its handshake times out, one address holds at most `max-connections-per-ip` sessions and
//! starts handshakes at its `rate-limit`; SIGHUP gives new handshakes the new certificate.
//! (`turnutils_uclient -S` through the relay is in `coturn_tools.rs`.)
#![deny(unsafe_code)]

use icegate_tests::dtls::{
    client_hello, client_hello_with_random, cookie_of, dtls_connect, dtls_connect_from,
    exchange_cookie, start_handshake_and_stop,
};
use icegate_tests::server::write_self_signed_cert;
use icegate_tests::stun::{decode, encode, request};
use icegate_tests::{require_tool, wait_for, Relay, RelayConfig, ServerKind};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stun_rs::methods::BINDING;
use stun_rs::MessageClass;

/// The relay's handshake timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn dtls_relay(args: &[&str]) -> Relay {
    Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            tls: true,
            icegate_args: args.iter().map(|a| a.to_string()).collect(),
            ..RelayConfig::default()
        },
    )
}

fn handshakes(relay: &Relay, result: &str) -> f64 {
    relay
        .metrics()
        .sum("icegate_relay_dtls_handshakes_total", &[("result", result)])
}

fn sessions(relay: &Relay) -> f64 {
    relay.metrics().sum("icegate_relay_dtls_sessions", &[])
}

fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

#[test]
fn a_client_that_stops_after_the_cookie_exchange_is_dropped_after_the_handshake_timeout() {
    let relay = dtls_relay(&[]);
    let socket = client();
    start_handshake_and_stop(&socket, relay.tls_addr()).unwrap();
    let since = Instant::now();
    assert_eq!(handshakes(&relay, "cookie_sent"), 1.0);
    assert_eq!(handshakes(&relay, "started"), 1.0);
    assert_eq!(sessions(&relay), 1.0);

    let dropped = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        (handshakes(&relay, "timed_out") >= 1.0).then(|| since.elapsed())
    })
    .expect("the stalled handshake was never dropped");
    // It started a little before `since`, when the ClientHello with the cookie arrived.
    assert!(
        dropped > HANDSHAKE_TIMEOUT - Duration::from_secs(1)
            && dropped < HANDSHAKE_TIMEOUT + Duration::from_secs(3),
        "dropped after {dropped:?}"
    );
    assert_eq!(sessions(&relay), 0.0);
    assert_eq!(handshakes(&relay, "completed"), 0.0);
}

#[test]
fn a_flood_of_client_hellos_without_cookies_keeps_no_state() {
    const HELLOS: usize = 20_000;
    let relay = dtls_relay(&[]);
    let rss_before = relay.rss_kib();
    let socket = client();
    let hello = client_hello(&[], 0);
    let started = Instant::now();
    for i in 0..HELLOS {
        // A full socket buffer on either side drops some; what arrived is counted.
        let _ = socket.send_to(&hello, relay.tls_addr());
        if i % 256 == 255 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // Every ClientHello that arrived is answered and counted; wait until the count settles.
    let mut last = -1.0;
    let answered = wait_for(Duration::from_secs(10), Duration::from_millis(300), || {
        let now = handshakes(&relay, "cookie_sent");
        let settled = now == last;
        last = now;
        settled.then_some(now)
    })
    .unwrap();
    let took = started.elapsed();
    let rss_after = relay.rss_kib();
    eprintln!(
        "{answered} of {HELLOS} ClientHellos answered with a HelloVerifyRequest in {took:?}; \
         RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        answered >= (HELLOS / 2) as f64,
        "only {answered} ClientHellos answered"
    );
    assert_eq!(handshakes(&relay, "started"), 0.0);
    assert_eq!(sessions(&relay), 0.0);
    assert!(
        rss_after < rss_before + 4 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[test]
fn one_address_holds_at_most_max_connections_per_ip_sessions() {
    const CAP: usize = 10;
    const CLIENTS: usize = 30;
    let relay = dtls_relay(&["--max-connections-per-ip", &CAP.to_string()]);
    let refused = |relay: &Relay| {
        relay.metrics().sum(
            "icegate_relay_stream_refused_total",
            &[("reason", "per_ip")],
        )
    };
    let sockets: Vec<UdpSocket> = (0..CLIENTS).map(|_| client()).collect();
    for socket in &sockets {
        exchange_cookie(socket, relay.tls_addr()).unwrap();
    }
    let counted = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        (refused(&relay) >= (CLIENTS - CAP) as f64).then_some(())
    });
    assert!(counted.is_some(), "refused {}", refused(&relay));
    assert_eq!(handshakes(&relay, "started"), CAP as f64);
    assert_eq!(sessions(&relay), CAP as f64);
    // They all stall: all dropped once their handshakes time out.
    let gone = wait_for(
        HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        Duration::from_millis(200),
        || (sessions(&relay) == 0.0).then_some(()),
    );
    assert!(gone.is_some(), "{} sessions left", sessions(&relay));
    assert_eq!(handshakes(&relay, "timed_out"), CAP as f64);
}

#[test]
fn new_handshakes_spend_the_source_rate_limit() {
    const CLIENTS: usize = 30;
    // 5 per second, a burst of 10.
    let relay = dtls_relay(&["--rate-limit", "5", "--max-connections-per-ip", "100"]);
    let limited = |relay: &Relay| relay.metrics().sum("icegate_relay_rate_limited_total", &[]);
    let before = limited(&relay);
    let sockets: Vec<UdpSocket> = (0..CLIENTS).map(|_| client()).collect();
    let start = Instant::now();
    for socket in &sockets {
        exchange_cookie(socket, relay.tls_addr()).unwrap();
    }
    let took = start.elapsed();
    let settled = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        let started = handshakes(&relay, "started");
        let refused = limited(&relay) - before;
        (started + refused == CLIENTS as f64).then_some((started, refused))
    });
    let (started, refused) = settled.unwrap_or_else(|| {
        panic!(
            "started {} + rate-limited {} != {CLIENTS}",
            handshakes(&relay, "started"),
            limited(&relay) - before
        )
    });
    eprintln!("{started} handshakes started, {refused} rate-limited, in {took:?}");
    // The burst, and what came back while the cookie exchanges ran.
    let allowed = 10.0 + 5.0 * took.as_secs_f64().ceil();
    assert!(
        started <= allowed && refused >= 1.0,
        "{started} handshakes started, {refused} refused, in {took:?}"
    );
}

#[test]
fn a_session_answers_in_records_and_is_closed_when_idle() {
    let relay = dtls_relay(&["--stream-idle-timeout", "2"]);
    let mut session = dtls_connect(relay.tls_addr()).unwrap();
    assert_eq!(sessions(&relay), 1.0);
    assert_eq!(handshakes(&relay, "completed"), 1.0);
    // Two Bindings in a row: each answer in a record of its own.
    let mut record = [0u8; 2048];
    for _ in 0..2 {
        session.ssl_write(&encode(&request(BINDING, &[]))).unwrap();
        let n = session.ssl_read(&mut record).unwrap();
        let answer = decode(&record[..n], None).unwrap();
        assert_eq!(answer.class(), MessageClass::SuccessResponse);
    }
    let since = Instant::now();
    // Then silence: close_notify after stream-idle-timeout.
    let closed = session.ssl_read(&mut record);
    let after = since.elapsed();
    assert!(
        matches!(closed, Ok(0))
            || closed
                .as_ref()
                .is_err_and(|e| e.code() == openssl::ssl::ErrorCode::ZERO_RETURN),
        "{closed:?}"
    );
    assert!(
        after > Duration::from_millis(1500) && after < Duration::from_secs(4),
        "closed after {after:?}"
    );
    // close_notify goes out first, then the session is removed.
    let gone = wait_for(Duration::from_secs(2), Duration::from_millis(20), || {
        (sessions(&relay) == 0.0).then_some(())
    });
    assert!(gone.is_some(), "the session is still counted");
    let idle = relay
        .metrics()
        .sum("icegate_relay_stream_timeouts_total", &[("reason", "idle")]);
    assert_eq!(idle, 1.0);
}

#[test]
fn garbage_is_dropped_and_counted_and_sessions_survive_it() {
    let relay = dtls_relay(&[]);
    let malformed = |relay: &Relay| {
        relay
            .metrics()
            .sum("icegate_relay_malformed_packets_total", &[])
    };
    let mut session = dtls_connect(relay.tls_addr()).unwrap();
    // From a stranger: not DTLS, a truncated ClientHello, and a ClientHello cut short
    // inside its body (which OpenSSL refuses to answer).
    let stranger = client();
    let hello = client_hello(&[], 0);
    for datagram in [&b"GET / HTTP/1.1\r\n\r\n"[..], &hello[..14], &hello[..40]] {
        stranger.send_to(datagram, relay.tls_addr()).unwrap();
    }
    let counted = wait_for(Duration::from_secs(3), Duration::from_millis(50), || {
        (malformed(&relay) >= 3.0).then_some(())
    });
    assert!(counted.is_some(), "malformed: {}", malformed(&relay));
    assert_eq!(handshakes(&relay, "cookie_sent"), 1.0);
    assert_eq!(sessions(&relay), 1.0);
    // From the session's own address: records that are not DTLS, or fail their MAC, are
    // dropped by OpenSSL, and the session goes on.
    let socket = &session.get_ref().0;
    for _ in 0..20 {
        let noise: [u8; 64] = rand::random();
        socket.send(&noise).unwrap();
    }
    let mut forged = hello.clone();
    forged[0] = 23; // application data, epoch 0, not encrypted
    socket.send(&forged).unwrap();
    let mut record = [0u8; 2048];
    session.ssl_write(&encode(&request(BINDING, &[]))).unwrap();
    let n = session.ssl_read(&mut record).unwrap();
    assert_eq!(
        decode(&record[..n], None).unwrap().class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(sessions(&relay), 1.0);
}

#[test]
fn a_client_that_restarts_on_the_same_port_gets_a_new_session() {
    let relay = dtls_relay(&[]);
    let binding = |session: &mut openssl::ssl::SslStream<icegate_tests::dtls::UdpIo>| {
        let mut record = [0u8; 2048];
        session.ssl_write(&encode(&request(BINDING, &[]))).unwrap();
        let n = session.ssl_read(&mut record).unwrap();
        decode(&record[..n], None).unwrap().class()
    };
    let mut first = dtls_connect(relay.tls_addr()).unwrap();
    assert_eq!(binding(&mut first), MessageClass::SuccessResponse);
    // The client loses its state (no close_notify) and starts over from the same port.
    let local = first.get_ref().0.local_addr().unwrap();
    drop(first);
    let mut second = dtls_connect_from(local, relay.tls_addr())
        .expect("a new handshake from the address of an established session");
    assert_eq!(binding(&mut second), MessageClass::SuccessResponse);
    assert_eq!(handshakes(&relay, "completed"), 2.0);
    let one = wait_for(Duration::from_secs(2), Duration::from_millis(20), || {
        (sessions(&relay) == 1.0).then_some(())
    });
    assert!(one.is_some(), "{} sessions", sessions(&relay));
}

#[test]
fn a_late_copy_of_the_first_client_hello_leaves_the_session_alone() {
    let relay = dtls_relay(&[]);
    let mut session = dtls_connect(relay.tls_addr()).unwrap();
    let mut random = [0u8; 32];
    assert_eq!(session.ssl().client_random(&mut random), 32);
    // A ClientHello with the session's random and a valid cookie for its address, as a
    // retransmission of the one that began it would be, arriving after the handshake.
    let socket = &session.get_ref().0;
    socket.send(&client_hello(&[], 0)).unwrap();
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf).unwrap();
    let cookie = cookie_of(&buf[..n]).expect("a HelloVerifyRequest");
    socket
        .send(&client_hello_with_random(&cookie, 1, random))
        .unwrap();
    let mut record = [0u8; 2048];
    session.ssl_write(&encode(&request(BINDING, &[]))).unwrap();
    let n = session.ssl_read(&mut record).unwrap();
    assert_eq!(
        decode(&record[..n], None).unwrap().class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(handshakes(&relay, "started"), 1.0);
    assert_eq!(sessions(&relay), 1.0);
}

/// The server certificate `openssl s_client -dtls1_2` is shown, as PEM.
fn served_certificate(relay: &Relay) -> String {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-dtls1_2", "-connect"])
        .arg(relay.tls_addr().to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate in s_client's output:\n{text}"));
    let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin + 25;
    text[begin..end].to_string()
}

#[test]
fn sighup_gives_new_handshakes_the_new_certificate() {
    require_tool("openssl");
    let relay = dtls_relay(&[]);
    let first = std::fs::read_to_string(relay.dir().join("cert.pem")).unwrap();
    assert_eq!(served_certificate(&relay).trim(), first.trim());

    write_self_signed_cert(relay.dir());
    let second = std::fs::read_to_string(relay.dir().join("cert.pem")).unwrap();
    assert_ne!(first, second);
    kill(Pid::from_raw(relay.pid().unwrap() as i32), Signal::SIGHUP).unwrap();
    let reloaded = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        relay
            .log()
            .contains("DTLS: certificate reloaded")
            .then_some(())
    });
    assert!(reloaded.is_some(), "no reload in the log:\n{}", relay.log());
    assert_eq!(served_certificate(&relay).trim(), second.trim());
    assert!(handshakes(&relay, "completed") >= 2.0);
}
