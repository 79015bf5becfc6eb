//! The FQ-CoDel scheduler (RFC 8290): flow queues, new / old flow lists,
//! deficit round robin, limits.
//!
//! - **Enqueue** (§4.1): classify, timestamp, append to the flow's queue. A
//!   flow that is on neither list joins the tail of the new-flows list with a
//!   full quantum of credit. Then, while over `limit` packets or
//!   `memory_limit` bytes, drop from the *head* of the flow with the most
//!   bytes queued, in a batch as Linux does (see [`OVERLIMIT_DROP_BATCH`]).
//! - **Dequeue** (§4.2): serve the head of the new-flows list, else of the
//!   old-flows list. A flow out of credit gets another quantum and moves to
//!   the tail of the old list. Otherwise CoDel picks its next packet (maybe
//!   dropping some first). A flow with nothing left is removed from its list —
//!   except a new flow while old flows wait: it goes to the tail of the old
//!   list first, so that a flow cannot starve the others by emptying and
//!   re-entering the new list.
//!
//! The flow table is allocated once, in [`FqCodel::try_new`]; each flow's queue is
//! a `VecDeque` that only grows to its high-water mark. The two lists are
//! `VecDeque`s of flow indices with room for every flow, as a flow is on at
//! most one list at a time.

use std::collections::VecDeque;
use std::fmt;

use crate::classify::classify;
use crate::codel::{CodelParams, CodelQueue, CodelVars};
use crate::Packet;

/// Most packets dropped from the fattest flow per overlimit event, unless
/// more are needed to get back under the limits (Linux `drop_batch_size`).
/// The batch also stops once half of that flow's bytes are gone. Batching
/// amortises the scan of the whole flow table for the fattest flow, which
/// would otherwise run for every packet under sustained overload.
pub const OVERLIMIT_DROP_BATCH: usize = 64;

/// Fewest flow queues a table may have.
pub const MIN_FLOWS: usize = 1;
/// Most flow queues a table may have (as Linux `fq_codel`); every flow index
/// then fits the `u32` the flow lists hold.
pub const MAX_FLOWS: usize = 65_536;

/// Smallest `limit`, in packets.
pub const MIN_LIMIT: usize = 1;
/// Largest `limit`, in packets: a hundred times the default, and a standing
/// queue no AQM would keep (about 70 ms of minimum-size frames at 10 Gb/s).
/// Mostly it catches a byte count given where a packet count belongs.
pub const MAX_LIMIT: usize = 1 << 20;

/// Smallest `memory_limit`, in bytes. A limit below the largest packet drops
/// every such packet on arrival; the caller, who knows its packet sizes, may
/// want a higher floor.
pub const MIN_MEMORY_LIMIT: usize = 1;
/// Largest `memory_limit`, in bytes: 16 GiB (the whole address space where
/// `usize` is narrower than 35 bits). Far above any queue worth keeping; it
/// catches a typo before the queue can grow without bound.
pub const MAX_MEMORY_LIMIT: usize = if usize::BITS > 34 {
    // Not truncated: this branch is taken only when usize holds 2^34.
    (1u64 << 34) as usize
} else {
    usize::MAX
};

/// Smallest `quantum`, in bytes. Linux raises anything below 256 to 256;
/// here a small quantum is kept as given (DRR stays correct, only slower).
pub const MIN_QUANTUM: usize = 1;
/// Largest `quantum`, in bytes (Linux `FQ_CODEL_QUANTUM_MAX`): far above any
/// MTU + 14, and small enough that flow credit (an `i64`) cannot overflow.
pub const MAX_QUANTUM: usize = 1 << 20;

/// Smallest CoDel `interval_ns`. There is no upper bound: CoDel's time
/// arithmetic saturates.
pub const MIN_INTERVAL_NS: u64 = 1;

