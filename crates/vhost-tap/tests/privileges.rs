//! Least privilege with a real TAP and a vhost-user guest: every data-path
//! worker runs under the seccomp filter with no capabilities, the other
//! threads keep only what the daemon still needs (nothing for a command-
//! line device; CAP_NET_ADMIN with a reloadable config, also as `nobody`),
//! traffic passes both ways in both queue modes with rate limits and no
//! daemon drop, a reconnect's new workers are confined too, and a system
//! call outside the allowlist, made by a worker thread of the running
//! daemon, is refused with EPERM, logged and counted — the worker serves
//! on.
//!
//! The forbidden call is injected from outside with ptrace (x86_64): the
//! idle worker is stopped in `epoll_wait`, made to execute `socket(AF_INET)`
//! at its own `syscall` instruction, and put back as it was. Nothing in the
//! daemon exists for this test.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use vu_driver::Driver;

/// One thread of the daemon: its id, name and /proc status.
struct Task {
    tid: i32,
    comm: String,
    status: String,
}

impl Task {
    fn field(&self, key: &str) -> &str {
        self.status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key} in the status of {}", self.tid))
    }

    fn cap_eff(&self) -> u64 {
        u64::from_str_radix(self.field("CapEff"), 16).unwrap()
    }

    fn worker(&self) -> bool {
        self.comm == "vring_worker"
    }
}

fn tasks(pid: u32) -> Vec<Task> {
    let mut v = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = e.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            fs::read_to_string(path.join("comm")),
            fs::read_to_string(path.join("status")),
        ) else {
            continue; // gone meanwhile
        };
        v.push(Task {
            tid: path.file_name().unwrap().to_str().unwrap().parse().unwrap(),
            comm: comm.trim().to_string(),
            status,
        });
    }
    v
}

const CAP_NET_ADMIN: u64 = 1 << 12;

/// Every worker has the filter (Seccomp: 2) and no capability; every other
/// thread has no filter and exactly `caps`. Returns the workers' ids.
fn assert_confinement(d: &Daemon, queues: usize, caps: u64) -> Vec<i32> {
    // The workers confine themselves at their first event, which comes as
    // soon as the connection is set up.
    let confined = wait_for(Duration::from_secs(5), || {
        let t = tasks(d.pid);
        let w: Vec<&Task> = t.iter().filter(|t| t.worker()).collect();
        (w.len() == queues && w.iter().all(|t| t.field("Seccomp") == "2")).then_some(())
    });
    let all = tasks(d.pid);
    let table: Vec<String> = all
        .iter()
        .map(|t| {
            format!(
                "{} {} Seccomp {} CapEff {}",
                t.tid,
                t.comm,
                t.field("Seccomp"),
                t.field("CapEff")
            )
        })
        .collect();
    assert!(
        confined.is_some(),
        "the workers are not all confined: {table:#?}"
    );
    for t in &all {
        if t.worker() {
            assert_eq!(t.cap_eff(), 0, "a worker has capabilities: {table:#?}");
            assert_eq!(t.field("NoNewPrivs"), "1", "{table:#?}");
        } else {
            assert_eq!(
                t.field("Seccomp"),
                "0",
                "a control thread is filtered: {table:#?}"
            );
            assert_eq!(t.cap_eff(), caps, "{table:#?}");
        }
    }
    eprintln!("threads: {table:#?}");
    all.iter().filter(|t| t.worker()).map(|t| t.tid).collect()
}

/// `n` frames of 1000 bytes each way on pair 0, all of them arriving.
fn traffic(d: &Daemon, drv: &mut Driver, n: u32) {
    traffic_on(&d.tap, drv, n);
    d.assert_no_panic();
}

fn traffic_on(tap: &str, drv: &mut Driver, n: u32) {
    let sock = PacketSock::open(tap, false);
    let tag = fresh_tag();
    for seq in 0..n {
        guest_send(
            drv,
            0,
            &[0; 12],
            &test_frame(GUEST_MAC, HOST_MAC, tag, seq, 1000),
        );
    }
    let got = sock.recv_matching(n as usize, Duration::from_secs(10), |b| has_tag(b, tag));
    assert_eq!(got.len(), n as usize, "guest → host frames lost");
    for seq in 0..n {
        sock.send(&udp_frame(tag, seq, 1024 + (seq % 8) as u16, 958));
    }
    let got = guest_recv(drv, 0, n as usize, 2048, Duration::from_secs(10), |f| {
        udp_frame_id(&f.data).is_some_and(|(t, _)| t == tag)
    });
    assert_eq!(got.len(), n as usize, "host → guest frames lost");
}

