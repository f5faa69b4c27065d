//! A second, independent load generator: coturn's `turnutils_uclient` with `turnutils_peer`
//! as the echo peer. Only the server's CPU and the tool's own summary are recorded.

use crate::contender::{free_port, Contender};
use crate::error::BenchError;
use crate::measure::Window;
use crate::scenario::Metric;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How `turnutils_uclient` is run.
#[derive(Debug, Clone)]
pub struct UclientParams {
    /// Clients (`-m`).
    pub clients: usize,
    /// Messages per client (`-n`), sent every 20 ms.
    pub messages: usize,
    /// CPUs for the tool and its peer (taskset list).
    pub cpus: Option<String>,
    /// The TURN REST secret (`-W`).
    pub secret: String,
}

/// Whether coturn's tools are installed.
pub fn available() -> bool {
    Path::new("/usr/bin/turnutils_uclient").exists()
        && Path::new("/usr/bin/turnutils_peer").exists()
}

fn command(program: &str, cpus: &Option<String>) -> Command {
    match cpus {
        Some(c) if Path::new("/usr/bin/taskset").exists() => {
            let mut cmd = Command::new("/usr/bin/taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        _ => Command::new(program),
    }
}

/// Kills the peer when the run ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the tool against `c`.
pub fn run(c: &Contender, p: &UclientParams) -> Result<Vec<(Metric, f64)>, BenchError> {
    let peer_port = free_port(Ipv4Addr::LOCALHOST)?;
    let _peer = Reaped(
        command("/usr/bin/turnutils_peer", &p.cpus)
            .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Contender(format!("turnutils_peer: {e}")))?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let w = Window::start(c.pid)?;
    let out = command("/usr/bin/turnutils_uclient", &p.cpus)
        .args([
            "-c",
            "-m",
            &p.clients.to_string(),
            "-n",
            &p.messages.to_string(),
            "-l",
            "172",
            "-u",
            "bench",
            "-W",
            &p.secret,
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
            "-p",
            &c.addr.port().to_string(),
            &c.addr.ip().to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::Contender(format!("turnutils_uclient: {e}")))?;
    let wr = w.finish()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let s = parse_summary(&text).ok_or_else(|| {
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        BenchError::Contender(format!("turnutils_uclient printed no summary: {tail:?}"))
    })?;
    let relayed = (s.sent + s.received) as f64;
    Ok(vec![
        (Metric::Allocations, p.clients as f64),
        (Metric::RelayedPps, relayed / wr.secs),
        (Metric::LossPct, s.lost_pct),
        (Metric::RttAvg, s.avg_rtt_ms * 1000.0),
        (Metric::ServerCpu, wr.server_cpu),
        (
            Metric::CpuPerPacket,
            if relayed > 0.0 {
                wr.server_cpu * 1e6 / relayed
            } else {
                f64::NAN
            },
        ),
    ])
}

/// The figures of the tool's closing summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Messages sent.
    pub sent: u64,
    /// Messages received back.
    pub received: u64,
    /// Lost, percent.
    pub lost_pct: f64,
    /// Average round trip, ms.
    pub avg_rtt_ms: f64,
}

/// The number after `key` in `text`, up to the next non-numeric character.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let at = text.rfind(key)? + key.len();
    let rest = text[at..].trim_start();
    let end = rest
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Reads `tot_send_msgs=`, `tot_recv_msgs=`, `Total lost packets N (P%)` and `Average round
/// trip delay X ms` from the tool's output.
pub fn parse_summary(text: &str) -> Option<Summary> {
    let sent = number_after(text, "tot_send_msgs=")? as u64;
    let received = number_after(text, "tot_recv_msgs=")? as u64;
    let lost_pct = text
        .rfind("Total lost packets")
        .and_then(|i| {
            let line = text[i..].lines().next().unwrap_or("");
            let open = line.find('(')? + 1;
            let end = line[open..].find('%')? + open;
            line[open..end].parse().ok()
        })
        .unwrap_or(f64::NAN);
    let avg_rtt_ms = number_after(text, "Average round trip delay").unwrap_or(f64::NAN);
    Some(Summary {
        sent,
        received,
        lost_pct,
        avg_rtt_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary() {
        let out = "0: start_mclient: tot_send_msgs=500, tot_recv_msgs=498\n\
                   0: Total lost packets 2 (0.400000%), total send dropped 0 (0.000000%)\n\
                   0: Average round trip delay 0.350000 ms; min = 0 ms, max = 3 ms\n";
        let s = parse_summary(out).unwrap();
        assert_eq!((s.sent, s.received), (500, 498));
        assert!((s.lost_pct - 0.4).abs() < 1e-9);
        assert!((s.avg_rtt_ms - 0.35).abs() < 1e-9);
        assert!(parse_summary("ERROR: Cannot complete Allocation").is_none());
    }
}
