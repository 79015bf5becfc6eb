//! A raw vhost-user backend for tests: parses message headers itself (so it
//! accepts QEMU 10's order, which vhost 0.18's `BackendReqHandler` rejects),
//! records every (request, flags, payload), answers GET_* with plausible
//! values and acks NEED_REPLY requests. It maps the memfd it receives and
//! can play a minimal device on the rings (`Device`).

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use vu_driver::features::*;
use vu_driver::RawDesc;

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const GET_QUEUE_NUM: u32 = 17;
pub const SET_VRING_ENABLE: u32 = 18;
pub const GET_CONFIG: u32 = 24;

pub const PROTO_MQ: u64 = 1 << 0;
pub const PROTO_LOG_SHMFD: u64 = 1 << 1;
pub const PROTO_REPLY_ACK: u64 = 1 << 3;
pub const PROTO_CONFIG: u64 = 1 << 9;

pub const NEED_REPLY: u32 = 0x8;

#[derive(Debug, Clone)]
pub struct Msg {
    pub req: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub has_fd: bool,
}

impl Msg {
    pub fn u32_at(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.payload[o..o + 4].try_into().unwrap())
    }
    pub fn u64_at(&self, o: usize) -> u64 {
        u64::from_le_bytes(self.payload[o..o + 8].try_into().unwrap())
    }
}

#[derive(Default)]
pub struct State {
    pub msgs: Vec<Msg>,
    pub mem: Option<GuestMemoryMmap>,
    pub mem_region: Option<(u64, u64)>,
    /// Frontend virtual address of the region (SET_MEM_TABLE userspace_addr).
    pub user_addr: u64,
    /// vring index -> (desc, used, avail)
    pub addrs: Vec<Option<(u64, u64, u64)>>,
    pub num: Vec<u16>,
    pub kick: Vec<Option<File>>,
    pub call: Vec<Option<File>>,
}

pub struct BackendSpec {
    pub features: u64,
    pub protocol: u64,
    pub queue_num: u64,
    pub config: Vec<u8>,
}

impl Default for BackendSpec {
    fn default() -> Self {
        BackendSpec {
            features: bit(VIRTIO_F_VERSION_1)
                | bit(VHOST_USER_F_PROTOCOL_FEATURES)
                | bit(VIRTIO_NET_F_MAC)
                | bit(VIRTIO_NET_F_MQ)
                | bit(VIRTIO_NET_F_STATUS)
                | bit(VIRTIO_NET_F_MTU)
                | bit(VIRTIO_NET_F_MRG_RXBUF)
                | bit(VIRTIO_RING_F_EVENT_IDX)
                | bit(VIRTIO_RING_F_INDIRECT_DESC)
                | bit(VIRTIO_NET_F_CSUM)
                | bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_HOST_TSO4)
                | bit(VIRTIO_NET_F_CTRL_VQ),
            protocol: PROTO_MQ | PROTO_REPLY_ACK | PROTO_CONFIG | PROTO_LOG_SHMFD,
            queue_num: 8,
            // mac 52:54:00:12:34:56, status 1, pairs 4, mtu 1500
            config: vec![0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 4, 0, 0xdc, 0x05],
        }
    }
}

pub struct RawBackend {
    pub path: PathBuf,
    pub state: Arc<Mutex<State>>,
    pub thread: Option<JoinHandle<()>>,
}

/// A socket path unique to this process and call.
pub fn sock_path(tag: &str) -> PathBuf {
    let n = testkit::unique();
    std::env::temp_dir().join(format!("vu-driver-{tag}-{}-{n}.sock", std::process::id()))
}

impl RawBackend {
    pub fn start(spec: BackendSpec) -> RawBackend {
        let path = sock_path("raw");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve(stream, spec, st);
        });
        RawBackend {
            path,
            state,
            thread: Some(thread),
        }
    }

    pub fn msgs(&self) -> Vec<Msg> {
        self.state.lock().unwrap().msgs.clone()
    }

    pub fn reqs(&self) -> Vec<u32> {
        self.msgs().iter().map(|m| m.req).collect()
    }

    pub fn device(&self) -> Device {
        Device {
            state: self.state.clone(),
        }
    }

    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn reply(stream: &mut UnixStream, req: u32, body: &[u8]) {
    let mut m = Vec::with_capacity(12 + body.len());
    m.extend_from_slice(&req.to_le_bytes());
    m.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes());
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    stream.write_all(&m).unwrap();
}

