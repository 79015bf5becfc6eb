//! The vhost-user control path in front of the dispatcher: message framing
//! with `SCM_RIGHTS` descriptors (`relay/wire.rs`), the refusals
//! (`relay/check.rs`) and the held early `SET_VRING_ENABLE`
//! (`relay/filter.rs`), run whole through `relay::run` over socket pairs.
//!
//! The real dispatcher (the vhost crate with our `NetBackend`) needs a
//! `Device`, which owns a real TAP; a fuzz run has none (no privileges, and
//! a TAP per input would be slow). So the dispatcher's side is a stand-in
//! that reads what the relay passes on, records it, and acknowledges
//! messages that ask for a reply. What the vhost crate then does with them
//! is the vhost crate's (and the real-QEMU tests').
//!
//! The input is a sequence of messages: request codes (mostly known ones,
//! with payloads shaped for them: vring states, fd indices with or without
//! NOFD, feature words, memory tables), flags, a size field that may lie,
//! and descriptors the target creates: eventfds, memfds of chosen sizes,
//! pipes, sockets, /dev/null, up to 40 on one message.
//!
//! Checked:
//! - the relay ends (the frontend closes or is refused) and no descriptor
//!   is left open in the process afterwards;
//! - nothing reaches the dispatcher that `docs/security.md` says is
//!   refused (checked by a separate statement of those rules, on what the
//!   dispatcher receives): ring and memory requests before SET_OWNER, bad
//!   ring sizes or indices, malformed memory tables or regions past their
//!   file, kick/call/err descriptors that are not eventfds;
//! - a well-formed SET_VRING_ENABLE reaches the dispatcher only while
//!   PROTOCOL_FEATURES is acked;
//! - with honest framing: the dispatcher gets the frontend's messages
//!   unchanged and in order (enables aside), all of them unless one was
//!   refused, and a refusal is one of those rules, not a false alarm;
//! - every reply the frontend gets is marked as a reply.

#![no_main]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;

use libfuzzer_sys::fuzz_target;
use vhost_tap::relay::{self, read_message, write_message, Limits, Message, RelayError};
use vhost_tap_fuzz::input::Input;

// Request codes, from the vhost-user specification.
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const RESET_OWNER: u32 = 4;
const SET_MEM_TABLE: u32 = 5;
const SET_LOG_BASE: u32 = 6;
const SET_LOG_FD: u32 = 7;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const SET_VRING_ERR: u32 = 14;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const SET_VRING_ENABLE: u32 = 18;
const GET_CONFIG: u32 = 24;
const SET_CONFIG: u32 = 25;
const ADD_MEM_REG: u32 = 37;
const REM_MEM_REG: u32 = 38;

const CODES: [u32; 22] = [
    GET_FEATURES,
    SET_FEATURES,
    SET_OWNER,
    RESET_OWNER,
    SET_MEM_TABLE,
    SET_LOG_BASE,
    SET_LOG_FD,
    SET_VRING_NUM,
    SET_VRING_ADDR,
    SET_VRING_BASE,
    GET_VRING_BASE,
    SET_VRING_KICK,
    SET_VRING_CALL,
    SET_VRING_ERR,
    GET_PROTOCOL_FEATURES,
    SET_PROTOCOL_FEATURES,
    GET_QUEUE_NUM,
    SET_VRING_ENABLE,
    GET_CONFIG,
    SET_CONFIG,
    ADD_MEM_REG,
    REM_MEM_REG,
];

/// Requests that need an owner first.
const NEED_OWNER: [u32; 13] = [
    SET_FEATURES,
    SET_MEM_TABLE,
    ADD_MEM_REG,
    REM_MEM_REG,
    SET_LOG_BASE,
    SET_LOG_FD,
    SET_VRING_NUM,
    SET_VRING_ADDR,
    SET_VRING_BASE,
    GET_VRING_BASE,
    SET_VRING_KICK,
    SET_VRING_CALL,
    SET_VRING_ERR,
];

const VERSION_1: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const REPLY_ACK: u64 = 1 << 3;
const VRING_NOFD: u64 = 0x100;
const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_FDS: usize = 32;
const MAX_REGIONS: usize = 8;

/// What a descriptor is, as far as the rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FdKind {
    EventFd,
    /// A regular file (memfd) of this size.
    File(u64),
    Other,
}

fn describe(fd: &OwnedFd) -> FdKind {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if link == "anon_inode:[eventfd]" {
        return FdKind::EventFd;
    }
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open; `st` is a valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0
        && st.st_mode & libc::S_IFMT == libc::S_IFREG
    {
        return FdKind::File(st.st_size as u64);
    }
    FdKind::Other
}

