//! One device's life: listen on its socket, serve one frontend at a time
//! through the relay, and listen again when the frontend goes away.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use log::{error, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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

/// Stops one device server: set, then the server's eventfd is written
/// ([`DeviceServer::interrupt`]).
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
        self.requested.store(true, Ordering::Release);
    }
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// Serves one device's socket.
pub struct DeviceServer {
    pub device: Arc<Device>,
    socket: PathBuf,
    /// `None` in client mode (the frontend listens, the daemon connects).
    listener: Option<UnixListener>,
    wake: EventFd,
    stop: Arc<Stop>,
    /// The frontend connection being served, to cut it at shutdown.
    active: Mutex<Option<UnixStream>>,
    /// Where the relay meets the dispatcher: a private directory of ours.
    private_dir: PathBuf,
    connections: AtomicU64,
    /// End the accept loop after the current connection (a changed
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
    /// Listen on `socket` (server mode), or with `access == None` connect
    /// to it as a client (the frontend listens; client mode).
    pub fn new(
        device: Arc<Device>,
        socket: PathBuf,
        access: Option<&SocketAccess>,
        stop: Arc<Stop>,
        private_dir: PathBuf,
    ) -> Result<DeviceServer, ServerError> {
        let listener = match access {
            Some(access) => {
                Some(
                    socket::bind(&socket, access).map_err(|source| ServerError::Listen {
                        path: socket.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Ok(DeviceServer {
            device,
            socket,
            listener,
            wake: EventFd::new(EFD_NONBLOCK).map_err(ServerError::WakeEvent)?,
            stop,
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

    /// Wake the accept loop and cut the current connection (shutdown).
    pub fn interrupt(&self) {
        let _ = self.wake.write(1);
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
    /// [`DeviceServer::leave_after_connection`]: SeqCst, the load half of
    /// the store-buffering pair with `run`'s store of `serving` then load
    /// of `leave` — at least one side sees the other's store, so a frontend
    /// is never both unseen here and served past the change. (One accepted
    /// in the very window is cut by the restart's stop, like any frontend
    /// at a stop.)
    pub fn connected(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// Frontend connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Serve the current frontend to its end, then stop listening.
    pub fn leave_after_connection(&self) {
        // SeqCst: pairs with the load of `leave` in `run` (see `connected`).
        self.leave.store(true, Ordering::SeqCst);
    }

    /// Wait until the wake eventfd is written or `timeout_ms` passed (-1: forever).
    fn wait_wake(&self, timeout_ms: i32) -> io::Result<()> {
        let mut fd = libc::pollfd {
            fd: self.wake.as_raw_fd(),
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
            let _ = self.wake.read();
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

    /// Wait for a frontend (accept, or connect in client mode) or a stop;
    /// `None` on stop.
    fn accept(&self) -> io::Result<Option<UnixStream>> {
        let Some(listener) = &self.listener else {
            return self.connect();
        };
        loop {
            if self.stop.requested() {
                return Ok(None);
            }
            let mut fds = [
                libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a live array of two pollfd structs.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[1].revents != 0 {
                let _ = self.wake.read();
                continue;
            }
            if fds[0].revents != 0 {
                let (s, _) = listener.accept()?;
                return Ok(Some(s));
            }
        }
    }

    /// Serve frontends one after the other until stopped.
    pub fn run(&self) {
        let client = self.listener.is_none();
        info!(
            "{}: {} {} (TAP {}, {} queue pair(s))",
            self.name(),
            if client {
                "client mode, connecting to"
            } else {
                "listening on"
            },
            self.socket.display(),
            self.device.tap.name(),
            self.device.settings.queue_pairs
        );
        loop {
            let front = match self.accept() {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) => {
                    error!(
                        "{}: {} {} failed: {e}",
                        self.name(),
                        if client { "connecting to" } else { "accept on" },
                        self.socket.display()
                    );
                    break;
                }
            };
            let n = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
            info!("{}: frontend connected (connection {n})", self.name());
            // SeqCst: pairs with the load in `connected` (see there).
            self.serving.store(true, Ordering::SeqCst);
            self.device.decide_mode_again();
            notify::frontend_connected();
            if let Err(e) = self.serve_connection(front, n) {
                error!("{}: connection {n}: {e}", self.name());
            }
            notify::frontend_gone();
            // SeqCst: the other half of the pair with `leave_after_connection`.
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
            // SeqCst, as the store above.
            self.serving.store(false, Ordering::SeqCst);
            if leave {
                break;
            }
        }
        if !client {
            // The socket is ours only when we listen; in client mode it is the frontend's.
            let _ = std::fs::remove_file(&self.socket);
        }
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
