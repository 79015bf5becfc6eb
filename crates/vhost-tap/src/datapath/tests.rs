//! The data path in-process: a real `Queue` over real guest memory, and a
//! scripted TAP behind the [`TapIo`] seam that answers each read or write as
//! the test says (a frame, EAGAIN, EFAULT, EINVAL, ENOBUFS). What a real TAP
//! cannot be made to do on cue is tested here; the real-TAP and real-QEMU
//! tests cover the rest.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::vnet::{Negotiated, HDR_LEN};
use super::{QueuePair, TapIo};
use crate::counters::QueueCounters;

/// Queue size of the test vrings.
const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Guest buffers: one 4 KiB page per descriptor.
const BUFS: u64 = 0x10_000;
const BUF_LEN: u32 = 0x1000;

/// What the scripted TAP does on its next read or write.
enum Step {
    /// Read: hand out this frame (virtio-net header first). Write: accept.
    Frame(Vec<u8>),
    /// Fail with this errno.
    Errno(i32),
}

/// A TAP that reads and writes from a script. With the read script empty
/// it answers EAGAIN, as an empty TAP does; the write script empty accepts.
#[derive(Default)]
struct ScriptedTap {
    reads: Mutex<VecDeque<Step>>,
    writes: Mutex<VecDeque<Step>>,
    /// Frames written (accepted), in order.
    written: Mutex<Vec<Vec<u8>>>,
    /// Read calls made, with the bytes offered by their iovecs.
    read_room: Mutex<Vec<usize>>,
}

impl ScriptedTap {
    fn read_script(&self, steps: impl IntoIterator<Item = Step>) {
        self.reads.lock().unwrap().extend(steps);
    }
    fn write_script(&self, steps: impl IntoIterator<Item = Step>) {
        self.writes.lock().unwrap().extend(steps);
    }
    fn unread(&self) -> usize {
        self.reads.lock().unwrap().len()
    }
}

impl TapIo for ScriptedTap {
    unsafe fn readv(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        self.read_room
            .lock()
            .unwrap()
            .push(iov.iter().map(|v| v.iov_len).sum());
        match self.reads.lock().unwrap().pop_front() {
            None => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
            Some(Step::Errno(e)) => Err(io::Error::from_raw_os_error(e)),
            Some(Step::Frame(data)) => {
                // As the kernel does: scatter, truncating to the room given.
                let mut off = 0;
                for v in iov {
                    let n = v.iov_len.min(data.len() - off);
                    // SAFETY: the caller's contract: each iovec is valid for
                    // writes of `iov_len >= n` bytes during this call.
                    unsafe {
                        std::ptr::copy_nonoverlapping(data[off..].as_ptr(), v.iov_base.cast(), n)
                    };
                    off += n;
                }
                Ok(off)
            }
        }
    }

    unsafe fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        if let Some(Step::Errno(e)) = self.writes.lock().unwrap().pop_front() {
            return Err(io::Error::from_raw_os_error(e));
        }
        let mut frame = Vec::new();
        for v in iov {
            // SAFETY: the caller's contract: each iovec is valid for reads
            // of `iov_len` bytes during this call.
            frame.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
            });
        }
        let n = frame.len();
        self.written.lock().unwrap().push(frame);
        Ok(n)
    }

    fn name(&self) -> &str {
        "scripted"
    }
}

/// One vring over its own guest memory, driven as a guest driver would.
struct Vring {
    mem: GuestMemoryMmap<()>,
    queue: Queue,
    /// Next avail index the "driver" posts at.
    avail_idx: u16,
}

