#!/usr/bin/env python3
"""Side-by-side benchmarks of vhost-tap and its peers (see bench/README.md).

Runs every scenario for every system and frontend, R repetitions each
(repetitions interleaved so that a change in machine load hits every system
alike), and writes raw results, a summary table and plots to
bench/results/<timestamp>/. Needs root, the release binaries (bench/run.sh
builds them), dpdk-testpmd, trafgen, tc, taskset and, for plots, matplotlib.
Stdlib only otherwise.
"""

import argparse
import csv
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
# TESTBED.md's reference figure (same harness, this kind of machine; not
# measured in this run): cloud-hypervisor vhost_user_net, host->guest 64 B.
CH_REF_H2G_MPPS = 0.30
CH_REF_H2G_US = 1.65
CH_REF_G2H_MPPS = 0.82

# Placement (2 cores). Every run records where each of its parties went
# (`layout`, and the affinity read back from /proc: `affinity`):
#
# - `fair` (the default): each party where a user would put it. The guest
#   (testpmd's forwarding lcore, vu-guest, the spinner) on CPU 1; the system
#   under test on the other core, CPU 0: the daemon and bare-tap `taskset -c
#   0`, the DPDK peer's forwarding lcore on CPU 0 (`-l 0,1 --main-lcore 1`:
#   its main lcore, which sleeps 1 s between statistics, shares CPU 1). The
#   host→guest generator (trafgen) goes with the guest on CPU 1 (see
#   gen_cpu()). Guest→host has no generator: the guest is the source.
# - `unpinned`: the harness before `fair` (TESTBED.md's): trafgen on CPU 0,
#   the guest on CPU 1, the daemon and bare-tap unpinned, the DPDK peer `-l
#   0,1`, whose forwarding lcore then polls CPU 1, the core a testpmd guest
#   busy-polls.
# - CPUs (`0`, `1`, `0-1`): the daemon and bare-tap `taskset -c` there, the
#   rest as in `unpinned`; the DPDK peer is not run again (its `unpinned`
#   run stands for it).
GEN_CPU = "0"
GUEST_CPU = "1"
BACKEND_CPU = "0"  # fair: the core the guest does not poll
UNPINNED = "unpinned"
FAIR = "fair"


def place(g):
    """A result's placement; runs of the format before --placements were unpinned."""
    return g.get("placement") or UNPINNED


def place_cpus(placement):
    """taskset -c argument of the daemon / bare-tap (Proc(cpus=...)), None to leave it unpinned."""
    if placement == FAIR:
        return BACKEND_CPU
    return None if placement == UNPINNED else placement


def gen_cpu(placement, args=None):
    """The host→guest generator's CPU. `--gen-cpu` overrides; else with
    `fair` the guest's core: both others poll or serve there, and a
    generator on the backend's core would take that core's time from the
    system under test (a polling peer then time-slices with it and forwards
    a tun ring's worth of frames per scheduler slice). Elsewhere CPU 0, as
    the harness always had it."""
    g = getattr(args, "gen_cpu", None) if args is not None else None
    if g and g != "auto":
        return g
    return GUEST_CPU if placement == FAIR else GEN_CPU


def peer_fwd_cpu(placement):
    """The CPU of the DPDK peer's forwarding lcore: its own core with `fair`,
    else lcore 1 of `-l 0,1` (the core a testpmd guest polls)."""
    return BACKEND_CPU if placement == FAIR else "1"


def layout(system, fe, sc, placement, args=None):
    """Where each party of a run is put: {role: text}, for runs.jsonl and the summary."""
    cpus = place_cpus(placement)
    if system == "dpdk-peer":
        c = peer_fwd_cpu(placement)
        sysl = (f"forwarding lcore CPU {c}, main lcore CPU {1 - int(c)} "
                f"(-l 0,1{' --main-lcore 1' if c == '0' else ''})")
    else:
        sysl = "unpinned" if cpus is None else f"CPU {cpus} (taskset -c {cpus})"
    fel = {"testpmd": f"forwarding lcore CPU {GUEST_CPU}, main lcore CPU 0 (-l 0,1)",
           "vu": f"CPU {GUEST_CPU} (taskset)", "spin": f"CPU {GUEST_CPU} (taskset)", "none": "–",
           "vu-bridge": f"CPU {GUEST_CPU} (taskset)" if placement == FAIR else "unpinned",
           "tcg": "QEMU unpinned (2 TCG vCPU threads)"}.get(fe, "?")
    kind = sc.get("kind")
    if kind == "latency":
        genl = "iperf3 and ping unpinned"
    elif kind == "xdp":
        genl = f"trafgen CPU {GEN_CPU} (100 kpps)"
    elif sc["dir"] == "h2g":
        genl = f"trafgen CPU {gen_cpu(placement, args)}"
    else:
        genl = "– (the guest is the source)"
    return {"system": sysl, "frontend": fel, "generator": genl}


def placements_of(agg):
    """Placements present: fair first, unpinned next, the others in run order."""
    seen = []
    for g in agg:
        if place(g) not in seen:
            seen.append(place(g))
    return sorted(seen, key=lambda p: (p != FAIR, p != UNPINNED))


def pinned_any(agg):
    return any(place(g) != UNPINNED for g in agg)


def place_txt(p):
    if p == FAIR:
        return "fair"
    return p if p == UNPINNED else f"CPU {p}"


def gkey(g):
    return g["scenario"], g["system"], g["frontend"], place(g)


def affinity_of(proc):
    """CPUs each thread of proc's session may run on (Cpus_allowed_list, read
    back from /proc: what the placement really did): {comm: cpus}."""
    out = {}
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                s = f.read()
            if int(s[s.rindex(")") + 2:].split()[3]) != proc.pid:  # session id
                continue
        except (OSError, ValueError, IndexError):
            continue
        pid = st.split("/")[2]
        for tst in glob.glob(f"/proc/{pid}/task/*/status"):
            try:
                with open(tst) as f:
                    kv = dict(l.split(":", 1) for l in f if ":" in l)
            except OSError:
                continue
            comm, cpus = kv.get("Name", "?").strip(), kv.get("Cpus_allowed_list", "?").strip()
            k, n = comm, 2
            while k in out and out[k] != cpus:
                k, n = f"{comm}#{n}", n + 1
            out[k] = cpus
    return out


def session_tasks(proc):
    """Thread ids of every process in proc's session."""
    out = []
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                s = f.read()
            if int(s[s.rindex(")") + 2:].split()[3]) == proc.pid:
                out += [int(t) for t in os.listdir(f"/proc/{st.split('/')[2]}/task")]
        except (OSError, ValueError, IndexError):
            continue
    return out


def pin_trafgen(proc, cpu, timeout=3.0):
    """trafgen pins its worker process i to CPU i itself (`-P 1`: CPU 0),
    whatever taskset said: once the worker exists, move every thread of the
    session to `cpu`. Returns False if no worker appeared."""
    want = {int(cpu)}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        tids = session_tasks(proc)
        if len(tids) >= 2:  # the parent and its worker
            time.sleep(0.05)  # the worker pins itself right after the fork
            for t in session_tasks(proc):
                try:
                    os.sched_setaffinity(t, want)
                except OSError:
                    pass
            return True
        time.sleep(0.02)
    return False


def fwd_lcores(proc):
    """testpmd's forwarding lcores, from its `Logical Core N ... forwards` lines."""
    return sorted({int(x) for x in re.findall(r"Logical Core (\d+) \(socket \d+\) forwards", proc.text())})


# --------------------------------------------------------------------------
# processes

class Proc:
    """A child in its own session (so that its children can be stopped
    with it), its output lines kept with their arrival times."""

    def __init__(self, name, argv, logdir, cpus=None, env=None):
        self.name = name
        if cpus is not None:
            argv = ["taskset", "-c", cpus] + argv
        self.argv = argv
        self.log_path = os.path.join(logdir, name + ".log")
        self.log = open(self.log_path, "w")
        self.log.write("$ " + " ".join(argv) + "\n")
        self.log.flush()
        self.lines = []  # (monotonic time, line)
        self.lock = threading.Lock()
        e = dict(os.environ)
        if env:
            e.update(env)
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, env=e,
                                  text=True, errors="replace", bufsize=1)
        self.pid = self.p.pid
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stdout:
            now = time.monotonic()
            with self.lock:
                self.lines.append((now, line.rstrip("\n")))
            self.log.write(line)
        self.log.flush()

    def text(self):
        with self.lock:
            return "\n".join(l for _, l in self.lines)

    def wait_for(self, pattern, timeout):
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if any(rx.search(l) for _, l in self.lines):
                    return True
            if self.p.poll() is not None:
                time.sleep(0.2)
                with self.lock:
                    return any(rx.search(l) for _, l in self.lines)
            time.sleep(0.05)
        return False

    def alive(self):
        return self.p.poll() is None

    def kill_group(self, sig):
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, sig=signal.SIGINT, grace=8):
        if self.p.poll() is None:
            self.kill_group(sig)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill_group(signal.SIGKILL)
                self.p.wait(5)
        else:
            # The leader is gone; children (trafgen's workers) may not be.
            self.kill_group(signal.SIGKILL)
        self.t.join(5)
        self.log.close()
        return self.p.returncode

    # ---- `stats t=.. frames=..` lines (bare-tap, vu-guest)
    def series(self):
        out = []
        with self.lock:
            lines = list(self.lines)
        for _, l in lines:
            if l.startswith("stats "):
                kv = dict(x.split("=", 1) for x in l.split()[1:] if "=" in x)
                try:
                    out.append((float(kv.pop("t")), {k: float(v) for k, v in kv.items()}))
                except ValueError:
                    pass
        return out

    # ---- testpmd --stats-period 1 blocks: per port, cumulative counters
    def testpmd_series(self):
        out = []
        with self.lock:
            lines = list(self.lines)
        cur, port, t = None, None, None
        for when, l in lines:
            m = re.search(r"NIC statistics for port (\d+)", l)
            if m:
                port = int(m.group(1))
                if port == 0 or cur is None:
                    if cur:
                        out.append((t, cur))
                    cur = {}
                continue
            if cur is None:
                continue
            for k, v in re.findall(r"(RX-packets|RX-missed|RX-bytes|RX-errors|RX-nombuf|TX-packets|TX-errors|TX-bytes):\s*(\d+)", l):
                cur[f"p{port}_{k}"] = float(v)
                t = when
        if cur:
            out.append((t, cur))
        return out


def rate_between(series, key, t0, t1):
    """(count delta, seconds) between the first sample at/after t0 and the
    last at/before t1."""
    pts = [(t, v[key]) for t, v in series if key in v and t0 - 0.05 <= t <= t1 + 0.05]
    if len(pts) < 2 or pts[-1][0] - pts[0][0] <= 0:
        return None
    return pts[-1][1] - pts[0][1], pts[-1][0] - pts[0][0]


def proc_cpu(pid):
    """utime+stime (seconds) of the process, and per thread {tid:comm: s}."""
    def one(path):
        with open(path) as f:
            s = f.read()
        comm = s[s.index("(") + 1:s.rindex(")")]
        fields = s[s.rindex(")") + 2:].split()
        return comm, (int(fields[11]) + int(fields[12])) / TICK
    try:
        _, total = one(f"/proc/{pid}/stat")
    except (OSError, ValueError):
        return None, {}
    threads = {}
    for p in glob.glob(f"/proc/{pid}/task/*/stat"):
        try:
            comm, s = one(p)
            threads[f"{comm}#{p.split('/')[4]}"] = s
        except (OSError, ValueError):
            pass
    return total, threads


def tap_stats(tap):
    out = {}
    for k in ("tx_packets", "tx_dropped", "rx_packets", "rx_bytes", "tx_bytes", "rx_dropped"):
        try:
            with open(f"/sys/class/net/{tap}/statistics/{k}") as f:
                out[k] = int(f.read())
        except OSError:
            pass
    return out


def qdisc_stats(tap):
    try:
        s = subprocess.run(["tc", "-s", "qdisc", "show", "dev", tap], capture_output=True,
                           text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+) requeues (\d+)\)", s)
    if not m:
        return {}
    return {"qdisc_sent_pkts": int(m.group(2)), "qdisc_dropped": int(m.group(3)),
            "qdisc_requeues": int(m.group(5))}


# The daemon's and vu-bridge's counter reports: one JSON object per line
# after these tags (the human `counters:` lines beside them are not read).
DAEMON_JSON_TAG = "counters-json "
BRIDGE_JSON_TAG = "vu-bridge: counters-json "


def json_reports(text, tag):
    """Every JSON object that follows `tag` on a line of `text`, in order;
    a line cut off mid-report (a crash) is skipped."""
    out = []
    for line in text.splitlines():
        i = line.find(tag)
        if i < 0:
            continue
        try:
            out.append(json.loads(line[i + len(tag):]))
        except ValueError:
            pass
    return out


def signal_reports(text, tag):
    """The reports asked for with SIGUSR1 (not those at a disconnect or exit)."""
    return [r for r in json_reports(text, tag) if r.get("event") == "signal"]


def new_signal_report(proc, tag, timeout):
    """SIGUSR1 to proc, then its new report; None if none came in time."""
    before = len(signal_reports(proc.text(), tag))
    try:
        proc.p.send_signal(signal.SIGUSR1)
    except ProcessLookupError:
        return None

    def new():
        r = signal_reports(proc.text(), tag)
        return r[-1] if len(r) > before else None
    return wait_until(new, timeout, 0.02)


