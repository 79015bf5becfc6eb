//! Which queue mode a device runs in, and why: `auto` resolved from what the
//! kernel offers (`IFF_BACKPRESSURE` on the TAP) and what sits in front of
//! the tun ring (the TAP's qdiscs, read over rtnetlink in [`crate::qdisc`]).
//!
//! Backpressure mode only moves the queue into the kernel: with
//! `IFF_BACKPRESSURE` a full tun ring stops the netdev queue and the qdisc
//! holds the backlog, which needs a qdisc with an enqueue function (not
//! `noqueue`, and for a multi-queue root, none of its per-queue children
//! `noqueue`). Without either, the daemon keeps the queue itself (FQ-CoDel).
//! The decision is pure so that it can be tested without a kernel.

use crate::qdisc::{QdiscError, Qdiscs};
use crate::settings::Mode;

/// Qdiscs that manage a queue (drop or mark by sojourn time, flow fairness),
/// as opposed to holding a FIFO.
const AQM_KINDS: [&str; 10] = [
    "fq_codel", "cake", "codel", "fq_pie", "pie", "fq", "sfq", "red", "sfb", "choke",
];
/// Root qdiscs that only spread traffic over per-TX-queue children.
const MULTI_QUEUE_ROOTS: [&str; 4] = ["mq", "multiq", "mqprio", "taprio"];

/// What is in front of the tun ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A qdisc that holds a queue; `managed` if it is an AQM.
    Queue { kind: String, managed: bool },
    /// Nothing holds the queue, and why (`noqueue`, a `noqueue` child...).
    None(String),
    /// The TAP is down: no qdisc (`noop`) until the link comes up, when the
    /// kernel attaches the default one.
    Down,
}

/// Classify the qdiscs of a TAP.
pub fn holder(q: &Qdiscs) -> Holder {
    // A TAP that is down lists no qdisc (its `noop` is built in and not
    // dumped); the kernel attaches the default one when the link comes up.
    let Some(root) = &q.root else {
        return Holder::Down;
    };
    match root.kind.as_str() {
        "noqueue" => Holder::None("the noqueue qdisc".into()),
        "noop" => Holder::Down,
        k if MULTI_QUEUE_ROOTS.contains(&k) => {
            if q.children.is_empty() {
                return Holder::None(format!("{k} with no per-queue qdisc"));
            }
            if let Some(c) = q
                .children
                .iter()
                .find(|c| c.kind == "noqueue" || c.kind == "noop")
            {
                return Holder::None(format!(
                    "{k} with {} on queue {}",
                    c.kind,
                    (c.parent & 0xffff).saturating_sub(1)
                ));
            }
            let mut kinds: Vec<&str> = q.children.iter().map(|c| c.kind.as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            Holder::Queue {
                kind: format!("{k} of {}", kinds.join("/")),
                managed: kinds.iter().all(|k| AQM_KINDS.contains(k)),
            }
        }
        k => Holder::Queue {
            kind: k.to_string(),
            managed: AQM_KINDS.contains(&k),
        },
    }
}

/// A resolved mode and the sentence that says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub mode: Mode,
    pub reason: String,
}

/// What the decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The mode asked for.
    pub requested: Mode,
    /// The TAP carries `IFF_BACKPRESSURE`.
    pub flag_on: bool,
    /// The kernel offers `IFF_BACKPRESSURE` (`TUNGETFEATURES`).
    pub kernel_offers: bool,
    /// The TAP's qdiscs, or why they could not be read.
    pub qdiscs: &'a Result<Qdiscs, QdiscError>,
}

/// Resolve the mode.
pub fn resolve(i: Inputs<'_>) -> Resolution {
    let no_flag = if i.kernel_offers {
        "IFF_BACKPRESSURE is off (iff_backpressure = false)"
    } else {
        "the kernel has no IFF_BACKPRESSURE (Linux 7.3+)"
    };
    let r = |mode, reason: String| Resolution { mode, reason };
    match i.requested {
        Mode::FqCodel => r(Mode::FqCodel, "asked for".into()),
        Mode::Backpressure if !i.flag_on => r(
            Mode::Backpressure,
            format!("asked for; {no_flag}, so the tun driver tail-drops when its ring is full"),
        ),
        Mode::Backpressure => r(
            Mode::Backpressure,
            format!("asked for; IFF_BACKPRESSURE is on, {}", held_by(i.qdiscs)),
        ),
        Mode::Auto if !i.flag_on => r(
            Mode::FqCodel,
            format!("auto: {no_flag}, so the daemon keeps the queue"),
        ),
        Mode::Auto => match i.qdiscs {
            Err(e) => r(
                Mode::FqCodel,
                format!("auto: IFF_BACKPRESSURE is on, but the TAP's qdisc is unknown ({e}), so the daemon keeps the queue"),
            ),
            Ok(q) => match holder(q) {
                Holder::Queue { kind, managed } => r(
                    Mode::Backpressure,
                    format!(
                        "auto: IFF_BACKPRESSURE is on and qdisc {kind} holds the queue{}",
                        if managed {
                            ""
                        } else {
                            " (a FIFO: attach fq_codel or cake to manage it)"
                        }
                    ),
                ),
                Holder::None(what) => r(
                    Mode::FqCodel,
                    format!("auto: IFF_BACKPRESSURE is on but the TAP has {what}, so the daemon keeps the queue"),
                ),
                Holder::Down => r(
                    Mode::FqCodel,
                    "auto: IFF_BACKPRESSURE is on but the TAP is down (qdisc noop); the daemon keeps the queue and decides again when a frontend connects".into(),
                ),
            },
        },
    }
}

