//! One device's life: its socket waits in the accept loop
//! ([`crate::acceptor`]) while the device is idle; an accepted frontend
//! gets a connection thread `dev-<tap>` that serves it through the relay,
//! then hands the socket back to the loop. One frontend at a time: the
//! listener is not watched while one is served, so the next waits in the
//! socket's backlog. An idle listening device costs no thread.
//!
//! In client mode (`--client`: the frontend listens, the daemon connects,
//! retrying with back-off) the device keeps a thread `dev-<tap>` of its
//! own for its whole life.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;

use log::{error, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acceptor::{Acceptor, Listening, Readable};
use crate::backend::NetBackend;
use crate::counters::ReportEvent;
use crate::device::Device;
use crate::notify;
use crate::relay;
use crate::socket::{self, SocketAccess};

/// Why a device cannot listen, or why one connection ended in error (the
/// device then listens again).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("cannot create the server's wake-up eventfd: {0}")]
    WakeEvent(io::Error),
    #[error("cannot add the socket to the accept loop: {0}")]
    Watch(io::Error),
    #[error("cannot start the device's thread: {0}")]
    Thread(io::Error),
    #[error("cannot set up the backend for the connection: {0}")]
    Backend(io::Error),
    #[error("cannot create the vhost-user handler: {0}")]
    Handler(vhost_user_backend::Error),
    #[error("cannot add the TAP and resume events to the workers: {0}")]
    Register(io::Error),
    #[error("cannot open the dispatcher's socket {path}: {source}")]
    InnerSocket { path: PathBuf, source: io::Error },
    #[error("cannot start the dispatcher: {0}")]
    Dispatcher(vhost_user_backend::Error),
    #[error("cannot keep a handle on the frontend's socket: {0}")]
    Frontend(io::Error),
    #[error(transparent)]
    Relay(#[from] relay::RelayError),
}

/// Longest wait between two connection attempts in client mode.
const MAX_BACKOFF_MS: i32 = 2000;

/// Stops one device server: set, then the server is interrupted
/// ([`DeviceServer::interrupt`]) or stopped ([`DeviceServer::stop`]).
pub struct Stop {
    requested: AtomicBool,
}

impl Stop {
    pub fn new() -> Arc<Stop> {
        Arc::new(Stop {
            requested: AtomicBool::new(false),
        })
    }
    pub fn request(&self) {
        // Release: pairs with the Acquire loads in `requested`, so that a
        // thread that sees the stop also sees what was done before it.
        self.requested.store(true, Ordering::Release);
    }
    pub fn requested(&self) -> bool {
        // Acquire: pairs with the Release store in `request`.
        self.requested.load(Ordering::Acquire)
    }
}

/// Where a device is in its life; kept in [`DeviceServer`]'s state lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Its listener is in the accept loop's epoll: armed, or being
    /// accepted on by the loop (which holds the state lock meanwhile).
    Listening,
    /// A connection thread serves a frontend (server mode), or the
    /// device's client thread runs (client mode).
    Serving,
    /// It takes no more frontends: stopped, or ended after its connection
    /// so that a changed configuration can apply.
    Ended,
}

/// A device's phase and its latest thread, under one lock.
///
/// The lock is what makes a stop and the accept loop agree: the loop
/// accepts and spawns only in `Listening`, holding the lock from the look
/// to the store of the new thread; a stop sets `Ended` and takes the thread
/// under the same lock. So either the stop comes first and nothing is
/// spawned, or it finds the spawned thread here and joins it. The same
/// holds for a connection's end, which re-arms the listener only if the
/// phase is still `Serving` (a stop has not taken over).
struct State {
    phase: Phase,
    /// The device's latest thread: the one serving now, or one that has
    /// ended or is ending. Joined by the next spawn or by the stop; never
    /// detached, so a stop returns only when no thread of the device runs.
    thread: Option<thread::JoinHandle<()>>,
}

