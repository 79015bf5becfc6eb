//! Rings as the backend sees them through its own mapping of the memfd: RX
//! posting, mergeable RX reaping, TX chains (direct and indirect), EVENT_IDX
//! kick suppression and used_event publishing, raw posts.

mod common;

use std::time::Duration;

use common::*;
use vu_driver::features::*;
use vu_driver::{Driver, DriverConfig, RawDesc};

const RX0: usize = 0;
const TX0: usize = 1;

fn connect(be: &RawBackend, f: impl FnOnce(&mut DriverConfig)) -> Driver {
    let mut c = DriverConfig {
        socket: be.path.clone(),
        mem_size: 16 << 20,
        ..Default::default()
    };
    f(&mut c);
    Driver::connect(c).expect("connect")
}

#[test]
fn post_rx_appears_in_avail_ring() {
    let mut be = RawBackend::start(BackendSpec::default());
    let mut drv = connect(&be, |_| {});
    let dev = be.device();
    assert_eq!(dev.avail_idx(RX0), 0);
    assert_eq!(drv.post_rx(0, 8, 1600), 8);
    assert_eq!(dev.avail_idx(RX0), 8);
    assert_eq!(dev.avail_flags(RX0), 0, "interrupts wanted");
    let mut heads: Vec<u16> = (0..8).map(|i| dev.avail_entry(RX0, i)).collect();
    let mut bufs = Vec::new();
    for &h in &heads {
        assert!(h < 256);
        let d = dev.desc(RX0, h);
        assert_eq!(d.len, 1600);
        assert_eq!(
            d.flags, VRING_DESC_F_WRITE as u16,
            "device-writable, no NEXT"
        );
        assert!(d.addr + u64::from(d.len) <= drv.guest_mem_size());
        bufs.push((d.addr, d.addr + u64::from(d.len)));
    }
    heads.sort();
    heads.dedup();
    assert_eq!(heads.len(), 8, "distinct heads");
    // Buffers do not overlap each other nor any ring.
    for v in 0..2 {
        let l = drv.vring_layout(v);
        bufs.push((l.desc, l.desc + 16 * 256));
        bufs.push((l.avail, l.avail + 6 + 2 * 256));
        bufs.push((l.used, l.used + 6 + 8 * 256));
    }
    bufs.sort();
    for w in bufs.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap {w:?}");
    }
    // avail_event is 0: moving avail idx 0 -> 8 crosses it, so one kick.
    assert_eq!(dev.take_kicks(RX0), 1);
    // The pool is finite: 256 descriptors.
    assert_eq!(drv.post_rx(0, 1000, 1600), 248);
    assert_eq!(drv.post_rx(0, 1, 1600), 0);
    drop(drv);
    be.join();
}

/// Device side of RX: writes `frame` (with a virtio_net_hdr_v1) across the
/// next posted buffers, `per_buf` bytes each; returns the used elements.
fn fill_rx(dev: &Device, next_avail: &mut u16, frame: &[u8], per_buf: usize) -> Vec<(u32, u32)> {
    let mut hdr = [0u8; 12];
    let total = 12 + frame.len();
    let nbuf = total.div_ceil(per_buf);
    hdr[10..12].copy_from_slice(&(nbuf as u16).to_le_bytes());
    let mut bytes = hdr.to_vec();
    bytes.extend_from_slice(frame);
    let mut used = Vec::new();
    for chunk in bytes.chunks(per_buf) {
        let head = dev.avail_entry(RX0, *next_avail);
        *next_avail += 1;
        let d = dev.desc(RX0, head);
        assert!(chunk.len() <= d.len as usize);
        dev.write(d.addr, chunk);
        used.push((u32::from(head), chunk.len() as u32));
    }
    used
}

#[test]
fn mergeable_rx_frames_are_reassembled() {
    let mut be = RawBackend::start(BackendSpec::default());
    let mut drv = connect(&be, |_| {});
    let dev = be.device();
    assert_eq!(drv.post_rx(0, 16, 1024), 16);
    assert!(drv.recv(0).is_empty());

    let big: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let small = vec![0xabu8; 60];
    let mut next = 0u16;
    let used_big = fill_rx(&dev, &mut next, &big, 1024); // 3012 bytes: 3 buffers
    let used_small = fill_rx(&dev, &mut next, &small, 1024);
    assert_eq!(used_big.len(), 3);

    // Publish only the first two entries of the big frame: nothing yet.
    dev.push_used(RX0, &used_big[..2]);
    dev.signal_call(RX0);
    assert!(drv.recv(0).is_empty(), "partial mergeable frame must wait");
    // used_event stays at the first unconsumed entry.
    assert_eq!(dev.used_event(RX0), 0);

    dev.push_used(RX0, &used_big[2..]);
    dev.push_used(RX0, &used_small);
    dev.signal_call(RX0);
    let frames = drv.recv_wait(0, 2, Duration::from_secs(2));
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].num_buffers, 3);
    assert_eq!(frames[0].data, big);
    assert_eq!(frames[1].num_buffers, 1);
    assert_eq!(frames[1].data, small);
    // EVENT_IDX: the driver asks for an interrupt on the next used entry.
    assert_eq!(dev.used_event(RX0), 4);
    // Descriptors are back in the pool.
    assert_eq!(drv.free_descriptors(RX0), 256 - 16 + 4);
    assert_eq!(drv.rx_malformed(), 0);
    drop(drv);
    be.join();
}

