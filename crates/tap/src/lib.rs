//! TAP devices over `libc` ioctls: create or attach, multi-queue, virtio-net
//! header, offloads, `TUNGETFEATURES`.
//!
//! # Design
//!
//! A [`Tap`] is one Linux TAP interface opened with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (plus `IFF_MULTI_QUEUE` when it has
//! or needs more than one queue), and one [`TapQueue`] per queue: a
//! non-blocking, close-on-exec `/dev/net/tun` file descriptor attached to
//! the interface. Every frame read from or written to a queue starts with
//! the virtio-net header (`vnet_hdr_size` bytes, 12 for `virtio_net_hdr_v1`).
//!
//! [`Tap::open`] creates the interface when it does not exist and attaches
//! to it when it does. Before attaching it reads the existing device's flags
//! from sysfs, so that a mismatch (a single-queue TAP when several queues
//! are wanted, a TUN device, something that is not a tun device at all)
//! gets an error that says what is wrong and what to do, instead of the
//! kernel's bare `EINVAL`.
//!
//! Modules:
//! - `sys`: the ioctls and `struct ifreq`; all the crate's `unsafe` except
//!   the raw-iovec entry points of [`TapQueue`].
//! - `error`: [`Error`], one variant per step.
//!
//! Dropping a [`Tap`] closes its fds: the kernel removes a created,
//! non-persistent interface when the last fd closes. [`Tap::close_and_remove`]
//! also undoes a persist flag so that a TAP we created goes away, and leaves
//! a TAP we attached to as we found it.

mod error;
mod sys;

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use error::Error;

/// `IFF_TUN`: a layer-3 device (frames without Ethernet header).
pub const IFF_TUN: u32 = 0x0001;
/// `IFF_TAP`: a layer-2 (Ethernet) device.
pub const IFF_TAP: u32 = 0x0002;
/// `IFF_NO_CARRIER`: create with the carrier off.
pub const IFF_NO_CARRIER: u32 = 0x0040;
/// `IFF_BACKPRESSURE`: stop the netdev queue instead of tail-dropping when
/// the tun ring is full (net-next 2026, expected in Linux 7.3; opt-in,
/// offered in `TUNGETFEATURES` where supported).
pub const IFF_BACKPRESSURE: u32 = 0x0080;
/// `IFF_MULTI_QUEUE`: one fd per queue.
pub const IFF_MULTI_QUEUE: u32 = 0x0100;
/// `IFF_PERSIST`: the device outlives its fds (reported, not requested).
pub const IFF_PERSIST: u32 = 0x0800;
/// `IFF_NO_PI`: no 4-byte packet-information prefix.
pub const IFF_NO_PI: u32 = 0x1000;
/// `IFF_VNET_HDR`: a virtio-net header in front of every frame.
pub const IFF_VNET_HDR: u32 = 0x4000;
/// `IFF_ONE_QUEUE`: obsolete, still kept in the device's flags.
const IFF_ONE_QUEUE: u32 = 0x2000;
/// The flags every `TUNSETIFF` on a queue rewrites on the device
/// (`TUN_FEATURES` in the kernel, but for the NAPI ones, which only count at
/// creation): the ones to give back to a TAP we attached to.
const ATTACH_FLAGS: u32 =
    IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE | IFF_BACKPRESSURE | IFF_ONE_QUEUE;

/// `TUN_F_CSUM`: the reader handles partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: the reader handles TSO for IPv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`: the reader handles TSO for IPv6.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_TSO_ECN`: the reader handles TSO with ECN bits.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// `TUN_F_UFO`: the reader handles UDP fragmentation offload.
pub const TUN_F_UFO: u32 = 0x10;
/// `TUN_F_USO4`: the reader handles UDP segmentation offload for IPv4.
pub const TUN_F_USO4: u32 = 0x20;
/// `TUN_F_USO6`: the reader handles UDP segmentation offload for IPv6.
pub const TUN_F_USO6: u32 = 0x40;

/// `MAX_TAP_QUEUES` of the tun driver.
pub const MAX_QUEUES: usize = 256;

/// Size of `struct virtio_net_hdr_v1` (and of the mergeable-buffers header).
pub const VNET_HDR_V1_SIZE: i32 = 12;

const TUN_DEVICE: &str = "/dev/net/tun";
const SYS_CLASS_NET: &str = "/sys/class/net";

