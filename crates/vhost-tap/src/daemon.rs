//! The set of devices one daemon serves: open and start them all, change
//! the set to a reloaded configuration (SIGHUP), shut them down.
//!
//! Each device is its own server ([`crate::server`]) with its own
//! [`Stop`], so that one device can be stopped, restarted or added while
//! the others keep their traffic. Their listening sockets share one accept
//! loop ([`crate::acceptor`]), started first and stopped last. A device is
//! known by its TAP name: at a reload, a name that is gone is stopped, a
//! new name is started, and a name whose settings changed is restarted —
//! at once when no frontend is connected, otherwise after its frontend
//! leaves (the change waits, and says so in the log).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use log::{error, info, warn};

use crate::acceptor::{Acceptor, AcceptorError};
use crate::config::{self, DeviceConfig};
use crate::counters::ReportEvent;
use crate::device::TunRing;
use crate::device::{Device, DeviceError};
use crate::metrics::Exporter;
use crate::server::{self, DeviceServer, ServerError, Stop};
use crate::settings::{Mode, BACKPRESSURE_RING_SIZE, BACKPRESSURE_TXQUEUELEN};

/// Why the daemon, or one device, could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("give --socket PATH and --tap NAME, or --config FILE")]
    Usage,
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot create the private socket directory: {0}")]
    PrivateDir(std::io::Error),
    #[error(transparent)]
    Acceptor(#[from] AcceptorError),
    #[error("{source}")]
    Tap { tap: String, source: tap::Error },
    #[error("{tap}: {source}")]
    Device { tap: String, source: DeviceError },
    #[error("{tap}: {source}")]
    Server { tap: String, source: ServerError },
    #[error("seccomp: {0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("privileges: {0}")]
    Privileges(#[from] crate::privileges::PrivilegeError),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
}

impl StartError {
    /// A usage or configuration error (exit status 2), not a failure to
    /// set up the host (exit status 1).
    pub fn is_config(&self) -> bool {
        matches!(self, StartError::Usage | StartError::Config(_))
    }

    /// The error, and for a refusal (EACCES, EPERM) after the privileges
    /// were lowered, what the daemon may still do: a reload cannot do more.
    pub fn explained(&self) -> String {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        let mut refused = false;
        while let Some(c) = cause {
            refused |= c
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
            cause = c.source();
        }
        match crate::privileges::lowered() {
            Some(now) if refused => format!(
                "{self} (since its start the daemon runs as {now}: a reload cannot do what takes more, see docs/security.md)"
            ),
            _ => self.to_string(),
        }
    }
}

/// Open (create or attach) a device's TAP and set the device up.
pub fn open_device(d: &DeviceConfig) -> Result<Device, StartError> {
    let dev = &d.device;
    let cfg = tap::TapConfig {
        name: dev.name.clone(),
        queues: dev.queue_pairs,
        vnet_hdr_size: crate::datapath::vnet::HDR_LEN as i32,
        backpressure: if dev.mode == Mode::FqCodel || !d.iff_backpressure {
            tap::BackpressureRequest::Off
        } else {
            tap::BackpressureRequest::IfAvailable
        },
        txqueuelen: d.txqueuelen,
        mtu: Some(u32::from(dev.mtu)),
        persist: None,
    };
    let t = tap::Tap::open(&cfg).map_err(|source| StartError::Tap {
        tap: dev.name.clone(),
        source,
    })?;
    if t.created() {
        // A TAP created anew at every start keeps one host-side MAC (fe:54:00
        // + a hash of its name, like the guest's default), so the host's and
        // the guest's neighbour caches stay valid across daemon restarts.
        let g = config::default_mac(&dev.name);
        let mac = [0xfe, 0x54, 0x00, g[3], g[4], g[5]];
        if let Err(e) = t.set_mac(mac) {
            warn!("{}: {e}; the TAP keeps a random MAC", dev.name);
        }
    }
    let (created, queues) = (t.created(), t.queue_count());
    // Backpressure with the flag: short FIFOs behind the qdisc (see
    // `BACKPRESSURE_TXQUEUELEN`); the tun ring is switched with the mode.
    let flagged = t.backpressure() && dev.mode != Mode::FqCodel;
    let mut settings = dev.clone();
    if flagged && !d.ring_size_set {
        settings.ring_size = settings.ring_size.min(BACKPRESSURE_RING_SIZE);
    }
    let tun_ring = (created && d.txqueuelen.is_none() && t.backpressure()).then(|| TunRing {
        backpressure: BACKPRESSURE_TXQUEUELEN,
        other: t.txqueuelen().unwrap_or(1000),
    });
    let device = Device::new(settings, t, tun_ring).map_err(|source| StartError::Device {
        tap: dev.name.clone(),
        source,
    })?;
    let m = device.mode();
    info!(
        "{}: TAP {} {} ({queues} queue(s)); mode {} ({})",
        dev.name,
        device.tap.name(),
        if created { "created" } else { "attached" },
        m.mode.name(),
        m.reason,
    );
    Ok(device)
}

/// Threads that stop devices side by side at shutdown.
const TEARDOWN_THREADS: usize = 32;

/// One device being served.
struct Running {
    config: DeviceConfig,
    server: Arc<DeviceServer>,
    stop: Arc<Stop>,
    /// A changed configuration waiting for the frontend to leave.
    pending: Option<DeviceConfig>,
}

impl Running {
    fn name(&self) -> &str {
        &self.config.device.name
    }

    /// Stop the server (cutting a connected frontend, removing its
    /// socket, waiting for its thread), and count what its rings still
    /// held. Dropping the server then closes the TAP (a created one
    /// disappears): the metrics forget it first, and a scrape still holding
    /// it is waited for (up to 2 s), so that the TAP is closed when this
    /// returns and a restart can open it again.
    fn stop(self, exporter: &Exporter, event: ReportEvent, title: &str) {
        exporter.remove(&self.server);
        self.server.stop();
        let device = &self.server.device;
        for i in 0..device.pairs.len() {
            device.pair(i).drop_ring_at_shutdown();
        }
        device.log_report(event, title);
        let gone = Arc::downgrade(device);
        let name = self.config.device.name.clone();
        drop(self.server);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while gone.strong_count() > 0 {
            if std::time::Instant::now() > deadline {
                warn!("{name}: the device is still referenced 2 s after its stop; its TAP stays open until then");
                break;
            }
            thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// A device whose TAP is open and whose socket is bound; not served yet.
struct Opened {
    config: DeviceConfig,
    server: Arc<DeviceServer>,
    stop: Arc<Stop>,
}

/// Open one device and bind its socket.
fn open(d: &DeviceConfig, dir: &Path, acceptor: &Arc<Acceptor>) -> Result<Opened, StartError> {
    let device = Arc::new(open_device(d)?);
    let stop = Stop::new();
    let server = DeviceServer::new(
        device,
        d.socket.clone(),
        (!d.client).then_some(&d.socket_access),
        stop.clone(),
        dir.to_path_buf(),
        acceptor.clone(),
    )
    .map(Arc::new)
    .map_err(|source| StartError::Server {
        tap: d.device.name.clone(),
        source,
    })?;
    Ok(Opened {
        config: d.clone(),
        server,
        stop,
    })
}

impl Opened {
    /// Serve it: hand it to the accept loop (or, in client mode, start its
    /// thread).
    fn start(self) -> Result<Running, StartError> {
        self.server.start().map_err(|source| StartError::Server {
            tap: self.config.device.name.clone(),
            source,
        })?;
        Ok(Running {
            config: self.config,
            server: self.server,
            stop: self.stop,
            pending: None,
        })
    }

    /// Give up a device that was never served: its socket goes, its TAP
    /// closes when the last reference drops.
    fn discard(self) {
        self.server.stop();
    }
}

/// Start one device: open it, bind its socket and hand it to the accept
/// loop (or, in client mode, start its thread).
fn start(d: &DeviceConfig, dir: &Path, acceptor: &Arc<Acceptor>) -> Result<Running, StartError> {
    open(d, dir, acceptor)?.start()
}

/// Every device the daemon serves.
pub struct Devices {
    running: Vec<Running>,
    /// What a metrics scrape reads: kept equal to `running` by `publish`.
    exporter: Arc<Exporter>,
    /// The private directory of the relays' inner sockets.
    dir: PathBuf,
    /// The accept loop every listening device's socket waits in.
    acceptor: Arc<Acceptor>,
}

impl Devices {
    /// Start every device: open every TAP and bind every socket, call
    /// `before_threads` with the devices and the private directory (the
    /// privileges are lowered there, while no other thread exists), then
    /// start the accept loop and serve them. If anything fails, everything
    /// opened so far is closed and removed and the error returned.
    pub fn start(
        devs: &[DeviceConfig],
        before_threads: impl FnOnce(&[&Device], &Path) -> Result<(), StartError>,
    ) -> Result<Devices, StartError> {
        let dir = server::private_dir().map_err(StartError::PrivateDir)?;
        let give_up = |opened: Vec<Opened>, dir: &Path| {
            opened.into_iter().for_each(Opened::discard);
            let _ = std::fs::remove_dir_all(dir);
        };
        let acceptor = match Acceptor::new() {
            Ok(a) => a,
            Err(e) => {
                give_up(Vec::new(), &dir);
                return Err(e.into());
            }
        };
        let mut opened = Vec::with_capacity(devs.len());
        for d in devs {
            match open(d, &dir, &acceptor) {
                Ok(o) => opened.push(o),
                Err(e) => {
                    give_up(opened, &dir);
                    return Err(e);
                }
            }
        }
        let devices: Vec<&Device> = opened.iter().map(|o| &*o.server.device).collect();
        if let Err(e) = before_threads(&devices, &dir) {
            give_up(opened, &dir);
            return Err(e);
        }
        if let Err(e) = acceptor.spawn() {
            give_up(opened, &dir);
            return Err(e.into());
        }
        let mut all = Devices {
            running: Vec::new(),
            exporter: Arc::default(),
            dir,
            acceptor,
        };
        let mut opened = opened.into_iter();
        for o in opened.by_ref() {
            match o.start() {
                Ok(r) => all.running.push(r),
                Err(e) => {
                    opened.for_each(Opened::discard);
                    all.shutdown();
                    return Err(e);
                }
            }
        }
        all.publish();
        Ok(all)
    }

    /// The devices as metrics see them.
    pub fn exporter(&self) -> Arc<Exporter> {
        self.exporter.clone()
    }

    /// Tell the metrics which devices run now.
    fn publish(&self) {
        self.exporter
            .set(self.running.iter().map(|r| r.server.clone()).collect());
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Log every device's counters.
    pub fn log_reports(&self, event: ReportEvent, title: &str) {
        for r in &self.running {
            r.server.device.log_report(event, title);
        }
    }

    /// Change the running set to `new` (a configuration that parsed and
    /// passed its checks). Devices that fail to start are logged and left
    /// out; the others keep serving.
    pub fn reload(&mut self, new: &[DeviceConfig]) {
        let (mut kept, mut removed) = (Vec::new(), Vec::new());
        for r in self.running.drain(..) {
            match new.iter().find(|d| d.device.name == r.config.device.name) {
                Some(d) => kept.push((r, d)),
                None => removed.push(r),
            }
        }
        // Removed first: a new device may take a removed one's socket.
        for r in removed {
            let name = r.name().to_string();
            r.stop(
                &self.exporter,
                ReportEvent::Exit,
                &format!("{name}: removed by the reload; final counters"),
            );
        }
        let mut restart = Vec::new();
        for (mut r, d) in kept {
            if *d == r.config {
                // Unchanged. A change that was waiting has already told the
                // server to end after its frontend: it then restarts with
                // these (its own) settings instead of staying down.
                if r.pending.is_some() {
                    info!(
                        "{}: the waiting change was withdrawn; the device restarts as it was when its frontend leaves",
                        r.name()
                    );
                    r.pending = Some(d.clone());
                }
                self.running.push(r);
                continue;
            }
            // Set before looking at the connection (a store-buffering pair
            // with the connection's end, see `DeviceServer::connected`): a
            // frontend seen connected ends the device when it leaves, which
            // `apply_pending` sees (`ended`); one not seen is cut by the
            // restart below.
            r.server.leave_after_connection();
            if r.server.connected() {
                info!(
                    "{}: configuration changed; the change applies when the connected frontend leaves",
                    r.name()
                );
                r.pending = Some(d.clone());
                self.running.push(r);
            } else {
                restart.push((r, d.clone()));
            }
        }
        for (r, d) in restart {
            self.restart(r, d);
        }
        for d in new {
            if self
                .running
                .iter()
                .any(|r| r.config.device.name == d.device.name)
            {
                continue;
            }
            match start(d, &self.dir, &self.acceptor) {
                Ok(r) => {
                    info!("{}: added by the reload", d.device.name);
                    self.running.push(r);
                }
                Err(e) => error!("{}: not started: {}", d.device.name, e.explained()),
            }
        }
        self.publish();
    }

    /// Restart `r` with `d`; if `d` cannot start, go back to `r`'s configuration.
    fn restart(&mut self, r: Running, d: DeviceConfig) {
        let old = r.config.clone();
        let name = old.device.name.clone();
        r.stop(
            &self.exporter,
            ReportEvent::Exit,
            &format!("{name}: restarting with the changed configuration; counters"),
        );
        match start(&d, &self.dir, &self.acceptor) {
            Ok(n) => {
                info!("{name}: restarted with the changed configuration");
                self.running.push(n);
            }
            Err(e) => {
                error!(
                    "{name}: the changed configuration does not start: {}; back to the previous one",
                    e.explained()
                );
                match start(&old, &self.dir, &self.acceptor) {
                    Ok(n) => self.running.push(n),
                    Err(e) => error!(
                        "{name}: the previous configuration does not start either: {}; the device is stopped",
                        e.explained()
                    ),
                }
            }
        }
    }

    /// Whether a change waits for a frontend to leave.
    pub fn has_pending(&self) -> bool {
        self.running.iter().any(|r| r.pending.is_some())
    }

    /// Apply the waiting changes of devices whose frontend has left (the
    /// device ended after the connection).
    pub fn apply_pending(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let r = &self.running[i];
            if r.pending.is_none() || !r.server.ended() {
                i += 1;
                continue;
            }
            let mut r = self.running.remove(i);
            if let Some(d) = r.pending.take() {
                self.restart(r, d);
            }
            self.publish();
        }
    }

    /// Stop the devices whose TAP was deleted under them (a queue read or
    /// wrote EBADFD): their frontend is let go, their socket removed; the
    /// others keep serving. A reload (SIGHUP) starts such a device again,
    /// since it is in the file but no longer running.
    pub fn stop_gone_taps(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if !self.running[i].server.device.tap_gone() {
                i += 1;
                continue;
            }
            let r = self.running.remove(i);
            let name = r.name().to_string();
            error!(
                "{name}: its TAP was deleted under the daemon; the device stops (its frontend is let go, its socket removed); a reload (SIGHUP) starts it again"
            );
            r.stop(
                &self.exporter,
                ReportEvent::Exit,
                &format!("{name}: stopped, its TAP is gone; final counters"),
            );
            self.publish();
        }
    }

    /// Stop every device, then the accept loop, and remove the private
    /// directory.
    pub fn shutdown(mut self) {
        self.exporter.set(Vec::new());
        for r in &self.running {
            r.stop.request();
            r.server.interrupt();
        }
        // Closing a created TAP waits for an RCU barrier in the kernel
        // (~15 ms each): up to TEARDOWN_THREADS threads take devices from
        // one list; this thread works the list too, so nothing is left
        // should no thread start.
        let n = self.running.len();
        let queue = std::sync::Mutex::new(std::mem::take(&mut self.running));
        let work = || loop {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match next {
                Some(r) => r.stop(&self.exporter, ReportEvent::Exit, "final counters"),
                None => break,
            }
        };
        thread::scope(|scope| {
            for _ in 1..n.min(TEARDOWN_THREADS) {
                if let Err(e) = thread::Builder::new()
                    .name("teardown".into())
                    .spawn_scoped(scope, work)
                {
                    warn!("cannot start a teardown thread: {e}");
                    break;
                }
            }
            work();
        });
        self.acceptor.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
