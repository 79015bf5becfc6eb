//! vhost-user messages on a unix socket: a header, a payload and the file
//! descriptors that ride on it (`SCM_RIGHTS`), read and written whole.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vm_memory::ByteValued;

/// A message header: request code, flags, payload size, each a `u32` in the
/// host's byte order (vhost-user uses the machine's native order).
pub type Header = [u32; 3];
/// The version field of the header flags (the [`VhostUserHeaderFlag::VERSION`]
/// bits): the protocol has only version 1.
pub const VERSION_1: u32 = 0x1;
pub const REPLY: u32 = VhostUserHeaderFlag::REPLY.bits();
pub const NEED_REPLY: u32 = VhostUserHeaderFlag::NEED_REPLY.bits();
/// Largest payload the relay accepts (the protocol's largest is the memory
/// table: 8 regions of 32 bytes plus 8; config space messages are 4 KiB + 12).
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// The most descriptors one message may carry.
pub const MAX_FDS: usize = 32;

/// One vhost-user message with its descriptors.
#[derive(Debug)]
pub struct Message {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Message {
    pub fn u64_payload(&self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.payload.get(..8)?.try_into().ok()?))
    }

    pub fn header(&self) -> Header {
        [self.request, self.flags, self.payload.len() as u32]
    }
}

/// Receive exactly `buf.len()` bytes; descriptors that arrive are appended to `fds`.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = recv_with_fds(sock, &mut buf[got..], fds)?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a message",
            ));
        }
        got += n;
    }
    Ok(true)
}

/// One `recvmsg` that keeps any `SCM_RIGHTS` descriptors.
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    // Room for MAX_FDS descriptors in one control message.
    let mut cmsg = [0u64; (MAX_FDS * 4 + 32) / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer field is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg);
    let n = loop {
        // SAFETY: `msg` points to `iov` (a live buffer of `buf.len()` bytes)
        // and to `cmsg` (a live buffer of `msg_controllen` bytes), both
        // outliving the call.
        let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // Take every descriptor the kernel installed first, also when the
    // control message was truncated (MSG_CTRUNC: more descriptors than fit
    // `cmsg`; the kernel installs those that fit and closes the rest):
    // owned, they are closed with `fds` when the caller refuses the message.
    // Returning before this leaked up to 36 descriptors per such message.
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay within msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is a non-null header inside the control buffer (see above).
        let hdr = unsafe { &*c };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure computation.
            let data_len = hdr.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            let count = data_len / std::mem::size_of::<RawFd>();
            // SAFETY: CMSG_DATA points at `count` descriptors inside the control buffer.
            let data = unsafe { libc::CMSG_DATA(c) } as *const RawFd;
            for i in 0..count {
                // SAFETY: index `i` < count is inside the data (unaligned read
                // because CMSG_DATA need not be aligned for RawFd); the kernel
                // installed each descriptor for us, so we own it.
                let fd = unsafe { std::ptr::read_unaligned(data.add(i)) };
                // SAFETY: see above: a fresh descriptor that nothing else owns.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message carried more descriptors than the protocol allows",
        ));
    }
    Ok(n)
}

/// Read one message; `Ok(None)` when the peer closed the connection cleanly.
pub fn read_message(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut fds = Vec::new();
    let mut h: Header = [0; 3];
    if !recv_exact(sock, ByteValued::as_mut_slice(&mut h), &mut fds)? {
        return Ok(None);
    }
    let [request, flags, size] = h;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("request {request} announces a {size}-byte payload (at most {MAX_PAYLOAD})"),
        ));
    }
    let mut payload = vec![0u8; size as usize];
    if size > 0 && !recv_exact(sock, &mut payload, &mut fds)? {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed between header and payload",
        ));
    }
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "request {request} carries {} descriptors (at most {MAX_FDS})",
                fds.len()
            ),
        ));
    }
    Ok(Some(Message {
        request,
        flags,
        payload,
        fds,
    }))
}

/// Write one message, its descriptors on the first byte.
pub fn write_message(sock: &UnixStream, m: &Message) -> io::Result<()> {
    let header = m.header();
    let h = ByteValued::as_slice(&header);
    let mut iov = [
        libc::iovec {
            iov_base: h.as_ptr() as *mut libc::c_void,
            iov_len: h.len(),
        },
        libc::iovec {
            iov_base: m.payload.as_ptr() as *mut libc::c_void,
            iov_len: m.payload.len(),
        },
    ];
    let raw: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmsg = [0u64; (MAX_FDS * 4 + 32) / 8];
    // SAFETY: msghdr is plain data; every pointer field is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = if m.payload.is_empty() { 1 } else { 2 };
    if !raw.is_empty() {
        let bytes = std::mem::size_of_val(raw.as_slice());
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer holds `space` bytes (MAX_FDS bounds `raw`,
        // checked when the message was read), so the first header and its
        // data fit.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), bytes);
        }
    }
    let total = h.len() + m.payload.len();
    let sent = loop {
        // SAFETY: `msg` points at `iov` and `cmsg`, alive for the call; the
        // iovecs point at `h` and `m.payload`, alive for the call.
        let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if sent < total {
        // The descriptors went with the first byte; send the rest plainly.
        let mut rest = Vec::with_capacity(total - sent);
        rest.extend_from_slice(h);
        rest.extend_from_slice(&m.payload);
        (&*sock).write_all(&rest[sent..])?;
    }
    Ok(())
}
