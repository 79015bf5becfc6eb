//! Writes the seed corpora under `fuzz/corpus/<target>/seed-*`, in the
//! encoding each target reads (`src/input.rs`): a short well-formed run of
//! each thing the target can do, for the fuzzer to start from.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seeds
//!
//! The files are checked in; run this again after changing how a target
//! reads its input.

use std::path::{Path, PathBuf};

use vhost_tap_fuzz::input::Seed;

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(format!("seed-{name}")), bytes).unwrap();
}

/// An Ethernet frame: IPv4/UDP (`v6` false) or IPv6/TCP with ECT(0), from
/// port `sport`, `payload` bytes after the headers.
fn eth(v6: bool, sport: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2];
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0x20, 0, 0, 0, 0, 6, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&[
            0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0,
        ]);
    } else {
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0x02, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&[0, 53, 0, 8, 0, 0]);
    }
    f.extend((0..payload).map(|k| k as u8));
    f
}

/// A frame as the TAP carries it: a zero virtio-net header of `hdr` bytes first.
fn tap_frame(hdr: usize, eth: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; hdr];
    f.extend_from_slice(eth);
    f
}

// ---- rx_tx_paths -------------------------------------------------------

/// Features byte: bit 0 VERSION_1, bit 1 MRG_RXBUF.
fn rx_tx_setup(s: &mut Seed, features: u8, rx_size_log: u8, tx_size_log: u8, ring: u8, modes: u8) {
    s.u8(features)
        .u8(rx_size_log)
        .u8(0)
        .u8(tx_size_log)
        .u8(1)
        .u8(ring - 2)
        .u8(modes);
}

fn aqm(s: &mut Seed) {
    // flows 16, limit 64, 1 MiB, quantum 1514, ECN, seed.
    s.u8(15)
        .u8(63)
        .u32((1 << 20) - 1)
        .u16(1513)
        .bool(true)
        .u64(0x5eed);
}

/// Post an RX chain of `lens` buffers.
fn post_rx(s: &mut Seed, lens: &[u16], indirect: bool) {
    let flags = ((lens.len() as u8 - 1) << 4) | u8::from(indirect);
    s.u8(0).u8(flags);
    for &l in lens {
        s.u16(l - 1);
    }
    s.u16(0);
}

fn post_tx(s: &mut Seed, lens: &[u16], frame: &[u8]) {
    let flags = (lens.len() as u8 - 1) << 4;
    s.u8(2).u8(flags);
    for &l in lens {
        s.u16(l - 1);
    }
    s.u16(0);
    s.u8(1).blob(frame);
}

fn tap_read(s: &mut Seed, frame: &[u8]) {
    s.u8(3).u8(1).blob(frame);
}

fn tap_read_long(s: &mut Seed, len: u32) {
    s.u8(3).u8(0).u32(len).blob(&[0; 12]);
}

fn rx_pass(s: &mut Seed) {
    s.u8(7).u8(1);
}

