//! Running a real Asterisk for the end-to-end tests: the configuration of docs/asterisk/
//! copied to a temp dir with this test's ports and writable directories, started in the
//! foreground (`asterisk -f -C <dir>/asterisk.conf`). Used only when an `asterisk` binary
//! exists (`ASTERISK_BIN`, or on PATH).

use crate::ports::PortBlock;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `$ASTERISK_BIN`, or `asterisk` when it is on PATH.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ASTERISK_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    crate::have_tool("asterisk").then(|| PathBuf::from("asterisk"))
}

/// docs/asterisk/.
pub fn docs_dir() -> PathBuf {
    crate::workspace_root().join("docs/asterisk")
}

/// Replaces the value of `key = ...` / `key => ...` lines (the first occurrence in each
/// section is enough for the sample files).
fn set_value(text: &str, key: &str, value: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            let is_key = t
                .strip_prefix(key)
                .map(|r| r.trim_start().starts_with('='))
                .unwrap_or(false);
            if is_key && !t.starts_with(';') {
                let sep = if t.contains("=>") { "=>" } else { "=" };
                format!("{key} {sep} {value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Writes the sample configuration into `dir`, adjusted to this test's ports.
pub fn write_config(dir: &Path, ports: &PortBlock) -> std::io::Result<PathBuf> {
    for entry in fs::read_dir(docs_dir())? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("conf") {
            continue;
        }
        let name = path.file_name().expect("file name").to_owned();
        let mut text = fs::read_to_string(&path)?;
        match name.to_str() {
            Some("http.conf") => text = set_value(&text, "bindport", &ports.asterisk().to_string()),
            Some("rtp.conf") => {
                // RTP ports inside this test's block, TURN at the block's relay port.
                let (lo, hi) = ports.relay_range();
                text = set_value(&text, "rtpstart", &lo.to_string());
                text = set_value(&text, "rtpend", &hi.to_string());
                text = set_value(&text, "turnaddr", &format!("127.0.0.1:{}", ports.listen()));
            }
            Some("asterisk.conf") => {
                for (key, sub) in [
                    ("astvarlibdir", "lib"),
                    ("astspooldir", "spool"),
                    ("astrundir", "run"),
                    ("astlogdir", "log"),
                    ("astdbdir", "lib"),
                ] {
                    let d = dir.join(sub);
                    fs::create_dir_all(&d)?;
                    text = set_value(&text, key, &d.display().to_string());
                }
                text = set_value(&text, "astetcdir", &dir.display().to_string());
            }
            _ => {}
        }
        fs::write(dir.join(&name), text)?;
    }
    fs::write(
        dir.join("logger.conf"),
        "[logfiles]\nmessages.log => notice,warning,error,verbose\n",
    )?;
    Ok(dir.join("asterisk.conf"))
}

/// A running Asterisk; terminated when dropped (its log is printed if the test panics).
pub struct RealAsterisk {
    child: Child,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl RealAsterisk {
    pub fn start(bin: &Path, ports: &PortBlock) -> RealAsterisk {
        let dir = tempfile::Builder::new()
            .prefix("icegate-asterisk-")
            .tempdir()
            .expect("temp dir");
        let conf = write_config(dir.path(), ports).expect("write Asterisk configuration");
        let out = fs::File::create(dir.path().join("stdout.log")).expect("log file");
        let child = Command::new(bin)
            .args(["-f", "-n", "-C"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        RealAsterisk {
            child,
            dir,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, ports.asterisk())),
        }
    }

    /// Asterisk's output and messages log, for failure messages.
    pub fn logs(&self) -> String {
        ["stdout.log", "log/messages.log"]
            .iter()
            .map(|f| fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RealAsterisk {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- Asterisk log ----\n{}", self.logs());
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_config_uses_the_test_ports_and_dirs() {
        let ports = PortBlock::claim();
        let dir = tempfile::tempdir().unwrap();
        let conf = write_config(dir.path(), &ports).unwrap();
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(read("http.conf").contains(&format!("bindport = {}", ports.asterisk())));
        assert!(read("rtp.conf").contains(&format!("rtpstart = {}", ports.relay_range().0)));
        let ast = fs::read_to_string(conf).unwrap();
        assert!(ast.contains(&format!("astetcdir => {}", dir.path().display())));
        assert!(
            !ast.contains("astmoddir =>"),
            "astmoddir stays at the compiled-in default"
        );
        assert!(dir.path().join("log").is_dir());
    }

    #[test]
    fn set_value_keeps_comments_and_other_keys() {
        let t = "[general]\n;bindport = 1\nbindport = 8088\nbindaddr = 127.0.0.1\n";
        let out = set_value(t, "bindport", "10007");
        assert_eq!(
            out,
            "[general]\n;bindport = 1\nbindport = 10007\nbindaddr = 127.0.0.1\n"
        );
        assert_eq!(
            set_value("astlogdir => /var/log\n", "astlogdir", "/tmp/x"),
            "astlogdir => /tmp/x\n"
        );
    }
}
