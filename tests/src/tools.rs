//! Runners for coturn's command-line test tools (`turnutils_uclient`,
//! `turnutils_peer`, `turnutils_stunclient`) and parsers for their output.

use crate::require_tool;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs a command with stdout+stderr captured to a temp file, killing it after `timeout`.
/// Returns (exit status or None on timeout, combined output).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (Option<ExitStatus>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.log");
    let out = File::create(&path).expect("create output file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().expect("clone fd")))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&path).unwrap_or_default())
}

/// `turnutils_peer`: a UDP echo server on `port` and `port + 1`, on 127.0.0.1.
pub struct Peer {
    child: Child,
    pub port: u16,
}

impl Peer {
    pub fn start(port: u16) -> Peer {
        Peer::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    /// A peer on a loopback address of either family.
    pub fn start_on(ip: IpAddr, port: u16) -> Peer {
        require_tool("turnutils_peer");
        let child = Command::new("turnutils_peer")
            .args(["-L", &ip.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnutils_peer");
        let peer = Peer { child, port };
        let sock = UdpSocket::bind((ip, 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let target = SocketAddr::from((ip, port));
        let ready = crate::wait_for(Duration::from_secs(5), Duration::from_millis(10), || {
            sock.send_to(b"ping", target).ok()?;
            let mut buf = [0u8; 64];
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            (&buf[..n] == b"ping").then_some(())
        });
        assert!(
            ready.is_some(),
            "turnutils_peer on port {port} did not echo"
        );
        peer
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The result of one `turnutils_uclient` run.
#[derive(Debug, Clone)]
pub struct UclientReport {
    pub status: Option<ExitStatus>,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub lost_percent: f64,
    pub send_dropped: u64,
    pub output: String,
}

/// Parses the summary `turnutils_uclient` prints at the end:
/// `start_mclient: tot_send_msgs=40, tot_recv_msgs=40` and
/// `Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)`.
/// Returns None if the summary is missing (e.g. the allocation failed).
pub fn parse_uclient_summary(out: &str) -> Option<(u64, u64, u64, f64, u64)> {
    let mut counts = None;
    let mut lost = None;
    for line in out.lines() {
        if let Some(idx) = line.find("start_mclient: tot_send_msgs=") {
            let rest = &line[idx + "start_mclient: tot_send_msgs=".len()..];
            let (sent, rest) = rest.split_once(',')?;
            let recv = rest.trim().strip_prefix("tot_recv_msgs=")?;
            counts = Some((sent.trim().parse().ok()?, recv.trim().parse().ok()?));
        }
        if let Some(idx) = line.find("Total lost packets ") {
            let rest = &line[idx + "Total lost packets ".len()..];
            let (n, rest) = rest.split_once(' ')?;
            let pct = rest.strip_prefix('(')?.split_once("%)")?.0;
            let dropped = rest
                .split_once("total send dropped ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            lost = Some((n.parse().ok()?, pct.parse().ok()?, dropped));
        }
    }
    let (sent, recv) = counts?;
    let (lost, pct, dropped) = lost?;
    Some((sent, recv, lost, pct, dropped))
}

/// Runs `turnutils_uclient ARGS -p PORT 127.0.0.1` (ARGS must include the flags).
pub fn run_uclient(args: &[String], port: u16, timeout: Duration) -> UclientReport {
    run_uclient_to(args, IpAddr::V4(Ipv4Addr::LOCALHOST), port, timeout)
}

/// Runs `turnutils_uclient ARGS -p PORT SERVER`.
pub fn run_uclient_to(
    args: &[String],
    server: IpAddr,
    port: u16,
    timeout: Duration,
) -> UclientReport {
    require_tool("turnutils_uclient");
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(args)
        .args(["-p", &port.to_string(), &server.to_string()]);
    eprintln!("[harness] running {cmd:?}");
    let (status, output) = run_with_timeout(&mut cmd, timeout);
    let summary = parse_uclient_summary(&output);
    let (sent, received, lost, lost_percent, send_dropped) = summary.unwrap_or_else(|| {
        let tail: Vec<&str> = output.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "turnutils_uclient printed no summary (status {status:?}); last lines:\n{}",
            tail.join("\n")
        )
    });
    UclientReport {
        status,
        sent,
        received,
        lost,
        lost_percent,
        send_dropped,
        output,
    }
}

/// Parses `turnutils_stunclient` output: `... UDP reflexive addr: 127.0.0.1:43123`.
pub fn parse_stunclient_reflexive(out: &str) -> Option<SocketAddr> {
    out.lines().find_map(|l| {
        let idx = l.find("reflexive addr: ")?;
        l[idx + "reflexive addr: ".len()..].trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uclient_summary() {
        let out = "3: : start_mclient: msz=2, tot_send_msgs=23, tot_recv_msgs=23, tot_send_bytes ~ 3956, tot_recv_bytes ~ 3956\n\
3: : start_mclient: tot_send_msgs=40, tot_recv_msgs=38\n\
3: : start_mclient: tot_send_bytes ~ 6880, tot_recv_bytes ~ 6880\n\
3: : Total transmit time is 3\n\
3: : Total lost packets 2 (5.000000%), total send dropped 1 (0.000000%)\n";
        let (s, r, l, p, d) = parse_uclient_summary(out).unwrap();
        assert_eq!((s, r, l, d), (40, 38, 2, 1));
        assert!((p - 5.0).abs() < 1e-9);
        assert!(parse_uclient_summary("0: : ERROR: Cannot complete Allocation\n").is_none());
    }

    #[test]
    fn parses_stunclient() {
        let out = "0: : IPv4. UDP reflexive addr: 127.0.0.1:43123\n";
        assert_eq!(
            parse_stunclient_reflexive(out),
            Some("127.0.0.1:43123".parse().unwrap())
        );
    }
}
