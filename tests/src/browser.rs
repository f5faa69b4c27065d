//! Running the headless-Chromium scripts in `tests/browser/` (npm's playwright-core pointed at
//! Debian's `/usr/bin/chromium`) from Rust tests.

use crate::workspace_root;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Debian's Chromium, the only browser the scripts launch.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// `tests/browser/`: the scripts and their `node_modules`.
pub fn browser_dir() -> PathBuf {
    workspace_root().join("tests").join("browser")
}

/// Fails (never skips) with the command that installs what is missing.
pub fn require_browser_deps(dir: &Path) {
    let hint = "run scripts/install-deps (it calls tests/browser/install.sh: Debian's chromium \
                and `npm ci` in tests/browser)";
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: {hint}"
    );
    assert!(
        crate::have_tool("node"),
        "node is not installed (Debian package nodejs): {hint}"
    );
    assert!(
        dir.join("node_modules").join("playwright-core").is_dir(),
        "{} is missing: {hint}",
        dir.join("node_modules/playwright-core").display()
    );
}

/// A child's output, read on a thread so that a full pipe never blocks it.
pub fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Waits for `child` up to `timeout`, calling `poll` every 50 ms meanwhile; then SIGTERM
/// (Playwright closes Chromium on it) and, 5 s later, SIGKILL. `None` when it had to be
/// stopped.
pub fn wait_with_timeout(
    child: &mut Child,
    timeout: Duration,
    mut poll: impl FnMut(),
) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait for node") {
            return Some(status);
        }
        poll();
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let grace = Instant::now() + Duration::from_secs(5);
    while Instant::now() < grace {
        if child.try_wait().expect("wait for node").is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// What one run of a browser script gave: its exit status and the JSON result line it printed.
#[derive(Debug)]
pub struct ScriptRun {
    /// The exit status (the script also exits non-zero when `result.ok` is false).
    pub status: ExitStatus,
    /// The last line of stdout that is a JSON object.
    pub result: serde_json::Value,
    /// Everything the script wrote to stderr (the pages' logs on failure).
    pub stderr: String,
}

impl ScriptRun {
    /// For `pbx.mjs` calling an echo extension: the script passed, the call's selected pair
    /// was relay to relay through the relay at 127.0.0.1, and the echo came back (at least
    /// half a second of 50-packet/s audio). Dumps `signal`'s log first when the script failed.
    pub fn assert_echo_call_relayed(&self, signal: &crate::signal::Signal) {
        let (status, result) = (self.status, &self.result);
        if result["ok"] != true {
            signal.dump_log(60);
        }
        assert_eq!(
            result["ok"], true,
            "the browser's call to 600 failed at {}: {}",
            result["step"], result["error"]
        );
        assert!(
            status.success(),
            "pbx.mjs reported ok but exited with {status}"
        );
        assert_eq!(result["local"]["type"], "relay", "{result}");
        assert_eq!(result["local"]["address"], "127.0.0.1", "{result}");
        assert_eq!(result["remote"]["type"], "relay", "{result}");
        assert!(
            result["audioPacketsReceived"].as_u64().unwrap_or(0) >= 25,
            "{result}"
        );
    }
}

/// Runs `node SCRIPT URL --relay-ip 127.0.0.1 --relay-ports MIN-MAX --timeout S EXTRA...` in
/// `tests/browser/`, calling `poll` every 50 ms while it runs, and kills it after
/// `hard_timeout`. Panics when it does not finish or prints no JSON result; the caller asserts
/// on [`ScriptRun::result`].
pub fn run_script(
    script: &str,
    url: &str,
    relay_ports: (u16, u16),
    script_timeout: Duration,
    hard_timeout: Duration,
    extra: &[&str],
    poll: impl FnMut(),
) -> ScriptRun {
    let dir = browser_dir();
    require_browser_deps(&dir);
    let started = Instant::now();
    let mut child = std::process::Command::new("node")
        .current_dir(&dir)
        .arg(script)
        .arg(url)
        .args(["--relay-ip", "127.0.0.1"])
        .args([
            "--relay-ports",
            &format!("{}-{}", relay_ports.0, relay_ports.1),
        ])
        .args(["--timeout", &script_timeout.as_secs().to_string()])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn node tests/browser/{script}: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_with_timeout(&mut child, hard_timeout, poll);
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    eprintln!(
        "[browser] node {script} ran {:.1?}, {status:?}\n--- stdout\n{stdout}--- stderr\n{stderr}---",
        started.elapsed()
    );
    let status =
        status.unwrap_or_else(|| panic!("{script} did not finish within {hard_timeout:?}"));
    let result = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("{script} printed no JSON result ({status}); stderr:\n{stderr}"));
    ScriptRun {
        status,
        result,
        stderr,
    }
}
