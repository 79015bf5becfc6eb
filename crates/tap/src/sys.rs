//! Raw system calls: the TUN ioctls of `linux/if_tun.h`, the interface
//! ioctls of `linux/sockios.h`, and the `struct ifreq` they take.
//!
//! Every `unsafe` block of the crate that is not an iovec read/write lives
//! here, one small function per ioctl, so that each one can state exactly
//! which argument type the kernel expects for its request number.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// `linux/if_tun.h`. _IOW('T', n, int) = 0x4004_54nn, _IOR = 0x8004_54nn.
const TUNSETIFF: u32 = 0x4004_54ca; // _IOW('T', 202, int), arg: struct ifreq *
const TUNSETPERSIST: u32 = 0x4004_54cb; // _IOW('T', 203, int), arg: value
const TUNGETFEATURES: u32 = 0x8004_54cf; // _IOR('T', 207, unsigned int), arg: unsigned int *
const TUNSETOFFLOAD: u32 = 0x4004_54d0; // _IOW('T', 208, unsigned int), arg: value
const TUNGETIFF: u32 = 0x8004_54d2; // _IOR('T', 210, unsigned int), arg: struct ifreq *
const TUNSETVNETHDRSZ: u32 = 0x4004_54d8; // _IOW('T', 216, int), arg: int *

// `linux/sockios.h`; all take a `struct ifreq *`.
const SIOCGIFFLAGS: u32 = 0x8913;
const SIOCSIFFLAGS: u32 = 0x8914;
const SIOCSIFMTU: u32 = 0x8922;
const SIOCSIFHWADDR: u32 = 0x8924;
/// `ARPHRD_ETHER`: the address family of an Ethernet hardware address.
const ARPHRD_ETHER: u16 = 1;
const SIOCSIFTXQLEN: u32 = 0x8943;

/// `IFNAMSIZ`: interface name buffer size, including the terminating NUL.
pub(crate) const IFNAMSIZ: usize = 16;

/// `struct ifreq`: a NUL-terminated name and a 24-byte union (`ifr_flags`
/// is a `short`, `ifr_mtu` and `ifr_qlen` are `int`s, all at offset 0 of
/// the union). 40 bytes on 64-bit Linux; aligned like the kernel's, which
/// holds pointers in the union.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct IfReq {
    name: [u8; IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    /// NB: `name` has been validated: shorter than `IFNAMSIZ`, no NUL.
    pub(crate) fn new(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        };
        let n = name.len().min(IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        req
    }

    /// The name as the kernel left it (TUNSETIFF fills in `tap%d` names).
    pub(crate) fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    /// `ifr_flags` (a C `short`), zero-extended.
    pub(crate) fn flags(&self) -> u32 {
        u32::from(u16::from_ne_bytes([self.data[0], self.data[1]]))
    }

    /// Set `ifr_flags`; only the low 16 bits exist in the kernel's struct.
    pub(crate) fn set_flags(&mut self, flags: u32) {
        self.data[..2].copy_from_slice(&(flags as u16).to_ne_bytes());
    }

    /// Set `ifr_mtu` / `ifr_qlen` (a C `int`).
    /// `ifr_hwaddr` = an Ethernet address (struct sockaddr: family, then bytes).
    pub(crate) fn set_hwaddr(&mut self, mac: [u8; 6]) {
        self.data = [0; 24];
        self.data[0..2].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
        self.data[2..8].copy_from_slice(&mac);
    }

    pub(crate) fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// TUNSETIFF: create or attach `req`'s interface on this `/dev/net/tun` fd.
/// On success the kernel writes the final name back into `req`.
pub(crate) fn tun_set_iff(file: &File, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a valid,
    // exclusively borrowed `IfReq` with the kernel's layout and size (40 bytes).
    check(unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, req as *mut IfReq) })
}

/// TUNGETIFF: the name and the flags (`tun_flags`) of the attached device.
pub(crate) fn tun_get_iff(file: &File, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: TUNGETIFF writes one `struct ifreq`; `req` is valid, exclusively
    // borrowed and laid out like the kernel's.
    check(unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF as _, req as *mut IfReq) })
}

/// TUNGETFEATURES: the `IFF_*` flags TUNSETIFF accepts on this kernel.
pub(crate) fn tun_get_features(file: &File) -> io::Result<u32> {
    let mut features: libc::c_uint = 0;
    // SAFETY: TUNGETFEATURES writes one `unsigned int` through the pointer,
    // which points to a live local of that type.
    check(unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TUNGETFEATURES as _,
            &mut features as *mut libc::c_uint,
        )
    })?;
    Ok(features)
}

/// TUNSETVNETHDRSZ: the virtio-net header size in front of every frame.
pub(crate) fn tun_set_vnet_hdr_size(file: &File, size: i32) -> io::Result<()> {
    let size: libc::c_int = size;
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which
    // points to a live local of that type.
    check(unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TUNSETVNETHDRSZ as _,
            &size as *const libc::c_int,
        )
    })
}