fn rx_tx_paths() {
    let t = "rx_tx_paths";
    let f = |v6, p, n| tap_frame(12, &eth(v6, p, n));
    // Direct path: buffers posted, frames read straight into them; TX.
    let mut s = Seed::default();
    rx_tx_setup(&mut s, 3, 4, 4, 32, 0);
    for _ in 0..4 {
        post_rx(&mut s, &[4096], false);
    }
    tap_read(&mut s, &f(false, 1000, 18));
    tap_read(&mut s, &f(true, 2000, 1400));
    rx_pass(&mut s);
    post_tx(&mut s, &[12, 2000], &f(false, 3000, 60));
    post_tx(&mut s, &[2000], &f(true, 3001, 100));
    s.u8(9);
    write(t, "direct-and-tx", &s.0);

    // Ring path: frames wait for buffers, a long one spans chains (MRG_RXBUF).
    let mut s = Seed::default();
    rx_tx_setup(&mut s, 2, 5, 3, 8, 0);
    tap_read(&mut s, &f(false, 1, 60));
    tap_read_long(&mut s, 9000);
    tap_read(&mut s, &f(false, 2, 60));
    rx_pass(&mut s);
    for _ in 0..8 {
        post_rx(&mut s, &[1024, 1024], false);
    }
    rx_pass(&mut s);
    rx_pass(&mut s);
    write(t, "ring-mrg", &s.0);

    // Legacy 10-byte header, indirect chains, a frame too big for one chain.
    let mut s = Seed::default();
    rx_tx_setup(&mut s, 0, 3, 3, 4, 0);
    post_rx(&mut s, &[100, 1600], true);
    post_rx(&mut s, &[1000], false);
    tap_read(&mut s, &tap_frame(10, &eth(false, 7, 40)));
    tap_read(&mut s, &tap_frame(10, &eth(false, 7, 1800)));
    rx_pass(&mut s);
    post_tx(&mut s, &[10, 500], &tap_frame(10, &eth(true, 9, 30)));
    s.u8(9);
    write(t, "legacy-indirect", &s.0);

    // FQ-CoDel mode: two flows queue in the AQM while the guest has no buffers.
    let mut s = Seed::default();
    rx_tx_setup(&mut s, 3, 4, 4, 16, 1);
    aqm(&mut s);
    for k in 0..6 {
        tap_read(&mut s, &f(k % 2 == 0, 100 + k % 2, 200));
    }
    rx_pass(&mut s);
    post_rx(&mut s, &[2048], false);
    post_rx(&mut s, &[2048], false);
    rx_pass(&mut s);
    s.u8(11).bool(false);
    write(t, "fq-codel", &s.0);

    // Rate limits both ways (3 frames each).
    let mut s = Seed::default();
    rx_tx_setup(&mut s, 3, 4, 4, 16, 2);
    s.u8(2).u8(2).u8(2).u8(2);
    for k in 0..5 {
        post_rx(&mut s, &[2048], false);
        tap_read(&mut s, &f(false, k, 64));
        post_tx(&mut s, &[2048], &f(false, k, 64));
    }
    rx_pass(&mut s);
    s.u8(9);
    write(t, "rate-limited", &s.0);

    // TAP errors: EFAULT, EAGAIN then an edge, EINVAL; ENOBUFS on a write.
    let mut s = Seed::default();
    rx_tx_setup(&mut s, 3, 4, 4, 16, 0);
    post_rx(&mut s, &[2048], false);
    post_rx(&mut s, &[2048], false);
    s.u8(5).u8(2);
    tap_read(&mut s, &f(false, 5, 64));
    rx_pass(&mut s);
    s.u8(5).u8(0);
    tap_read(&mut s, &f(false, 6, 64));
    rx_pass(&mut s);
    s.u8(10).bool(true);
    rx_pass(&mut s);
    s.u8(6).u8(4);
    post_tx(&mut s, &[2048], &f(false, 8, 64));
    s.u8(9).u8(10).bool(false).u8(9);
    s.u8(5).u8(3);
    rx_pass(&mut s);
    write(t, "tap-errors", &s.0);

    // A hostile guest: a descriptor pointing outside memory, a bogus avail index.
    let mut s = Seed::default();
    rx_tx_setup(&mut s, 3, 4, 4, 16, 0);
    post_rx(&mut s, &[2048], false);
    s.u8(13)
        .bool(true)
        .bool(true)
        .u16(0)
        .blob(&u64::MAX.to_le_bytes());
    tap_read(&mut s, &f(false, 1, 64));
    rx_pass(&mut s);
    s.u8(14).bool(false).bool(true).u16(40).u8(9);
    s.u8(15).bool(true).u8(4).u8(0);
    post_rx(&mut s, &[2048], false);
    rx_pass(&mut s);
    write(t, "hostile-and-reset", &s.0);
}

// ---- vnet_header -------------------------------------------------------

