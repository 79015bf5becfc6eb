//! What the relay refuses before the vhost crate's dispatcher sees it: a
//! frontend is trusted only as far as the socket's permissions, and some
//! of what it may send would hurt the whole process, not just its device.
//!
//! - ring and memory requests before `SET_OWNER`;
//! - a ring size that is 0, not a power of two, or above what we offered;
//! - a memory table with more regions than the protocol allows, regions
//!   that overlap (in the guest or in the frontend's address space), or a
//!   region larger than the file behind it: mapping it succeeds, and the
//!   first access past the file's end kills the process with SIGBUS;
//! - kick, call and error descriptors that are not eventfds.
//!
//! A refusal ends the connection with one precise log line; the device
//! listens again.

use std::os::fd::{AsRawFd, OwnedFd};

use vhost::vhost_user::message::{FrontendReq, VhostUserMemory, VhostUserMemoryRegion};
use vm_memory::ByteValued;

use super::wire::Message;

/// Regions a `SET_MEM_TABLE` may carry (`VHOST_MEMORY_BASELINE_NREGIONS`;
/// we do not offer `CONFIGURE_MEM_SLOTS`).
pub const MAX_REGIONS: usize = 8;
/// The bit of a `SET_VRING_KICK/CALL/ERR` payload that says "no descriptor".
const VRING_NOFD: u64 = 0x100;

/// Why a frontend request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("{0:?} before SET_OWNER")]
    BeforeOwner(FrontendReq),
    #[error(
        "SET_VRING_NUM {num} for vring {index}: the size must be a power of two from 1 to {max}"
    )]
    RingSize { index: u32, num: u32, max: u16 },
    #[error("SET_VRING_NUM for vring {index}: the device has {queues} vrings")]
    RingIndex { index: u32, queues: usize },
    #[error("SET_MEM_TABLE: {0}")]
    MemTable(String),
    #[error("{request:?} for vring {index}: the descriptor is {what}, not an eventfd")]
    NotEventFd {
        request: FrontendReq,
        index: u64,
        what: String,
    },
    #[error("{request:?}: {why}")]
    Malformed { request: FrontendReq, why: String },
}

/// The relay's view of what the frontend may do next.
#[derive(Debug)]
pub struct Checker {
    owner: bool,
    /// Vrings of the device (2 per queue pair).
    vrings: usize,
    /// Largest ring size offered.
    max_ring: u16,
}

impl Checker {
    pub fn new(vrings: usize, max_ring: u16) -> Checker {
        Checker {
            owner: false,
            vrings,
            max_ring,
        }
    }

    /// Check one request from the frontend.
    pub fn request(&mut self, m: &Message) -> Result<(), Refusal> {
        let Ok(req) = FrontendReq::try_from(m.request) else {
            // The dispatcher refuses codes it does not know.
            return Ok(());
        };
        match req {
            FrontendReq::SET_OWNER => self.owner = true,
            FrontendReq::RESET_OWNER => self.owner = false,
            FrontendReq::SET_FEATURES
            | FrontendReq::SET_MEM_TABLE
            | FrontendReq::ADD_MEM_REG
            | FrontendReq::REM_MEM_REG
            | FrontendReq::SET_LOG_BASE
            | FrontendReq::SET_LOG_FD
            | FrontendReq::SET_VRING_NUM
            | FrontendReq::SET_VRING_ADDR
            | FrontendReq::SET_VRING_BASE
            | FrontendReq::GET_VRING_BASE
            | FrontendReq::SET_VRING_KICK
            | FrontendReq::SET_VRING_CALL
            | FrontendReq::SET_VRING_ERR
                if !self.owner =>
            {
                return Err(Refusal::BeforeOwner(req));
            }
            _ => {}
        }
        match req {
            FrontendReq::SET_VRING_NUM => self.ring_size(m),
            FrontendReq::SET_MEM_TABLE => mem_table(m).map_err(Refusal::MemTable),
            FrontendReq::SET_VRING_KICK
            | FrontendReq::SET_VRING_CALL
            | FrontendReq::SET_VRING_ERR => vring_fd(req, m),
            _ => Ok(()),
        }
    }

