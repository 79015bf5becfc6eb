//! [`Driver`]: the handshake, the guest memory layout, and the net-level API.

use std::fs::File;
use std::io::Write;
use std::mem::{offset_of, size_of, size_of_val};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserU64, VhostUserVringState,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_net::{virtio_net_config, virtio_net_hdr_v1};
use vm_memory::{
    ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap,
};

use crate::features::*;
use crate::vring::{align_up, ring_bytes, UsedElem, Vring, DESC_SIZE};
use crate::{DriverConfig, Error, RawDesc, RxFrame, NET_HDR_LEN};

/// The version field of a vhost-user header (the [`VhostUserHeaderFlag::VERSION`]
/// bits of `flags`): the protocol has only version 1.
const HDR_VERSION_1: u32 = 0x1;
/// Where `num_buffers` sits in the `virtio_net_hdr_v1` the device writes.
const NUM_BUFFERS_OFFSET: usize = offset_of!(virtio_net_hdr_v1, num_buffers);
/// Largest queue size of a split virtqueue (virtio 1.2 §2.7).
const MAX_QUEUE_SIZE: u16 = 32768;
/// Smallest buffer slot we accept: an MTU-sized frame plus header.
const MIN_SLOT: u64 = 2048;
/// First guest physical address we use (page 0 stays unused, so a zero
/// address from a confused backend never hits a ring).
const MEM_BASE: u64 = 0x1000;
/// Timeout on every reply from the backend, so a silent backend fails a test
/// instead of hanging it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where one vring lives in guest memory (guest physical addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringLayout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// First buffer slot; slot `d` is at `data + d * slot_size`.
    pub data: u64,
    pub slot_size: u64,
}

/// A vhost-user frontend playing the guest's virtio-net driver.
pub struct Driver {
    cfg: DriverConfig,
    /// The socket as we write raw messages on it; `frontend` owns a dup.
    sock: UnixStream,
    frontend: Frontend,
    mem: GuestMemoryMmap,
    vrings: Vec<Vring>,
    offered: u64,
    acked: u64,
    protocol_acked: VhostUserProtocolFeatures,
    scratch: (u64, usize),
    /// Completed TX chains per pair since connect.
    tx_done: Vec<usize>,
    /// RX used entries that could not make a frame (short, stray id, bad num_buffers).
    rx_malformed: u64,
}

fn vhost_err(what: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Vhost { what, source }
}