fn vnet_header() {
    let t = "vnet_header";
    // VERSION_1 | MRG_RXBUF | CSUM | GUEST_CSUM | GUEST_TSO4/6 | GUEST_ECN.
    let features: u64 = 1 << 32 | 1 << 15 | 1 | 1 << 1 | 1 << 7 | 1 << 8 | 1 << 9;
    for (name, aqm, flags, gso, gso_size) in [
        ("csum-partial", false, 1u8, 0u8, 0u16),
        ("gso-tcpv4", false, 1, 1, 1448),
        ("gso-tcpv6-ecn-fq", true, 3, 4 | 0x80, 1428),
    ] {
        let mut s = Seed::default();
        s.u64(features);
        s.u8(4)
            .bool(false)
            .bool(true)
            .u8(4)
            .bool(true)
            .bool(false)
            .u8(30);
        s.bool(aqm);
        if aqm {
            s.u8(3).u16(1513);
        }
        s.u8(2);
        for k in 0..3 {
            // flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers
            s.u8(flags).u8(gso);
            s.u16(54).u16(gso_size).u16(34).u16(16).u16(0);
            s.u8(1).blob(&eth(k % 2 == 1, 40 + k, 300));
            s.u8(0).u16(2047).u8(0).bool(false);
            s.u8(0).u16(4095).u8(0).bool(k == 1);
        }
        s.u8(0).u8(1).u8(2).u8(0);
        write(t, name, &s.0);
    }
    // Legacy header, no offloads.
    let mut s = Seed::default();
    s.u64(0)
        .u8(3)
        .bool(false)
        .bool(false)
        .u8(3)
        .bool(false)
        .bool(false)
        .u8(6)
        .bool(false);
    s.u8(0);
    s.bytes(&[0; 10]).u8(1).blob(&eth(false, 1, 20));
    s.u8(0).u16(99).u8(0).bool(false);
    s.u8(0).u16(1999).u8(0).bool(false);
    s.u8(0).u8(1);
    write(t, "legacy", &s.0);
}

// ---- descriptor_chains -------------------------------------------------

fn descriptor_chains() {
    let t = "descriptor_chains";
    // Two adjacent regions of 0x4000 at 0; fill; table at region 0 + 0x100,
    // 8 entries; a chain 0 -> 1 -> 2 (the last buffer across the border),
    // an indirect descriptor 3 -> table at 0x2000 of two entries.
    let mut s = Seed::default();
    s.u8(1).u8(0);
    s.u16(0x3fff).u8(0);
    s.u16(0x3fff).u8(0);
    s.blob(b"guest memory ");
    s.u8(0).u16(0x100); // table at 0x100
    s.bool(false).u8(7); // size 8
    s.u8(4);
    let desc = |s: &mut Seed, region: u8, off: u16, len: u16, flags: u8, next: u8| {
        s.u8(region).u16(off).u8(flags).u16(len).u8(next);
    };
    // flags byte: 1 NEXT, 2 WRITE, 4 INDIRECT
    desc(&mut s, 0, 0x1000, 12, 1 | 2, 1);
    desc(&mut s, 0, 0x1010, 1500, 1 | 2, 2);
    desc(&mut s, 0, 0x3f00, 0x200, 2, 0);
    desc(&mut s, 0, 0x2000, 32, 4, 0);
    s.bool(true).u8(0).u16(0x2000).u8(2);
    desc(&mut s, 1, 0x100, 64, 1 | 2, 1);
    desc(&mut s, 1, 0x200, 64, 2, 0);
    s.u8(0); // no map checks
    s.u8(3); // four walks
    for head in [0u16, 3, 1, 5] {
        s.u16(head).bool(true).u8(0);
    }
    s.u16(400).u8(7);
    write(t, "chain-indirect-across-regions", &s.0);

    // Many regions with gaps, high in the address space; map lookups.
    let mut s = Seed::default();
    s.u8(9).u8(2).u16(0);
    for _ in 0..10 {
        s.u16(0x0fff).u8(2).u8(0x40);
    }
    s.blob(&[0xa5]);
    s.u8(0).u16(0);
    s.bool(false).u8(3);
    s.u8(2);
    s.u8(0).u16(0x800).u8(1).u16(100).u8(1);
    s.u8(3).u64(u64::MAX - 8).u8(0).u16(100).u8(0);
    s.bool(false).u8(4);
    for k in 0..4u8 {
        s.u8(k).u16(0xff8).u8(1).bool(k % 2 == 0);
        if k % 2 == 0 {
            s.u32(7).u32(9);
        }
    }
    s.u8(1).u16(0).bool(true).u8(0);
    write(t, "many-regions-map", &s.0);
}

