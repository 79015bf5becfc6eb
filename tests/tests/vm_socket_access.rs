//! Socket permissions with a real QEMU 10 guest run as an unprivileged user
//! that reaches the daemon's socket only through its group (issue 13 item
//! 4): `--socket-group vt-sock --socket-mode 0660` on a root-owned socket,
//! QEMU as the system user `vt-qemu` (supplementary group `vt-sock`). The
//! guest boots and TCP passes both ways; the same QEMU without the group is
//! refused by the kernel (`Permission denied`) and never reaches the daemon.
//!
//! The group and the user are created if missing (`groupadd`/`useradd
//! --system`, no home, nologin shell; an existing `vt-qemu` is added to the
//! group) and removed at the end if this test created them, also when it
//! fails.
//!
//! Addresses: 198.18.130.0/24.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{host_pings, repo, vm_lock, Guest, RunAs, TcpBothWays, GUEST_FUNCS};
use testkit::{sh, Daemon, Process, TempDir};

const BOOT: Duration = Duration::from_secs(120);
/// The group the socket is given to.
const GROUP: &str = "vt-sock";
/// The unprivileged user QEMU runs as, a member of `GROUP`.
const USER: &str = "vt-qemu";
/// How long a refused QEMU may take to exit (it fails at its `-chardev`,
/// well under a second).
const REFUSED_EXIT: Duration = Duration::from_secs(30);

fn exists(db: &str, name: &str) -> bool {
    Command::new("getent")
        .args([db, name])
        .stdout(Stdio::null())
        .status()
        .expect("getent")
        .success()
}

/// The test's system group and user, created if missing. Drop removes
/// those this test created (also when it fails); take it before the daemon
/// and the guests, so that it drops after them (`userdel` refuses a user
/// whose processes still run).
struct Account {
    created_user: bool,
    created_group: bool,
}

impl Account {
    fn ensure() -> Account {
        let mut a = Account {
            created_user: false,
            created_group: false,
        };
        if !exists("group", GROUP) {
            sh(&format!("groupadd --system {GROUP}"));
            a.created_group = true;
        }
        if !exists("passwd", USER) {
            sh(&format!(
                "useradd --system --no-create-home --home-dir /nonexistent \
                 --shell /usr/sbin/nologin --groups {GROUP} {USER}"
            ));
            a.created_user = true;
        } else if !in_group(USER) {
            sh(&format!("usermod --append --groups {GROUP} {USER}"));
        }
        assert!(in_group(USER), "{USER} is not in {GROUP}");
        a
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let run = |cmd: &str| {
            let ok = Command::new("sh")
                .args(["-c", cmd])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("cleanup: `{cmd}` failed");
            }
        };
        // userdel also removes the user's own group (USERGROUPS_ENAB).
        if self.created_user {
            run(&format!("userdel {USER}"));
        }
        if self.created_group {
            run(&format!("groupdel {GROUP}"));
        }
    }
}

/// Whether `user`'s groups (group database) include `GROUP`.
fn in_group(user: &str) -> bool {
    sh(&format!("id -nG {user}"))
        .split_whitespace()
        .any(|g| g == GROUP)
}

fn group_gid() -> u32 {
    let line = sh(&format!("getent group {GROUP}"));
    line.split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("getent group {GROUP}: {line}"))
}

/// A process's credentials from /proc/PID/status.
struct Creds {
    uids: Vec<u32>,
    gids: Vec<u32>,
    groups: Vec<u32>,
    /// Effective capabilities (hex as the kernel prints it).
    cap_eff: String,
}

fn proc_creds(pid: i32) -> Creds {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |key: &str| -> &str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
            .trim()
    };
    let ids = |key: &str| -> Vec<u32> {
        field(key)
            .split_whitespace()
            .map(|n| n.parse().expect("an id"))
            .collect()
    };
    Creds {
        uids: ids("Uid:"),
        gids: ids("Gid:"),
        groups: ids("Groups:"),
        cap_eff: field("CapEff:").to_string(),
    }
}

/// QEMU as `who` against `socket`, in the foreground: it must exit with an
/// error within `REFUSED_EXIT`. Its stderr.
fn qemu_refused(who: &RunAs, socket: &Path) -> String {
    let dir = TempDir::new("n");
    who.chown(&dir);
    let err = dir.join("qemu.err");
    let mut cmd = who.command(repo().join("vm-images/run-guest.sh"));
    cmd.args(["-s", socket.to_str().unwrap()])
        .args(["-l", dir.join("console.log").to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err).expect("qemu.err"));
    let mut qemu = Process::spawn(cmd, "QEMU");
    let st = qemu.wait(REFUSED_EXIT);
    let text = fs::read_to_string(&err).unwrap_or_default();
    let st = st.unwrap_or_else(|| {
        panic!("QEMU as {who} still runs after {REFUSED_EXIT:?}: not refused; stderr:\n{text}")
    });
    assert!(!st.success(), "QEMU as {who} exited 0; stderr:\n{text}");
    text
}

