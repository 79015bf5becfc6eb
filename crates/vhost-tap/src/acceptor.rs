//! One accept loop for every listening device: the thread `accept` waits
//! in one epoll on all the devices' listening sockets, so that an idle
//! device costs no thread.
//!
//! Each listener is in the epoll with `EPOLLONESHOT`: once it reports
//! readable it stays disarmed until its device hands it back
//! ([`Acceptor::rearm`], `EPOLL_CTL_MOD`). The device decides that
//! ([`Listening::on_readable`]): it accepts and starts a connection thread
//! that serves that one frontend and re-arms the listener when the frontend
//! leaves — so a second frontend waits in the socket's backlog, as it did
//! when each device had a thread of its own. A device that is stopping, or
//! that ends after its connection (a changed configuration), is not re-armed.
//!
//! The epoll's event data is a token, never a descriptor or a pointer: the
//! loop looks the token up in its table of devices, and a token that is
//! gone (the device was removed while its event was in flight) or whose
//! device no longer listens is ignored. The table holds weak references:
//! the listener's descriptor belongs to its device, and is used only
//! through a strong reference taken from the table, so the loop can never
//! touch a descriptor that was closed (and perhaps reused).
//!
//! Accept failures that a retry at once would repeat (`EMFILE`, `ENFILE`,
//! `ENOBUFS`, `ENOMEM`, a thread that cannot start) are logged once per
//! run of failures; the device's listener stays disarmed for
//! [`BACKOFF`] and is then re-armed, so the loop does not spin on a
//! connection it cannot take.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How long a listener whose accept failed stays disarmed.
pub const BACKOFF: Duration = Duration::from_millis(100);

/// Events taken from the epoll per wait.
const EVENTS: usize = 64;

/// The token of the wake eventfd; devices' tokens start above it.
const WAKE_TOKEN: u64 = 0;

/// Why the accept loop could not start.
#[derive(Debug, thiserror::Error)]
pub enum AcceptorError {
    #[error("cannot create the accept loop's epoll: {0}")]
    Epoll(io::Error),
    #[error("cannot create the accept loop's wake-up eventfd: {0}")]
    WakeEvent(io::Error),
    #[error("cannot add the wake-up eventfd to the accept loop's epoll: {0}")]
    WakeRegister(io::Error),
    #[error("cannot start the accept loop's thread: {0}")]
    Thread(io::Error),
}

/// What a device made of its readable listener.
#[derive(Debug)]
pub enum Readable {
    /// A frontend was accepted and a connection thread serves it; the
    /// device re-arms its listener when the frontend leaves.
    Served,
    /// The device no longer listens (stopping, stopped, or ending after its
    /// connection): leave its listener disarmed.
    NotListening,
    /// Nothing to accept (the frontend left first, or another wake-up took
    /// it): re-arm now.
    Empty,
    /// The accept, or the start of the connection thread, failed: re-arm
    /// after [`BACKOFF`].
    Failed(io::Error),
}

/// A device as the accept loop sees it.
pub trait Listening: Send + Sync {
    /// Its name, for the log.
    fn name(&self) -> &str;
    /// Its listener is readable (and disarmed): accept.
    fn on_readable(self: Arc<Self>) -> Readable;
    /// Re-arm its listener if it still listens (after [`Readable::Empty`]
    /// or a back-off); checked under the device's own state lock, so that a
    /// stop that came in between wins.
    fn listen_again(&self);
}

