//! Harness for the end-to-end tests, on top of the workspace's test kit
//! (`testkit`: the daemon, its counters, temp dirs, waits): QEMU guests
//! ([`Guest`], also run as another user: [`RunAs`]), the slow guest of
//! [`slowguest`], host-side TCP transfers. Processes started here are
//! stopped by PID, and the files they use are removed, when the guard drops
//! — also when the test fails. On failure the guards print the logs (guest
//! console, bridge log) so that the cause is visible in CI output.
//!
//! Every test here needs root and the peers `tests/setup-host.sh` installs
//! (QEMU, DPDK, trafgen): they are `#[ignore]`d with that reason, and
//! `tests/run.sh` runs them (`--include-ignored`).

pub mod k73;
pub mod slowguest;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testkit::{sh, wait_for, TempDir};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A QEMU guest booted with vm-images/run-guest.sh in the background.
pub struct Guest {
    pid: i32,
    pub console: PathBuf,
    _dir: TempDir,
}

impl Guest {
    /// QEMU's PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Boot against `socket` running `script` (shell text) in the guest.
    pub fn boot(socket: &Path, script: &str, args: &[&str]) -> Guest {
        Guest::launch(None, socket, script, args)
    }

    /// [`Guest::boot`] with QEMU running as `user`: its directory (script,
    /// console, pidfile) is given to the user, and the guest images must be
    /// readable by it (vm-images/out is world-readable).
    pub fn boot_as(user: &RunAs, socket: &Path, script: &str, args: &[&str]) -> Guest {
        Guest::launch(Some(user), socket, script, args)
    }

    fn launch(user: Option<&RunAs>, socket: &Path, script: &str, args: &[&str]) -> Guest {
        let dir = TempDir::new("g");
        let script_path = dir.join("run.sh");
        fs::write(&script_path, script).expect("script");
        let console = dir.join("console.log");
        let pidfile = dir.join("qemu.pid");
        let run_guest = repo().join("vm-images/run-guest.sh");
        let mut cmd = match user {
            Some(u) => {
                u.chown(&dir);
                u.command(&run_guest)
            }
            None => Command::new(&run_guest),
        };
        let out = cmd
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

    /// The console up to its last newline: QEMU may be writing the last
    /// line while we read (a marker cut short there read as a wrong value,
    /// e.g. a 24-digit md5).
    fn complete_lines(&self) -> String {
        let mut t = self.console_text();
        t.truncate(t.rfind('\n').map_or(0, |i| i + 1));
        t
    }

    /// Console lines (complete ones) that contain the word `key` followed by a space or the
    /// end of the line (escape sequences of the firmware may precede it);
    /// the rest of each line, trimmed.
    pub fn markers(&self, key: &str) -> Vec<String> {
        self.complete_lines()
            .lines()
            .filter_map(|l| {
                let l = l.trim_end_matches('\r');
                let i = l.find(key)?;
                let rest = &l[i + key.len()..];
                let word_start =
                    i == 0 || !l[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '-');
                (word_start && (rest.is_empty() || rest.starts_with(' ')))
                    .then(|| rest.trim().to_string())
            })
            .collect()
    }

    /// Whether a console line starts with `text`.
    pub fn has_line(&self, text: &str) -> bool {
        self.complete_lines()
            .lines()
            .any(|l| l.trim_start_matches('\r').starts_with(text))
    }

    /// The last `key ...` marker line (its rest), once the console shows one.
    pub fn wait_marker(&self, key: &str, timeout: Duration) -> Option<String> {
        wait_for(timeout, || self.markers(key).pop())
    }

    /// Like `wait_marker`, panicking with `what` on timeout or when the
    /// guest script ended first.
    pub fn expect_marker(&self, key: &str, timeout: Duration, what: &str) -> String {
        let v = wait_for(timeout, || {
            if let Some(v) = self.markers(key).pop() {
                return Some(Ok(v));
            }
            let t = self.console_text();
            (t.contains("VT-GUEST: exit=") || !self.alive()).then_some(Err(()))
        });
        match v {
            Some(Ok(v)) => v,
            Some(Err(())) => panic!("{what}: the guest script ended without `{key}`"),
            None => panic!("{what}: no `{key}` on the guest console after {timeout:?}"),
        }
    }

    /// Wait for the test script to end and return its exit status.
    pub fn wait_script(&self, timeout: Duration) -> Option<i32> {
        let v = wait_for(timeout, || {
            let m = self.markers("VT-GUEST:");
            m.iter().rev().find_map(|l| {
                l.strip_prefix("exit=")
                    .map(|s| s.trim().parse().unwrap_or(-1))
            })
        });
        v
    }

    /// Let the guest script end: it waits in `timeout 60 nc -l -p PORT`
    /// for the host to connect to `ip:port` (up to 30 s). Then its exit
    /// status must be 0 within 60 s.
    pub fn release(&self, ip: &str, port: u16) {
        let s = wait_for(Duration::from_secs(30), || {
            TcpStream::connect((ip, port)).ok()
        });
        assert!(
            s.is_some(),
            "cannot reach the guest's sync port {ip}:{port}"
        );
        drop(s);
        assert_eq!(
            self.wait_script(Duration::from_secs(60)),
            Some(0),
            "guest script"
        );
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

/// A user to run a process as (QEMU, in [`Guest::boot_as`]), through
/// setpriv(1): real and effective uid and gid become the user's, and the
/// supplementary groups either the user's from the group database or none.
/// Root's capabilities go with the change of uid.
#[derive(Clone, Debug)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
    /// With the user's supplementary groups (`--init-groups`), or none
    /// (`--clear-groups`).
    pub groups: bool,
}

impl RunAs {
    /// `user` with its supplementary groups; panics if there is no such user.
    pub fn user(user: &str) -> RunAs {
        let id = |flag: &str| -> u32 {
            sh(&format!("id {flag} -- '{user}'"))
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("id {flag} {user}: {e}"))
        };
        RunAs {
            user: user.to_string(),
            uid: id("-u"),
            gid: id("-g"),
            groups: true,
        }
    }

    /// `user` in its primary group only, without its supplementary groups.
    pub fn without_groups(user: &str) -> RunAs {
        RunAs {
            groups: false,
            ..RunAs::user(user)
        }
    }

    /// A command that runs `program` as this user (setpriv execs it: the
    /// child's PID is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg(if self.groups {
                "--init-groups"
            } else {
                "--clear-groups"
            })
            .arg("--")
            .arg(program);
        c
    }

    /// Give `path` to the user and its primary group (e.g. a directory
    /// where its process creates files).
    pub fn chown(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), self.user));
    }
}

