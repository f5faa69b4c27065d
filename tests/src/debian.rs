//! The Debian packages, built for the tests that install them (tests/packages.rs,
//! tests/systemd_boot.rs): `cargo deb --no-build --profile dev` packages the debug binaries
//! the other cross-process tests run. What these tests check is the packaging (paths, modes,
//! users, conffiles, maintainer scripts, units), which does not depend on the profile; a
//! release build here cost CI three minutes for nothing they check. Operators build the real
//! packages with `cargo deb` (release), as docs/operations.md says.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use crate::{workspace_binary, workspace_root};

/// The two packages, named as their binaries.
pub const PACKAGES: [&str; 2] = ["icegate-relay", "icegate-signal"];

/// The cargo that runs the tests (`$CARGO`), else the one on PATH.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Whether `cargo deb` is installed (scripts/install-deps installs it).
pub fn cargo_deb_available() -> bool {
    Command::new(cargo())
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds both packages into `out`; their paths, in the order of [`PACKAGES`]. `tag` prefixes
/// the timing lines.
pub fn build_packages(out: &Path, tag: &str) -> Vec<PathBuf> {
    let started = Instant::now();
    // The debug binaries every other cross-process test runs (built once if missing).
    for package in PACKAGES {
        let env_override = format!("{}_BIN", package.to_uppercase().replace('-', "_"));
        let bin = workspace_binary(package, &env_override);
        assert!(
            std::env::var_os(&env_override).is_none(),
            "{env_override} is set ({}), but cargo deb packages target/debug/{package}: unset \
             it to test the packages",
            bin.display()
        );
    }
    let debs = PACKAGES.iter().map(|p| package(p, out)).collect();
    eprintln!("[{tag}] both packages: {:.0?}", started.elapsed());
    debs
}

/// `cargo deb -p PACKAGE --no-build --profile dev` into `out`; the .deb's path.
fn package(package: &str, out: &Path) -> PathBuf {
    let stdout = run(Command::new(cargo())
        .args([
            "deb",
            "-p",
            package,
            "--no-build",
            "--profile",
            "dev",
            "--output",
        ])
        .arg(out)
        .current_dir(workspace_root())
        .stdin(Stdio::null()));
    let deb = PathBuf::from(stdout.trim().lines().last().unwrap_or_default());
    assert!(
        deb.extension().is_some_and(|e| e == "deb") && deb.is_file(),
        "cargo deb -p {package} printed no .deb path: {stdout}"
    );
    deb
}

/// Runs `command`, asserting success; its stdout.
pub fn run(command: &mut Command) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        status.success(),
        "{command:?} failed ({status}):\n{stdout}{}",
        String::from_utf8_lossy(&stderr)
    );
    stdout
}

/// Holds this machine's `name` lock until dropped, waiting for it: tests that change the
/// machine itself (dpkg, a shared debootstrap root) take one, so that two test runs at once
/// take turns instead of tripping over each other's installation. The kernel drops the lock
/// when the holder dies.
pub fn machine_lock(name: &str) -> nix::fcntl::Flock<std::fs::File> {
    let path = Path::new("/var/lock").join(format!("icegate-tests-{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let started = Instant::now();
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock {}: {e}", path.display()));
    if started.elapsed() > std::time::Duration::from_secs(1) {
        eprintln!(
            "[{name}] waited {:.0?} for another test run to finish with this machine",
            started.elapsed()
        );
    }
    lock
}
