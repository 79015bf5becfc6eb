//! Harness for the end-to-end tests: processes started here are stopped by
//! PID, and the TAPs, sockets and files they use are removed, when the guard
//! drops — also when the test fails. On failure the guards print the logs
//! (daemon log, guest console) so that the cause is visible in CI output.

pub mod slowguest;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A unique short name (≤ 15 bytes) for TAPs and files of this test process.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Poll `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run a command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stop a child by PID: SIGTERM, then SIGKILL after `grace`.
pub fn stop(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    // SAFETY: kill(2) on the PID of a child we have not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_for(grace, || child.try_wait().ok().flatten());
    if st.is_none() {
        let _ = child.kill();
        return child.wait().ok();
    }
    st
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("vt-e2e-{}", unique(tag)));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The daemon, started on a socket in its own directory with a TAP it creates.
pub struct Daemon {
    pub child: Child,
    pub tap: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub dir: TempDir,
}

/// The daemon binary built beside this test binary (target/<profile>/vhost-tap).
pub fn daemon_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("vhost-tap");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release -p vhost-tap)",
        bin.display()
    );
    bin
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        let dir = TempDir::new("d");
        let tap = unique("vte");
        let socket = dir.0.join("vhost.sock");
        let log = dir.0.join("daemon.log");
        let child = Command::new(daemon_binary())
            .args(["--socket", socket.to_str().unwrap(), "--tap", &tap])
            .args(extra)
            .env("RUST_LOG", "info,vhost_tap=debug")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn vhost-tap");
        let d = Daemon {
            child,
            tap,
            socket,
            log,
            dir,
        };
        let up = wait_for(Duration::from_secs(10), || d.socket.exists().then_some(()));
        assert!(up.is_some(), "daemon did not listen:\n{}", d.log_text());
        d
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The counters of every queue, from a SIGUSR1 report.
    pub fn counters(&mut self) -> Vec<HashMap<String, u64>> {
        let before = self.log_text().matches("counters:").count();
        // SAFETY: kill(2) on our live child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        let text = wait_for(Duration::from_secs(5), || {
            let t = self.log_text();
            (t.matches("counters:").count() > before && t.ends_with('\n')).then_some(t)
        })
        .expect("daemon did not report counters");
        parse_counters(&text)
    }

    /// Stop with SIGTERM; returns the exit status and the last counters.
    pub fn shutdown(&mut self) -> (Option<std::process::ExitStatus>, Vec<HashMap<String, u64>>) {
        let st = stop(&mut self.child, Duration::from_secs(10));
        (st, parse_counters(&self.log_text()))
    }
}

/// Counters of the last report in a daemon log (lines `device=.. queue=.. k=v ...`).
pub fn parse_counters(log: &str) -> Vec<HashMap<String, u64>> {
    let start = log.rfind("counters:").unwrap_or(0);
    let mut out: Vec<HashMap<String, u64>> = Vec::new();
    for line in log[start..].lines() {
        let line = line.trim();
        if !line.starts_with("device=") {
            continue;
        }
        let mut m = HashMap::new();
        for kv in line.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                if let Ok(n) = v.parse::<u64>() {
                    m.insert(k.to_string(), n);
                }
            }
        }
        out.push(m);
    }
    out
}

/// Sum of every `*_dropped_*` counter over all queues.
pub fn daemon_drops(c: &[HashMap<String, u64>]) -> u64 {
    c.iter()
        .flat_map(|q| q.iter())
        .filter(|(k, _)| k.contains("_dropped_"))
        .map(|(_, v)| *v)
        .sum()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!("---- daemon log ----\n{}", self.log_text());
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.tap])
            .stderr(Stdio::null())
            .status();
    }
}

/// A QEMU guest booted with vm-images/run-guest.sh in the background.
pub struct Guest {
    pid: i32,
    pub console: PathBuf,
    _dir: TempDir,
}

impl Guest {
    /// Boot against `socket` running `script` (shell text) in the guest.
    pub fn boot(socket: &Path, script: &str, args: &[&str]) -> Guest {
        let dir = TempDir::new("g");
        let script_path = dir.0.join("run.sh");
        fs::write(&script_path, script).expect("script");
        let console = dir.0.join("console.log");
        let pidfile = dir.0.join("qemu.pid");
        let out = Command::new(repo().join("vm-images/run-guest.sh"))
            .args(["-s", socket.to_str().unwrap()])
            .args(["-S", script_path.to_str().unwrap()])
            .args(["-l", console.to_str().unwrap()])
            .args(["-p", pidfile.to_str().unwrap()])
            .arg("-b")
            .args(args)
            .output()
            .expect("run-guest.sh");
        assert!(
            out.status.success(),
            "run-guest.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = wait_for(Duration::from_secs(10), || {
            fs::read_to_string(&pidfile)
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()
        })
        .expect("QEMU wrote no pidfile");
        Guest {
            pid,
            console,
            _dir: dir,
        }
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Wait until the console shows `marker`.
    pub fn wait_console(&self, marker: &str, timeout: Duration) -> bool {
        wait_for(timeout, || {
            self.console_text().contains(marker).then_some(())
        })
        .is_some()
    }

    pub fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the PID exists.
        unsafe { libc::kill(self.pid, 0) == 0 }
    }

    /// Wait for QEMU to exit by itself (guest poweroff).
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        wait_for(timeout, || (!self.alive()).then_some(())).is_some()
    }

    /// Kill QEMU now (as a host crash or `kill -9` would).
    pub fn kill(&self) {
        // SAFETY: kill(2) on the QEMU PID we started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        wait_for(Duration::from_secs(5), || (!self.alive()).then_some(()));
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.alive() {
            // SAFETY: kill(2) on the QEMU PID we started.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            if wait_for(Duration::from_secs(5), || (!self.alive()).then_some(())).is_none() {
                self.kill();
            }
        }
        if std::thread::panicking() {
            eprintln!("---- guest console ----\n{}", self.console_text());
        }
    }
}