/// QEMU run as `vt-qemu`, which reaches the root-owned 0660 socket only
/// through its group `vt-sock`: the guest boots, pings the host, and 4 MiB
/// go each way by TCP with checksums compared at both ends; the host pings
/// the guest. Before that, the same QEMU as `nobody` and as `vt-qemu`
/// without its supplementary groups fails to connect (`Permission
/// denied`), and the daemon sees no connection: the guest's is its first.
#[test]
#[ignore = "needs root, useradd and QEMU 10 with the test guest: run by tests/run.sh"]
fn qemu_as_unprivileged_user_reaches_socket_through_its_group() {
    let _l = vm_lock();
    let t0 = Instant::now();
    let _account = Account::ensure();
    let gid = group_gid();
    let mut d = Daemon::start_args(&["--socket-group", GROUP, "--socket-mode", "0660"]);
    // The socket's directory: root's, traversable by everyone; only the
    // socket's own mode decides.
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dm = fs::metadata(d.dir.path()).unwrap();
    assert_eq!(
        (dm.uid(), dm.mode() & 0o7777),
        (0, 0o755),
        "socket directory"
    );

    // (2) The socket on disk: owner root, group vt-sock, mode 0660.
    let sm = fs::symlink_metadata(&d.socket).expect("socket");
    assert!(
        sm.file_type().is_socket(),
        "{} is not a socket",
        d.socket.display()
    );
    assert_eq!(
        (sm.uid(), sm.gid(), sm.mode() & 0o7777),
        (0, gid, 0o660),
        "socket (uid, gid, mode)"
    );
    let user = RunAs::user(USER);
    assert_ne!(user.uid, sm.uid(), "{USER} must not own the socket");
    assert_ne!(user.gid, gid, "{GROUP} must not be {USER}'s primary group");

    // (3) Without the group, QEMU is refused by the kernel.
    let nobody = RunAs::user("nobody");
    assert!(!in_group("nobody"), "nobody is in {GROUP}");
    for who in [nobody, RunAs::without_groups(USER)] {
        let err = qemu_refused(&who, &d.socket);
        let want = format!(
            "Failed to connect to '{}': Permission denied",
            d.socket.display()
        );
        assert!(
            err.contains(&want),
            "QEMU as {who}: expected `{want}` in:\n{err}"
        );
        eprintln!("QEMU as {who}: {}", err.lines().last().unwrap_or_default());
    }
    let log = d.log_text();
    assert!(
        !log.contains("frontend connected"),
        "the daemon saw a connection from a refused QEMU:\n{log}"
    );

    // (1) With the group, the guest boots and traffic passes both ways.
    let (h, gip) = ("198.18.130.1", "198.18.130.2");
    d.add_host_ip(&format!("{h}/24"));
    let mut tcp = TcpBothWays::listen(h, 4 << 20, Duration::from_secs(240));
    let script = format!(
        "{GUEST_FUNCS}\nping -c 2 -W 3 {h} >/dev/null && echo GPING-OK\n{}\n\
         echo GUEST-DONE\ntimeout 60 nc -l -p 7130 </dev/null\n",
        tcp.guest_cmd(h)
    );
    let g = Guest::boot_as(
        &user,
        &d.socket,
        &script,
        &["--ip", &format!("{gip}/24"), "-m", "52:54:00:18:82:02"],
    );
    // QEMU itself runs as the user, with the group among its groups and
    // no capabilities (CAP_DAC_OVERRIDE would pass the socket's mode by).
    let c = proc_creds(g.pid());
    assert!(
        c.uids.iter().all(|&u| u == user.uid),
        "QEMU uids {:?}",
        c.uids
    );
    assert!(
        c.gids.iter().all(|&g| g == user.gid),
        "QEMU gids {:?}",
        c.gids
    );
    assert!(
        c.groups.contains(&gid),
        "QEMU groups {:?} lack {GROUP}",
        c.groups
    );
    assert!(
        c.cap_eff.bytes().all(|b| b == b'0'),
        "QEMU has capabilities {}",
        c.cap_eff
    );
    d.wait_log(&["frontend connected (connection 1)"], BOOT)
        .expect("the daemon did not accept QEMU's connection");
    let r = tcp.finish(&g, Duration::from_secs(180));
    eprintln!(
        "QEMU as {user}: 4 MiB guest → host {:.0} Mbit/s, host → guest {:.0} Mbit/s",
        r.to_host.mbit_s(),
        r.to_guest.mbit_s()
    );
    g.expect_marker("GUEST-DONE", Duration::from_secs(30), "guest");
    assert!(
        g.has_line("GPING-OK"),
        "the guest's ping to the host failed"
    );
    assert!(host_pings(gip), "the host's ping to the guest failed");
    g.release(gip, 7130);
    drop(g);
    let c = d.counters();
    assert_eq!(c.dropped(), 0, "{c:?}");
    eprintln!("socket access: wall {:.1} s", t0.elapsed().as_secs_f64());
}