/// The accept loop: an epoll over every listening socket, a table from
/// token to device, and the thread that waits on them.
pub struct Acceptor {
    epoll: Epoll,
    /// Written to bring the thread back to look at `exit`.
    wake: EventFd,
    /// The thread is to end.
    exit: AtomicBool,
    /// Token → device. A token is never reused.
    devices: Mutex<HashMap<u64, Weak<dyn Listening>>>,
    next_token: AtomicU64,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Acceptor {
    /// Create the epoll and start the thread `accept`.
    pub fn start() -> Result<Arc<Acceptor>, AcceptorError> {
        let acceptor = Acceptor::new()?;
        acceptor.spawn()?;
        Ok(acceptor)
    }

    /// Create the epoll; the thread `accept` starts with [`Acceptor::spawn`]
    /// (devices may be added before: their events wait in the epoll).
    pub fn new() -> Result<Arc<Acceptor>, AcceptorError> {
        let acceptor = Arc::new(Acceptor {
            epoll: Epoll::new().map_err(AcceptorError::Epoll)?,
            wake: EventFd::new(EFD_NONBLOCK).map_err(AcceptorError::WakeEvent)?,
            exit: AtomicBool::new(false),
            devices: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(WAKE_TOKEN + 1),
            thread: Mutex::new(None),
        });
        acceptor
            .epoll
            .ctl(
                ControlOperation::Add,
                acceptor.wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, WAKE_TOKEN),
            )
            .map_err(AcceptorError::WakeRegister)?;
        Ok(acceptor)
    }

    /// Start the thread `accept`.
    pub fn spawn(self: &Arc<Self>) -> Result<(), AcceptorError> {
        let runner = self.clone();
        let handle = thread::Builder::new()
            .name("accept".into())
            .spawn(move || runner.run())
            .map_err(AcceptorError::Thread)?;
        *self.lock_thread() = Some(handle);
        Ok(())
    }

    /// A fresh token for a device (before [`Acceptor::add`], so that the
    /// device knows it before its first event can arrive).
    pub fn token(&self) -> u64 {
        // Relaxed: only uniqueness matters; no other memory depends on it.
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Watch `fd` (a nonblocking listening socket, owned by `device`,
    /// which must keep it open until [`Acceptor::remove`]) under `token`.
    pub fn add(&self, token: u64, device: Weak<dyn Listening>, fd: RawFd) -> io::Result<()> {
        self.lock_devices().insert(token, device);
        let added = self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN | EventSet::ONE_SHOT, token),
        );
        if added.is_err() {
            self.lock_devices().remove(&token);
        }
        added
    }

