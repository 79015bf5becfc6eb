//! `vhost-tap`: the daemon binary. Command line, logging, signals.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use clap::Parser;
use log::{error, info, warn};
use toml::Spanned;

use vhost_tap::config::{self, DeviceConfig, RawDevice};
use vhost_tap::counters::ReportEvent;
use vhost_tap::device::Device;
use vhost_tap::server::{self, DeviceServer, Stop};
use vhost_tap::settings::Mode;

/// A vhost-user-net backend bridging guests to host TAP devices, with
/// backpressure instead of tail drops.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// vhost-user socket to listen on (one device; use --config for several).
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// TAP device to create, or to attach to if it exists.
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    tap: Option<String>,
    /// Queue pairs (one TAP queue and one worker thread each).
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_QUEUES as i64)]
    queues: i64,
    /// Largest virtqueue size offered to the guest (power of two).
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_QUEUE_SIZE as i64)]
    queue_size: i64,
    /// Frames held between the TAP reader and the RX filler, per queue pair.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_RING_SIZE as i64)]
    ring_size: i64,
    /// Guest MAC address (default: derived from the TAP name).
    #[arg(long, value_name = "MAC")]
    mac: Option<String>,
    /// MTU reported to the guest and set on a TAP we create.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MTU as i64)]
    mtu: i64,
    /// Host → guest queueing: auto, fq-codel or backpressure (see docs/queueing.md).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    mode: String,
    /// FQ-CoDel: flow buckets.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_FQ_FLOWS as i64)]
    fq_flows: i64,
    /// FQ-CoDel: most frames queued per queue pair.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_FQ_LIMIT as i64)]
    fq_limit: i64,
    /// FQ-CoDel: most bytes queued per queue pair.
    #[arg(long, value_name = "BYTES", default_value_t = config::DEFAULT_FQ_MEMORY_LIMIT as i64)]
    fq_memory_limit: i64,
    /// FQ-CoDel: mark ECN-capable frames instead of dropping them.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    fq_ecn: bool,
    /// txqueuelen of the TAP (the tun driver's ring size).
    #[arg(long, value_name = "N")]
    txqueuelen: Option<i64>,
    /// Ask for IFF_BACKPRESSURE when the kernel offers it (Linux 7.3+).
    /// `false` keeps the tun driver's tail drops, as a baseline to compare with.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    iff_backpressure: bool,
    /// Owner of the socket file (user name or uid; default: the daemon's user).
    #[arg(long, value_name = "USER")]
    socket_owner: Option<String>,
    /// Group of the socket file (group name or gid), e.g. the group QEMU runs in.
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Mode of the socket file, octal (e.g. 0660; default: 0777 minus the umask).
    #[arg(long, value_name = "MODE")]
    socket_mode: Option<String>,
    /// TOML file with one or more [[device]] tables (see docs/config.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Why the daemon could not start. Exit status 2 for a usage or
/// configuration error, 1 for the rest.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("give --socket PATH and --tap NAME, or --config FILE")]
    Usage,
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot create the private socket directory: {0}")]
    PrivateDir(std::io::Error),
    #[error("{source}")]
    Tap { tap: String, source: tap::Error },
    #[error("{tap}: {source}")]
    Device {
        tap: String,
        source: vhost_tap::device::DeviceError,
    },
    #[error("{tap}: {source}")]
    Server {
        tap: String,
        source: server::ServerError,
    },
    #[error("{tap}: cannot start the device's thread: {source}")]
    Thread { tap: String, source: std::io::Error },
}

