//! The `vhost-tap` daemon under test.
//!
//! [`Daemon::start`] runs the binary on a socket in a fresh [`TempDir`] and
//! a unique TAP, logging to `daemon.log` there, and waits until it listens.
//! Dropping the guard stops it by PID (SIGTERM, SIGKILL after 5 s), prints
//! its log if the test is panicking, and removes its TAPs and directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use vhost_tap::counters::{DeviceReport, ReportEvent};

use crate::report::reports_of;
use crate::{quiet_tap, sh, tap_stat, unique_name, wait_for, TapGuard, TempDir};

/// How long the daemon may take to create its sockets.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a counter report may take after SIGUSR1.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The daemon's log filter in tests (debug shows the vhost-user negotiation;
/// nothing per frame is logged above trace).
const RUST_LOG: &str = "info,vhost_tap=debug";

/// The daemon binary: `$VHOST_TAP_BIN` if set, else `vhost-tap` beside the
/// running test binary ([`workspace_binary`]; a package's own integration
/// tests can pass `CARGO_BIN_EXE_vhost-tap` in [`Opts::bin`] instead).
pub fn daemon_binary() -> PathBuf {
    match std::env::var_os("VHOST_TAP_BIN") {
        Some(p) => PathBuf::from(p),
        None => workspace_binary("vhost-tap", "vhost-tap"),
    }
}

/// The binary `name` of workspace package `package`, built beside the
/// running test binary (`target/<profile>/`, as `cargo build [--release]`
/// leaves it). Panics, saying what to build, if it is missing.
pub fn workspace_binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary> → target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is not in target/<profile>/deps")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build [--release] -p {package} --bins)",
        bin.display()
    );
    bin
}

/// Options of one daemon run.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// The binary (default: [`daemon_binary`]).
    pub bin: Option<PathBuf>,
    /// `--queues` (default: not passed, the daemon's 1).
    pub queues: Option<usize>,
    pub queue_size: Option<u16>,
    pub ring_size: Option<usize>,
    /// Use this TAP name instead of a fresh one (e.g. a pre-existing TAP).
    pub tap: Option<String>,
    /// Further command-line options.
    pub extra: Vec<String>,
}

impl Opts {
    /// Default options plus the command-line options `extra`.
    pub fn args(extra: &[&str]) -> Opts {
        Opts {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..Opts::default()
        }
    }
}

/// The daemon under test (see the module docs).
pub struct Daemon {
    child: Option<Child>,
    /// The PID of the running process (changes on [`Daemon::restart`]).
    pub pid: u32,
    /// Its (first) device's TAP.
    pub tap: String,
    /// Its (first) device's vhost-user socket.
    pub socket: PathBuf,
    /// stdout and stderr of every run, appended.
    pub log: PathBuf,
    /// Queue pairs of the first device (as passed with `--queues`).
    pub queues: usize,
    pub dir: TempDir,
    bin: PathBuf,
    args: Vec<String>,
    /// Every device's (socket, TAP).
    devices: Vec<(PathBuf, String)>,
    exit: Option<ExitStatus>,
    /// `--client`: the sockets are the frontend's, not the daemon's.
    client: bool,
}

impl Daemon {
    /// One device on a fresh socket and TAP (or `opts.tap`).
    pub fn start(opts: Opts) -> Daemon {
        let dir = TempDir::new("d");
        let socket = dir.join("vhost.sock");
        let tap = opts.tap.clone().unwrap_or_else(|| unique_name("vti"));
        let mut args: Vec<String> = vec![
            "--socket".into(),
            socket.display().to_string(),
            "--tap".into(),
            tap.clone(),
        ];
        if let Some(q) = opts.queues {
            args.extend(["--queues".into(), q.to_string()]);
        }
        if let Some(q) = opts.queue_size {
            args.extend(["--queue-size".into(), q.to_string()]);
        }
        if let Some(r) = opts.ring_size {
            args.extend(["--ring-size".into(), r.to_string()]);
        }
        args.extend(opts.extra.iter().cloned());
        let bin = opts.bin.clone().unwrap_or_else(daemon_binary);
        Daemon::launch(
            bin,
            dir,
            args,
            vec![(socket, tap)],
            opts.queues.unwrap_or(1),
        )
    }

    /// One device with `queues` queue pairs, other options default.
    pub fn start_queues(queues: usize) -> Daemon {
        Daemon::start(Opts {
            queues: Some(queues),
            ..Opts::default()
        })
    }

    /// Default options plus the command-line options `extra`.
    pub fn start_args(extra: &[&str]) -> Daemon {
        Daemon::start(Opts::args(extra))
    }