impl Vring {
    fn new() -> Vring {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_000)]).unwrap();
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(DESC as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(&mem));
        Vring {
            mem,
            queue,
            avail_idx: 0,
        }
    }

    fn buf(i: u16) -> u64 {
        BUFS + u64::from(i) * u64::from(BUF_LEN)
    }

    /// Post descriptor `i` as a one-buffer chain of `len` bytes.
    fn post(&mut self, i: u16, len: u32, flags: u16) {
        let d = DESC + 16 * u64::from(i);
        self.mem
            .write_obj(Self::buf(i).to_le(), GuestAddress(d))
            .unwrap();
        self.mem
            .write_obj(len.to_le(), GuestAddress(d + 8))
            .unwrap();
        self.mem
            .write_obj(flags.to_le(), GuestAddress(d + 12))
            .unwrap();
        self.mem.write_obj(0u16, GuestAddress(d + 14)).unwrap();
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.mem.write_obj(i.to_le(), GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(AVAIL + 2))
            .unwrap();
    }

    /// Post one chain over descriptors `first..first + lens.len()`, buffer
    /// `i` of `lens[i]` bytes in descriptor `i`'s page, all with `flags`.
    fn post_chain(&mut self, first: u16, lens: &[u32], flags: u16) {
        let n = lens.len() as u16;
        for (k, &len) in lens.iter().enumerate() {
            let i = first + k as u16;
            let d = DESC + 16 * u64::from(i);
            let last = k as u16 + 1 == n;
            let f = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            self.mem
                .write_obj(Self::buf(i).to_le(), GuestAddress(d))
                .unwrap();
            self.mem
                .write_obj(len.to_le(), GuestAddress(d + 8))
                .unwrap();
            self.mem.write_obj(f.to_le(), GuestAddress(d + 12)).unwrap();
            self.mem
                .write_obj((i + 1).to_le(), GuestAddress(d + 14))
                .unwrap();
        }
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.mem
            .write_obj(first.to_le(), GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(AVAIL + 2))
            .unwrap();
    }

    /// Post `n` RX buffers of a page each.
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let i = self.avail_idx % QSIZE;
            self.post(i, BUF_LEN, VRING_DESC_F_WRITE as u16);
        }
    }

    /// Post one TX frame.
    fn post_tx(&mut self, frame: &[u8]) {
        let i = self.avail_idx % QSIZE;
        self.mem
            .write_slice(frame, GuestAddress(Self::buf(i)))
            .unwrap();
        self.post(i, frame.len() as u32, 0);
    }

    fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(USED + 2)).unwrap())
    }

    /// Used element `n`: (descriptor id, length).
    fn used(&self, n: u16) -> (u32, u32) {
        let at = USED + 4 + 8 * u64::from(n % QSIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }

    /// The `len` bytes the device wrote into descriptor `id`'s buffer.
    fn received(&self, id: u32, len: u32) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut out, GuestAddress(Self::buf(id as u16)))
            .unwrap();
        out
    }
}

/// A frame as the TAP carries it with a 12-byte header: zero header, then
/// an Ethernet frame of `len` bytes filled with `seed`.
fn tap_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend((0..len).map(|i| seed.wrapping_add(i as u8)));
    f
}

/// With VERSION_1 and MRG_RXBUF, as QEMU's guests negotiate.
fn neg() -> Negotiated {
    Negotiated {
        hdr_len: HDR_LEN,
        mrg_rxbuf: true,
    }
}

/// A queue pair on a scripted TAP, and one vring of a guest: RX or TX,
/// whichever the test drives.
struct Fixture {
    tap: Arc<ScriptedTap>,
    qp: QueuePair,
    v: Vring,
    c: Arc<QueueCounters>,
}

impl Fixture {
    fn new() -> Fixture {
        let tap = Arc::new(ScriptedTap::default());
        let qp = QueuePair::new(0, tap.clone() as Arc<dyn TapIo>, 64, None);
        let c = qp.counters.clone();
        Fixture {
            tap,
            qp,
            v: Vring::new(),
            c,
        }
    }

    /// The same in FQ-CoDel mode (default AQM parameters).
    fn fq() -> Fixture {
        let tap = Arc::new(ScriptedTap::default());
        let aqm = fq_codel::FqCodel::try_new(fq_codel::Config::default()).unwrap();
        let qp = QueuePair::new(0, tap.clone() as Arc<dyn TapIo>, 64, Some(aqm));
        let c = qp.counters.clone();
        Fixture {
            tap,
            qp,
            v: Vring::new(),
            c,
        }
    }

    /// RX passes until one leaves no work (at most `max`); how many ran.
    fn rx_until_done(&mut self, max: usize) -> usize {
        for n in 1..=max {
            if !self.rx().work_left {
                return n;
            }
        }
        panic!("RX still had work after {max} passes");
    }

    /// A pass of RX over the fixture's vring, with `n` negotiated.
    fn rx_with(&mut self, n: Negotiated) -> super::Pass {
        let mem = self.v.mem.clone();
        self.qp.rx_run(&mut self.v.queue, &mem, n, true)
    }

    fn rx(&mut self) -> super::Pass {
        self.rx_with(neg())
    }

    /// A pass of TX over the fixture's vring.
    fn tx(&mut self) -> super::Pass {
        let mem = self.v.mem.clone();
        self.qp.tx_run(&mut self.v.queue, &mem, neg())
    }