// ---- vhost_user_messages -----------------------------------------------

/// Indices into the target's CODES.
mod code {
    pub const GET_FEATURES: u8 = 0;
    pub const SET_FEATURES: u8 = 1;
    pub const SET_OWNER: u8 = 2;
    pub const SET_MEM_TABLE: u8 = 4;
    pub const SET_VRING_NUM: u8 = 7;
    pub const SET_VRING_ADDR: u8 = 8;
    pub const SET_VRING_BASE: u8 = 9;
    pub const SET_VRING_KICK: u8 = 11;
    pub const SET_VRING_CALL: u8 = 12;
    pub const GET_PROTOCOL_FEATURES: u8 = 14;
    pub const SET_PROTOCOL_FEATURES: u8 = 15;
    pub const GET_QUEUE_NUM: u8 = 16;
    pub const SET_VRING_ENABLE: u8 = 17;
}

/// Flags byte: 3 = VERSION_1, 1 = VERSION_1 | NEED_REPLY.
fn vu_plain(s: &mut Seed, c: u8, flags: u8) {
    s.u8(c).u8(flags).blob(&[]).u8(0);
}

fn vu_state(s: &mut Seed, c: u8, flags: u8, index: u8, num_log: u8) {
    s.u8(c).u8(flags).u8(index).u8(2).u8(num_log).u8(0);
}

/// Kick/call with a descriptor of `kind` (0 eventfd, 3 pipe).
fn vu_fd(s: &mut Seed, c: u8, index: u8, kind: u8) {
    s.u8(c).u8(3).u8(index).u8(0).u8(kind);
}

fn vhost_user_messages() {
    let t = "vhost_user_messages";
    use code::*;
    let qemu = |s: &mut Seed, kick_kind: u8| {
        s.u8(1).u8(8); // 4 vrings, max ring 256
        vu_plain(s, GET_FEATURES, 1);
        vu_plain(s, GET_PROTOCOL_FEATURES, 3);
        s.u8(SET_PROTOCOL_FEATURES).u8(3).bool(true).u8(0);
        vu_plain(s, GET_QUEUE_NUM, 3);
        vu_plain(s, SET_OWNER, 3);
        vu_state(s, SET_VRING_ENABLE, 1, 0, 0);
        vu_state(s, SET_VRING_ENABLE, 1, 1, 0);
        s.u8(SET_FEATURES).u8(3).bool(true).u8(0);
        // One region of 64 KiB, file exactly as large.
        // count mode, count, region flags (none raw), size 16 pages, no extra fd, d.
        s.u8(SET_MEM_TABLE)
            .u8(3)
            .u8(1)
            .u8(0)
            .u8(0)
            .u8(15)
            .u8(1)
            .u8(0);
        vu_state(s, SET_VRING_NUM, 3, 0, 8);
        s.u8(SET_VRING_ADDR).u8(3).blob(&[0; 40]).u8(0);
        vu_state(s, SET_VRING_BASE, 3, 0, 0);
        vu_fd(s, SET_VRING_CALL, 0, 0);
        vu_fd(s, SET_VRING_KICK, 0, kick_kind);
        vu_fd(s, SET_VRING_CALL, 0, 0);
    };
    let mut s = Seed::default();
    qemu(&mut s, 0);
    write(t, "qemu-handshake", &s.0);
    let mut s = Seed::default();
    qemu(&mut s, 3);
    write(t, "kick-not-an-eventfd", &s.0);
    // Before SET_OWNER, too many descriptors, a lying size.
    let mut s = Seed::default();
    s.u8(0).u8(4);
    vu_state(&mut s, SET_VRING_NUM, 3, 0, 4);
    write(t, "before-owner", &s.0);
    let mut s = Seed::default();
    s.u8(0).u8(4);
    s.u8(GET_FEATURES).u8(3).blob(&[]).u8(0xff);
    write(t, "forty-descriptors", &s.0);
    let mut s = Seed::default();
    s.u8(0).u8(4);
    s.u8(GET_FEATURES).u8(0x43).blob(&[1, 2, 3]).u8(0).u32(100);
    write(t, "lying-size", &s.0);
}