    fn ring_size(&self, m: &Message) -> Result<(), Refusal> {
        let (index, num) = super::filter::vring_state(&m.payload).ok_or(Refusal::Malformed {
            request: FrontendReq::SET_VRING_NUM,
            why: format!("payload of {} bytes, expected 8", m.payload.len()),
        })?;
        if index as usize >= self.vrings {
            return Err(Refusal::RingIndex {
                index,
                queues: self.vrings,
            });
        }
        if num == 0 || !num.is_power_of_two() || num > u32::from(self.max_ring) {
            return Err(Refusal::RingSize {
                index,
                num,
                max: self.max_ring,
            });
        }
        Ok(())
    }
}

/// Check a memory table against itself and against the files behind it.
fn mem_table(m: &Message) -> Result<(), String> {
    let head = std::mem::size_of::<VhostUserMemory>();
    let each = std::mem::size_of::<VhostUserMemoryRegion>();
    let hdr = m
        .payload
        .get(..head)
        .and_then(VhostUserMemory::from_slice)
        .ok_or_else(|| format!("payload of {} bytes has no table header", m.payload.len()))?;
    let n = hdr.num_regions as usize;
    if n == 0 || n > MAX_REGIONS {
        return Err(format!("{n} regions; 1 to {MAX_REGIONS} are allowed"));
    }
    if m.payload.len() != head + n * each {
        return Err(format!(
            "payload of {} bytes for {n} regions (expected {})",
            m.payload.len(),
            head + n * each
        ));
    }
    if m.fds.len() != n {
        return Err(format!("{n} regions but {} descriptors", m.fds.len()));
    }
    let regions: Vec<VhostUserMemoryRegion> = (0..n)
        .filter_map(|i| {
            let at = head + i * each;
            VhostUserMemoryRegion::from_slice(&m.payload[at..at + each]).copied()
        })
        .collect();
    for (i, r) in regions.iter().enumerate() {
        region(i, r, &m.fds[i])?;
    }
    for (i, a) in regions.iter().enumerate() {
        for (j, b) in regions.iter().enumerate().skip(i + 1) {
            if overlap(
                a.guest_phys_addr,
                b.guest_phys_addr,
                a.memory_size,
                b.memory_size,
            ) {
                return Err(format!("regions {i} and {j} overlap in guest memory"));
            }
            if overlap(a.user_addr, b.user_addr, a.memory_size, b.memory_size) {
                return Err(format!(
                    "regions {i} and {j} overlap in the frontend's address space"
                ));
            }
        }
    }
    Ok(())
}

/// Whether `[a, a + la)` and `[b, b + lb)` intersect (both already checked not to wrap).
fn overlap(a: u64, b: u64, la: u64, lb: u64) -> bool {
    a < b + lb && b < a + la
}