    /// `vhost-tap --config CONFIG` serving `devices` (socket, TAP) as the
    /// file says; `dir` (holding the file, the sockets, the log) is the
    /// daemon's from now on. `tap`/`socket` are the first device's.
    pub fn start_config(
        bin: Option<PathBuf>,
        dir: TempDir,
        config: &Path,
        devices: Vec<(PathBuf, String)>,
    ) -> Daemon {
        assert!(!devices.is_empty(), "a config daemon needs a device");
        let args = vec!["--config".into(), config.display().to_string()];
        let bin = bin.unwrap_or_else(daemon_binary);
        Daemon::launch(bin, dir, args, devices, 1)
    }

    fn launch(
        bin: PathBuf,
        dir: TempDir,
        args: Vec<String>,
        devices: Vec<(PathBuf, String)>,
        queues: usize,
    ) -> Daemon {
        let log = dir.join("daemon.log");
        let child = spawn(&bin, &args, &log);
        let mut d = Daemon {
            pid: child.id(),
            child: Some(child),
            tap: devices[0].1.clone(),
            socket: devices[0].0.clone(),
            log,
            queues,
            dir,
            bin,
            args,
            devices,
            exit: None,
            client: false,
        };
        d.client = d.args.iter().any(|a| a == "--client");
        d.wait_listening();
        d
    }

