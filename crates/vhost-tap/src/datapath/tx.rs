//! The TX drainer: guest TX chains are checked, then written to the TAP
//! with `writev` straight from guest memory (no copy in userspace). A frame
//! the TAP refuses for now (EAGAIN/ENOBUFS) stays in the guest's ring and
//! TX waits for EPOLLOUT, so the guest's own qdisc sees a stopped queue.

use std::io;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::rx_buffers::Table;
use super::used::UsedRing;
use super::vnet::Negotiated;
use super::{Pass, QueueError, QueuePair, Tally, BUDGET};
use crate::counters::QueueCounters;
use crate::guest::chain::{self, Chain, Direction};
use crate::guest::iovecs::guest_iovecs;
use crate::guest::map::GuestMap;

/// What became of one TX chain.
enum Sent {
    /// The TAP took the frame.
    Frame,
    /// Dropped and counted (invalid length, or the TAP refused it for good);
    /// the chain is returned to the guest.
    Dropped,
    /// The TAP is full: the chain stays in the guest's ring.
    TapFull,
}

/// How a drain loop ended.
enum Drained {
    /// The guest's ring is empty (and kicks are on again).
    Empty,
    /// The budget ran out with chains left.
    Budget,
    /// The TAP is full; EPOLLOUT resumes.
    TapFull,
    /// The rate limit held the rest back; the pair's timer resumes.
    Limited,
}

impl QueuePair {
    /// Drain guest TX chains into the TAP until the ring is empty, the TAP
    /// is full or the budget runs out; publish the used entries once.
    pub fn tx_run(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap<()>,
        neg: Negotiated,
    ) -> Pass {
        if self.tx_broken || self.tx_blocked {
            return Pass::default();
        }
        let map = &GuestMap::new(mem);
        let mut sent = Tally::default();
        self.tx_meter.begin();
        let drained = self.tx_drain(queue, map, neg, &mut sent);
        sent.publish_tx(&self.counters);
        let wait = self.tx_meter.end();
        let work_left = match drained {
            Ok(Drained::Budget) => true,
            Ok(Drained::Limited) => {
                QueueCounters::add(&self.counters.tx_rate_limited, 1);
                false
            }
            Ok(Drained::TapFull) => {
                self.tx_blocked = true;
                QueueCounters::add(&self.counters.tx_tap_full, 1);
                false
            }
            Ok(Drained::Empty) => false,
            Err(e) => {
                self.break_tx(&e);
                false
            }
        };
        // One used-index update for the whole batch.
        let published = self.tx_used.publish(queue, mem);
        self.tx_ok(published);
        let wanted = self.tx_used.needs_notification(queue, mem);
        let interrupt = self.tx_ok(wanted).unwrap_or(false);
        Pass {
            work_left,
            interrupt,
            wait,
        }
    }

    /// The loop of `tx_run`, with kicks off while it drains. `Err`: the
    /// guest broke the queue.
    fn tx_drain(
        &mut self,
        queue: &mut Queue,
        map: &GuestMap<'_>,
        neg: Negotiated,
        sent: &mut Tally,
    ) -> Result<Drained, QueueError> {
        let mem = map.mem();
        let notifications = |verb| move |source| QueueError::Notifications { verb, source };
        if self.tx_kicks_on {
            // No kicks while we drain; turned on again when the ring looks empty.
            queue
                .disable_notification(mem)
                .map_err(notifications("disable"))?;
            self.tx_kicks_on = false;
        }
        let table = Table::of(queue);
        let mut chain = self.chains.pop().unwrap_or_default();
        let mut done = 0;
        let drained = loop {
            let used = UsedRing::of(queue);
            let r = self.tx_pass(queue, map, table, &used, neg, &mut chain, &mut done, sent);
            match r {
                Ok(None) => {}
                Ok(Some(end)) => break Ok(end),
                Err(e) => break Err(e),
            }
            // The ring looked empty: publish, ask for a kick, look once more.
            if let Err(e) = self.tx_used.publish(queue, mem) {
                break Err(e);
            }
            self.tx_kicks_on = true;
            match queue.enable_notification(mem) {
                Ok(true) => {
                    // More came meanwhile: drain it with kicks off again.
                    if let Err(e) = queue.disable_notification(mem) {
                        break Err(notifications("disable")(e));
                    }
                    self.tx_kicks_on = false;
                }
                Ok(false) => break Ok(Drained::Empty),
                Err(e) => break Err(notifications("enable")(e)),
            }
        };
        self.chains.push(chain);
        drained
    }

