//! Descriptor chains, walked and checked before any byte moves.
//!
//! The guest is not trusted. `virtio-queue`'s own chain iterator ends
//! silently on most errors, which would make a malformed chain look like a
//! short one; this walker instead reports *what* is wrong (index out of
//! range, loop, zero length, wrong direction, address outside guest memory,
//! bad indirect table) so that the queue can be marked broken with a precise
//! log line. A chain that passes is a list of guest-memory segments, all
//! inside mapped regions and all of one direction.

use virtio_bindings::virtio_ring::{
    vring_desc, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, GuestAddress};

use super::map::GuestMap;

const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
/// Size of one split-ring descriptor.
const DESC_SIZE: u64 = std::mem::size_of::<vring_desc>() as u64;

/// Which way the buffers of a chain must point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Device reads (guest TX).
    Readable,
    /// Device writes (guest RX).
    Writable,
}

/// What is wrong with a chain. Each names the descriptor index it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor index at or beyond the table size.
    #[error("descriptor index {index} is outside the table of {table_size} entries")]
    IndexOutOfRange { index: u16, table_size: u16 },
    /// More descriptors than the table holds: a loop or an absurd length.
    #[error("chain from head {head} has more descriptors than its table (loop or absurd length)")]
    Loop { head: u16 },
    /// A descriptor of length 0.
    #[error("descriptor {index} has length 0")]
    ZeroLength { index: u16 },
    /// A descriptor of the wrong direction for this queue.
    #[error(
        "descriptor {index} is {} but this queue needs {} buffers",
        expected.opposite().buffers(),
        expected.buffers()
    )]
    WrongDirection { index: u16, expected: Direction },
    /// A buffer that is not entirely inside guest memory.
    #[error("descriptor {index} points outside guest memory (addr {addr:#x}, len {len})")]
    OutsideMemory { index: u16, addr: u64, len: u32 },
    /// The descriptor table itself is not inside guest memory.
    #[error("descriptor table at {addr:#x} is outside guest memory")]
    TableOutsideMemory { addr: u64 },
    /// An indirect descriptor that is malformed (nested, with NEXT, empty, misaligned or too long).
    #[error("indirect descriptor {index}: {why}")]
    BadIndirect { index: u16, why: &'static str },
    /// The chain's total length overflows 32 bits.
    #[error("chain from head {head} is longer than 4 GiB")]
    TooLong { head: u16 },
}

impl Direction {
    /// How the spec calls buffers of this direction.
    fn buffers(self) -> &'static str {
        match self {
            Direction::Readable => "device-readable",
            Direction::Writable => "device-writable",
        }
    }

    fn opposite(self) -> Direction {
        match self {
            Direction::Readable => Direction::Writable,
            Direction::Writable => Direction::Readable,
        }
    }
}

/// One buffer of a checked chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A checked chain: its head (for the used ring) and its buffers.
#[derive(Debug, Default)]
pub struct Chain {
    pub head: u16,
    pub segments: Vec<Segment>,
    pub total_len: u32,
    /// Descriptors the chain occupies in the queue's table (an indirect
    /// table counts as the one descriptor that points to it): what the
    /// guest cannot use for other chains until this one is returned.
    pub descriptors: u16,
}

