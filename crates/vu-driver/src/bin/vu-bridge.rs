//! `vu-bridge`: a slow guest with a real TCP stack.
//!
//! Connects to a vhost-user-net backend as the guest (with [`vu_driver`]),
//! opens a second TAP (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, 12-byte header),
//! optionally moves it into a network namespace and gives it an address, and
//! forwards between the two:
//!
//! - **backend RX → TAP2, rate-limited** (token bucket, `--rate-mbit`). The
//!   bridge behaves like a guest that cannot keep up: it posts a fixed number
//!   of RX buffers (`--rx-buffers`) and re-posts a buffer only once the frame
//!   in it has been written to TAP2 at the allowed rate. It never drops a
//!   frame: when it is slow it simply stops taking frames, so the backlog
//!   forms in front of it (in the backend, the TAP, the host qdisc).
//! - **TAP2 → backend TX**, not rate-limited (the ACKs of the TCP flows).
//!   When the TX ring is full it stops reading TAP2 until chains complete.
//!
//! Event-driven: one epoll over the RX and TX call eventfds, the TAP2 fd
//! (edge-triggered), a timerfd (next frame's tokens) and a signalfd
//! (SIGTERM/SIGINT end, SIGUSR1 prints the counters). No busy polling.
//!
//! Offloads are not negotiated (no GUEST_CSUM/TSO): the backend's TAP and
//! TAP2 carry plain, checksummed, MTU-sized frames; the virtio-net header is
//! passed through unchanged.
//!
//! Prints `vu-bridge: ready ...` on stderr once forwarding, and on SIGUSR1
//! and at exit its counters twice: `vu-bridge: counters: k=v ...` for people
//! and `vu-bridge: counters-json {"event":"signal"|"exit",...}` for tools
//! (the tests and `bench/bench.py` read only the JSON form).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use vu_driver::{Driver, DriverConfig};

/// Bytes of `virtio_net_hdr_v1`.
const HDR: usize = 12;
/// Ethernet header.
const ETH_HLEN: usize = 14;
/// RX buffer size posted to the backend: an MTU-sized frame plus header fits.
const DEFAULT_RX_BUF: usize = 2048;
/// Frames read from TAP2 per loop iteration before RX gets its turn again.
const TX_BUDGET: usize = 256;

const USAGE: &str = "\
usage: vu-bridge --socket PATH --tap NAME [options]
  --socket PATH        the backend's vhost-user socket (we are the guest)
  --tap NAME           TAP to create on our side (TAP2)
  --netns NS           move TAP2 into network namespace NS (must exist)
  --addr CIDR          address for TAP2 (e.g. 198.18.200.2/24), link up
  --rate-mbit R        host->guest forwarding rate, Mbit/s of Ethernet frames (default 50)
  --burst-bytes N      token bucket depth (default: 2 ms at the rate, at least 2 frames)
  --rx-buffers N       RX buffers the slow guest owns (default 32)
  --rx-buf-len N       bytes per RX buffer (default 2048)
  --queue-size N       virtqueue size (default 256)";

struct Args {
    socket: PathBuf,
    tap: String,
    netns: Option<String>,
    addr: Option<String>,
    rate_mbit: f64,
    burst_bytes: Option<f64>,
    rx_buffers: usize,
    rx_buf_len: usize,
    queue_size: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut socket = None;
    let mut tap = None;
    let mut a = Args {
        socket: PathBuf::new(),
        tap: String::new(),
        netns: None,
        addr: None,
        rate_mbit: 50.0,
        burst_bytes: None,
        rx_buffers: 32,
        rx_buf_len: DEFAULT_RX_BUF,
        queue_size: 256,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "-h" || k == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let num = |what: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("{what}: {v:?} is not a positive number"))
        };
        match k.as_str() {
            "--socket" => socket = Some(PathBuf::from(&v)),
            "--tap" => tap = Some(v.clone()),
            "--netns" => a.netns = Some(v.clone()),
            "--addr" => a.addr = Some(v.clone()),
            "--rate-mbit" => a.rate_mbit = num("--rate-mbit")?,
            "--burst-bytes" => a.burst_bytes = Some(num("--burst-bytes")?),
            "--rx-buffers" => a.rx_buffers = num("--rx-buffers")? as usize,
            "--rx-buf-len" => a.rx_buf_len = num("--rx-buf-len")? as usize,
            "--queue-size" => {
                a.queue_size = u16::try_from(num("--queue-size")? as u64)
                    .map_err(|_| "--queue-size too large".to_string())?
            }
            _ => return Err(format!("unknown option {k}\n{USAGE}")),
        }
    }
    a.socket = socket.ok_or("--socket is required")?;
    a.tap = tap.ok_or("--tap is required")?;
    if a.rx_buffers == 0 || a.rx_buffers > usize::from(a.queue_size) {
        return Err(format!(
            "--rx-buffers must be 1..={} (the queue size)",
            a.queue_size
        ));
    }
    if a.rx_buf_len < HDR + ETH_HLEN {
        return Err("--rx-buf-len too small".into());
    }
    Ok(a)
}