impl std::fmt::Display for RunAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups = if self.groups {
            "with its groups"
        } else {
            "without supplementary groups"
        };
        write!(f, "{} (uid {}, {groups})", self.user, self.uid)
    }
}

/// One QEMU guest at a time in a test binary: a TCG guest keeps both of the
/// machine's cores busy, two at once would only make both slow (and their
/// timings meaningless). Take it first in a test, so that it is released
/// after the guards. A test that failed holding it does not stop the others.
pub fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes of a virtio-net feature bit string (/sys/class/net/eth0/device/features
/// in the guest: one '0'/'1' per bit, bit 0 first) as a u64.
pub fn feature_bits(s: &str) -> u64 {
    s.trim()
        .bytes()
        .take(64)
        .enumerate()
        .filter(|(_, b)| *b == b'1')
        .fold(0, |acc, (i, _)| acc | (1u64 << i))
}

/// virtio-net feature bits used by the tests.
pub mod vnet {
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const MQ: u64 = 1 << 22;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
}

/// One ping from the host to `ip` (1 s wait) was answered.
pub fn host_pings(ip: &str) -> bool {
    Command::new("ping")
        .args(["-c", "1", "-W", "1", "-n", "-q", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Accept one connection, giving up after `timeout`.
pub fn accept_timeout(l: &TcpListener, timeout: Duration) -> std::io::Result<TcpStream> {
    l.set_nonblocking(true)?;
    let end = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= end {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no connection",
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// What one side of a TCP transfer saw.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: u64,
    /// From accept to the last byte (sink) or to the close (source).
    pub time: Duration,
}

impl Transfer {
    pub fn mbit_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.time.as_secs_f64().max(1e-9) / 1e6
    }
}

/// A thread that accepts one connection on `l` (within `timeout`), reads it
/// to EOF into `file` (the peer's data, for a checksum), then closes.
pub fn tcp_sink(
    l: TcpListener,
    file: PathBuf,
    timeout: Duration,
) -> JoinHandle<std::io::Result<Transfer>> {
    std::thread::spawn(move || {
        let mut s = accept_timeout(&l, timeout)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let t0 = Instant::now();
        let mut f = std::io::BufWriter::new(fs::File::create(&file)?);
        let bytes = std::io::copy(&mut s, &mut f)?;
        let time = t0.elapsed();
        f.flush()?;
        Ok(Transfer { bytes, time })
    })
}

/// A thread that accepts `conns` connections on `l` (each within `timeout`)
/// and sends each the whole of `file`, then closes it. The peer's data is
/// read and discarded.
pub fn tcp_source(
    l: TcpListener,
    file: PathBuf,
    conns: usize,
    timeout: Duration,
) -> JoinHandle<std::io::Result<Transfer>> {
    std::thread::spawn(move || {
        let mut senders = Vec::new();
        let t0 = Instant::now();
        for _ in 0..conns {
            let mut s = accept_timeout(&l, timeout)?;
            let file = file.clone();
            senders.push(std::thread::spawn(move || -> std::io::Result<u64> {
                s.set_write_timeout(Some(Duration::from_secs(60)))?;
                let mut f = fs::File::open(&file)?;
                let n = std::io::copy(&mut f, &mut s)?;
                s.shutdown(std::net::Shutdown::Write)?;
                // Wait for the peer's close (it has read everything).
                s.set_read_timeout(Some(Duration::from_secs(60)))?;
                let mut sink = [0u8; 4096];
                while s.read(&mut sink)? > 0 {}
                Ok(n)
            }));
        }
        let mut bytes = 0;
        for h in senders {
            bytes += h.join().expect("sender thread")?;
        }
        Ok(Transfer {
            bytes,
            time: t0.elapsed(),
        })
    })
}

/// A file of `bytes` random bytes.
pub fn random_file(path: &Path, bytes: u64) {
    sh(&format!(
        "head -c {bytes} /dev/urandom > {}",
        path.display()
    ));
}

/// The md5sum of a file (the guest's busybox has md5sum too).
pub fn md5_file(path: &Path) -> String {
    sh(&format!("md5sum < {}", path.display()))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A guest shell filter for `ethtool -S eth0` (virtio_net statistics):
/// one `NAME: VALUE` line per counter without indentation, queue counters
/// named `rx0_...`/`tx0_...` whichever form the guest kernel prints
/// (`rx_queue_0_xdp_drops` in Debian 12's 6.1 kernels, `rx0_xdp_drops` in
/// others).
pub const ETHTOOL_STATS_SED: &str = r"sed -E 's/^ *//; s/^(rx|tx)_queue_([0-9]+)_/\1\2_/'";

/// Shell functions for guest scripts: `up` (uptime in seconds),
/// `send_file HOST PORT FILE` and `recv_file HOST PORT FILE`, which print
/// `<TAG>-MD5 <md5>` and `<TAG>-TIME <seconds>` markers; `tcp_both_ways HOST
/// PORT_TX PORT_RX BYTES [PAUSE_PORT]` generates BYTES random bytes, sends
/// them to the host (`GTX-MD5`, `GTX-TIME`), with PAUSE_PORT waits for the
/// host to connect there (`GTX-PAUSE`), then receives the host's file
/// (`GRX-MD5`, `GRX-BYTES`, `GRX-TIME`).
pub const GUEST_FUNCS: &str = r#"
up() { cut -d' ' -f1 /proc/uptime; }
send_file() {
	t0=$(up)
	timeout 150 nc "$1" "$2" < "$3" || echo "GUEST-NC-FAILED send $?"
	echo "GTX-TIME $(echo "$(up) $t0" | awk '{print $1 - $2}')"
}
recv_file() {
	t0=$(up)
	timeout 150 nc "$1" "$2" < /dev/null > "$3" || echo "GUEST-NC-FAILED recv $?"
	echo "GRX-TIME $(echo "$(up) $t0" | awk '{print $1 - $2}')"
	echo "GRX-BYTES $(wc -c < "$3")"
	echo "GRX-MD5 $(md5sum < "$3" | cut -d' ' -f1)"
}
tcp_both_ways() {
	head -c "$4" /dev/urandom > /tmp/gtx
	echo "GTX-MD5 $(md5sum < /tmp/gtx | cut -d' ' -f1)"
	send_file "$1" "$2" /tmp/gtx
	rm -f /tmp/gtx
	if [ -n "$5" ]; then
		echo GTX-PAUSE
		timeout 120 nc -l -p "$5" </dev/null
	fi
	recv_file "$1" "$3" /tmp/grx
	rm -f /tmp/grx
}
"#;

/// The host side of `tcp_both_ways`: listeners on `host_ip`, a random file
/// for the guest; `finish` checks both checksums against the guest's markers.
pub struct TcpBothWays {
    pub port_tx: u16,
    pub port_rx: u16,
    sink: Option<JoinHandle<std::io::Result<Transfer>>>,
    source: Option<JoinHandle<std::io::Result<Transfer>>>,
    received: PathBuf,
    sent_md5: String,
    pub bytes: u64,
    /// (guest address, port): the guest waits there between the directions.
    pause: Option<(String, u16)>,
    _dir: TempDir,
}

/// Throughputs measured by `TcpBothWays::finish`.
#[derive(Debug, Clone, Copy)]
pub struct BothWays {
    /// Guest → host, measured by the host's sink (accept to EOF).
    pub to_host: Transfer,
    /// Host → guest, measured in the guest (nc start to end).
    pub to_guest: Transfer,
}

impl TcpBothWays {
    pub fn listen(host_ip: &str, bytes: u64, timeout: Duration) -> TcpBothWays {
        let dir = TempDir::new("t");
        let lt = TcpListener::bind((host_ip, 0)).expect("bind");
        let lr = TcpListener::bind((host_ip, 0)).expect("bind");
        let port_tx = lt.local_addr().unwrap().port();
        let port_rx = lr.local_addr().unwrap().port();
        let to_send = dir.join("to-guest");
        random_file(&to_send, bytes);
        let sent_md5 = md5_file(&to_send);
        let received = dir.join("from-guest");
        let sink = tcp_sink(lt, received.clone(), timeout);
        let source = tcp_source(lr, to_send, 1, timeout);
        TcpBothWays {
            port_tx,
            port_rx,
            sink: Some(sink),
            source: Some(source),
            received,
            sent_md5,
            bytes,
            pause: None,
            _dir: dir,
        }
    }

    /// Make the guest wait between the two directions until the host
    /// connects to `guest_ip:port`: `finish` runs its `between` callback
    /// there (e.g. to read the daemon's counters per direction).
    pub fn pause_at(mut self, guest_ip: &str, port: u16) -> TcpBothWays {
        self.pause = Some((guest_ip.to_string(), port));
        self
    }

    /// The guest's command line.
    pub fn guest_cmd(&self, host_ip: &str) -> String {
        let pause = self
            .pause
            .as_ref()
            .map(|p| p.1.to_string())
            .unwrap_or_default();
        format!(
            "tcp_both_ways {host_ip} {} {} {} {pause}",
            self.port_tx, self.port_rx, self.bytes
        )
    }

    /// Wait for both transfers and compare the checksums.
    pub fn finish(&mut self, g: &Guest, timeout: Duration) -> BothWays {
        self.finish_with(g, timeout, || {})
    }

    /// `finish`, calling `between` after guest → host and before host → guest
    /// (with `pause_at`, while the guest waits).
    pub fn finish_with(
        &mut self,
        g: &Guest,
        timeout: Duration,
        between: impl FnOnce(),
    ) -> BothWays {
        let tx_md5 = g.expect_marker("GTX-MD5", timeout, "guest data");
        let to_host = self
            .sink
            .take()
            .unwrap()
            .join()
            .expect("sink thread")
            .expect("guest → host transfer");
        assert_eq!(to_host.bytes, self.bytes, "guest → host: bytes received");
        assert_eq!(
            md5_file(&self.received),
            tx_md5,
            "guest → host: checksum differs"
        );
        if let Some((ip, port)) = &self.pause {
            g.expect_marker("GTX-PAUSE", timeout, "guest pause");
            between();
            let s = wait_for(Duration::from_secs(30), || {
                TcpStream::connect((ip.as_str(), *port)).ok()
            });
            assert!(s.is_some(), "cannot reach the guest's pause port {port}");
        } else {
            between();
        }
        let rx_md5 = g.expect_marker("GRX-MD5", timeout, "host → guest transfer");
        let _ = self.source.take().unwrap().join().expect("source thread");
        let rx_bytes: u64 = g.markers("GRX-BYTES").pop().unwrap().parse().unwrap();
        assert_eq!(rx_bytes, self.bytes, "host → guest: bytes received");
        assert_eq!(rx_md5, self.sent_md5, "host → guest: checksum differs");
        let secs: f64 = g.markers("GRX-TIME").pop().unwrap().parse().unwrap();
        BothWays {
            to_host,
            to_guest: Transfer {
                bytes: rx_bytes,
                time: Duration::from_secs_f64(secs.max(0.001)),
            },
        }
    }
}