fn serve(mut stream: UnixStream, spec: BackendSpec, st: Arc<Mutex<State>>) {
    loop {
        let mut hdr = [0u8; 12];
        let (n, file) = match stream.recv_with_fd(&mut hdr) {
            Ok(r) => r,
            Err(_) => return,
        };
        if n == 0 {
            return; // frontend closed
        }
        if n < 12 {
            stream.read_exact(&mut hdr[n..]).unwrap();
        }
        let w = |o: usize| u32::from_le_bytes(hdr[o..o + 4].try_into().unwrap());
        let (req, flags, size) = (w(0), w(4), w(8));
        let mut payload = vec![0u8; size as usize];
        stream.read_exact(&mut payload).unwrap();
        let msg = Msg {
            req,
            flags,
            payload,
            has_fd: file.is_some(),
        };
        let mut s = st.lock().unwrap();
        s.msgs.push(msg.clone());
        let need_reply = flags & NEED_REPLY != 0;
        match req {
            GET_FEATURES => reply(&mut stream, req, &spec.features.to_le_bytes()),
            GET_PROTOCOL_FEATURES => reply(&mut stream, req, &spec.protocol.to_le_bytes()),
            GET_QUEUE_NUM => reply(&mut stream, req, &spec.queue_num.to_le_bytes()),
            GET_VRING_BASE => {
                let mut b = msg.payload[0..4].to_vec();
                b.extend_from_slice(&0u32.to_le_bytes());
                reply(&mut stream, req, &b);
            }
            GET_CONFIG => {
                let (off, sz) = (msg.u32_at(0) as usize, msg.u32_at(4) as usize);
                let mut b = msg.payload[0..12].to_vec();
                let mut cfg = spec.config.clone();
                cfg.resize(off + sz, 0);
                b.extend_from_slice(&cfg[off..off + sz]);
                reply(&mut stream, req, &b);
            }
            _ => {
                match req {
                    SET_MEM_TABLE => {
                        assert_eq!(msg.u32_at(0), 1, "one region");
                        let (gpa, size, off) = (msg.u64_at(8), msg.u64_at(16), msg.u64_at(32));
                        let f = file.expect("SET_MEM_TABLE carries the memfd");
                        let region = GuestRegionMmap::from_range(
                            GuestAddress(gpa),
                            size as usize,
                            Some(FileOffset::new(f, off)),
                        )
                        .unwrap();
                        s.mem = Some(GuestMemoryMmap::from_regions(vec![region]).unwrap());
                        s.mem_region = Some((gpa, size));
                        s.user_addr = msg.u64_at(24);
                    }
                    SET_VRING_NUM => {
                        let i = msg.u32_at(0) as usize;
                        grow(&mut s, i);
                        s.num[i] = msg.u32_at(4) as u16;
                    }
                    SET_VRING_ADDR => {
                        let i = msg.u32_at(0) as usize;
                        grow(&mut s, i);
                        // Frontend virtual addresses → guest physical, through the memory table.
                        let (gpa, _) = s.mem_region.expect("SET_MEM_TABLE before SET_VRING_ADDR");
                        let to_gpa = |va: u64| va - s.user_addr + gpa;
                        s.addrs[i] = Some((
                            to_gpa(msg.u64_at(8)),
                            to_gpa(msg.u64_at(16)),
                            to_gpa(msg.u64_at(24)),
                        ));
                    }
                    SET_VRING_KICK | SET_VRING_CALL => {
                        let i = (msg.u64_at(0) & 0xff) as usize;
                        grow(&mut s, i);
                        if req == SET_VRING_KICK {
                            s.kick[i] = file;
                        } else {
                            s.call[i] = file;
                        }
                    }
                    _ => {}
                }
                if need_reply {
                    reply(&mut stream, req, &0u64.to_le_bytes());
                }
            }
        }
    }
}

fn grow(s: &mut State, i: usize) {
    if s.addrs.len() <= i {
        s.addrs.resize(i + 1, None);
        s.num.resize(i + 1, 0);
        s.kick.resize_with(i + 1, || None);
        s.call.resize_with(i + 1, || None);
    }
}

/// A minimal device on the rings, working on the backend's own mapping of
/// the memfd (not the driver's).
pub struct Device {
    state: Arc<Mutex<State>>,
}