    /// Give the guest a fresh vring (after a reset of the old one).
    fn fresh_vring(&mut self) {
        self.v = Vring::new();
    }

    /// Post a TX chain whose buffer lies outside guest memory and run TX:
    /// the guest broke its TX queue.
    fn break_tx(&mut self) {
        self.v.post_tx(&tap_frame(60, 1));
        self.v
            .mem
            .write_obj(0x200_000u64.to_le(), GuestAddress(DESC))
            .unwrap();
        let _ = self.tx();
        assert_eq!(self.qp.broken(), (false, true));
    }

    /// Frames the TAP accepted.
    fn written(&self) -> Vec<Vec<u8>> {
        self.tap.written.lock().unwrap().clone()
    }
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Relaxed)
}

#[test]
fn rx_frames_go_straight_into_guest_buffers() {
    let mut f = Fixture::new();
    f.v.post_rx(4);
    let frames = [tap_frame(60, 1), tap_frame(1400, 2)];
    f.tap.read_script(frames.iter().cloned().map(Step::Frame));
    let pass = f.rx();
    assert!(!pass.work_left);
    assert!(
        pass.interrupt,
        "a guest without EVENT_IDX wants the interrupt"
    );
    assert_eq!(f.v.used_idx(), 2);
    for (n, frame) in frames.iter().enumerate() {
        let (id, len) = f.v.used(n as u16);
        assert_eq!(len as usize, frame.len());
        let got = f.v.received(id, len);
        // num_buffers (1) is the daemon's; the rest is what the TAP gave.
        assert_eq!(&got[10..12], &[1, 0]);
        assert_eq!(&got[HDR_LEN..], &frame[HDR_LEN..]);
    }
    assert_eq!((get(&f.c.rx_frames), get(&f.c.rx_direct_frames)), (2, 2));
    assert_eq!(get(&f.c.rx_bytes), 60 + 1400);
    assert_eq!(get(&f.c.rx_frame_bytes_high_water), 1400);
    assert_eq!(f.c.dropped(), 0);
}

#[test]
fn rx_eagain_ends_the_pass_and_the_next_edge_resumes_it() {
    let mut f = Fixture::new();
    f.v.post_rx(2);
    // The TAP is empty: EAGAIN, nothing moves, nothing is wrong.
    let pass = f.rx();
    assert_eq!((pass.work_left, pass.interrupt), (false, false));
    assert_eq!(f.v.used_idx(), 0);
    // A frame arrives; until the fd says EPOLLIN the worker does not read.
    f.tap.read_script([Step::Frame(tap_frame(100, 7))]);
    let _ = f.rx();
    assert_eq!(f.tap.unread(), 1, "read without an edge after EAGAIN");
    f.qp.tap_readable();
    let _ = f.rx();
    assert_eq!((f.v.used_idx(), f.tap.unread()), (1, 0));
    assert_eq!(f.qp.broken(), (false, false));
    assert_eq!(f.c.dropped(), 0);
}

#[test]
fn rx_efault_counts_the_frame_and_breaks_the_queue() {
    let mut f = Fixture::new();
    f.v.post_rx(2);
    // The kernel took a frame but could not write it into the guest's
    // buffers: the guest's memory is not what its chains say.
    f.tap
        .read_script([Step::Errno(libc::EFAULT), Step::Frame(tap_frame(60, 1))]);
    let pass = f.rx();
    assert!(!pass.interrupt);
    assert_eq!(get(&f.c.rx_dropped_read_fault), 1);
    assert_eq!(get(&f.c.rx_queue_broken), 1);
    assert_eq!(f.qp.broken(), (true, false));
    assert_eq!(f.v.used_idx(), 0, "nothing published on a broken queue");
    // A broken queue is left alone: the next frame waits (in the ring),
    // it is not lost and not written into the guest.
    f.qp.tap_readable();
    let _ = f.rx();
    assert_eq!(f.v.used_idx(), 0);
    assert_eq!(get(&f.c.rx_frames), 0);
    assert_eq!(f.c.dropped(), 1);
    // A new connection clears the broken state and delivers what waited.
    f.qp.reset_for_connection();
    let _ = f.rx();
    assert_eq!(f.v.used_idx(), 1);
    assert_eq!(get(&f.c.rx_frames), 1);
}

