//! Network namespaces that a test makes for itself, so that it can build a small network
//! (routers, NATs, hosts on veth pairs) whose traffic never leaves the machine and never
//! touches the host's own interfaces.
//!
//! Namespaces are named `icegate-test-PID-SUFFIX` and deleted when their [`Netns`] is
//! dropped, also when the test panics. A test killed outright (a nextest timeout) cannot run
//! its drops, so [`remove_stale`] deletes the namespaces of test processes that are gone.
//!
//! Code runs inside a namespace through [`Netns::enter`], on a fresh thread: a socket stays
//! in the namespace it was made in, so sockets made there can be used by the test thread,
//! whose own namespace never changes.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// Prefix of every namespace made here.
const PREFIX: &str = "icegate-test-";

/// One network namespace, deleted on drop (with every interface in it: veth pairs with an
/// end in it go too).
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `icegate-test-PID-SUFFIX`, with its loopback up.
    pub fn add(suffix: &str) -> Result<Netns, String> {
        let name = format!("{PREFIX}{}-{suffix}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // Owned from here on: a failure below still deletes it.
        let ns = Netns { name };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`, ARGS split at whitespace.
    pub fn ip(&self, args: &str) -> Result<String, String> {
        run(Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace()))
    }

    /// `PROGRAM ARGS` run inside the namespace (`ip netns exec`), to completion.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        run(self.command(program).args(args))
    }

    /// A command that runs `program` inside the namespace. `ip netns exec` execs it, so the
    /// child's pid is the program's own.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Sets `net.ipv4.ip_forward` in the namespace (each namespace has its own, off).
    pub fn enable_forwarding(&self) -> Result<(), String> {
        self.exec("sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
            .map(drop)
    }

    /// Loads an nftables ruleset (`nft -f -`) into the namespace.
    pub fn nft(&self, ruleset: &str) -> Result<(), String> {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn nft in {}: {e}", self.name))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(ruleset.as_bytes())
            .map_err(|e| format!("write the ruleset to nft: {e}"))?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft -f - in {}: {}\n{}{ruleset}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns what it
    /// returns (a panic in `f` is the caller's panic). Sockets `f` makes belong to the
    /// namespace for good, whichever thread uses them later.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        let joined = std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // nix's `sched` feature is not enabled for this crate; its re-exported libc
                // has the same call. Only this thread moves: CLONE_NEWNET is per thread.
                // SAFETY: a plain system call on a descriptor that outlives it.
                let rc = unsafe { nix::libc::setns(ns.as_raw_fd(), nix::libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
                f()
            })
            .join()
        });
        joined.unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("[netns] could not delete {}: {e}", self.name);
        }
    }
}

/// Why namespaces cannot be made here (`None`: they can): not root, no `ip`, or the kernel
/// or a sandbox refuses. Tries a throwaway namespace, since only that answers the last one.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("network namespaces need root".into());
    }
    if !crate::have_tool("ip") {
        return Some("`ip` (iproute2) is not installed".into());
    }
    match Netns::add("probe") {
        Ok(ns) => {
            let entered = std::panic::catch_unwind(|| ns.enter(|| ())).is_ok();
            (!entered).then(|| "setns into a new network namespace failed".into())
        }
        Err(e) => Some(format!("cannot create a network namespace: {e}")),
    }
}

/// Deletes the namespaces that test processes no longer alive left behind (killed before
/// their drops ran).
pub fn remove_stale() {
    let Ok(list) = run(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for line in list.lines() {
        // "NAME" or "NAME (id: N)".
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("[netns] deleting {name}, left behind by process {pid}");
            let _ = run(Command::new("ip").args(["netns", "del", name]));
        }
    }
}

/// Runs a command to completion; its stdout, or an error naming it with its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