/// FQ-CoDel parameters. [`Default`] gives the RFC 8290 / Linux defaults.
///
/// The ranges are public constants so that a configuration parser can check
/// them where the user wrote the value; [`Config::validate`] (and so
/// [`FqCodel::try_new`]) checks them again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Flow queues (hash buckets), [`MIN_FLOWS`]`..=`[`MAX_FLOWS`]. Default
    /// 1024.
    pub flows: usize,
    /// Most packets queued in total, [`MIN_LIMIT`]`..=`[`MAX_LIMIT`].
    /// Default 10240.
    pub limit: usize,
    /// Most bytes (as counted by [`Packet::len`]) queued in total,
    /// [`MIN_MEMORY_LIMIT`]`..=`[`MAX_MEMORY_LIMIT`]. Default 32 MiB.
    pub memory_limit: usize,
    /// DRR quantum in bytes, [`MIN_QUANTUM`]`..=`[`MAX_QUANTUM`]: MTU + 14
    /// (Ethernet header). Default 1514. Also CoDel's MAXPACKET: with no more
    /// than this many bytes queued (across all flows, as Linux), CoDel never
    /// drops.
    pub quantum: usize,
    /// CoDel target (acceptable standing delay), any value. Default 5 ms.
    pub target_ns: u64,
    /// CoDel interval, at least [`MIN_INTERVAL_NS`]. Default 100 ms.
    pub interval_ns: u64,
    /// Mark ECN-capable packets CE instead of dropping them. Default on.
    pub ecn: bool,
    /// Hash perturbation. Default 0; give each instance an unpredictable
    /// value in production.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            flows: 1024,
            limit: 10_240,
            memory_limit: 32 << 20,
            quantum: 1514,
            target_ns: 5_000_000,
            interval_ns: 100_000_000,
            ecn: true,
            seed: 0,
        }
    }
}

/// A [`Config`] field out of range: which one, the value given, and the
/// range it must lie in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `flows` is outside [`MIN_FLOWS`]`..=`[`MAX_FLOWS`].
    #[error("fq-codel: flows = {0}; use {min} to {max}", min = MIN_FLOWS, max = MAX_FLOWS)]
    Flows(usize),
    /// `limit` is outside [`MIN_LIMIT`]`..=`[`MAX_LIMIT`].
    #[error("fq-codel: limit = {0} packets; use {min} to {max}", min = MIN_LIMIT, max = MAX_LIMIT)]
    Limit(usize),
    /// `memory_limit` is outside [`MIN_MEMORY_LIMIT`]`..=`[`MAX_MEMORY_LIMIT`].
    #[error(
        "fq-codel: memory_limit = {0} bytes; use {min} to {max}",
        min = MIN_MEMORY_LIMIT,
        max = MAX_MEMORY_LIMIT
    )]
    MemoryLimit(usize),
    /// `quantum` is outside [`MIN_QUANTUM`]`..=`[`MAX_QUANTUM`].
    #[error(
        "fq-codel: quantum = {0} bytes; use {min} to {max} (MTU + 14, default 1514)",
        min = MIN_QUANTUM,
        max = MAX_QUANTUM
    )]
    Quantum(usize),
    /// `interval_ns` is below [`MIN_INTERVAL_NS`] (it is 0).
    #[error(
        "fq-codel: interval_ns = {0}; use at least {min} (default 100 ms)",
        min = MIN_INTERVAL_NS
    )]
    Interval(u64),
}

impl Config {
    /// Check every field is in range; the error names the first that is not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_FLOWS..=MAX_FLOWS).contains(&self.flows) {
            return Err(ConfigError::Flows(self.flows));
        }
        if !(MIN_LIMIT..=MAX_LIMIT).contains(&self.limit) {
            return Err(ConfigError::Limit(self.limit));
        }
        if !(MIN_MEMORY_LIMIT..=MAX_MEMORY_LIMIT).contains(&self.memory_limit) {
            return Err(ConfigError::MemoryLimit(self.memory_limit));
        }
        if !(MIN_QUANTUM..=MAX_QUANTUM).contains(&self.quantum) {
            return Err(ConfigError::Quantum(self.quantum));
        }
        if self.interval_ns < MIN_INTERVAL_NS {
            return Err(ConfigError::Interval(self.interval_ns));
        }
        Ok(())
    }
}

/// Counters and gauges. Drop counters never decrease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets CoDel dropped (handed back by [`FqCodel::dequeue`]).
    pub codel_drops: u64,
    /// Packets CoDel marked CE instead of dropping (and sent).
    pub ecn_marks: u64,
    /// Packets dropped from the head of the fattest flow because the queue
    /// was over `limit` or `memory_limit` (handed back by
    /// [`FqCodel::enqueue`]).
    pub overlimit_drops: u64,
    /// Packets queued now.
    pub backlog_packets: usize,
    /// Bytes queued now.
    pub backlog_bytes: usize,
    /// Times a flow joined the new-flows list.
    pub new_flow_count: u64,
    /// Flows on the new-flows list now.
    pub new_flows_len: usize,
    /// Flows on the old-flows list now.
    pub old_flows_len: usize,
    /// Flows with at least one packet queued now.
    pub flows_active: usize,
}

