//! `vu-guest`: a vhost-user frontend (crates/vu-driver) playing an
//! event-driven guest for the benchmarks: it sleeps on the call eventfds
//! (poll), never busy-polls.
//!
//! - `--mode rx`: a sink. Keeps the RX queues full of `--buf-len`-byte
//!   buffers (mergeable RX buffers negotiated), or with `--rate PPS` posts
//!   buffers at that rate only (token bucket, refilled every millisecond, at
//!   most one queue's worth banked): a *slow guest* that takes `PPS` frames
//!   per second and leaves the rest to the backend's queueing.
//! - `--mode tx`: a source. Sends `--size`-byte UDP frames over 64 source
//!   ports (header in its own descriptor), or with `--gso` 64 KiB TCPv4 GSO
//!   frames (offloads negotiated), as fast as the backend completes them
//!   (or at `--rate PPS`).
//!
//! Prints `ready`, then `stats` lines (see the lib) with `rx_malformed`
//! (frames the guest could not take = its drops) and `waits` (sleeps on the
//! call eventfds).

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use bench::{print_stats, stopping, tcp_gso_frame, udp_frame, vnet_hdr, Args};
use vu_driver::{Driver, DriverConfig, Error};

const USAGE: &str = "vu-guest --socket PATH --mode rx|tx [--queues N] [--queue-size N] \
[--buf-len BYTES] [--size BYTES] [--gso] [--rate PPS] [--mem-mib N]";

/// Sleep on the given eventfds for at most `timeout`; clears those that fired.
fn wait_calls(fds: &[RawFd], timeout: Duration) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().clamp(1, 1000) as i32;
    // SAFETY: `p` is a valid array of `p.len()` pollfds for the call.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if r > 0 {
        for q in &p {
            if q.revents & libc::POLLIN != 0 {
                let mut v = 0u64;
                // SAFETY: reading 8 bytes into a u64 from an eventfd we own.
                unsafe { libc::read(q.fd, (&mut v as *mut u64).cast(), 8) };
            }
        }
    }
}

/// Token bucket per queue pair; `None` rate = unlimited.
struct Bucket {
    per_sec: Option<f64>,
    tokens: f64,
    cap: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_sec: Option<f64>, cap: f64) -> Bucket {
        Bucket {
            per_sec,
            tokens: 0.0,
            cap,
            last: Instant::now(),
        }
    }
    fn take(&mut self, want: usize) -> usize {
        let Some(r) = self.per_sec else { return want };
        let now = Instant::now();
        self.tokens = (self.tokens + r * (now - self.last).as_secs_f64()).min(self.cap);
        self.last = now;
        let n = (self.tokens.floor() as usize).min(want);
        self.tokens -= n as f64;
        n
    }
}

fn main() {
    let mut a = Args::from_env();
    let socket: String = a.get("socket", String::new());
    let mode: String = a.get("mode", String::new());
    let queues: usize = a.get("queues", 1);
    let queue_size: u16 = a.get("queue-size", 1024);
    let buf_len: usize = a.get("buf-len", 2048);
    let size: usize = a.get("size", 64);
    let gso = a.flag("gso");
    let rate: f64 = a.get("rate", 0.0);
    let mem_mib: usize = a.get("mem-mib", if gso { 512 } else { 128 });
    a.finish(USAGE);
    if socket.is_empty() || !(mode == "rx" || mode == "tx") {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    bench::install_stop_handler();
    let cfg = DriverConfig {
        socket: socket.into(),
        queue_pairs: queues,
        queue_size,
        mrg_rxbuf: true,
        event_idx: true,
        offloads: gso,
        mem_size: mem_mib << 20,
        qemu_order: true,
    };
    let mut drv = match Driver::connect(cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vu-guest: {e}");
            std::process::exit(1);
        }
    };
    println!("ready features={:#x}", drv.acked_features());
    let per_pair = (rate > 0.0).then(|| rate / queues as f64);
    // Bank at most a quarter of a queue: a slow guest does not get bursts it never had.
    let cap = f64::from(queue_size) / 4.0;
    let mut buckets: Vec<Bucket> = (0..queues).map(|_| Bucket::new(per_pair, cap)).collect();
    let timer = if rate > 0.0 {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(100)
    };
    let (mut frames, mut bytes, mut waits) = (0u64, 0u64, 0u64);
    let mut next_stats = Instant::now();
    let ok = if mode == "rx" {
        let fds: Vec<RawFd> = (0..queues).map(|p| drv.call_fd(2 * p)).collect();
        loop {
            let mut got = 0usize;
            for (p, b) in buckets.iter_mut().enumerate() {
                let rx = drv.recv(p);
                got += rx.len();
                frames += rx.len() as u64;
                bytes += rx.iter().map(|f| f.data.len() as u64).sum::<u64>();
                let n = b.take(drv.free_descriptors(2 * p));
                if n > 0 {
                    drv.post_rx(p, n, buf_len);
                }
            }
            if Instant::now() >= next_stats {
                print_stats(
                    frames,
                    bytes,
                    &format!("rx_malformed={} waits={waits}", drv.rx_malformed()),
                );
                next_stats += bench::STATS_EVERY;
            }
            if stopping() {
                break true;
            }
            if got == 0 {
                waits += 1;
                wait_calls(&fds, timer);
            }
        }
    } else {
        let hdr = vnet_hdr(gso);
        let pkts: Vec<Vec<u8>> = (0..64u16)
            .map(|i| {
                if gso {
                    tcp_gso_frame(1024 + i)
                } else {
                    udp_frame(size, 1024 + i)
                }
            })
            .collect();
        let fds: Vec<RawFd> = (0..queues).map(|p| drv.call_fd(2 * p + 1)).collect();
        let mut sent = vec![0u64; queues];
        let mut done_prev = vec![0u64; queues];
        let mut k = 0usize;
        'outer: loop {
            let mut progress = 0usize;
            for p in 0..queues {
                let want = buckets[p].take(usize::from(queue_size));
                let mut n = 0;
                while n < want {
                    match drv.send(p, &hdr, &pkts[k % pkts.len()]) {
                        Ok(()) => {
                            n += 1;
                            k += 1;
                        }
                        Err(Error::QueueFull) => break,
                        Err(e) => {
                            eprintln!("vu-guest: send: {e}");
                            break 'outer false;
                        }
                    }
                }
                // Unused tokens go back (the queue was full).
                if let Some(_r) = buckets[p].per_sec {
                    buckets[p].tokens += (want - n) as f64;
                }
                sent[p] += n as u64;
                let done = drv.tx_completed(p) as u64;
                progress += n + (done - done_prev[p]) as usize;
                frames += done - done_prev[p];
                bytes += (done - done_prev[p]) * pkts[0].len() as u64;
                done_prev[p] = done;
            }
            if Instant::now() >= next_stats {
                let inflight: u64 = sent.iter().sum::<u64>() - done_prev.iter().sum::<u64>();
                print_stats(frames, bytes, &format!("inflight={inflight} waits={waits}"));
                next_stats += bench::STATS_EVERY;
            }
            if stopping() {
                break true;
            }
            if progress == 0 {
                waits += 1;
                wait_calls(&fds, timer);
            }
        }
    };
    print_stats(frames, bytes, "final=1");
    let _ = drv.disconnect();
    std::process::exit(if ok { 0 } else { 1 });
}
