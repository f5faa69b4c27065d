//! Running a real Asterisk for the end-to-end tests: the configuration of docs/asterisk/
//! copied to a temp dir with this test's ports and writable directories, started in the
//! foreground (`asterisk -f -C <dir>/asterisk.conf`). Used only when an `asterisk` binary
//! exists (`ASTERISK_BIN`, or on PATH); [`binary_or_skip`] says so when it does not.
//!
//! Besides starting it: its CLI (`asterisk -rx`, [`RealAsterisk::cli`]), ARI from synchronous
//! code ([`RealAsterisk::ari`]), a crash and restart ([`RealAsterisk::crash_and_restart`]), and
//! an ARI observer ([`AriObserver`]) that sees every channel's events, so that tests check
//! what Asterisk itself did, not only what icegate-signal says it did.

use super::client;
use crate::ports::PortBlock;
use serde_json::Value;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The ARI user and password of docs/asterisk/ari.conf.
pub const ARI_AUTH: (&str, &str) = ("icegate", "ari-secret");
/// The SIP digest password of docs/asterisk/pjsip.conf (`icegate-auth`).
pub const SIP_PASSWORD: &str = "sip-secret";
/// How long Asterisk may take to load its modules and answer ARI.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `$ASTERISK_BIN`, or `asterisk` when it is on PATH.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ASTERISK_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    crate::have_tool("asterisk").then(|| PathBuf::from("asterisk"))
}

/// [`binary`], or None after printing that `test` was skipped for want of an Asterisk.
pub fn binary_or_skip(test: &str) -> Option<PathBuf> {
    let bin = binary();
    if bin.is_none() {
        eprintln!(
            "SKIPPED: no Asterisk (set ASTERISK_BIN or put asterisk on PATH) — {test} needs a \
             real Asterisk and was not run"
        );
    }
    bin
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

/// What a test changes in the sample configuration beyond its ports and directories.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// TLS on the HTTP server (`wss://…/ws`, `https://…/ari`) at [`PortBlock::asterisk_tls`],
    /// with this certificate and key (PEM), as the commented lines of http.conf and
    /// pjsip.conf describe.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Sections appended to pjsip.conf (another endpoint, say).
    pub extra_pjsip: String,
}