/// Which list a flow is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlowList {
    None,
    New,
    Old,
}

/// A queued packet with what the scheduler needs to know about it.
struct Entry<P> {
    pkt: P,
    /// When it was enqueued, for the sojourn time.
    enqueued_ns: u64,
    /// `pkt.len()` at enqueue; what was charged and will be refunded.
    len: usize,
}

/// One flow (hash bucket).
struct FlowQueue<P> {
    queue: VecDeque<Entry<P>>,
    /// Sum of `len` over `queue`.
    backlog_bytes: usize,
    /// DRR credit in bytes; may go negative by up to one packet.
    deficit: i64,
    list: FlowList,
    codel: CodelVars,
}

impl<P> FlowQueue<P> {
    fn new() -> Self {
        FlowQueue {
            queue: VecDeque::new(),
            backlog_bytes: 0,
            deficit: 0,
            list: FlowList::None,
            codel: CodelVars::default(),
        }
    }
}

/// Totals across all flows.
#[derive(Default)]
struct Backlog {
    packets: usize,
    bytes: usize,
}

/// Drop counters.
#[derive(Default)]
struct Counters {
    codel_drops: u64,
    ecn_marks: u64,
    overlimit_drops: u64,
    new_flow_count: u64,
}

/// One flow's queue as CoDel sees it, with the totals and counters it must
/// keep up to date.
struct FlowCodelQueue<'a, P> {
    queue: &'a mut VecDeque<Entry<P>>,
    flow_bytes: &'a mut usize,
    backlog: &'a mut Backlog,
    counters: &'a mut Counters,
    dropped: &'a mut Vec<P>,
}

impl<P: Packet> CodelQueue for FlowCodelQueue<'_, P> {
    type Item = Entry<P>;

    fn pop(&mut self) -> Option<(Entry<P>, u64)> {
        let e = self.queue.pop_front()?;
        *self.flow_bytes -= e.len;
        self.backlog.packets -= 1;
        self.backlog.bytes -= e.len;
        let t = e.enqueued_ns;
        Some((e, t))
    }

    /// The whole queue's backlog, as Linux `fq_codel` passes
    /// `sch->qstats.backlog`: CoDel holds off only when the link as a whole
    /// has less than a packet to send.
    fn backlog_bytes(&self) -> usize {
        self.backlog.bytes
    }

    fn drop_item(&mut self, item: Entry<P>) {
        self.counters.codel_drops += 1;
        self.dropped.push(item.pkt);
    }

    fn mark_ce(&mut self, item: &mut Entry<P>) -> bool {
        let marked = item.pkt.set_ecn_ce();
        if marked {
            self.counters.ecn_marks += 1;
        }
        marked
    }
}

/// A userspace FQ-CoDel queue. See the crate documentation.
pub struct FqCodel<P> {
    cfg: Config,
    codel: CodelParams,
    flows: Box<[FlowQueue<P>]>,
    /// Flows that became active and have not yet used up a quantum.
    new_flows: VecDeque<u32>,
    /// Every other listed flow, served round robin.
    old_flows: VecDeque<u32>,
    backlog: Backlog,
    counters: Counters,
}