#[test]
fn rx_einval_on_the_direct_read_hands_the_frame_to_the_ring() {
    let mut f = Fixture::new();
    f.v.post_rx(2);
    // The kernel refused the direct path's iovecs before taking a frame:
    // the same frame is then read through the ring and copied.
    let frame = tap_frame(200, 9);
    f.tap
        .read_script([Step::Errno(libc::EINVAL), Step::Frame(frame.clone())]);
    let _ = f.rx();
    assert_eq!(f.v.used_idx(), 1);
    let (id, len) = f.v.used(0);
    assert_eq!(&f.v.received(id, len)[HDR_LEN..], &frame[HDR_LEN..]);
    assert_eq!((get(&f.c.rx_frames), get(&f.c.rx_direct_frames)), (1, 0));
    assert_eq!(f.qp.broken(), (false, false));
    assert_eq!(f.c.dropped(), 0);
}

#[test]
fn rx_enobufs_loses_nothing_and_waits_for_the_next_edge() {
    let mut f = Fixture::new();
    f.v.post_rx(2);
    f.tap
        .read_script([Step::Errno(libc::ENOBUFS), Step::Frame(tap_frame(80, 3))]);
    let _ = f.rx();
    assert_eq!((f.v.used_idx(), f.tap.unread()), (0, 1));
    assert_eq!(f.qp.broken(), (false, false));
    f.qp.tap_readable();
    let _ = f.rx();
    assert_eq!(f.v.used_idx(), 1);
    assert_eq!(f.c.dropped(), 0);
}

#[test]
fn rx_runts_and_truncated_frames_are_counted_not_delivered() {
    let mut f = Fixture::new();
    f.v.post_rx(4);
    // A header and 10 bytes: shorter than an Ethernet header. Then a frame
    // longer than any frame the TAP may hand out (the read fills every
    // byte offered): truncated. Then a good one.
    f.tap.read_script([
        Step::Frame(tap_frame(10, 0)),
        Step::Frame(tap_frame(super::vnet::BUF_SIZE, 0)),
        Step::Frame(tap_frame(64, 5)),
    ]);
    let _ = f.rx();
    assert_eq!(get(&f.c.rx_dropped_too_short), 1);
    assert_eq!(get(&f.c.rx_dropped_truncated), 1);
    assert_eq!((f.v.used_idx(), get(&f.c.rx_frames)), (1, 1));
    assert_eq!(f.v.used(0).1 as usize, HDR_LEN + 64);
}

#[test]
fn rx_a_frame_larger_than_all_the_guests_descriptors_hold_is_dropped() {
    // Found by the rx_tx_paths fuzz target. With MRG_RXBUF, a guest whose
    // chains have several descriptors each can have its whole table posted
    // and still too little room for a frame: it cannot post more until we
    // return a chain. The frame used to wait at the ring's head forever
    // (only a frame needing more *chains* than the queue size was dropped),
    // and every frame behind it with it.
    let mut f = Fixture::new();
    // One chain of all 16 descriptors, 8 bytes each: 128 bytes.
    f.v.post_chain(0, &[8; QSIZE as usize], VRING_DESC_F_WRITE as u16);
    f.tap.read_script([
        Step::Frame(tap_frame(200, 1)),
        Step::Frame(tap_frame(60, 2)),
    ]);
    let _ = f.rx();
    assert_eq!(get(&f.c.rx_dropped_too_big), 1);
    // The chain was put back and takes the next frame, which fits.
    assert_eq!((f.v.used_idx(), get(&f.c.rx_frames)), (1, 1));
    let (id, len) = f.v.used(0);
    assert_eq!((id, len as usize), (0, HDR_LEN + 60));
    assert_eq!(f.qp.broken(), (false, false));
}

#[test]
fn rx_legacy_header_frames_are_checked_against_the_negotiated_length() {
    // With a 10-byte header, a 24-byte read is a header and a 14-byte
    // Ethernet header: deliverable (the old check used 12 and dropped it).
    let mut f = Fixture::new();
    let legacy = Negotiated::from_features(0);
    assert_eq!(legacy.hdr_len, 10);
    // Through the ring path: no guest buffers yet, so the frame waits there.
    f.tap.read_script([Step::Frame(vec![0u8; 24])]);
    let _ = f.rx_with(legacy);
    assert_eq!(get(&f.c.rx_dropped_too_short), 0);
    // Now the guest posts a buffer: the frame is delivered, no num_buffers.
    f.v.post_rx(1);
    let _ = f.rx_with(legacy);
    assert_eq!(f.v.used_idx(), 1);
    assert_eq!(f.v.used(0).1, 24);
}