/// Whether to ask the kernel for `IFF_BACKPRESSURE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackpressureRequest {
    /// Never set it.
    #[default]
    Off,
    /// Set it when `TUNGETFEATURES` offers it; see [`Tap::backpressure`].
    IfAvailable,
}

/// What to open and how to configure it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapConfig {
    /// Interface name, at most 15 bytes. May hold a `%d` pattern (`vt%d`)
    /// or be empty (`tap%d`): the kernel then picks the name and
    /// [`Tap::name`] returns it.
    pub name: String,
    /// Number of queues (fds), `1..=MAX_QUEUES`.
    pub queues: usize,
    /// Virtio-net header size: 12 for `virtio_net_hdr_v1`, 10 for the
    /// legacy header without mergeable buffers.
    pub vnet_hdr_size: i32,
    /// Whether to ask for `IFF_BACKPRESSURE`.
    pub backpressure: BackpressureRequest,
    /// `txqueuelen` (also the size of the tun driver's ring), if to be set.
    pub txqueuelen: Option<u32>,
    /// MTU, if to be set.
    pub mtu: Option<u32>,
    /// `Some(p)`: set TUNSETPERSIST to `p`; `None`: leave it as it is
    /// (a created TAP is then not persistent).
    pub persist: Option<bool>,
}

impl TapConfig {
    /// One queue, 12-byte header, backpressure off, nothing else changed.
    pub fn new(name: impl Into<String>) -> TapConfig {
        TapConfig {
            name: name.into(),
            queues: 1,
            vnet_hdr_size: VNET_HDR_V1_SIZE,
            backpressure: BackpressureRequest::Off,
            txqueuelen: None,
            mtu: None,
            persist: None,
        }
    }
}

/// An open TAP interface: one [`TapQueue`] per queue.
#[derive(Debug)]
pub struct Tap {
    queues: Vec<TapQueue>,
    name: String,
    /// This `open` created the interface (it did not exist before).
    created: bool,
    /// Flags as TUNGETIFF reported them after attaching.
    flags: u32,
    /// IFF_PERSIST when we found the interface (false if we created it).
    persist_found: bool,
    /// The device's flags when we found it (`None` if we created it): our
    /// `TUNSETIFF`s overwrite them, so dropping the handle gives them back.
    flags_found: Option<u32>,
    /// IFF_PERSIST now, as far as this handle set it.
    persist_now: bool,
}