/// Removes the `;` of the first commented `key = ...` (or section) line.
fn uncomment(text: &str, key: &str) -> String {
    let mut done = false;
    text.lines()
        .map(|l| {
            let body = l.trim_start().strip_prefix(';').map(str::trim_start);
            match body {
                Some(b) if !done && b.starts_with(key) => {
                    done = true;
                    b.to_string()
                }
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// [`uncomment`] for the first commented line starting with `key` after the line `anchor`
/// (a section header, commented or already uncommented by an earlier call).
fn uncomment_after(text: &str, anchor: &str, key: &str) -> String {
    // The anchor line, still commented or already uncommented by an earlier call.
    let at = text
        .find(&format!(";{anchor}"))
        .or_else(|| text.find(&format!("\n{anchor}")).map(|i| i + 1));
    let Some(at) = at else {
        return text.to_string();
    };
    let (head, tail) = text.split_at(at);
    if key == anchor {
        return match tail.strip_prefix(';') {
            Some(rest) => format!("{head}{rest}"),
            None => text.to_string(),
        };
    }
    format!("{head}{}", uncomment(tail, key))
        .trim_end()
        .to_string()
        + "\n"
}

/// Writes the sample configuration into `dir`, adjusted to this test's ports.
pub fn write_config(dir: &Path, ports: &PortBlock) -> std::io::Result<PathBuf> {
    write_config_with(dir, ports, &Options::default())
}

/// [`write_config`] with the changes of `options`.
pub fn write_config_with(
    dir: &Path,
    ports: &PortBlock,
    options: &Options,
) -> std::io::Result<PathBuf> {
    for entry in fs::read_dir(docs_dir())? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("conf") {
            continue;
        }
        let name = path.file_name().expect("file name").to_owned();
        let mut text = fs::read_to_string(&path)?;
        match name.to_str() {
            Some("http.conf") => {
                text = set_value(&text, "bindport", &ports.asterisk().to_string());
                if let Some((cert, key)) = &options.tls {
                    text = uncomment(&text, "tlsenable");
                    text = uncomment(&text, "tlsbindaddr");
                    text = uncomment(&text, "tlscertfile");
                    text = uncomment(&text, "tlsprivatekey");
                    let bind = format!("127.0.0.1:{}", ports.asterisk_tls());
                    text = set_value(&text, "tlsbindaddr", &bind);
                    text = set_value(&text, "tlscertfile", &cert.display().to_string());
                    text = set_value(&text, "tlsprivatekey", &key.display().to_string());
                }
            }
            Some("pjsip.conf") => {
                if options.tls.is_some() {
                    for line in ["[transport-wss]", "type", "protocol", "bind"] {
                        text = uncomment_after(&text, "[transport-wss]", line);
                    }
                }
                text.push_str(&options.extra_pjsip);
            }
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
    // `dtmf`: Asterisk logs each digit it receives on a channel ("DTMF end '5' received on
    // PJSIP/..."); digits it sends leave no line there.
    fs::write(
        dir.join("logger.conf"),
        "[logfiles]\nmessages.log => notice,warning,error,verbose,dtmf\n",
    )?;
    Ok(dir.join("asterisk.conf"))
}

/// A running Asterisk; terminated when dropped (its log is printed if the test panics).
pub struct RealAsterisk {
    child: Child,
    bin: PathBuf,
    conf: PathBuf,
    pub dir: tempfile::TempDir,
    /// The HTTP server: SIP WebSocket at `/ws`, ARI at `/ari`.
    pub addr: SocketAddr,
    /// The HTTPS server, when started with [`Options::tls`].
    pub tls_addr: Option<SocketAddr>,
}

impl RealAsterisk {
    /// Starts Asterisk with the sample configuration on `ports`; does not wait for it.
    pub fn start(bin: &Path, ports: &PortBlock) -> RealAsterisk {
        RealAsterisk::start_with(bin, ports, &Options::default())
    }

    /// [`RealAsterisk::start`] with the changes of `options`.
    pub fn start_with(bin: &Path, ports: &PortBlock, options: &Options) -> RealAsterisk {
        let dir = tempfile::Builder::new()
            .prefix("icegate-asterisk-")
            .tempdir()
            .expect("temp dir");
        let conf =
            write_config_with(dir.path(), ports, options).expect("write Asterisk configuration");
        let child = spawn(bin, &conf, dir.path());
        let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        RealAsterisk {
            child,
            bin: bin.to_path_buf(),
            conf,
            dir,
            addr: loopback(ports.asterisk()),
            tls_addr: options.tls.as_ref().map(|_| loopback(ports.asterisk_tls())),
        }
    }

    /// Waits until ARI answers `GET /ari/asterisk/info` with 200 (Asterisk takes a few
    /// seconds to load its modules); panics with Asterisk's log after a minute.
    pub fn wait_ready(&self) -> Value {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.try_ari("GET", "/ari/asterisk/info") {
                Ok((200, info)) => return info,
                other if Instant::now() > deadline => {
                    panic!("ARI never answered 200: {other:?}\n{}", self.logs())
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// One ARI request (`path` from `/ari`, with its query) as the ari.conf user: the status
    /// and the parsed body (`Null` when empty or not JSON). Panics when Asterisk does not
    /// answer.
    pub fn ari(&self, method: &str, path: &str) -> (u16, Value) {
        self.try_ari(method, path)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn try_ari(&self, method: &str, path: &str) -> Result<(u16, Value), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let wait = Duration::from_secs(5);
        let r = rt.block_on(client::http(self.addr, method, path, Some(ARI_AUTH), wait))?;
        Ok((
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        ))
    }

    /// The channels Asterisk holds now (`GET /ari/channels`).
    pub fn channels(&self) -> Vec<Value> {
        match self.ari("GET", "/ari/channels") {
            (200, Value::Array(channels)) => channels,
            other => panic!("GET /ari/channels: {other:?}"),
        }
    }

    /// Runs a CLI command in the running Asterisk (`asterisk -rx`) and returns its output.
    pub fn cli(&self, command: &str) -> String {
        let out = Command::new(&self.bin)
            .arg("-C")
            .arg(&self.conf)
            .args(["-rx", command])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("asterisk -rx {command:?}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Kills Asterisk (SIGKILL: no BYE, no goodbye on any WebSocket, as a crash or a power
    /// cut) and starts it again on the same configuration, as systemd's `Restart=` would.
    /// Does not wait for it to be ready.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.bin, &self.conf, self.dir.path());
    }

    /// The process id (for tests that check it restarted).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asterisk's output and messages log, for failure messages.
    pub fn logs(&self) -> String {
        ["stdout.log", "log/messages.log"]
            .iter()
            .map(|f| fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The messages log only (dtmf, warnings, errors and start-up's verbose lines).
    pub fn messages(&self) -> String {
        fs::read_to_string(self.dir.path().join("log/messages.log")).unwrap_or_default()
    }
}

/// Starts `asterisk -f -n -C conf`, its output appended to `dir`/stdout.log.
fn spawn(bin: &Path, conf: &Path, dir: &Path) -> Child {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stdout.log"))
        .expect("log file");
    Command::new(bin)
        .args(["-f", "-n", "-C"])
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup log"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()))
}

impl Drop for RealAsterisk {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- Asterisk log ----\n{}", self.logs());
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ARI application of the test's own (`observer`) subscribed to every event source
/// (`subscribeAll=true`): it sees what happens to every channel, including those of
/// icegate-signal's application, without taking anything over. Reconnects when Asterisk
/// restarts.
pub struct AriObserver {
    events: Arc<Mutex<Vec<Value>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl AriObserver {
    /// Connects to `addr`'s events WebSocket and waits until it is open.
    pub fn connect(addr: SocketAddr) -> AriObserver {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let (ev, st) = (events.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(observe(addr, ev, st, opened_tx));
        });
        opened_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the ARI observer's events WebSocket did not open");
        AriObserver { events, stop }
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("events").clone()
    }

    /// The events of one `type` so far.
    pub fn of_type(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    /// Waits up to `timeout` for an event matching `pred`; returns it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for an event of `kind` about the channel `id`; panics with every event seen.
    pub fn expect_channel_event(&self, kind: &str, id: &str, timeout: Duration) -> Value {
        self.wait_for(timeout, |e| e["type"] == kind && e["channel"]["id"] == id)
            .unwrap_or_else(|| {
                panic!(
                    "no {kind} for channel {id} within {timeout:?}; events: {:#?}",
                    self.events()
                )
            })
    }
}

impl Drop for AriObserver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn observe(
    addr: SocketAddr,
    events: Arc<Mutex<Vec<Value>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    opened: std::sync::mpsc::Sender<()>,
) {
    let path = format!(
        "/ari/events?app=observer&api_key={}:{}&subscribeAll=true",
        ARI_AUTH.0, ARI_AUTH.1
    );
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(mut ws) = client::ws_connect(addr, &path, None).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let _ = opened.send(());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match tokio::time::timeout(
                Duration::from_millis(200),
                client::recv_text(&mut ws, Duration::from_secs(3600)),
            )
            .await
            {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(text)) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&text) {
                        events.lock().expect("events").push(v);
                    }
                }
            }
        }
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

    #[test]
    fn tls_config_uncomments_the_https_server_and_the_wss_transport() {
        let ports = PortBlock::claim();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let options = Options {
            tls: Some((cert.clone(), key)),
            ..Options::default()
        };
        write_config_with(dir.path(), &ports, &options).unwrap();
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
        let http = read("http.conf");
        assert!(http.contains("\ntlsenable = yes\n"), "{http}");
        let bind = format!("\ntlsbindaddr = 127.0.0.1:{}\n", ports.asterisk_tls());
        assert!(http.contains(&bind), "{http}");
        assert!(http.contains(&format!("\ntlscertfile = {}\n", cert.display())));
        let pjsip = read("pjsip.conf");
        assert!(
            pjsip.contains("\n[transport-wss]\ntype = transport\nprotocol = wss\nbind = "),
            "{pjsip}"
        );
        // The ws transport before it is untouched.
        assert!(
            pjsip.contains("[transport-ws]\ntype = transport\nprotocol = ws\n"),
            "{pjsip}"
        );
    }
}
