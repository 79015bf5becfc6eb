//! The data path of one queue pair — TAP reader, ring, AQM, RX filler,
//! direct RX, TX drainer — over arbitrary guest rings and TAP behaviour.
//!
//! The input sets up the pair (header size, MRG_RXBUF, queue sizes, guest
//! memory in one or two regions, EVENT_IDX, ring size, FQ-CoDel mode and
//! its parameters, rate limits), then runs a sequence of events: the guest
//! posts RX buffers or TX frames (chains of up to 16 buffers, indirect or
//! not, some with the wrong direction), the TAP gets frames or errors to
//! return, RX and TX passes run, EPOLLIN/EPOLLOUT edges, mode switches,
//! vring resets, and a hostile guest writes raw bytes into its rings and
//! tables.
//!
//! Checked after every pass and at the end (`harness.rs`, `ledger.rs`):
//! every frame the TAP handed out is delivered, dropped and counted by
//! reason, or waiting; what the guest receives is what the TAP sent (in
//! order without an AQM), `num_buffers` included; every used entry is a
//! chain the guest posted; the TAP gets exactly the guest's TX bytes, in
//! order, never a frame of invalid length; a guest that keeps giving
//! buffers (and a TAP that takes frames) ends with nothing waiting.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_tap::datapath::{Limiter, Negotiated};
use vhost_tap::settings::{RateLimit, TokenBucket};
use vhost_tap_fuzz::guest::{ChainSpec, Guest, Kind, MEM_END};
use vhost_tap_fuzz::harness::Harness;
use vhost_tap_fuzz::input::Input;
use vhost_tap_fuzz::tap::{Step, ERRNOS};

/// Events per run.
const MAX_OPS: usize = 96;

/// A frame as the TAP carries it (header first): mostly short and from the
/// input, sometimes long (up to 70 000 bytes, past the largest frame).
fn frame(i: &mut Input) -> Vec<u8> {
    if i.u8().is_multiple_of(8) {
        let len = i.u32() as usize % 70_000;
        let prefix = i.blob(64);
        let mut f: Vec<u8> = (0..len).map(|k| (k * 7) as u8).collect();
        let n = prefix.len().min(len);
        f[..n].copy_from_slice(&prefix[..n]);
        f
    } else {
        i.blob(2048).to_vec()
    }
}

fn chain(i: &mut Input) -> ChainSpec {
    let flags = i.u8();
    let n = 1 + usize::from(flags >> 4);
    ChainSpec {
        lens: (0..n).map(|_| 1 + u32::from(i.u16())).collect(),
        offset: u32::from(i.u16()),
        indirect: flags & 1 != 0,
        wrong_direction: flags & 0x0e == 0x0e,
    }
}

fn aqm(i: &mut Input) -> fq_codel::FqCodel<vhost_tap::datapath::QueuedFrame> {
    let cfg = fq_codel::Config {
        flows: 1 + i.below(64),
        limit: 1 + i.below(256),
        memory_limit: 1 + i.u32() as usize % (1 << 20),
        quantum: 1 + i.below(3000),
        ecn: i.bool(),
        seed: i.u64(),
        ..fq_codel::Config::default()
    };
    fq_codel::FqCodel::try_new(cfg).expect("parameters in range")
}

/// A limit that does not refill while the run lasts (1 unit/s), with a
/// burst from the input.
fn limit(i: &mut Input) -> Option<std::sync::Arc<Limiter>> {
    let which = i.u8();
    let bucket = |burst: u64| TokenBucket { rate: 1, burst };
    Limiter::new(RateLimit {
        bytes: (which & 1 != 0).then(|| bucket(1 + u64::from(i.u32() % 200_000))),
        frames: (which & 2 != 0).then(|| bucket(1 + u64::from(i.u8() % 64))),
    })
}

fn guest(i: &mut Input, kind: Kind) -> Guest {
    let size = 1u16 << (i.u8() % 7);
    let flags = i.u8();
    Guest::new(kind, size, flags & 1 != 0, flags & 2 != 0)
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input::new(data);
    let features = i.u8();
    let neg = Negotiated::from_features(
        u64::from(features & 1) << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1
            | u64::from(features >> 1 & 1) << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF,
    );
    let rx = guest(&mut i, Kind::Rx);
    let tx = guest(&mut i, Kind::Tx);
    let ring_size = 2 + i.below(63);
    let mut h = Harness::new(neg, ring_size, rx, tx);
    let modes = i.u8();
    if modes & 1 != 0 {
        let q = aqm(&mut i);
        h.set_aqm(Some(q));
    }
    if modes & 2 != 0 {
        let (rx, tx) = (limit(&mut i), limit(&mut i));
        h.set_limits(rx, tx);
    }

    for _ in 0..MAX_OPS {
        if i.is_empty() {
            break;
        }
        match i.u8() % 16 {
            0 | 1 => {
                let spec = chain(&mut i);
                h.rx.post(&spec, &[]);
            }
            2 => {
                let spec = chain(&mut i);
                let f = frame(&mut i);
                h.tx.post(&spec, &f);
            }
            3 | 4 => {
                let f = frame(&mut i);
                h.tap.push_read(Step::Frame(f));
            }
            5 => h.tap.push_read(Step::Errno(ERRNOS[i.below(ERRNOS.len())])),
            6 => h.tap.push_write(Step::Errno(ERRNOS[i.below(ERRNOS.len())])),
            7 | 8 => {
                let ready = !i.u8().is_multiple_of(4);
                h.rx(ready);
            }
            9 => h.tx(),
            10 => {
                if i.bool() {
                    h.qp.tap_readable();
                } else {
                    h.qp.tap_writable();
                }
            }
            11 => {
                let q = if i.bool() { Some(aqm(&mut i)) } else { None };
                h.set_aqm(q);
            }
            12 => {
                let (flags, used_event) = (i.u16(), i.u16());
                let g = if i.bool() { &mut h.rx } else { &mut h.tx };
                g.interrupt_hints(flags, used_event);
            }
            13 => {
                // A hostile guest: raw bytes in its rings, tables or buffers.
                let g = if i.bool() { &mut h.rx } else { &mut h.tx };
                let at = if i.bool() {
                    u64::from(i.u16())
                } else {
                    u64::from(i.u32()) % MEM_END
                };
                let bytes = i.blob(32);
                g.raw_write(at, bytes);
            }
            14 => {
                let g = if i.bool() { &mut h.rx } else { &mut h.tx };
                if i.bool() {
                    g.raw_avail_idx(i.u16());
                } else {
                    g.hostile = true;
                    g.push_avail(i.u16());
                }
            }
            _ => {
                let kind = if i.bool() { Kind::Rx } else { Kind::Tx };
                let size = 1u16 << (i.u8() % 7);
                let flags = i.u8();
                h.reset(kind, size, flags & 1 != 0, flags & 2 != 0);
            }
        }
    }
    h.finish();
});