/// Walk the chain starting at `head` in the table at `table` of `size`
/// entries, checking every descriptor, and fill `out` (cleared first).
pub fn walk(
    map: &GuestMap<'_>,
    table: GuestAddress,
    size: u16,
    head: u16,
    dir: Direction,
    out: &mut Chain,
) -> Result<(), ChainError> {
    out.head = head;
    out.segments.clear();
    out.total_len = 0;
    out.descriptors = 0;

    let mut table = table;
    let mut table_size = size;
    let mut index = head;
    let mut indirect = false;
    // Descriptors seen in the current table: more than the table holds means a loop.
    let mut seen: u32 = 0;
    loop {
        if index >= table_size {
            return Err(ChainError::IndexOutOfRange { index, table_size });
        }
        seen += 1;
        if seen > u32::from(table_size) {
            return Err(ChainError::Loop { head });
        }
        let at = table.checked_add(u64::from(index) * DESC_SIZE).ok_or(
            ChainError::TableOutsideMemory {
                addr: table.raw_value(),
            },
        )?;
        let desc: Descriptor = map.read_desc(at).ok_or(ChainError::TableOutsideMemory {
            addr: at.raw_value(),
        })?;
        let (addr, len, flags, next) = (desc.addr(), desc.len(), desc.flags(), desc.next());
        if !indirect {
            // At most `size` of them: `seen` is checked above.
            out.descriptors += 1;
        }

        if flags & F_INDIRECT != 0 {
            if indirect {
                return Err(ChainError::BadIndirect {
                    index,
                    why: "nested indirect table",
                });
            }
            if flags & F_NEXT != 0 {
                return Err(ChainError::BadIndirect {
                    index,
                    why: "INDIRECT together with NEXT",
                });
            }
            if len == 0 || u64::from(len) % DESC_SIZE != 0 {
                return Err(ChainError::BadIndirect {
                    index,
                    why: "table length is 0 or not a multiple of 16",
                });
            }
            let entries = u64::from(len) / DESC_SIZE;
            if entries > u64::from(u16::MAX) {
                return Err(ChainError::BadIndirect {
                    index,
                    why: "table has more than 65535 entries",
                });
            }
            if !map.contains(addr, len as usize) {
                return Err(ChainError::OutsideMemory {
                    index,
                    addr: addr.raw_value(),
                    len,
                });
            }
            indirect = true;
            table = addr;
            table_size = entries as u16;
            index = 0;
            seen = 0;
            continue;
        }

        if len == 0 {
            return Err(ChainError::ZeroLength { index });
        }
        let writable = flags & F_WRITE != 0;
        let expected_writable = dir == Direction::Writable;
        if writable != expected_writable {
            return Err(ChainError::WrongDirection {
                index,
                expected: dir,
            });
        }
        if !map.contains(addr, len as usize) {
            return Err(ChainError::OutsideMemory {
                index,
                addr: addr.raw_value(),
                len,
            });
        }
        out.total_len = out
            .total_len
            .checked_add(len)
            .ok_or(ChainError::TooLong { head })?;
        out.segments.push(Segment { addr, len });

        if flags & F_NEXT == 0 {
            return Ok(());
        }
        index = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    const TABLE: u64 = 0x1000;
    const MEM: usize = 0x10000;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap<()>, table: u64, i: u16, d: (u64, u32, u16, u16)) {
        let desc = Descriptor::new(d.0, d.1, d.2, d.3);
        mem.write_obj(desc, GuestAddress(table + u64::from(i) * 16))
            .unwrap();
    }

    fn walk_rx(mem: &GuestMemoryMmap<()>, head: u16) -> Result<Chain, ChainError> {
        let mut c = Chain::default();
        walk(
            &GuestMap::new(mem),
            GuestAddress(TABLE),
            8,
            head,
            Direction::Writable,
            &mut c,
        )
        .map(|_| c)
    }

    #[test]
    fn good_chain_lists_its_segments() {
        let m = mem();
        put(&m, TABLE, 0, (0x4000, 12, F_WRITE | F_NEXT, 3));
        put(&m, TABLE, 3, (0x5000, 1500, F_WRITE, 0));
        let c = walk_rx(&m, 0).unwrap();
        assert_eq!(c.total_len, 1512);
        assert_eq!((c.segments.len(), c.descriptors), (2, 2));
        assert_eq!(c.segments[1].addr, GuestAddress(0x5000));
    }

    #[test]
    fn loop_is_detected() {
        let m = mem();
        put(&m, TABLE, 0, (0x4000, 64, F_WRITE | F_NEXT, 1));
        put(&m, TABLE, 1, (0x4100, 64, F_WRITE | F_NEXT, 0));
        assert_eq!(walk_rx(&m, 0).unwrap_err(), ChainError::Loop { head: 0 });
    }

    #[test]
    fn out_of_memory_buffer_is_detected() {
        let m = mem();
        put(&m, TABLE, 0, (MEM as u64 - 10, 64, F_WRITE, 0));
        assert!(matches!(
            walk_rx(&m, 0),
            Err(ChainError::OutsideMemory { index: 0, .. })
        ));
    }

    #[test]
    fn zero_length_and_wrong_direction_are_detected() {
        let m = mem();
        put(&m, TABLE, 0, (0x4000, 0, F_WRITE, 0));
        assert_eq!(
            walk_rx(&m, 0).unwrap_err(),
            ChainError::ZeroLength { index: 0 }
        );
        put(&m, TABLE, 1, (0x4000, 64, 0, 0));
        assert!(matches!(
            walk_rx(&m, 1),
            Err(ChainError::WrongDirection { index: 1, .. })
        ));
    }

    #[test]
    fn index_out_of_range_is_detected() {
        let m = mem();
        put(&m, TABLE, 0, (0x4000, 64, F_WRITE | F_NEXT, 200));
        assert_eq!(
            walk_rx(&m, 0).unwrap_err(),
            ChainError::IndexOutOfRange {
                index: 200,
                table_size: 8
            }
        );
        assert!(walk_rx(&m, 9).is_err());
    }

    #[test]
    fn indirect_tables_are_followed_and_checked() {
        let m = mem();
        let ind = 0x8000;
        put(&m, ind, 0, (0x4000, 12, F_WRITE | F_NEXT, 1));
        put(&m, ind, 1, (0x5000, 100, F_WRITE, 0));
        put(&m, TABLE, 0, (ind, 32, F_INDIRECT, 0));
        let c = walk_rx(&m, 0).unwrap();
        assert_eq!(c.total_len, 112);
        assert_eq!(
            (c.segments.len(), c.descriptors),
            (2, 1),
            "an indirect chain occupies one descriptor of the queue's table"
        );

        put(&m, TABLE, 1, (ind, 24, F_INDIRECT, 0));
        assert!(matches!(
            walk_rx(&m, 1),
            Err(ChainError::BadIndirect { .. })
        ));
        put(&m, ind, 1, (ind, 16, F_INDIRECT, 0));
        assert!(matches!(
            walk_rx(&m, 0),
            Err(ChainError::BadIndirect {
                why: "nested indirect table",
                ..
            })
        ));
        // A loop inside an indirect table.
        put(&m, ind, 1, (0x5000, 100, F_WRITE | F_NEXT, 0));
        assert_eq!(walk_rx(&m, 0).unwrap_err(), ChainError::Loop { head: 0 });
    }
}