/// A token bucket in bytes. Tokens may go negative by one frame, so frames
/// larger than the depth still pass (at the average rate).
struct Bucket {
    /// Bytes per second.
    rate: f64,
    depth: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate_bytes_per_s: f64, depth: f64, now: Instant) -> Bucket {
        Bucket {
            rate: rate_bytes_per_s,
            depth,
            tokens: depth,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.depth);
        self.last = now;
    }

    /// Whether a frame of `len` bytes may go now (after `refill`).
    fn allows(&self, len: usize) -> bool {
        self.tokens >= (len as f64).min(self.depth)
    }

    fn take(&mut self, len: usize) {
        self.tokens -= len as f64;
    }

    /// How long until a frame of `len` bytes may go.
    fn wait(&self, len: usize) -> Duration {
        let need = (len as f64).min(self.depth) - self.tokens;
        if need <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(need / self.rate)
        }
    }
}

#[derive(Default, Debug)]
struct Counters {
    /// Frames (and Ethernet bytes) received from the backend and written to TAP2.
    rx_frames: u64,
    rx_bytes: u64,
    /// Frames (and Ethernet bytes) read from TAP2 and sent to the backend.
    tx_frames: u64,
    tx_bytes: u64,
    /// Frames the bridge could not forward (TAP2 write error other than
    /// EAGAIN, TAP2 frame too large for a TX slot, runt from TAP2). Expected 0.
    refused: u64,
    /// RX used entries the driver could not turn into frames (backend bug). Expected 0.
    rx_malformed: u64,
    /// Times a TAP2 write returned EAGAIN (the frame was kept and retried).
    tap2_write_blocked: u64,
    /// Times reading TAP2 paused because the backend's TX ring was full.
    tx_ring_full: u64,
    /// Times forwarding waited for tokens (the guest was "slow").
    rate_waits: u64,
    /// Most frames held by the bridge (received, not yet written out).
    pending_high_water: u64,
    /// Most RX buffers the backend filled in one reap.
    rx_batch_high_water: u64,
}

impl Counters {
    /// `(name, value)` of every counter, in one order for both forms.
    fn fields(&self) -> [(&'static str, u64); 11] {
        [
            ("rx_frames", self.rx_frames),
            ("rx_bytes", self.rx_bytes),
            ("tx_frames", self.tx_frames),
            ("tx_bytes", self.tx_bytes),
            ("refused", self.refused),
            ("rx_malformed", self.rx_malformed),
            ("tap2_write_blocked", self.tap2_write_blocked),
            ("tx_ring_full", self.tx_ring_full),
            ("rate_waits", self.rate_waits),
            ("pending_high_water", self.pending_high_water),
            ("rx_batch_high_water", self.rx_batch_high_water),
        ]
    }

    /// The report in both forms, two lines: `vu-bridge: counters: k=v ...`
    /// for people and `vu-bridge: counters-json {"event":..,k:v,...}` (one
    /// JSON object, [`JSON_TAG`]) for tools; `extra` are levels of the moment
    /// (frames held, buffers posted).
    fn report(&self, event: &str, extra: &[(&str, u64)]) -> String {
        let all = self.fields().into_iter().chain(extra.iter().copied());
        let human: Vec<String> = all.clone().map(|(k, v)| format!("{k}={v}")).collect();
        let mut json = serde_json::Map::new();
        json.insert("event".into(), event.into());
        for (k, v) in all {
            json.insert(k.into(), v.into());
        }
        format!(
            "vu-bridge: counters: {}\nvu-bridge: {JSON_TAG}{}",
            human.join(" "),
            serde_json::Value::Object(json)
        )
    }
}

/// The marker in front of the JSON form of a report (as the daemon's).
const JSON_TAG: &str = "counters-json ";

/// Minimal stderr logger for the `log` calls inside vu-driver and tap.
struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("vu-bridge: [{}] {}: {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// Epoll tokens.
const EV_RX_CALL: u64 = 1;
const EV_TX_CALL: u64 = 2;
const EV_TAP: u64 = 3;
const EV_TIMER: u64 = 4;
const EV_SIGNAL: u64 = 5;

fn epoll_add(ep: RawFd, fd: RawFd, events: u32, token: u64) -> Result<(), String> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: ep and fd are open descriptors owned by this process; ev is a
    // valid epoll_event for the call.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(os_err("epoll_ctl ADD"));
    }
    Ok(())
}

