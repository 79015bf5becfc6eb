//! A device's vhost-user socket on the file system: bound so that it
//! appears at its path already listening and already with the owner, group
//! and mode the configuration asks for (no window in which another user
//! could connect), replacing only a stale socket — never a live one, never
//! anything that is not a socket.
//!
//! How: bind in a fresh 0700 directory beside the path (same file system),
//! `chown`/`chmod` the socket there, then `rename` it into place
//! (`RENAME_NOREPLACE` once a stale socket is removed, so a file that
//! appears meanwhile is not clobbered).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Who may connect: owner, group and mode of the socket file. `None`
/// leaves each as the daemon creates it (its user, its group, 0777 minus
/// its umask).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketAccess {
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub mode: Option<u32>,
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
}

/// A user by name or number.
pub fn user_id(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name).map_err(|_| format!("\"{name}\": a NUL byte"))?;
    // SAFETY: `passwd` is plain data (integers and pointers); all-zero is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the name is NUL-terminated,
    // `pw` and `out` are writable, `buf` is writable for its length.
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return Err(format!("no user \"{name}\""));
    }
    Ok(pw.pw_uid)
}

/// A group by name or number.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name).map_err(|_| format!("\"{name}\": a NUL byte"))?;
    // SAFETY: `group` is plain data (integers and pointers); all-zero is a valid value.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `user_id`.
    let r = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return Err(format!("no group \"{name}\""));
    }
    Ok(gr.gr_gid)
}

/// What is at `path` now: nothing, or a stale socket (both may be
/// replaced); anything else is an error that says so.
fn check_replaceable(path: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; left alone (remove it or choose another path)",
                path.display()
            ),
        ));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is served by another process", path.display()),
        ));
    }
    Ok(true)
}

/// Rename `from` to `to`, failing if `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (c_path(from)?, c_path(to)?);
    // SAFETY: both are valid NUL-terminated paths for the call's duration;
    // AT_FDCWD makes them relative to the working directory as usual.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} appeared while the daemon was binding; left alone",
                to.display()
            ),
        ));
    }
    Err(e)
}

/// Bind `path` with `access` (see the module docs).
pub fn bind(path: &Path, access: &SocketAccess) -> io::Result<UnixListener> {
    check_replaceable(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Short, so that the temporary path fits `sun_path` whenever the final one nearly does.
    let staging = parent.join(format!(".vt{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = bind_staged(path, &staging, access);
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

fn bind_staged(path: &Path, staging: &Path, access: &SocketAccess) -> io::Result<UnixListener> {
    let tmp = staging.join("s");
    let listener = UnixListener::bind(&tmp)?;
    if access.owner.is_some() || access.group.is_some() {
        std::os::unix::fs::chown(&tmp, access.owner, access.group)?;
    }
    if let Some(mode) = access.mode {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    }
    // Checked again: the first check was before the (slow) set-up.
    if check_replaceable(path)? {
        std::fs::remove_file(path)?;
    }
    rename_noreplace(&tmp, path)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vt-sock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn binds_with_the_mode_asked_and_leaves_no_staging_directory() {
        let d = tmpdir("mode");
        let p = d.join("a.sock");
        let access = SocketAccess {
            mode: Some(0o640),
            ..SocketAccess::default()
        };
        let l = bind(&p, &access).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        assert!(UnixStream::connect(&p).is_ok());
        drop(l);
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("a.sock")]);
        // A stale socket (no listener) is replaced.
        let l2 = bind(&p, &SocketAccess::default()).unwrap();
        assert!(UnixStream::connect(&p).is_ok());
        // A live one is not.
        let e = bind(&p, &access).unwrap_err();
        assert!(e.to_string().contains("served by another process"), "{e}");
        drop(l2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn never_replaces_what_is_not_a_socket() {
        let d = tmpdir("file");
        let p = d.join("a.sock");
        std::fs::write(&p, b"keep me").unwrap();
        let e = bind(&p, &SocketAccess::default()).unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"keep me");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