#[test]
fn rx_without_mrg_is_one_entry_per_frame() {
    let mut be = RawBackend::start(BackendSpec::default());
    let mut drv = connect(&be, |c| c.mrg_rxbuf = false);
    assert_eq!(drv.acked_features() & bit(VIRTIO_NET_F_MRG_RXBUF), 0);
    let dev = be.device();
    drv.post_rx(0, 2, 2048);
    let mut next = 0;
    let frame = vec![7u8; 100];
    let mut used = fill_rx(&dev, &mut next, &frame, 2048);
    // Garbage num_buffers must be ignored without MRG_RXBUF.
    let d = dev.desc(RX0, used[0].0 as u16);
    dev.write(d.addr + 10, &9u16.to_le_bytes());
    used[0].1 = 112;
    dev.push_used(RX0, &used);
    let f = drv.recv(0);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].data, frame);
    assert_eq!(f[0].num_buffers, 1);
    drop(drv);
    be.join();
}

#[test]
fn recv_wait_times_out_without_frames() {
    let mut be = RawBackend::start(BackendSpec::default());
    let mut drv = connect(&be, |_| {});
    drv.post_rx(0, 4, 2048);
    let t = std::time::Instant::now();
    assert!(drv.recv_wait(0, 1, Duration::from_millis(200)).is_empty());
    assert!(t.elapsed() >= Duration::from_millis(190));
    drop(drv);
    be.join();
}

/// Device side of TX: walks the chain at `head` (following an indirect table
/// if there is one) and returns its (addr, len, flags) descriptors.
fn walk(dev: &Device, head: u16) -> Vec<RawDesc> {
    let ring = dev.ring(TX0);
    let mut d = dev.desc(TX0, head);
    let (table, mut i, n) = if d.flags & VRING_DESC_F_INDIRECT as u16 != 0 {
        assert_eq!(d.len % 16, 0);
        let t = d.addr;
        (t, 0u16, (d.len / 16) as u16)
    } else {
        (ring.desc, head, ring.n)
    };
    let mut out = Vec::new();
    loop {
        d = dev.desc_at(table, i);
        out.push(d);
        assert!(out.len() <= n as usize, "chain loops");
        if d.flags & VRING_DESC_F_NEXT as u16 == 0 {
            return out;
        }
        i = d.next;
    }
}

#[test]
fn tx_chains_direct_and_indirect() {
    let mut be = RawBackend::start(BackendSpec::default());
    let mut drv = connect(&be, |_| {});
    assert_ne!(drv.acked_features() & bit(VIRTIO_RING_F_INDIRECT_DESC), 0);
    let dev = be.device();
    let mut hdr = [0u8; 12];
    hdr[0] = 1; // NEEDS_CSUM, to see it come through
    let frame: Vec<u8> = (0..1514u32).map(|i| (i * 7) as u8).collect();

    drv.send(0, &hdr, &frame).unwrap();
    drv.send_chain(0, &hdr, &[&frame[..100], &frame[100..]], true)
        .unwrap();
    drv.send_chain(0, &hdr, &[&frame[..14], &frame[14..]], false)
        .unwrap();
    assert_eq!(dev.avail_idx(TX0), 3);

    let mut used = Vec::new();
    for (k, nseg) in [(0u16, 1usize), (1, 2), (2, 2)] {
        let head = dev.avail_entry(TX0, k);
        let head_desc = dev.desc(TX0, head);
        assert_eq!(
            head_desc.flags & VRING_DESC_F_INDIRECT as u16 != 0,
            k == 1,
            "only the second chain is indirect"
        );
        let chain = walk(&dev, head);
        assert_eq!(chain.len(), 1 + nseg);
        assert_eq!(chain[0].len, 12, "header in its own descriptor");
        assert_eq!(dev.read(chain[0].addr, 12), hdr);
        let mut got = Vec::new();
        for d in &chain {
            assert_eq!(d.flags & VRING_DESC_F_WRITE as u16, 0, "device-readable");
        }
        for d in &chain[1..] {
            got.extend(dev.read(d.addr, d.len as usize));
        }
        assert_eq!(got, frame);
        used.push((u32::from(head), 0));
    }
    assert_eq!(drv.tx_completed(0), 0);
    dev.push_used(TX0, &used[..2]);
    dev.signal_call(TX0);
    assert_eq!(drv.tx_wait(0, 2, Duration::from_secs(2)), 2);
    dev.push_used(TX0, &used[2..]);
    dev.signal_call(TX0);
    assert_eq!(drv.tx_wait(0, 3, Duration::from_secs(2)), 3);
    assert_eq!(drv.free_descriptors(TX0), 256);
    drop(drv);
    be.join();
}

