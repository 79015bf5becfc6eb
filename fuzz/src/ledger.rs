//! The data path's books, checked: every frame the TAP handed out is
//! delivered, dropped and counted, or still waiting; every TX chain is
//! sent, dropped and counted, or still in the guest's ring; and what the
//! guest receives (or the TAP gets) is byte for byte what was sent, in order.

use std::sync::atomic::Ordering::Relaxed;

use vhost_tap::counters::QueueCounters;
use vhost_tap::datapath::vnet::{Negotiated, NUM_BUFFERS_AT};

use crate::guest::{Guest, Posted};
use crate::tap::Handed;

fn counter(c: &QueueCounters, name: &str) -> u64 {
    c.snapshot()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map_or_else(|| panic!("no counter {name}"), |(_, v)| v)
}

/// Every `PREFIX*` counter, summed: every reason, including those added later.
fn dropped(c: &QueueCounters, prefix: &str) -> u64 {
    c.snapshot()
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Frames the RX side has accounted for: delivered, or dropped for a
/// reason (the daemon's `rx_dropped_*` and the AQM's decisions).
pub fn rx_accounted(c: &QueueCounters) -> u64 {
    c.rx_frames.load(Relaxed)
        + dropped(c, "rx_dropped_")
        + c.rx_aqm_codel_drops.load(Relaxed)
        + c.rx_aqm_overlimit_drops.load(Relaxed)
}

/// TX chains the data path returned to the guest: sent or dropped.
pub fn tx_accounted(c: &QueueCounters) -> u64 {
    // Every reason: the TAP's errors split into link down (EIO), gone
    // (EBADFD) and the rest.
    c.tx_frames.load(Relaxed) + dropped(c, "tx_dropped_")
}

/// Counters that must stay 0 whatever the guest does.
pub fn check_never(c: &QueueCounters) {
    assert_eq!(c.rx_dropped_internal.load(Relaxed), 0, "a broken invariant");
}

/// The frames in RX used entries (checked chains of a well-behaved guest),
/// reassembled: with MRG_RXBUF a frame spans `num_buffers` entries, which
/// must all be there; without, one entry is one frame and `num_buffers`
/// (when the header has it) says 1.
pub fn rx_frames(
    g: &Guest,
    entries: &[(u32, u32, Option<Posted>)],
    neg: Negotiated,
) -> Vec<Vec<u8>> {
    let chain = |i: usize| {
        let (_, len, p) = &entries[i];
        g.read_chain(p.as_ref().expect("checked entry"), *len)
    };
    let mut frames = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut data = chain(i);
        let mut k = 1;
        let has_nb = neg.hdr_len >= NUM_BUFFERS_AT + 2;
        if has_nb && neg.mrg_rxbuf {
            while data.len() < neg.hdr_len && i + k < entries.len() {
                data.extend(chain(i + k));
                k += 1;
            }
            assert!(
                data.len() >= neg.hdr_len,
                "a frame's used entries end inside its header"
            );
            let nb = usize::from(u16::from_le_bytes([
                data[NUM_BUFFERS_AT],
                data[NUM_BUFFERS_AT + 1],
            ]));
            assert!(
                nb >= k && i + nb <= entries.len(),
                "num_buffers {nb}: {k} entries hold the header, {} published from here",
                entries.len() - i
            );
            while k < nb {
                data.extend(chain(i + k));
                k += 1;
            }
        } else if has_nb && data.len() >= neg.hdr_len {
            assert_eq!(
                &data[NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2],
                &[1, 0],
                "num_buffers without MRG_RXBUF"
            );
        }
        assert!(
            data.len() >= neg.min_len(),
            "a {}-byte frame delivered (shorter than a header and an Ethernet header)",
            data.len()
        );
        frames.push(data);
        i += k;
    }
    frames
}

