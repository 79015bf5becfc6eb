//! The data path's seccomp filter. Each worker thread (one per queue pair
//! and connection, spawned by vhost-user-backend, which offers no start
//! hook) confines itself at its first event, before it touches anything a
//! guest wrote: it gives up its capabilities and applies a filter that
//! allows only the system calls moving frames needs ([`allowlist`]).
//!
//! A call outside the list is not executed. On x86_64 the kernel sends the
//! thread SIGSYS (`SECCOMP_RET_TRAP`); [`refuse`], our handler, makes the
//! call return `EPERM` and counts it in the thread; the worker then logs
//! the first refusal and adds each one to its queue's `syscalls_refused`.
//! The daemon goes on: a forgotten call fails like any failing call instead
//! of taking every device down (docs/security.md, "Privileges", says why
//! not kill). Elsewhere the filter returns `EPERM` directly, uncounted.
//!
//! Filters are per thread (no `TSYNC`) and inherited by threads spawned
//! later: only the workers carry this one, and they spawn none. The
//! control threads (accept, relay, dispatcher, metrics, reload) are not
//! filtered; the capabilities the daemon keeps are `privileges.rs`'s.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;

use log::{error, info, warn};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the filter cannot be set up (the daemon does not start).
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the workers' filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(io::Error),
    #[error("cannot start a thread to try the filter: {0}")]
    Trial(io::Error),
    #[error("the kernel refuses the workers' filter ({0}); run with `seccomp = false` (--seccomp false) on a kernel without seccomp filters")]
    Kernel(seccompiler::Error),
}

/// What vhost-user-backend names its worker threads.
const WORKER_NAME: &str = "vring_worker";

/// The compiled filter; unset while seccomp is off.
static FILTER: OnceLock<BpfProgram> = OnceLock::new();

/// What a call outside the list gets: a trap our handler turns into `EPERM`
/// (and counts) where we know the signal frame's registers, else `EPERM`.
#[cfg(target_arch = "x86_64")]
const MISMATCH: SeccompAction = SeccompAction::Trap;
#[cfg(not(target_arch = "x86_64"))]
const MISMATCH: SeccompAction = SeccompAction::Errno(libc::EPERM as u32);

/// `arg` of the call, masked with `mask`, is 0.
fn masked_zero(arg: u8, mask: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )
}

fn equals(arg: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// The system calls a worker makes, with their argument rules (none: any
/// arguments). Derived from `strace -f` of the daemon under every test in
/// `tests/` that moves traffic (both queue modes, rate limits, GSO, broken
/// queues, reconnects, shutdown: 4090 workers), plus the calls the
/// allocator and `abort` make on paths those runs did not take (marked).
fn allowlist() -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let any = Vec::new;
    let no_exec = || -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        Ok(vec![SeccompRule::new(vec![masked_zero(
            2,
            libc::PROT_EXEC as u64,
        )?])?])
    };
    // The pid is known now and never changes (the daemon does not fork).
    let abort_self = vec![SeccompRule::new(vec![
        equals(0, u64::from(std::process::id()))?,
        equals(2, libc::SIGABRT as u64)?,
    ])?];
    let mut calls: Vec<(i64, Vec<SeccompRule>)> = vec![
        // Frames and wake-ups: the TAP queue (readv/writev, write for a
        // single buffer), the kick, call, resume, exit and vring-enable
        // eventfds, the rate-limit timerfds; write also for log lines.
        (libc::SYS_read, any()),
        (libc::SYS_readv, any()),
        (libc::SYS_write, any()),
        (libc::SYS_writev, any()),
        // vhost-user-backend's event loop (epoll_wait on x86_64's glibc).
        (libc::SYS_epoll_pwait, any()),
        // The rate limits' one-shot timers.
        (libc::SYS_timerfd_settime, any()),
        // Queue pair mutexes, vring and guest-memory locks; sched_yield is
        // not seen in a release build but in AddressSanitizer's (its
        // allocator's spin locks), and backoff loops call it.
        (libc::SYS_futex, any()),
        (libc::SYS_sched_yield, any()),
        // Time (CoDel, rate limits, log stamps): the vDSO answers, unless
        // the clock source has no vDSO support (not seen here).
        (libc::SYS_clock_gettime, any()),
        // std's HashMap keys (vhost-user-backend's set of pending vrings).
        (libc::SYS_getrandom, any()),
        // glibc's malloc: thread arenas grow with mprotect and shrink with
        // madvise, large blocks are mmapped; guest/fault.rs maps zeros over
        // a guest memory file that shrank. Never executable memory.
        (libc::SYS_mmap, no_exec()?),
        (libc::SYS_mprotect, no_exec()?),
        (libc::SYS_munmap, any()),
        (libc::SYS_madvise, any()),
        // Not seen: realloc of a large block, and the main arena (brk),
        // which threads share once the arenas run out (8 per core).
        (libc::SYS_mremap, any()),
        (libc::SYS_brk, any()),
        // Not seen: a descriptor's owner dropped on a worker (refused, the
        // descriptor would leak); it reaches nothing outside the process.
        (libc::SYS_close, any()),
        // Thread exit: glibc blocks signals, std frees the alternate signal
        // stack (sigaltstack, munmap), glibc gives back the stack (madvise).
        (libc::SYS_rt_sigprocmask, any()),
        (libc::SYS_sigaltstack, any()),
        (libc::SYS_exit, any()),
        // Return from a signal handler ([`refuse`], guest/fault.rs's SIGBUS
        // handler); those and std's SIGSEGV handler give a fault that is not
        // theirs back to the previous action (not seen: refused, the fault
        // would repeat forever instead of ending the process).
        (libc::SYS_rt_sigreturn, any()),
        (libc::SYS_rt_sigaction, any()),
        // Not seen: abort() (a failed allocation) signals its own thread.
        (libc::SYS_getpid, any()),
        (libc::SYS_gettid, any()),
        (libc::SYS_tgkill, abort_self),
    ];
    #[cfg(target_arch = "x86_64")]
    calls.push((libc::SYS_epoll_wait, any()));
    Ok(calls.into_iter().collect())
}