#[test]
fn tx_queue_full() {
    let mut be = RawBackend::start(BackendSpec::default());
    let mut drv = connect(&be, |c| c.queue_size = 8);
    let hdr = [0u8; 12];
    // 2 descriptors per chain: 4 chains fill 8 descriptors.
    for _ in 0..4 {
        drv.send(0, &hdr, &[0u8; 60]).unwrap();
    }
    assert!(matches!(
        drv.send(0, &hdr, &[0u8; 60]),
        Err(vu_driver::Error::QueueFull)
    ));
    drop(drv);
    be.join();
}

#[test]
fn event_idx_suppresses_kicks_until_avail_event_is_crossed() {
    let mut be = RawBackend::start(BackendSpec::default());
    let mut drv = connect(&be, |_| {});
    let dev = be.device();
    drv.post_rx(0, 1, 2048); // avail 0 -> 1 crosses avail_event 0
    assert_eq!(dev.take_kicks(RX0), 1);
    // Device: "kick me when avail idx passes 5".
    dev.set_avail_event(RX0, 5);
    drv.post_rx(0, 2, 2048); // 1 -> 3
    assert_eq!(dev.take_kicks(RX0), 0, "no kick before avail_event");
    drv.post_rx(0, 2, 2048); // 3 -> 5
    assert_eq!(dev.take_kicks(RX0), 0);
    drv.post_rx(0, 1, 2048); // 5 -> 6 crosses 5
    assert_eq!(dev.take_kicks(RX0), 1);
    drop(drv);
    be.join();
}

#[test]
fn without_event_idx_always_kick() {
    let mut be = RawBackend::start(BackendSpec::default());
    let mut drv = connect(&be, |c| c.event_idx = false);
    assert_eq!(drv.acked_features() & bit(VIRTIO_RING_F_EVENT_IDX), 0);
    let dev = be.device();
    dev.set_avail_event(RX0, 100); // must be ignored
    for _ in 0..3 {
        drv.post_rx(0, 1, 2048);
        assert_eq!(dev.take_kicks(RX0), 1);
    }
    drop(drv);
    be.join();
}

#[test]
fn raw_post_and_avail_idx() {
    let mut be = RawBackend::start(BackendSpec::default());
    let mut drv = connect(&be, |_| {});
    let dev = be.device();
    let (scratch, len) = drv.scratch();
    assert!(len >= 4096);
    let descs = [
        RawDesc {
            addr: scratch,
            len: 12,
            flags: VRING_DESC_F_NEXT as u16,
            next: 1,
        },
        RawDesc {
            addr: u64::MAX - 10, // outside guest memory
            len: 100,
            flags: 0,
            next: 0,
        },
    ];
    drv.raw_post(TX0, &descs, &[0, 300]);
    assert_eq!(dev.avail_idx(TX0), 2);
    assert_eq!(dev.avail_entry(TX0, 0), 0);
    assert_eq!(dev.avail_entry(TX0, 1), 300);
    assert_eq!(dev.desc(TX0, 1), descs[1]);
    assert_eq!(dev.take_kicks(TX0), 1);
    drv.raw_set_avail_idx(TX0, 1000);
    assert_eq!(dev.avail_idx(TX0), 1000);
    assert_eq!(dev.take_kicks(TX0), 1);
    // Used entries for raw heads come back raw.
    dev.push_used(TX0, &[(0, 0), (999, 5)]);
    let u = drv.raw_used(TX0);
    assert_eq!(u.len(), 2);
    assert_eq!((u[1].id, u[1].len), (999, 5));
    // Raw indices never go back to the driver's pool.
    assert_eq!(drv.free_descriptors(TX0), 254);
    drop(drv);
    be.join();
}
