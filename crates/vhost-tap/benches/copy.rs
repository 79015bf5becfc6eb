//! Micro-benchmarks of the daemon's per-frame work that the public API
//! reaches (divan): `cargo bench -p vhost-tap --bench copy`.
//!
//! - `chain::walk` of an RX chain (one device-writable buffer) and a TX
//!   chain (header + frame descriptors), as `datapath.rs` does per frame;
//! - the RX copy: `write_slice` of a frame into guest memory (64 B, 1514 B,
//!   64 KiB), as `deliver_one` does;
//! - the TX iovec build: `get_slices` over a chain's segments, as
//!   `write_chain` does before `writev`.

use std::hint::black_box;

use divan::counter::BytesCount;
use divan::Bencher;
use vhost_tap::guest::chain::{self, Chain, Direction};
use vhost_tap::guest::map::GuestMap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

fn main() {
    divan::main();
}

const TABLE: u64 = 0x1000;
const QSIZE: u16 = 256;
const DATA: u64 = 0x10_0000;

fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
}

fn desc(mem: &GuestMemoryMmap<()>, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&d, GuestAddress(TABLE + 16 * u64::from(i)))
        .unwrap();
}

/// Walk the chain at descriptor 0 again and again.
fn bench_walk(b: Bencher, mem: &GuestMemoryMmap<()>, dir: Direction) {
    let mut c = Chain::default();
    let map = GuestMap::new(mem);
    b.bench_local(|| {
        chain::walk(&map, GuestAddress(TABLE), QSIZE, 0, dir, &mut c).unwrap();
        black_box(c.total_len)
    });
}

#[divan::bench]
fn walk_rx_chain_1_desc(b: Bencher) {
    let mem = memory();
    desc(&mem, 0, DATA, 2048, 2, 0); // WRITE
    bench_walk(b, &mem, Direction::Writable);
}

#[divan::bench]
fn walk_tx_chain_2_descs(b: Bencher) {
    let mem = memory();
    desc(&mem, 0, DATA, 12, 1, 1); // NEXT
    desc(&mem, 1, DATA + 12, 64, 0, 0);
    bench_walk(b, &mem, Direction::Readable);
}

/// Copy a `len`-byte frame with `write`, rotating over 256 guest buffers of
/// 64 KiB + 4 KiB, as over a guest's RX ring.
fn rotating_copy(b: Bencher, len: usize, mut write: impl FnMut(GuestAddress, &[u8])) {
    let frame = vec![0x41u8; len];
    let mut i = 0u64;
    b.counter(BytesCount::new(len)).bench_local(|| {
        let addr = GuestAddress(DATA + (i % 256) * 69_632);
        i += 1;
        write(addr, black_box(&frame));
    });
}

/// Frame (with its 12-byte header) copied into a guest RX buffer.
#[divan::bench(args = [76, 1526, 65548])]
fn rx_copy_write_slice(b: Bencher, len: usize) {
    let mem = memory();
    rotating_copy(b, len, |addr, frame| mem.write_slice(frame, addr).unwrap());
}

/// The same through `GuestMap::write` (the ring path's copy now).
#[divan::bench(args = [76, 1526, 65548])]
fn rx_copy_guestmap(b: Bencher, len: usize) {
    let mem = memory();
    let map = GuestMap::new(&mem);
    rotating_copy(b, len, |addr, frame| map.write(addr, frame).unwrap());
}

/// Build the iovecs of a 2-descriptor TX chain (header + `len`-byte frame),
/// as before `writev`, with `add` pushing one segment's iovecs.
fn tx_iovecs(b: Bencher, len: usize, add: impl Fn(GuestAddress, usize, &mut Vec<libc::iovec>)) {
    let segs = [
        (GuestAddress(DATA), 12usize),
        (GuestAddress(DATA + 12), len),
    ];
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(8);
    b.bench_local(|| {
        iov.clear();
        for (addr, l) in segs {
            add(addr, l, &mut iov);
        }
        black_box(iov.len())
    });
}

/// Through vm-memory's `get_slices` (what the data path used before `GuestMap`).
#[divan::bench(args = [64, 1514, 65536])]
fn tx_iovecs_get_slices(b: Bencher, len: usize) {
    let mem = memory();
    tx_iovecs(b, len, |addr, l, iov| {
        for s in mem.get_slices(addr, l) {
            let s = s.unwrap();
            iov.push(libc::iovec {
                iov_base: s.ptr_guard().as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            });
        }
    });
}

/// Through the data path's `GuestMap` (what it uses now).
#[divan::bench(args = [64, 1514, 65536])]
fn tx_iovecs_guestmap(b: Bencher, len: usize) {
    let mem = memory();
    let map = GuestMap::new(&mem);
    tx_iovecs(b, len, |addr, l, iov| {
        iov.push(libc::iovec {
            iov_base: map.host(addr, l).unwrap().as_ptr().cast(),
            iov_len: l,
        })
    });
}

/// The same copy into one buffer (hot in cache, no page faults), and a plain
/// `copy_from_slice` into ordinary memory for comparison.
#[divan::bench(args = [76, 1526, 65548])]
fn rx_copy_write_slice_hot(b: Bencher, len: usize) {
    let mem = memory();
    let frame = vec![0x41u8; len];
    mem.write_slice(&frame, GuestAddress(DATA)).unwrap();
    b.counter(BytesCount::new(len)).bench_local(|| {
        mem.write_slice(black_box(&frame), GuestAddress(DATA))
            .unwrap()
    });
}

#[divan::bench(args = [76, 1526, 65548])]
fn memcpy_hot_for_comparison(b: Bencher, len: usize) {
    let frame = vec![0x41u8; len];
    let mut dst = vec![0u8; len];
    b.counter(BytesCount::new(len))
        .bench_local(|| black_box(&mut dst[..]).copy_from_slice(black_box(&frame)));
}