#[cfg(target_arch = "x86_64")]
mod inject {
    //! Make a stopped thread of another process execute one system call.

    use std::io;

    fn ptrace(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
        // SAFETY: errno is this thread's; PEEKTEXT's result is told from an
        // error by it. The requests used here read or write the tracee's
        // registers and words through buffers we own, or take integers.
        let r = unsafe {
            *libc::__errno_location() = 0;
            libc::ptrace(
                req,
                tid,
                addr as *mut libc::c_void,
                data as *mut libc::c_void,
            )
        };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(0) {
                return Err(e);
            }
        }
        Ok(r)
    }

    fn wait(tid: i32) -> i32 {
        let mut st = 0;
        // SAFETY: `st` is a live int.
        let r = unsafe { libc::waitpid(tid, &mut st, libc::__WALL) };
        assert_eq!(r, tid, "waitpid: {}", io::Error::last_os_error());
        assert!(
            libc::WIFSTOPPED(st),
            "the worker did not stop: status {st:#x}"
        );
        st
    }

    fn regs(tid: i32) -> libc::user_regs_struct {
        // SAFETY: plain data; filled in by PTRACE_GETREGS.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        ptrace(
            libc::PTRACE_GETREGS,
            tid,
            0,
            &mut r as *mut libc::user_regs_struct as usize,
        )
        .expect("PTRACE_GETREGS");
        r
    }

    fn set_regs(tid: i32, r: &libc::user_regs_struct) {
        ptrace(
            libc::PTRACE_SETREGS,
            tid,
            0,
            r as *const libc::user_regs_struct as usize,
        )
        .expect("PTRACE_SETREGS");
    }

    fn sigsys_pending(pid: u32, tid: i32) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
        let pending = status
            .lines()
            .find_map(|l| l.strip_prefix("SigPnd:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        pending & (1 << (libc::SIGSYS - 1)) != 0
    }

    /// Have thread `tid` of `pid`, idle in epoll_wait, call
    /// `socket(AF_INET, SOCK_STREAM, 0)`; its return value (a negative
    /// errno or a descriptor). `None` if the thread was not idle (try again).
    pub fn socket_call(pid: u32, tid: i32) -> Option<i64> {
        ptrace(
            libc::PTRACE_SEIZE,
            tid,
            0,
            libc::PTRACE_O_TRACESYSGOOD as usize,
        )
        .expect("PTRACE_SEIZE");
        ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0).expect("PTRACE_INTERRUPT");
        let st = wait(tid);
        assert_eq!(st >> 16, libc::PTRACE_EVENT_STOP, "status {st:#x}");
        let saved = regs(tid);
        // Interrupted in epoll_wait: RIP is just past its `syscall`
        // instruction (0f 05), which we use for ours.
        let word = ptrace(libc::PTRACE_PEEKTEXT, tid, saved.rip as usize - 2, 0).unwrap();
        let idle = [libc::SYS_epoll_wait, libc::SYS_epoll_pwait].contains(&(saved.orig_rax as i64))
            && word & 0xffff == 0x050f;
        if !idle {
            ptrace(libc::PTRACE_DETACH, tid, 0, 0).expect("PTRACE_DETACH");
            return None;
        }
        let mut call = saved;
        call.rip -= 2;
        call.rax = libc::SYS_socket as u64;
        // No syscall to restart: the kernel must not rewrite RIP/RAX on resume.
        call.orig_rax = u64::MAX;
        call.rdi = libc::AF_INET as u64;
        call.rsi = libc::SOCK_STREAM as u64;
        call.rdx = 0;
        set_regs(tid, &call);
        // Step from system-call stop to system-call stop, handing a SIGSYS
        // (the filter's trap) to the thread's handler, until the thread is
        // back past our instruction with nothing pending: its result.
        let mut deliver = 0;
        let mut result = None;
        for _ in 0..16 {
            ptrace(libc::PTRACE_SYSCALL, tid, 0, deliver).expect("PTRACE_SYSCALL");
            deliver = 0;
            let st = wait(tid);
            let sig = libc::WSTOPSIG(st);
            if sig == libc::SIGTRAP | 0x80 {
                let r = regs(tid);
                let entry = r.rax as i64 == -i64::from(libc::ENOSYS);
                if !entry && r.rip == saved.rip && !sigsys_pending(pid, tid) {
                    result = Some(r.rax as i64);
                    break;
                }
            } else {
                deliver = sig as usize;
            }
        }
        let result = result.expect("the injected call did not complete in 16 stops");
        // Back into the interrupted epoll_wait's return (EINTR): the event
        // loop waits again.
        set_regs(tid, &saved);
        ptrace(libc::PTRACE_DETACH, tid, 0, 0).expect("PTRACE_DETACH");
        Some(result)
    }
}