impl<P: Packet> FqCodel<P> {
    /// A queue with `cfg`'s parameters and its flow table allocated, or which
    /// parameter is out of range ([`Config::validate`]).
    pub fn try_new(cfg: Config) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(FqCodel {
            cfg,
            codel: CodelParams {
                target_ns: cfg.target_ns,
                interval_ns: cfg.interval_ns,
                maxpacket: cfg.quantum,
                ecn: cfg.ecn,
            },
            flows: (0..cfg.flows).map(|_| FlowQueue::new()).collect(),
            new_flows: VecDeque::with_capacity(cfg.flows),
            old_flows: VecDeque::with_capacity(cfg.flows),
            backlog: Backlog::default(),
            counters: Counters::default(),
        })
    }

    /// The parameters this queue was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The flow (bucket index in `0..flows`) a frame is queued in.
    pub fn flow_of(&self, frame: &[u8]) -> usize {
        classify(frame).bucket(self.cfg.seed, self.cfg.flows)
    }

    /// Packets queued in flow `flow` (0 if out of range).
    pub fn flow_len(&self, flow: usize) -> usize {
        self.flows.get(flow).map_or(0, |f| f.queue.len())
    }

    /// Bytes queued in flow `flow` (0 if out of range).
    pub fn flow_backlog_bytes(&self, flow: usize) -> usize {
        self.flows.get(flow).map_or(0, |f| f.backlog_bytes)
    }

    /// Queue `pkt`, received at `now_ns`.
    ///
    /// If that takes the queue over `limit` or `memory_limit`, packets are
    /// dropped from the head of the flow with the most bytes queued (which may
    /// be `pkt`'s own flow) and pushed onto `dropped`, each counted in
    /// [`Stats::overlimit_drops`]. Usually nothing is dropped.
    pub fn enqueue(&mut self, pkt: P, now_ns: u64, dropped: &mut Vec<P>) {
        let idx = self.flow_of(pkt.frame());
        let len = pkt.len();
        let flow = &mut self.flows[idx];
        flow.queue.push_back(Entry {
            pkt,
            enqueued_ns: now_ns,
            len,
        });
        flow.backlog_bytes += len;
        self.backlog.packets += 1;
        self.backlog.bytes += len;
        if flow.list == FlowList::None {
            flow.list = FlowList::New;
            // quantum <= MAX_QUANTUM fits an i64.
            flow.deficit = self.cfg.quantum as i64;
            // `idx < flows <= MAX_FLOWS`, which fits a u32.
            self.new_flows.push_back(idx as u32);
            self.counters.new_flow_count += 1;
        }
        if self.over_limit() {
            self.drop_overlimit(dropped);
        }
    }

    fn over_limit(&self) -> bool {
        self.backlog.packets > self.cfg.limit || self.backlog.bytes > self.cfg.memory_limit
    }

    /// RFC 8290 §4.1: drop from the head of the fattest flow until under the
    /// limits, in batches of up to [`OVERLIMIT_DROP_BATCH`] packets or half
    /// that flow's bytes, whichever comes first.
    fn drop_overlimit(&mut self, dropped: &mut Vec<P>) {
        while self.over_limit() {
            // Over a limit means something is queued, so some flow has bytes
            // or packets; ties go to the lowest index.
            let Some(fattest) = (0..self.flows.len()).max_by(|&a, &b| {
                let (fa, fb) = (&self.flows[a], &self.flows[b]);
                (fa.backlog_bytes, fa.queue.len(), b).cmp(&(fb.backlog_bytes, fb.queue.len(), a))
            }) else {
                return;
            };
            let flow = &mut self.flows[fattest];
            if flow.queue.is_empty() {
                // Unreachable while the totals are consistent.
                debug_assert!(false, "over limit with every flow empty");
                return;
            }
            let threshold = flow.backlog_bytes / 2;
            let (mut packets, mut bytes) = (0usize, 0usize);
            while let Some(e) = flow.queue.pop_front() {
                flow.backlog_bytes -= e.len;
                self.backlog.packets -= 1;
                self.backlog.bytes -= e.len;
                self.counters.overlimit_drops += 1;
                packets += 1;
                bytes += e.len;
                dropped.push(e.pkt);
                let under = self.backlog.packets <= self.cfg.limit
                    && self.backlog.bytes <= self.cfg.memory_limit;
                if under && (packets >= OVERLIMIT_DROP_BATCH || bytes >= threshold) {
                    break;
                }
            }
            // An emptied flow stays on its list; dequeue removes it.
        }
    }

    /// The next packet to send at `now_ns`, by DRR over the flows and CoDel
    /// within each; `None` when the queue is empty.
    ///
    /// Packets CoDel drops on the way are pushed onto `dropped`, each counted
    /// in [`Stats::codel_drops`]. A packet CoDel marks CE instead is returned
    /// (and counted in [`Stats::ecn_marks`]).
    pub fn dequeue(&mut self, now_ns: u64, dropped: &mut Vec<P>) -> Option<P> {
        // quantum <= MAX_QUANTUM fits an i64.
        let quantum = self.cfg.quantum as i64;
        loop {
            let (idx, from_new) = match (self.new_flows.front(), self.old_flows.front()) {
                (Some(&i), _) => (i, true),
                (None, Some(&i)) => (i, false),
                (None, None) => return None,
            };
            let flow = &mut self.flows[idx as usize];

            if flow.deficit <= 0 {
                // Out of credit: top up and go to the back of the old list.
                flow.deficit += quantum;
                flow.list = FlowList::Old;
                self.pop_list_head(from_new);
                self.old_flows.push_back(idx);
                continue;
            }

            let mut q = FlowCodelQueue {
                queue: &mut flow.queue,
                flow_bytes: &mut flow.backlog_bytes,
                backlog: &mut self.backlog,
                counters: &mut self.counters,
                dropped: &mut *dropped,
            };
            match flow.codel.dequeue(&self.codel, &mut q, now_ns) {
                Some(e) => {
                    flow.deficit -= e.len as i64;
                    return Some(e.pkt);
                }
                None => {
                    // Empty. A new flow goes behind the old ones first, so
                    // that it cannot keep its priority by emptying and
                    // refilling (RFC 8290 §4.2); otherwise it leaves.
                    if from_new && !self.old_flows.is_empty() {
                        flow.list = FlowList::Old;
                        self.new_flows.pop_front();
                        self.old_flows.push_back(idx);
                    } else {
                        flow.list = FlowList::None;
                        self.pop_list_head(from_new);
                    }
                }
            }
        }
    }

    fn pop_list_head(&mut self, from_new: bool) {
        if from_new {
            self.new_flows.pop_front();
        } else {
            self.old_flows.pop_front();
        }
    }

    /// Remove every packet, in no particular order, into `out` (not counted as
    /// drops), and forget all flow and CoDel state. For a device reset.
    pub fn clear(&mut self, out: &mut Vec<P>) {
        for flow in self.flows.iter_mut() {
            out.extend(flow.queue.drain(..).map(|e| e.pkt));
            flow.backlog_bytes = 0;
            flow.deficit = 0;
            flow.list = FlowList::None;
            flow.codel = CodelVars::default();
        }
        self.new_flows.clear();
        self.old_flows.clear();
        self.backlog = Backlog::default();
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.backlog.packets
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.backlog.packets == 0
    }

    /// Bytes queued.
    pub fn backlog_bytes(&self) -> usize {
        self.backlog.bytes
    }

    /// Counters and gauges. `flows_active` is counted on the spot, in
    /// O(`flows`).
    pub fn stats(&self) -> Stats {
        Stats {
            codel_drops: self.counters.codel_drops,
            ecn_marks: self.counters.ecn_marks,
            overlimit_drops: self.counters.overlimit_drops,
            backlog_packets: self.backlog.packets,
            backlog_bytes: self.backlog.bytes,
            new_flow_count: self.counters.new_flow_count,
            new_flows_len: self.new_flows.len(),
            old_flows_len: self.old_flows.len(),
            flows_active: self.flows.iter().filter(|f| !f.queue.is_empty()).count(),
        }
    }
}