fn memfd(size: u64) -> OwnedFd {
    // SAFETY: a valid C string; the new descriptor is ours.
    let fd = unsafe { libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: just created, owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("memfd size");
    f.into()
}

/// A descriptor of the kind the input picks.
fn make_fd(i: &mut Input) -> OwnedFd {
    match i.u8() % 6 {
        0 | 1 => vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC)
            .map(|e| {
                // SAFETY: dup of a live eventfd; the new descriptor is ours.
                unsafe { OwnedFd::from_raw_fd(libc::dup(e.as_raw_fd())) }
            })
            .expect("eventfd"),
        2 => memfd(u64::from(i.u16()) * 0x100),
        3 => std::io::pipe().expect("pipe").0.into(),
        4 => UnixStream::pair().expect("socketpair").0.into(),
        _ => File::open("/dev/null").expect("/dev/null").into(),
    }
}

/// One message as the frontend sends it.
struct Sent {
    request: u32,
    flags: u32,
    /// The header's size field (may differ from the payload's length).
    size: u32,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
    kinds: Vec<FdKind>,
}

fn u64_payload(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

fn state(i: &mut Input) -> Vec<u8> {
    let index = u32::from(i.u8() % 10);
    let num = match i.u8() % 4 {
        0 => i.u32(),
        1 => 0,
        _ => 1 << (i.u8() % 16),
    };
    [index.to_ne_bytes(), num.to_ne_bytes()].concat()
}

/// A memory table and its descriptors (memfds, some too small).
fn mem_table(i: &mut Input) -> (Vec<u8>, Vec<OwnedFd>) {
    let n = match i.u8() % 8 {
        0 => i.below(12),
        _ => 1 + i.below(4),
    };
    let mut p = (n as u32).to_ne_bytes().to_vec();
    p.extend_from_slice(&0u32.to_ne_bytes());
    let mut fds = Vec::new();
    for k in 0..n as u64 {
        let raw = i.u8();
        let size = if raw & 1 != 0 {
            i.u64()
        } else {
            0x1000 * (1 + u64::from(i.u8() % 16))
        };
        let gpa = if raw & 2 != 0 { i.u64() } else { k * 0x10_0000 };
        let ua = if raw & 4 != 0 {
            i.u64()
        } else {
            0x7f00_0000_0000 + k * 0x10_0000
        };
        let off = if raw & 8 != 0 { i.u64() } else { 0 };
        for v in [gpa, size, ua, off] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
        let file = if raw & 16 != 0 {
            u64::from(i.u32())
        } else {
            off.wrapping_add(size)
        };
        fds.push(memfd(file.min(1 << 40)));
    }
    if i.u8().is_multiple_of(8) {
        fds.push(make_fd(i));
    }
    (p, fds)
}

fn message(i: &mut Input) -> Sent {
    let c = i.u8();
    let request = if c == 0xff {
        i.u32()
    } else {
        CODES[usize::from(c) % CODES.len()]
    };
    let f = i.u8();
    let flags = match f % 8 {
        0 => i.u32(),
        1 | 2 => VERSION_1 | NEED_REPLY,
        _ => VERSION_1,
    };
    let (payload, mut fds) = match request {
        SET_VRING_NUM | SET_VRING_BASE | SET_VRING_ENABLE | GET_VRING_BASE => {
            (state(i), Vec::new())
        }
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
            let b = i.u8();
            let mut v = u64::from(b % 10);
            if b & 0x80 != 0 {
                v |= VRING_NOFD;
            }
            if b & 0x40 != 0 {
                v |= i.u64() & !0xff;
            }
            (u64_payload(v), Vec::new())
        }
        SET_FEATURES => {
            let v = if i.bool() {
                PROTOCOL_FEATURES | 1 << 32
            } else {
                i.u64()
            };
            (u64_payload(v), Vec::new())
        }
        SET_PROTOCOL_FEATURES => {
            let v = if i.bool() { REPLY_ACK | 0x2 } else { i.u64() };
            (u64_payload(v), Vec::new())
        }
        SET_MEM_TABLE => mem_table(i),
        _ => (i.blob(64).to_vec(), Vec::new()),
    };
    // Descriptors: mostly what the request carries, sometimes more.
    let d = i.u8();
    let extra = match d {
        // Past the relay's control buffer (36 descriptors) and past the limit.
        0xff => MAX_FDS + 8,
        0xfe => MAX_FDS + 1,
        0xfd => MAX_FDS,
        _ if d % 4 == 3 => 1 + usize::from(d >> 6),
        _ => 0,
    };
    for _ in 0..extra {
        fds.push(make_fd(i));
    }
    if matches!(request, SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR) && d % 4 != 3 && d < 0xfd
    {
        fds.push(make_fd(i));
    }
    let mut payload = payload;
    if f & 0x80 != 0 {
        // A payload truncated or padded under an honest size.
        payload.resize(i.below(80), 0xa5);
    }
    let size = if f & 0x40 != 0 {
        i.u32() % (MAX_PAYLOAD as u32 + 16)
    } else {
        payload.len() as u32
    };
    let kinds = fds.iter().map(describe).collect();
    Sent {
        request,
        flags,
        size,
        payload,
        fds,
        kinds,
    }
}