/// One region: non-empty, no wrap-around, and inside the file behind it.
fn region(i: usize, r: &VhostUserMemoryRegion, fd: &OwnedFd) -> Result<(), String> {
    // Copies: the struct is packed.
    let (size, offset) = (r.memory_size, r.mmap_offset);
    if size == 0 {
        return Err(format!("region {i} is empty"));
    }
    let ends = [
        { r.guest_phys_addr }.checked_add(size),
        { r.user_addr }.checked_add(size),
        offset.checked_add(size),
    ];
    let Some(end_in_file) = ends[2] else {
        return Err(format!(
            "region {i}: offset {offset:#x} + size {size:#x} overflows"
        ));
    };
    if ends.iter().any(Option::is_none) {
        return Err(format!(
            "region {i}: its range wraps around the address space"
        ));
    }
    let st = fstat(fd).map_err(|e| format!("region {i}: cannot stat its descriptor: {e}"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!(
            "region {i}: its descriptor is not a regular file or memfd (mode {:#o})",
            st.st_mode
        ));
    }
    let file_size = st.st_size as u64;
    if end_in_file > file_size {
        return Err(format!(
            "region {i} claims {size} bytes at offset {offset:#x} of a {file_size}-byte file; \
             touching the part past its end would kill the daemon (SIGBUS)"
        ));
    }
    Ok(())
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor we own; `st` is a valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// A kick, call or error descriptor must be an eventfd.
fn vring_fd(req: FrontendReq, m: &Message) -> Result<(), Refusal> {
    let v = m.u64_payload().ok_or(Refusal::Malformed {
        request: req,
        why: format!("payload of {} bytes, expected 8", m.payload.len()),
    })?;
    let index = v & 0xff;
    if v & VRING_NOFD != 0 {
        return Ok(());
    }
    let Some(fd) = m.fds.first() else {
        return Err(Refusal::Malformed {
            request: req,
            why: format!("vring {index}: no descriptor attached and no NOFD flag"),
        });
    };
    if m.fds.len() > 1 {
        return Err(Refusal::Malformed {
            request: req,
            why: format!(
                "vring {index}: {} descriptors attached, expected 1",
                m.fds.len()
            ),
        });
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    if link != "anon_inode:[eventfd]" {
        return Err(Refusal::NotEventFd {
            request: req,
            index,
            what: link,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vhost::vhost_user::message::VhostUserVringState;

    fn msg(req: FrontendReq, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Message {
        Message {
            request: req.into(),
            flags: 1,
            payload,
            fds,
        }
    }

    fn owned() -> Checker {
        let mut c = Checker::new(4, 1024);
        c.request(&msg(FrontendReq::SET_OWNER, vec![], vec![]))
            .unwrap();
        c
    }

    fn memfd(len: u64) -> OwnedFd {
        let f = std::fs::File::from(
            // SAFETY: memfd_create with a valid C string; the fd is ours.
            unsafe {
                use std::os::fd::FromRawFd;
                OwnedFd::from_raw_fd(libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC))
            },
        );
        f.set_len(len).unwrap();
        f.into()
    }

    fn table(regions: &[(u64, u64, u64, u64)], fds: Vec<OwnedFd>) -> Message {
        let mut p = VhostUserMemory {
            num_regions: regions.len() as u32,
            padding1: 0,
        }
        .as_slice()
        .to_vec();
        for &(gpa, size, ua, off) in regions {
            let r = VhostUserMemoryRegion {
                guest_phys_addr: gpa,
                memory_size: size,
                user_addr: ua,
                mmap_offset: off,
            };
            p.extend_from_slice(r.as_slice());
        }
        msg(FrontendReq::SET_MEM_TABLE, p, fds)
    }

    #[test]
    fn ring_and_memory_requests_need_an_owner() {
        let mut c = Checker::new(2, 256);
        let num = VhostUserVringState::new(0, 256).as_slice().to_vec();
        assert_eq!(
            c.request(&msg(FrontendReq::SET_VRING_NUM, num.clone(), vec![])),
            Err(Refusal::BeforeOwner(FrontendReq::SET_VRING_NUM))
        );
        // Feature discovery comes before SET_OWNER (QEMU's order).
        c.request(&msg(FrontendReq::GET_FEATURES, vec![], vec![]))
            .unwrap();
        c.request(&msg(FrontendReq::SET_OWNER, vec![], vec![]))
            .unwrap();
        c.request(&msg(FrontendReq::SET_VRING_NUM, num, vec![]))
            .unwrap();
    }

    #[test]
    fn ring_sizes_are_powers_of_two_within_the_offer() {
        let mut c = owned();
        let num = |i, n| {
            msg(
                FrontendReq::SET_VRING_NUM,
                VhostUserVringState::new(i, n).as_slice().to_vec(),
                vec![],
            )
        };
        for bad in [0, 3, 2048, 1000] {
            assert!(
                matches!(c.request(&num(0, bad)), Err(Refusal::RingSize { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            c.request(&num(4, 256)),
            Err(Refusal::RingIndex { .. })
        ));
        c.request(&num(3, 1024)).unwrap();
        c.request(&num(1, 1)).unwrap();
    }

    #[test]
    fn a_region_larger_than_its_file_is_refused() {
        let mut c = owned();
        let mib = 1 << 20;
        // 64 MiB claimed on a 4 MiB memfd: mapping works, touching kills.
        let e = c.request(&table(
            &[(0, 64 * mib, 0x7f00_0000_0000, 0)],
            vec![memfd(4 * mib)],
        ));
        assert!(
            matches!(&e, Err(Refusal::MemTable(s)) if s.contains("SIGBUS")),
            "{e:?}"
        );
        // Inside the file, with an offset: fine.
        c.request(&table(
            &[(0, 2 * mib, 0x7f00_0000_0000, 2 * mib)],
            vec![memfd(4 * mib)],
        ))
        .unwrap();
        // The offset pushes it past the end.
        assert!(c
            .request(&table(
                &[(0, 4 * mib, 0x7f00_0000_0000, 1)],
                vec![memfd(4 * mib)]
            ))
            .is_err());
    }

    #[test]
    fn memory_tables_are_checked_against_themselves() {
        let mut c = owned();
        let mib = 1 << 20;
        let fds = |n| (0..n).map(|_| memfd(mib)).collect::<Vec<_>>();
        let nine: Vec<_> = (0..9u64)
            .map(|i| (i * mib, mib, 0x1000_0000 + i * mib, 0))
            .collect();
        assert!(
            matches!(c.request(&table(&nine, fds(9))), Err(Refusal::MemTable(s)) if s.contains("9 regions"))
        );
        let guest_overlap = [(0, mib, 0x1000_0000, 0), (mib / 2, mib, 0x2000_0000, 0)];
        assert!(
            matches!(c.request(&table(&guest_overlap, fds(2))), Err(Refusal::MemTable(s)) if s.contains("guest memory"))
        );
        let user_overlap = [(0, mib, 0x1000_0000, 0), (mib, mib, 0x1000_0000, 0)];
        assert!(
            matches!(c.request(&table(&user_overlap, fds(2))), Err(Refusal::MemTable(s)) if s.contains("address space"))
        );
        let wraps = [(u64::MAX - 10, mib, 0x1000_0000, 0)];
        assert!(c.request(&table(&wraps, fds(1))).is_err());
        let empty = [(0, 0, 0x1000_0000, 0)];
        assert!(c.request(&table(&empty, fds(1))).is_err());
        assert!(
            c.request(&table(&[(0, mib, 0x1000_0000, 0)], fds(2)))
                .is_err(),
            "fd count"
        );
        let ok = [(0, mib, 0x1000_0000, 0), (mib, mib, 0x2000_0000, 0)];
        c.request(&table(&ok, fds(2))).unwrap();
    }

    #[test]
    fn vring_descriptors_must_be_eventfds() {
        let mut c = owned();
        let (r, mut w) = std::io::pipe().unwrap();
        w.write_all(b"x").unwrap();
        let kick = |fds| {
            msg(
                FrontendReq::SET_VRING_KICK,
                0u64.to_ne_bytes().to_vec(),
                fds,
            )
        };
        let e = c.request(&kick(vec![OwnedFd::from(r)]));
        assert!(
            matches!(&e, Err(Refusal::NotEventFd { what, .. }) if what.starts_with("pipe:")),
            "{e:?}"
        );
        let (s, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(c.request(&kick(vec![OwnedFd::from(s)])).is_err());
        let efd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        // SAFETY: dup of a live eventfd; the new fd is ours.
        let dup = unsafe {
            use std::os::fd::FromRawFd;
            OwnedFd::from_raw_fd(libc::dup(efd.as_raw_fd()))
        };
        c.request(&kick(vec![dup])).unwrap();
        // NOFD with no descriptor is fine; no descriptor without NOFD is not.
        let nofd = msg(
            FrontendReq::SET_VRING_CALL,
            (VRING_NOFD | 1).to_ne_bytes().to_vec(),
            vec![],
        );
        c.request(&nofd).unwrap();
        assert!(c.request(&kick(vec![])).is_err());
    }
}
