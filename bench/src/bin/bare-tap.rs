//! `bare-tap`: the one-syscall-per-frame ceiling on a TAP like the daemon's
//! (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, 12-byte header, non-blocking fd).
//!
//! - `--mode read`: drains the TAP with one `read()` per frame (host → guest
//!   direction without a guest); `poll()` only when the TAP is empty.
//! - `--mode write`: writes frames as fast as possible with one `write()`
//!   per frame: a 12-byte virtio-net header + a `--size`-byte UDP frame over
//!   64 source ports, or with `--gso` a 64 KiB TCPv4 GSO frame (guest → host).
//!
//! `--buffers N`: write from N distinct buffers in turn (default 64, hot in
//! cache; 1024 is like frames spread over a guest's TX ring: cold).
//!
//! One thread per queue (`--queues N`). Prints `stats` lines (see the lib).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bench::{print_stats, stopping, tcp_gso_frame, udp_frame, vnet_hdr, Args, VNET_HDR_LEN};

const USAGE: &str = "bare-tap --tap NAME --mode read|write [--queues N] [--size BYTES] [--gso] \
[--txqueuelen N] [--buffers N]";

#[derive(Default)]
struct Count {
    frames: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

fn wait_fd(fd: i32, events: i16) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: `p` is a valid pollfd for the duration of the call, count 1.
    unsafe { libc::poll(&mut p, 1, 100) };
}

fn reader(q: &tap::TapQueue, c: &Count) {
    let mut buf = vec![0u8; 65_536 + 64];
    let (mut frames, mut bytes) = (0u64, 0u64);
    while !stopping() {
        match q.read(&mut buf) {
            Ok(n) => {
                frames += 1;
                bytes += n.saturating_sub(VNET_HDR_LEN) as u64;
                if frames % 64 == 0 {
                    c.frames.store(frames, Ordering::Relaxed);
                    c.bytes.store(bytes, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                c.frames.store(frames, Ordering::Relaxed);
                c.bytes.store(bytes, Ordering::Relaxed);
                wait_fd(q.as_raw_fd(), libc::POLLIN);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("bare-tap: read: {e}");
                c.errors.fetch_add(1, Ordering::Relaxed);
                wait_fd(q.as_raw_fd(), libc::POLLIN);
            }
        }
    }
    c.frames.store(frames, Ordering::Relaxed);
    c.bytes.store(bytes, Ordering::Relaxed);
}

fn writer(q: &tap::TapQueue, c: &Count, size: usize, gso: bool, buffers: usize) {
    // Header and frame in one buffer: one write() per frame. `buffers`
    // distinct buffers, used in turn (64: hot in cache; as many as a guest's
    // TX ring: as cold as frames in guest memory).
    let bufs: Vec<Vec<u8>> = (0..buffers.max(1))
        .map(|i| {
            let i = (i % 64) as u16;
            let mut b = vnet_hdr(gso).to_vec();
            if gso {
                b.extend_from_slice(&tcp_gso_frame(1024 + i));
            } else {
                b.extend_from_slice(&udp_frame(size, 1024 + i));
            }
            b
        })
        .collect();
    let (mut frames, mut bytes) = (0u64, 0u64);
    let mut i = 0usize;
    while !stopping() {
        let b = &bufs[i % bufs.len()];
        // SAFETY: `b` is a valid, initialised buffer of `b.len()` bytes for the call.
        let r = unsafe { libc::write(q.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        if r >= 0 {
            frames += 1;
            bytes += (b.len() - VNET_HDR_LEN) as u64;
            i += 1;
            if frames % 64 == 0 {
                c.frames.store(frames, Ordering::Relaxed);
                c.bytes.store(bytes, Ordering::Relaxed);
            }
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) => wait_fd(q.as_raw_fd(), libc::POLLOUT),
            Some(libc::EINTR) => {}
            _ => {
                if c.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("bare-tap: write: {e}");
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    c.frames.store(frames, Ordering::Relaxed);
    c.bytes.store(bytes, Ordering::Relaxed);
}

fn main() {
    let mut a = Args::from_env();
    let name: String = a.get("tap", String::new());
    let mode: String = a.get("mode", String::new());
    let queues: usize = a.get("queues", 1);
    let size: usize = a.get("size", 64);
    let gso = a.flag("gso");
    let txqueuelen: u32 = a.get("txqueuelen", 0);
    let buffers: usize = a.get("buffers", 64);
    a.finish(USAGE);
    if name.is_empty() || !(mode == "read" || mode == "write") {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    bench::install_stop_handler();
    let mut cfg = tap::TapConfig::new(name.clone());
    cfg.queues = queues;
    if txqueuelen > 0 {
        cfg.txqueuelen = Some(txqueuelen);
    }
    let t = match tap::Tap::open(&cfg) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("bare-tap: {e}");
            std::process::exit(1);
        }
    };
    let counts: Arc<Vec<Count>> = Arc::new((0..queues).map(|_| Count::default()).collect());
    let threads: Vec<_> = (0..queues)
        .map(|qi| {
            let (t, counts, mode) = (t.clone(), counts.clone(), mode.clone());
            std::thread::Builder::new()
                .name(format!("bare-{mode}{qi}"))
                .spawn(move || {
                    if mode == "read" {
                        reader(t.queue(qi), &counts[qi]);
                    } else {
                        writer(t.queue(qi), &counts[qi], size, gso, buffers);
                    }
                })
                .expect("spawn")
        })
        .collect();
    println!("ready tap={} queues={queues} mode={mode}", t.name());
    let mut next = Instant::now();
    loop {
        let done = stopping();
        let f: u64 = counts
            .iter()
            .map(|c| c.frames.load(Ordering::Relaxed))
            .sum();
        let b: u64 = counts.iter().map(|c| c.bytes.load(Ordering::Relaxed)).sum();
        let e: u64 = counts
            .iter()
            .map(|c| c.errors.load(Ordering::Relaxed))
            .sum();
        print_stats(f, b, &format!("errors={e}"));
        if done {
            break;
        }
        next += bench::STATS_EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for th in threads {
        let _ = th.join();
    }
    let f: u64 = counts
        .iter()
        .map(|c| c.frames.load(Ordering::Relaxed))
        .sum();
    let b: u64 = counts.iter().map(|c| c.bytes.load(Ordering::Relaxed)).sum();
    print_stats(f, b, "final=1");
}