/// `si_code` of a SIGSYS sent by seccomp.
#[cfg(target_arch = "x86_64")]
const SYS_SECCOMP: libc::c_int = 1;

/// glibc's malloc opens this once per process, from the first thread that
/// trims a heap; refused, it shrinks with madvise instead. Expected, so not
/// counted (it still fails).
#[cfg(target_arch = "x86_64")]
const OVERCOMMIT_PROBE: &[u8] = b"/proc/sys/vm/overcommit_memory\0";

thread_local! {
    /// Calls [`refuse`] refused on this thread (signal handler: increments only).
    static REFUSED: AtomicU64 = const { AtomicU64::new(0) };
    /// The number of the last call refused on this thread.
    static LAST_REFUSED: AtomicI64 = const { AtomicI64::new(-1) };
    /// What [`refused`] has reported of `REFUSED` so far.
    static REPORTED: Cell<u64> = const { Cell::new(0) };
    /// This worker has confined itself (or seccomp is off).
    static CONFINED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the NUL-terminated string at `path` is [`OVERCOMMIT_PROBE`].
///
/// # Safety
/// `path` must be readable up to its NUL or its first byte that differs;
/// it is the path argument of an `openat` this thread was making.
#[cfg(target_arch = "x86_64")]
unsafe fn is_overcommit_probe(path: *const u8) -> bool {
    if path.is_null() {
        return false;
    }
    for (i, &want) in OVERCOMMIT_PROBE.iter().enumerate() {
        // SAFETY: bytes up to the first difference or the NUL are readable
        // by this function's contract; the loop stops there.
        if unsafe { path.add(i).read_volatile() } != want {
            return false;
        }
    }
    true
}

/// The SIGSYS handler: the refused call returns `-EPERM` and is counted.
/// Async-signal-safe: registers, atomics in const thread-locals (no lazy
/// initialisation, no destructor), no call into libc.
#[cfg(target_arch = "x86_64")]
extern "C" fn refuse(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo.
    if unsafe { (*info).si_code } != SYS_SECCOMP {
        // A SIGSYS someone sent: nothing to refuse, nothing to do.
        return;
    }
    // SAFETY: for SA_SIGINFO the third argument is this thread's saved
    // ucontext, ours to change until the handler returns (rt_sigreturn
    // loads it back into the registers).
    let uc = unsafe { &mut *ctx.cast::<libc::ucontext_t>() };
    let regs = &mut uc.uc_mcontext.gregs;
    // The kernel rolled RAX back to the call's number; RSI is its second
    // argument (openat's path).
    let nr = regs[libc::REG_RAX as usize];
    let expected = nr == libc::SYS_openat
        // SAFETY: glibc and our code pass openat a valid C string; a forged
        // pointer can only come from code that could fault anyway.
        && unsafe { is_overcommit_probe(regs[libc::REG_RSI as usize] as *const u8) };
    regs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
    if !expected {
        REFUSED.with(|r| r.fetch_add(1, Ordering::Relaxed));
        LAST_REFUSED.with(|l| l.store(nr, Ordering::Relaxed));
    }
}

#[cfg(target_arch = "x86_64")]
fn install_handler() -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero is a valid empty value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = refuse as *const () as libc::sighandler_t;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `sa.sa_mask` is a valid sigset_t to empty; `sa` is a valid
    // action whose handler has the SA_SIGINFO signature.
    let r = unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn install_handler() -> io::Result<()> {
    Ok(())
}

/// Build the filter (once, at start, before any worker exists) and check
/// that the kernel takes it; with `enabled == false` the workers stay
/// unconfined. Logs what applies.
pub fn prepare(enabled: bool) -> Result<(), SeccompError> {
    if !enabled {
        warn!("seccomp: off (`seccomp = false`): the data-path threads are not confined");
        return Ok(());
    }
    let rules = allowlist()?;
    let n = rules.len();
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let filter = SeccompFilter::new(rules, MISMATCH, SeccompAction::Allow, arch)?;
    let program = BpfProgram::try_from(filter)?;
    // Before the trial: a trapped call without a handler kills the process.
    install_handler().map_err(SeccompError::Handler)?;
    // A throwaway thread (filters are per thread) tells now whether the
    // kernel takes it, rather than every worker later.
    let trial = program.clone();
    std::thread::Builder::new()
        .name("seccomp-check".into())
        .spawn(move || seccompiler::apply_filter(&trial))
        .map_err(SeccompError::Trial)?
        .join()
        .unwrap_or(Err(seccompiler::Error::EmptyFilter))
        .map_err(SeccompError::Kernel)?;
    let _ = FILTER.set(program);
    info!(
        "seccomp: every data-path worker confines itself at its first event: no capabilities, {n} system calls (docs/security.md); any other fails with EPERM{}",
        if MISMATCH == SeccompAction::Trap {
            " and is logged and counted (syscalls_refused)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Confine the calling worker thread, once: it gives up every capability
/// and applies the filter. `name` and `queue` are for the log.
pub fn confine_worker(name: &str, queue: usize) {
    if CONFINED.get() {
        return;
    }
    CONFINED.set(true);
    let Some(program) = FILTER.get() else {
        return;
    };
    // vhost-user-backend 0.24 calls the backend's handle_event from its
    // workers only; should that change, a control thread must not be caught.
    if std::thread::current().name() != Some(WORKER_NAME) {
        warn!("{name}: queue {queue}: an event on a thread that is not a {WORKER_NAME}; it stays unconfined");
        return;
    }
    // Capabilities are per thread: a worker needs none.
    if let Err(e) = caps::clear(None, caps::CapSet::Permitted) {
        warn!("{name}: queue {queue}: cannot drop the worker's capabilities: {e}");
    }
    if let Err(e) = seccompiler::apply_filter(program) {
        error!("{name}: queue {queue}: cannot apply the seccomp filter: {e}; this worker runs unconfined");
    }
}

/// Calls the filter refused on this thread since the last report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub count: u64,
    /// The system call number of the last one.
    pub last: i64,
    /// The first report of this thread.
    pub first: bool,
}

/// Calls refused on this thread since the last call of this function.
#[inline]
pub fn refused() -> Option<Refused> {
    let total = REFUSED.with(|r| r.load(Ordering::Relaxed));
    let reported = REPORTED.get();
    if total == reported {
        return None;
    }
    REPORTED.set(total);
    Some(Refused {
        count: total - reported,
        last: LAST_REFUSED.with(|l| l.load(Ordering::Relaxed)),
        first: reported == 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_refuses_what_is_not_listed() {
        let rules = allowlist().unwrap();
        assert!(rules.contains_key(&libc::SYS_readv));
        assert!(!rules.contains_key(&libc::SYS_socket));
        assert!(!rules.contains_key(&libc::SYS_openat));
        assert!(!rules.contains_key(&libc::SYS_execve));
        let arch = TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let filter = SeccompFilter::new(rules, MISMATCH, SeccompAction::Allow, arch).unwrap();
        let program = BpfProgram::try_from(filter).unwrap();
        // In a thread of its own: the filter stays with it.
        let got = std::thread::spawn(move || {
            install_handler().unwrap();
            seccompiler::apply_filter(&program).unwrap();
            // SAFETY: plain socket(2); a descriptor, if any, is closed below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let err = io::Error::last_os_error().raw_os_error();
            // An executable mapping is refused too; a plain one is not.
            // SAFETY: anonymous mappings at an address the kernel picks.
            let exec = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            // SAFETY: as above.
            let plain = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            let v: Vec<u8> = vec![7; 1 << 20]; // the allocator still works
            let (exec, plain) = (exec == libc::MAP_FAILED, plain == libc::MAP_FAILED);
            (fd, err, exec, plain, v.len(), refused())
        })
        .join()
        .unwrap();
        assert_eq!((got.0, got.1), (-1, Some(libc::EPERM)));
        assert!(got.2, "an executable mapping was made");
        assert!(!got.3, "a plain mapping was refused");
        assert_eq!(got.4, 1 << 20);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                got.5,
                Some(Refused {
                    count: 2,
                    last: libc::SYS_mmap,
                    first: true
                })
            );
        }
        // This thread is not confined.
        // SAFETY: plain socket(2), closed at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` is ours.
        unsafe { libc::close(fd) };
    }
}