def daemon_counters(proc, timeout=5.0):
    """SIGUSR1, then the new report: summed over queues {counter: value}."""
    r = new_signal_report(proc, DAEMON_JSON_TAG, timeout)
    return parse_counters(r) if r else {}


def parse_counters(report):
    """A daemon device report (JSON object) as {counter: value} summed over
    its queue pairs."""
    out = {}
    for q in report.get("queues", []):
        for k, v in q.items():
            if k != "queue" and isinstance(v, int):
                out[k] = out.get(k, 0) + v
    return out


def is_drop(k):
    """A frame the daemon lost for a reason other than an AQM decision."""
    return "dropped" in k


def is_aqm_drop(k):
    """A CoDel / overlimit decision of the fq-codel queue mode (by design)."""
    return "_aqm_" in k and k.endswith("_drops")


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


# --------------------------------------------------------------------------
# systems, frontends, generators

class Ctx:
    def __init__(self, args, outdir):
        self.args = args
        self.outdir = outdir
        self.bin = args.bin
        self.seq = 0

    def uniq(self, p):
        self.seq += 1
        return f"{p}{os.getpid() % 1000}{self.seq}"


def trafgen_conf(path, size):
    # eth 14 + ipv4 20 + udp 8 + fill = size bytes (no FCS)
    fill = max(0, size - 42)
    with open(path, "w") as f:
        f.write("{ eth(da=52:54:00:00:00:02, sa=02:00:00:00:00:01, type=0x0800), "
                "ipv4(saddr=198.18.40.1, daddr=198.18.40.2), "
                f"udp(sp=dinc(1024,1087), dp=9), fill(0x41, {fill}) }}\n")


def start_system(ctx, system, sc, logdir, tap, sock, placement=UNPINNED):
    """Returns (Proc, ok) once it listens / has its TAP. placement pins the
    daemon and bare-tap (place_cpus); the DPDK peer's forwarding lcore goes
    to peer_fwd_cpu (its own core with `fair`, else lcore 1 of -l 0,1)."""
    q = sc["queues"]
    cpus = place_cpus(placement)
    if system.startswith("vhost-tap"):
        mode = "fq-codel" if system.endswith("fq-codel") else "backpressure"
        argv = [os.path.join(ctx.bin, "vhost-tap"), "--socket", sock, "--tap", tap,
                "--mode", mode, "--queues", str(q)]
        p = Proc("system", argv, logdir, env={"RUST_LOG": "info"}, cpus=cpus)
        ok = p.wait_for(r"listening on", 10)
        return p, ok
    if system == "dpdk-peer":
        # testpmd forwards on every lcore but the main one: with the main
        # lcore on CPU 1, the forwarding lcore is lcore 0 on CPU 0.
        main = ["--main-lcore", "1"] if peer_fwd_cpu(placement) == "0" else []
        argv = ["stdbuf", "-oL", "dpdk-testpmd", "-l", "0,1"] + main + ["--no-pci", "--no-huge", "-m", "512",
                "--file-prefix", ctx.uniq("bp"),
                "--vdev", f"net_vhost0,iface={sock},queues={q}",
                "--vdev", f"net_tap0,iface={tap}",
                "--", "--total-num-mbufs=16384", "--forward-mode=io", "--stats-period", "1",
                f"--rxq={q}", f"--txq={q}"]
        p = Proc("system", argv, logdir)
        end = time.monotonic() + 20
        while time.monotonic() < end and not (os.path.exists(sock) and os.path.exists(f"/sys/class/net/{tap}")):
            time.sleep(0.1)
        return p, os.path.exists(sock)
    if system in ("bare", "bare-cold", "bare-uring"):
        mode = "read" if sc["dir"] == "h2g" else "write"
        if system == "bare-uring":
            mode = "read-uring"
        argv = [os.path.join(ctx.bin, "bare-tap"), "--tap", tap, "--mode", mode, "--queues", str(q),
                "--size", str(sc["size"])]
        if sc.get("gso"):
            argv.append("--gso")
        if system == "bare-cold":
            # Writes: 1024 buffers (a TX ring's worth); reads: 16384 2 KiB
            # buffers, the size of the testpmd frontend's mbuf pool.
            argv += ["--buffers", "1024" if sc["dir"] == "g2h" else "16384"]
        p = Proc("system", argv, logdir, cpus=cpus)
        return p, p.wait_for(r"^ready", 10)
    raise ValueError(system)


def start_frontend(ctx, fe, system, sc, logdir, sock, rate=None):
    q = sc["queues"]
    if fe == "testpmd":
        mode = "rxonly" if sc["dir"] == "h2g" else "txonly"
        argv = ["stdbuf", "-oL", "dpdk-testpmd", "-l", "0,1", "--no-pci", "--no-huge", "-m", "512",
                "--file-prefix", ctx.uniq("bf"),
                "--vdev", f"net_virtio_user0,path={sock},queues={q},queue_size=1024",
                "--", "--total-num-mbufs=16384", "--stats-period", "1",
                f"--forward-mode={mode}", f"--txpkts={sc['size']}", f"--rxq={q}", f"--txq={q}"]
        p = Proc("frontend", argv, logdir)
        return p, p.wait_for(r"Port statistics", 25)
    if fe == "spin":
        # No guest: a process busy-polling the frontend's CPU, as testpmd's
        # forwarding lcore does, so that a bare loop shares its core the way
        # a backend beside a polling guest does.
        p = Proc("frontend", ["bash", "-c", "echo ready; while :; do :; done"], logdir, cpus=GUEST_CPU)
        return p, p.wait_for(r"^ready", 5)
    if fe == "vu":
        argv = [os.path.join(ctx.bin, "vu-guest"), "--socket", sock,
                "--mode", "rx" if sc["dir"] == "h2g" else "tx", "--queues", str(q),
                "--size", str(sc["size"])]
        if sc.get("gso"):
            argv.append("--gso")
        if rate:
            argv += ["--rate", str(int(rate))]
        p = Proc("frontend", argv, logdir, cpus=GUEST_CPU)
        return p, p.wait_for(r"^ready", 20)
    raise ValueError(fe)


def all_cpu():
    """utime+stime (s) of every user process now: {pid: (comm, session, s)}
    (kernel threads, children of kthreadd, left out)."""
    out = {}
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                x = f.read()
            fields = x[x.rindex(")") + 2:].split()
            if int(fields[1]) == 2 or st == "/proc/2/stat":
                continue
            out[int(st.split("/")[2])] = (x[x.index("(") + 1:x.rindex(")")], int(fields[3]),
                                          (int(fields[11]) + int(fields[12])) / TICK)
        except (OSError, ValueError, IndexError):
            continue
    return out


def other_load(s0, s1, ours, win):
    """CPU % of the processes that are not this run's (the machine is shared:
    other engineers' builds and tests), and the three busiest by name."""
    by = {}
    for pid, (comm, sid, c1) in s1["all"].items():
        if sid in ours or pid in ours or pid == os.getpid() or pid not in s0["all"]:
            continue
        d = c1 - s0["all"][pid][2]
        if d > 0:
            by[comm] = by.get(comm, 0) + d
    top = sorted(by.items(), key=lambda kv: -kv[1])[:3]
    return round(100 * sum(by.values()) / win, 1), {k: round(100 * v / win, 1) for k, v in top}


def session_cpu(proc):
    """utime+stime (s) of the live processes of proc's session."""
    tot = 0.0
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                x = f.read()
            fields = x[x.rindex(")") + 2:].split()
            if int(fields[3]) == proc.pid:
                tot += (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, ValueError, IndexError):
            continue
    return tot


def snapshot(sys_proc, system, tap, others=()):
    s = {"t": time.monotonic()}
    s["all"] = all_cpu()
    s["others"] = {p.name: session_cpu(p) for p in others if p is not None}
    cpu, threads = proc_cpu(sys_proc.pid)
    s["cpu"] = cpu
    s["threads"] = threads
    s.update(tap_stats(tap))
    s.update(qdisc_stats(tap))
    if system.startswith("vhost-tap"):
        s["daemon"] = daemon_counters(sys_proc)
    s["t_end"] = time.monotonic()
    return s


def record_affinity(res, sp, fp, gen, system, fe):
    """What the placement really did: each party's threads and the CPUs they
    may run on, and testpmd's forwarding lcores (peer and frontend)."""
    aff = {"system": affinity_of(sp)}
    if fp is not None:
        aff["frontend"] = affinity_of(fp)
    if gen is not None:
        aff["generator"] = affinity_of(gen)
    res["affinity"] = aff
    if system == "dpdk-peer":
        res["peer_fwd_lcores"] = fwd_lcores(sp)
    if fe == "testpmd" and fp is not None:
        res["frontend_fwd_lcores"] = fwd_lcores(fp)


def run_name(sc, system, fe, rep, placement):
    """The run's log directory name (unpinned: as before --placements)."""
    return f"{sc['id']}__{system}__{fe}__r{rep}" + (
        "" if placement == UNPINNED else "__fair" if placement == FAIR else f"__cpu{placement}")