fn connect_retry(path: &std::path::Path) -> Result<UnixStream, Error> {
    // The daemon may still be starting: retry for about 2 s.
    let mut tries = 20;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if tries > 0
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                tries -= 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => {
                return Err(Error::Connect {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

fn create_memory(size: usize) -> Result<GuestMemoryMmap, Error> {
    // SAFETY: the name is a valid NUL-terminated C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vu-driver-guest-mem".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memory(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd came from memfd_create above, is valid and owned by nobody
    // else; File now owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64)
        .map_err(|e| Error::Memory(format!("ftruncate memfd to {size} bytes: {e}")))?;
    let region = GuestRegionMmap::from_range(GuestAddress(0), size, Some(FileOffset::new(file, 0)))
        .map_err(|e| Error::Memory(format!("mmap memfd: {e}")))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| Error::Memory(format!("{e}")))
}

impl Driver {
    /// Connects and runs the whole handshake the way QEMU 10 does (see the
    /// crate README for the exact message order).
    pub fn connect(cfg: DriverConfig) -> Result<Driver, Error> {
        if cfg.queue_pairs == 0 {
            return Err(Error::Config("queue_pairs must be at least 1".into()));
        }
        if !cfg.queue_size.is_power_of_two() || cfg.queue_size > MAX_QUEUE_SIZE {
            return Err(Error::Config(format!(
                "queue_size {} is not a power of two up to {MAX_QUEUE_SIZE}",
                cfg.queue_size
            )));
        }
        let nvrings = 2 * cfg.queue_pairs;

        // Guest memory and its layout first: a config that does not fit fails
        // before we talk to the backend.
        let rings_end = MEM_BASE + nvrings as u64 * ring_bytes(cfg.queue_size);
        let scratch_len = align_up(cfg.mem_size as u64 / 16, 4096);
        let data_start = rings_end + scratch_len;
        let per_vring = (cfg.mem_size as u64).saturating_sub(data_start) / nvrings as u64;
        let slot_size = (per_vring / u64::from(cfg.queue_size)) & !63;
        if slot_size < MIN_SLOT {
            return Err(Error::Memory(format!(
                "mem_size {} gives {slot_size}-byte buffer slots for {nvrings} vrings of {}; \
                 need at least {MIN_SLOT}: raise mem_size",
                cfg.mem_size, cfg.queue_size
            )));
        }
        let mem = create_memory(cfg.mem_size)?;

        let sock = connect_retry(&cfg.socket)?;
        sock.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|source| Error::Connect {
                path: cfg.socket.clone(),
                source,
            })?;
        let dup = sock.try_clone().map_err(|source| Error::Connect {
            path: cfg.socket.clone(),
            source,
        })?;
        let mut frontend = Frontend::from_stream(dup, nvrings as u64);

        // GET_FEATURES
        let offered = frontend.get_features().map_err(vhost_err("GET_FEATURES"))?;
        if offered & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(Error::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        let has_protocol = offered & bit(VHOST_USER_F_PROTOCOL_FEATURES) != 0;

        // GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM
        let mut protocol_acked = VhostUserProtocolFeatures::empty();
        if has_protocol {
            let pf = frontend
                .get_protocol_features()
                .map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
            protocol_acked = pf
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIG);
            frontend
                .set_protocol_features(protocol_acked)
                .map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
            if protocol_acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // As QEMU: ask for an ack on the requests that have no reply of
                // their own (the backend answers GET_* with their reply only).
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        if protocol_acked.contains(VhostUserProtocolFeatures::MQ) {
            let n = frontend
                .get_queue_num()
                .map_err(vhost_err("GET_QUEUE_NUM"))?;
            if n < nvrings as u64 {
                return Err(Error::TooFewQueues {
                    needed: nvrings as u64,
                    offered: n,
                });
            }
        } else if cfg.queue_pairs > 1 {
            return Err(Error::TooFewQueues {
                needed: nvrings as u64,
                offered: 2,
            });
        }
        if cfg.queue_pairs > 1 && offered & bit(VIRTIO_NET_F_MQ) == 0 {
            return Err(Error::MissingFeature("VIRTIO_NET_F_MQ"));
        }

        // SET_OWNER
        frontend.set_owner().map_err(vhost_err("SET_OWNER"))?;

        let mut drv = Driver {
            cfg,
            sock,
            frontend,
            mem,
            vrings: Vec::with_capacity(nvrings),
            offered,
            acked: 0,
            protocol_acked,
            scratch: (rings_end, scratch_len as usize),
            tx_done: Vec::new(),
            rx_malformed: 0,
        };
        drv.tx_done = vec![0; drv.cfg.queue_pairs];

        // QEMU 10: SET_VRING_ENABLE(1) for every vring before SET_FEATURES.
        // The Frontend refuses (it checks *acked* PROTOCOL_FEATURES), so we
        // write it ourselves.
        if drv.cfg.qemu_order && has_protocol {
            for i in 0..nvrings {
                drv.raw_set_vring_enable(i as u32, true)?;
            }
        }

        // SET_FEATURES
        let mut want = ALWAYS_ACKED;
        if drv.cfg.mrg_rxbuf {
            want |= bit(VIRTIO_NET_F_MRG_RXBUF);
        }
        if drv.cfg.event_idx {
            want |= bit(VIRTIO_RING_F_EVENT_IDX);
        }
        if drv.cfg.offloads {
            want |= OFFLOADS;
        }
        drv.acked = want & offered;
        drv.frontend
            .set_features(drv.acked)
            .map_err(vhost_err("SET_FEATURES"))?;

        // SET_MEM_TABLE
        let region = drv
            .mem
            .iter()
            .next()
            .ok_or_else(|| Error::Memory("no region".into()))?;
        let info = VhostUserMemoryRegionInfo::from_guest_region(region)
            .map_err(vhost_err("memory region info"))?;
        drv.frontend
            .set_mem_table(&[info])
            .map_err(vhost_err("SET_MEM_TABLE"))?;

        // Per vring: NUM, ADDR, BASE, CALL, KICK.
        let event_idx = drv.acked & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let qsz = drv.cfg.queue_size;
        for i in 0..nvrings {
            let base = GuestAddress(MEM_BASE + i as u64 * ring_bytes(qsz));
            let data = GuestAddress(data_start + i as u64 * per_vring);
            let vr = Vring::new(qsz, base, data, slot_size, event_idx).map_err(Error::EventFd)?;
            drv.program_vring(i, vr)?;
        }

        // SET_VRING_ENABLE(1) for all vrings (only with PROTOCOL_FEATURES:
        // without it, rings start enabled).
        if has_protocol {
            for i in 0..nvrings {
                drv.frontend
                    .set_vring_enable(i, true)
                    .map_err(vhost_err("SET_VRING_ENABLE"))?;
            }
        }
        log::debug!(
            "vu-driver: connected to {}: offered {:#x}, acked {:#x}, protocol {:#x}",
            drv.cfg.socket.display(),
            drv.offered,
            drv.acked,
            drv.protocol_acked.bits()
        );
        Ok(drv)
    }

    /// Tell the backend where vring `i` is (NUM, ADDR, BASE 0, CALL, KICK)
    /// and make `vr` the driver's view of it.
    fn program_vring(&mut self, i: usize, vr: Vring) -> Result<(), Error> {
        let qsz = vr.size;
        // SET_VRING_ADDR carries addresses in the frontend's own address
        // space (as QEMU sends them): our mapping of guest memory.
        let va = |a: GuestAddress| -> Result<u64, Error> {
            self.mem
                .get_host_address(a)
                .map(|p| p as u64)
                .map_err(|e| Error::Memory(format!("vring address {a:?}: {e}")))
        };
        let addr = VringConfigData {
            queue_max_size: qsz,
            queue_size: qsz,
            flags: 0,
            desc_table_addr: va(vr.desc)?,
            used_ring_addr: va(vr.used)?,
            avail_ring_addr: va(vr.avail)?,
            log_addr: None,
        };
        self.frontend
            .set_vring_num(i, qsz)
            .map_err(vhost_err("SET_VRING_NUM"))?;
        self.frontend
            .set_vring_addr(i, &addr)
            .map_err(vhost_err("SET_VRING_ADDR"))?;
        self.frontend
            .set_vring_base(i, 0)
            .map_err(vhost_err("SET_VRING_BASE"))?;
        self.frontend
            .set_vring_call(i, &vr.call)
            .map_err(vhost_err("SET_VRING_CALL"))?;
        self.frontend
            .set_vring_kick(i, &vr.kick)
            .map_err(vhost_err("SET_VRING_KICK"))?;
        if i < self.vrings.len() {
            self.vrings[i] = vr;
        } else {
            self.vrings.push(vr);
        }
        Ok(())
    }

    /// Reset vring `i` as a guest driver does on a reload, on the same
    /// connection: stop it (GET_VRING_BASE, whose answer is returned), clear
    /// its rings, program it afresh from index 0 and enable it again.
    /// Buffers the driver had in flight on it are forgotten.
    pub fn reset_vring(&mut self, i: usize) -> Result<u32, Error> {
        let old = self
            .vrings
            .get(i)
            .ok_or_else(|| Error::Config(format!("no vring {i}")))?;
        let (qsz, desc, data, slot, event_idx) =
            (old.size, old.desc, old.data, old.slot_size, old.event_idx);
        let base = self
            .frontend
            .get_vring_base(i)
            .map_err(vhost_err("GET_VRING_BASE"))?;
        let zeros = vec![0u8; ring_bytes(qsz) as usize];
        self.mem
            .write_slice(&zeros, desc)
            .map_err(|e| Error::Memory(format!("clearing vring {i}: {e}")))?;
        let vr = Vring::new(qsz, desc, data, slot, event_idx).map_err(Error::EventFd)?;
        self.program_vring(i, vr)?;
        if self.offered & bit(VHOST_USER_F_PROTOCOL_FEATURES) != 0 {
            self.frontend
                .set_vring_enable(i, true)
                .map_err(vhost_err("SET_VRING_ENABLE"))?;
        }
        Ok(base)
    }

    /// Writes SET_VRING_ENABLE on the socket ourselves (with NEED_REPLY when
    /// REPLY_ACK is acked, as QEMU does) and checks the ack.
    ///
    /// NB: only between Frontend calls. Every Frontend call sends its request
    /// and reads its reply before returning, and `&mut self` keeps us on one
    /// thread, so nothing else is in flight on the socket here.
    fn raw_set_vring_enable(&mut self, index: u32, enable: bool) -> Result<(), Error> {
        let req = u32::from(FrontendReq::SET_VRING_ENABLE);
        let need_reply = self
            .protocol_acked
            .contains(VhostUserProtocolFeatures::REPLY_ACK);
        let flags = HDR_VERSION_1
            | if need_reply {
                VhostUserHeaderFlag::NEED_REPLY.bits()
            } else {
                0
            };
        // Header (request, flags, payload size), then the payload; vhost-user
        // numbers are in the host's byte order. One write, as the Frontend's.
        let body = VhostUserVringState::new(index, u32::from(enable));
        let hdr: [u32; 3] = [req, flags, size_of_val(&body) as u32];
        let mut m: Vec<u8> = Vec::with_capacity(size_of_val(&hdr) + size_of_val(&body));
        m.extend_from_slice(ByteValued::as_slice(&hdr));
        m.extend_from_slice(body.as_slice());
        let io = |source| Error::RawMessage {
            request: req,
            source,
        };
        self.sock.write_all(&m).map_err(io)?;
        if !need_reply {
            return Ok(());
        }
        let [rreq, rflags, rsize] = <[u32; 3]>::read_exact_from(&mut self.sock).map_err(io)?;
        let ack = VhostUserU64::read_exact_from(&mut self.sock).map_err(io)?;
        if rreq != req
            || rflags & VhostUserHeaderFlag::VERSION.bits() != HDR_VERSION_1
            || rflags & VhostUserHeaderFlag::REPLY.bits() == 0
            || rsize as usize != size_of::<VhostUserU64>()
        {
            return Err(Error::BadReply {
                request: req,
                why: format!("header request {rreq}, flags {rflags:#x}, size {rsize}"),
            });
        }
        if ack.value != 0 {
            return Err(Error::BackendNack {
                request: req,
                value: ack.value,
            });
        }
        Ok(())
    }

    /// Features the backend offered in GET_FEATURES.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// Features we sent in SET_FEATURES.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// Protocol features we sent in SET_PROTOCOL_FEATURES.
    pub fn acked_protocol_features(&self) -> u64 {
        self.protocol_acked.bits()
    }

    /// The config space length QEMU would ask for, from the offered features:
    /// `virtio_net_config` up to the end of the last field they define.
    fn config_len(&self) -> u32 {
        /// Bytes of `virtio_net_config` up to the end of `$field`.
        macro_rules! through {
            ($field:ident) => {{
                let c = virtio_net_config::default();
                // `{ .. }` copies the field: the struct is packed.
                (offset_of!(virtio_net_config, $field) + size_of_val(&{ c.$field })) as u32
            }};
        }
        let has = |b| self.offered & bit(b) != 0;
        if has(VIRTIO_NET_F_SPEED_DUPLEX) {
            through!(duplex)
        } else if has(VIRTIO_NET_F_MTU) {
            through!(mtu)
        } else if has(VIRTIO_NET_F_MQ) {
            through!(max_virtqueue_pairs)
        } else if has(VIRTIO_NET_F_STATUS) {
            through!(status)
        } else {
            through!(mac)
        }
    }

    /// GET_CONFIG for the config space (mac at 0..6, status at 6..8,
    /// max_virtqueue_pairs at 8..10, mtu at 10..12, as far as offered).
    pub fn config_space(&mut self) -> Result<Vec<u8>, Error> {
        let len = self.config_len();
        self.config_range(0, len)
    }

    /// GET_CONFIG for `size` bytes at `offset`.
    pub fn config_range(&mut self, offset: u32, size: u32) -> Result<Vec<u8>, Error> {
        let buf = vec![0u8; size as usize];
        let (_, payload) = self
            .frontend
            .get_config(offset, size, VhostUserConfigFlags::empty(), &buf)
            .map_err(vhost_err("GET_CONFIG"))?;
        Ok(payload)
    }

    fn check_pair(&self, pair: usize) {
        assert!(
            pair < self.cfg.queue_pairs,
            "queue pair {pair} out of range (have {})",
            self.cfg.queue_pairs
        );
    }

    /// Posts up to `n` RX buffers of `buf_len` bytes each (one device-writable
    /// descriptor each) on `pair`, and kicks if the device wants it. Returns
    /// how many were posted. `buf_len` is clamped to the buffer slot size.
    pub fn post_rx(&mut self, pair: usize, n: usize, buf_len: usize) -> usize {
        self.check_pair(pair);
        let vr = &mut self.vrings[2 * pair];
        let len = buf_len.min(vr.slot_size as usize) as u32;
        if len as usize != buf_len {
            log::warn!(
                "vu-driver: rx buffers clamped from {buf_len} to the {}-byte slot",
                vr.slot_size
            );
        }
        let mut posted = 0;
        while posted < n {
            let Some(idx) = vr.alloc(1) else { break };
            let addr = vr.slot(idx[0]);
            vr.add_chain(
                &self.mem,
                idx,
                &[(addr.0, len, VRING_DESC_F_WRITE as u16)],
                addr,
                len,
            );
            posted += 1;
        }
        if posted > 0 && vr.publish(&self.mem) {
            vr.kick();
        }
        posted
    }

    /// Free descriptors on vring `vring`.
    pub fn free_descriptors(&self, vring: usize) -> usize {
        self.vrings[vring].free_count()
    }

    /// Reaps the RX used ring of `pair`: the frames received so far (a
    /// mergeable frame is returned once all its `num_buffers` used entries are
    /// published). Frees their descriptors. Non-blocking.
    pub fn recv(&mut self, pair: usize) -> Vec<RxFrame> {
        self.check_pair(pair);
        let mrg = self.acked & bit(VIRTIO_NET_F_MRG_RXBUF) != 0;
        let vr = &mut self.vrings[2 * pair];
        let mem = &self.mem;
        let mut out = Vec::new();
        loop {
            let pending = vr.pending(mem);
            if pending == 0 {
                break;
            }
            let first = vr.peek_used(mem, 0);
            let Some((buf, buf_len)) = vr.chain_buf(first.id) else {
                // Not a buffer of ours: record and skip it.
                vr.pop_used(mem);
                self.rx_malformed += 1;
                continue;
            };
            let len = first.len.min(buf_len) as usize;
            if len < NET_HDR_LEN {
                log::warn!(
                    "vu-driver: rx used entry of {} bytes, shorter than the header",
                    first.len
                );
                vr.pop_used(mem);
                self.rx_malformed += 1;
                continue;
            }
            let mut hdr = [0u8; NET_HDR_LEN];
            mem.read_slice(&mut hdr, buf)
                .expect("rx buffer lies in guest memory");
            let mut nbuf = if mrg {
                u16::from_le_bytes([hdr[NUM_BUFFERS_OFFSET], hdr[NUM_BUFFERS_OFFSET + 1]])
            } else {
                1
            };
            if nbuf == 0 {
                self.rx_malformed += 1;
                nbuf = 1;
            }
            if pending < nbuf {
                // The rest of this frame is not published yet.
                break;
            }
            let mut data = Vec::with_capacity(len - NET_HDR_LEN);
            for k in 0..nbuf {
                let (e, chain) = vr.pop_used(mem);
                let Some(chain) = chain else {
                    self.rx_malformed += 1;
                    continue;
                };
                let blen = e.len.min(chain.buf_len) as usize;
                let skip = if k == 0 { NET_HDR_LEN } else { 0 };
                if blen > skip {
                    let start = data.len();
                    data.resize(start + blen - skip, 0);
                    mem.read_slice(&mut data[start..], GuestAddress(chain.buf.0 + skip as u64))
                        .expect("rx buffer lies in guest memory");
                }
            }
            out.push(RxFrame {
                hdr,
                data,
                num_buffers: nbuf,
            });
        }
        vr.arm_and_recheck(mem);
        out
    }

    /// Blocks (poll on the call eventfd) up to `timeout` until at least `min`
    /// frames are received by this call; returns them (maybe fewer on timeout).
    pub fn recv_wait(&mut self, pair: usize, min: usize, timeout: Duration) -> Vec<RxFrame> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            out.extend(self.recv(pair));
            if out.len() >= min || !self.wait_call(2 * pair, deadline) {
                return out;
            }
        }
    }

    /// Sleeps until the call eventfd of `vring` fires or new used entries
    /// appear; false once `deadline` passed.
    fn wait_call(&mut self, vring: usize, deadline: Instant) -> bool {
        let vr = &self.vrings[vring];
        let left = vr.pending(&self.mem);
        // recv/tx_completed armed used_event already; re-check after the fence.
        if vr.arm_and_recheck(&self.mem) && vr.pending(&self.mem) != left {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd: vr.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd for the duration of the call and we
        // pass a count of 1; the fd is owned by `vr.call`, which outlives it.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            // Non-blocking eventfd: clears the counter; EAGAIN is fine.
            let _ = vr.call.read();
        }
        true
    }

    /// Posts one TX chain: `hdr` in its own descriptor, then `frame`, and
    /// kicks if the device wants it. Err(QueueFull) if no descriptors are free.
    pub fn send(
        &mut self,
        pair: usize,
        hdr: &[u8; NET_HDR_LEN],
        frame: &[u8],
    ) -> Result<(), Error> {
        self.send_chain(pair, hdr, &[frame], false)
    }

    /// Posts one TX chain: `hdr` in its own descriptor, then one descriptor
    /// per segment. With `indirect` (and RING_INDIRECT_DESC negotiated) the
    /// chain goes into an indirect table behind a single ring descriptor.
    pub fn send_chain(
        &mut self,
        pair: usize,
        hdr: &[u8; NET_HDR_LEN],
        segments: &[&[u8]],
        indirect: bool,
    ) -> Result<(), Error> {
        self.check_pair(pair);
        let indirect = indirect && self.acked & bit(VIRTIO_RING_F_INDIRECT_DESC) != 0;
        let vr = &mut self.vrings[2 * pair + 1];
        let k = 1 + segments.len();
        let table_len = if indirect {
            align_up(DESC_SIZE * k as u64, 64) as usize
        } else {
            0
        };
        let total = table_len + NET_HDR_LEN + segments.iter().map(|s| s.len()).sum::<usize>();
        if total as u64 > vr.slot_size {
            return Err(Error::FrameTooLarge {
                len: total,
                slot: vr.slot_size as usize,
            });
        }
        let idx = vr
            .alloc(if indirect { 1 } else { k })
            .ok_or(Error::QueueFull)?;
        let slot = vr.slot(idx[0]);
        let mut at = slot.0 + table_len as u64;
        let mut descs = Vec::with_capacity(k);
        self.mem
            .write_slice(hdr, GuestAddress(at))
            .expect("tx slot lies in guest memory");
        descs.push((at, NET_HDR_LEN as u32, 0u16));
        at += NET_HDR_LEN as u64;
        for s in segments {
            self.mem
                .write_slice(s, GuestAddress(at))
                .expect("tx slot lies in guest memory");
            descs.push((at, s.len() as u32, 0u16));
            at += s.len() as u64;
        }
        if indirect {
            vr.add_indirect(&self.mem, idx[0], slot, &descs);
        } else {
            vr.add_chain(&self.mem, idx, &descs, slot, total as u32);
        }
        if vr.publish(&self.mem) {
            vr.kick();
        }
        Ok(())
    }

    /// Reaps TX used entries of `pair`; returns the TX chains completed since connect.
    pub fn tx_completed(&mut self, pair: usize) -> usize {
        self.check_pair(pair);
        let vr = &mut self.vrings[2 * pair + 1];
        while vr.pending(&self.mem) != 0 {
            if vr.pop_used(&self.mem).1.is_some() {
                self.tx_done[pair] += 1;
            }
        }
        vr.arm_and_recheck(&self.mem);
        self.tx_done[pair]
    }

    /// Blocks up to `timeout` until `total` TX chains of `pair` completed
    /// since connect; returns the count reached.
    pub fn tx_wait(&mut self, pair: usize, total: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.tx_completed(pair);
            if done >= total || !self.wait_call(2 * pair + 1, deadline) {
                return done;
            }
        }
    }

    /// Untrusted-guest tests: writes `descs[i]` at descriptor index `i` of
    /// vring `vring`, publishes `heads` in the avail ring and kicks.
    ///
    /// NB: indices `0..descs.len()` leave the driver's free pool for good, so
    /// `post_rx`/`send` never reuse them; do not mix raw posts with chains in
    /// flight on the same vring. Their used entries come back via [`Driver::raw_used`].
    pub fn raw_post(&mut self, vring: usize, descs: &[RawDesc], heads: &[u16]) {
        let vr = &mut self.vrings[vring];
        vr.take_raw(descs.len());
        for (i, d) in descs.iter().enumerate().take(usize::from(vr.size)) {
            vr.write_desc(&self.mem, i as u16, d);
        }
        for &h in heads {
            vr.push_avail(&self.mem, h);
        }
        vr.publish(&self.mem);
        vr.kick();
    }

    /// Untrusted-guest tests: publishes an arbitrary avail idx and kicks.
    pub fn raw_set_avail_idx(&mut self, vring: usize, idx: u16) {
        let vr = &mut self.vrings[vring];
        vr.set_avail_idx(idx);
        vr.publish(&self.mem);
        vr.kick();
    }

    /// Reaps vring `vring` and returns the used entries that named no chain of
    /// ours (raw posts, or a device returning ids we never posted).
    pub fn raw_used(&mut self, vring: usize) -> Vec<UsedElem> {
        let vr = &mut self.vrings[vring];
        while vr.pending(&self.mem) != 0 {
            vr.pop_used(&self.mem);
        }
        vr.arm_and_recheck(&self.mem);
        std::mem::take(&mut vr.stray_used)
    }

    /// used.idx of vring `vring` as the device last published it.
    pub fn used_idx(&self, vring: usize) -> u16 {
        self.vrings[vring].used_idx(&self.mem)
    }

    /// A guest memory area that the driver never uses, for raw tests' buffers:
    /// (guest physical address, length).
    pub fn scratch(&self) -> (u64, usize) {
        self.scratch
    }

    /// Writes `data` into guest memory at `addr`.
    pub fn write_guest(&self, addr: u64, data: &[u8]) -> Result<(), Error> {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|e| Error::Memory(format!("write {} bytes at {addr:#x}: {e}", data.len())))
    }

    /// Reads `len` bytes of guest memory at `addr`.
    pub fn read_guest(&self, addr: u64, len: usize) -> Result<Vec<u8>, Error> {
        let mut v = vec![0; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .map_err(|e| Error::Memory(format!("read {len} bytes at {addr:#x}: {e}")))?;
        Ok(v)
    }

    /// Where vring `vring` lives in guest memory.
    pub fn vring_layout(&self, vring: usize) -> VringLayout {
        let vr = &self.vrings[vring];
        VringLayout {
            size: vr.size,
            desc: vr.desc.0,
            avail: vr.avail.0,
            used: vr.used.0,
            data: vr.data.0,
            slot_size: vr.slot_size,
        }
    }

    /// The call eventfd of vring `vring`, for callers that poll themselves.
    pub fn call_fd(&self, vring: usize) -> RawFd {
        self.vrings[vring].call.as_raw_fd()
    }

    /// RX used entries that could not be turned into frames so far.
    pub fn rx_malformed(&self) -> u64 {
        self.rx_malformed
    }

    /// Bytes of guest memory shared with the backend.
    pub fn guest_mem_size(&self) -> u64 {
        self.mem.iter().map(|r| r.len()).sum()
    }

    /// The file behind guest memory (a memfd), for tests that change it
    /// under the backend (e.g. shrink it, as a hostile frontend might).
    /// After shrinking it, do not touch guest memory through this driver:
    /// its own mapping faults (SIGBUS) past the new end too.
    pub fn memory_file(&self) -> Option<&File> {
        Some(self.mem.iter().next()?.file_offset()?.file())
    }

    /// GET_VRING_BASE on every vring (as QEMU does at stop), then closes the socket.
    pub fn disconnect(self) -> Result<(), Error> {
        for i in 0..self.vrings.len() {
            let base = self
                .frontend
                .get_vring_base(i)
                .map_err(vhost_err("GET_VRING_BASE"))?;
            log::debug!("vu-driver: vring {i} stopped at base {base}");
        }
        Ok(())
    }
}
