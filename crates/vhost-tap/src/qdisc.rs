//! The TAP's qdiscs, read over rtnetlink: one `RTM_GETQDISC` dump, kept to
//! the TAP's own root qdisc and that root's direct children (the per-queue
//! qdiscs of `mq`/`multiq`/`mqprio`/`taprio`).
//!
//! `auto` needs to know whether a qdisc with an enqueue function sits in
//! front of the tun ring; the kernel answers that directly, so the daemon
//! neither depends on a `tc` binary in its `PATH` nor parses its output.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Why the TAP's qdiscs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum QdiscError {
    #[error("no interface {0}")]
    NoInterface(String),
    #[error("rtnetlink socket: {0}")]
    Socket(io::Error),
    #[error("rtnetlink qdisc dump: {0}")]
    Dump(io::Error),
    #[error("rtnetlink qdisc dump: the kernel answered error {0}")]
    Kernel(i32),
    #[error("rtnetlink qdisc dump: undecodable reply: {0}")]
    Decode(String),
}

/// One qdisc: its kind (`fq_codel`, `mq`, `noqueue`, ...), handle and
/// parent, and its queue statistics (a multi-queue root reports the sum of
/// its children).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// Frames the qdisc dropped (its AQM decisions and its limits).
    pub drops: u64,
    /// Frames waiting in it now.
    pub qlen: u64,
    /// Bytes waiting in it now.
    pub backlog_bytes: u64,
}

/// A TAP's root qdisc and its direct children.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Qdiscs {
    /// `None`: the kernel listed no root qdisc for the interface.
    pub root: Option<Qdisc>,
    /// Qdiscs whose parent is a class of the root (for `mq`: one per TX queue).
    pub children: Vec<Qdisc>,
}

/// `TC_H_ROOT`.
const ROOT: u32 = 0xffff_ffff;
/// How long a dump may take before the query gives up (it is answered
/// synchronously by the kernel; this only bounds a pathological case).
const TIMEOUT: libc::timeval = libc::timeval {
    tv_sec: 2,
    tv_usec: 0,
};

fn handle_u32(h: TcHandle) -> u32 {
    (u32::from(h.major) << 16) | u32::from(h.minor)
}

impl Qdiscs {
    /// Keep, from one dump, the qdiscs of interface `ifindex` that matter:
    /// the root and every qdisc hanging directly below it.
    pub fn select(all: &[(i32, Qdisc)], ifindex: i32) -> Qdiscs {
        let mine = all.iter().filter(|(i, _)| *i == ifindex).map(|(_, q)| q);
        let root = mine.clone().find(|q| q.parent == ROOT).cloned();
        let children = match &root {
            Some(r) => mine
                .filter(|q| q.parent != ROOT && q.parent >> 16 == r.handle >> 16)
                // ingress/clsact sit at ffff:fff1, never below a root's class.
                .filter(|q| q.parent & 0xffff != 0)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Qdiscs { root, children }
    }

    /// The qdiscs of the interface `name` (one dump; for many interfaces,
    /// [`dump`] once and [`Qdiscs::select`] each).
    pub fn of(name: &str) -> Result<Qdiscs, QdiscError> {
        let ifindex = ifindex(name)?;
        Ok(Qdiscs::select(&dump()?, ifindex))
    }
}

/// The interface index of `name`.
pub fn ifindex(name: &str) -> Result<i32, QdiscError> {
    let c = std::ffi::CString::new(name).map_err(|_| QdiscError::NoInterface(name.into()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return Err(QdiscError::NoInterface(name.into()));
    }
    Ok(ifindex as i32)
}

/// Every qdisc the kernel lists (interface index, qdisc).
pub fn dump() -> Result<Vec<(i32, Qdisc)>, QdiscError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(QdiscError::Socket)?;
    socket.bind_auto().map_err(QdiscError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(QdiscError::Socket)?;
    // SAFETY: setsockopt on the socket's own fd with a valid timeval of the
    // size passed.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&TIMEOUT as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(QdiscError::Socket(io::Error::last_os_error()));
    }

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default())),
    );
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0).map_err(QdiscError::Dump)?;

    let mut out = Vec::new();
    // The kernel fills each datagram up to its own buffer size (≤ 32 KiB).
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = recv(&socket, &mut rx)?;
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                .map_err(|e| QdiscError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            if len == 0 {
                return Err(QdiscError::Decode("zero-length message".into()));
            }
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) => return Err(QdiscError::Kernel(code.get())),
                    None => return Ok(out),
                },
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(tc)) => {
                    let mut q = Qdisc {
                        handle: handle_u32(tc.header.handle),
                        parent: handle_u32(tc.header.parent),
                        ..Qdisc::default()
                    };
                    for a in &tc.attributes {
                        match a {
                            TcAttribute::Kind(k) => q.kind = k.clone(),
                            TcAttribute::Stats(s) => {
                                q.drops = s.drops.into();
                                q.qlen = s.qlen.into();
                                q.backlog_bytes = s.backlog.into();
                            }
                            _ => {}
                        }
                    }
                    out.push((tc.header.index, q));
                }
                _ => {}
            }
            // Messages are 4-byte aligned (NLMSG_ALIGN).
            off += (len + 3) & !3;
        }
    }
}

/// One datagram into `buf`; a datagram larger than `buf` is an error, not a truncation.
fn recv(socket: &Socket, buf: &mut [u8]) -> Result<usize, QdiscError> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
    let n = unsafe {
        libc::recv(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        return Err(QdiscError::Dump(io::Error::last_os_error()));
    }
    let n = n as usize;
    if n > buf.len() {
        return Err(QdiscError::Decode(format!(
            "a {n}-byte datagram does not fit the {}-byte buffer",
            buf.len()
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(kind: &str, handle: u32, parent: u32) -> Qdisc {
        Qdisc {
            kind: kind.into(),
            handle,
            parent,
            ..Qdisc::default()
        }
    }

    #[test]
    fn select_keeps_the_root_and_its_children_of_one_interface() {
        let all = vec![
            (1, q("noqueue", 0, ROOT)),
            (7, q("mq", 0, ROOT)),
            (7, q("fq_codel", 0, 0x0000_0001)),
            (7, q("noqueue", 0, 0x0000_0002)),
            (7, q("clsact", 0xffff_0000, 0xffff_fff1)),
            (8, q("pfifo_fast", 0, 0x0000_0001)),
        ];
        let s = Qdiscs::select(&all, 7);
        assert_eq!(s.root, Some(q("mq", 0, ROOT)));
        assert_eq!(
            s.children,
            vec![q("fq_codel", 0, 1), q("noqueue", 0, 2)],
            "the clsact qdisc and the other interface's qdiscs are not children"
        );
        assert_eq!(Qdiscs::select(&all, 9), Qdiscs::default());
    }

    #[test]
    fn select_follows_a_non_zero_root_handle() {
        let all = vec![
            (3, q("mq", 0x8001_0000, ROOT)),
            (3, q("fq_codel", 0x8002_0000, 0x8001_0001)),
            (3, q("pfifo", 0x0010_0000, 0x0005_0001)),
        ];
        let s = Qdiscs::select(&all, 3);
        assert_eq!(s.children, vec![q("fq_codel", 0x8002_0000, 0x8001_0001)]);
    }
}