def one_run(ctx, sc, system, fe, rep, rate=None, placement=UNPINNED):
    a = ctx.args
    name = run_name(sc, system, fe, rep, placement)
    logdir = os.path.join(ctx.outdir, "logs", name)
    os.makedirs(logdir, exist_ok=True)
    tap = ctx.uniq("bt")
    sock = os.path.join(logdir, "vhost.sock")
    res = {"scenario": sc["id"], "dir": sc["dir"], "size": sc["size"], "gso": bool(sc.get("gso")),
           "queues": sc["queues"], "system": system, "frontend": fe, "placement": placement, "rep": rep,
           "layout": layout(system, fe, sc, placement, a),
           "duration": a.duration, "slow_rate": rate, "ok": False, "error": None}
    procs = []
    gen = None
    try:
        sp, ok = start_system(ctx, system, sc, logdir, tap, sock, placement)
        procs.append(sp)
        if not ok:
            raise RuntimeError(f"{system} did not start:\n{sp.text()[-2000:]}")
        fp = None
        if fe != "none":
            fp, ok = start_frontend(ctx, fe, system, sc, logdir, sock, rate)
            procs.append(fp)
            if not ok:
                raise RuntimeError(f"frontend {fe} did not connect:\n{fp.text()[-2000:]}")
            if fe != "spin" and system.startswith("vhost-tap") and not sp.wait_for(r"guest acked features", 10):
                raise RuntimeError("daemon saw no feature negotiation")
        time.sleep(0.5)
        if sc["dir"] == "h2g":
            conf = os.path.join(logdir, "udp.trafgen")
            trafgen_conf(conf, sc["size"])
            gen = Proc("trafgen", ["trafgen", "--dev", tap, "--conf", conf, "-P", "1",
                                   "--no-sock-mem", "-q"], logdir, cpus=gen_cpu(placement, a))
            procs.append(gen)
            pin_trafgen(gen, gen_cpu(placement, a))
        time.sleep(a.warmup)
        s0 = snapshot(sp, system, tap, (fp, gen))
        record_affinity(res, sp, fp, gen, system, fe)
        perf = None
        if a.perf and system.startswith("vhost-tap") and rep == 0:
            pdata = os.path.join(logdir, "perf.data")
            perf = subprocess.Popen(["perf", "record", "-g", "-F", "999", "-p", str(sp.pid), "-o", pdata,
                                     "--", "sleep", str(a.duration)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(a.duration)
        s1 = snapshot(sp, system, tap, (fp, gen))
        # A process that died in the window makes the figures meaningless
        # (trafgen, for one, exits when a TX ring flush returns EAGAIN).
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited during the window (code {p.p.returncode}):\n"
                                   f"{p.text()[-600:]}")
        if perf:
            perf.wait(30)
            rep_txt = subprocess.run(["perf", "report", "-i", pdata, "--no-children", "--stdio",
                                      "--percent-limit", "0.7", "-g", "none", "--sort", "symbol"],
                                     capture_output=True, text=True).stdout
            with open(os.path.join(logdir, "perf-report.txt"), "w") as f:
                f.write(rep_txt)
            res["perf_report"] = os.path.relpath(os.path.join(logdir, "perf-report.txt"), ctx.outdir)
        t0, t1 = s0["t_end"], s1["t"]
        win = t1 - t0
        res["window_s"] = win
        # frames delivered
        if sc["dir"] == "h2g":
            if fe in ("none", "spin"):
                r = rate_between(sp.series(), "frames", t0, t1)
                rb = rate_between(sp.series(), "bytes", t0, t1)
            elif fe == "vu":
                r = rate_between(fp.series(), "frames", t0, t1)
                rb = rate_between(fp.series(), "bytes", t0, t1)
            else:
                ser = fp.testpmd_series()
                r = rate_between(ser, "p0_RX-packets", t0, t1)
                rb = rate_between(ser, "p0_RX-bytes", t0, t1)
            if not r:
                raise RuntimeError("no delivery samples in the window")
            res["pps"] = r[0] / r[1]
            res["bps"] = 8 * rb[0] / rb[1] if rb else None
        else:
            res["pps"] = (s1.get("rx_packets", 0) - s0.get("rx_packets", 0)) / win
            res["bps"] = 8 * (s1.get("rx_bytes", 0) - s0.get("rx_bytes", 0)) / win
            if fe == "vu":
                r = rate_between(fp.series(), "frames", t0, t1)
                res["sent_pps"] = r[0] / r[1] if r else None
            elif fe == "testpmd":
                r = rate_between(fp.testpmd_series(), "p0_TX-packets", t0, t1)
                res["sent_pps"] = r[0] / r[1] if r else None
            elif fe in ("none", "spin"):
                r = rate_between(sp.series(), "frames", t0, t1)
                res["sent_pps"] = r[0] / r[1] if r else None
        frames = res["pps"] * win
        cpu = (s1["cpu"] or 0) - (s0["cpu"] or 0)
        res["cpu_s"] = cpu
        res["cpu_pct"] = 100 * cpu / win
        res["us_per_frame"] = 1e6 * cpu / frames if frames > 0 else None
        res["threads_cpu_pct"] = {k: round(100 * (v - s0["threads"].get(k, 0)) / win, 1)
                                  for k, v in s1["threads"].items()
                                  if v - s0["threads"].get(k, 0) > 0}
        # The machine is shared: how busy each CPU was, what our other
        # parties used, and what is left over (someone else's load).
        res["parties_cpu_pct"] = {n: round(100 * (v - s0["others"].get(n, 0)) / win, 1)
                                  for n, v in s1["others"].items()}
        res["other_load_pct"], res["other_load_top"] = other_load(s0, s1, {p.pid for p in procs}, win)
        # where frames went (per second, over the window)
        d = lambda k: (s1.get(k, 0) - s0.get(k, 0)) / win
        res["tap_tx_pps"] = d("tx_packets")          # into the tun ring (host->guest)
        res["tun_tail_drops_ps"] = d("tx_dropped")   # tun ring full
        res["tap_rx_dropped_ps"] = d("rx_dropped")
        res["qdisc_drops_ps"] = d("qdisc_dropped")
        res["qdisc_sent_pps"] = d("qdisc_sent_pkts")
        if sc["dir"] == "h2g":
            res["offered_pps"] = d("qdisc_sent_pkts") + d("qdisc_dropped")
        drops_from(res, s0, s1, win)
        if "daemon" in s1:
            res["ring_high_water"] = s1["daemon"].get("rx_ring_high_water")
        if fe == "testpmd":
            r = rate_between(fp.testpmd_series(), "p0_RX-missed", t0, t1)
            res["guest_drops_ps"] = r[0] / r[1] if r else None
        elif fe == "vu" and sc["dir"] == "h2g":
            r = rate_between(fp.series(), "rx_malformed", t0, t1)
            res["guest_drops_ps"] = r[0] / r[1] if r else None
        if system == "dpdk-peer":
            ser = sp.testpmd_series()
            # io forwarding: port 0 = vhost (guest side), port 1 = tap
            if sc["dir"] == "h2g":
                rin = rate_between(ser, "p1_RX-packets", t0, t1)
                rout = rate_between(ser, "p0_TX-packets", t0, t1)
            else:
                rin = rate_between(ser, "p0_RX-packets", t0, t1)
                rout = rate_between(ser, "p1_TX-packets", t0, t1)
            if rin and rout:
                res["peer_drops_ps"] = max(0.0, rin[0] / rin[1] - rout[0] / rout[1])
        res["ok"] = True
    except Exception as e:  # noqa: BLE001 - a failed run is recorded, the benchmark goes on
        res["error"] = str(e)[-3000:]
    finally:
        for p in reversed(procs):
            p.stop(signal.SIGINT if p.name != "system" or system != "vhost-tap" else signal.SIGTERM)
        subprocess.run(["ip", "link", "del", tap], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        for d in glob.glob("/var/run/dpdk/bp*") + glob.glob("/var/run/dpdk/bf*"):
            if os.path.basename(d).startswith(("bp" + str(os.getpid() % 1000), "bf" + str(os.getpid() % 1000))):
                shutil.rmtree(d, ignore_errors=True)
        if os.path.exists(sock):
            os.unlink(sock)
    return res


# --------------------------------------------------------------------------
# helpers of the two scenarios with a real IP stack in the "guest"
# (latency-slow: vu-bridge into a network namespace; xdp-tcg: a TCG guest)

# Host addresses 198.18.X.1/24 (and guest .2) with X in this range: the e2e
# tests use 110-112 and 200-249, the other scenarios no host address at all.
SUBNETS = range(160, 200)


def run_quiet(argv, timeout=20):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 1, "", str(e))


def run_ok(argv, timeout=20):
    r = run_quiet(argv, timeout)
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {(r.stdout + r.stderr).strip()[-500:]}")
    return r.stdout


def free_subnet():
    """A 198.18.X.0/24 (X in SUBNETS) that no address or route of this host uses."""
    addrs = sh("ip -o -4 addr show")
    routes = sh("ip -4 route show table all")
    n = len(SUBNETS)
    for i in range(n):
        x = SUBNETS[(os.getpid() + i) % n]
        p = f"198.18.{x}."
        if p not in addrs and p not in routes:
            return x
    raise RuntimeError(f"no free 198.18.{SUBNETS[0]}-{SUBNETS[-1]}.0/24 subnet on this host")


def host_addr(tap, cidr):
    """The host side of the TAP: address, link up, no IPv6 chatter."""
    run_quiet(["sysctl", "-qw", f"net.ipv6.conf.{tap}.disable_ipv6=1"])
    run_ok(["ip", "addr", "add", cidr, "dev", tap])
    run_ok(["ip", "link", "set", tap, "up"])


def route_check(tap, ip):
    """Traffic to ip must leave through our TAP, nowhere else."""
    out = run_ok(["ip", "-o", "route", "get", ip])
    if f" dev {tap} " not in out + " ":
        raise RuntimeError(f"{ip} is not routed through {tap}: {out.strip()}")


def wait_until(f, timeout, step=0.1):
    end = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() >= end:
            return None
        time.sleep(step)


def parse_ping(text):
    """RTTs (ms) of `ping` output, (transmitted, received)."""
    rtts = [float(m) for m in re.findall(r"time=([0-9.]+) ms", text)]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    tx, rx = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return rtts, tx, rx


def percentile(v, p):
    """Nearest-rank percentile (as the e2e queueing test); None if empty."""
    if not v:
        return None
    s = sorted(v)
    rank = int(-(-p * len(s) // 100))  # ceil
    return s[min(max(rank, 1), len(s)) - 1]


def iperf3_streams(path):
    """Per-stream receiver bit/s of an `iperf3 -J` client run."""
    try:
        with open(path) as f:
            j = json.load(f)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"iperf3 JSON {path}: {e}")
    if j.get("error"):
        raise RuntimeError(f"iperf3: {j['error']}")
    streams = (j.get("end") or {}).get("streams") or []
    if not streams:
        raise RuntimeError("iperf3 JSON has no end.streams")
    return [s["receiver"]["bits_per_second"] for s in streams]


def bridge_counters(proc, timeout=5.0):
    """vu-bridge's counters now: SIGUSR1, then its new JSON report
    ({counter: value}; its `event` left out)."""
    r = new_signal_report(proc, BRIDGE_JSON_TAG, timeout)
    return {k: v for k, v in r.items() if k != "event"} if r else {}


def ns_tap_stats(ns, dev):
    """Statistics of a device inside network namespace ns."""
    out = run_quiet(["ip", "netns", "exec", ns, "sh", "-c",
                     f"cd /sys/class/net/{dev}/statistics && grep . rx_packets tx_packets rx_dropped tx_dropped"]).stdout
    r = {}
    for line in out.splitlines():
        k, _, v = line.partition(":")
        if v.strip().isdigit():
            r[k] = int(v)
    return r


def drops_from(res, s0, s1, win):
    """Daemon counter deltas, drops by reason, AQM decisions, into res."""
    if "daemon" not in s1:
        return
    c0, c1 = s0["daemon"], s1["daemon"]
    res["daemon_counters"] = {k: c1[k] - c0.get(k, 0) for k in c1
                              if not k.endswith("high_water") and not k.startswith("rx_aqm_backlog")
                              and k != "rx_aqm_flows"}
    res["daemon_drops"] = {k: v for k, v in res["daemon_counters"].items() if is_drop(k) and v}
    res["daemon_drops_total"] = sum(v for k, v in res["daemon_counters"].items() if is_drop(k))
    res["aqm_drops"] = {k: v for k, v in res["daemon_counters"].items() if is_aqm_drop(k) and v}
    res["aqm_drops_total"] = sum(v for k, v in res["daemon_counters"].items() if is_aqm_drop(k))
    res["aqm_drops_ps"] = res["aqm_drops_total"] / win
    res["ecn_marks"] = res["daemon_counters"].get("rx_aqm_ecn_marks")
    res["ring_high_water"] = c1.get("rx_ring_high_water")


def window_figures(res, s0, s1):
    """CPU and kernel drop figures of the system under test between two snapshots."""
    win = s1["t"] - s0["t_end"]
    res["window_s"] = win
    cpu = (s1["cpu"] or 0) - (s0["cpu"] or 0)
    res["cpu_s"] = cpu
    res["cpu_pct"] = 100 * cpu / win
    res["threads_cpu_pct"] = {k: round(100 * (v - s0["threads"].get(k, 0)) / win, 1)
                              for k, v in s1["threads"].items() if v - s0["threads"].get(k, 0) > 0}
    d = lambda k: s1.get(k, 0) - s0.get(k, 0)
    res["tap_tx_packets"] = d("tx_packets")
    res["tap_tx_pps"] = d("tx_packets") / win
    res["tun_tail_drops"] = d("tx_dropped")
    res["tun_tail_drops_ps"] = d("tx_dropped") / win
    res["qdisc_drops"] = d("qdisc_dropped")
    res["qdisc_drops_ps"] = d("qdisc_dropped") / win
    res["offered_pps"] = (d("qdisc_sent_pkts") + d("qdisc_dropped")) / win
    drops_from(res, s0, s1, win)
    return win


def cleanup_dpdk_dirs():
    pre = str(os.getpid() % 1000)
    for d in glob.glob("/var/run/dpdk/bp*") + glob.glob("/var/run/dpdk/bf*"):
        if os.path.basename(d).startswith(("bp" + pre, "bf" + pre)):
            shutil.rmtree(d, ignore_errors=True)


def stop_all(procs, system):
    for p in reversed(procs):
        try:
            p.stop(signal.SIGTERM if p.name in ("system", "bridge", "qemu") and system != "dpdk-peer"
                   else signal.SIGINT)
        except Exception as e:  # noqa: BLE001 - go on stopping the others
            print(f"bench: stopping {p.name} (pid {p.pid}): {e}", file=sys.stderr)


# --------------------------------------------------------------------------
# latency-slow: ping under bulk TCP load through a slow guest (vu-bridge)

def latency_run(ctx, sc, system, rep, placement=UNPINNED):
    """host stack → system's TAP → system → vu-bridge (rate-limited) → TAP2 in
    a netns (Linux stack): N bulk TCP flows (iperf3 -C cubic) host → netns
    and a ping every --ping-interval s, as tests/tests/queueing.rs does."""
    a = ctx.args
    fe = "vu-bridge"
    name = run_name(sc, system, fe, rep, placement)
    logdir = os.path.join(ctx.outdir, "logs", name)
    os.makedirs(logdir, exist_ok=True)
    tap, tap2, ns = ctx.uniq("bt"), ctx.uniq("bb"), ctx.uniq("bns")
    sock = os.path.join(logdir, "vhost.sock")
    res = {"scenario": sc["id"], "kind": "latency", "dir": "h2g", "size": 1514, "gso": False, "queues": 1,
           "system": system, "frontend": fe, "placement": placement, "rep": rep, "duration": a.duration,
           "layout": layout(system, fe, sc, placement, a), "omit_s": a.omit, "rate_mbit": a.slow_mbit, "flows_n": a.flows, "cc": a.cc,
           "ping_interval_s": a.ping_interval,
           "ok": False, "error": None}
    procs = []
    ns_made = False
    try:
        bridge_bin = os.path.join(ctx.bin, "vu-bridge")
        if not os.path.exists(bridge_bin):
            raise RuntimeError(f"{bridge_bin} is missing (cargo build --release -p vu-driver --bins)")
        sp, ok = start_system(ctx, system, sc, logdir, tap, sock, placement)
        procs.append(sp)
        if not ok:
            raise RuntimeError(f"{system} did not start:\n{sp.text()[-2000:]}")
        x = free_subnet()
        hip, gip = f"198.18.{x}.1", f"198.18.{x}.2"
        res["subnet"] = f"198.18.{x}.0/24"
        run_ok(["ip", "netns", "add", ns])
        ns_made = True
        run_quiet(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                   "net.ipv6.conf.default.disable_ipv6=1"])
        br = Proc("bridge", [bridge_bin, "--socket", sock, "--tap", tap2, "--netns", ns,
                             "--addr", f"{gip}/24", "--rate-mbit", str(a.slow_mbit),
                             "--rx-buffers", str(a.rx_buffers)], logdir,
                  cpus=GUEST_CPU if placement == FAIR else None)
        procs.append(br)
        if not br.wait_for(r"vu-bridge: ready", 20):
            raise RuntimeError(f"vu-bridge did not start:\n{br.text()[-2000:]}")
        if system.startswith("vhost-tap") and not sp.wait_for(r"guest acked features", 10):
            raise RuntimeError("daemon saw no feature negotiation")
        if not wait_until(lambda: os.path.exists(f"/sys/class/net/{tap}"), 10):
            raise RuntimeError(f"no TAP {tap}")
        host_addr(tap, f"{hip}/24")
        route_check(tap, gip)
        if not wait_until(lambda: run_quiet(["ping", "-c", "1", "-W", "1", "-n", "-q", gip]).returncode == 0, 20):
            raise RuntimeError(f"{gip} does not answer through {system} and vu-bridge:\n{br.text()[-2000:]}")
        srv = Proc("iperf3-server", ["ip", "netns", "exec", ns, "iperf3", "-s", "-p", "5201", "-B", gip], logdir)
        procs.append(srv)
        if not wait_until(lambda: "5201" in run_quiet(["ip", "netns", "exec", ns, "ss", "-Hltn",
                                                        "sport = :5201"]).stdout, 10):
            raise RuntimeError(f"iperf3 server did not listen in {ns}:\n{srv.text()[-1000:]}")
        jpath = os.path.join(logdir, "iperf3.json")
        dur = max(2, int(round(a.duration)))
        omit = max(0, int(round(a.omit)))
        cli = Proc("iperf3-client", ["iperf3", "-c", gip, "-p", "5201", "-J", "--logfile", jpath,
                                     "-C", a.cc, "-P", str(a.flows), "-t", str(dur), "-O", str(omit)], logdir)
        procs.append(cli)
        t_cli = time.monotonic()
        time.sleep(omit + 0.3)
        tap2_0 = ns_tap_stats(ns, tap2)
        b0 = bridge_counters(br)
        s0 = snapshot(sp, system, tap)
        record_affinity(res, sp, br, None, system, fe)
        count = max(10, int((dur - 0.7) / a.ping_interval))
        ping = Proc("ping", ["ping", "-n", "-i", str(a.ping_interval), "-W", "2", "-c", str(count), gip], logdir)
        procs.append(ping)
        try:
            ping.p.wait(dur + 20)
        except subprocess.TimeoutExpired:
            raise RuntimeError("ping did not end")
        s1 = snapshot(sp, system, tap)
        tap2_1 = ns_tap_stats(ns, tap2)
        b1 = bridge_counters(br)
        res["bridge"] = {k: v if k.endswith("high_water") or k in ("held", "rx_buffers_posted") else v - b0.get(k, 0)
                         for k, v in b1.items()}
        try:
            cli.p.wait(max(5, t_cli + omit + dur + 30 - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"iperf3 client did not end:\n{cli.text()[-1000:]}")
        ping.t.join(5)
        flows = [b / 1e6 for b in iperf3_streams(jpath)]
        rtts, ptx, prx = parse_ping(ping.text())
        if not rtts:
            raise RuntimeError(f"no ping reply under load:\n{ping.text()[-1000:]}")
        win = window_figures(res, s0, s1)
        res["ping_sent"], res["ping_recv"] = ptx, prx
        res["ping_loss_pct"] = 100 * (ptx - min(prx, ptx)) / ptx if ptx else None
        res["ping_p50_ms"] = percentile(rtts, 50)
        res["ping_p99_ms"] = percentile(rtts, 99)
        res["ping_max_ms"] = max(rtts)
        res["ping_min_ms"] = min(rtts)
        res["flows_mbps"] = [round(f, 3) for f in flows]
        res["goodput_mbps"] = sum(flows)
        res["flow_spread_pct"] = 100 * (max(flows) / min(flows) - 1) if min(flows) > 0 else None
        res["tap2_rx_dropped"] = tap2_1.get("rx_dropped", 0) - tap2_0.get("rx_dropped", 0)
        res["tap2_tx_dropped"] = tap2_1.get("tx_dropped", 0) - tap2_0.get("tx_dropped", 0)
        # frames delivered to the slow guest over the window (the bridge's
        # RX, written to TAP2 at its rate)
        res["pps"] = res["bridge"].get("rx_frames", 0) / win
        res["bps"] = 8 * res["bridge"].get("rx_bytes", 0) / win
        if system == "dpdk-peer":
            ser = sp.testpmd_series()
            rin = rate_between(ser, "p1_RX-packets", s0["t_end"], s1["t"])
            rout = rate_between(ser, "p0_TX-packets", s0["t_end"], s1["t"])
            if rin and rout:
                res["peer_drops_ps"] = max(0.0, rin[0] / rin[1] - rout[0] / rout[1])
        res["ok"] = True
    except Exception as e:  # noqa: BLE001 - a failed run is recorded, the benchmark goes on
        res["error"] = str(e)[-3000:]
    finally:
        stop_all(procs, system)
        if ns_made:
            run_quiet(["ip", "netns", "del", ns])
        for dev in (tap2, tap):
            if os.path.exists(f"/sys/class/net/{dev}"):
                run_quiet(["ip", "link", "del", dev])
        cleanup_dpdk_dirs()
        if os.path.exists(sock):
            os.unlink(sock)
    return res


# --------------------------------------------------------------------------
# xdp-tcg: host trafgen → daemon → TCG guest running `xdp-bench drop`
# (tests/tests/vm_floods.rs, xdp_flood)

XDP_GUEST_SCRIPT = r"""
# Foreground: a background job of a non-interactive shell ignores SIGINT.
( i=0
  while ! /sbin/ip link show dev eth0 | grep -q xdp && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  echo GXDP-READY ) &
timeout -s INT XDP_SECS xdp-bench drop -i 1 eth0
wait
/sbin/ip link set dev eth0 xdp off 2>/dev/null
ethtool -S eth0 | grep -E '^ *rx[_a-z]*0_xdp_(drops|packets):' | sed 's/^ */GSTAT /'
echo GUEST-DONE
"""


def console_markers(path, key):
    """Console lines with the word `key` (escape sequences may precede it):
    the rest of each line, trimmed (as e2e's Guest::markers)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    out = []
    for l in text.splitlines():
        l = l.rstrip("\r")
        i = l.find(key)
        if i < 0:
            continue
        rest = l[i + len(key):]
        if (i == 0 or not (l[i - 1].isalnum() or l[i - 1] == "-")) and (not rest or rest.startswith(" ")):
            out.append(rest.strip())
    return out


def ensure_vm_image(ctx):
    """vm-images/build.sh (cached: a matching stamp is a no-op); None or an error text."""
    if getattr(ctx, "vm_image_error", "unset") != "unset":
        return ctx.vm_image_error
    log = os.path.join(ctx.outdir, "logs", "vm-image-build.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as f:
        r = subprocess.run(["bash", os.path.join(REPO, "vm-images", "build.sh")], stdout=f,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ctx.vm_image_error = None if r.returncode == 0 else f"vm-images/build.sh failed (exit {r.returncode}), see {log}"
    return ctx.vm_image_error


def xdp_run(ctx, sc, system, rep, placement=UNPINNED):
    a = ctx.args
    fe = "tcg"
    name = run_name(sc, system, fe, rep, placement)
    logdir = os.path.join(ctx.outdir, "logs", name)
    os.makedirs(logdir, exist_ok=True)
    tap = ctx.uniq("bt")
    sock = os.path.join(logdir, "vhost.sock")
    console = os.path.join(logdir, "console.log")
    flood_s = max(2, int(round(a.duration)))
    count = int(a.xdp_pps * flood_s)
    res = {"scenario": sc["id"], "kind": "xdp", "dir": "h2g", "size": 60, "gso": False, "queues": 1,
           "system": system, "frontend": fe, "placement": placement, "rep": rep, "duration": flood_s,
           "layout": layout(system, fe, sc, placement, a),
           "flood_pps": a.xdp_pps, "flood_frames": count, "ok": False, "error": None}
    procs = []
    t_start = time.monotonic()
    try:
        err = ensure_vm_image(ctx)
        if err:
            raise RuntimeError(err)
        sp, ok = start_system(ctx, system, sc, logdir, tap, sock, placement)
        procs.append(sp)
        if not ok:
            raise RuntimeError(f"{system} did not start:\n{sp.text()[-2000:]}")
        x = free_subnet()
        hip, gip = f"198.18.{x}.1", f"198.18.{x}.2"
        gmac = f"52:54:00:18:{x:02x}:02"
        res["subnet"] = f"198.18.{x}.0/24"
        host_addr(tap, f"{hip}/24")
        route_check(tap, gip)
        with open(f"/sys/class/net/{tap}/address") as f:
            hmac = f.read().strip()
        conf = os.path.join(logdir, "udp.trafgen")
        with open(conf, "w") as f:
            f.write(f"{{ eth(da={gmac}, sa={hmac}, type=0x0800), ipv4(saddr={hip}, daddr={gip}), "
                    "udp(sp=dinc(1024,1087), dp=9), fill(0x41, 18) }\n")
        script = os.path.join(logdir, "guest.sh")
        xdp_secs = flood_s + 12
        with open(script, "w") as f:
            f.write(XDP_GUEST_SCRIPT.replace("XDP_SECS", str(xdp_secs)))
        # Foreground run-guest.sh execs `timeout ... qemu` (a safety net if
        # bench.py dies): QEMU is in this Proc's process group.
        qemu = Proc("qemu", ["bash", os.path.join(REPO, "vm-images", "run-guest.sh"), "-s", sock, "-S", script,
                             "-l", console, "--ip", f"{gip}/24", "-m", gmac, "-t", str(a.vm_boot_timeout + xdp_secs + 120)],
                    logdir)
        procs.append(qemu)
        t_boot = time.monotonic()
        if not wait_until(lambda: console_markers(console, "GXDP-READY") or not qemu.alive()
                          or console_markers(console, "VT-GUEST: exit="), a.vm_boot_timeout, 0.2) \
                or not console_markers(console, "GXDP-READY"):
            raise RuntimeError(f"no GXDP-READY from the guest after {time.monotonic() - t_boot:.0f} s; "
                               f"console tail:\n{open(console, errors='replace').read()[-1500:] if os.path.exists(console) else ''}"
                               f"\n{qemu.text()[-500:]}")
        res["boot_to_xdp_s"] = time.monotonic() - t_boot
        time.sleep(0.3)
        s0 = snapshot(sp, system, tap)
        gen = Proc("trafgen", ["trafgen", "--dev", tap, "--conf", conf, "-P", "1", "--no-sock-mem", "-q",
                               "-n", str(count), "-b", f"{int(a.xdp_pps)}pps"], logdir, cpus=GEN_CPU)
        procs.append(gen)
        pin_trafgen(gen, GEN_CPU)
        record_affinity(res, sp, qemu, gen, system, fe)
        try:
            gen.p.wait(flood_s * 3 + 20)
        except subprocess.TimeoutExpired:
            raise RuntimeError("trafgen did not end")
        s1 = snapshot(sp, system, tap)
        if gen.p.returncode != 0:
            raise RuntimeError(f"trafgen exit {gen.p.returncode}:\n{gen.text()[-1000:]}")
        if not wait_until(lambda: console_markers(console, "GUEST-DONE") or not qemu.alive(), xdp_secs + 60, 0.2) \
                or not console_markers(console, "GUEST-DONE"):
            raise RuntimeError("no GUEST-DONE from the guest")
        win = window_figures(res, s0, s1)
        dc = res.get("daemon_counters") or {}
        delivered = dc.get("rx_frames", 0)
        res["pps"] = delivered / win                      # frames the daemon put into the guest
        res["us_per_frame"] = 1e6 * res["cpu_s"] / delivered if delivered else None
        read = res["tap_tx_packets"]
        res["us_per_frame_read"] = 1e6 * res["cpu_s"] / read if read else None
        # xdp-bench per 1 s: "Summary  N rx/s  M err/s" (its whole run, idle
        # seconds included); busy seconds = above 10 % of the peak.
        rates = []
        for m in console_markers(console, "Summary"):
            w = m.split()
            try:
                rates.append(float(w[0].replace(",", "")))
            except (IndexError, ValueError):
                pass
        res["xdp_rates"] = rates
        busy = [r for r in rates if rates and r > 0.1 * max(rates)]
        res["xdp_1s_median_pps"] = statistics.median(busy) if busy else None
        res["xdp_1s_max_pps"] = max(busy) if busy else None
        avg = console_markers(console, "Average packets/s")
        try:
            res["xdp_bench_avg_pps"] = float(avg[-1].lstrip(":").strip().replace(",", ""))
        except (IndexError, ValueError):
            res["xdp_bench_avg_pps"] = None
        gst = {}
        for m in console_markers(console, "GSTAT"):
            k, _, v = m.partition(":")
            if v.strip().isdigit():
                gst[k.strip()] = int(v)
        res["guest_ethtool"] = gst
        res["xdp_drops_total"] = next((v for k, v in gst.items() if k.endswith("xdp_drops")), None)
        # The guest's XDP drop rate: its drop counter (XDP attached before the
        # flood, nothing else on the link) over the flood's window on the host.
        # Frames still queued at the window's end (tun ring + daemon ring/queue,
        # ~1-2 k) are counted too: an error of ~1 %.
        res["xdp_drop_pps"] = res["xdp_drops_total"] / win if res["xdp_drops_total"] else None
        if not res["xdp_drop_pps"] or not rates:
            raise RuntimeError(f"the guest reported no XDP drops (xdp-bench rates {rates}, ethtool {gst})")
        res["ok"] = True
    except Exception as e:  # noqa: BLE001 - a failed run is recorded, the benchmark goes on
        res["error"] = str(e)[-3000:]
    finally:
        stop_all(procs, system)
        if os.path.exists(f"/sys/class/net/{tap}"):
            run_quiet(["ip", "link", "del", tap])
        if os.path.exists(sock):
            os.unlink(sock)
        res["wall_s"] = time.monotonic() - t_start
    return res


# --------------------------------------------------------------------------
# scenarios

def scenarios(systems_h2g, systems_g2h, a):
    fes = ["testpmd", "vu"]
    S = []
    def add(id_, dir_, size, queues=1, gso=False, frontends=fes, systems=None, bare=True, slow=False, title="",
            cold=False, shared=False):
        combos = [(s, f) for s in systems for f in frontends]
        if bare:
            combos.append(("bare", "none"))
        if shared:
            combos.append(("bare", "spin"))
            if dir_ == "h2g":
                combos.append(("bare-cold", "spin"))
                combos.append(("bare-uring", "none"))
        if cold:
            combos.append(("bare-cold", "none"))
        S.append({"id": id_, "dir": dir_, "size": size, "queues": queues, "gso": gso,
                  "combos": combos, "slow": slow, "title": title})
    add("h2g-64", "h2g", 64, systems=systems_h2g, shared=True, title="host→guest, 64 B frames, 1 queue pair")
    add("g2h-64", "g2h", 64, systems=systems_g2h, shared=True, title="guest→host, 64 B frames, 1 queue pair")
    add("h2g-1500", "h2g", 1514, systems=systems_h2g, title="host→guest, 1514 B frames")
    add("g2h-1500", "g2h", 1514, systems=systems_g2h, title="guest→host, 1514 B frames")
    add("g2h-gso64k", "g2h", 65536, gso=True, frontends=["vu"], systems=systems_g2h, cold=True,
        title="guest→host, 64 KiB TCPv4 GSO frames (offloads on)")
    add("h2g-64-2q", "h2g", 64, queues=2, systems=systems_h2g, title="host→guest, 64 B, 2 queue pairs")
    add("g2h-64-2q", "g2h", 64, queues=2, systems=systems_g2h, title="guest→host, 64 B, 2 queue pairs")
    add("h2g-slow", "h2g", 64, frontends=["vu"], systems=systems_h2g, bare=False, slow=True,
        title="host→guest, 64 B, slow guest taking 10 % of the offered rate")
    # Scenarios with an IP stack behind the system under test (own run
    # functions; "kind" selects them).
    S.append({"id": "latency-slow", "kind": "latency", "dir": "h2g", "size": 1514, "queues": 1, "gso": False,
              "combos": [(s, "vu-bridge") for s in systems_h2g], "slow": False,
              "title": f"latency under load: ping every {a.ping_interval * 1000:g} ms host → slow guest "
                       f"(vu-bridge at {a.slow_mbit:g} Mbit/s into a netns) while {a.flows} bulk TCP flows "
                       f"(iperf3 -C {a.cc}) saturate it"})
    # A TCG boot per run (~25-35 s a run); --no-vm leaves it out.
    S.append({"id": "xdp-tcg", "kind": "xdp", "dir": "h2g", "size": 60, "queues": 1, "gso": False,
              "combos": [(s, "tcg") for s in systems_h2g if s.startswith("vhost-tap")], "slow": False,
              "optout": a.no_vm, "reps": a.xdp_reps if a.xdp_reps else a.reps,
              "title": f"host trafgen 60 B at {a.xdp_pps / 1e3:g} kpps → TCG guest running `xdp-bench drop` on eth0"})
    return S


# --------------------------------------------------------------------------
# report

def med_spread(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def fmt(v, unit=""):
    if v is None:
        return "–"
    if unit == "Mpps":
        return f"{v / 1e6:.3f}"
    if unit == "Gbps":
        return f"{v / 1e9:.2f}"
    if unit == "us":
        return f"{v:.2f}"
    if unit == "pct":
        return f"{v:.0f}"
    if unit == "ms":
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return f"{v:.0f}"


def aggregate(results):
    groups = {}
    for r in results:
        groups.setdefault(gkey(r), []).append(r)
    out = []
    for (scid, system, fe, pl), rs in groups.items():
        ok = [r for r in rs if r["ok"]]
        g = {"scenario": scid, "system": system, "frontend": fe, "placement": pl, "runs": len(rs), "ok_runs": len(ok),
             "errors": [r["error"] for r in rs if not r["ok"]]}
        for k in ("pps", "bps", "us_per_frame", "cpu_pct", "offered_pps", "tun_tail_drops_ps",
                  "qdisc_drops_ps", "guest_drops_ps", "peer_drops_ps", "sent_pps", "daemon_drops_total",
                  "aqm_drops_ps", "other_load_pct",
                  # latency-slow, xdp-tcg
                  "ping_p50_ms", "ping_p99_ms", "ping_max_ms", "ping_loss_pct", "goodput_mbps",
                  "flow_spread_pct", "tun_tail_drops", "qdisc_drops", "aqm_drops_total", "ecn_marks",
                  "xdp_drop_pps", "xdp_1s_median_pps", "xdp_1s_max_pps", "us_per_frame_read"):
            g[k] = med_spread([r.get(k) for r in ok])
        drops = {}
        for r in ok:
            for k, v in (r.get("daemon_drops") or {}).items():
                drops[k] = drops.get(k, 0) + v
        g["daemon_drops_by_reason"] = drops
        g["threads"] = ok[len(ok) // 2].get("threads_cpu_pct") if ok else {}
        # Where its parties were: as intended (layout) and as read back from /proc.
        g["layout"] = rs[0].get("layout")
        g["pps_by_rep"] = {str(r["rep"]): r.get("pps") for r in ok}
        g["affinity"] = ok[len(ok) // 2].get("affinity") if ok else None
        for k in ("peer_fwd_lcores", "frontend_fwd_lcores"):
            if ok and ok[len(ok) // 2].get(k) is not None:
                g[k] = ok[len(ok) // 2][k]
        aqm = {}
        for r in ok:
            for k, v in (r.get("aqm_drops") or {}).items():
                aqm[k] = aqm.get(k, 0) + v
        g["aqm_drops_by_reason"] = aqm
        # per-flow Mbit/s of the run with the median p99 (latency-slow)
        lat = sorted((r for r in ok if r.get("ping_p99_ms") is not None), key=lambda r: r["ping_p99_ms"])
        g["flows_mbps_median_run"] = lat[len(lat) // 2].get("flows_mbps") if lat else None
        out.append(g)
    return out


def rows_of(sc, by, pls):
    """The scenario's groups, one placement after the other."""
    return [by[(sc["id"], s, f, p)] for p in pls for s, f in sc["combos"] if (sc["id"], s, f, p) in by]


def summary_md(S, agg, meta):
    L = []
    by = {gkey(g): g for g in agg}
    pls = placements_of(agg)
    pc = pinned_any(agg)  # a placement column only then: unpinned-only summaries as before
    L.append(f"# Benchmark results {meta['stamp']}\n")
    L.append(f"Command: `{meta['command']}`  ")
    L.append(f"Machine: {meta['cpu']}, {meta['ncpu']} CPUs, kernel {meta['kernel']}  ")
    L.append(f"Load before/after: `{meta['uptime_before']}` / `{meta.get('uptime_after', '')}`  ")
    L.append(f"Repetitions: {meta['reps']} × {meta['duration']} s (warm-up {meta['warmup']} s); "
             "medians, spread = min–max over the repetitions"
             + (f" (except: {', '.join(f'{k} {v}×' for k, v in meta['reps_per_scenario'].items())})" if meta.get("reps_per_scenario") else "") + ".\n")
    L.append("**Placements** (`--placements " + ",".join(meta.get("placements") or pls) + "`; every run once "
             "per placement; each run's parties and the CPUs their threads may use, read back from /proc, are "
             "in runs.jsonl `layout` / `affinity`, and under each scenario below):\n")
    for pl in (meta.get("placements") or pls):
        L.append("- " + placement_txt(pl, meta))
    L.append("")
    if meta.get("daemon_cpus"):  # runs of the format before --placements
        L.append(f"**The vhost-tap daemon was pinned to CPU(s) {meta['daemon_cpus']}** (`--daemon-cpus`).\n")
    L += peers_md(S, agg)
    for sc in S:
        rows = rows_of(sc, by, pls)
        if not rows:
            continue
        L.append(f"## {sc['id']}: {sc['title']}\n")
        if sc.get("kind") == "latency":
            L += latency_md(rows, meta, pc) + layout_md(rows)
            continue
        if sc.get("kind") == "xdp":
            L += xdp_md(rows, meta, pc) + layout_md(rows)
            continue
        gbps = sc.get("gso") or sc["size"] > 1000
        L.append("| system | frontend | " + ("placement | " if pc else "") + "Mpps (min–max) | " + ("Gbit/s | " if gbps else "") +
                 "CPU % | µs CPU/frame (min–max) | offered Mpps | tun tail drops/s | qdisc drops/s | "
                 "daemon drops | AQM drops/s | peer drops/s | guest drops/s | others' CPU % |")
        L.append(sep(L[-1]))
        for g in rows:
            m, lo, hi = g["pps"]
            u, ulo, uhi = g["us_per_frame"]
            ddtxt = reasons_txt(g["daemon_drops_total"][0], g["daemon_drops_by_reason"])
            err = "" if g["ok_runs"] == g["runs"] else f" ({g['runs'] - g['ok_runs']} failed)"
            L.append(f"| {g['system']}{err} | {g['frontend']} | {pcell(g, pc)}{fmt(m, 'Mpps')} ({fmt(lo, 'Mpps')}–{fmt(hi, 'Mpps')}) | "
                     + (f"{fmt(g['bps'][0], 'Gbps')} | " if gbps else "")
                     + f"{fmt(g['cpu_pct'][0], 'pct')} | {fmt(u, 'us')} ({fmt(ulo, 'us')}–{fmt(uhi, 'us')}) | "
                     f"{fmt(g['offered_pps'][0], 'Mpps')} | {fmt(g['tun_tail_drops_ps'][0])} | "
                     f"{fmt(g['qdisc_drops_ps'][0])} | {ddtxt} | {fmt(g['aqm_drops_ps'][0])} | {fmt(g['peer_drops_ps'][0])} | "
                     f"{fmt(g['guest_drops_ps'][0])} | {mm(g.get('other_load_pct') or (None, None, None), 'pct')} |")
        L.append("")
        L.append("others' CPU % = CPU used by processes that were not the run's own (other builds and tests on "
                 "this shared machine), over the window, median (min–max).\n")
        L += layout_md(rows)
    L.append("## Targets\n")
    L += targets(agg)
    fails = [g for g in agg if g["errors"]]
    if fails:
        L.append("\n## Failed runs\n")
        for g in fails:
            L.append(f"- {g['scenario']} {g['system']} {g['frontend']}{where(g)}: {g['errors'][0][:300]!r}")
    return "\n".join(L) + "\n"


def placement_txt(pl, meta):
    """One line on what a placement does."""
    if pl == FAIR:
        g = meta.get("gen_cpu") or "auto"
        gc = GUEST_CPU if g == "auto" else g
        return (f"`fair`: each party where a user would put it. The guest on CPU {GUEST_CPU} (testpmd's "
                f"forwarding lcore; vu-guest, the spinner, vu-bridge `taskset -c {GUEST_CPU}`); the system under "
                f"test on the other core, CPU {BACKEND_CPU} (daemon and bare-tap `taskset -c {BACKEND_CPU}`, the "
                f"DPDK peer's forwarding lcore via `-l 0,1 --main-lcore 1`); host→guest trafgen on CPU {gc}"
                + (" (with the guest: on the backend's core it would take that core from the system under "
                   "test, and a polling peer would time-slice with it)" if g == "auto" else " (`--gen-cpu`)")
                + "; guest→host has no generator (the guest is the source).")
    if pl == UNPINNED:
        return ("`unpinned` (the harness before `fair`): trafgen on CPU 0, the guest on CPU 1, the daemon and "
                "bare-tap unpinned, the DPDK peer `-l 0,1`: its forwarding lcore polls CPU 1, **the core a testpmd "
                "guest busy-polls**; latency-slow: vu-bridge, iperf3 and ping unpinned; xdp-tcg: trafgen on CPU 0, "
                "QEMU (2 TCG vCPU threads) and the daemon unpinned.")
    return (f"`{pl}`: the daemon and bare-tap `taskset -c {pl}`; trafgen, guest as with `unpinned`; the DPDK "
            "peer not run again (its `unpinned` runs stand for it).")


def affinity_txt(aff):
    """{comm: cpus} as 'cpus: comm, comm; cpus: ...' (a few names per set)."""
    if not aff:
        return "–"
    by = {}
    for comm, cpus in aff.items():
        by.setdefault(cpus, []).append(comm.split("#")[0])
    out = []
    for cpus, comms in sorted(by.items()):
        names = list(dict.fromkeys(comms))
        out.append(f"{cpus}: " + ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else ""))
    return "; ".join(out)


def layout_md(rows):
    """Where each group's parties were: as intended, and read back from /proc."""
    rows = [g for g in rows if g.get("layout")]
    if not rows:
        return []
    L = ["| system | frontend | placement | system under test | guest | generator | system's threads: "
         "CPUs (read back) | guest's threads: CPUs |"]
    L.append(sep(L[-1]))
    for g in rows:
        lo = g["layout"]
        aff = g.get("affinity") or {}
        sysaff = affinity_txt(aff.get("system"))
        if g.get("peer_fwd_lcores") is not None:
            sysaff += f" (forwarding lcore {','.join(map(str, g['peer_fwd_lcores']))})"
        L.append(f"| {g['system']} | {g['frontend']} | {place_txt(place(g))} | {lo.get('system')} | "
                 f"{lo.get('frontend')} | {lo.get('generator')} | {sysaff} | {affinity_txt(aff.get('frontend'))} |")
    L.append("")
    return L


def paired(a, b):
    """Ratios a/b of the repetitions both have (runs interleaved: rep i of
    each ran back to back)."""
    pa, pb = a.get("pps_by_rep") or {}, b.get("pps_by_rep") or {}
    return [pa[r] / pb[r] for r in pa if r in pb and pa[r] and pb[r]]


def peers_md(S, agg):
    """vhost-tap vs the DPDK peer, side by side, per scenario, frontend and placement."""
    by = {gkey(g): g for g in agg}
    L = []
    for sc in S:
        if sc.get("kind"):
            continue
        for pl in placements_of(agg):
            for fe in ("testpmd", "vu"):
                d, q = by.get((sc["id"], "vhost-tap", fe, pl)), by.get((sc["id"], "dpdk-peer", fe, pl))
                if not d or not q or d["pps"][0] is None or q["pps"][0] is None:
                    continue
                if not L:
                    L.append("## vhost-tap vs the DPDK peer (net_vhost + net_tap, io forwarding)\n")
                    L.append("| scenario | guest | placement | vhost-tap Mpps | DPDK peer Mpps | vhost-tap ÷ peer: "
                             "median (per-repetition min–max) | vhost-tap CPU % / µs per frame | "
                             "peer CPU % / µs per frame |")
                    L.append(sep(L[-1]))
                r = paired(d, q)
                rr = f" ({min(r):.2f}–{max(r):.2f})" if len(r) > 1 else ""
                ratio = f"**{d['pps'][0] / q['pps'][0]:.2f}×**{rr}" if q["pps"][0] else "– (the peer delivered nothing)"
                L.append(f"| {sc['id']} | {fe} | {place_txt(pl)} | {mm(d['pps'], 'Mpps')} | {mm(q['pps'], 'Mpps')} | "
                         f"{ratio} | {fmt(d['cpu_pct'][0], 'pct')} / "
                         f"{fmt(d['us_per_frame'][0], 'us')} | {fmt(q['cpu_pct'][0], 'pct')} / "
                         f"{fmt(q['us_per_frame'][0], 'us')} |")
    if L:
        L.append("")
        L.append("Ratio = vhost-tap's median delivered frames/s ÷ the peer's (above 1: vhost-tap delivers more); "
                 "per-repetition ratios pair the runs of one repetition, which ran back to back. A polling peer "
                 "uses its whole core whatever it forwards: compare µs per frame with that in mind.\n")
    return L


def sep(header):
    """The |---| line under a table header."""
    return "|" + "---|" * (header.count("|") - 1)


def pcell(g, on):
    """The placement cell of a table row (empty without a placement column)."""
    return f"{place_txt(place(g))} | " if on else ""


def where(g):
    """' @ CPU X' after a group's name when it was pinned."""
    return "" if place(g) == UNPINNED else f" @ {place_txt(place(g))}"


def mm(t, unit=""):
    """'median (min–max)' of a med_spread triple."""
    m, lo, hi = t
    if m is None:
        return "–"
    if lo == hi:
        return fmt(m, unit)
    return f"{fmt(m, unit)} ({fmt(lo, unit)}–{fmt(hi, unit)})"


def reasons_txt(total, by_reason):
    if total is None:
        return "–"
    return f"{total:.0f}" + (f" ({', '.join(f'{k}={v}' for k, v in by_reason.items())})" if by_reason else "")


def latency_md(rows, meta, pc=False):
    L = ["| system | " + ("placement | " if pc else "") + "ping p50 ms | ping p99 ms | ping max ms | ping loss % | "
         "goodput Mbit/s | per-flow Mbit/s (median run) | flow spread % | tun tail drops/s | qdisc drops/s | "
         "daemon drops | AQM drops/s (by reason, all reps) | ECN marks | peer drops/s | CPU % |"]
    L.append(sep(L[-1]))
    for g in rows:
        err = "" if g["ok_runs"] == g["runs"] else f" ({g['runs'] - g['ok_runs']} failed)"
        flows = g.get("flows_mbps_median_run")
        aqm = fmt(g["aqm_drops_ps"][0]) + (f" ({', '.join(f'{k}={v}' for k, v in g['aqm_drops_by_reason'].items())})"
                                            if g.get("aqm_drops_by_reason") else "")
        L.append(f"| {g['system']}{err} | {pcell(g, pc)}{mm(g['ping_p50_ms'], 'ms')} | {mm(g['ping_p99_ms'], 'ms')} | "
                 f"{mm(g['ping_max_ms'], 'ms')} | {fmt(g['ping_loss_pct'][0], 'ms')} | {mm(g['goodput_mbps'], 'ms')} | "
                 f"{' / '.join(f'{f:.1f}' for f in flows) if flows else '–'} | {mm(g['flow_spread_pct'], 'pct')} | "
                 f"{mm(g['tun_tail_drops_ps'])} | {fmt(g['qdisc_drops_ps'][0])} | "
                 f"{reasons_txt(g['daemon_drops_total'][0], g['daemon_drops_by_reason'])} | {aqm} | "
                 f"{fmt(g['ecn_marks'][0])} | {fmt(g['peer_drops_ps'][0])} | {fmt(g['cpu_pct'][0], 'pct')} |")
    L.append("")
    L.append("Ping RTT host → slow guest's namespace, nearest-rank percentiles per run, then median (min–max) over "
             "the repetitions; goodput = sum of the iperf3 receiver rates; spread = fastest/slowest flow − 1; "
             "drops per second over the ping window (after iperf3's omitted slow start). CPU % = the system "
             "under test's (daemon or testpmd peer) over the window.\n")
    return L


def xdp_md(rows, meta, pc=False):
    L = ["| system | " + ("placement | " if pc else "") + "guest XDP drop pps (min–max) | xdp-bench 1 s rates: "
         "median / max | daemon → guest pps | µs CPU/frame (min–max) | µs CPU/frame read from TAP | CPU % | "
         "offered pps | tun tail drops/s | qdisc drops/s | daemon drops | AQM drops/s |"]
    L.append(sep(L[-1]))
    for g in rows:
        err = "" if g["ok_runs"] == g["runs"] else f" ({g['runs'] - g['ok_runs']} failed)"
        L.append(f"| {g['system']}{err} | {pcell(g, pc)}{mm(g['xdp_drop_pps'])} | {fmt(g['xdp_1s_median_pps'][0])} / "
                 f"{fmt(g['xdp_1s_max_pps'][0])} | "
                 f"{mm(g['pps'])} | {mm(g['us_per_frame'], 'us')} | {fmt(g['us_per_frame_read'][0], 'us')} | "
                 f"{fmt(g['cpu_pct'][0], 'pct')} | {fmt(g['offered_pps'][0])} | {mm(g['tun_tail_drops_ps'])} | "
                 f"{fmt(g['qdisc_drops_ps'][0])} | {reasons_txt(g['daemon_drops_total'][0], g['daemon_drops_by_reason'])} | "
                 f"{fmt(g['aqm_drops_ps'][0])} |")
    L.append("")
    L.append("Guest XDP drop pps = the guest's `rx0_xdp_drops` (ethtool) ÷ the trafgen window on the host; "
             "xdp-bench's own 1 s rates (seconds above 10 % of the peak) beside it. Host figures over the "
             "trafgen window; µs CPU/frame = daemon CPU ÷ frames it put into the guest (and ÷ frames it read "
             "from the TAP, which in fq-codel mode includes the AQM's drops).\n")
    return L


def targets(agg):
    by = {gkey(g): g for g in agg}
    L = []

    # The unpinned-style lines once per whole-harness placement (fair,
    # unpinned), each line tagged with it when there are several.
    cur = {"pl": UNPINNED, "tag": ""}

    def get(sc, sy, fe, k, pl=None):
        g = by.get((sc, sy, fe, pl or cur["pl"]))
        return g[k][0] if g and g[k][0] is not None else None

    def line(name, val, goal, ok):
        mark = "–" if ok is None else ("met" if ok else "MISSED")
        L.append(f"| {name}{cur['tag']} | {val} | {goal} | {mark} |")

    def cpu_ratio(name, d, b):
        """A daemon-vs-ceiling CPU/frame line against the issue's 1.2× bound."""
        if d and b:
            # Three decimals: 1.204× must not read as a missed 1.20×.
            line(name, f"{d:.3f} / {b:.3f} µs = {d / b:.3f}×", "≤ 1.2×", d / b <= 1.2)

    L.append("| target | measured (medians) | goal | |")
    L.append("|---|---|---|---|")
    whole = [pl for pl in placements_of(agg) if pl in (FAIR, UNPINNED)]
    for wpl in whole:
        cur["pl"], cur["tag"] = wpl, (f" [{place_txt(wpl)}]" if len(whole) > 1 else "")
        for fe in ("testpmd", "vu"):
            d = get("h2g-64", "vhost-tap", fe, "us_per_frame")
            cpu_ratio(f"h2g 64 B CPU/frame vs bare read() ({fe} guest)", d,
                      get("h2g-64", "bare", "none", "us_per_frame"))
            if fe == "testpmd":
                cpu_ratio("(same, vs bare read() sharing its core with a busy poller, as the daemon does beside testpmd)",
                          d, get("h2g-64", "bare", "spin", "us_per_frame"))
                cpu_ratio("(same, vs bare read() into 16384 rotating 2 KiB buffers beside a busy poller)",
                          d, get("h2g-64", "bare-cold", "spin", "us_per_frame"))
            u = get("h2g-64", "bare-uring", "none", "us_per_frame")
            b0 = get("h2g-64", "bare", "none", "us_per_frame")
            if u and b0 and fe == "testpmd":
                line("(syscall batching: bare io_uring reads, 64 in flight, vs bare read())",
                     f"{u:.2f} / {b0:.2f} µs = {u / b0:.2f}×", "< 1× would move the ceiling", u < b0)
            p = get("h2g-64", "vhost-tap", fe, "pps")
            b = get("h2g-64", "bare", "spin", "pps")
            if p and b and fe == "testpmd":
                line("(h2g 64 B pps: what the bare read() loop reaches beside a busy poller: the harness's ceiling)",
                     f"{p / 1e6:.3f} vs {b / 1e6:.3f} Mpps = {p / b:.2f}×; 2× reference = {2 * CH_REF_H2G_MPPS} Mpps",
                     "–", None)
            if p:
                line(f"h2g 64 B pps vs 2× cloud-hypervisor reference ({fe} guest)",
                     f"{p / 1e6:.3f} Mpps vs 2 × {CH_REF_H2G_MPPS} (TESTBED reference, not this run) = "
                     f"{p / 1e6 / CH_REF_H2G_MPPS:.2f}× ", "≥ 2×", p / 1e6 >= 2 * CH_REF_H2G_MPPS)
            for scid in ("h2g-64", "g2h-64"):
                p = get(scid, "vhost-tap", fe, "pps")
                q = get(scid, "dpdk-peer", fe, "pps")
                if p and q:
                    # The issue's target is guest→host; host→guest is shown beside it.
                    line(f"{scid[:3]} 64 B pps vs DPDK peer ({fe} guest)",
                         f"{p / 1e6:.3f} vs {q / 1e6:.3f} Mpps = {p / q:.2f}×",
                         "≥ 1×" if scid.startswith("g2h") else "–", p >= q if scid.startswith("g2h") else None)
            d = get("g2h-64", "vhost-tap", fe, "us_per_frame")
            cpu_ratio(f"g2h 64 B CPU/frame vs bare write() ({fe} guest)", d,
                      get("g2h-64", "bare", "none", "us_per_frame"))
            if fe == "testpmd":
                cpu_ratio("(same, vs bare write() sharing its core with a busy poller)",
                          d, get("g2h-64", "bare", "spin", "us_per_frame"))
    cur["tag"] = ""
    cur["pl"] = (whole or placements_of(agg) or [UNPINNED])[0]
    # Placement-matched: the daemon and the bare loop on the same CPU(s). The
    # spinner stands in for testpmd's poller on CPU 1; vu-guest does not poll.
    for pl in placements_of(agg):
        if pl in (UNPINNED, FAIR):
            continue
        for sc, call in (("h2g-64", "read()"), ("g2h-64", "write()")):
            for fe, bfe, beside in (("testpmd", "spin", "beside a busy poller"), ("vu", "none", "alone")):
                cpu_ratio(f"{sc[:3]} 64 B CPU/frame at {place_txt(pl)}: daemon ({fe} guest) vs bare {call} "
                          f"({beside}), both pinned there", get(sc, "vhost-tap", fe, "us_per_frame", pl),
                          get(sc, "bare", bfe, "us_per_frame", pl))
    p = get("g2h-gso64k", "vhost-tap", "vu", "bps")
    b = get("g2h-gso64k", "bare", "none", "bps")
    if p and b:
        line("g2h 64 KiB GSO Gbit/s vs bare write()", f"{p / 1e9:.1f} / {b / 1e9:.1f} = {100 * p / b:.0f} %",
             "≥ 80 %", p >= 0.8 * b)
    b = get("g2h-gso64k", "bare-cold", "none", "bps")
    if p and b:
        line("(same, vs bare write() from 1024 cold buffers)", f"{p / 1e9:.1f} / {b / 1e9:.1f} = {100 * p / b:.0f} %",
             "≥ 80 %", p >= 0.8 * b)
    tot = sum(g["daemon_drops_total"][2] or 0 for g in agg if g["system"].startswith("vhost-tap"))
    reasons = {}
    for g in agg:
        if g["system"].startswith("vhost-tap"):
            for k, v in g["daemon_drops_by_reason"].items():
                reasons[f"{g['scenario']}/{g['system']}{where(g)}/{k}"] = v
    aqm = {f"{g['scenario']}/{g['system']}{where(g)}": round(g["aqm_drops_ps"][0]) for g in agg
           if g["aqm_drops_ps"][0]}
    if aqm:
        L.append(f"| (fq-codel AQM decisions, drops/s, not counted above) | {aqm} | by design | – |")
    line("daemon drops, every scenario (all repetitions)", f"{tot:.0f} " + (str(reasons) if reasons else ""),
         "0", tot == 0)
    # The queueing issue's bounds (tests/tests/queueing.rs), from latency-slow.
    lpl = next((pl for pl in placements_of(agg) if ("latency-slow", "vhost-tap-fq-codel", "vu-bridge", pl) in by),
               UNPINNED)
    bp = by.get(("latency-slow", "vhost-tap", "vu-bridge", lpl))
    fq = by.get(("latency-slow", "vhost-tap-fq-codel", "vu-bridge", lpl))
    if fq and fq["ping_p99_ms"][0] is not None:
        p99 = fq["ping_p99_ms"][0]
        line("latency-slow: fq-codel ping p99 under load", f"{p99:.1f} ms", "≤ 25 ms", p99 <= 25)
        if bp and bp["ping_p99_ms"][0]:
            r = bp["ping_p99_ms"][0] / p99 if p99 else float("inf")
            line("latency-slow: p99 backpressure ÷ fq-codel", f"{bp['ping_p99_ms'][0]:.1f} / {p99:.1f} ms = {r:.1f}×",
                 "≥ 4×", r >= 4)
        t = fq["tun_tail_drops"][2]
        if t is not None:
            line("latency-slow: fq-codel tun tail drops (max over reps)", f"{t:.0f}", "0", t == 0)
        sp = fq["flow_spread_pct"][0]
        if sp is not None:
            line("latency-slow: fq-codel flow spread", f"{sp:.1f} %", "≤ 10 %", sp <= 10)
    return L


def plots(S, agg, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing, no plots", file=sys.stderr)
        return []
    by = {gkey(g): g for g in agg}
    pls = placements_of(agg)
    files = []
    for sc in S:
        rows = rows_of(sc, by, pls)
        if sc.get("kind") == "latency":
            files += latency_plot(plt, sc, [g for g in rows if g["ping_p50_ms"][0] is not None], outdir)
            continue
        if sc.get("kind") == "xdp":
            files += xdp_plot(plt, sc, [g for g in rows if g["xdp_drop_pps"][0] is not None], outdir)
            continue
        rows = [g for g in rows if g["pps"][0] is not None]
        if not rows:
            continue
        gb = bool(sc.get("gso"))
        # Wider with more bars (one set per placement), as dense as one set.
        fig, axs = plt.subplots(1, 2, figsize=(max(10, 0.9 * len(rows)), 4.2))
        labels = [f"{g['system']} / {g['frontend']}{where(g)}" for g in rows]
        key, scale, unit = ("bps", 1e9, "Gbit/s") if gb else ("pps", 1e6, "Mpps")
        for ax, (k, sc_, un, title) in zip(axs, [(key, scale, unit, "delivered"),
                                                  ("us_per_frame", 1, "µs", "CPU per frame (system)")]):
            vals = [(g[k][0] or 0) / sc_ for g in rows]
            lo = [max(0, v - (g[k][1] or 0) / sc_) for v, g in zip(vals, rows)]
            hi = [max(0, (g[k][2] or 0) / sc_ - v) for v, g in zip(vals, rows)]
            colors = ["#1f77b4" if g["system"].startswith("vhost-tap") else
                      "#7f7f7f" if g["system"].startswith("bare") else "#ff7f0e" for g in rows]
            ax.bar(range(len(rows)), vals, yerr=[lo, hi], color=colors, capsize=3)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(labels, fontsize=7, rotation=40, ha="right")
            ax.set_ylabel(un)
            if k == "us_per_frame" and max(vals, default=0) > 8 * min((v for v in vals if v > 0), default=1):
                # A polling peer's µs/frame dwarfs the rest: log scale keeps them readable.
                ax.set_yscale("log")
                un += " (log)"
                ax.set_ylabel(un)
            ax.set_title(title, fontsize=9)
        files.append(_save(plt, fig, sc, outdir, 9))
    files += peers_plot(plt, S, agg, outdir)
    return files


def peers_plot(plt, S, agg, outdir):
    """peers.png: delivered Mpps of vhost-tap and the DPDK peer (and the bare
    loop, the one-syscall-per-frame ceiling) per scenario, guest and placement;
    one panel per scenario with a peer run."""
    by = {gkey(g): g for g in agg}
    pls = placements_of(agg)
    scs = [sc for sc in S if not sc.get("kind")
           and any((sc["id"], "dpdk-peer", fe, pl) in by for fe in ("testpmd", "vu") for pl in pls)]
    if not scs:
        return []
    systems = [("vhost-tap", "#1f77b4"), ("dpdk-peer", "#ff7f0e")]
    fig, axs = plt.subplots(1, len(scs), figsize=(max(5.5 * len(scs), 7), 4.2), squeeze=False)
    for ax, sc in zip(axs[0], scs):
        groups = [(fe, pl) for pl in pls for fe in ("testpmd", "vu")
                  if any((sc["id"], sy, fe, pl) in by for sy, _ in systems)]
        w = 0.8 / len(systems)
        for i, (sy, color) in enumerate(systems):
            xs, vals, lo, hi = [], [], [], []
            for j, (fe, pl) in enumerate(groups):
                g = by.get((sc["id"], sy, fe, pl))
                if not g or g["pps"][0] is None:
                    continue
                v = g["pps"][0] / 1e6
                xs.append(j + (i - (len(systems) - 1) / 2) * w)
                vals.append(v)
                lo.append(max(0, v - g["pps"][1] / 1e6))
                hi.append(max(0, g["pps"][2] / 1e6 - v))
            ax.bar(xs, vals, w, yerr=[lo, hi], color=color, capsize=3, label=sy)
            for x_, v in zip(xs, vals):
                ax.annotate(f"{v:.2f}", (x_, v), ha="center", va="bottom", fontsize=7)
        for j, (fe, pl) in enumerate(groups):
            d, q = by.get((sc["id"], "vhost-tap", fe, pl)), by.get((sc["id"], "dpdk-peer", fe, pl))
            if d and q and d["pps"][0] and q["pps"][0]:
                ax.annotate(f"{d['pps'][0] / q['pps'][0]:.2f}×", (j, 0), xytext=(0, -30),
                            textcoords="offset points", ha="center", fontsize=8, fontweight="bold")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{fe} guest\n{place_txt(pl)}" for fe, pl in groups], fontsize=8)
        ax.set_ylabel("delivered Mpps")
        ax.set_title(f"{sc['id']}: {sc['title']}", fontsize=8.5)
        ax.legend(fontsize=7)
    fig.suptitle("vhost-tap vs the DPDK peer (median, min–max; bold: vhost-tap ÷ peer)", fontsize=9)
    fig.tight_layout()
    f = os.path.join(outdir, "peers.png")
    fig.savefig(f, dpi=80)
    plt.close(fig)
    return [f]


def _save(plt, fig, sc, outdir, title_size):
    """Title the figure with the scenario, write <id>.png, return its path."""
    fig.suptitle(f"{sc['id']}: {sc['title']}", fontsize=title_size)
    fig.tight_layout()
    f = os.path.join(outdir, f"{sc['id']}.png")
    fig.savefig(f, dpi=80)
    plt.close(fig)
    return f


def _panels(plt, sc, rows, outdir, height, title_size, panels):
    """Two panels of grouped bars; panels: [(specs, ylabel, title, log)]."""
    if not rows:
        return []
    fig, axs = plt.subplots(1, 2, figsize=(9, height))
    for ax, (specs, ylabel, title, log) in zip(axs, panels):
        _bars(ax, rows, specs, log=log)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
    return [_save(plt, fig, sc, outdir, title_size)]


def _bars(ax, rows, specs, log=False):
    """Grouped bars, median with min–max error bars; specs: [(key, scale, label, color)]."""
    n = len(specs)
    w = 0.8 / n
    for i, (k, scale, label, color) in enumerate(specs):
        vals = [(g[k][0] or 0) / scale for g in rows]
        lo = [max(0, v - (g[k][1] or 0) / scale) for v, g in zip(vals, rows)]
        hi = [max(0, (g[k][2] or 0) / scale - v) for v, g in zip(vals, rows)]
        xs = [j + (i - (n - 1) / 2) * w for j in range(len(rows))]
        ax.bar(xs, vals, w, yerr=[lo, hi], color=color, capsize=3, label=label)
        for x_, v in zip(xs, vals):
            if v > 0:
                ax.annotate(f"{v:.3g}", (x_, v), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([g["system"] + where(g) for g in rows], fontsize=7)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)


def latency_plot(plt, sc, rows, outdir):
    return _panels(plt, sc, rows, outdir, 3.4, 7.5, [
        ([("ping_p50_ms", 1, "p50", "#1f77b4"), ("ping_p99_ms", 1, "p99", "#d62728")],
         "ping RTT, ms (log)", "ping under load", True),
        ([("tun_tail_drops_ps", 1, "tun tail drops", "#7f7f7f"),
          ("aqm_drops_ps", 1, "daemon AQM drops", "#2ca02c"),
          ("peer_drops_ps", 1, "DPDK peer drops", "#ff7f0e")],
         "frames/s", "where frames were dropped", False)])


def xdp_plot(plt, sc, rows, outdir):
    return _panels(plt, sc, rows, outdir, 3.2, 8, [
        ([("xdp_drop_pps", 1e3, "guest XDP drop", "#1f77b4"),
          ("tun_tail_drops_ps", 1e3, "tun tail drops", "#7f7f7f")],
         "kpps", "guest XDP drop rate, tun tail drops", False),
        ([("us_per_frame", 1, "daemon µs CPU/frame", "#1f77b4")],
         "µs", "daemon CPU per frame delivered", False)])


# --------------------------------------------------------------------------

def build_bridge(a, outdir):
    """vu-bridge (crates/vu-driver) for latency-slow: run.sh builds only the
    vhost-tap and bench packages, so build it here into the same target dir
    (a no-op when it is up to date). Without cargo, use what is there."""
    bindir = os.path.abspath(a.bin)
    if shutil.which("cargo") and os.path.basename(bindir) == "release":
        log = os.path.join(outdir, "logs", "build-vu-bridge.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        env = dict(os.environ, CARGO_TARGET_DIR=os.path.dirname(bindir))
        with open(log, "w") as f:
            r = subprocess.run(["cargo", "build", "--release", "-p", "vu-driver", "--bin", "vu-bridge"],
                               cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            print(f"bench: building vu-bridge failed (see {log}); using {bindir}/vu-bridge if present",
                  file=sys.stderr)
    if not os.path.exists(os.path.join(bindir, "vu-bridge")):
        print(f"bench: {bindir}/vu-bridge missing: latency-slow runs will fail", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="measurement window, s")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true", help="1 × 3 s, warm-up 1 s")
    ap.add_argument("--scenarios", default="", help="comma list of scenario ids (default all)")
    ap.add_argument("--replot", metavar="DIR", default=None,
                    help="redraw the PNG plots of an earlier run's DIR from its summary.json and print its "
                         "summary tables (summary.md is left alone), run nothing")
    ap.add_argument("--placements", default=FAIR, metavar="LIST",
                    help="comma list of placements, every run done once per item (default: fair). "
                         "'fair': the guest on CPU 1, the system under test on CPU 0 (daemon and bare-tap "
                         "taskset -c 0, the DPDK peer's forwarding lcore on CPU 0), trafgen with the guest on "
                         "CPU 1. 'unpinned': the old harness (trafgen CPU 0, daemon and bare-tap unpinned, the "
                         "DPDK peer -l 0,1 polling the guest's CPU 1). CPUs for taskset -c without commas "
                         "('0', '1', '0-1'): the daemon and bare-tap pinned there, the rest as with unpinned "
                         "(the DPDK peer not run again: its unpinned run stands for it)")
    ap.add_argument("--gen-cpu", default="auto", metavar="CPU",
                    help="CPU of trafgen in the host→guest scenarios (default auto: 1 with fair, 0 otherwise)")
    ap.add_argument("--systems", default="", help="comma list: vhost-tap,vhost-tap-fq-codel,dpdk-peer,bare,bare-cold,bare-uring")
    ap.add_argument("--frontends", default="", help="comma list: testpmd,vu")
    ap.add_argument("--slow-fraction", type=float, default=0.10)
    g = ap.add_argument_group("latency-slow (vu-bridge slow guest, ping under TCP load)")
    g.add_argument("--slow-mbit", type=float, default=50.0, help="vu-bridge forwarding rate, Mbit/s (default 50)")
    g.add_argument("--rx-buffers", type=int, default=32, help="RX buffers the slow guest owns (default 32)")
    g.add_argument("--flows", type=int, default=4, help="bulk TCP flows, iperf3 -P (default 4)")
    g.add_argument("--cc", default="cubic", help="their congestion control, iperf3 -C (default cubic)")
    g.add_argument("--ping-interval", type=float, default=0.02, help="ping -i, s (default 0.02)")
    g.add_argument("--omit", type=float, default=3.0,
                   help="s of slow start before the window (iperf3 -O; default 3)")
    g = ap.add_argument_group("xdp-tcg (TCG guest running xdp-bench drop)")
    g.add_argument("--xdp-pps", type=float, default=100000, help="trafgen rate (default 100000)")
    g.add_argument("--xdp-reps", type=int, default=0, help="repetitions of xdp-tcg (default: --reps)")
    g.add_argument("--no-vm", action="store_true", help="leave xdp-tcg out of a run without --scenarios")
    g.add_argument("--vm-boot-timeout", type=float, default=150, help="s until xdp-bench runs in the guest")
    ap.add_argument("--perf", action="store_true", help="perf record the daemon in its first repetition")
    ap.add_argument("--bin", default=os.environ.get("BENCH_BIN", "/work/target-bench/release"))
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--command", default=" ".join(sys.argv))
    a = ap.parse_args()
    if a.replot:
        with open(os.path.join(a.replot, "summary.json")) as f:
            agg = json.load(f)
        S = scenarios(["vhost-tap", "vhost-tap-fq-codel", "dpdk-peer"], ["vhost-tap", "dpdk-peer"], a)
        for f in plots(S, agg, a.replot):
            print("bench: plot", f)
        try:
            with open(os.path.join(a.replot, "meta.json")) as f:
                print(summary_md(S, agg, json.load(f)), end="")
        except (OSError, KeyError) as e:
            print(f"bench: no summary tables ({e!r})", file=sys.stderr)
        return 0
    placements = list(dict.fromkeys(filter(None, a.placements.split(","))))
    if a.gen_cpu != "auto" and not (a.gen_cpu.isdigit() and int(a.gen_cpu) < os.cpu_count()):
        ap.error(f"--gen-cpu: {a.gen_cpu!r} is not a CPU of this machine (0..{os.cpu_count() - 1})")
    for pl in placements:
        if pl == FAIR and os.cpu_count() < 2:
            ap.error("--placements fair needs 2 CPUs")
        if pl not in (UNPINNED, FAIR) and not (re.fullmatch(r"\d+(-\d+)?", pl)
                                   and all(int(c) < os.cpu_count() for c in pl.split("-"))):
            ap.error(f"--placements: {pl!r} is neither 'fair', 'unpinned' nor CPUs of this machine "
                     f"(0..{os.cpu_count() - 1}, N or N-M)")
    if not placements:
        ap.error("--placements is empty")
    # The DPDK peer has two placements: its forwarding lcore on its own core
    # (fair) or on the guest's (unpinned, as -l 0,1 puts it); a CPU
    # placement runs it as unpinned, once per repetition.
    legacy = [pl for pl in placements if pl != FAIR]
    peer_pl = (UNPINNED if UNPINNED in legacy else legacy[0]) if legacy else None
    # SIGTERM/SIGHUP like Ctrl-C: the running scenario's `finally` stops its
    # processes and removes its TAPs, namespace and socket.
    def _interrupt(sig, frame):
        raise KeyboardInterrupt(f"signal {sig}")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    if a.quick:
        a.reps, a.duration, a.warmup = 1, 3.0, 1.0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(a.out, stamp)
    os.makedirs(outdir, exist_ok=True)
    ctx = Ctx(a, outdir)

    helptext = subprocess.run([os.path.join(a.bin, "vhost-tap"), "--help"], capture_output=True, text=True).stdout
    sys_h2g = ["vhost-tap"] + (["vhost-tap-fq-codel"] if "fq-codel" in helptext else []) + ["dpdk-peer"]
    sys_g2h = ["vhost-tap", "dpdk-peer"]
    S = scenarios(sys_h2g, sys_g2h, a)
    want_sc = set(filter(None, a.scenarios.split(",")))
    want_sys = set(filter(None, a.systems.split(",")))
    want_fe = set(filter(None, a.frontends.split(",")))
    unknown = want_sc - {s["id"] for s in S}
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; known: {[s['id'] for s in S]}")
    if want_sc:
        S = [s for s in S if s["id"] in want_sc]
    else:
        S = [s for s in S if not s.get("optout")]  # --no-vm
    for s in S:
        # --frontends picks among testpmd/vu; the special scenarios' own
        # "frontends" (none, vu-bridge, tcg) always pass.
        s["combos"] = [(sy, fe) for sy, fe in s["combos"]
                       if (not want_sys or sy in want_sys)
                       and (not want_fe or fe in want_fe or fe in ("none", "spin", "vu-bridge", "tcg"))]
    if any(s.get("kind") == "latency" and s["combos"] for s in S):
        build_bridge(a, outdir)

    meta = {"stamp": stamp, "command": a.command, "bin": os.path.abspath(a.bin), "placements": placements,
            "gen_cpu": a.gen_cpu,
            "layouts": {pl: {sc["id"]: {f"{sy} / {fe}": layout(sy, fe, sc, pl, a) for sy, fe in sc["combos"]
                                           if sy != "dpdk-peer" or pl in (FAIR, UNPINNED)}
                             for sc in S} for pl in placements},
            "cpu": sh("lscpu | sed -n 's/^Model name: *//p'"),
            "ncpu": os.cpu_count(), "kernel": os.uname().release, "uptime_before": sh("uptime"),
            "reps": a.reps, "duration": a.duration, "warmup": a.warmup,
            "vhost_tap_help_modes": [m for m in ("backpressure", "fq-codel", "auto") if m in helptext],
            "dpdk": sh("dpkg-query -W -f='${Version}' dpdk"), "trafgen": sh("trafgen -v | head -1"),
            "git": sh(f"git -C {REPO} rev-parse --short HEAD") + (" + uncommitted changes" if sh(f"git -C {REPO} status --porcelain crates") else "")}
    if any(s.get("kind") == "latency" and s["combos"] for s in S):
        meta["iperf3"] = sh("iperf3 --version | head -1")
        meta["vu_bridge"] = os.path.join(a.bin, "vu-bridge")
    if any(s.get("kind") == "xdp" and s["combos"] for s in S):
        meta["qemu"] = sh("qemu-system-x86_64 --version | head -1")
        meta["vm_image_stamp"] = sh(f"cat {REPO}/vm-images/out/stamp 2>/dev/null")
    other = {s["id"]: s["reps"] for s in S if s.get("reps", a.reps) != a.reps}
    meta["reps_per_scenario"] = other
    def run_at(system, pl):
        """The placement a run of system gets in pl's turn, None for no run
        (the DPDK peer, never pinned, runs in one turn only)."""
        if system == "dpdk-peer":
            if pl == FAIR:
                return FAIR
            return UNPINNED if pl == peer_pl else None
        return pl

    nruns = sum(s.get("reps", a.reps) * sum(1 for sy, _ in s["combos"] for pl in placements if run_at(sy, pl))
                for s in S)
    print(f"bench: {len(S)} scenarios, {nruns} runs "
          f"({a.reps} repetitions each{', except ' + str(other) if other else ''}) → {outdir}", flush=True)
    show = placements != [UNPINNED]
    for pl in placements:
        print(f"bench: placement {pl}: generator (h2g) CPU {gen_cpu(pl, a)}, guest CPU {GUEST_CPU}, "
              f"system under test {place_cpus(pl) or 'unpinned'}, DPDK peer forwarding lcore CPU {peer_fwd_cpu(pl)}",
              flush=True)
    results = []
    raw = open(os.path.join(outdir, "runs.jsonl"), "w")
    offered = {}
    for sc in S:
        for rep in range(sc.get("reps", a.reps)):
            # Placements inside a repetition: a change in load hits every
            # (system, placement) alike.
            for pl in placements:
                for system, fe in sc["combos"]:
                    at = run_at(system, pl)
                    if at is None:
                        continue
                    who = f"{system:19} {fe:8}" + (f" {place_txt(at):9}" if show else "")
                    rate = None
                    if sc["slow"]:
                        base = offered.get("h2g-64") or 1.5e6
                        rate = a.slow_fraction * base
                    t = time.monotonic()
                    kind = sc.get("kind")
                    if kind == "latency":
                        r = latency_run(ctx, sc, system, rep, at)
                    elif kind == "xdp":
                        r = xdp_run(ctx, sc, system, rep, at)
                    else:
                        r = one_run(ctx, sc, system, fe, rep, rate, at)
                        if not r["ok"] and "exited during the window" in (r["error"] or ""):
                            print(f"  {sc['id']:11} {who} rep {rep}: retried "
                                  f"({r['error'].splitlines()[0]})", flush=True)
                            r = one_run(ctx, sc, system, fe, rep, rate, at)
                    results.append(r)
                    raw.write(json.dumps(r) + "\n")
                    raw.flush()
                    if r["ok"] and r.get("offered_pps") and sc["id"] == "h2g-64" and system == "bare" \
                            and (at == UNPINNED or "h2g-64" not in offered):
                        offered["h2g-64"] = r["offered_pps"]
                    status = "ok" if r["ok"] else "FAILED: " + ((r["error"] or "").splitlines() or [""])[0][:120]
                    pps = r.get("pps")
                    us = r.get("us_per_frame")
                    if kind == "latency":
                        print(f"  {sc['id']:11} {who} rep {rep}: ping p50 {fmt(r.get('ping_p50_ms'), 'ms')} "
                              f"p99 {fmt(r.get('ping_p99_ms'), 'ms')} ms, {r.get('goodput_mbps') or 0:.1f} Mbit/s, "
                              f"tun tail drops {r.get('tun_tail_drops', '-')}, daemon drops {r.get('daemon_drops_total', '-')}, "
                              f"AQM {r.get('aqm_drops_total', '-')}  [{time.monotonic() - t:.0f} s] {status}", flush=True)
                        continue
                    if kind == "xdp":
                        print(f"  {sc['id']:11} {who} rep {rep}: guest XDP drop {fmt(r.get('xdp_drop_pps'))} pps, "
                              f"delivered {fmt(pps)} pps, {us if us is not None else float('nan'):.2f} µs/frame, "
                              f"tun tail drops {fmt(r.get('tun_tail_drops_ps'))}/s, daemon drops {r.get('daemon_drops_total', '-')}"
                              f"  [{time.monotonic() - t:.0f} s] {status}", flush=True)
                        continue
                    print(f"  {sc['id']:11} {who} rep {rep}: "
                          f"{(pps or 0) / 1e6:7.3f} Mpps  {us if us is not None else float('nan'):6.2f} µs/frame  "
                          f"drops daemon={r.get('daemon_drops_total', '-')} tun={r.get('tun_tail_drops_ps', 0):.0f}/s  "
                          f"CPU% {r.get('cpu_pct') or 0:.0f}, guest {(r.get('parties_cpu_pct') or {}).get('frontend', 0):.0f}, "
                          f"gen {(r.get('parties_cpu_pct') or {}).get('trafgen', 0):.0f}, others' {r.get('other_load_pct', float('nan')):.0f}  "
                          f"[{time.monotonic() - t:.0f} s] {status}", flush=True)
    raw.close()
    meta["uptime_after"] = sh("uptime")
    agg = aggregate(results)
    with open(os.path.join(outdir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump(agg, f, indent=1)
    keys = ["scenario", "system", "frontend", "placement", "rep", "ok", "pps", "bps", "sent_pps", "offered_pps",
            "cpu_pct", "us_per_frame", "other_load_pct", "tun_tail_drops_ps", "qdisc_drops_ps", "daemon_drops_total", "aqm_drops_ps",
            "peer_drops_ps", "guest_drops_ps", "tap_tx_pps", "window_s", "slow_rate",
            "ping_p50_ms", "ping_p99_ms", "ping_max_ms", "ping_loss_pct", "goodput_mbps", "flows_mbps",
            "flow_spread_pct", "tun_tail_drops", "qdisc_drops", "aqm_drops_total", "ecn_marks",
            "xdp_drop_pps", "xdp_1s_median_pps", "xdp_drops_total", "us_per_frame_read", "boot_to_xdp_s",
            "error"]
    with open(os.path.join(outdir, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({k: r.get(k) for k in keys})
    md = summary_md(S, agg, meta)
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write(md)
    plots(S, agg, outdir)
    print(md)
    print(f"bench: results in {outdir}")


if __name__ == "__main__":
    main()
