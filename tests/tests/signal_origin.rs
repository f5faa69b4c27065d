//! `allowed-origins` against the icegate-signal binary: WebSocket upgrades from other web
//! origins are refused with 403 before the upgrade, `/v1/ice-servers` answers CORS requests
//! and preflights only for allowed origins, and SIGHUP reloads the list.
#![deny(unsafe_code)]

use std::time::Duration;

use icegate_tests::signal::{eventually, HttpReply, Signal, SignalConfig};

/// Tries `/ws?name=NAME` with `Origin: origin`: `Ok` after the welcome, or the refusal's HTTP
/// status and body.
fn upgrade(signal: &Signal, origin: &str, name: &str) -> Result<(), (u16, String)> {
    match signal.try_connect(&format!("name={name}"), &[("Origin", origin)]) {
        Ok(mut client) => {
            client.expect("welcome");
            Ok(())
        }
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            Err((
                response.status().as_u16(),
                String::from_utf8_lossy(&body).into(),
            ))
        }
        Err(other) => panic!("handshake with Origin {origin}: {other}"),
    }
}

fn refused_origin(signal: &Signal) -> f64 {
    signal.metrics().sum(
        "icegate_signal_connections_refused_total",
        &[("reason", "origin")],
    )
}

fn allow_origin(reply: &HttpReply) -> Option<&str> {
    reply.header("access-control-allow-origin")
}

#[test]
fn by_default_only_the_servers_own_origin_may_upgrade() {
    let signal = Signal::start(SignalConfig::default());
    let own = format!("http://{}", signal.addr());
    let metrics = signal.metrics();
    assert!(
        metrics
            .raw
            .contains("icegate_signal_connections_refused_total{reason=\"origin\"} 0"),
        "the series exists from the start: {}",
        metrics.raw
    );

    // Non-browser clients send no Origin; the server's own page sends its origin.
    signal.connect("name=cli").expect("welcome");
    assert_eq!(upgrade(&signal, &own, "page"), Ok(()));

    let foreign = [
        "https://evil.example".to_string(),
        "null".into(),
        // The listen address with another scheme or port, or a name for it, is another origin.
        format!("https://{}", signal.addr()),
        format!("http://127.0.0.1:{}", signal.addr().port() + 1),
        format!("http://localhost:{}", signal.addr().port()),
    ];
    for origin in &foreign {
        let (status, body) = upgrade(&signal, origin, "mallory").unwrap_err();
        assert_eq!(status, 403, "{origin}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "origin_not_allowed", "{body}");
    }
    let metrics = signal.metrics();
    assert_eq!(refused_origin(&signal), foreign.len() as f64);
    // Refused before the upgrade: only the two upgrades above became connections.
    assert_eq!(
        metrics.sum("icegate_signal_connections_total", &[]),
        2.0,
        "{}",
        metrics.raw
    );
}

#[test]
fn ice_servers_answer_cors_only_for_allowed_origins() {
    let signal = Signal::start(SignalConfig {
        args: vec![
            "--allowed-origins".into(),
            "https://app.example.test".into(),
        ],
        ..SignalConfig::default()
    });
    let own = format!("http://{}", signal.addr());
    for origin in ["https://app.example.test", own.as_str()] {
        let reply = signal.get("/v1/ice-servers", &[("Origin", origin)]);
        assert_eq!(reply.status, 200);
        assert_eq!(allow_origin(&reply), Some(origin));
        assert_eq!(reply.header("vary"), Some("Origin"));

        let preflight = signal.request(
            "OPTIONS",
            "/v1/ice-servers",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "authorization"),
            ],
        );
        assert_eq!(preflight.status, 204);
        assert_eq!(allow_origin(&preflight), Some(origin));
        let methods = preflight.header("access-control-allow-methods").unwrap();
        assert!(methods.contains("GET"), "{methods}");
        assert_eq!(
            preflight.header("access-control-allow-headers"),
            Some("Authorization")
        );
    }
    assert_eq!(upgrade(&signal, "https://app.example.test", "app"), Ok(()));

    let reply = signal.get("/v1/ice-servers", &[("Origin", "https://evil.example")]);
    assert_eq!(
        reply.status, 200,
        "the body is useless to a page without CORS"
    );
    assert_eq!(allow_origin(&reply), None);
    let preflight = signal.request(
        "OPTIONS",
        "/v1/ice-servers",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
    );
    assert_eq!(allow_origin(&preflight), None);
    assert_eq!(preflight.header("access-control-allow-headers"), None);
    let no_origin = signal.get("/v1/ice-servers", &[]);
    assert_eq!((no_origin.status, allow_origin(&no_origin)), (200, None));
    assert_eq!(
        upgrade(&signal, "https://evil.example", "mallory").map_err(|(s, _)| s),
        Err(403)
    );
}

#[test]
fn star_allows_any_origin() {
    let signal = Signal::start(SignalConfig {
        args: vec!["--allowed-origins".into(), "*".into()],
        ..SignalConfig::default()
    });
    assert_eq!(upgrade(&signal, "https://evil.example", "a"), Ok(()));
    assert_eq!(upgrade(&signal, "null", "b"), Ok(()));
    let reply = signal.get("/v1/ice-servers", &[("Origin", "https://any.example")]);
    assert_eq!(allow_origin(&reply), Some("https://any.example"));
    assert_eq!(refused_origin(&signal), 0.0);
}

#[test]
fn the_certificates_dns_names_are_own_origins() {
    // The test certificate is for localhost and 127.0.0.1.
    let signal = Signal::start(SignalConfig {
        tls: true,
        ..SignalConfig::default()
    });
    let port = signal.addr().port();
    assert_eq!(
        upgrade(&signal, &format!("https://localhost:{port}"), "a"),
        Ok(())
    );
    assert_eq!(
        upgrade(&signal, &format!("https://127.0.0.1:{port}"), "b"),
        Ok(())
    );
    let refused = upgrade(&signal, &format!("http://localhost:{port}"), "c");
    assert_eq!(refused.map_err(|(status, _)| status), Err(403));
}

#[test]
fn sighup_reloads_allowed_origins() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signal.toml");
    std::fs::write(&config, "allowed-origins = [\"https://first.example\"]\n").unwrap();
    let signal = Signal::start(SignalConfig {
        args: vec!["--config".into(), config.display().to_string()],
        ..SignalConfig::default()
    });
    let mut open = signal.try_connect("name=kept", &[("Origin", "https://first.example")]);
    open.as_mut()
        .expect("first.example is allowed")
        .expect("welcome");
    assert!(upgrade(&signal, "https://second.example", "x").is_err());

    std::fs::write(&config, "allowed-origins = [\"https://second.example\"]\n").unwrap();
    let pid = nix::unistd::Pid::from_raw(signal.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || upgrade(
            &signal,
            "https://second.example",
            "y"
        )
        .is_ok()),
        "second.example is not allowed after SIGHUP"
    );
    assert_eq!(
        upgrade(&signal, "https://first.example", "z").map_err(|(s, _)| s),
        Err(403)
    );
    // A connection made before the reload stays.
    open.unwrap().ping(1);
}