/// "the qdisc X holds the queue", or what is wrong with it.
fn held_by(q: &Result<Qdiscs, QdiscError>) -> String {
    match q.as_ref().map(holder) {
        Ok(Holder::Queue { kind, .. }) => format!("qdisc {kind} holds the queue"),
        Ok(Holder::None(what)) => {
            format!("but the TAP has {what}: frames the ring cannot take are dropped at the qdisc")
        }
        Ok(Holder::Down) => "the TAP is down (qdisc noop)".into(),
        Err(e) => format!("the TAP's qdisc is unknown ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qdisc::Qdisc;

    const ROOT: u32 = 0xffff_ffff;

    fn qd(kind: &str, parent: u32) -> Qdisc {
        Qdisc {
            kind: kind.into(),
            handle: 0,
            parent,
            ..Qdisc::default()
        }
    }

    fn root(kind: &str, children: &[&str]) -> Result<Qdiscs, QdiscError> {
        Ok(Qdiscs {
            root: Some(qd(kind, ROOT)),
            children: children
                .iter()
                .enumerate()
                .map(|(i, k)| qd(k, i as u32 + 1))
                .collect(),
        })
    }

    fn auto(q: &Result<Qdiscs, QdiscError>) -> Resolution {
        resolve(Inputs {
            requested: Mode::Auto,
            flag_on: true,
            kernel_offers: true,
            qdiscs: q,
        })
    }

    #[test]
    fn auto_takes_backpressure_only_with_the_flag_and_a_queue() {
        let fq = root("fq_codel", &[]);
        assert_eq!(auto(&fq).mode, Mode::Backpressure);
        assert!(auto(&fq).reason.contains("qdisc fq_codel holds the queue"));
        let fifo = auto(&root("pfifo_fast", &[]));
        assert_eq!(fifo.mode, Mode::Backpressure);
        assert!(
            fifo.reason.contains("attach fq_codel or cake"),
            "{}",
            fifo.reason
        );
        let nq = auto(&root("noqueue", &[]));
        assert_eq!(nq.mode, Mode::FqCodel);
        assert!(nq.reason.contains("noqueue"), "{}", nq.reason);
        let down = auto(&root("noop", &[]));
        assert_eq!(down.mode, Mode::FqCodel);
        assert!(down.reason.contains("down"), "{}", down.reason);
        assert_eq!(holder(&Qdiscs::default()), Holder::Down);
        let unknown = auto(&Err(QdiscError::Kernel(-1)));
        assert_eq!(unknown.mode, Mode::FqCodel);
        let off = resolve(Inputs {
            requested: Mode::Auto,
            flag_on: false,
            kernel_offers: true,
            qdiscs: &fq,
        });
        assert_eq!(off.mode, Mode::FqCodel);
        assert!(
            off.reason.contains("iff_backpressure = false"),
            "{}",
            off.reason
        );
        let old = resolve(Inputs {
            requested: Mode::Auto,
            flag_on: false,
            kernel_offers: false,
            qdiscs: &fq,
        });
        assert!(old.reason.contains("no IFF_BACKPRESSURE"), "{}", old.reason);
    }

    #[test]
    fn a_multi_queue_root_is_judged_by_every_child() {
        let all_fq = auto(&root("mq", &["fq_codel", "fq_codel"]));
        assert_eq!(all_fq.mode, Mode::Backpressure);
        assert!(
            all_fq.reason.contains("mq of fq_codel"),
            "{}",
            all_fq.reason
        );
        let hole = auto(&root("mq", &["fq_codel", "noqueue"]));
        assert_eq!(hole.mode, Mode::FqCodel);
        assert!(
            hole.reason.contains("noqueue on queue 1"),
            "{}",
            hole.reason
        );
        assert_eq!(auto(&root("mq", &[])).mode, Mode::FqCodel);
        let mixed = holder(&root("mq", &["fq_codel", "pfifo_fast"]).unwrap());
        assert_eq!(
            mixed,
            Holder::Queue {
                kind: "mq of fq_codel/pfifo_fast".into(),
                managed: false
            }
        );
    }

    #[test]
    fn explicit_modes_stay_and_say_what_they_get() {
        let nq = root("noqueue", &[]);
        let bp = resolve(Inputs {
            requested: Mode::Backpressure,
            flag_on: true,
            kernel_offers: true,
            qdiscs: &nq,
        });
        assert_eq!(bp.mode, Mode::Backpressure);
        assert!(bp.reason.contains("noqueue"), "{}", bp.reason);
        let fq = resolve(Inputs {
            requested: Mode::FqCodel,
            flag_on: true,
            kernel_offers: true,
            qdiscs: &nq,
        });
        assert_eq!(fq.mode, Mode::FqCodel);
    }
}
