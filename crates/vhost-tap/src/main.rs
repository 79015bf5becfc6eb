//! `vhost-tap`: the daemon binary. Command line, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use log::{error, info, warn};
use toml::Spanned;

use vhost_tap::config::{self, Config, DeviceConfig, RawDevice};
use vhost_tap::counters::ReportEvent;
use vhost_tap::daemon::{Devices, StartError};
use vhost_tap::metrics::{MetricsAddr, MetricsListener};
use vhost_tap::privileges::{self, Needs, Privileges};

/// A vhost-user-net backend bridging guests to host TAP devices, with
/// backpressure instead of tail drops.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// Frames held between the TAP reader and the RX filler, per queue pair
    /// (default 256; 32 in backpressure mode with IFF_BACKPRESSURE).
    #[arg(long, value_name = "N")]
    ring_size: Option<i64>,
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
    /// txqueuelen of the TAP (the tun driver's ring size). Default: left as
    /// it is, but 64 on a TAP the daemon created while backpressure mode runs
    /// with IFF_BACKPRESSURE (the queue then forms in the qdisc).
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
    /// Client mode: connect to the frontend's socket (QEMU's
    /// `-chardev socket,server=on,wait=off`) and reconnect when it restarts.
    #[arg(long)]
    client: bool,
    /// Host → guest rate limit, bytes per second (Ethernet bytes; e.g.
    /// 125000000 for 1 Gbit/s). Frames wait, never drop (docs/operations.md).
    #[arg(long, value_name = "BYTES")]
    rx_rate_bytes: Option<i64>,
    /// Host → guest rate limit, frames per second.
    #[arg(long, value_name = "N")]
    rx_rate_frames: Option<i64>,
    /// Host → guest burst in bytes (default: 50 ms of --rx-rate-bytes).
    #[arg(long, value_name = "BYTES")]
    rx_burst_bytes: Option<i64>,
    /// Host → guest burst in frames (default: 50 ms of --rx-rate-frames).
    #[arg(long, value_name = "N")]
    rx_burst_frames: Option<i64>,
    /// Guest → host rate limit, bytes per second.
    #[arg(long, value_name = "BYTES")]
    tx_rate_bytes: Option<i64>,
    /// Guest → host rate limit, frames per second.
    #[arg(long, value_name = "N")]
    tx_rate_frames: Option<i64>,
    /// Guest → host burst in bytes (default: 50 ms of --tx-rate-bytes).
    #[arg(long, value_name = "BYTES")]
    tx_burst_bytes: Option<i64>,
    /// Guest → host burst in frames (default: 50 ms of --tx-rate-frames).
    #[arg(long, value_name = "N")]
    tx_burst_frames: Option<i64>,
    /// Serve Prometheus metrics at ADDR (127.0.0.1:9101, [::1]:9101 or
    /// unix:PATH; GET /metrics). Overrides the config file's `metrics`.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Once the devices are open, run as this user (name or uid), keeping
    /// only the capabilities still needed. Overrides the file's `user`.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// ... and this group (default: the user's primary group). Overrides
    /// the file's `group`.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Confine the data-path threads with a seccomp filter (default true;
    /// `false` for debugging). Overrides the file's `seccomp`.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    seccomp: Option<bool>,
    /// TOML file with one or more [[device]] tables (see docs/config.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The configuration: the file's, or one device from the command line;
/// `--metrics`, `--user`, `--group` and `--seccomp` over the file's keys.
fn configuration(cli: &Cli) -> Result<Config, StartError> {
    let mut c = match &cli.config {
        Some(path) => config::load_file(path)?,
        None => Config {
            metrics: None,
            privileges: Privileges::default(),
            devices: vec![cli_device(cli)?],
        },
    };
    cli_privileges(cli, &mut c.privileges)?;
    if let Some(m) = &cli.metrics {
        c.metrics = Some(
            MetricsAddr::parse(m).map_err(|message| config::ConfigError {
                file: None,
                line: None,
                key: Some("--metrics".into()),
                message,
            })?,
        );
    }
    Ok(c)
}

