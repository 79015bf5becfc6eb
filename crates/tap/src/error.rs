//! Errors: one variant per step of opening and configuring a TAP, each
//! naming the TAP and keeping the kernel's error as its source. Where the
//! cause is usually the same (no CAP_NET_ADMIN, device busy), the message
//! says what to do.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// The name does not fit `IFNAMSIZ` (15 bytes plus NUL).
    #[error("TAP name {name:?} is {len} bytes long; Linux allows at most 15")]
    NameTooLong { name: String, len: usize },
    /// The name contains a character Linux rejects in interface names.
    #[error("TAP name {name:?} is invalid: {reason}")]
    NameInvalid { name: String, reason: &'static str },
    /// `queues` is 0 or above the tun driver's limit.
    #[error("TAP {name}: {queues} queues requested; use 1..={max}")]
    QueueCount {
        name: String,
        queues: usize,
        max: usize,
    },
    /// open("/dev/net/tun") failed.
    #[error("TAP {name}: cannot open /dev/net/tun: {source}{}", open_hint(.source))]
    OpenTunDevice {
        name: String,
        #[source]
        source: io::Error,
    },
    /// TUNGETFEATURES failed.
    #[error("TUNGETFEATURES on /dev/net/tun failed: {source}")]
    GetFeatures {
        #[source]
        source: io::Error,
    },
    /// An interface of that name exists and is not a tun/tap device.
    #[error("interface {name} exists and is not a TAP (no tun_flags in sysfs); pick another name")]
    NotATap { name: String },
    /// An interface of that name exists and is a TUN (layer 3) device.
    #[error("interface {name} exists as a TUN (layer 3) device, not a TAP; delete it (ip link del {name}) or pick another name")]
    ExistsAsTun { name: String },
    /// The existing TAP's queue mode differs from the requested one.
    #[error("TAP {name} exists with flags {existing} but {requested} was requested; delete it (ip link del {name}) or use --queues 1")]
    QueueModeMismatch {
        name: String,
        existing: &'static str,
        requested: &'static str,
    },
    /// Reading the device's sysfs attributes failed.
    #[error("TAP {name}: cannot read {}: {source}", .path.display())]
    ReadSysfs {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A sysfs attribute did not hold the expected number.
    #[error("TAP {name}: {} holds {value:?}, expected a number", .path.display())]
    ParseSysfs {
        name: String,
        path: PathBuf,
        value: String,
    },
    /// TUNSETIFF (create or attach one queue) failed.
    #[error("TUNSETIFF on TAP {name} (queue {queue}) failed: {source}{}", iff_hint(.source, .name))]
    SetIff {
        name: String,
        queue: usize,
        #[source]
        source: io::Error,
    },
    /// TUNGETIFF failed.
    #[error("TUNGETIFF on TAP {name} failed: {source}")]
    GetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    /// We attached, but another process had attached first with flags that
    /// we cannot work with (the kernel keeps the first attacher's flags).
    #[error("TAP {name} is already attached by another process with flags {flags:#x}, lacking IFF_NO_PI or IFF_VNET_HDR; stop that process or use another TAP")]
    AttachedFlags { name: String, flags: u32 },
    /// Another process holds queues of this multi-queue TAP: serving it
    /// too would split its traffic between two backends.
    #[error("TAP {name} is already served by another process ({theirs} queue(s) attached besides ours); stop that process or pick another TAP")]
    AttachedElsewhere { name: String, theirs: usize },
    /// TUNSETVNETHDRSZ failed.
    #[error("TUNSETVNETHDRSZ {size} on TAP {name} failed: {source}")]
    SetVnetHdrSize {
        name: String,
        size: i32,
        #[source]
        source: io::Error,
    },
    /// TUNSETOFFLOAD failed (EINVAL: a flag this kernel does not know).
    #[error("TUNSETOFFLOAD {flags:#x} on TAP {name} failed: {source}")]
    SetOffload {
        name: String,
        flags: u32,
        #[source]
        source: io::Error,
    },
    /// TUNSETPERSIST failed.
    #[error("TUNSETPERSIST {persist} on TAP {name} failed: {source}")]
    SetPersist {
        name: String,
        persist: bool,
        #[source]
        source: io::Error,
    },
    /// socket(AF_INET, SOCK_DGRAM) for the interface ioctls failed.
    #[error("TAP {name}: cannot create the AF_INET control socket: {source}")]
    ControlSocket {
        name: String,
        #[source]
        source: io::Error,
    },
    /// SIOCGIFFLAGS / SIOCSIFFLAGS (bringing the link up) failed.
    #[error("TAP {name}: cannot set the link up: {source}")]
    LinkUp {
        name: String,
        #[source]
        source: io::Error,
    },
    /// SIOCSIFHWADDR failed.
    #[error("TAP {name}: cannot set MAC address {mac}: {source}")]
    SetMac {
        name: String,
        mac: String,
        #[source]
        source: io::Error,
    },
    /// SIOCSIFMTU failed.
    #[error("TAP {name}: cannot set MTU {mtu}: {source}")]
    SetMtu {
        name: String,
        mtu: u32,
        #[source]
        source: io::Error,
    },
    /// SIOCSIFTXQLEN failed.
    #[error("TAP {name}: cannot set txqueuelen {len}: {source}")]
    SetTxQueueLen {
        name: String,
        len: u32,
        #[source]
        source: io::Error,
    },
}

fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
            " (is the tun module loaded? modprobe tun)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => " (no permission on /dev/net/tun)",
        _ => "",
    }
}

fn iff_hint(e: &io::Error, name: &str) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => " (need CAP_NET_ADMIN, or be the TAP's owner/group)".into(),
        Some(libc::EBUSY) => {
            format!(" ({name} is single-queue and already attached by another process)")
        }
        Some(libc::EINVAL) => {
            format!(" (the existing {name} has different flags; delete it with ip link del {name})")
        }
        _ => String::new(),
    }
}
