//! The TAP's qdiscs as rtnetlink reports them, and what `auto` makes of
//! them, on real TAPs (this host's defaults: `mq` of `pfifo_fast` on a
//! multi-queue TAP). No `tc` binary is involved in reading: the test uses
//! `tc` only to change the qdiscs.

use std::process::Command;

use testkit::{unique_name, TapGuard};
use vhost_tap::mode::{holder, Holder};
use vhost_tap::qdisc::{QdiscError, Qdiscs};

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn auto_reads_the_qdiscs_of_a_real_tap() {
    let name = unique_name("vq");
    let _cleanup = TapGuard(name.clone());
    run(
        "ip",
        &["tuntap", "add", "dev", &name, "mode", "tap", "multi_queue"],
    );

    let down = Qdiscs::of(&name).unwrap();
    assert_eq!(down.root, None, "a TAP that is down lists no qdisc");
    assert_eq!(holder(&down), Holder::Down);

    run("ip", &["link", "set", &name, "up"]);
    let up = Qdiscs::of(&name).unwrap();
    let root = up.root.clone().expect("a root qdisc once up");
    assert_eq!(root.kind, "mq", "{up:?}");
    assert!(
        !up.children.is_empty(),
        "mq lists its per-queue children: {up:?}"
    );
    assert_eq!(
        holder(&up),
        Holder::Queue {
            kind: "mq of pfifo_fast".into(),
            managed: false
        }
    );

    run("tc", &["qdisc", "replace", "dev", &name, "root", "pfifo"]);
    let fifo = Qdiscs::of(&name).unwrap();
    assert_eq!(fifo.root.map(|q| q.kind).as_deref(), Some("pfifo"));
    assert!(fifo.children.is_empty());

    run("tc", &["qdisc", "replace", "dev", &name, "root", "noqueue"]);
    let nq = Qdiscs::of(&name).unwrap();
    assert!(
        matches!(holder(&nq), Holder::None(ref w) if w.contains("noqueue")),
        "{nq:?}"
    );

    run("ip", &["link", "del", &name]);
    assert!(matches!(
        Qdiscs::of(&name),
        Err(QdiscError::NoInterface(ref n)) if *n == name
    ));
}
