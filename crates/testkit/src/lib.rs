//! The test kit every suite of this workspace uses (dev-only, not published).
//!
//! - [`daemon`]: the `vhost-tap` daemon under test: spawned on a unique
//!   socket and TAP, stopped by PID when the guard drops, its log printed if
//!   the test panicked, its TAP, socket and directory removed even then.
//! - [`report`]: the daemon's counters, read from its JSON reports
//!   (`vhost_tap::counters::parse_reports`), never from the human lines.
//! - [`net`]: TAP statistics from sysfs, `ip(8)`, a TAP guard.
//! - here: [`wait_for`], [`unique`]/[`unique_name`], [`TempDir`], [`sh`],
//!   and [`Process`]/[`stop`] for any child a test starts.
//!
//! Everything waits by polling with a deadline; nothing sleeps blindly.
//! Tests that need root, `/dev/net/tun`, QEMU, DPDK or trafgen are marked
//! `#[ignore = "needs ...: run by tests/run.sh"]` in their suites, so that
//! `cargo test` without root runs the pure tests and says what it skipped.

pub mod daemon;
pub mod net;
pub mod report;

pub use daemon::{daemon_binary, workspace_binary, Daemon, Opts};
pub use net::{ip, quiet_tap, tap_exists, tap_stat, TapGuard};
pub use report::{is_gauge, reports_of, ReportExt};
pub use vhost_tap::counters::{DeviceReport, QueueReport, ReportEvent};

use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// First poll interval of [`wait_for`]; it doubles up to [`POLL_MAX`].
const POLL_MIN: Duration = Duration::from_millis(5);
/// Longest poll interval of [`wait_for`]: a long wait on something costly
/// (a counter report, a ping) does not run it hundreds of times a second.
const POLL_MAX: Duration = Duration::from_millis(50);

/// Poll `f` until it returns `Some` or `timeout` passes (`None` then).
/// Polls after 5 ms at first, backing off to every 50 ms.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut poll = POLL_MIN;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(poll.min(deadline - now));
        poll = (poll * 2).min(POLL_MAX);
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh number, unique in this test process.
pub fn unique() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// `<prefix><pid mod 100000>x<n>`: unique across concurrent test processes
/// and calls; asserted to fit an interface name (15 bytes).
pub fn unique_name(prefix: &str) -> String {
    let name = format!("{prefix}{}x{}", std::process::id() % 100_000, unique());
    assert!(name.len() <= 15, "name {name} is longer than IFNAMSIZ - 1");
    name
}

/// A fresh private directory under `$TMPDIR`, removed (with its contents)
/// on drop, also when the test fails. Derefs to its path.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("vt-test-{}", unique_name(tag)));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Run `cmd` with `sh -c`, panicking with its output if it fails; its stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("running sh -c `{cmd}`: {e}"));
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Send `sig` to our child `child` (by PID; it is not reaped yet, so the PID
/// is still its own).
pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the PID of a child we have not reaped: it cannot
    // have been reused by another process.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

/// Stop a child by PID: SIGTERM, SIGKILL after `grace`; its exit status
/// (`None` if even waiting for it failed).
pub fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    signal(child, libc::SIGTERM);
    let st = wait_for(grace, || child.try_wait().ok().flatten());
    if st.is_none() {
        let _ = child.kill();
        return child.wait().ok();
    }
    st
}

/// A process a test started, stopped by PID (SIGTERM, then SIGKILL) on drop.
pub struct Process {
    pub child: Child,
    /// What it is, for messages.
    pub what: String,
}

impl Process {
    pub fn spawn(mut cmd: Command, what: &str) -> Process {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        Process {
            child,
            what: what.to_string(),
        }
    }

    /// Wait for the process to exit by itself; `None` on timeout.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, || self.child.try_wait().ok().flatten())
    }

    /// Stop it now (SIGTERM, SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        stop(&mut self.child, grace)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(3));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_returns_the_value_or_none_at_the_deadline() {
        let mut n = 0;
        assert_eq!(
            wait_for(Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
        let t0 = Instant::now();
        assert_eq!(wait_for(Duration::from_millis(30), || None::<()>), None);
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        assert!(waited < Duration::from_secs(1), "{waited:?}");
    }

    #[test]
    fn unique_names_differ_and_fit_an_interface_name() {
        let (a, b) = (unique_name("vti"), unique_name("vti"));
        assert_ne!(a, b);
        assert!(a.len() <= 15 && a.starts_with("vti"), "{a}");
    }

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let d = TempDir::new("kit");
        fs::write(d.join("f"), "x").unwrap();
        let p = d.path().to_path_buf();
        assert!(p.is_dir());
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn process_is_stopped_on_drop() {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let p = Process::spawn(cmd, "sleep");
        let pid = p.child.id() as libc::pid_t;
        drop(p);
        // SAFETY: signal 0 only asks whether the PID exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "sleep {pid} still runs after the guard dropped");
    }
}