/// Serves one device's socket.
pub struct DeviceServer {
    pub device: Arc<Device>,
    socket: PathBuf,
    /// Nonblocking; `None` in client mode (the frontend listens, the daemon connects).
    listener: Option<UnixListener>,
    /// The accept loop, and this device's token in it.
    acceptor: Arc<Acceptor>,
    token: u64,
    /// Client mode: wakes the connect back-off at a stop (`None` when
    /// listening: the accept loop needs no per-device wake-up).
    wake: Option<EventFd>,
    stop: Arc<Stop>,
    state: Mutex<State>,
    /// The frontend connection being served, to cut it at shutdown.
    active: Mutex<Option<UnixStream>>,
    /// Where the relay meets the dispatcher: a private directory of ours.
    private_dir: PathBuf,
    connections: AtomicU64,
    /// Take no frontend after the current connection (a changed
    /// configuration waits for the frontend to leave).
    leave: AtomicBool,
    /// A frontend was accepted and is being served.
    serving: AtomicBool,
}

/// The directory for the relay's inner sockets: mode 0700, ours alone.
pub fn private_dir() -> io::Result<PathBuf> {
    remove_stale_private_dirs(&std::env::temp_dir());
    let dir = std::env::temp_dir().join(format!("vhost-tap.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Remove the private directories that daemons killed without cleanup
/// (SIGKILL, a crash) left in `tmp`: `vhost-tap.PID` of a PID that no
/// longer runs.
fn remove_stale_private_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("vhost-tap."))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => info!(
                    "removed {}, left by a daemon that is gone",
                    e.path().display()
                ),
                Err(err) => warn!("cannot remove the stale {}: {err}", e.path().display()),
            }
        }
    }
}

impl DeviceServer {
    /// Bind `socket` (server mode), or with `access == None` prepare to
    /// connect to it as a client (the frontend listens; client mode).
    /// Nothing is served before [`DeviceServer::start`].
    pub fn new(
        device: Arc<Device>,
        socket: PathBuf,
        access: Option<&SocketAccess>,
        stop: Arc<Stop>,
        private_dir: PathBuf,
        acceptor: Arc<Acceptor>,
    ) -> Result<DeviceServer, ServerError> {
        let listen_err = |source| ServerError::Listen {
            path: socket.clone(),
            source,
        };
        let (listener, wake) = match access {
            Some(access) => {
                let l = socket::bind(&socket, access).map_err(listen_err)?;
                // The accept loop takes what is there and goes back to its
                // epoll; it must never block in accept.
                if let Err(e) = l.set_nonblocking(true) {
                    let _ = std::fs::remove_file(&socket);
                    return Err(listen_err(e));
                }
                (Some(l), None)
            }
            None => (
                None,
                Some(EventFd::new(EFD_NONBLOCK).map_err(ServerError::WakeEvent)?),
            ),
        };
        let phase = if listener.is_some() {
            Phase::Listening
        } else {
            Phase::Serving
        };
        info!(
            "{}: {} {} (TAP {}, {} queue pair(s))",
            device.settings.name,
            if listener.is_some() {
                "listening on"
            } else {
                "client mode, connecting to"
            },
            socket.display(),
            device.tap.name(),
            device.settings.queue_pairs
        );
        Ok(DeviceServer {
            device,
            socket,
            listener,
            token: acceptor.token(),
            acceptor,
            wake,
            stop,
            state: Mutex::new(State {
                phase,
                thread: None,
            }),
            active: Mutex::new(None),
            private_dir,
            connections: AtomicU64::new(0),
            leave: AtomicBool::new(false),
            serving: AtomicBool::new(false),
        })
    }

