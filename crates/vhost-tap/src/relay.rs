//! A thin relay between the frontend and the vhost crate's request
//! dispatcher, accepting the message order QEMU really sends.
//!
//! QEMU 10 sends `SET_VRING_ENABLE` for a vhost-user net device before
//! `SET_FEATURES` whenever the backend *offers* `VHOST_USER_F_PROTOCOL_FEATURES`
//! (it looks at the offered features, not the acked ones). The vhost crate's
//! `BackendReqHandler` answers that message with
//! `InactiveFeature(PROTOCOL_FEATURES)` and the connection ends.
//!
//! The relay passes every message through unchanged (header, payload and the
//! file descriptors that ride on it), except that one case: a
//! `SET_VRING_ENABLE` that arrives before the frontend acked
//! `PROTOCOL_FEATURES` is remembered, acknowledged to the frontend if it asked
//! for a reply, and replayed to the dispatcher once `PROTOCOL_FEATURES` is
//! acked (rings then start disabled and `SET_VRING_ENABLE` is meaningful) and
//! that vring is set up: after its `SET_VRING_KICK` and the `SET_VRING_CALL`
//! that follows it (QEMU replaces an early call fd there; enabling the vring
//! before would let the worker interrupt the guest through the old one). A
//! later `SET_VRING_ENABLE` from the frontend supersedes a held one. If the
//! frontend acks features without `PROTOCOL_FEATURES`, the remembered
//! requests are dropped: rings are then enabled by `SET_FEATURES` itself.
//!
//! Replies from the dispatcher flow back unchanged. The control path carries
//! a few hundred messages per connection; the data path never crosses it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;

use log::{debug, warn};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
    VhostUserVringState,
};
use vm_memory::ByteValued;

/// A message header: request code, flags, payload size, each a `u32` in the
/// host's byte order (vhost-user uses the machine's native order).
type Header = [u32; 3];
/// The version field of the header flags (the [`VhostUserHeaderFlag::VERSION`]
/// bits): the protocol has only version 1.
const VERSION_1: u32 = 0x1;
const REPLY: u32 = VhostUserHeaderFlag::REPLY.bits();
const NEED_REPLY: u32 = VhostUserHeaderFlag::NEED_REPLY.bits();
/// Bits in feature words.
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
const REPLY_ACK: u64 = VhostUserProtocolFeatures::REPLY_ACK.bits();
/// The vring index in the u64 payload of SET_VRING_KICK/CALL (the low byte;
/// bit 8 says "no descriptor").
const VRING_INDEX_MASK: u64 = 0xff;
/// Largest payload the relay accepts (the protocol's largest is the memory
/// table: 8 regions of 32 bytes plus 8; config space messages are 4 KiB + 12).
const MAX_PAYLOAD: u32 = 64 * 1024;
/// The most descriptors one message may carry.
const MAX_FDS: usize = 32;