/// `--user`, `--group`, `--seccomp` over `p`.
fn cli_privileges(cli: &Cli, p: &mut Privileges) -> Result<(), StartError> {
    let err = |key: &str, message: String| config::ConfigError {
        file: None,
        line: None,
        key: Some(key.into()),
        message,
    };
    if let Some(u) = &cli.user {
        p.user = Some(privileges::user(u).map_err(|e| err("--user", e))?);
    }
    if let Some(g) = &cli.group {
        p.group = Some(vhost_tap::socket::group_id(g).map_err(|e| err("--group", e))?);
    }
    if let Some(on) = cli.seccomp {
        p.seccomp = on;
    }
    p.check().map_err(|e| err("--user", e))?;
    Ok(())
}

fn cli_device(cli: &Cli) -> Result<DeviceConfig, StartError> {
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
        ring_size: cli.ring_size.and_then(s),
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
        client: s(cli.client),
        rx_rate_bytes: cli.rx_rate_bytes.and_then(s),
        rx_rate_frames: cli.rx_rate_frames.and_then(s),
        rx_burst_bytes: cli.rx_burst_bytes.and_then(s),
        rx_burst_frames: cli.rx_burst_frames.and_then(s),
        tx_rate_bytes: cli.tx_rate_bytes.and_then(s),
        tx_rate_frames: cli.tx_rate_frames.and_then(s),
        tx_burst_bytes: cli.tx_burst_bytes.and_then(s),
        tx_burst_frames: cli.tx_burst_frames.and_then(s),
    };
    Ok(raw.check_cli()?)
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

/// The next blocked signal of `set`, or `None` after `timeout`.
fn wait_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<i32> {
    loop {
        let r = match timeout {
            Some(t) => {
                let ts = libc::timespec {
                    tv_sec: t.as_secs() as libc::time_t,
                    tv_nsec: t.subsec_nanos().into(),
                };
                // SAFETY: `set` and `ts` are valid for the call; no siginfo is asked for.
                unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) }
            }
            // SAFETY: as above, without a timeout.
            None => unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) },
        };
        if r >= 0 {
            return Some(r);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => return None,
            Some(libc::EINTR) => continue,
            // Cannot happen with a valid set; shutting down is the safe answer.
            _ => return Some(libc::SIGTERM),
        }
    }
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Show a running daemon's devices and queues, read from its metrics
    /// endpoint (the daemon must run with --metrics or `metrics`).
    Status {
        /// The endpoint: ADDR:PORT or unix:PATH.
        #[arg(long, value_name = "ADDR", conflicts_with = "config")]
        metrics: Option<String>,
        /// Read the endpoint from this configuration file's `metrics`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// One JSON document instead of lines for people.
        #[arg(long)]
        json: bool,
    },
}