    /// Arm `fd` again for one more readable event. The caller holds its
    /// device's state lock and has seen it listening, so this cannot
    /// follow the device's [`Acceptor::remove`].
    pub fn rearm(&self, token: u64, fd: RawFd) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(EventSet::IN | EventSet::ONE_SHOT, token),
        )
    }

    /// Stop watching `fd` and forget `token`. An event for it that is
    /// already in flight finds no device (or one that no longer listens)
    /// and is ignored. `fd` must still be open. Idempotent.
    pub fn remove(&self, token: u64, fd: RawFd) {
        if self.lock_devices().remove(&token).is_none() {
            return;
        }
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        {
            warn!("accept loop: cannot remove a listener from the epoll: {e}");
        }
    }

    /// End the thread and wait for it. Devices still in the table are
    /// left as they are (their owners stop them).
    pub fn stop(&self) {
        // Release: pairs with the Acquire load in `run` after the wake-up.
        self.exit.store(true, Ordering::Release);
        let _ = self.wake.write(1);
        let handle = self.lock_thread().take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    fn lock_devices(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<dyn Listening>>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_thread(&self) -> std::sync::MutexGuard<'_, Option<thread::JoinHandle<()>>> {
        self.thread.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device under `token`, if it is still there.
    fn device(&self, token: u64) -> Option<Arc<dyn Listening>> {
        self.lock_devices().get(&token).and_then(Weak::upgrade)
    }

    fn run(&self) {
        let mut events = vec![EpollEvent::default(); EVENTS];
        let mut resting = Resting::default();
        let mut wait_failed = false;
        loop {
            let n = match self.epoll.wait(resting.timeout_ms(), &mut events) {
                Ok(n) => {
                    wait_failed = false;
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    // Cannot happen on a valid epoll; never spin on it.
                    if !wait_failed {
                        error!(
                            "accept loop: epoll_wait failed: {e}; retrying every {} ms",
                            BACKOFF.as_millis()
                        );
                        wait_failed = true;
                    }
                    thread::sleep(BACKOFF);
                    0
                }
            };
            for ev in &events[..n] {
                let token = ev.data();
                if token == WAKE_TOKEN {
                    let _ = self.wake.read();
                    // Acquire: pairs with the Release store in `stop`.
                    if self.exit.load(Ordering::Acquire) {
                        return;
                    }
                    continue;
                }
                // Gone: removed while its event was in flight.
                let Some(device) = self.device(token) else {
                    continue;
                };
                let failed = match device.clone().on_readable() {
                    Readable::Served => {
                        let failures = resting.worked();
                        if failures > 0 {
                            info!("accept loop: accepting again after {failures} failed accept(s)");
                        }
                        continue;
                    }
                    Readable::NotListening => continue,
                    // A listener reporting an error or a hang-up with
                    // nothing to accept would report it again at once:
                    // rest it like a failed accept rather than spin.
                    Readable::Empty
                        if ev
                            .event_set()
                            .intersects(EventSet::ERROR | EventSet::HANG_UP) =>
                    {
                        format!("the socket reports {:?} with no frontend", ev.event_set())
                    }
                    Readable::Empty => {
                        device.listen_again();
                        continue;
                    }
                    Readable::Failed(e) => format!("accepting a frontend failed: {e}"),
                };
                if resting.add(token) {
                    warn!(
                        "{}: {failed}; the socket rests {} ms (further failures of any device \
                         are counted, not logged, until an accept works)",
                        device.name(),
                        BACKOFF.as_millis()
                    );
                }
            }
            for token in resting.due() {
                if let Some(device) = self.device(token) {
                    device.listen_again();
                }
            }
        }
    }
}

/// Listeners resting after a failed accept: left disarmed, and re-armed
/// together once [`BACKOFF`] has passed since the first of them failed.
#[derive(Default)]
struct Resting {
    tokens: Vec<u64>,
    until: Option<Instant>,
    /// Failures since the last accept that worked (only the first of a
    /// run is logged).
    failures: u64,
}

impl Resting {
    /// Rest `token`'s listener; whether this failure starts a run (and is
    /// to be logged).
    fn add(&mut self, token: u64) -> bool {
        self.tokens.push(token);
        self.until.get_or_insert_with(|| Instant::now() + BACKOFF);
        self.failures += 1;
        self.failures == 1
    }

    /// An accept worked: the failures before it.
    fn worked(&mut self) -> u64 {
        std::mem::take(&mut self.failures)
    }

    /// How long the epoll may wait: until the rest ends, or forever.
    fn timeout_ms(&self) -> i32 {
        match self.until {
            None => -1,
            // Rounded up, so that the wait does not end just before the
            // deadline and spin on zero timeouts.
            Some(at) => at
                .saturating_duration_since(Instant::now())
                .as_micros()
                .div_ceil(1000)
                .min(i32::MAX as u128) as i32,
        }
    }

    /// The listeners whose rest is over.
    fn due(&mut self) -> Vec<u64> {
        if self.until.is_some_and(|at| Instant::now() >= at) {
            self.until = None;
            std::mem::take(&mut self.tokens)
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::sync::atomic::AtomicUsize;

    /// A listener that accepts and closes at once (`Served`), or fails
    /// every accept with `fail` while it is set.
    struct Fake {
        name: String,
        token: u64,
        listener: UnixListener,
        acceptor: Arc<Acceptor>,
        fail: Option<i32>,
        /// on_readable calls.
        calls: AtomicUsize,
        accepted: AtomicUsize,
        listening: AtomicBool,
    }

    impl Listening for Fake {
        fn name(&self) -> &str {
            &self.name
        }
        fn on_readable(self: Arc<Self>) -> Readable {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if !self.listening.load(Ordering::SeqCst) {
                return Readable::NotListening;
            }
            if let Some(errno) = self.fail {
                return Readable::Failed(io::Error::from_raw_os_error(errno));
            }
            match self.listener.accept() {
                Ok(_) => {
                    self.accepted.fetch_add(1, Ordering::SeqCst);
                    // What a connection thread does when its frontend leaves.
                    self.listen_again();
                    Readable::Served
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Readable::Empty,
                Err(e) => Readable::Failed(e),
            }
        }
        fn listen_again(&self) {
            if self.listening.load(Ordering::SeqCst) {
                self.acceptor
                    .rearm(self.token, self.listener.as_raw_fd())
                    .unwrap();
            }
        }
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vt-acceptor-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn fake(acceptor: &Arc<Acceptor>, path: &std::path::Path, fail: Option<i32>) -> Arc<Fake> {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let f = Arc::new(Fake {
            name: path.display().to_string(),
            token: acceptor.token(),
            listener,
            acceptor: acceptor.clone(),
            fail,
            calls: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            listening: AtomicBool::new(true),
        });
        let weak: Weak<dyn Listening> = Arc::downgrade(&f) as Weak<dyn Listening>;
        acceptor.add(f.token, weak, f.listener.as_raw_fd()).unwrap();
        f
    }

    fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn one_thread_accepts_on_every_listener_again_and_again() {
        let d = dir();
        let acceptor = Acceptor::start().unwrap();
        let fakes: Vec<_> = (0..20)
            .map(|i| fake(&acceptor, &d.join(format!("{i}.sock")), None))
            .collect();
        for round in 1..=3 {
            let _clients: Vec<_> = fakes
                .iter()
                .map(|f| {
                    UnixStream::connect(f.listener.local_addr().unwrap().as_pathname().unwrap())
                        .unwrap()
                })
                .collect();
            wait_until("every listener to accept", || {
                fakes
                    .iter()
                    .all(|f| f.accepted.load(Ordering::SeqCst) == round)
            });
        }
        acceptor.stop();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_removed_or_dropped_device_is_never_touched() {
        let d = dir();
        let acceptor = Acceptor::start().unwrap();
        let a = fake(&acceptor, &d.join("a.sock"), None);
        let b = fake(&acceptor, &d.join("b.sock"), None);
        // Removed: its listener stays open (a connect is queued) but the
        // loop no longer looks at it.
        acceptor.remove(a.token, a.listener.as_raw_fd());
        let _ca = UnixStream::connect(d.join("a.sock")).unwrap();
        // Dropped without removal: the kernel drops the closed descriptor
        // from the epoll; the table's weak reference no longer upgrades.
        let b_path = d.join("b.sock");
        drop(b);
        let _ = UnixStream::connect(&b_path);
        let c = fake(&acceptor, &d.join("c.sock"), None);
        let _cc = UnixStream::connect(d.join("c.sock")).unwrap();
        wait_until("c to accept", || c.accepted.load(Ordering::SeqCst) == 1);
        assert_eq!(a.calls.load(Ordering::SeqCst), 0);
        acceptor.stop();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn failing_accepts_back_off_instead_of_spinning() {
        let d = dir();
        let acceptor = Acceptor::start().unwrap();
        let f = fake(&acceptor, &d.join("f.sock"), Some(libc::EMFILE));
        let ok = fake(&acceptor, &d.join("ok.sock"), None);
        let _c = UnixStream::connect(d.join("f.sock")).unwrap();
        let t0 = Instant::now();
        wait_until("a first attempt", || f.calls.load(Ordering::SeqCst) >= 1);
        // The other device is served meanwhile.
        let _o = UnixStream::connect(d.join("ok.sock")).unwrap();
        wait_until("the other device to accept", || {
            ok.accepted.load(Ordering::SeqCst) == 1
        });
        thread::sleep(Duration::from_millis(550));
        let calls = f.calls.load(Ordering::SeqCst);
        let most = (t0.elapsed().as_millis() / BACKOFF.as_millis()) as usize + 1;
        assert!(
            (2..=most).contains(&calls),
            "{calls} attempts in {:?} (one per {BACKOFF:?} expected)",
            t0.elapsed()
        );
        // No longer listening: not re-armed, not called again.
        f.listening.store(false, Ordering::SeqCst);
        thread::sleep(BACKOFF * 3);
        let settled = f.calls.load(Ordering::SeqCst);
        thread::sleep(BACKOFF * 3);
        assert_eq!(f.calls.load(Ordering::SeqCst), settled);
        acceptor.stop();
        let _ = std::fs::remove_dir_all(&d);
    }
}