/// TUNSETOFFLOAD: the `TUN_F_*` offloads the reader can handle. The flags
/// are passed by value, not by pointer.
pub(crate) fn tun_set_offload(file: &File, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is shared.
    check(unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD as _, flags as libc::c_ulong) })
}

/// TUNSETPERSIST: keep (or stop keeping) the device after the last fd
/// closes. The flag is passed by value.
pub(crate) fn tun_set_persist(file: &File, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value; no memory is shared.
    check(unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TUNSETPERSIST as _,
            libc::c_ulong::from(persist),
        )
    })
}

/// An `AF_INET` datagram socket: the handle for the `SIOC*IF*` ioctls.
pub(crate) fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: `fd` is a freshly created, valid descriptor that nothing else
    // owns; the OwnedFd becomes its only owner and closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface ioctls that this crate uses; all take a `struct ifreq`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IfIoctl {
    GetFlags,
    SetFlags,
    SetMtu,
    SetTxQueueLen,
    SetHwAddr,
}

/// Run an interface ioctl on `sock` (from [`control_socket`]).
pub(crate) fn if_ioctl(sock: &OwnedFd, which: IfIoctl, req: &mut IfReq) -> io::Result<()> {
    let nr = match which {
        IfIoctl::GetFlags => SIOCGIFFLAGS,
        IfIoctl::SetFlags => SIOCSIFFLAGS,
        IfIoctl::SetMtu => SIOCSIFMTU,
        IfIoctl::SetTxQueueLen => SIOCSIFTXQLEN,
        IfIoctl::SetHwAddr => SIOCSIFHWADDR,
    };
    // SAFETY: every request in `IfIoctl` reads and/or writes exactly one
    // `struct ifreq`; `req` is valid, exclusively borrowed and laid out like
    // the kernel's.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), nr as _, req as *mut IfReq) })
}

/// The result of a raw syscall as `io::Result`.
fn syscall_result(n: libc::c_long) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

// The data path's read/readv/write/writev go through `syscall(2)` rather
// than glibc's wrappers: those are thread-cancellation points that switch
// the cancellation state around every call (two extra calls per frame, a
// few per cent of the daemon's time at 1 Mpps). Nothing here uses
// `pthread_cancel`, so nothing is lost.

/// readv(2) into caller-provided iovecs.
///
/// # Safety
/// Every iovec must point to memory valid for writes of `iov_len` bytes for
/// the duration of the call, and not be accessed by anyone else meanwhile.
pub(crate) unsafe fn readv(file: &File, iov: &[libc::iovec]) -> io::Result<usize> {
    let cnt = iov_count(iov)?;
    // SAFETY: the pointer and count describe the `iov` slice; the memory the
    // iovecs point to is valid for writes by this function's contract.
    syscall_result(unsafe {
        libc::syscall(
            libc::SYS_readv,
            libc::c_long::from(file.as_raw_fd()),
            iov.as_ptr(),
            cnt,
        )
    })
}

/// writev(2) from caller-provided iovecs.
///
/// # Safety
/// Every iovec must point to memory valid for reads of `iov_len` bytes for
/// the duration of the call.
pub(crate) unsafe fn writev(file: &File, iov: &[libc::iovec]) -> io::Result<usize> {
    if let [one] = iov {
        // One buffer: write(2) spares the kernel importing an iovec array.
        // SAFETY: the buffer is valid for reads of `iov_len` bytes by this
        // function's contract.
        return syscall_result(unsafe {
            libc::syscall(
                libc::SYS_write,
                libc::c_long::from(file.as_raw_fd()),
                one.iov_base,
                one.iov_len,
            )
        });
    }
    let cnt = iov_count(iov)?;
    // SAFETY: the pointer and count describe the `iov` slice; the memory the
    // iovecs point to is valid for reads by this function's contract.
    syscall_result(unsafe {
        libc::syscall(
            libc::SYS_writev,
            libc::c_long::from(file.as_raw_fd()),
            iov.as_ptr(),
            cnt,
        )
    })
}

/// The iovec count argument of readv/writev (an `int` for the kernel).
fn iov_count(iov: &[libc::iovec]) -> io::Result<libc::c_long> {
    libc::c_int::try_from(iov.len())
        .map(libc::c_long::from)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::align_of::<IfReq>(), 8);
    }

    #[test]
    fn ifreq_name_and_flags_round_trip() {
        let mut req = IfReq::new("vt0");
        req.set_flags(0x5102);
        assert_eq!(req.name(), "vt0");
        assert_eq!(req.flags(), 0x5102);
        let long = IfReq::new("abcdefghijklmnopqrstu");
        assert_eq!(long.name(), "abcdefghijklmno");
    }
}