    /// Wait until every socket exists (in client mode, where the sockets
    /// are the frontend's: every TAP); panics with the log if the daemon
    /// exits first or takes too long. Then quiets the TAPs.
    fn wait_listening(&mut self) {
        let up = wait_for(LISTEN_TIMEOUT, || {
            let ready = |(s, t): &(PathBuf, String)| {
                if self.client {
                    crate::tap_exists(t)
                } else {
                    s.exists()
                }
            };
            if self.devices.iter().all(ready) {
                return Some(true);
            }
            (!self.alive()).then_some(false)
        });
        match up {
            Some(true) => {}
            Some(false) => panic!(
                "vhost-tap exited before listening ({:?}); log:\n{}",
                self.exit,
                self.log_text()
            ),
            None => panic!(
                "vhost-tap did not create {:?} within {LISTEN_TIMEOUT:?}; log:\n{}",
                self.devices.iter().map(|d| &d.0).collect::<Vec<_>>(),
                self.log_text()
            ),
        }
        for (_, tap) in &self.devices {
            quiet_tap(tap);
        }
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Whether the process still runs (reaps it if not).
    pub fn alive(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(st))) => {
                self.exit = Some(st);
                false
            }
            _ => false,
        }
    }

    /// Send `sig` to the daemon (if it has not been reaped).
    pub fn signal(&self, sig: libc::c_int) {
        if self.exit.is_none() {
            if let Some(c) = &self.child {
                crate::signal(c, sig);
            }
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit; `None` on timeout
    /// (the process is then still running; drop kills it).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.alive() {
            self.signal(libc::SIGTERM);
        }
        wait_for(timeout, || if self.alive() { None } else { self.exit })
    }

    /// Stop the daemon (SIGTERM by PID as an operator would, SIGKILL after
    /// 10 s) and start a new one with the same options; the log continues
    /// in the same file. The old one removes the TAP it created, the new one
    /// creates it again: host addresses must be added again. The old exit.
    pub fn restart(&mut self) -> Option<ExitStatus> {
        let st = match self.child.as_mut() {
            Some(c) if self.exit.is_none() => crate::stop(c, Duration::from_secs(10)),
            _ => self.exit,
        };
        // SIGTERM removes the sockets; a SIGKILLed daemon would leave them.
        // (In client mode they are the frontend's: left alone.)
        for (s, _) in self.devices.iter().filter(|_| !self.client) {
            let _ = fs::remove_file(s);
        }
        self.start_again();
        st
    }

    /// SIGKILL the daemon (no cleanup: its sockets stay behind, stale) and
    /// start it again on the same arguments; the exit status of the killed one.
    pub fn kill_and_restart(&mut self) -> Option<ExitStatus> {
        let st = match self.child.as_mut() {
            Some(c) if self.exit.is_none() => {
                let _ = c.kill();
                c.wait().ok()
            }
            _ => self.exit,
        };
        // The stale sockets are still there: wait for the new daemon's own
        // "listening" lines, not for the files.
        let listening = |d: &Daemon| d.log_text().matches(": listening on ").count();
        let before = listening(self);
        self.start_again();
        let want = before + self.devices.len();
        let up = wait_for(LISTEN_TIMEOUT, || (listening(self) >= want).then_some(()));
        assert!(
            up.is_some(),
            "the restarted daemon did not listen within {LISTEN_TIMEOUT:?}; log:\n{}",
            self.log_text()
        );
        st
    }

    fn start_again(&mut self) {
        let child = spawn(&self.bin, &self.args, &self.log);
        self.pid = child.id();
        self.child = Some(child);
        self.exit = None;
        self.wait_listening();
    }

    /// Whether the daemon runs in client mode (`--client`).
    pub fn client(&self) -> bool {
        self.client
    }

    /// Wait until a log line contains every one of `needles`; that line.
    pub fn wait_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        wait_for(timeout, || {
            self.log_text()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
        })
    }

    /// Wait (5 s) until the daemon says it runs queue mode `mode`
    /// (`mode MODE ` in its start-up line); panics with the log otherwise.
    pub fn assert_mode(&self, mode: &str) {
        let said = wait_for(Duration::from_secs(5), || {
            self.log_text()
                .contains(&format!("mode {mode} "))
                .then_some(())
        });
        assert!(
            said.is_some(),
            "the daemon does not say it runs mode {mode}:\n{}",
            self.log_text()
        );
    }

    /// Panics if a daemon thread panicked.
    pub fn assert_no_panic(&self) {
        let log = self.log_text();
        if let Some(l) = log.lines().find(|l| l.contains("panicked at")) {
            panic!("a daemon thread panicked: {l}");
        }
    }

    /// Every JSON counter report of the first device so far.
    pub fn reports(&self) -> Vec<DeviceReport> {
        reports_of(&self.log_text(), &self.tap)
    }

    /// The first device's counters now: SIGUSR1 and its new report. Panics
    /// with the log if the daemon is gone, a thread panicked, or no report
    /// comes.
    pub fn counters(&mut self) -> DeviceReport {
        self.counters_of(&self.tap.clone())
    }

    /// [`Daemon::counters`] of the device whose TAP is `tap`.
    pub fn counters_of(&mut self, tap: &str) -> DeviceReport {
        self.assert_no_panic();
        assert!(
            self.alive(),
            "vhost-tap is not running ({:?}); log:\n{}",
            self.exit,
            self.log_text()
        );
        let signal_reports = |log: &str| {
            reports_of(log, tap)
                .into_iter()
                .filter(|r| r.event == ReportEvent::Signal)
                .collect::<Vec<_>>()
        };
        let before = signal_reports(&self.log_text()).len();
        self.signal(libc::SIGUSR1);
        wait_for(REPORT_TIMEOUT, || {
            let mut r = signal_reports(&self.log_text());
            (r.len() > before).then(|| r.pop()).flatten()
        })
        .unwrap_or_else(|| {
            panic!(
                "no counter report of {tap} within {REPORT_TIMEOUT:?} of SIGUSR1; log:\n{}",
                self.log_text()
            )
        })
    }

    /// The features the frontend acked last (`guest acked features 0x..`).
    pub fn acked_features(&self) -> Option<u64> {
        const KEY: &str = "guest acked features 0x";
        let log = self.log_text();
        let i = log.rfind(KEY)?;
        let hex = log[i + KEY.len()..]
            .split(|c: char| !c.is_ascii_hexdigit())
            .next()?;
        u64::from_str_radix(hex, 16).ok()
    }

    /// Put `addr` (ADDR/PFX) on the TAP, with IPv6 enabled on it.
    ///
    /// Panics if another interface holds an address in that prefix (a
    /// leftover from an interrupted run would take the route).
    pub fn add_host_ip(&self, addr: &str) {
        let other = sh(&format!("ip -o addr show to {addr}"));
        assert!(
            other.trim().is_empty(),
            "{addr} overlaps an address already on this host (leftover TAP?): {other}"
        );
        sh(&format!(
            "sysctl -qw net.ipv6.conf.{}.disable_ipv6=0",
            self.tap
        ));
        sh(&format!("ip addr add {addr} dev {}", self.tap));
    }

    /// The TAP's MAC address.
    pub fn tap_mac(&self) -> String {
        let p = format!("/sys/class/net/{}/address", self.tap);
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("reading {p}: {e}"))
            .trim()
            .to_string()
    }

    /// A statistic of the TAP (`/sys/class/net/TAP/statistics/NAME`).
    pub fn tap_stat(&self, name: &str) -> u64 {
        tap_stat(&self.tap, name)
    }
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Child {
    let open = || {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()))
    };
    Command::new(bin)
        .args(args)
        .env("RUST_LOG", RUST_LOG)
        .stdin(Stdio::null())
        .stdout(open())
        .stderr(open())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            self.signal(libc::SIGTERM);
            if wait_for(Duration::from_secs(5), || (!self.alive()).then_some(())).is_none() {
                if let Some(c) = self.child.as_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "----- vhost-tap log ({}) -----\n{}\n----- end of log -----",
                self.log.display(),
                self.log_text()
            );
        }
        for (_, tap) in &self.devices {
            drop(TapGuard(tap.clone()));
        }
        // `dir` (log, sockets) goes when the fields drop.
    }
}