impl StartError {
    fn exit_code(&self) -> ExitCode {
        match self {
            StartError::Usage | StartError::Config(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

fn devices(cli: &Cli) -> Result<Vec<DeviceConfig>, StartError> {
    if let Some(path) = &cli.config {
        return Ok(config::load_file(path)?);
    }
    let (Some(socket), Some(tap)) = (&cli.socket, &cli.tap) else {
        return Err(StartError::Usage);
    };
    fn s<T>(v: T) -> Option<Spanned<T>> {
        Some(Spanned::new(0..0, v))
    }
    let raw = RawDevice {
        socket: s(socket.clone()),
        tap: Some(Spanned::new(0..0, tap.clone())),
        queues: s(cli.queues),
        queue_size: s(cli.queue_size),
        ring_size: s(cli.ring_size),
        mac: cli.mac.clone().map(|m| Spanned::new(0..0, m)),
        mtu: s(cli.mtu),
        mode: Some(Spanned::new(0..0, cli.mode.clone())),
        txqueuelen: cli.txqueuelen.and_then(s),
        fq_flows: s(cli.fq_flows),
        fq_limit: s(cli.fq_limit),
        fq_memory_limit: s(cli.fq_memory_limit),
        fq_ecn: s(cli.fq_ecn),
        iff_backpressure: s(cli.iff_backpressure),
        socket_owner: cli.socket_owner.clone().and_then(s),
        socket_group: cli.socket_group.clone().and_then(s),
        socket_mode: cli.socket_mode.clone().and_then(s),
    };
    Ok(vec![raw.check_cli()?])
}

/// Every signal whose default action would end the daemon without cleanup
/// and that someone may send on purpose: taken by the main thread.
const HANDLED_SIGNALS: [i32; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
];

/// Block the signals we handle in every thread; the main thread takes them with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only modify it and this
    // thread's mask, before any other thread exists.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGUSR2 => "SIGUSR2".into(),
        libc::SIGALRM => "SIGALRM".into(),
        n => n.to_string(),
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is a valid, initialised sigset_t and `sig` a valid out pointer.
    let r = unsafe { libc::sigwait(set, &mut sig) };
    if r != 0 {
        return libc::SIGTERM;
    }
    sig
}

fn open_device(d: &DeviceConfig) -> Result<Device, StartError> {
    let dev = &d.device;
    let cfg = tap::TapConfig {
        name: dev.name.clone(),
        queues: dev.queue_pairs,
        vnet_hdr_size: vhost_tap::datapath::vnet::HDR_LEN as i32,
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
    let device = Device::new(dev.clone(), t).map_err(|source| StartError::Device {
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            e.exit_code()
        }
    }
}

/// Open every device, serve them until SIGTERM/SIGINT, shut down cleanly.
fn run(cli: &Cli) -> Result<(), StartError> {
    let devs = devices(cli)?;
    let sigs = block_signals();
    let stop = Stop::new();
    let dir = server::private_dir().map_err(StartError::PrivateDir)?;
    let started = start_servers(&devs, &stop, &dir);
    let (servers, threads) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    // Every socket is bound and listening (connects queue in the backlog
    // until the device thread accepts): ready.
    vhost_tap::notify::ready(servers.len());

    loop {
        match wait_signal(&sigs) {
            libc::SIGUSR1 => {
                for s in &servers {
                    s.device.log_report(ReportEvent::Signal, "counters");
                }
            }
            sig @ (libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) => {
                info!("signal {}: shutting down", signal_name(sig));
                vhost_tap::notify::stopping();
                break;
            }
            sig => warn!(
                "signal {}: ignored (SIGUSR1 prints the counters, SIGTERM/SIGINT/SIGQUIT shut down)",
                signal_name(sig)
            ),
        }
    }
    stop_servers(&stop, &servers, threads);
    for s in servers {
        for i in 0..s.device.pairs.len() {
            s.device.pair(i).drop_ring_at_shutdown();
        }
        s.device.log_report(ReportEvent::Exit, "final counters");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

type Servers = (Vec<Arc<DeviceServer>>, Vec<thread::JoinHandle<()>>);

/// Open every device and start its server thread; on failure, stop those
/// already started.
fn start_servers(
    devs: &[DeviceConfig],
    stop: &Arc<Stop>,
    dir: &Path,
) -> Result<Servers, StartError> {
    let mut servers = Vec::new();
    let mut threads = Vec::new();
    let mut start = |d: &DeviceConfig| -> Result<(), StartError> {
        let device = Arc::new(open_device(d)?);
        let s = DeviceServer::new(
            device,
            d.socket.clone(),
            &d.socket_access,
            stop.clone(),
            dir.to_path_buf(),
        )
        .map(Arc::new)
        .map_err(|source| StartError::Server {
            tap: d.device.name.clone(),
            source,
        })?;
        let runner = s.clone();
        let t = thread::Builder::new()
            .name(format!("dev-{}", d.device.name))
            .spawn(move || runner.run())
            .map_err(|source| StartError::Thread {
                tap: d.device.name.clone(),
                source,
            })?;
        servers.push(s);
        threads.push(t);
        Ok(())
    };
    for d in devs {
        if let Err(e) = start(d) {
            stop_servers(stop, &servers, threads);
            return Err(e);
        }
    }
    Ok((servers, threads))
}

/// Ask every server to stop, cut their connections, wait for their threads.
fn stop_servers(stop: &Stop, servers: &[Arc<DeviceServer>], threads: Vec<thread::JoinHandle<()>>) {
    stop.request();
    for s in servers {
        s.interrupt();
    }
    for t in threads {
        let _ = t.join();
    }
}
