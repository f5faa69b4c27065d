//! The relay as an operator runs it: SIGHUP reloads, privileges dropped after binding,
//! RLIMIT_NOFILE raised to fit the port range.
#![deny(unsafe_code)]

use icegate_tests::stun::{assert_error, assert_success, TurnClient};
use icegate_tests::{wait_for, Relay, RelayConfig, ServerKind};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A TURN REST API credential (coturn's `use-auth-secret` scheme), computed here
/// independently of the relay's own implementation.
fn rest_credential(secret: &str, user: &str) -> (String, String) {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    icegate_testkit::rest_credentials(secret.as_bytes(), user, expiry)
}

fn rest_client(relay: &Relay, secret: &str) -> TurnClient {
    let (user, pass) = rest_credential(secret, "rest-user");
    TurnClient::new(relay.udp_addr(), &user, &pass)
}

fn write_secrets(path: &std::path::Path, secrets: &[&str]) {
    let list: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
    std::fs::write(
        path,
        format!(
            "use-auth-secret = true\nstatic-auth-secret = [{}]\n",
            list.join(", ")
        ),
    )
    .unwrap();
}

#[test]
fn sighup_reloads_secrets_and_keeps_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    write_secrets(&config, &["first-secret"]);
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            icegate_args: vec!["--config".into(), config.to_str().unwrap().into()],
            ..RelayConfig::default()
        },
    );

    let mut alice = TurnClient::new(relay.udp_addr(), "alice", "secret");
    assert_success(&alice.allocate(), "static user allocates");
    assert_success(
        &rest_client(&relay, "first-secret").allocate(),
        "first secret works",
    );
    let mut refused = rest_client(&relay, "second-secret");
    assert_error(&refused.allocate(), 401, "second secret before reload");

    write_secrets(&config, &["second-secret"]);
    kill(Pid::from_raw(relay.pid().unwrap() as i32), Signal::SIGHUP).unwrap();
    let reloaded = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let resp = rest_client(&relay, "second-secret").allocate();
        (resp.class() == stun_rs::MessageClass::SuccessResponse).then_some(())
    });
    assert!(
        reloaded.is_some(),
        "second secret not accepted after SIGHUP:\n{}",
        relay.log()
    );
    assert_error(
        &rest_client(&relay, "first-secret").allocate(),
        401,
        "first secret after it was removed",
    );
    // Allocations made before the reload carry on.
    let refresh = alice.request(stun_rs::methods::REFRESH, &[]);
    assert_success(&refresh, "refresh of an allocation made before the reload");
    assert!(
        relay.log().contains("configuration reloaded"),
        "{}",
        relay.log()
    );
}

#[test]
fn broken_config_on_sighup_keeps_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    write_secrets(&config, &["kept-secret"]);
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            icegate_args: vec!["--config".into(), config.to_str().unwrap().into()],
            ..RelayConfig::default()
        },
    );
    std::fs::write(&config, "static-auth-secret = 42\n").unwrap();
    kill(Pid::from_raw(relay.pid().unwrap() as i32), Signal::SIGHUP).unwrap();
    let logged = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        relay.log().contains("reload failed").then_some(())
    });
    assert!(logged.is_some(), "no reload error logged:\n{}", relay.log());
    let log = relay.log();
    assert!(
        log.contains("static-auth-secret"),
        "error must name the key:\n{log}"
    );
    assert_success(
        &rest_client(&relay, "kept-secret").allocate(),
        "old secret still works",
    );
}

fn proc_status_ids(pid: u32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect()
}

fn open_files_soft_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn drops_privileges_after_binding_and_raises_nofile() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: dropping privileges needs root; this test runs as a normal user");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            icegate_args: vec!["--proc-user".into(), "nobody".into()],
            ..RelayConfig::default()
        },
    );
    let pid = relay.pid().unwrap();
    let uids = proc_status_ids(pid, "Uid:");
    assert!(
        uids.iter().all(|&u| u == nobody.uid.as_raw()),
        "real, effective, saved and fs uid must all be nobody's: {uids:?}"
    );
    let gids = proc_status_ids(pid, "Gid:");
    assert!(
        gids.iter().all(|&g| g == nobody.gid.as_raw()),
        "gids {gids:?}"
    );
    let groups = proc_status_ids(pid, "Groups:");
    assert!(
        groups.iter().all(|&g| g == nobody.gid.as_raw()),
        "supplementary groups {groups:?}"
    );
    // The relay asks for its port range plus headroom for listeners and TCP clients.
    let (min, max) = relay.ports.relay_range();
    let wanted = u64::from(max - min) + 1 + 4096;
    let soft = open_files_soft_limit(pid);
    assert!(soft >= wanted, "RLIMIT_NOFILE soft limit {soft} < {wanted}");
    // Relay sockets are bound after the switch, so allocating proves they still can be.
    let mut alice = TurnClient::new(relay.udp_addr(), "alice", "secret");
    assert_success(&alice.allocate(), "allocation after dropping privileges");
}