// ---- config_parser -----------------------------------------------------

fn config_parser() {
    let t = "config_parser";
    let example = include_str!("../../examples/vhost-tap.toml");
    write(t, "example", example.as_bytes());
    write(
        t,
        "every-key",
        br#"metrics = "127.0.0.1:9101"

[[device]]
socket = "/run/vhost-tap/a.sock"
tap = "vt0"
queues = 4
queue_size = 256
ring_size = 64
mac = "52:54:00:00:00:01"
mtu = 9000
mode = "fq-codel"
txqueuelen = 500
fq_flows = 64
fq_limit = 1000
fq_memory_limit = 1048576
fq_ecn = false
iff_backpressure = true
socket_owner = "0"
socket_group = "root"
socket_mode = "0660"
rx_rate_bytes = 1000000
rx_burst_bytes = 64000
rx_rate_frames = 1000
rx_burst_frames = 50
tx_rate_bytes = 2000000
tx_rate_frames = 3000
tx_burst_bytes = 100000
tx_burst_frames = 100

[[device]]
socket = "/run/vhost-tap/b.sock"
tap = "vt1"
client = true
"#,
    );
    write(
        t,
        "errors",
        b"[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\nqueue_size = 1000\n\n[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\nqueus = 2\n",
    );
    write(
        t,
        "inline",
        b"device = [ { socket = \"/x\", tap = \"t\", mac = \"53:00:00:00:00:01\" },\n  { socket = \"/y\", tap = \"u\", rx_burst_bytes = 5 } ]\n",
    );
}

// ---- fq_codel_classifier -----------------------------------------------

fn fq_codel_classifier() {
    let t = "fq_codel_classifier";
    let config = |s: &mut Seed| {
        // flows 8, limit 16, memory 20000, quantum 300, target 5 ms, interval 100 ms, ECN, seed.
        s.u8(7)
            .u8(15)
            .u32(19_999)
            .u16(299)
            .u32(5_000_000)
            .u32(99_999_999)
            .bool(true)
            .u64(7);
        s.u64(1_000);
    };
    let mut s = Seed::default();
    config(&mut s);
    let tagged = {
        let mut f = eth(false, 5, 10);
        f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        f
    };
    let raw: [&[u8]; 4] = [&eth(true, 9, 100), &tagged, &[0xff; 60], &[1, 2, 3]];
    for (k, f) in raw.iter().enumerate() {
        s.u8(3).u32(10).u8(0).u8(1).blob(f).u16(k as u16);
    }
    for k in 0..8u8 {
        // An IPv4 frame with ECT(0) (built by the target) and one IPv6.
        s.u8(3).u32(1000).u8(0).u8(2).u8(0x02).bool(k % 2 == 0);
        s.bytes(&[10, 0, 0, k, 10, 0, 0, 2]).u8(k).u16(400).u16(0);
        s.u8(3)
            .u32(1000)
            .u8(1)
            .u8(3)
            .u8(0x01)
            .bool(false)
            .u8(k)
            .u16(1200)
            .u16(0);
    }
    for _ in 0..12 {
        s.u8(3).u32(200_000_000).u8(2);
    }
    s.u8(0).u64(0).u8(3).u8(0);
    write(t, "flows-ecn-codel", &s.0);
}

fn main() {
    rx_tx_paths();
    vnet_header();
    descriptor_chains();
    vhost_user_messages();
    config_parser();
    fq_codel_classifier();
    println!("seeds written under {}", corpus("").display());
}