#[test]
fn tx_frames_are_written_from_guest_memory() {
    let mut f = Fixture::new();
    let frame = tap_frame(60, 4);
    f.v.post_tx(&frame);
    let pass = f.tx();
    assert!(!pass.work_left);
    assert_eq!(f.written(), vec![frame]);
    assert_eq!(f.v.used_idx(), 1);
    assert_eq!(get(&f.c.tx_frames), 1);
    assert_eq!(get(&f.c.tx_bytes), 60);
    assert_eq!(get(&f.c.tx_frame_bytes_high_water), 60);
}

/// EAGAIN and ENOBUFS on a TAP write mean "full for now": the chain stays
/// in the guest's ring, TX waits for EPOLLOUT, then sends it.
fn tx_full_keeps_the_chain(errno: i32) {
    let mut f = Fixture::new();
    let frame = tap_frame(60, 4);
    f.v.post_tx(&frame);
    f.tap.write_script([Step::Errno(errno)]);
    let pass = f.tx();
    assert_eq!((pass.work_left, pass.interrupt), (false, false));
    assert_eq!(f.v.used_idx(), 0, "the chain stays with the guest");
    assert_eq!(get(&f.c.tx_tap_full), 1);
    // Until EPOLLOUT, TX does not try again.
    let _ = f.tx();
    assert!(f.written().is_empty());
    f.qp.tap_writable();
    let _ = f.tx();
    assert_eq!(f.written(), vec![frame]);
    assert_eq!(f.v.used_idx(), 1);
    assert_eq!(f.c.dropped(), 0);
}

#[test]
fn tx_eagain_keeps_the_chain_until_epollout() {
    tx_full_keeps_the_chain(libc::EAGAIN);
}

#[test]
fn tx_enobufs_keeps_the_chain_until_epollout() {
    tx_full_keeps_the_chain(libc::ENOBUFS);
}

/// Any other write error refuses that frame for good: counted, the chain
/// returned to the guest, the next frame sent.
fn tx_error_drops_one_frame(errno: i32) {
    let mut f = Fixture::new();
    let (a, b) = (tap_frame(60, 1), tap_frame(70, 2));
    f.v.post_tx(&a);
    f.v.post_tx(&b);
    f.tap.write_script([Step::Errno(errno)]);
    let _ = f.tx();
    assert_eq!(f.written(), vec![b]);
    assert_eq!(f.v.used_idx(), 2);
    assert_eq!(
        (get(&f.c.tx_dropped_tap_error), get(&f.c.tx_frames)),
        (1, 1)
    );
    assert_eq!(f.qp.broken(), (false, false));
}

#[test]
fn tx_efault_drops_one_frame() {
    tx_error_drops_one_frame(libc::EFAULT);
}

#[test]
fn tx_einval_drops_one_frame() {
    tx_error_drops_one_frame(libc::EINVAL);
}

#[test]
fn tx_chain_outside_guest_memory_breaks_the_queue() {
    let mut f = Fixture::new();
    f.break_tx();
    assert_eq!(get(&f.c.tx_queue_broken), 1);
    assert!(f.written().is_empty());
    assert_eq!(f.v.used_idx(), 0);
}

#[test]
fn a_guest_reset_of_a_broken_rx_queue_serves_it_again() {
    let mut f = Fixture::new();
    f.v.post_rx(2);
    f.tap
        .read_script([Step::Errno(libc::EFAULT), Step::Frame(tap_frame(60, 1))]);
    let _ = f.rx();
    assert_eq!(f.qp.broken(), (true, false));
    // The next frame waits in the ring while the queue is broken.
    f.qp.tap_readable();
    let _ = f.rx();
    assert_eq!(f.v.used_idx(), 0);
    // The guest resets the vring on the same connection (GET_VRING_BASE,
    // then a fresh setup): the queue is served again, the frame that
    // waited in the ring meanwhile is delivered.
    assert!(f.qp.reset_rx(), "it was broken");
    f.fresh_vring();
    f.v.post_rx(1);
    let _ = f.rx();
    assert_eq!(f.qp.broken(), (false, false));
    assert_eq!(f.v.used_idx(), 1);
    assert_eq!(get(&f.c.rx_frames), 1);
}

#[test]
fn a_guest_reset_of_a_broken_tx_queue_serves_it_again() {
    let mut f = Fixture::new();
    f.break_tx();
    assert!(f.qp.reset_tx());
    assert!(!f.qp.reset_tx(), "a second reset finds it healthy");
    f.fresh_vring();
    let frame = tap_frame(64, 2);
    f.v.post_tx(&frame);
    let _ = f.tx();
    assert_eq!(f.written(), vec![frame]);
    assert_eq!(f.qp.broken(), (false, false));
}

