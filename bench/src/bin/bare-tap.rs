//! `bare-tap`: the one-syscall-per-frame ceiling on a TAP like the daemon's
//! (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, 12-byte header, non-blocking fd).
//!
//! - `--mode read`: drains the TAP with one `read()` per frame (host → guest
//!   direction without a guest); `poll()` only when the TAP is empty.
//! - `--mode read-uring`: the same with io_uring, 64 reads in flight (does
//!   batching the syscalls move the ceiling?).
//! - `--mode write`: writes frames as fast as possible with one `write()`
//!   per frame: a 12-byte virtio-net header + a `--size`-byte UDP frame over
//!   64 source ports, or with `--gso` a 64 KiB TCPv4 GSO frame (guest → host).
//!
//! `--buffers N`: write from N distinct buffers in turn (default 64, hot in
//! cache; 1024 is like frames spread over a guest's TX ring: cold); read
//! into N 2 KiB buffers in turn (N > 1; default: one hot buffer), like a
//! guest's pool of RX buffers.
//!
//! One thread per queue (`--queues N`). Prints `stats` lines (see the lib).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bench::{print_stats, stopping, tcp_gso_frame, udp_frame, vnet_hdr, Args, VNET_HDR_LEN};

const USAGE: &str =
    "bare-tap --tap NAME --mode read|read-uring|write [--queues N] [--size BYTES] [--gso] \
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

fn reader(q: &tap::TapQueue, c: &Count, buffers: usize) {
    // One hot buffer for every frame, or (`--buffers N`, N > 1) N buffers of
    // 2 KiB in turn: as cold as a guest's pool of RX buffers (testpmd's
    // mbufs); frames longer than 2 KiB are then truncated.
    let (count, size) = if buffers > 1 {
        (buffers, 2048)
    } else {
        (1, 65_536 + 64)
    };
    let mut pool = vec![0u8; count * size];
    let mut i = 0usize;
    let (mut frames, mut bytes) = (0u64, 0u64);
    while !stopping() {
        let buf = &mut pool[i * size..(i + 1) * size];
        // Raw read(2), not glibc's cancellable wrapper: as the daemon does.
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
        let r =
            unsafe { libc::syscall(libc::SYS_read, q.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        let r = if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as usize)
        };
        match r {
            Ok(n) => {
                frames += 1;
                i = (i + 1) % count;
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

/// `--mode read-uring`: the same drain with io_uring, `depth` reads in
/// flight (each into its own 2 KiB buffer, resubmitted as it completes):
/// one `io_uring_enter` per batch of completions instead of one `read()`
/// per frame. Does batching the syscalls move the ceiling?
fn reader_uring(q: &tap::TapQueue, c: &Count, depth: usize) {
    use io_uring::{opcode, types, IoUring};
    const LEN: usize = 2048;
    let mut ring: IoUring = match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build((depth as u32).next_power_of_two())
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bare-tap: io_uring: {e}");
            c.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut pool = vec![0u8; depth * LEN];
    let base = pool.as_mut_ptr();
    let fd = types::Fd(q.as_raw_fd());
    // The pool outlives every read in flight: the ring is dropped (and its
    // reads cancelled) explicitly before the pool at the end.
    let read = |i: usize| {
        // SAFETY: `i < depth`, so the offset stays inside `pool`.
        let buf = unsafe { base.add(i * LEN) };
        opcode::Read::new(fd, buf, LEN as u32)
            .build()
            .user_data(i as u64)
    };
    for i in 0..depth {
        // SAFETY: the entry's buffer stays valid until its completion (see above).
        if unsafe { ring.submission().push(&read(i)) }.is_err() {
            break;
        }
    }
    let (mut frames, mut bytes) = (0u64, 0u64);
    let mut done: Vec<(usize, i32)> = Vec::with_capacity(depth);
    while !stopping() {
        match ring.submitter().submit_with_args(
            1,
            &types::SubmitArgs::new().timespec(&types::Timespec::new().nsec(100_000_000)),
        ) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ETIME)
                    || e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                eprintln!("bare-tap: io_uring_enter: {e}");
                c.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        done.clear();
        done.extend(
            ring.completion()
                .map(|e| (e.user_data() as usize, e.result())),
        );
        for &(i, r) in &done {
            if r > 0 {
                frames += 1;
                bytes += (r as usize).saturating_sub(VNET_HDR_LEN) as u64;
            } else if r != -libc::EAGAIN
                && r != -libc::EINTR
                && c.errors.fetch_add(1, Ordering::Relaxed) < 3
            {
                eprintln!(
                    "bare-tap: uring read: {}",
                    std::io::Error::from_raw_os_error(-r)
                );
            }
            // SAFETY: as above; buffer `i` has no read in flight now.
            let _ = unsafe { ring.submission().push(&read(i)) };
        }
        c.frames.store(frames, Ordering::Relaxed);
        c.bytes.store(bytes, Ordering::Relaxed);
    }
    drop(ring);
    drop(pool);
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
        // Raw write(2), not glibc's cancellable wrapper: as the daemon does.
        // SAFETY: `b` is a valid, initialised buffer of `b.len()` bytes for the call.
        let r = unsafe { libc::syscall(libc::SYS_write, q.as_raw_fd(), b.as_ptr(), b.len()) };
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
    if name.is_empty() || !["read", "read-uring", "write"].contains(&mode.as_str()) {
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
                        reader(t.queue(qi), &counts[qi], buffers);
                    } else if mode == "read-uring" {
                        reader_uring(t.queue(qi), &counts[qi], 64);
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
