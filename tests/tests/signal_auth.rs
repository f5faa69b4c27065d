//! Client authentication against the icegate-signal binary: JWTs in the URL, the
//! `Authorization` header and `hello`; expired and wrongly signed tokens are refused.
#![deny(unsafe_code)]

use icegate_tests::signal::{hs256_token, unix_now, Signal, SignalConfig};
use serde_json::json;

const JWT_SECRET: &str = "jwt-test-secret";

fn jwt_signal() -> Signal {
    Signal::start(SignalConfig {
        anonymous: false,
        jwt_secret: Some(JWT_SECRET.into()),
        ..SignalConfig::default()
    })
}

#[test]
fn valid_token_in_query_header_or_hello_is_accepted() {
    let signal = jwt_signal();
    let token = hs256_token(JWT_SECRET, "alice", 300);

    let mut sessions = std::collections::HashSet::new();
    let mut by_query = signal.connect(&format!("token={token}"));
    let welcome = by_query.expect("welcome");
    assert_eq!(welcome["user"], "alice");
    assert!(welcome.get("id").is_none(), "no hello, no id: {welcome}");
    sessions.insert(welcome["session"].to_string());

    let auth = format!("Bearer {token}");
    let mut by_header = signal
        .try_connect("", &[("Authorization", &auth)])
        .expect("handshake");
    let welcome = by_header.expect("welcome");
    assert_eq!(welcome["user"], "alice");
    sessions.insert(welcome["session"].to_string());

    let mut by_hello = signal.connect("");
    by_hello.send(json!({"v":1,"type":"hello","id":7,"token":token}));
    let welcome = by_hello.expect("welcome");
    assert_eq!(
        (welcome["id"].as_u64(), welcome["user"].as_str()),
        (Some(7), Some("alice"))
    );
    sessions.insert(welcome["session"].to_string());
    assert_eq!(sessions.len(), 3, "one user, three sessions: {sessions:?}");

    // An authenticated user's TURN username carries the user id.
    by_hello.send(json!({"v":1,"type":"refresh-ice","id":8}));
    let ice = by_hello.expect("ice-servers");
    assert_eq!(ice["id"], 8);
    let username = ice["iceServers"][0]["username"].as_str().unwrap();
    assert!(username.ends_with(":alice"), "{username}");
}

#[test]
fn expired_token_is_refused_and_closed() {
    let signal = jwt_signal();
    let expired = hs256_token(JWT_SECRET, "alice", -3600);
    let mut client = signal.connect(&format!("token={expired}"));
    client.expect_error("token_expired");
    assert_eq!(client.expect_close(), Some(4401));

    let mut client = signal.connect("");
    client.send(json!({"v":1,"type":"hello","id":1,"token":expired}));
    assert_eq!(client.expect_error("token_expired")["id"], 1);
    assert_eq!(client.expect_close(), Some(4401));
}

#[test]
fn wrong_signature_and_missing_token_are_refused() {
    let signal = jwt_signal();
    let forged = hs256_token("not-the-secret", "mallory", 300);
    let mut client = signal.connect(&format!("token={forged}"));
    client.expect_error("invalid_token");
    assert_eq!(client.expect_close(), Some(4401));

    // Anonymous names are not accepted when the server is not anonymous.
    let mut client = signal.connect("name=mallory");
    client.expect_error("token_required");
    assert_eq!(client.expect_close(), Some(4401));

    let response = signal.get("/v1/ice-servers", &[]);
    assert_eq!(response.status, 401);
    assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["code"], "token_required");
    let response = signal.get(&format!("/v1/ice-servers?token={forged}"), &[]);
    assert_eq!(response.status, 401);
    let auth = format!("Bearer {}", hs256_token(JWT_SECRET, "alice", 300));
    let servers = signal.ice_servers(&[("Authorization", &auth)]);
    assert!(servers["iceServers"][0]["username"]
        .as_str()
        .unwrap()
        .ends_with(":alice"));

    let metrics = signal.metrics();
    assert_eq!(
        metrics.sum("icegate_signal_errors_total", &[("code", "invalid_token")]),
        1.0
    );
    assert_eq!(
        metrics.sum("icegate_signal_closes_total", &[("code", "4401")]),
        2.0
    );
}

#[test]
fn es256_public_key() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let signal = Signal::start(SignalConfig {
        anonymous: false,
        jwt_public_key_pem: Some(pair.public_key_pem()),
        ..SignalConfig::default()
    });
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &json!({"sub":"erin","exp":unix_now() + 300}),
        &key,
    )
    .unwrap();
    let mut client = signal.connect(&format!("token={token}"));
    assert_eq!(client.expect("welcome")["user"], "erin");

    // An HS256 token "signed" with the public key is the classic confusion attack.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub":"mallory","exp":unix_now() + 300}),
        &jsonwebtoken::EncodingKey::from_secret(pair.public_key_pem().as_bytes()),
    )
    .unwrap();
    let mut client = signal.connect(&format!("token={forged}"));
    client.expect_error("invalid_token");
    assert_eq!(client.expect_close(), Some(4401));
}