/// What ended a relayed connection: which side, which step, and the cause.
/// [`run`] hands it on as an `io::Error` of the cause's kind.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Duplicating a socket handle for the second direction failed.
    #[error("relay: cannot duplicate a socket: {0}")]
    CloneSocket(#[source] io::Error),
    /// The thread that carries replies back could not start.
    #[error("relay: cannot start the reply thread: {0}")]
    SpawnReplies(#[source] io::Error),
    /// Reading a request from the frontend failed (or it broke the protocol).
    #[error("relay: reading a request from the frontend: {0}")]
    ReadFrontend(#[source] io::Error),
    /// Passing a request on to the dispatcher failed.
    #[error("relay: passing a request to the dispatcher: {0}")]
    WriteDispatcher(#[source] io::Error),
    /// Reading a reply from the dispatcher failed.
    #[error("relay: reading a reply from the dispatcher: {0}")]
    ReadDispatcher(#[source] io::Error),
    /// Writing a reply (the dispatcher's or our own) to the frontend failed.
    #[error("relay: writing a reply to the frontend: {0}")]
    WriteFrontend(#[source] io::Error),
    /// The reply thread panicked.
    #[error("relay: the reply thread panicked")]
    RepliesPanicked,
}

impl From<RelayError> for io::Error {
    fn from(e: RelayError) -> io::Error {
        let kind = match &e {
            RelayError::CloneSocket(s)
            | RelayError::SpawnReplies(s)
            | RelayError::ReadFrontend(s)
            | RelayError::WriteDispatcher(s)
            | RelayError::ReadDispatcher(s)
            | RelayError::WriteFrontend(s) => s.kind(),
            RelayError::RepliesPanicked => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// One vhost-user message with its descriptors.
#[derive(Debug)]
pub struct Message {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Message {
    fn u64_payload(&self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.payload.get(..8)?.try_into().ok()?))
    }

    fn header(&self) -> Header {
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
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message carried more descriptors than the protocol allows",
        ));
    }
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

/// The relay's view of the negotiation, enough to recognise the early
/// `SET_VRING_ENABLE`.
#[derive(Debug, Default)]
pub struct Filter {
    protocol_features_acked: bool,
    reply_ack: bool,
    /// vring index → enable, as last requested before SET_FEATURES.
    early_enables: BTreeMap<u32, u32>,
    /// Held enables whose vring has had its SET_VRING_KICK since SET_FEATURES.
    kicked: BTreeSet<u32>,
}

/// The vring index in the u64 payload of SET_VRING_KICK/CALL.
fn vring_of_fd_message(m: &Message) -> Option<u32> {
    m.u64_payload().map(|v| (v & VRING_INDEX_MASK) as u32)
}

/// The `VhostUserVringState` (index, num) at the start of a payload, if it
/// is long enough.
fn vring_state(payload: &[u8]) -> Option<(u32, u32)> {
    let bytes = payload.get(..std::mem::size_of::<VhostUserVringState>())?;
    let state = *VhostUserVringState::from_slice(bytes)?;
    Some((state.index, state.num))
}

fn enable_message(index: u32, num: u32) -> Message {
    Message {
        request: FrontendReq::SET_VRING_ENABLE.into(),
        flags: VERSION_1,
        payload: VhostUserVringState::new(index, num).as_slice().to_vec(),
        fds: Vec::new(),
    }
}

/// What to do with one frontend message.
#[derive(Debug)]
pub enum Action {
    /// Pass it on to the dispatcher.
    Forward(Message),
    /// Answer the frontend directly with this reply (and forward nothing).
    Reply(Message),
    /// Forward it, then send these messages to the dispatcher (they expect no reply).
    ForwardThen(Message, Vec<Message>),
    /// Nothing to forward and no reply wanted.
    Absorb,
}

impl Filter {
    pub fn on_request(&mut self, m: Message) -> Action {
        // Codes the vhost crate does not know pass through untouched.
        let Ok(request) = FrontendReq::try_from(m.request) else {
            return Action::Forward(m);
        };
        match request {
            FrontendReq::SET_PROTOCOL_FEATURES => {
                self.reply_ack = m.u64_payload().unwrap_or(0) & REPLY_ACK != 0;
                Action::Forward(m)
            }
            FrontendReq::RESET_OWNER => {
                *self = Filter::default();
                Action::Forward(m)
            }
            FrontendReq::SET_VRING_ENABLE if !self.protocol_features_acked => {
                let Some((index, num)) = vring_state(&m.payload) else {
                    return self.superseding_enable(m);
                };
                debug!("relay: SET_VRING_ENABLE({index}, {num}) before SET_FEATURES: held until features are acked");
                self.early_enables.insert(index, num);
                if self.reply_ack && m.flags & NEED_REPLY != 0 {
                    Action::Reply(Message {
                        request: m.request,
                        flags: VERSION_1 | REPLY,
                        payload: 0u64.to_ne_bytes().to_vec(),
                        fds: Vec::new(),
                    })
                } else {
                    Action::Absorb
                }
            }
            FrontendReq::SET_FEATURES => {
                let features = m.u64_payload().unwrap_or(0);
                self.protocol_features_acked = features & PROTOCOL_FEATURES != 0;
                if !self.protocol_features_acked {
                    // Rings start enabled without PROTOCOL_FEATURES.
                    self.early_enables.clear();
                }
                self.kicked.clear();
                Action::Forward(m)
            }
            // A held enable is replayed once its vring is fully set up: after
            // its SET_VRING_KICK *and* a SET_VRING_CALL that follows it.
            // Replaying earlier would let the worker start on the vring and
            // interrupt the guest through a call fd QEMU is about to replace
            // (QEMU sends KICK, then the final CALL), losing that interrupt;
            // with EVENT_IDX the guest would then wait forever.
            FrontendReq::SET_VRING_KICK if self.protocol_features_acked => {
                if let Some(i) = vring_of_fd_message(&m) {
                    if self.early_enables.contains_key(&i) {
                        self.kicked.insert(i);
                    }
                }
                Action::Forward(m)
            }
            FrontendReq::SET_VRING_CALL if self.protocol_features_acked => {
                let Some(i) = vring_of_fd_message(&m) else {
                    return Action::Forward(m);
                };
                if !self.kicked.remove(&i) {
                    return Action::Forward(m);
                }
                match self.early_enables.remove(&i) {
                    Some(num) => {
                        debug!(
                            "relay: vring {i} set up: replaying its early SET_VRING_ENABLE({num})"
                        );
                        Action::ForwardThen(m, vec![enable_message(i, num)])
                    }
                    None => Action::Forward(m),
                }
            }
            FrontendReq::SET_VRING_ENABLE => self.superseding_enable(m),
            _ => Action::Forward(m),
        }
    }

    /// The frontend's own enable supersedes a held one.
    fn superseding_enable(&mut self, m: Message) -> Action {
        if let Some(i) = m.payload.get(0..4).and_then(|b| b.try_into().ok()) {
            let i = u32::from_ne_bytes(i);
            self.early_enables.remove(&i);
            self.kicked.remove(&i);
        }
        Action::Forward(m)
    }
}

/// Relay between `front` (the frontend) and `back` (the dispatcher) until
/// either side closes. Both sockets are shut down on return.
///
/// An error on the frontend's side (reading its requests, passing them on,
/// answering it directly) is logged here and returned as an `io::Error`
/// whose message names the side and the step ([`RelayError`]). An error on
/// the reply side only ends the relay: the dispatcher closing first is how
/// it reports a bad request, and it logged why.
pub fn run(front: UnixStream, back: UnixStream, name: &str) -> io::Result<()> {
    Ok(relay(front, back, name)?)
}

fn relay(front: UnixStream, back: UnixStream, name: &str) -> Result<(), RelayError> {
    let clone = |s: &UnixStream| s.try_clone().map_err(RelayError::CloneSocket);
    let front_w = Arc::new(Mutex::new(clone(&front)?));
    let back_r = clone(&back)?;
    let front_for_replies = front_w.clone();
    let front_shut = clone(&front)?;
    let back_shut = clone(&back)?;
    let tname = format!("{name}-replies");
    let replies = thread::Builder::new()
        .name(tname)
        .spawn(move || {
            let r = (|| -> Result<(), RelayError> {
                while let Some(m) = read_message(&back_r).map_err(RelayError::ReadDispatcher)? {
                    let sock = front_for_replies.lock().unwrap_or_else(|p| p.into_inner());
                    write_message(&sock, &m).map_err(RelayError::WriteFrontend)?;
                }
                Ok(())
            })();
            let _ = front_shut.shutdown(std::net::Shutdown::Both);
            r
        })
        .map_err(RelayError::SpawnReplies)?;

    let mut filter = Filter::default();
    let r = (|| -> Result<(), RelayError> {
        let to_back = |m: &Message| write_message(&back, m).map_err(RelayError::WriteDispatcher);
        while let Some(m) = read_message(&front).map_err(RelayError::ReadFrontend)? {
            match filter.on_request(m) {
                Action::Forward(m) => to_back(&m)?,
                Action::ForwardThen(m, then) => {
                    to_back(&m)?;
                    for t in &then {
                        to_back(t)?;
                    }
                }
                Action::Reply(reply) => {
                    let sock = front_w.lock().unwrap_or_else(|p| p.into_inner());
                    write_message(&sock, &reply).map_err(RelayError::WriteFrontend)?;
                }
                Action::Absorb => {}
            }
        }
        Ok(())
    })();
    let _ = back_shut.shutdown(std::net::Shutdown::Both);
    let _ = front.shutdown(std::net::Shutdown::Both);
    let r2 = replies.join().unwrap_or(Err(RelayError::RepliesPanicked));
    if let Err(e) = &r {
        warn!("{name}: {e}");
    }
    r.and(r2.or_else(|e| {
        // The dispatcher closing first is how it reports a bad request; it logged why.
        debug!("{name}: {e}");
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const SET_FEATURES: u32 = FrontendReq::SET_FEATURES as u32;
    const SET_PROTOCOL_FEATURES: u32 = FrontendReq::SET_PROTOCOL_FEATURES as u32;
    const SET_VRING_ENABLE: u32 = FrontendReq::SET_VRING_ENABLE as u32;
    const SET_VRING_KICK: u32 = FrontendReq::SET_VRING_KICK as u32;
    const SET_VRING_CALL: u32 = FrontendReq::SET_VRING_CALL as u32;
    const SET_MEM_TABLE: u32 = FrontendReq::SET_MEM_TABLE as u32;

    fn msg(request: u32, flags: u32, payload: Vec<u8>) -> Message {
        Message {
            request,
            flags,
            payload,
            fds: Vec::new(),
        }
    }

    fn enable(index: u32, num: u32, flags: u32) -> Message {
        let p = [index.to_ne_bytes(), num.to_ne_bytes()].concat();
        msg(SET_VRING_ENABLE, flags, p)
    }

    #[test]
    fn early_enable_is_acked_held_and_replayed_after_set_features() {
        let mut f = Filter::default();
        let pf = msg(
            SET_PROTOCOL_FEATURES,
            VERSION_1,
            REPLY_ACK.to_ne_bytes().to_vec(),
        );
        assert!(matches!(f.on_request(pf), Action::Forward(_)));
        match f.on_request(enable(0, 1, VERSION_1 | NEED_REPLY)) {
            Action::Reply(r) => {
                assert_eq!(r.request, SET_VRING_ENABLE);
                assert_eq!(r.flags, VERSION_1 | REPLY);
                assert_eq!(r.payload, 0u64.to_ne_bytes());
            }
            other => panic!("expected a reply, got {other:?}"),
        }
        assert!(matches!(
            f.on_request(enable(1, 0, VERSION_1)),
            Action::Absorb
        ));
        assert!(matches!(
            f.on_request(enable(1, 1, VERSION_1)),
            Action::Absorb
        ));
        let sf = msg(
            SET_FEATURES,
            VERSION_1,
            (PROTOCOL_FEATURES | 1 << 32).to_ne_bytes().to_vec(),
        );
        assert!(matches!(f.on_request(sf), Action::Forward(_)));
        // QEMU's order per vring: an early CALL, then KICK, then the final CALL.
        let fdmsg = |req: u32, i: u64| msg(req, VERSION_1, i.to_ne_bytes().to_vec());
        assert!(matches!(
            f.on_request(fdmsg(SET_VRING_CALL, 0)),
            Action::Forward(_)
        ));
        assert!(matches!(
            f.on_request(fdmsg(SET_VRING_KICK, 0)),
            Action::Forward(_)
        ));
        match f.on_request(fdmsg(SET_VRING_CALL, 0)) {
            Action::ForwardThen(m, replay) => {
                assert_eq!(m.request, SET_VRING_CALL);
                assert_eq!(replay.len(), 1);
                assert_eq!(replay[0].request, SET_VRING_ENABLE);
                assert_eq!(replay[0].payload, enable(0, 1, 0).payload);
                assert_eq!(
                    replay[0].flags & NEED_REPLY,
                    0,
                    "a replay must not ask for a reply"
                );
            }
            other => panic!("expected the replay after vring 0's final CALL, got {other:?}"),
        }
        assert!(matches!(
            f.on_request(fdmsg(SET_VRING_KICK, 1)),
            Action::Forward(_)
        ));
        match f.on_request(fdmsg(SET_VRING_CALL, 1)) {
            // The last early request for vring 1 (enable) wins.
            Action::ForwardThen(_, replay) => {
                assert_eq!(replay[0].payload, enable(1, 1, 0).payload)
            }
            other => panic!("expected the replay for vring 1, got {other:?}"),
        }
        // Replayed once only.
        assert!(matches!(
            f.on_request(fdmsg(SET_VRING_CALL, 1)),
            Action::Forward(_)
        ));
        // After SET_FEATURES, enables pass through.
        assert!(matches!(
            f.on_request(enable(0, 1, VERSION_1)),
            Action::Forward(_)
        ));
    }

    #[test]
    fn without_protocol_features_the_held_enables_are_dropped() {
        let mut f = Filter::default();
        assert!(matches!(
            f.on_request(enable(0, 1, VERSION_1)),
            Action::Absorb
        ));
        let sf = msg(SET_FEATURES, VERSION_1, (1u64 << 32).to_ne_bytes().to_vec());
        assert!(matches!(f.on_request(sf), Action::Forward(_)));
    }

    #[test]
    fn messages_and_descriptors_cross_a_socket_intact() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let m = Message {
            request: SET_MEM_TABLE,
            flags: VERSION_1,
            payload: vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
            fds: vec![OwnedFd::from(file)],
        };
        write_message(&a, &m).unwrap();
        let got = read_message(&b).unwrap().unwrap();
        assert_eq!(got.request, SET_MEM_TABLE);
        assert_eq!(got.payload, m.payload);
        assert_eq!(got.fds.len(), 1);
        let mut f = std::fs::File::from(got.fds.into_iter().next().unwrap());
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert!(s.contains('('));
        drop(a);
        assert!(read_message(&b).unwrap().is_none());
    }

    #[test]
    fn oversized_payload_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut h = [0u8; 12];
        h[0..4].copy_from_slice(&1u32.to_ne_bytes());
        h[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_ne_bytes());
        (&a).write_all(&h).unwrap();
        let e = read_message(&b).unwrap_err();
        assert!(e.to_string().contains("payload"));
    }

    #[test]
    fn unknown_and_short_requests_pass_through() {
        let mut f = Filter::default();
        assert!(matches!(
            f.on_request(msg(0xdead, VERSION_1, vec![1, 2, 3])),
            Action::Forward(m) if m.request == 0xdead && m.payload == [1, 2, 3]
        ));
        // Too short to name a vring and a state: not held, the dispatcher judges it.
        assert!(matches!(
            f.on_request(msg(SET_VRING_ENABLE, VERSION_1, vec![0; 4])),
            Action::Forward(_)
        ));
        assert!(f.early_enables.is_empty());
    }

    #[test]
    fn relay_error_becomes_an_io_error_of_the_same_kind() {
        let e = io::Error::from(RelayError::WriteDispatcher(io::Error::from(
            io::ErrorKind::BrokenPipe,
        )));
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(e
            .to_string()
            .contains("passing a request to the dispatcher"));
        let e = io::Error::from(RelayError::RepliesPanicked);
        assert_eq!(e.kind(), io::ErrorKind::Other);
    }

    #[test]
    fn run_relays_both_ways_and_names_the_failing_side() {
        let (front_peer, front) = UnixStream::pair().unwrap();
        let (back, back_peer) = UnixStream::pair().unwrap();
        let relay = thread::spawn(move || run(front, back, "t"));
        // A request goes through, its reply comes back.
        let get = msg(FrontendReq::GET_FEATURES.into(), VERSION_1, Vec::new());
        write_message(&front_peer, &get).unwrap();
        let got = read_message(&back_peer).unwrap().unwrap();
        assert_eq!((got.request, got.payload.len()), (get.request, 0));
        let reply = msg(get.request, VERSION_1 | REPLY, 7u64.to_ne_bytes().to_vec());
        write_message(&back_peer, &reply).unwrap();
        let got = read_message(&front_peer).unwrap().unwrap();
        assert_eq!((got.flags, got.payload), (reply.flags, reply.payload));
        // Then the frontend breaks the protocol.
        let h: Header = [get.request, VERSION_1, MAX_PAYLOAD + 1];
        (&front_peer).write_all(ByteValued::as_slice(&h)).unwrap();
        let e = relay.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string()
                .contains("reading a request from the frontend"),
            "{e}"
        );
    }
}