#[cfg(target_arch = "x86_64")]
fn refused_socket_call(d: &Daemon, tid: i32) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = inject::socket_call(d.pid, tid) {
            return r;
        }
        assert!(Instant::now() < deadline, "worker {tid} never idle");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn confined_run(mode: &str) {
    // Limits below what the traffic asks for: the rate-limit timers run.
    let mut d = Daemon::start(Opts {
        extra: [
            "--mode",
            mode,
            "--rx-rate-bytes",
            "4000000",
            "--tx-rate-bytes",
            "4000000",
        ]
        .map(String::from)
        .to_vec(),
        ..opts()
    });
    d.wait_log(&["seccomp: every data-path worker"], Duration::from_secs(5))
        .expect("the filter is not announced");
    d.wait_log(&["privileges:", "no capabilities"], Duration::from_secs(5))
        .expect("a command-line device needs no capability after start");
    let status = fs::read_to_string(format!("/proc/{}/status", d.pid)).unwrap();
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("CapPrm:\t0000000000000000"), "{status}");
    assert!(status.contains("CapBnd:\t0000000000000000"), "{status}");

    let mut drv = d.connect();
    let workers = assert_confinement(&d, 1, 0);
    traffic(&d, &mut drv, 400);
    let c = d.counters();
    c.assert_no_drops();
    assert!(
        c.sum("rx_rate_limited") > 0 && c.sum("tx_rate_limited") > 0,
        "{:?}",
        c.summed()
    );
    assert_eq!(c.sum("syscalls_refused"), 0, "{:?}", c.summed());

    #[cfg(target_arch = "x86_64")]
    {
        let r = refused_socket_call(&d, workers[0]);
        assert_eq!(
            r,
            -i64::from(libc::EPERM),
            "socket() on a worker returned {r}"
        );
        // The worker serves on, and reports the refusal at its next event.
        traffic(&d, &mut drv, 100);
        d.wait_log(
            &["queue 0: seccomp refused system call 41"],
            Duration::from_secs(5),
        )
        .expect("the refusal is not logged");
        assert_eq!(d.counters().sum("syscalls_refused"), 1);
    }

    // A new connection has new workers, confined as well.
    drop(drv);
    d.wait_log(&["frontend gone (connection 1)"], Duration::from_secs(5))
        .expect("the frontend's leaving is not logged");
    let mut drv = d.connect();
    let again = assert_confinement(&d, 1, 0);
    assert_ne!(again, workers, "the reconnect kept its workers");
    traffic(&d, &mut drv, 400);
    d.counters().assert_no_drops();
    assert!(!d.log_text().contains("panicked"), "log:\n{}", d.log_text());
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn workers_are_confined_in_fq_codel_mode() {
    confined_run("fq-codel");
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn workers_are_confined_in_backpressure_mode() {
    confined_run("backpressure");
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn seccomp_false_leaves_the_workers_unconfined() {
    let d = Daemon::start(Opts {
        extra: ["--seccomp", "false"].map(String::from).to_vec(),
        ..opts()
    });
    let mut drv = d.connect();
    traffic(&d, &mut drv, 10);
    let w: Vec<Task> = tasks(d.pid).into_iter().filter(Task::worker).collect();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].field("Seccomp"), "0");
    assert!(d.log_text().contains("seccomp: off"));
}

fn write_config(path: &std::path::Path, devs: &[(&std::path::Path, &str)]) {
    let mut s = String::from("user = \"nobody\"\n");
    for (socket, tap) in devs {
        s += &format!(
            "[[device]]\nsocket = {:?}\ntap = {tap:?}\n",
            socket.display().to_string()
        );
    }
    fs::write(path, s).unwrap();
}