impl Tap {
    /// Open (create if missing, attach if present) the TAP `cfg.name` with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, plus `IFF_MULTI_QUEUE` when
    /// `cfg.queues > 1` or the existing device is multi-queue, plus
    /// `IFF_BACKPRESSURE` when requested and offered. Opens one
    /// `O_RDWR | O_NONBLOCK | O_CLOEXEC` fd per queue, sets the vnet header
    /// size, txqueuelen and MTU if given, brings the link up, and finally
    /// sets the persist flag if `cfg.persist` asks to change it.
    ///
    /// On error every fd opened so far is closed, so a TAP this call created
    /// disappears again.
    pub fn open(cfg: &TapConfig) -> Result<Tap, Error> {
        validate_name(&cfg.name)?;
        if cfg.queues == 0 || cfg.queues > MAX_QUEUES {
            return Err(Error::QueueCount {
                name: cfg.name.clone(),
                queues: cfg.queues,
                max: MAX_QUEUES,
            });
        }
        let existing = existing_tun_flags(&cfg.name)?;
        let multi_queue =
            cfg.queues > 1 || existing.is_some_and(|flags| flags & IFF_MULTI_QUEUE != 0);
        if let Some(found) = existing {
            if found & IFF_TUN != 0 {
                return Err(Error::ExistsAsTun {
                    name: cfg.name.clone(),
                });
            }
            if multi_queue && found & IFF_MULTI_QUEUE == 0 {
                return Err(Error::QueueModeMismatch {
                    name: cfg.name.clone(),
                    existing: "single-queue",
                    requested: "multi-queue",
                });
            }
        }

        let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if multi_queue {
            flags |= IFF_MULTI_QUEUE;
        }
        if cfg.backpressure == BackpressureRequest::IfAvailable
            && Self::kernel_features()? & IFF_BACKPRESSURE != 0
        {
            flags |= IFF_BACKPRESSURE;
        }

        // The kernel fills in the final name on the first TUNSETIFF (for
        // empty and `%d` names); the other queues attach to that name.
        let mut name = cfg.name.clone();
        let mut queues = Vec::with_capacity(cfg.queues);
        for queue in 0..cfg.queues {
            let file = open_tun_device(&name)?;
            let mut req = sys::IfReq::new(&name);
            req.set_flags(flags);
            sys::tun_set_iff(&file, &mut req).map_err(|source| Error::SetIff {
                name: name.clone(),
                queue,
                source,
            })?;
            if queue == 0 {
                name = req.name();
            }
            queues.push(TapQueue { file });
        }

        // The first fd to attach sets the device's flags; if another process
        // holds a queue of a multi-queue TAP, its flags stay. Check them.
        let mut req = sys::IfReq::new(&name);
        sys::tun_get_iff(&queues[0].file, &mut req).map_err(|source| Error::GetIff {
            name: name.clone(),
            source,
        })?;
        let effective = req.flags();
        if effective & (IFF_NO_PI | IFF_VNET_HDR) != IFF_NO_PI | IFF_VNET_HDR {
            return Err(Error::AttachedFlags {
                name,
                flags: effective,
            });
        }

        // A single-queue TAP that another process holds refuses TUNSETIFF
        // (EBUSY); a multi-queue one takes our queues beside theirs. The
        // device's queue count (one sysfs `tx-N` per attached queue) says
        // whether anyone else is there.
        if existing.is_some() && multi_queue {
            let attached = attached_queues(&name)?;
            if attached > queues.len() {
                return Err(Error::AttachedElsewhere {
                    name,
                    theirs: attached - queues.len(),
                });
            }
        }

        let mut tap = Tap {
            queues,
            name,
            created: existing.is_none(),
            flags: effective,
            persist_found: existing.is_some_and(|found| found & IFF_PERSIST != 0),
            flags_found: existing,
            persist_now: effective & IFF_PERSIST != 0,
        };
        tap.set_vnet_hdr_size(cfg.vnet_hdr_size)?;
        tap.configure_link(cfg.txqueuelen, cfg.mtu)?;
        if let Some(persist) = cfg.persist {
            if persist != tap.persist_now {
                tap.set_persist(persist)?;
            }
        }
        log::info!(
            "tap: {} {}, {} queue(s), flags {:#x}{}",
            if tap.created { "created" } else { "attached" },
            tap.name,
            tap.queues.len(),
            tap.flags,
            if tap.persist_now { ", persistent" } else { "" },
        );
        Ok(tap)
    }

    /// The interface name (as the kernel chose it for `%d` patterns).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of queues (fds) this handle holds.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Queue `i`. Panics if `i >= queue_count()`.
    pub fn queue(&self, i: usize) -> &TapQueue {
        &self.queues[i]
    }

    /// All queues.
    pub fn queues(&self) -> &[TapQueue] {
        &self.queues
    }

    /// True if [`Tap::open`] created the interface (it did not exist).
    pub fn created(&self) -> bool {
        self.created
    }

    /// True if `IFF_BACKPRESSURE` is in effect on the device.
    pub fn backpressure(&self) -> bool {
        self.flags & IFF_BACKPRESSURE != 0
    }

    /// True if the device is multi-queue.
    pub fn multi_queue(&self) -> bool {
        self.flags & IFF_MULTI_QUEUE != 0
    }

    /// True if the device outlives its fds (TUNSETPERSIST).
    pub fn persistent(&self) -> bool {
        self.persist_now
    }

    /// The device's flags as TUNGETIFF reported them after attaching
    /// (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | ...`).
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// TUNGETFEATURES on a fresh `/dev/net/tun` fd: the `IFF_*` flags this
    /// kernel accepts.
    pub fn kernel_features() -> Result<u32, Error> {
        let file = open_tun_device("")?;
        sys::tun_get_features(&file).map_err(|source| Error::GetFeatures { source })
    }

    /// TUNSETOFFLOAD with `TUN_F_*` flags (what the reader, i.e. the guest,
    /// can take), on every queue fd. The kernel rejects unknown flags with
    /// `EINVAL`, which is how to probe for `TUN_F_USO4`/`TUN_F_USO6`.
    pub fn set_offload(&self, flags: u32) -> Result<(), Error> {
        for queue in &self.queues {
            sys::tun_set_offload(&queue.file, flags).map_err(|source| Error::SetOffload {
                name: self.name.clone(),
                flags,
                source,
            })?;
        }
        Ok(())
    }