    /// One pass over the chains the avail index shows now. `Ok(None)`: the
    /// ring looked empty at the end; `Ok(Some(_))`: stopped early.
    #[allow(clippy::too_many_arguments)]
    fn tx_pass(
        &mut self,
        queue: &mut Queue,
        map: &GuestMap<'_>,
        table: Table,
        used: &UsedRing,
        neg: Negotiated,
        chain: &mut Chain,
        done: &mut usize,
        sent: &mut Tally,
    ) -> Result<Option<Drained>, QueueError> {
        // One avail-index read per pass, not per chain.
        let mut iter = queue.iter(map.mem()).map_err(QueueError::AvailRing)?;
        while let Some(dc) = iter.next() {
            if *done >= BUDGET {
                iter.go_to_previous_position();
                return Ok(Some(Drained::Budget));
            }
            if !self.tx_meter.open() {
                // The chain stays in the guest's ring: its queue fills and
                // stops, and the guest's qdisc holds the rest.
                iter.go_to_previous_position();
                return Ok(Some(Drained::Limited));
            }
            chain::walk(
                map,
                table.addr,
                table.size,
                dc.head_index(),
                Direction::Readable,
                chain,
            )?;
            match self.send(map, chain, neg)? {
                Sent::Frame => {
                    let len = chain.total_len as usize;
                    sent.add(len, neg.hdr_len);
                    self.tx_meter.spend(len.saturating_sub(neg.hdr_len));
                }
                Sent::Dropped => {}
                Sent::TapFull => {
                    // The chain stays in the guest's ring; EPOLLOUT resumes.
                    iter.go_to_previous_position();
                    return Ok(Some(Drained::TapFull));
                }
            }
            self.tx_used.push(used, map, chain.head, 0)?;
            *done += 1;
        }
        Ok(None)
    }

    /// Check one chain's length and `writev` it straight from guest memory.
    fn send(
        &mut self,
        map: &GuestMap<'_>,
        chain: &Chain,
        neg: Negotiated,
    ) -> Result<Sent, QueueError> {
        let total = chain.total_len as usize;
        let invalid = if total < neg.min_len() {
            Some(&self.counters.tx_dropped_too_short)
        } else if total > neg.max_len() {
            Some(&self.counters.tx_dropped_too_big)
        } else {
            None
        };
        if let Some(counter) = invalid {
            QueueCounters::add(counter, 1);
            log::debug!(
                "tx: queue {}: dropped a {total}-byte chain (invalid length)",
                self.index
            );
            return Ok(Sent::Dropped);
        }
        self.iov.0.clear();
        guest_iovecs(map, std::slice::from_ref(chain), &mut self.iov.0)?;
        loop {
            // SAFETY: every iovec was built just above by `guest_iovecs`,
            // each inside one mapped region of the memory `map` borrows (so
            // the mapping outlives this call); writev only reads them.
            let r = unsafe { self.tap.writev(&self.iov.0) };
            return Ok(match r {
                Ok(_) => {
                    self.tap_is_up();
                    Sent::Frame
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Sent::TapFull,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Sent::TapFull,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The TAP is down (the kernel drops the frame too): like a
                // NIC without carrier, the frame is lost, and counted.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    self.tap_is_down();
                    Sent::Dropped
                }
                Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                    QueueCounters::add(&self.counters.tx_dropped_tap_gone, 1);
                    self.tap_is_gone();
                    Sent::Dropped
                }
                Err(e) => {
                    QueueCounters::add(&self.counters.tx_dropped_tap_error, 1);
                    log::debug!("tx: queue {}: the TAP refused a frame: {e}", self.index);
                    Sent::Dropped
                }
            });
        }
    }
}