/// The frontend's bytes for one message, its descriptors on the first one.
fn send(sock: &UnixStream, m: &Sent) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(12 + m.payload.len());
    for v in [m.request, m.flags, m.size] {
        bytes.extend_from_slice(&v.to_ne_bytes());
    }
    bytes.extend_from_slice(&m.payload);
    let raw: Vec<i32> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmsg = vec![0u64; 64];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; every pointer field is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        let n = std::mem::size_of_val(raw.as_slice());
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(n as u32) } as usize;
        assert!(space <= cmsg.len() * 8);
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer holds `space` bytes, room for the header and data.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(n as u32) as usize;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), n);
        }
    }
    // SAFETY: `msg` points at `iov` and `cmsg`, alive for the call.
    let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    (&*sock).write_all(&bytes[r as usize..])
}

/// What the dispatcher received: a message and its descriptors' kinds.
struct Got {
    request: u32,
    flags: u32,
    payload: Vec<u8>,
    kinds: Vec<FdKind>,
}

/// The rules of `docs/security.md`, stated apart from `relay/check.rs`:
/// `Err` says which one a message breaks.
struct Rules {
    owner: bool,
    vrings: usize,
    max_ring: u16,
}

impl Rules {
    fn check(
        &mut self,
        request: u32,
        payload: &[u8],
        kinds: &[FdKind],
    ) -> Result<(), &'static str> {
        if kinds.len() > MAX_FDS {
            return Err("too many descriptors");
        }
        match request {
            SET_OWNER => self.owner = true,
            RESET_OWNER => self.owner = false,
            r if NEED_OWNER.contains(&r) && !self.owner => return Err("before SET_OWNER"),
            _ => {}
        }
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(
                payload.get(at..at + 4)?.try_into().ok()?,
            ))
        };
        let qword = |at: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(
                payload.get(at..at + 8)?.try_into().ok()?,
            ))
        };
        match request {
            SET_VRING_NUM => {
                let (index, num) = word(0).zip(word(4)).ok_or("short vring state")?;
                if index as usize >= self.vrings {
                    return Err("no such vring");
                }
                if !num.is_power_of_two() || num > u32::from(self.max_ring) {
                    return Err("bad ring size");
                }
            }
            SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
                let v = qword(0).ok_or("short vring fd payload")?;
                if v & VRING_NOFD == 0 && kinds != [FdKind::EventFd] {
                    return Err("not one eventfd");
                }
            }
            SET_MEM_TABLE => {
                let n = word(0).ok_or("short memory table")? as usize;
                if n == 0 || n > MAX_REGIONS {
                    return Err("region count");
                }
                if payload.len() != 8 + 32 * n || kinds.len() != n {
                    return Err("payload or descriptor count");
                }
                let mut regions = Vec::new();
                for (k, kind) in kinds.iter().enumerate() {
                    let at = 8 + 32 * k;
                    let (gpa, size, ua, off) = (
                        qword(at).unwrap(),
                        qword(at + 8).unwrap(),
                        qword(at + 16).unwrap(),
                        qword(at + 24).unwrap(),
                    );
                    if size == 0 {
                        return Err("empty region");
                    }
                    let ends = (
                        gpa.checked_add(size),
                        ua.checked_add(size),
                        off.checked_add(size),
                    );
                    let (Some(_), Some(_), Some(end_in_file)) = ends else {
                        return Err("region wraps");
                    };
                    match kind {
                        FdKind::File(len) if end_in_file <= *len => {}
                        FdKind::File(_) => return Err("region past the end of its file"),
                        _ => return Err("region not backed by a regular file"),
                    }
                    regions.push((gpa, ua, size));
                }
                for (k, a) in regions.iter().enumerate() {
                    for b in &regions[k + 1..] {
                        if a.0 < b.0 + b.2 && b.0 < a.0 + a.2 {
                            return Err("regions overlap in guest memory");
                        }
                        if a.1 < b.1 + b.2 && b.1 < a.1 + a.2 {
                            return Err("regions overlap in the frontend");
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let before = open_fds();
    {
        run(data);
    }
    assert_eq!(
        open_fds(),
        before,
        "descriptors left open after the connection"
    );
});

fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let limits = Limits {
        vrings: 2 * (1 + i.below(4)),
        max_ring: 1 << (i.u8() % 16),
    };
    let mut msgs = Vec::new();
    while !i.is_empty() && msgs.len() < 24 {
        msgs.push(message(&mut i));
    }
    let honest = msgs
        .iter()
        .all(|m| m.size as usize == m.payload.len() && m.fds.len() <= MAX_FDS);
    let expected: Vec<(u32, u32, Vec<u8>, Vec<FdKind>)> = msgs
        .iter()
        .map(|m| (m.request, m.flags, m.payload.clone(), m.kinds.clone()))
        .collect();

    let (front, front_peer) = UnixStream::pair().unwrap();
    let (back, back_peer) = UnixStream::pair().unwrap();
    let relay = thread::spawn(move || relay::run(front_peer, back_peer, "fuzz", limits));
    let dispatcher = thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(Some(m)) = read_message(&back) {
            let kinds = m.fds.iter().map(describe).collect();
            if m.flags & NEED_REPLY != 0 {
                let ack = Message {
                    request: m.request,
                    flags: VERSION_1 | REPLY,
                    payload: 0u64.to_ne_bytes().to_vec(),
                    fds: Vec::new(),
                };
                let _ = write_message(&back, &ack);
            }
            got.push(Got {
                request: m.request,
                flags: m.flags,
                payload: m.payload,
                kinds,
            });
        }
        got
    });
    let writer_sock = front.try_clone().unwrap();
    let writer = thread::spawn(move || {
        for m in &msgs {
            if send(&writer_sock, m).is_err() {
                break;
            }
        }
        let _ = writer_sock.shutdown(std::net::Shutdown::Write);
        // The descriptors are closed here, once sent.
    });
    let mut replies = 0;
    while let Ok(Some(r)) = read_message(&front) {
        assert_ne!(r.flags & REPLY, 0, "a reply to the frontend without REPLY");
        replies += 1;
    }
    writer.join().unwrap();
    let result = relay.join().expect("the relay panicked");
    let got = dispatcher.join().unwrap();
    drop(front);
    if std::env::var_os("VHOST_TAP_FUZZ_DEBUG").is_some() {
        let codes: Vec<u32> = got.iter().map(|g| g.request).collect();
        eprintln!("sent {} (honest: {honest}), dispatcher got {codes:?}, {replies} replies, relay: {result:?}", expected.len());
    }

    // Nothing the rules refuse reached the dispatcher, and no enable
    // before PROTOCOL_FEATURES.
    let mut rules = Rules {
        owner: false,
        vrings: limits.vrings,
        max_ring: limits.max_ring,
    };
    let mut acked = false;
    for (n, g) in got.iter().enumerate() {
        if let Err(why) = rules.check(g.request, &g.payload, &g.kinds) {
            panic!(
                "message {n} (request {}) reached the dispatcher: {why}",
                g.request
            );
        }
        match g.request {
            SET_FEATURES => {
                let v = g
                    .payload
                    .get(..8)
                    .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap()));
                acked = v & PROTOCOL_FEATURES != 0;
            }
            RESET_OWNER => acked = false,
            SET_VRING_ENABLE if g.payload.len() >= 8 => {
                assert!(
                    acked,
                    "SET_VRING_ENABLE reached the dispatcher before PROTOCOL_FEATURES"
                );
            }
            _ => {}
        }
    }

    if !honest {
        return;
    }
    // Honest framing: the frontend's messages, in order (enables aside).
    let fwd: Vec<&Got> = got
        .iter()
        .filter(|g| g.request != SET_VRING_ENABLE)
        .collect();
    let sent: Vec<&(u32, u32, Vec<u8>, Vec<FdKind>)> = expected
        .iter()
        .filter(|e| e.0 != SET_VRING_ENABLE)
        .collect();
    assert!(fwd.len() <= sent.len());
    for (n, (g, e)) in fwd.iter().zip(&sent).enumerate() {
        assert_eq!(
            (g.request, g.flags, &g.payload, &g.kinds),
            (e.0, e.1, &e.2, &e.3),
            "message {n} changed on its way"
        );
    }
    match result {
        Ok(()) => assert_eq!(fwd.len(), sent.len(), "messages lost without a refusal"),
        Err(RelayError::Refused(why)) => {
            // The first message not passed on broke a rule.
            let mut rules = Rules {
                owner: false,
                vrings: limits.vrings,
                max_ring: limits.max_ring,
            };
            let mut k = 0;
            let mut broke = None;
            for e in &expected {
                let r = rules.check(e.0, &e.2, &e.3);
                if e.0 == SET_VRING_ENABLE {
                    continue;
                }
                if k == fwd.len() {
                    broke = Some(r);
                    break;
                }
                k += 1;
            }
            match broke {
                Some(Err(_)) => {}
                other => panic!("refused ({why}) a message the rules allow: {other:?}"),
            }
        }
        Err(e) => panic!("honest framing, yet the relay failed: {e}"),
    }
}