impl<P> fmt::Debug for FqCodel<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FqCodel")
            .field("cfg", &self.cfg)
            .field("backlog_packets", &self.backlog.packets)
            .field("backlog_bytes", &self.backlog.bytes)
            .field("new_flows", &self.new_flows.len())
            .field("old_flows", &self.old_flows.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(sport: u16, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + payload];
        f[12] = 0x08;
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&9u16.to_be_bytes());
        f
    }

    /// `Config::default()` with one field changed by `f`.
    fn with(f: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        f(&mut c);
        c
    }

    /// `cfg` is refused with `want`, by `validate` and `try_new`, and the
    /// message names the field, the value and the range (`words`).
    fn refused(cfg: Config, want: ConfigError, words: &[&str]) {
        assert_eq!(cfg.validate(), Err(want.clone()));
        let e = FqCodel::<Vec<u8>>::try_new(cfg).unwrap_err();
        assert_eq!(e, want);
        let msg = e.to_string();
        for w in words {
            assert!(msg.contains(w), "{msg:?} lacks {w:?}");
        }
    }

    #[test]
    fn flows_out_of_range() {
        refused(
            with(|c| c.flows = 0),
            ConfigError::Flows(0),
            &["flows = 0", "use 1 to 65536"],
        );
        refused(
            with(|c| c.flows = MAX_FLOWS + 1),
            ConfigError::Flows(65_537),
            &["flows = 65537", "use 1 to 65536"],
        );
    }

    #[test]
    fn limit_out_of_range() {
        refused(
            with(|c| c.limit = 0),
            ConfigError::Limit(0),
            &["limit = 0 packets", "use 1 to 1048576"],
        );
        refused(
            with(|c| c.limit = MAX_LIMIT + 1),
            ConfigError::Limit(MAX_LIMIT + 1),
            &["limit = 1048577 packets"],
        );
    }

    #[test]
    fn memory_limit_out_of_range() {
        refused(
            with(|c| c.memory_limit = 0),
            ConfigError::MemoryLimit(0),
            &[
                "memory_limit = 0 bytes",
                &format!("use 1 to {MAX_MEMORY_LIMIT}"),
            ],
        );
        refused(
            with(|c| c.memory_limit = MAX_MEMORY_LIMIT + 1),
            ConfigError::MemoryLimit(MAX_MEMORY_LIMIT + 1),
            &[&format!("memory_limit = {} bytes", MAX_MEMORY_LIMIT + 1)],
        );
    }

    #[test]
    fn quantum_out_of_range() {
        refused(
            with(|c| c.quantum = 0),
            ConfigError::Quantum(0),
            &["quantum = 0 bytes", "use 1 to 1048576"],
        );
        refused(
            with(|c| c.quantum = usize::MAX),
            ConfigError::Quantum(usize::MAX),
            &[&format!("quantum = {} bytes", usize::MAX)],
        );
    }

    #[test]
    fn interval_out_of_range() {
        refused(
            with(|c| c.interval_ns = 0),
            ConfigError::Interval(0),
            &["interval_ns = 0", "use at least 1"],
        );
    }

    #[test]
    fn range_ends_are_accepted() {
        let ends = [
            with(|c| c.flows = MIN_FLOWS),
            with(|c| c.flows = MAX_FLOWS),
            with(|c| c.limit = MIN_LIMIT),
            with(|c| c.limit = MAX_LIMIT),
            with(|c| c.memory_limit = MIN_MEMORY_LIMIT),
            with(|c| c.memory_limit = MAX_MEMORY_LIMIT),
            with(|c| c.quantum = MIN_QUANTUM),
            with(|c| c.quantum = MAX_QUANTUM),
            with(|c| c.interval_ns = MIN_INTERVAL_NS),
            with(|c| c.interval_ns = u64::MAX),
            with(|c| c.target_ns = 0),
            Config::default(),
        ];
        for cfg in ends {
            assert_eq!(cfg.validate(), Ok(()), "{cfg:?}");
            assert!(FqCodel::<Vec<u8>>::try_new(cfg).is_ok(), "{cfg:?}");
        }
    }

    #[test]
    fn first_bad_field_is_reported() {
        let cfg = with(|c| {
            c.limit = 0;
            c.interval_ns = 0;
        });
        assert_eq!(cfg.validate(), Err(ConfigError::Limit(0)));
    }

    #[test]
    fn config_error_is_a_std_error() {
        fn boxed(e: ConfigError) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            Box::new(e)
        }
        let e = boxed(ConfigError::Flows(0));
        assert!(e.source().is_none());
        assert_eq!(e.to_string(), "fq-codel: flows = 0; use 1 to 65536");
    }

    #[test]
    fn lists_follow_rfc8290_state_machine() {
        let mut q = FqCodel::try_new(Config::default()).unwrap();
        let mut d = Vec::new();
        q.enqueue(udp4(1, 100), 0, &mut d);
        assert_eq!(q.stats().new_flows_len, 1);
        assert_eq!(q.stats().new_flow_count, 1);
        // A second packet of a listed flow does not re-add it.
        q.enqueue(udp4(1, 100), 0, &mut d);
        assert_eq!(q.stats().new_flow_count, 1);
        assert!(q.dequeue(0, &mut d).is_some());
        assert!(q.dequeue(0, &mut d).is_some());
        // Emptied with no old flows: removed, not moved.
        assert!(q.dequeue(0, &mut d).is_none());
        let s = q.stats();
        assert_eq!(
            (s.new_flows_len, s.old_flows_len, s.flows_active),
            (0, 0, 0)
        );
        assert!(d.is_empty());
    }

    #[test]
    fn clear_returns_everything_and_resets() {
        let mut q = FqCodel::try_new(Config::default()).unwrap();
        let mut d = Vec::new();
        for p in 0..10 {
            q.enqueue(udp4(p, 10), 0, &mut d);
        }
        let mut out = Vec::new();
        q.clear(&mut out);
        assert_eq!(out.len(), 10);
        assert!(q.is_empty());
        assert_eq!(q.backlog_bytes(), 0);
        assert_eq!(q.stats().new_flows_len, 0);
        assert!(q.dequeue(0, &mut d).is_none());
    }
}
