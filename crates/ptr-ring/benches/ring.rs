//! Micro-benchmarks of the ring (divan): `cargo bench -p ptr-ring --bench ring`.
//!
//! - single thread: produce a burst, then consume it with `consume_batched`
//!   or `peek` + `discard_one` (the daemon's RX filler path);
//! - two threads: a producer thread and the consumer (the benchmark thread)
//!   move a fixed number of items through the ring, with the stop/wake
//!   protocol in play (the producer spins while stopped or full, which the
//!   daemon does not do: it sleeps in epoll; this measures the ring alone).

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use divan::counter::ItemsCount;
use divan::Bencher;
use ptr_ring::{ring, Produced};

fn main() {
    divan::main();
}

fn item(i: usize) -> NonZeroUsize {
    NonZeroUsize::new(i | 1).unwrap()
}

/// Produce `burst` items into a 256-slot ring, then consume them in batches of 32.
#[divan::bench(args = [1, 32, 128])]
fn single_thread_consume_batched(b: Bencher, burst: usize) {
    let (mut p, mut c) = ring(256);
    let mut out = [NonZeroUsize::MIN; 32];
    b.counter(ItemsCount::new(burst)).bench_local(|| {
        for i in 0..burst {
            let _ = black_box(p.produce(item(i)));
        }
        let mut left = burst;
        while left > 0 {
            let (n, _) = c.consume_batched(&mut out[..left.min(32)]);
            black_box(&out[..n]);
            left -= n;
        }
    });
}

/// Produce `burst` items, then `peek` + `discard_one` each (the RX filler's way).
#[divan::bench(args = [1, 32, 128])]
fn single_thread_peek_discard(b: Bencher, burst: usize) {
    let (mut p, mut c) = ring(256);
    b.counter(ItemsCount::new(burst)).bench_local(|| {
        for i in 0..burst {
            let _ = black_box(p.produce(item(i)));
        }
        for _ in 0..burst {
            black_box(c.peek());
            black_box(c.discard_one());
        }
    });
}

const ITEMS: usize = 200_000;

/// Two threads, ring of `capacity` slots: items per second through the ring.
#[divan::bench(args = [256, 1024], sample_count = 20, sample_size = 1)]
fn two_threads(b: Bencher, capacity: usize) {
    b.counter(ItemsCount::new(ITEMS)).bench_local(|| {
        let (mut p, mut c) = ring(capacity);
        let go = Arc::new(AtomicBool::new(false));
        let g = go.clone();
        let prod = std::thread::spawn(move || {
            while !g.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            let mut i = 0;
            while i < ITEMS {
                if p.is_stopped() {
                    std::hint::spin_loop();
                    continue;
                }
                match p.produce(item(i)) {
                    Ok(Produced::Ok) | Ok(Produced::Stopped) => i += 1,
                    Err(_) => std::hint::spin_loop(),
                }
            }
        });
        go.store(true, Ordering::Release);
        let mut out = [NonZeroUsize::MIN; 32];
        let mut got = 0;
        while got < ITEMS {
            let (n, _) = c.consume_batched(&mut out);
            if n == 0 {
                std::hint::spin_loop();
            }
            got += n;
        }
        prod.join().unwrap();
    });
}
