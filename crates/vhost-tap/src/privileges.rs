//! What the daemon keeps once its devices are open: the capabilities it
//! still needs ([`Needs`]: none, or `CAP_NET_ADMIN` for what it may still
//! do to TAPs, and `CAP_CHOWN` for sockets a reload binds for another
//! owner), and the user and group it runs as (`user`, `group`).
//!
//! Capabilities belong to threads, and a thread starts with its creator's.
//! So [`drop_to`] runs once, in the main thread, after every TAP is open and
//! every socket bound and before any other thread starts (the hook of
//! `Devices::start`): no thread ever has more. The data-path workers then
//! give up even those (`seccomp.rs`).

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use caps::{CapSet, Capability, CapsHashSet};
use log::{info, warn};

use crate::config::DeviceConfig;
use crate::device::Device;

/// A user to run as, from `user` / `--user`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// From the passwd entry (its groups become the supplementary groups).
    pub name: Option<String>,
    pub uid: u32,
    /// The primary group, if the user has a passwd entry.
    pub gid: Option<u32>,
}

/// The daemon-wide privilege settings (top-level keys `user`, `group`,
/// `seccomp`; flags `--user`, `--group`, `--seccomp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Privileges {
    /// Switch to this user once the devices are open.
    pub user: Option<User>,
    /// ... and this group (default: the user's primary group).
    pub group: Option<u32>,
    /// Confine the data-path threads (default on).
    pub seccomp: bool,
}

impl Default for Privileges {
    fn default() -> Privileges {
        Privileges {
            user: None,
            group: None,
            seccomp: true,
        }
    }
}

impl Privileges {
    /// Check that a switch has a group: a uid without a passwd entry needs `group`.
    pub fn check(&self) -> Result<(), String> {
        match &self.user {
            Some(u) if u.gid.is_none() && self.group.is_none() => Err(format!(
                "uid {} has no passwd entry, so no primary group: set `group` (--group) too",
                u.uid
            )),
            _ => Ok(()),
        }
    }
}

/// A user by name or number (a number needs no passwd entry).
pub fn user(s: &str) -> Result<User, String> {
    let by_number = s.parse::<u32>().ok();
    let c = CString::new(s).map_err(|_| format!("\"{s}\": a NUL byte"))?;
    // SAFETY: `passwd` is plain data (integers and pointers); all-zero is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the name is NUL-terminated,
    // `pw` and `out` are writable, `buf` is writable for its length.
    let r = unsafe {
        match by_number {
            Some(uid) => libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out),
            None => libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out),
        }
    };
    if r != 0 || out.is_null() {
        return match by_number {
            Some(uid) => Ok(User {
                name: None,
                uid,
                gid: None,
            }),
            None => Err(format!("no user \"{s}\"")),
        };
    }
    // SAFETY: on success `pw_name` points to a NUL-terminated string in `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned();
    Ok(User {
        name: Some(name),
        uid: pw.pw_uid,
        gid: Some(pw.pw_gid),
    })
}

/// What the daemon may still do once started that takes a capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// A reload (SIGHUP with `--config`) may create, attach and configure
    /// TAPs: `TUNSETIFF`, MTU, MAC, link up, txqueuelen.
    pub reload: bool,
    /// ... and bind sockets for another owner or group: a device had
    /// `socket_owner` or `socket_group` at start.
    pub reload_chown: bool,
    /// An attached TAP gets its flags back at stop (one more `TUNSETIFF`).
    pub attached_tap: bool,
    /// A created TAP's txqueuelen follows the queue mode, set again at a
    /// frontend's connect (`Device::decide_mode_again`).
    pub tun_ring: bool,
}

impl Needs {
    /// From the configuration and the devices just opened.
    pub fn of(reloadable: bool, configs: &[DeviceConfig], devices: &[&Device]) -> Needs {
        Needs {
            reload: reloadable,
            reload_chown: reloadable
                && configs
                    .iter()
                    .any(|d| d.socket_access.owner.is_some() || d.socket_access.group.is_some()),
            attached_tap: devices.iter().any(|d| !d.tap.created()),
            tun_ring: devices.iter().any(|d| d.manages_tun_ring()),
        }
    }