#[test]
fn fq_codel_reads_the_tap_dry_into_the_aqm_while_the_guest_has_no_buffers() {
    let mut f = Fixture::fq();
    // A slow guest: no buffers. The reader drains the TAP anyway (the tun
    // ring must not fill), the AQM holds the frames.
    f.tap
        .read_script((0..600).map(|i| Step::Frame(tap_frame(60, i as u8))));
    f.rx_until_done(10);
    assert_eq!(f.tap.unread(), 0);
    assert_eq!(get(&f.c.rx_aqm_backlog_frames), 600);
    // The guest posts buffers: they are filled from the AQM.
    f.v.post_rx(QSIZE);
    let _ = f.rx();
    assert_eq!(f.v.used_idx(), QSIZE);
    assert_eq!(get(&f.c.rx_aqm_backlog_frames), 600 - u64::from(QSIZE));
    assert_eq!(f.c.dropped(), 0);
}

/// A limit of `frames` per pass: 1 frame per second with that burst, so
/// that no token comes back while the test runs.
fn frames_limit(burst: u64) -> Option<Arc<super::Limiter>> {
    super::Limiter::new(crate::settings::RateLimit {
        bytes: None,
        frames: Some(crate::settings::TokenBucket { rate: 1, burst }),
    })
}

#[test]
fn an_rx_limit_holds_frames_in_the_ring_without_loss() {
    let mut f = Fixture::new();
    f.qp.set_limits(frames_limit(3), None);
    f.v.post_rx(8);
    f.tap
        .read_script((0..6).map(|i| Step::Frame(tap_frame(60, i as u8))));
    let pass = f.rx();
    assert_eq!(f.v.used_idx(), 3, "the burst, then the limit holds");
    let wait = pass.wait.expect("a held pass asks to come back");
    assert!(wait > Duration::from_millis(500), "1 frame/s: {wait:?}");
    assert!(!pass.work_left);
    assert_eq!(get(&f.c.rx_rate_limited), 1);
    // The rest was read into the ring, where it waits: nothing lost.
    assert_eq!(f.tap.unread(), 0);
    assert_eq!(f.c.dropped(), 0);
    // Without the limit (as if tokens had come back) they all go, in order.
    f.qp.set_limits(None, None);
    let pass = f.rx();
    assert_eq!((f.v.used_idx(), pass.wait), (6, None));
    for n in 0..6u16 {
        let (id, len) = f.v.used(n);
        assert_eq!(
            f.v.received(id, len)[HDR_LEN],
            n as u8,
            "frame {n} in order"
        );
    }
}

#[test]
fn an_rx_limit_in_fq_codel_mode_leaves_the_queue_in_the_aqm() {
    let mut f = Fixture::fq();
    f.qp.set_limits(frames_limit(2), None);
    f.v.post_rx(8);
    f.tap
        .read_script((0..100).map(|i| Step::Frame(tap_frame(60, i as u8))));
    f.rx_until_done(10);
    assert_eq!(f.v.used_idx(), 2);
    // The reader still drained the TAP: the queue is the AQM's to manage.
    assert_eq!(f.tap.unread(), 0);
    assert_eq!(get(&f.c.rx_aqm_backlog_frames), 98);
    assert_eq!(f.c.dropped(), 0);
}

#[test]
fn a_tx_limit_leaves_chains_in_the_guests_ring() {
    let mut f = Fixture::new();
    f.qp.set_limits(None, frames_limit(2));
    let frames: Vec<_> = (0..5).map(|i| tap_frame(60, i)).collect();
    for fr in &frames {
        f.v.post_tx(fr);
    }
    let pass = f.tx();
    assert_eq!(f.written(), frames[..2].to_vec());
    assert_eq!(f.v.used_idx(), 2, "the other chains stay with the guest");
    assert!(pass.wait.is_some() && !pass.work_left);
    assert_eq!(get(&f.c.tx_rate_limited), 1);
    // Still held: nothing more goes until tokens come back.
    assert!(f.tx().wait.is_some());
    assert_eq!(f.written().len(), 2);
    f.qp.set_limits(None, None);
    let _ = f.tx();
    assert_eq!(f.written(), frames);
    assert_eq!(f.c.dropped(), 0);
}
