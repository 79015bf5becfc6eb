//! One queue pair on a scripted TAP, with an RX and a TX vring of a guest,
//! and the books that say where every frame went, and whether the guest
//! got the interrupts it asked for. The data-path targets
//! decide what happens; this checks it after every pass and at the end.

use std::sync::Arc;

use vhost_tap::datapath::{Limiter, Negotiated, QueuePair, QueuedFrame, TapIo};

use crate::guest::{ChainSpec, Guest, Kind, SLOT};
use crate::ledger::{self, TxBooks};
use crate::tap::{Handed, ScriptedTap};

/// Ids of the two vrings' memories in the TAP's iovec check.
const RX_MEM: usize = 0;
const TX_MEM: usize = 1;

pub struct Harness {
    pub tap: Arc<ScriptedTap>,
    pub qp: QueuePair,
    pub rx: Guest,
    pub tx: Guest,
    pub neg: Negotiated,
    /// Frames the guest received (well-behaved guest only).
    pub delivered: Vec<Vec<u8>>,
    pub tx_books: TxBooks,
    /// No AQM has been in the way: frames must arrive in order.
    pub ordered: bool,
    /// A rate limit was set (frames may wait at the end).
    pub limited: (bool, bool),
    /// CoDel marked ECN CE on some frame (its IP header changed).
    marked: bool,
}

impl Harness {
    pub fn new(neg: Negotiated, ring_size: usize, rx: Guest, tx: Guest) -> Harness {
        let tap = Arc::new(ScriptedTap::default());
        tap.set_guest(RX_MEM, &rx.mem);
        tap.set_guest(TX_MEM, &tx.mem);
        let qp = QueuePair::new(0, tap.clone() as Arc<dyn TapIo>, ring_size.max(2), None);
        Harness {
            tap,
            qp,
            rx,
            tx,
            neg,
            delivered: Vec::new(),
            tx_books: TxBooks::default(),
            ordered: true,
            limited: (false, false),
            marked: false,
        }
    }

    /// FQ-CoDel mode on (`Some`) or off; frames it held are counted as
    /// `rx_dropped_mode_change`.
    pub fn set_aqm(&mut self, aqm: Option<fq_codel::FqCodel<QueuedFrame>>) {
        if aqm.is_some() {
            self.ordered = false;
        }
        self.qp.set_aqm(aqm);
        self.note_marks();
    }

    /// The ECN marks gauge is the current AQM's: remember any mark.
    fn note_marks(&mut self) {
        let c = &self.qp.counters;
        self.marked |= c
            .rx_aqm_ecn_marks
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0;
    }

    pub fn set_limits(&mut self, rx: Option<Arc<Limiter>>, tx: Option<Arc<Limiter>>) {
        self.limited = (rx.is_some(), tx.is_some());
        self.qp.set_limits(rx, tx);
    }

    /// One RX pass, then the guest looks at its used ring.
    pub fn rx(&mut self, ready: bool) {
        let mem = self.rx.mem.clone();
        let old = self.rx.used_idx();
        let pass = self.qp.rx_run(&mut self.rx.queue, &mem, self.neg, ready);
        if !self.rx.hostile {
            let want = self.rx.wants_interrupt(old, self.rx.used_idx());
            assert_eq!(
                pass.interrupt, want,
                "RX interrupt for used entries {old}.."
            );
        }
        self.note_marks();
        self.harvest_rx();
        self.check_books();
    }

    fn harvest_rx(&mut self) {
        let entries = self.rx.harvest();
        if !self.rx.hostile {
            let frames = ledger::rx_frames(&self.rx, &entries, self.neg);
            self.delivered.extend(frames);
        }
    }

    /// One TX pass, then the guest looks at its used ring.
    pub fn tx(&mut self) {
        let mem = self.tx.mem.clone();
        let old = self.tx.used_idx();
        let pass = self.qp.tx_run(&mut self.tx.queue, &mem, self.neg);
        if !self.tx.hostile {
            let want = self.tx.wants_interrupt(old, self.tx.used_idx());
            assert_eq!(
                pass.interrupt, want,
                "TX interrupt for used entries {old}.."
            );
        }
        self.harvest_tx();
        self.check_books();
    }

    fn harvest_tx(&mut self) {
        let entries = self.tx.harvest();
        if !self.tx.hostile {
            self.tx_books.add(&entries, self.neg);
        }
    }