    /// The capabilities to keep, each with why.
    pub fn capabilities(&self) -> Vec<(Capability, &'static str)> {
        let mut v = Vec::new();
        let net_admin = if self.reload {
            Some("a reload creates and configures TAPs")
        } else if self.attached_tap {
            Some("an attached TAP gets its flags back at stop")
        } else if self.tun_ring {
            Some("a created TAP's txqueuelen follows the queue mode")
        } else {
            None
        };
        if let Some(why) = net_admin {
            v.push((Capability::CAP_NET_ADMIN, why));
        }
        if self.reload_chown {
            v.push((
                Capability::CAP_CHOWN,
                "a reload binds sockets with socket_owner/socket_group",
            ));
        }
        v
    }
}

/// Why the privileges could not be lowered (the daemon does not start).
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read the daemon's capabilities: {0}")]
    Read(caps::errors::CapsError),
    #[error("cannot give {} to uid {uid} gid {gid}: {source} (switching user takes CAP_CHOWN, CAP_SETUID and CAP_SETGID: start the daemon as root, or as that user without `user`/`group`)", path.display())]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("cannot switch to {what}: {source} (switching takes CAP_SETUID and CAP_SETGID: start the daemon as root, or as that user without `user`/`group`)")]
    Switch { what: String, source: io::Error },
    #[error("cannot lower the capabilities to [{keep}]: {source}")]
    Set {
        keep: String,
        source: caps::errors::CapsError,
    },
    #[error("the capabilities are [{now}] after lowering them to [{keep}]")]
    Check { keep: String, now: String },
}

/// What [`drop_to`] left, for errors of what a reload tries later.
static LOWERED: OnceLock<String> = OnceLock::new();

/// The user, group and capabilities the daemon kept, once [`drop_to`] ran.
pub fn lowered() -> Option<&'static str> {
    LOWERED.get().map(String::as_str)
}

fn names(set: &CapsHashSet) -> String {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    v.join(", ")
}

fn check(r: libc::c_int, what: &str) -> Result<(), PrivilegeError> {
    if r == 0 {
        return Ok(());
    }
    Err(PrivilegeError::Switch {
        what: what.to_string(),
        source: io::Error::last_os_error(),
    })
}

/// Switch the group, the supplementary groups and the user. glibc applies
/// each call to every thread; there is only this one yet.
fn switch(user: Option<&User>, gid: u32) -> Result<(), PrivilegeError> {
    let group = format!("gid {gid}");
    match user.and_then(|u| u.name.as_deref()) {
        Some(name) => {
            let c = CString::new(name).map_err(|_| PrivilegeError::Switch {
                what: name.into(),
                source: io::ErrorKind::InvalidInput.into(),
            })?;
            // SAFETY: `c` is a NUL-terminated name; initgroups reads the group database.
            let r = unsafe { libc::initgroups(c.as_ptr(), gid) };
            check(r, &format!("the groups of {name}"))?;
        }
        // SAFETY: one gid, read from a live array of one.
        None => check(unsafe { libc::setgroups(1, &gid) }, &group)?,
    }
    // SAFETY: plain set*id calls on integers.
    check(unsafe { libc::setresgid(gid, gid, gid) }, &group)?;
    if let Some(u) = user {
        // SAFETY: as above.
        let r = unsafe { libc::setresuid(u.uid, u.uid, u.uid) };
        check(r, &format!("uid {}", u.uid))?;
    }
    Ok(())
}