/// Whether a delivered frame is the frame the TAP handed out: the same
/// bytes, except `num_buffers`, which is the daemon's (checked above). With
/// `marked` (CoDel set ECN CE on some frames, which changes IP headers) only
/// the length and the virtio-net header are compared.
fn same_frame(delivered: &[u8], handed: &[u8], neg: Negotiated, marked: bool) -> bool {
    if delivered.len() != handed.len() {
        return false;
    }
    let end = if marked { neg.hdr_len } else { handed.len() };
    let nb = NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2;
    if neg.hdr_len >= nb.end {
        delivered[..nb.start] == handed[..nb.start] && delivered[nb.end..end] == handed[nb.end..end]
    } else {
        delivered[..end] == handed[..end]
    }
}

/// Every delivered frame is one the TAP handed out, each at most once; in
/// the order they were handed out unless an AQM (which reorders flows)
/// was in the way.
pub fn check_rx_content(
    handed: &[Handed],
    delivered: &[Vec<u8>],
    neg: Negotiated,
    ordered: bool,
    marked: bool,
) {
    let frames: Vec<&Vec<u8>> = handed
        .iter()
        .filter_map(|h| match h {
            Handed::Frame(f) => Some(f),
            Handed::Fault => None,
        })
        .collect();
    let same = |d: &[u8], f: &[u8]| same_frame(d, f, neg, marked);
    if ordered {
        let mut next = 0;
        for (n, d) in delivered.iter().enumerate() {
            let found = frames[next..].iter().position(|f| same(d, f));
            let at = found.unwrap_or_else(|| {
                panic!(
                    "delivered frame {n} ({} bytes) is not among the frames handed out after the previous one",
                    d.len()
                )
            });
            next += at + 1;
        }
    } else {
        let mut used = vec![false; frames.len()];
        for (n, d) in delivered.iter().enumerate() {
            let found = (0..frames.len()).find(|&i| !used[i] && same(d, frames[i]));
            let i = found.unwrap_or_else(|| {
                panic!(
                    "delivered frame {n} ({} bytes) was never handed out (or twice)",
                    d.len()
                )
            });
            used[i] = true;
        }
    }
}

/// What the TX side of a well-behaved guest must see: every used chain was
/// sent (the TAP got exactly its bytes, in order) or dropped for its
/// length (counted as such) or refused by the TAP (counted).
#[derive(Default)]
pub struct TxBooks {
    /// Chains returned, in order: their frames.
    pub returned: Vec<Vec<u8>>,
    /// Of those, shorter than a header and an Ethernet header / longer than the largest frame.
    pub too_short: u64,
    pub too_big: u64,
}

impl TxBooks {
    pub fn add(&mut self, entries: &[(u32, u32, Option<Posted>)], neg: Negotiated) {
        for (id, len, p) in entries {
            let Some(p) = p else { continue };
            assert_eq!(*len, 0, "TX used entry {id} with length {len}");
            let n = p.frame.len();
            if n < neg.min_len() {
                self.too_short += 1;
            } else if n > neg.max_len() {
                self.too_big += 1;
            }
            self.returned.push(p.frame.clone());
        }
    }

    /// Check against the counters and what the TAP got.
    pub fn check(&self, c: &QueueCounters, written: &[Vec<u8>]) {
        assert_eq!(counter(c, "tx_dropped_too_short"), self.too_short);
        assert_eq!(counter(c, "tx_dropped_too_big"), self.too_big);
        assert_eq!(self.returned.len() as u64, tx_accounted(c));
        // The TAP's frames are the returned chains' bytes, in order, minus
        // the dropped ones.
        let mut next = 0;
        for (n, w) in written.iter().enumerate() {
            let at = self.returned[next..]
                .iter()
                .position(|r| r == w)
                .unwrap_or_else(|| {
                    panic!(
                        "TAP frame {n} ({} bytes) is no returned chain's bytes, in order",
                        w.len()
                    )
                });
            next += at + 1;
        }
    }
}
