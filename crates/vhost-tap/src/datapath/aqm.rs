//! FQ-CoDel mode's queue: frames read from the TAP wait here while the
//! guest is slow; CoDel decides at the head, flows are served round-robin.
//!
//! The glue between the data path and the `fq-codel` crate: frames are
//! copied out of the ring into owned buffers, the clock is the queue's own
//! monotonic origin, and every drop the AQM decides is counted.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::counters::QueueCounters;

/// A frame waiting in FQ-CoDel: the virtio-net header, then the Ethernet frame.
pub struct QueuedFrame {
    pub buf: Vec<u8>,
    hdr_len: usize,
}

impl fq_codel::Packet for QueuedFrame {
    fn frame(&self) -> &[u8] {
        &self.buf[self.hdr_len.min(self.buf.len())..]
    }
    fn frame_mut(&mut self) -> &mut [u8] {
        let h = self.hdr_len.min(self.buf.len());
        &mut self.buf[h..]
    }
}

pub struct Aqm {
    fq: fq_codel::FqCodel<QueuedFrame>,
    /// Dequeued (CoDel already judged it) but not delivered yet: the guest had no buffers.
    head: Option<QueuedFrame>,
    dropped: Vec<QueuedFrame>,
    origin: Instant,
}

impl Aqm {
    pub fn new(fq: fq_codel::FqCodel<QueuedFrame>) -> Aqm {
        Aqm {
            fq,
            head: None,
            dropped: Vec::new(),
            origin: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Copy `frame` (header first) into the queue; frames the limits push
    /// out are counted as overlimit drops.
    pub fn enqueue(&mut self, frame: &[u8], hdr_len: usize, c: &QueueCounters) {
        let now = self.now_ns();
        let pkt = QueuedFrame {
            buf: frame.to_vec(),
            hdr_len,
        };
        self.fq.enqueue(pkt, now, &mut self.dropped);
        if !self.dropped.is_empty() {
            QueueCounters::add(&c.rx_aqm_overlimit_drops, self.dropped.len() as u64);
            self.dropped.clear();
        }
    }

    /// The next frame for the guest, dequeued if there is none waiting.
    pub fn head(&mut self, c: &QueueCounters) -> Option<&mut QueuedFrame> {
        if self.head.is_none() {
            let now = self.now_ns();
            self.head = self.fq.dequeue(now, &mut self.dropped);
            if !self.dropped.is_empty() {
                QueueCounters::add(&c.rx_aqm_codel_drops, self.dropped.len() as u64);
                self.dropped.clear();
            }
        }
        self.head.as_mut()
    }

    /// The head frame left (delivered, or dropped as undeliverable).
    pub fn release_head(&mut self) {
        self.head = None;
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_none() && self.fq.is_empty()
    }

    /// Empty the queue; returns how many frames were in it.
    pub fn clear(&mut self) -> usize {
        let mut out = Vec::new();
        self.fq.clear(&mut out);
        out.len() + usize::from(self.head.take().is_some())
    }

    /// Refresh the gauges.
    pub fn publish(&self, c: &QueueCounters) {
        let head = self.head.as_ref();
        c.rx_aqm_backlog_frames.store(
            (self.fq.len() + usize::from(head.is_some())) as u64,
            Relaxed,
        );
        c.rx_aqm_backlog_bytes.store(
            (self.fq.backlog_bytes() + head.map_or(0, |h| h.buf.len())) as u64,
            Relaxed,
        );
        let st = self.fq.stats();
        c.rx_aqm_ecn_marks.store(st.ecn_marks, Relaxed);
        c.rx_aqm_flows.store(st.flows_active as u64, Relaxed);
    }
}