/// Lower the daemon's privileges for good: switch to `p.user`/`p.group`
/// (first giving it `own`, the directories the daemon writes in later),
/// and keep only the capabilities `needs` names, in every set (the
/// bounding set too, when it may be changed). Call from the main thread
/// before any other thread exists. Logs what it leaves.
pub fn drop_to(p: &Privileges, needs: &Needs, own: &[&Path]) -> Result<(), PrivilegeError> {
    let held = caps::read(None, CapSet::Permitted).map_err(PrivilegeError::Read)?;
    let wanted = needs.capabilities();
    let keep: CapsHashSet = wanted
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| held.contains(c))
        .collect();
    for (c, why) in &wanted {
        if !held.contains(c) {
            warn!("privileges: the daemon does not hold {c}, which it would keep because {why}: that will fail");
        }
    }
    let set_err = |source| PrivilegeError::Set {
        keep: names(&keep),
        source,
    };

    let switching = p.user.is_some() || p.group.is_some();
    // SAFETY: geteuid/getegid only read this process's credentials.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let uid = p.user.as_ref().map_or(uid, |u| u.uid);
    let gid = p
        .group
        .or_else(|| p.user.as_ref().and_then(|u| u.gid))
        .unwrap_or(gid);
    if switching {
        for path in own {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| {
                PrivilegeError::Chown {
                    path: path.to_path_buf(),
                    uid,
                    gid,
                    source,
                }
            })?;
        }
    }
    // The bounding set first: changing it takes CAP_SETPCAP, which goes next.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for c in caps::runtime::thread_all_supported() {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c).map_err(set_err)?;
            }
        }
    }
    if switching {
        // Keep the permitted set across the uid change (the kernel clears
        // the effective set; raised again below).
        caps::securebits::set_keepcaps(true).map_err(set_err)?;
        switch(p.user.as_ref(), gid)?;
        caps::securebits::set_keepcaps(false).map_err(set_err)?;
    }
    caps::set(None, CapSet::Effective, &keep).map_err(set_err)?;
    caps::set(None, CapSet::Permitted, &keep).map_err(set_err)?;
    caps::clear(None, CapSet::Inheritable).map_err(set_err)?;
    caps::clear(None, CapSet::Ambient).map_err(set_err)?;
    let now = caps::read(None, CapSet::Effective).map_err(PrivilegeError::Read)?;
    if now != keep {
        return Err(PrivilegeError::Check {
            keep: names(&keep),
            now: names(&now),
        });
    }

    let who = match (&p.user, switching) {
        (Some(u), _) => format!(
            "user {} (uid {uid}), gid {gid}",
            u.name.as_deref().unwrap_or("-")
        ),
        (None, true) => format!("uid {uid}, gid {gid}"),
        (None, false) => format!("uid {uid}, gid {gid} (as started)"),
    };
    let _ = LOWERED.set(format!(
        "uid {uid}, gid {gid}, capabilities [{}]",
        names(&keep)
    ));
    if wanted.is_empty() {
        info!("privileges: {who}, no capabilities (nothing after start needs one)");
    } else {
        let list: Vec<String> = wanted
            .iter()
            .filter(|(c, _)| keep.contains(c))
            .map(|(c, why)| format!("{c} ({why})"))
            .collect();
        info!(
            "privileges: {who}, capabilities {}",
            if list.is_empty() {
                "none".into()
            } else {
                list.join(", ")
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_what_is_left_to_do() {
        assert!(Needs::default().capabilities().is_empty());
        let caps = |n: Needs| -> Vec<Capability> {
            n.capabilities().into_iter().map(|(c, _)| c).collect()
        };
        assert_eq!(
            caps(Needs {
                reload: true,
                ..Needs::default()
            }),
            [Capability::CAP_NET_ADMIN]
        );
        assert_eq!(
            caps(Needs {
                reload: true,
                reload_chown: true,
                attached_tap: true,
                tun_ring: true,
            }),
            [Capability::CAP_NET_ADMIN, Capability::CAP_CHOWN]
        );
        for n in [
            Needs {
                attached_tap: true,
                ..Needs::default()
            },
            Needs {
                tun_ring: true,
                ..Needs::default()
            },
        ] {
            assert_eq!(caps(n), [Capability::CAP_NET_ADMIN]);
        }
    }

    #[test]
    fn users_by_name_and_number() {
        let root = user("root").unwrap();
        assert_eq!(
            (root.uid, root.gid, root.name.as_deref()),
            (0, Some(0), Some("root"))
        );
        assert_eq!(user("0").unwrap(), root);
        let nobody = user("4000000000").unwrap();
        assert_eq!((&nobody.name, nobody.gid), (&None, None));
        assert!(user("no-such-user-vt").is_err());
        let p = Privileges {
            user: Some(nobody),
            ..Privileges::default()
        };
        assert!(p.check().unwrap_err().contains("set `group`"));
        assert!(Privileges {
            group: Some(1),
            ..p
        }
        .check()
        .is_ok());
    }
}