    fn name(&self) -> &str {
        &self.device.settings.name
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serve: hand the listener to the accept loop (server mode), or start
    /// the device's client thread `dev-<tap>` (client mode). On an error
    /// the socket file is removed again.
    pub fn start(self: &Arc<Self>) -> Result<(), ServerError> {
        if let Some(l) = &self.listener {
            let me: Weak<dyn Listening> = Arc::downgrade(self) as Weak<dyn Listening>;
            return self
                .acceptor
                .add(self.token, me, l.as_raw_fd())
                .map_err(|e| {
                    let _ = std::fs::remove_file(&self.socket);
                    ServerError::Watch(e)
                });
        }
        let runner = self.clone();
        let handle = thread::Builder::new()
            .name(format!("dev-{}", self.name()))
            .spawn(move || runner.run_client())
            .map_err(ServerError::Thread)?;
        // The thread may already have ended (a stop): `stop` joins it all the same.
        self.lock_state().thread = Some(handle);
        Ok(())
    }

    /// Stop the device: no frontend is accepted any more, the connected
    /// one is cut, the device's thread is joined, and (server mode) the
    /// socket file is removed. Idempotent.
    pub fn stop(&self) {
        self.stop.request();
        // `Ended` and the thread, under the state lock (see `State`): after
        // this the accept loop spawns nothing and no one re-arms the
        // listener; a thread spawned before is the one taken here.
        let thread = {
            let mut state = self.lock_state();
            state.phase = Phase::Ended;
            state.thread.take()
        };
        if let Some(l) = &self.listener {
            // After `Ended`, so no re-arm can follow. The listener stays
            // open until `self` is dropped: the epoll never holds a closed
            // descriptor, and an event already in flight finds no device or
            // one that is `Ended`.
            self.acceptor.remove(self.token, l.as_raw_fd());
        }
        self.interrupt();
        if let Some(t) = thread {
            let _ = t.join();
        }
        if self.listener.is_some() {
            // The socket is ours only when we listen; in client mode it is the frontend's.
            let _ = std::fs::remove_file(&self.socket);
        }
    }

    /// Cut the current connection and wake a client-mode device waiting to
    /// connect again (after [`Stop::request`]).
    pub fn interrupt(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.write(1);
        }
        if let Some(s) = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Whether a frontend is being served now. Call after
    /// [`DeviceServer::leave_after_connection`].
    ///
    /// SeqCst: the load half of a store-buffering pair with the end of a
    /// connection (`serve`: store `serving = false`, then load `leave`).
    /// In the single order of SeqCst operations, if this load sees `true`
    /// the store of `false` that ends that connection comes after it, and
    /// so after our store of `leave`: the connection's load sees `leave`,
    /// the device ends after that frontend and [`DeviceServer::ended`]
    /// says so. If it sees `false`, the caller restarts the device at once;
    /// a frontend accepted in the very window (its `serving = true` stored
    /// after this load) is cut by the restart's stop, like any frontend at
    /// a stop.
    pub fn connected(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// Frontend connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Serve the current frontend to its end, then take no other.
    pub fn leave_after_connection(&self) {
        // SeqCst: the store half of the pair with the load of `leave` in
        // `serve` (see `connected`).
        self.leave.store(true, Ordering::SeqCst);
    }

    /// Whether the device takes no more frontends: it ended after its
    /// connection (see [`DeviceServer::leave_after_connection`]) or was
    /// stopped.
    pub fn ended(&self) -> bool {
        self.lock_state().phase == Phase::Ended
    }

    /// Hand the listener back to the accept loop. Call with the state lock
    /// held and the phase `Listening` (so that no stop has removed it).
    fn rearm(&self) {
        let Some(l) = &self.listener else { return };
        if let Err(e) = self.acceptor.rearm(self.token, l.as_raw_fd()) {
            error!(
                "{}: cannot hand {} back to the accept loop: {e}; the device takes no frontend until it is restarted",
                self.name(),
                self.socket.display()
            );
        }
    }

    /// Wait until the wake eventfd is written or `timeout_ms` passed (client mode).
    fn wait_wake(&self, timeout_ms: i32) -> io::Result<()> {
        let Some(wake) = &self.wake else {
            thread::sleep(std::time::Duration::from_millis(timeout_ms.max(0) as u64));
            return Ok(());
        };
        let mut fd = libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `fd` is one live pollfd struct.
        let r = unsafe { libc::poll(&mut fd, 1, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        if fd.revents != 0 {
            let _ = wake.read();
        }
        Ok(())
    }

    /// Client mode: connect to the frontend's socket, retrying with
    /// backoff (50 ms doubling to 2 s) while it is missing or refuses, so
    /// that either side may restart; `None` on stop.
    fn connect(&self) -> io::Result<Option<UnixStream>> {
        let mut delay_ms = 50;
        let mut waiting = false;
        loop {
            if self.stop.requested() {
                return Ok(None);
            }
            match UnixStream::connect(&self.socket) {
                Ok(s) => return Ok(Some(s)),
                Err(e) if !waiting => {
                    info!(
                        "{}: waiting for the frontend's socket {} ({e}); retrying every {} s at most",
                        self.name(),
                        self.socket.display(),
                        MAX_BACKOFF_MS / 1000
                    );
                    waiting = true;
                }
                Err(_) => {}
            }
            self.wait_wake(delay_ms)?;
            delay_ms = (delay_ms * 2).min(MAX_BACKOFF_MS);
        }
    }

    /// Client mode, the device's thread: connect and serve, again and
    /// again, until stopped or told to leave.
    fn run_client(&self) {
        loop {
            let front = match self.connect() {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) => {
                    error!(
                        "{}: connecting to {} failed: {e}",
                        self.name(),
                        self.socket.display()
                    );
                    break;
                }
            };
            // SeqCst: see `connected`.
            self.serving.store(true, Ordering::SeqCst);
            if self.serve(front, true) {
                break;
            }
        }
        let mut state = self.lock_state();
        if state.phase == Phase::Serving {
            state.phase = Phase::Ended;
        }
    }

    /// Server mode, a connection thread: serve the accepted frontend, then
    /// hand the listener back to the accept loop, or end the device if it
    /// is to leave after this connection or is stopping.
    fn run_connection(&self, front: UnixStream) {
        let leave = self.serve(front, false);
        let mut state = self.lock_state();
        if state.phase != Phase::Serving {
            // A stop took over: it has removed the listener and joins us.
            return;
        }
        if leave || self.stop.requested() {
            state.phase = Phase::Ended;
            drop(state);
            let _ = std::fs::remove_file(&self.socket);
            return;
        }
        state.phase = Phase::Listening;
        self.rearm();
    }

    /// Serve one frontend (`serving` already stored `true`); whether the
    /// device is to leave after it.
    fn serve(&self, front: UnixStream, client: bool) -> bool {
        let n = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        info!("{}: frontend connected (connection {n})", self.name());
        self.device.decide_mode_again();
        notify::frontend_connected();
        if let Err(e) = self.serve_connection(front, n) {
            error!("{}: connection {n}: {e}", self.name());
            // Counted on the first queue pair: the connection is the device's.
            crate::counters::QueueCounters::add(&self.device.counters[0].connection_errors, 1);
        }
        notify::frontend_gone();
        // SeqCst store, then SeqCst load: the connection's half of the
        // store-buffering pair with `leave_after_connection` then
        // `connected` (see there). The order matters: with the load first,
        // a reload between the two would see this frontend connected and
        // wait for it, while it had already decided to listen again.
        self.serving.store(false, Ordering::SeqCst);
        let leave = self.leave.load(Ordering::SeqCst);
        self.device.log_report(
            ReportEvent::Disconnect,
            &format!(
                "{}: frontend gone (connection {n}); {}",
                self.name(),
                if leave {
                    "the changed configuration applies now"
                } else if client {
                    "connecting again"
                } else {
                    "listening again"
                }
            ),
        );
        leave
    }

    fn serve_connection(&self, front: UnixStream, n: u64) -> Result<(), ServerError> {
        let name = self.name().to_string();
        let backend = Arc::new(NetBackend::new(self.device.clone()).map_err(ServerError::Backend)?);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        let mut daemon = VhostUserDaemon::new(name.clone(), backend.clone(), mem)
            .map_err(ServerError::Handler)?;
        backend
            .register(&daemon.get_epoll_handlers())
            .map_err(ServerError::Register)?;

        // The dispatcher accepts on a socket in our private directory; the
        // relay connects to it and sits between it and the frontend.
        let inner_path = self.private_dir.join(format!("{name}.{n}.sock"));
        let _ = std::fs::remove_file(&inner_path);
        let inner_err = |source| ServerError::InnerSocket {
            path: inner_path.clone(),
            source,
        };
        let inner = UnixListener::bind(&inner_path).map_err(inner_err)?;
        let back = UnixStream::connect(&inner_path).map_err(inner_err)?;
        let mut listener = Listener::from(inner);
        let started = daemon.start(&mut listener);
        let _ = std::fs::remove_file(&inner_path);
        started.map_err(ServerError::Dispatcher)?;

        let handle = front.try_clone().map_err(ServerError::Frontend)?;
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        // A stop requests, then takes `active` in `interrupt`: either that
        // lock came after ours and cuts this frontend, or it came before,
        // and then the request (before it) is seen here.
        if self.stop.requested() {
            let _ = front.shutdown(std::net::Shutdown::Both);
        }
        let limits = relay::Limits {
            vrings: self.device.settings.queue_pairs * 2,
            max_ring: self.device.settings.queue_size,
        };
        let relayed = relay::run(front, back, &name, limits);
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = None;

        daemon.request_shutdown();
        if let Err(e) = daemon.wait() {
            warn!("{name}: vhost-user session ended: {e}");
        }
        drop(daemon);
        Ok(relayed?)
    }
}

impl Listening for DeviceServer {
    fn name(&self) -> &str {
        &self.device.settings.name
    }

    /// Accept one frontend and start its connection thread `dev-<tap>`,
    /// all under the state lock (see `State`).
    fn on_readable(self: Arc<Self>) -> Readable {
        let mut state = self.lock_state();
        if state.phase != Phase::Listening || self.stop.requested() {
            return Readable::NotListening;
        }
        let Some(listener) = &self.listener else {
            return Readable::NotListening;
        };
        let front = match listener.accept() {
            Ok((s, _)) => s,
            // Nothing there (a frontend that left before the accept, or
            // aborted its connection): listen on.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) || e.raw_os_error() == Some(libc::ECONNABORTED) =>
            {
                return Readable::Empty
            }
            Err(e) => return Readable::Failed(e),
        };
        // Linux does not pass the listener's O_NONBLOCK on to an accepted
        // socket, but the relay needs a blocking one: make sure.
        if let Err(e) = front.set_nonblocking(false) {
            return Readable::Failed(e);
        }
        // SeqCst: see `connected`.
        self.serving.store(true, Ordering::SeqCst);
        let runner = self.clone();
        match thread::Builder::new()
            .name(format!("dev-{}", self.name()))
            .spawn(move || runner.run_connection(front))
        {
            Ok(handle) => {
                state.phase = Phase::Serving;
                let last = state.thread.replace(handle);
                drop(state);
                // The previous connection's thread: it re-armed the
                // listener as its last act under the lock, and only returns
                // after that.
                if let Some(t) = last {
                    let _ = t.join();
                }
                Readable::Served
            }
            Err(e) => {
                // The frontend was closed with the closure that held it.
                // SeqCst, as the store above.
                self.serving.store(false, Ordering::SeqCst);
                Readable::Failed(e)
            }
        }
    }

    fn listen_again(&self) {
        let state = self.lock_state();
        if state.phase == Phase::Listening && !self.stop.requested() {
            self.rearm();
        }
    }
}