    /// The guest stops a vring and sets it up afresh (`GET_VRING_BASE`,
    /// as a driver reload does): new rings, chains it had posted forgotten.
    pub fn reset(&mut self, kind: Kind, size: u16, split: bool, event_idx: bool) {
        match kind {
            Kind::Rx => {
                self.harvest_rx();
                let _ = self.qp.reset_rx();
                let hostile = self.rx.hostile;
                self.rx = Guest::new(Kind::Rx, size, split, event_idx);
                // The books of a hostile guest stay unchecked.
                self.rx.hostile = hostile;
                self.tap.set_guest(RX_MEM, &self.rx.mem);
            }
            Kind::Tx => {
                self.harvest_tx();
                let _ = self.qp.reset_tx();
                let hostile = self.tx.hostile;
                self.tx = Guest::new(Kind::Tx, size, split, event_idx);
                self.tx.hostile = hostile;
                self.tap.set_guest(TX_MEM, &self.tx.mem);
            }
        }
    }

    /// What must hold after every pass.
    fn check_books(&self) {
        let c = &self.qp.counters;
        ledger::check_never(c);
        let handed = self.tap.handed_count() as u64;
        let accounted = ledger::rx_accounted(c);
        assert!(
            accounted <= handed,
            "{accounted} frames delivered or dropped, {handed} handed out by the TAP"
        );
        let written = self.tap.written.lock().unwrap();
        assert_eq!(
            written.len() as u64,
            c.tx_frames.load(std::sync::atomic::Ordering::Relaxed)
        );
        for w in written.iter() {
            assert!(
                (self.neg.min_len()..=self.neg.max_len()).contains(&w.len()),
                "a {}-byte frame written to the TAP",
                w.len()
            );
        }
        if !self.rx.hostile {
            assert_eq!(
                self.delivered.len() as u64,
                c.rx_frames.load(std::sync::atomic::Ordering::Relaxed),
                "frames the guest found in its used ring vs rx_frames"
            );
        }
    }

    /// Frames handed out by the TAP and not yet delivered or dropped.
    fn rx_waiting(&self) -> u64 {
        self.tap.handed_count() as u64 - ledger::rx_accounted(&self.qp.counters)
    }

    /// The end: a well-behaved guest that keeps giving buffers (and a TAP
    /// that takes every frame) gets everything that waits; then the books
    /// must balance exactly.
    pub fn finish(mut self) {
        let (rx_broken, tx_broken) = self.qp.broken();
        if !self.rx.hostile && !rx_broken && !self.limited.0 {
            for _ in 0..64 {
                self.give_rx_buffers();
                self.qp.tap_readable();
                self.rx(true);
                if self.rx_waiting() == 0 && self.tap.unread() == 0 {
                    break;
                }
            }
            if !self.qp.broken().0 {
                assert_eq!(
                    self.rx_waiting(),
                    0,
                    "frames still wait while the guest has buffers"
                );
            }
        }
        if !self.tx.hostile && !tx_broken && !self.limited.1 {
            self.tap.accept_writes();
            for _ in 0..64 {
                self.qp.tap_writable();
                self.tx();
                if self.tx.outstanding() == 0 {
                    break;
                }
            }
            if !self.qp.broken().1 {
                assert_eq!(
                    self.tx.outstanding(),
                    0,
                    "TX chains left in the ring while the TAP takes frames"
                );
            }
        }
        // Whatever still waits is counted as lost at shutdown: then every
        // frame handed out is accounted for.
        self.qp.drop_ring_at_shutdown();
        let c = &self.qp.counters;
        if std::env::var_os("VHOST_TAP_FUZZ_DEBUG").is_some() {
            // What a run did, for reading a seed or a crash: the counters that moved.
            let moved: Vec<String> = c
                .snapshot()
                .into_iter()
                .filter(|&(_, v)| v != 0)
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            eprintln!(
                "handed={} delivered={} written={} broken={:?} hostile={:?} {}",
                self.tap.handed_count(),
                self.delivered.len(),
                self.tap.written.lock().unwrap().len(),
                self.qp.broken(),
                (self.rx.hostile, self.tx.hostile),
                moved.join(" ")
            );
        }
        ledger::check_never(c);
        assert_eq!(
            ledger::rx_accounted(c),
            self.tap.handed_count() as u64,
            "frames handed out by the TAP vs delivered + dropped (by reason)"
        );
        let written = self.tap.written.lock().unwrap().clone();
        if !self.tx.hostile {
            self.tx_books.check(c, &written);
        }
        if !self.rx.hostile {
            let marked = self.marked;
            let handed: Vec<Handed> = self.tap.handed.lock().unwrap().clone();
            ledger::check_rx_content(&handed, &self.delivered, self.neg, self.ordered, marked);
        }
    }

    /// Post RX chains until the descriptors run out: one 8 KiB buffer each
    /// with MRG_RXBUF, else chains of up to 16 such buffers.
    fn give_rx_buffers(&mut self) {
        let per_chain = if self.neg.mrg_rxbuf { 1 } else { 16 };
        while self.rx.free() > 0 {
            let n = per_chain.min(self.rx.free());
            let spec = ChainSpec {
                lens: vec![SLOT as u32; n],
                ..ChainSpec::default()
            };
            if !self.rx.post(&spec, &[]) {
                break;
            }
        }
    }
}