#[test]
fn tls_listener_serves_wss() {
    let signal = Signal::start(SignalConfig {
        tls: true,
        ..SignalConfig::default()
    });
    let mut client = signal.connect("name=tina");
    assert_eq!(client.expect("welcome")["user"], "tina");
    client.ping(1);
}

#[test]
fn check_config_reports_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signal.toml");
    std::fs::write(&path, "anonymous = true\nrelay = [\"turn:10.0.0.1\"]\n").unwrap();
    let output = std::process::Command::new(icegate_tests::signal::signal_binary())
        .args(["--config", path.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(path.to_str().unwrap()) && stderr.contains("static-auth-secret"),
        "{stderr}"
    );

    let output = std::process::Command::new(icegate_tests::signal::signal_binary())
        .args([
            "--config",
            path.to_str().unwrap(),
            "--static-auth-secret",
            "do-not-print-me",
            "--check-config",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("turn:10.0.0.1"), "{stdout}");
    assert!(!stdout.contains("do-not-print-me"), "{stdout}");
}

#[test]
fn sighup_reloads_the_jwt_secret_and_keeps_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signal.toml");
    std::fs::write(&config, "jwt-secret = \"first-secret\"\n").unwrap();
    let signal = Signal::start(SignalConfig {
        anonymous: false,
        args: vec!["--config".into(), config.display().to_string()],
        ..SignalConfig::default()
    });
    let mut old = signal.connect(&format!(
        "token={}",
        hs256_token("first-secret", "alice", 300)
    ));
    old.expect("welcome");

    std::fs::write(&config, "jwt-secret = \"second-secret\"\n").unwrap();
    let pid = nix::unistd::Pid::from_raw(signal.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let token = hs256_token("second-secret", "bob", 300);
    assert!(
        icegate_tests::signal::eventually(std::time::Duration::from_secs(5), || {
            let mut client = signal.connect(&format!("token={token}"));
            matches!(client.recv(), icegate_tests::signal::Received::Json(m) if m["type"] == "welcome")
        }),
        "the new secret is not accepted after SIGHUP"
    );
    let mut stale = signal.connect(&format!(
        "token={}",
        hs256_token("first-secret", "carol", 300)
    ));
    stale.expect_error("invalid_token");
    // The session opened before the reload is still there.
    old.ping(1);
}

#[test]
fn an_invalid_hello_name_is_a_bad_message_and_the_connection_stays() {
    let signal = Signal::start(SignalConfig::default());
    let mut client = signal.connect("");
    for bad in ["bad name!", "", &"x".repeat(65)] {
        client.send(json!({"v":1,"type":"hello","id":1,"name":bad}));
        assert_eq!(client.expect_error("bad_message")["id"], 1, "{bad:?}");
    }
    // Still open and still waiting for its hello.
    client.ping(2);
    assert_eq!(client.hello_name("alice")["user"], "alice");
    assert_eq!(
        signal
            .metrics()
            .sum("icegate_signal_closes_total", &[("code", "4401")]),
        0.0
    );
}

#[test]
fn an_invalid_url_name_is_refused_with_400_before_the_upgrade() {
    let signal = Signal::start(SignalConfig::default());
    for query in ["name=bad%20name!", "name=", "name=%ff"] {
        match signal.try_connect(query, &[]) {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 400, "{query}");
                let body = response.body().clone().unwrap_or_default();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(body["code"], "bad_message", "{query}: {body}");
            }
            Err(other) => panic!("{query}: {other}"),
            Ok(_) => panic!("{query}: upgraded"),
        }
    }
    let metrics = signal.metrics();
    assert_eq!(
        metrics.sum("icegate_signal_connections_total", &[]),
        0.0,
        "{}",
        metrics.raw
    );
}

#[test]
fn without_a_jwt_key_tokens_are_not_credentials() {
    // Anonymous mode without jwt-secret or jwt-public-key.
    let signal = Signal::start(SignalConfig::default());
    let token = hs256_token("any-secret", "alice", 300);

    // A token in the URL is ignored: the name is what counts.
    let mut client = signal.connect("token=garbage&name=x");
    assert_eq!(client.expect("welcome")["user"], "x");
    let mut client = signal.connect(&format!("token={token}&name=y"));
    assert_eq!(client.expect("welcome")["user"], "y");

    // A hello with a token and no name has no credential the server can use.
    let mut client = signal.connect("");
    client.send(json!({"v":1,"type":"hello","id":1,"token":token}));
    assert_eq!(client.expect_error("token_required")["id"], 1);
    assert_eq!(client.expect_close(), Some(4401));
    // As is a hello with neither.
    let mut client = signal.connect("");
    client.send(json!({"v":1,"type":"hello","id":3}));
    assert_eq!(client.expect_error("token_required")["id"], 3);
    assert_eq!(client.expect_close(), Some(4401));
    // With a name as well, the name is used and the token ignored.
    let mut client = signal.connect("");
    client.send(json!({"v":1,"type":"hello","id":2,"token":"garbage","name":"z"}));
    assert_eq!(client.expect("welcome")["user"], "z");
}