/// `vhost-tap status`: 0 shown, 1 the daemon did not answer, 2 usage.
fn status(metrics: &Option<String>, config: &Option<PathBuf>, json: bool) -> ExitCode {
    let addr = match (metrics, config) {
        (Some(m), _) => MetricsAddr::parse(m).map_err(|e| format!("--metrics: {e}")),
        (None, Some(path)) => config::load_file(path)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                c.metrics
                    .ok_or_else(|| format!("{}: no `metrics` key", path.display()))
            }),
        (None, None) => Err("give --metrics ADDR or --config FILE".into()),
    };
    let addr = match addr {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vhost-tap status: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match vhost_tap::status::fetch(&addr) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vhost-tap status: {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let devs = vhost_tap::status::summarize(&vhost_tap::status::parse(&text));
    if json {
        match serde_json::to_string_pretty(&devs) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("vhost-tap status: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", vhost_tap::status::human(&devs));
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    // A fixed mmap threshold: glibc raises it after the first large block is
    // freed (a device set-up frees some), and every later
    // ring arena (~0.5 MiB per queue pair) would come zeroed — so touched —
    // from the heap instead of untouched from mmap. With 1000 idle devices
    // that was 560 MiB of RSS; fixed, pages are touched only when used.
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    if let Some(Command::Status {
        metrics,
        config,
        json,
    }) = &cli.command
    {
        return status(metrics, config, *json);
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            // 2: a usage or configuration error; 1: the host refused (TAP, socket, thread).
            if e.is_config() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Open every device, serve them until SIGTERM/SIGINT/SIGQUIT, reload the
/// configuration file on SIGHUP, shut down cleanly.
fn run(cli: &Cli) -> Result<(), StartError> {
    let cfg = configuration(cli)?;
    let sigs = block_signals();
    vhost_tap::seccomp::prepare(cfg.privileges.seccomp)?;
    // Bound now, served once threads may start: see `MetricsListener`.
    let metrics = match &cfg.metrics {
        Some(addr) => Some(
            MetricsListener::bind(addr).map_err(|source| StartError::Metrics {
                addr: addr.to_string(),
                source,
            })?,
        ),
        None => None,
    };
    let mut all = Devices::start(&cfg.devices, |devices, private_dir| {
        let needs = Needs::of(cli.config.is_some(), &cfg.devices, devices);
        privileges::drop_to(&cfg.privileges, &needs, &[private_dir]).map_err(StartError::from)
    })?;
    let metrics = match (metrics, &cfg.metrics) {
        (Some(listener), Some(addr)) => match listener.serve(all.exporter()) {
            Ok(m) => Some(m),
            Err(e) => {
                all.shutdown();
                return Err(StartError::Metrics {
                    addr: addr.to_string(),
                    source: e,
                });
            }
        },
        _ => None,
    };
    // Every socket is bound and listening (connects queue in the backlog
    // until the accept loop takes them): ready.
    vhost_tap::notify::ready(all.len());

    loop {
        // Look at the devices twice a second while a change waits for a
        // frontend to leave, else every second (a TAP deleted under a device).
        let timeout = if all.has_pending() {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        };
        let Some(sig) = wait_signal(&sigs, Some(timeout)) else {
            all.apply_pending();
            all.stop_gone_taps();
            continue;
        };
        match sig {
            libc::SIGUSR1 => all.log_reports(ReportEvent::Signal, "counters"),
            libc::SIGHUP => reload(cli, &mut all, &cfg.metrics, &cfg.privileges),
            sig @ (libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) => {
                info!("signal {}: shutting down", signal_name(sig));
                vhost_tap::notify::stopping();
                break;
            }
            sig => warn!(
                "signal {}: ignored (SIGUSR1 prints the counters, SIGHUP reloads --config, SIGTERM/SIGINT/SIGQUIT shut down)",
                signal_name(sig)
            ),
        }
        all.apply_pending();
        all.stop_gone_taps();
    }
    if let Some(m) = metrics {
        m.stop();
    }
    all.shutdown();
    Ok(())
}

/// SIGHUP: read the configuration file again and change the running set
/// to it; a file that does not parse or check leaves everything as it is.
fn reload(cli: &Cli, all: &mut Devices, metrics: &Option<MetricsAddr>, privileges: &Privileges) {
    let Some(path) = &cli.config else {
        warn!("signal SIGHUP: nothing to reload (the devices come from the command line, not --config)");
        return;
    };
    vhost_tap::notify::reloading();
    match config::load_file(path) {
        Ok(c) => {
            info!("signal SIGHUP: reloading {}", path.display());
            if cli.metrics.is_none() && c.metrics != *metrics {
                warn!("metrics: a changed address applies at the next start, not at a reload");
            }
            let mut p = c.privileges.clone();
            if cli_privileges(cli, &mut p).is_ok() && p != *privileges {
                warn!("user, group, seccomp: a change applies at the next start, not at a reload");
            }
            all.reload(&c.devices);
            info!("reload of {} done: {} device(s)", path.display(), all.len());
        }
        Err(e) => error!("signal SIGHUP: {e}; the running devices are left as they are"),
    }
    vhost_tap::notify::ready(all.len());
}