pub struct Ring {
    pub n: u16,
    pub desc: u64,
    pub used: u64,
    pub avail: u64,
}

impl Device {
    fn with<R>(&self, f: impl FnOnce(&GuestMemoryMmap, &State) -> R) -> R {
        let s = self.state.lock().unwrap();
        f(s.mem.as_ref().expect("memory table received"), &s)
    }

    pub fn ring(&self, v: usize) -> Ring {
        let s = self.state.lock().unwrap();
        let (desc, used, avail) = s.addrs[v].unwrap();
        Ring {
            n: s.num[v],
            desc,
            used,
            avail,
        }
    }

    pub fn avail_idx(&self, v: usize) -> u16 {
        let r = self.ring(v);
        self.with(|m, _| {
            m.load(GuestAddress(r.avail + 2), Ordering::Acquire)
                .unwrap()
        })
    }

    pub fn avail_flags(&self, v: usize) -> u16 {
        let r = self.ring(v);
        self.with(|m, _| m.read_obj(GuestAddress(r.avail)).unwrap())
    }

    pub fn avail_entry(&self, v: usize, i: u16) -> u16 {
        let r = self.ring(v);
        let a = r.avail + 4 + 2 * u64::from(i % r.n);
        self.with(|m, _| m.read_obj(GuestAddress(a)).unwrap())
    }

    pub fn used_event(&self, v: usize) -> u16 {
        let r = self.ring(v);
        let a = r.avail + 4 + 2 * u64::from(r.n);
        self.with(|m, _| m.load(GuestAddress(a), Ordering::Acquire).unwrap())
    }

    pub fn set_avail_event(&self, v: usize, val: u16) {
        let r = self.ring(v);
        let a = r.used + 4 + 8 * u64::from(r.n);
        self.with(|m, _| m.store(val, GuestAddress(a), Ordering::SeqCst).unwrap());
    }

    pub fn desc_at(&self, table: u64, i: u16) -> RawDesc {
        let a = table + 16 * u64::from(i);
        self.with(|m, _| RawDesc {
            addr: m.read_obj(GuestAddress(a)).unwrap(),
            len: m.read_obj(GuestAddress(a + 8)).unwrap(),
            flags: m.read_obj(GuestAddress(a + 12)).unwrap(),
            next: m.read_obj(GuestAddress(a + 14)).unwrap(),
        })
    }

    pub fn desc(&self, v: usize, i: u16) -> RawDesc {
        self.desc_at(self.ring(v).desc, i)
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.with(|m, _| m.read_slice(&mut b, GuestAddress(addr)).unwrap());
        b
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.with(|m, _| m.write_slice(data, GuestAddress(addr)).unwrap());
    }

    pub fn used_idx(&self, v: usize) -> u16 {
        let r = self.ring(v);
        self.with(|m, _| m.load(GuestAddress(r.used + 2), Ordering::Acquire).unwrap())
    }

    /// Appends used elements and publishes used.idx once (Release).
    pub fn push_used(&self, v: usize, elems: &[(u32, u32)]) {
        let r = self.ring(v);
        let mut idx = self.used_idx(v);
        self.with(|m, _| {
            for &(id, len) in elems {
                let a = r.used + 4 + 8 * u64::from(idx % r.n);
                m.write_obj(id, GuestAddress(a)).unwrap();
                m.write_obj(len, GuestAddress(a + 4)).unwrap();
                idx = idx.wrapping_add(1);
            }
            m.store(idx, GuestAddress(r.used + 2), Ordering::Release)
                .unwrap();
        });
    }

    pub fn signal_call(&self, v: usize) {
        let s = self.state.lock().unwrap();
        let mut f = s.call[v].as_ref().expect("call fd");
        f.write_all(&1u64.to_le_bytes()).unwrap();
    }

    /// Reads and clears the kick eventfd counter (0 if never kicked since).
    pub fn take_kicks(&self, v: usize) -> u64 {
        let s = self.state.lock().unwrap();
        let f = s.kick[v].as_ref().expect("kick fd");
        // The driver created the eventfd non-blocking; the flag is shared.
        let mut b = [0u8; 8];
        match (&*f).read(&mut b) {
            Ok(8) => u64::from_le_bytes(b),
            Ok(_) => panic!("short eventfd read"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("kick eventfd read: {e}"),
        }
    }
}
