//! The relay's unit tests: the filter's decisions, message framing, and a
//! relayed exchange over socket pairs.

use super::filter::*;
use super::wire::*;
use super::*;
use std::io::Read;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use vhost::vhost_user::message::FrontendReq;
use vm_memory::ByteValued;

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
fn descriptors_beyond_the_control_buffer_are_closed_not_leaked() {
    // Found by the vhost_user_messages fuzz target: a message with more
    // descriptors than the control buffer holds (36) was refused before
    // the ones the kernel had installed were taken, and those stayed open
    // in the daemon: a frontend could exhaust its descriptors.
    let name = c"vhost-tap-ctrunc-test";
    // SAFETY: a valid C string; the new descriptor is ours.
    let memfd =
        unsafe { OwnedFd::from_raw_fd(libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC)) };
    let raw = [memfd.as_raw_fd(); 40];
    let (a, b) = UnixStream::pair().unwrap();
    let mut cmsg = [0u64; 32];
    let header: Header = [1, VERSION_1, 0];
    let mut iov = libc::iovec {
        iov_base: ByteValued::as_slice(&header).as_ptr() as *mut libc::c_void,
        iov_len: 12,
    };
    // SAFETY: msghdr is plain data; every pointer field is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let bytes = std::mem::size_of_val(&raw) as u32;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as usize;
    // SAFETY: `cmsg` (256 bytes) holds the header and 40 descriptors; `msg`
    // points at `iov` and `cmsg`, alive for the sendmsg call.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
        std::ptr::copy_nonoverlapping(
            raw.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(c),
            bytes as usize,
        );
        assert_eq!(libc::sendmsg(a.as_raw_fd(), &msg, 0), 12);
    }
    drop(memfd);
    let e = read_message(&b).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let open: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|d| std::fs::read_link(d.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.contains("vhost-tap-ctrunc-test"))
        .collect();
    assert!(open.is_empty(), "left open: {open:?}");
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
fn run_relays_both_ways_and_names_the_failing_side() {
    let (front_peer, front) = UnixStream::pair().unwrap();
    let (back, back_peer) = UnixStream::pair().unwrap();
    let relay = thread::spawn(move || {
        run(
            front,
            back,
            "t",
            Limits {
                vrings: 2,
                max_ring: 256,
            },
        )
    });
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
    assert!(
        matches!(&e, RelayError::ReadFrontend(io) if io.kind() == io::ErrorKind::InvalidData),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("reading a request from the frontend"),
        "{e}"
    );
}
