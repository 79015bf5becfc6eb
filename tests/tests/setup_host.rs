//! `tests/apt-sources.sh`, the part of `tests/setup-host.sh` that reads
//! apt's sources, over fixture directories: deb822 only (as on a fresh
//! Debian 12 image), classic `sources.list` only, both, and none. Pure: no
//! root, no network, nothing installed.

use std::fs;
use std::path::Path;
use std::process::Command;

use testkit::TempDir;

/// `bash tests/apt-sources.sh WHAT ETC`: (exit code, stdout, stderr).
fn apt_sources(what: &str, etc: &Path) -> (Option<i32>, String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("apt-sources.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(what)
        .arg(etc)
        .output()
        .expect("running bash");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An apt configuration directory with `files` (path below it, text).
fn etc_apt(files: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("apt");
    fs::create_dir_all(dir.join("sources.list.d")).unwrap();
    for (name, text) in files {
        fs::write(dir.join(name), text).unwrap();
    }
    dir
}

fn mirror(etc: &Path) -> String {
    let (code, out, err) = apt_sources("mirror", etc);
    assert_eq!(code, Some(0), "no mirror found: {err}");
    out
}

fn has_backports(etc: &Path) -> bool {
    let (code, _, err) = apt_sources("has-backports", etc);
    assert!(matches!(code, Some(0 | 1)), "has-backports failed: {err}");
    code == Some(0)
}

/// A fresh Debian 12 cloud image: deb822 only, no sources.list.
const DEB822: &str = "\
# Disabled, and not the mirror.
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://debian.example.com/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.net/debian/ https://debian.example.com/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

#[test]
fn deb822_only_first_debian_uri_of_a_non_security_stanza() {
    let etc = etc_apt(&[
        ("sources.list.d/debian.sources", DEB822),
        // apt ignores files of other names; so do we.
        (
            "sources.list.d/other.sources.disabled-by-farm",
            "Types: deb\nURIs: http://ignored.example/debian\nSuites: bookworm-backports\n",
        ),
    ]);
    assert!(!etc.join("sources.list").exists());
    assert_eq!(mirror(&etc), "http://mirror.example.net/debian");
    assert!(!has_backports(&etc));
}

#[test]
fn deb822_uris_on_continuation_lines_and_backports_stanza() {
    let etc = etc_apt(&[
        (
            "sources.list.d/debian.sources",
            "Types: deb\nURIs:\n http://debian.example.com/debian-security\n https://ftp.example.org/debian\nSuites: bookworm\nComponents: main\n",
        ),
        (
            "sources.list.d/backports.sources",
            "Types: deb\nURIs: https://ftp.example.org/debian\nSuites: bookworm-backports\nComponents: main\n",
        ),
    ]);
    assert_eq!(mirror(&etc), "https://ftp.example.org/debian");
    assert!(has_backports(&etc));
}

#[test]
fn classic_only_skips_security_comments_and_options() {
    let etc = etc_apt(&[(
        "sources.list",
        "# deb http://commented.example/debian bookworm main\n\
         deb http://security.debian.org/debian-security bookworm-security main\n\
         deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://ftp.de.debian.org/debian/ bookworm main\n\
         deb-src http://ftp.de.debian.org/debian bookworm main\n",
    )]);
    assert_eq!(mirror(&etc), "http://ftp.de.debian.org/debian");
    assert!(!has_backports(&etc));
    fs::write(
        etc.join("sources.list.d/backports.list"),
        "deb [ arch=amd64 ] http://ftp.de.debian.org/debian bookworm-backports main\n",
    )
    .unwrap();
    assert!(has_backports(&etc));
}

#[test]
fn both_formats_classic_sources_list_first() {
    let etc = etc_apt(&[
        ("sources.list.d/debian.sources", DEB822),
        (
            "sources.list",
            "deb http://classic.example.com/debian bookworm main\n",
        ),
    ]);
    assert_eq!(mirror(&etc), "http://classic.example.com/debian");
    assert!(!has_backports(&etc));
    // The deb822 mirror when the classic file has none (only security).
    fs::write(
        etc.join("sources.list"),
        "deb http://security.debian.org/debian-security bookworm-security main\n",
    )
    .unwrap();
    assert_eq!(mirror(&etc), "http://mirror.example.net/debian");
}

#[test]
fn no_sources_is_a_clear_error() {
    for etc in [
        etc_apt(&[]),
        etc_apt(&[(
            "sources.list.d/debian.sources",
            "Types: deb\nURIs: http://debian.example.com/debian-security\nSuites: bookworm-security\n",
        )]),
    ] {
        let (code, out, err) = apt_sources("mirror", &etc);
        assert_eq!(code, Some(1), "stdout {out:?}, stderr {err:?}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains("no Debian mirror")
                && err.contains(&format!("{}/sources.list.d/*.sources", etc.display())),
            "the error does not say what was read: {err}"
        );
        assert!(!has_backports(&etc));
    }
    // A missing directory reads as empty, and says so the same way.
    let gone = etc_apt(&[]).path().to_path_buf();
    let (code, _, err) = apt_sources("mirror", &gone);
    assert_eq!(code, Some(1), "{err}");
}