/// Drains a non-blocking fd's 8-byte counter (eventfd, timerfd).
fn drain_counter(fd: RawFd) {
    let mut v = 0u64;
    // SAFETY: reading 8 bytes into a u64 we own; fd is non-blocking, an
    // EAGAIN result is fine and ignored.
    let _ = unsafe { libc::read(fd, std::ptr::addr_of_mut!(v).cast(), 8) };
}

/// Arms the one-shot timerfd `d` from now (a zero duration disarms it, so use
/// at least 1 µs).
fn arm_timer(fd: RawFd, d: Duration) {
    let d = d.max(Duration::from_micros(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: fd is our timerfd; spec is a valid itimerspec; the old value
    // pointer may be null.
    unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) };
}

/// One frame received from the backend, waiting for its tokens.
struct Held {
    hdr: [u8; HDR],
    data: Vec<u8>,
    /// RX buffers it occupies (re-posted once it is written out).
    buffers: usize,
}

fn main() -> ExitCode {
    let level = if std::env::var_os("RUST_LOG").is_some() {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    let logger: &'static StderrLog = Box::leak(Box::new(StderrLog(level)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vu-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vu-bridge: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<(), String> {
    // Signals first, so a SIGTERM during setup is not lost.
    // SAFETY: sigset_t is plain data, initialised by sigemptyset; the calls
    // only modify it and this (single) thread's mask.
    let sfd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
    };
    if sfd < 0 {
        return Err(os_err("signalfd"));
    }

    // TAP2: created here, moved into the namespace after opening (the fd
    // keeps working across the move).
    let tap = tap::Tap::open(&tap::TapConfig::new(a.tap.clone()))
        .map_err(|e| format!("TAP {}: {e}", a.tap))?;
    let tname = tap.name().to_string();
    let ipn: Vec<&str> = match &a.netns {
        Some(ns) => {
            run_ip(&["link", "set", &tname, "netns", ns])?;
            vec!["-n", ns]
        }
        None => vec![],
    };
    let ip_in = |rest: &[&str]| -> Result<(), String> {
        let mut v = ipn.clone();
        v.extend_from_slice(rest);
        run_ip(&v)
    };
    if let Some(addr) = &a.addr {
        ip_in(&["addr", "add", addr, "dev", &tname])?;
    }
    ip_in(&["link", "set", &tname, "up"])?;
    if a.netns.is_some() {
        ip_in(&["link", "set", "lo", "up"])?;
    }

    let mut drv = Driver::connect(DriverConfig {
        socket: a.socket.clone(),
        queue_pairs: 1,
        queue_size: a.queue_size,
        mrg_rxbuf: true,
        event_idx: true,
        offloads: false,
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;

    // SAFETY: plain syscalls creating new fds; results checked below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(os_err("epoll_create1"));
    }
    // SAFETY: as above.
    let tfd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if tfd < 0 {
        return Err(os_err("timerfd_create"));
    }
    let q = tap.queue(0);
    let in_ = libc::EPOLLIN as u32;
    epoll_add(ep, drv.call_fd(0), in_, EV_RX_CALL)?;
    epoll_add(ep, drv.call_fd(1), in_, EV_TX_CALL)?;
    epoll_add(
        ep,
        q.as_raw_fd(),
        in_ | libc::EPOLLOUT as u32 | libc::EPOLLET as u32,
        EV_TAP,
    )?;
    epoll_add(ep, tfd, in_, EV_TIMER)?;
    epoll_add(ep, sfd, in_, EV_SIGNAL)?;

    let rate = a.rate_mbit * 1e6 / 8.0;
    let depth = a.burst_bytes.unwrap_or((rate * 0.002).max(2.0 * 1514.0));
    let mut bucket = Bucket::new(rate, depth, Instant::now());

    let mut c = Counters::default();
    let buf_len = a.rx_buf_len;
    let mut posted = drv.post_rx(0, a.rx_buffers, buf_len);
    if posted != a.rx_buffers {
        return Err(format!("posted {posted} of {} RX buffers", a.rx_buffers));
    }
    let mut held: VecDeque<Held> = VecDeque::new();
    let mut to_repost = 0usize;
    let mut tap_readable = true;
    let mut tap_writable = true;
    let mut txbuf = vec![0u8; HDR + 65536];
    let mut tx_done = drv.tx_completed(0);

    eprintln!(
        "vu-bridge: ready tap={tname} netns={} rate={} Mbit/s burst={depth:.0} B rx_buffers={} \
         rx_buf_len={buf_len} features={:#x}",
        a.netns.as_deref().unwrap_or("-"),
        a.rate_mbit,
        a.rx_buffers,
        drv.acked_features()
    );

    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
    let mut busy = true; // first pass: look at everything
    'main: loop {
        let timeout = if busy { 0 } else { -1 };
        // SAFETY: events is a valid array of 8 epoll_events for the kernel to fill.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 8, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("epoll_wait: {e}"));
        }
        busy = false;
        for ev in &events[..n as usize] {
            let (token, bits) = (ev.u64, ev.events);
            match token {
                EV_RX_CALL => drain_counter(drv.call_fd(0)),
                EV_TX_CALL => drain_counter(drv.call_fd(1)),
                EV_TIMER => drain_counter(tfd),
                EV_TAP => {
                    if bits & (libc::EPOLLIN as u32) != 0 {
                        tap_readable = true;
                    }
                    if bits & (libc::EPOLLOUT as u32) != 0 {
                        tap_writable = true;
                    }
                }
                EV_SIGNAL => loop {
                    // SAFETY: signalfd_siginfo is plain data; we read exactly
                    // its size from our non-blocking signalfd.
                    let mut si: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
                    let sz = std::mem::size_of::<libc::signalfd_siginfo>();
                    // SAFETY: si is a valid, writable buffer of sz bytes.
                    let r = unsafe { libc::read(sfd, std::ptr::addr_of_mut!(si).cast(), sz) };
                    if r != sz as isize {
                        break;
                    }
                    if si.ssi_signo == libc::SIGUSR1 as u32 {
                        c.rx_malformed = drv.rx_malformed();
                        let now = [
                            ("held", held.len() as u64),
                            ("rx_buffers_posted", posted as u64),
                        ];
                        eprintln!("{}", c.report("signal", &now));
                    } else {
                        eprintln!("vu-bridge: signal {}: stopping", si.ssi_signo);
                        break 'main;
                    }
                },
                _ => {}
            }
        }

        // TX completions (loop until a reap finds nothing: then used_event is
        // current and the backend signals the next completion).
        loop {
            let d = drv.tx_completed(0);
            if d == tx_done {
                break;
            }
            tx_done = d;
        }

        // RX: take what the backend filled (same loop-until-empty rule).
        loop {
            let frames = drv.recv(0);
            if frames.is_empty() {
                break;
            }
            c.rx_batch_high_water = c.rx_batch_high_water.max(frames.len() as u64);
            for f in frames {
                let b = usize::from(f.num_buffers.max(1));
                posted = posted.saturating_sub(b);
                held.push_back(Held {
                    hdr: f.hdr,
                    data: f.data,
                    buffers: b,
                });
            }
        }
        c.pending_high_water = c.pending_high_water.max(held.len() as u64);

        // RX forwarding at the allowed rate; a buffer is re-posted only once
        // its frame is out.
        let now = Instant::now();
        bucket.refill(now);
        while tap_writable {
            let Some(h) = held.front_mut() else { break };
            if !bucket.allows(h.data.len()) {
                break;
            }
            // The kernel reads the 10-byte header and skips the rest;
            // num_buffers means nothing to it.
            h.hdr[10] = 0;
            h.hdr[11] = 0;
            match q.writev(&[IoSlice::new(&h.hdr), IoSlice::new(&h.data)]) {
                Ok(_) => {
                    bucket.take(h.data.len());
                    c.rx_frames += 1;
                    c.rx_bytes += h.data.len() as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.tap2_write_blocked += 1;
                    tap_writable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    c.refused += 1;
                    eprintln!("vu-bridge: TAP2 refused a {}-byte frame: {e}", h.data.len());
                }
            }
            to_repost += h.buffers;
            held.pop_front();
        }
        if to_repost > 0 {
            let p = drv.post_rx(0, to_repost, buf_len);
            posted += p;
            to_repost -= p;
            if to_repost > 0 {
                // Descriptors not yet free (cannot happen with one buffer per
                // descriptor); try again next round.
                busy = true;
            }
        }
        if let Some(h) = held.front() {
            if tap_writable {
                let w = bucket.wait(h.data.len());
                if w > Duration::ZERO {
                    c.rate_waits += 1;
                    arm_timer(tfd, w);
                } else {
                    busy = true;
                }
            }
        }

        // TX: TAP2 → backend, while the TX ring has room for a chain.
        let mut budget = TX_BUDGET;
        while tap_readable && budget > 0 {
            if drv.free_descriptors(1) < 2 {
                c.tx_ring_full += 1;
                break; // the TX call (armed above) brings us back
            }
            let r = q.read(&mut txbuf);
            match r {
                Ok(n) if n < HDR + ETH_HLEN => {
                    c.refused += 1;
                    eprintln!("vu-bridge: {n}-byte runt from TAP2");
                }
                Ok(n) => {
                    let mut hdr = [0u8; HDR];
                    hdr.copy_from_slice(&txbuf[..HDR]);
                    match drv.send(0, &hdr, &txbuf[HDR..n]) {
                        Ok(()) => {
                            c.tx_frames += 1;
                            c.tx_bytes += (n - HDR) as u64;
                        }
                        Err(e) => {
                            c.refused += 1;
                            eprintln!("vu-bridge: cannot send a {n}-byte frame: {e}");
                        }
                    }
                    budget -= 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tap_readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read TAP2: {e}")),
            }
        }
        if tap_readable && budget == 0 {
            busy = true;
        }
    }

    c.rx_malformed = drv.rx_malformed();
    let now = [
        ("held_at_exit", held.len() as u64),
        ("rx_buffers_posted", posted as u64),
    ];
    eprintln!("{}", c.report("exit", &now));
    // GET_VRING_BASE on every vring, as QEMU does when it stops.
    if let Err(e) = drv.disconnect() {
        eprintln!("vu-bridge: disconnect: {e}");
    }
    drop(tap);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_at_rate_and_lets_big_frames_through() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000.0, 3000.0, t0); // 1000 B/s, depth 3000
        assert!(b.allows(1500));
        b.take(1500);
        b.take(1500);
        assert!(!b.allows(1500));
        assert_eq!(b.wait(1500), Duration::from_millis(1500));
        b.refill(t0 + Duration::from_millis(1500));
        assert!(b.allows(1500));
        // Larger than the depth: passes when the bucket is full, goes negative.
        b.refill(t0 + Duration::from_secs(100));
        assert!(b.allows(9000));
        b.take(9000);
        assert!(b.tokens < 0.0);
        assert_eq!(b.wait(100), Duration::from_millis(6100));
    }

    #[test]
    fn report_has_a_human_line_and_a_json_line_with_the_same_counters() {
        let c = Counters {
            rx_frames: 5,
            refused: 1,
            pending_high_water: 7,
            ..Counters::default()
        };
        let r = c.report("exit", &[("held_at_exit", 2), ("rx_buffers_posted", 32)]);
        let (human, json) = r.split_once('\n').unwrap();
        assert!(human.starts_with("vu-bridge: counters: rx_frames=5 rx_bytes=0 "));
        assert!(human.ends_with(" held_at_exit=2 rx_buffers_posted=32"));
        let v: serde_json::Value =
            serde_json::from_str(json.strip_prefix("vu-bridge: counters-json ").unwrap()).unwrap();
        assert_eq!(v["event"], "exit");
        assert_eq!(v["rx_frames"], 5);
        assert_eq!(v["refused"], 1);
        assert_eq!(v["pending_high_water"], 7);
        assert_eq!(v["held_at_exit"], 2);
        assert_eq!(v.as_object().unwrap().len(), 1 + 11 + 2);
    }
}