/// SIGHUP and wait for the reload's last line.
fn reload(d: &Daemon) {
    let before = d.log_text().matches("reload of").count();
    d.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(10), || {
        (d.log_text().matches("reload of").count() > before).then_some(())
    })
    .unwrap_or_else(|| panic!("no reload after SIGHUP; log:\n{}", d.log_text()));
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn as_nobody_with_cap_net_admin_a_reload_still_creates_taps() {
    let nobody = vhost_tap::privileges::user("nobody").expect("a user nobody");
    let dir = TempDir::new("nobody");
    // The daemon's own directory stays root's (0755); `mine` is nobody's.
    fs::set_permissions(&*dir, fs::Permissions::from_mode(0o755)).unwrap();
    let mine = dir.join("mine");
    fs::create_dir(&mine).unwrap();
    std::os::unix::fs::chown(&mine, Some(nobody.uid), nobody.gid).unwrap();
    let (a, b, c) = (unique_name("vtn"), unique_name("vtn"), unique_name("vtn"));
    let _guards = [&a, &b, &c].map(|t| TapGuard(t.to_string()));
    let sock_a = dir.join("a.sock");
    let config = dir.join("nobody.toml");
    write_config(&config, &[(&sock_a, &a)]);
    let d = Daemon::start_config(Some(BIN.into()), dir, &config, vec![(sock_a.clone(), a)]);
    d.wait_log(
        &["privileges: user nobody", "CAP_NET_ADMIN (a reload creates"],
        Duration::from_secs(5),
    )
    .expect("the switch is not logged");
    let status = fs::read_to_string(format!("/proc/{}/status", d.pid)).unwrap();
    let uid = nobody.uid.to_string();
    let want_uid = format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}");
    assert!(status.contains(&want_uid), "{status}");
    assert!(
        status.contains(&format!("CapEff:\t{CAP_NET_ADMIN:016x}")),
        "{status}"
    );
    let mut drv = d.connect();
    assert_confinement(&d, 1, CAP_NET_ADMIN);
    traffic(&d, &mut drv, 100);

    // A socket in a directory only root may write: that device fails,
    // precisely, and A keeps serving.
    let sock_b = d.dir.join("b.sock");
    write_config(&config, &[(&sock_a, &d.tap), (&sock_b, &b)]);
    reload(&d);
    let line = d
        .wait_log(&[&format!("{b}: not started")], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("B did not fail; log:\n{}", d.log_text()));
    assert!(
        line.contains("Permission denied") && line.contains(&format!("runs as uid {uid}")),
        "{line}"
    );
    traffic(&d, &mut drv, 100);

    // In nobody's directory a new device starts: its TAP is created with
    // the CAP_NET_ADMIN kept across the switch.
    let sock_c = mine.join("c.sock");
    write_config(&config, &[(&sock_a, &d.tap), (&sock_c, &c)]);
    reload(&d);
    d.wait_log(&[&c, "added by the reload"], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("C was not added; log:\n{}", d.log_text()));
    assert!(tap_exists(&c));
    let mut drv_c = Driver::connect(vu_driver::DriverConfig {
        socket: sock_c,
        ..vu_driver::DriverConfig::default()
    })
    .expect("C serves");
    traffic_on(&c, &mut drv_c, 100);
    traffic(&d, &mut drv, 100);
    d.assert_no_panic();
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn user_flag_switches_a_command_line_daemon_to_no_capabilities() {
    let nobody = vhost_tap::privileges::user("nobody").expect("a user nobody");
    let d = Daemon::start(Opts {
        extra: ["--user", "nobody"].map(String::from).to_vec(),
        ..opts()
    });
    d.wait_log(
        &["privileges: user nobody", "no capabilities"],
        Duration::from_secs(5),
    )
    .expect("the switch is not logged");
    let status = fs::read_to_string(format!("/proc/{}/status", d.pid)).unwrap();
    let (uid, gid) = (nobody.uid, nobody.gid.unwrap());
    for want in [
        format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}"),
        format!("Gid:\t{gid}\t{gid}\t{gid}\t{gid}"),
        format!("Groups:\t{gid}"),
        "CapEff:\t0000000000000000".into(),
    ] {
        assert!(status.contains(&want), "no {want:?} in {status}");
    }
    // The relays' private directory is nobody's: connections work.
    let mut drv = d.connect();
    assert_confinement(&d, 1, 0);
    traffic(&d, &mut drv, 100);
}