    /// TUNSETVNETHDRSZ on every queue fd. The kernel rejects sizes below
    /// 10 (`struct virtio_net_hdr`) with `EINVAL`.
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<(), Error> {
        for queue in &self.queues {
            sys::tun_set_vnet_hdr_size(&queue.file, size).map_err(|source| {
                Error::SetVnetHdrSize {
                    name: self.name.clone(),
                    size,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// TUNSETPERSIST: whether the device outlives the last fd.
    pub fn set_persist(&mut self, persist: bool) -> Result<(), Error> {
        sys::tun_set_persist(&self.queues[0].file, persist).map_err(|source| {
            Error::SetPersist {
                name: self.name.clone(),
                persist,
                source,
            }
        })?;
        self.persist_now = persist;
        Ok(())
    }

    /// Set `txqueuelen`, the size of the tun driver's ring.
    pub fn set_txqueuelen(&self, len: u32) -> Result<(), Error> {
        let sock = sys::control_socket().map_err(|source| Error::ControlSocket {
            name: self.name.clone(),
            source,
        })?;
        self.set_txqueuelen_on(&sock, len)
    }

    /// `txqueuelen` now (`/sys/class/net/NAME/tx_queue_len`).
    pub fn txqueuelen(&self) -> Result<u32, Error> {
        let path = Path::new(SYS_CLASS_NET)
            .join(&self.name)
            .join("tx_queue_len");
        read_sysfs_number(&self.name, path)
    }

    fn set_txqueuelen_on(&self, sock: &std::os::fd::OwnedFd, len: u32) -> Result<(), Error> {
        let mut req = sys::IfReq::new(&self.name);
        req.set_int(len.min(i32::MAX as u32) as i32);
        sys::if_ioctl(sock, sys::IfIoctl::SetTxQueueLen, &mut req).map_err(|source| {
            Error::SetTxQueueLen {
                name: self.name.clone(),
                len,
                source,
            }
        })
    }

    /// `/sys/class/net/NAME/statistics/tx_dropped`: frames the host tried
    /// to send to the guest that the tun driver dropped (ring full).
    pub fn tx_dropped(&self) -> Result<u64, Error> {
        self.statistic("tx_dropped")
    }

    /// Any counter from `/sys/class/net/NAME/statistics/` (`rx_packets`,
    /// `tx_packets`, `tx_dropped`, ...). Direction as seen by the host: the
    /// host's `tx` is what the guest receives.
    pub fn statistic(&self, counter: &str) -> Result<u64, Error> {
        let path = Path::new(SYS_CLASS_NET)
            .join(&self.name)
            .join("statistics")
            .join(counter);
        read_sysfs_number(&self.name, path)
    }

    /// Shut down: remove the interface if this handle created it (clearing
    /// TUNSETPERSIST first if it is set), or restore the persist flag of an
    /// attached TAP as found, then close every fd (dropping the handle then
    /// gives an attached TAP back its flags, see [`Drop`]). Link state, MTU,
    /// txqueuelen and the vnet header size of an attached TAP are not restored.
    ///
    /// If a created TAP is still there afterwards, another process holds a
    /// queue of it; that is logged, not an error.
    pub fn close_and_remove(mut self) -> Result<(), Error> {
        let persist_wanted = if self.created {
            false
        } else {
            self.persist_found
        };
        if self.persist_now != persist_wanted {
            self.set_persist(persist_wanted)?;
        }
        drop(std::mem::take(&mut self.queues));
        let (name, created) = (&self.name, self.created);
        if created && interface_exists(name) {
            log::warn!("tap: {name} still exists after closing our fds: another process holds a queue of it");
        } else {
            log::info!(
                "tap: closed {name}{}",
                if created { ", removed" } else { "" }
            );
        }
        Ok(())
    }

    /// Set the interface's (host side) MAC address, e.g. a stable one for a
    /// TAP that is created anew at every start, so that neighbours' caches
    /// stay valid across restarts.
    pub fn set_mac(&self, mac: [u8; 6]) -> Result<(), Error> {
        let name = &self.name;
        let sock = sys::control_socket().map_err(|source| Error::ControlSocket {
            name: name.clone(),
            source,
        })?;
        let mut req = sys::IfReq::new(name);
        req.set_hwaddr(mac);
        sys::if_ioctl(&sock, sys::IfIoctl::SetHwAddr, &mut req).map_err(|source| Error::SetMac {
            name: name.clone(),
            mac: mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            source,
        })
    }

    /// Set txqueuelen, MTU, and the link up, through an AF_INET socket.
    fn configure_link(&self, txqueuelen: Option<u32>, mtu: Option<u32>) -> Result<(), Error> {
        let name = &self.name;
        let sock = sys::control_socket().map_err(|source| Error::ControlSocket {
            name: name.clone(),
            source,
        })?;
        if let Some(len) = txqueuelen {
            self.set_txqueuelen_on(&sock, len)?;
        }
        if let Some(mtu) = mtu {
            let mut req = sys::IfReq::new(name);
            req.set_int(mtu.min(i32::MAX as u32) as i32);
            sys::if_ioctl(&sock, sys::IfIoctl::SetMtu, &mut req).map_err(|source| {
                Error::SetMtu {
                    name: name.clone(),
                    mtu,
                    source,
                }
            })?;
        }
        let link_up = |source| Error::LinkUp {
            name: name.clone(),
            source,
        };
        let mut req = sys::IfReq::new(name);
        sys::if_ioctl(&sock, sys::IfIoctl::GetFlags, &mut req).map_err(link_up)?;
        let if_flags = req.flags();
        if if_flags & libc::IFF_UP as u32 == 0 {
            req.set_flags(if_flags | libc::IFF_UP as u32);
            sys::if_ioctl(&sock, sys::IfIoctl::SetFlags, &mut req).map_err(link_up)?;
        }
        Ok(())
    }
}

/// Dropping a handle closes its fds. A TAP we attached to gets back the
/// flags it had (our `TUNSETIFF`s overwrote them, `IFF_BACKPRESSURE` and
/// `IFF_VNET_HDR` included): one fd attaches once more with the flags found
/// and closes. Failures are logged; there is no one left to return them to.
impl Drop for Tap {
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.queues));
        let Some(found) = self.flags_found.take() else {
            return;
        };
        if (found ^ self.flags) & ATTACH_FLAGS == 0 || !interface_exists(&self.name) {
            return;
        }
        let restore = (found & ATTACH_FLAGS) | IFF_TAP;
        let attach = || {
            open_tun_device(&self.name).and_then(|file| {
                let mut req = sys::IfReq::new(&self.name);
                req.set_flags(restore);
                sys::tun_set_iff(&file, &mut req).map_err(|source| Error::SetIff {
                    name: self.name.clone(),
                    queue: 0,
                    source,
                })
            })
        };
        // A single-queue TAP refuses the attach (EBUSY) while our closed fd
        // is still held elsewhere: a child process another thread of ours
        // forked between fork and exec. That window is short: retry for
        // up to 200 ms.
        let mut restored = attach();
        for _ in 0..200 {
            match &restored {
                Err(Error::SetIff { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    restored = attach();
                }
                _ => break,
            }
        }
        match restored {
            Ok(()) => log::info!(
                "tap: {} has its flags back ({:#x} -> {:#x})",
                self.name,
                self.flags,
                existing_tun_flags(&self.name)
                    .ok()
                    .flatten()
                    .unwrap_or(found)
            ),
            Err(e) => log::warn!(
                "tap: cannot give {} back its flags {found:#x} (now {:#x}): {e}",
                self.name,
                self.flags
            ),
        }
    }
}

/// One queue of a [`Tap`]: a non-blocking `/dev/net/tun` fd. Every frame
/// read or written carries the virtio-net header in front. One frame per
/// read/write call; `WouldBlock` when there is nothing to read or (with
/// backpressure) no room to write.
#[derive(Debug)]
pub struct TapQueue {
    file: File,
}

impl TapQueue {
    /// The fd, for epoll. Owned by this queue.
    pub fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Read one frame (header + Ethernet frame). A frame longer than `buf`
    /// is truncated. `EAGAIN` is `Err(ErrorKind::WouldBlock)`.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Read one frame, scattered over `iov`.
    pub fn readv(&self, iov: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.file).read_vectored(iov)
    }

    /// Write one frame (header + Ethernet frame) gathered from `iov`.
    pub fn writev(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(iov)
    }

    /// Write one frame gathered from raw iovecs (e.g. pointing into mmap'ed
    /// guest memory).
    ///
    /// # Safety
    /// The caller guarantees that every iovec points to memory valid for
    /// reads of `iov_len` bytes for the whole call.
    pub unsafe fn writev_raw(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: forwarded contract: the iovecs are readable for the call.
        unsafe { sys::writev(&self.file, iov) }
    }

    /// Read one frame into raw iovecs (e.g. pointing into mmap'ed guest
    /// memory).
    ///
    /// # Safety
    /// The caller guarantees that every iovec points to memory valid for
    /// writes of `iov_len` bytes for the whole call, and that no Rust
    /// reference to that memory is alive meanwhile (memory shared with a
    /// guest may still be touched by the guest: the kernel copies into it
    /// like any DMA would).
    pub unsafe fn readv_raw(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: forwarded contract: the iovecs are writable for the call.
        unsafe { sys::readv(&self.file, iov) }
    }
}

impl AsRawFd for TapQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Linux's `dev_valid_name`, checked before the ioctl for a clear error.
fn validate_name(name: &str) -> Result<(), Error> {
    let invalid = |reason| {
        Err(Error::NameInvalid {
            name: name.to_owned(),
            reason,
        })
    };
    if name.len() >= sys::IFNAMSIZ {
        return Err(Error::NameTooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    if name == "." || name == ".." {
        return invalid("\".\" and \"..\" are reserved");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return invalid("it contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// `/dev/net/tun`, read-write, non-blocking, close-on-exec (std adds
/// `O_CLOEXEC` itself).
fn open_tun_device(name: &str) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|source| Error::OpenTunDevice {
            name: name.to_owned(),
            source,
        })
}

fn interface_exists(name: &str) -> bool {
    !name.is_empty() && Path::new(SYS_CLASS_NET).join(name).exists()
}

/// The tun flags of an existing interface `name` (`/sys/class/net/NAME/tun_flags`),
/// `None` if there is no such interface, `Error::NotATap` if it is not a tun device.
/// How many queues are attached to the TAP `name` now, by every process:
/// tun keeps the device's real TX queue count equal to its attached queues
/// (at least 1), and sysfs shows one `queues/tx-N` directory per real queue.
pub fn attached_queues(name: &str) -> Result<usize, Error> {
    let path = Path::new(SYS_CLASS_NET).join(name).join("queues");
    let dir = std::fs::read_dir(&path).map_err(|source| Error::ReadSysfs {
        name: name.to_string(),
        path: path.clone(),
        source,
    })?;
    Ok(dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("tx-"))
        .count())
}

fn existing_tun_flags(name: &str) -> Result<Option<u32>, Error> {
    if !interface_exists(name) {
        return Ok(None);
    }
    let path: PathBuf = Path::new(SYS_CLASS_NET).join(name).join("tun_flags");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Gone in between (another process deleted it) or not a tun device.
            return if interface_exists(name) {
                Err(Error::NotATap {
                    name: name.to_owned(),
                })
            } else {
                Ok(None)
            };
        }
        Err(source) => {
            return Err(Error::ReadSysfs {
                name: name.to_owned(),
                path,
                source,
            })
        }
    };
    let value = text.trim();
    u32::from_str_radix(value.trim_start_matches("0x"), 16)
        .map(Some)
        .map_err(|_| Error::ParseSysfs {
            name: name.to_owned(),
            path,
            value: value.to_owned(),
        })
}

fn read_sysfs(name: &str, path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| Error::ReadSysfs {
            name: name.to_owned(),
            path: path.to_owned(),
            source,
        })
}

/// A sysfs attribute that holds one decimal number.
fn read_sysfs_number<T: std::str::FromStr>(name: &str, path: PathBuf) -> Result<T, Error> {
    let text = read_sysfs(name, &path)?;
    text.parse().map_err(|_| Error::ParseSysfs {
        name: name.to_owned(),
        path,
        value: text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_like_the_kernel_does() {
        assert!(validate_name("vt0").is_ok());
        assert!(validate_name("abcdefghijklmno").is_ok());
        assert!(matches!(
            validate_name("abcdefghijklmnop"),
            Err(Error::NameTooLong { len: 16, .. })
        ));
        assert!(matches!(
            validate_name("a/b"),
            Err(Error::NameInvalid { .. })
        ));
        assert!(matches!(
            validate_name(".."),
            Err(Error::NameInvalid { .. })
        ));
        assert!(matches!(
            validate_name("a b"),
            Err(Error::NameInvalid { .. })
        ));
    }
}
