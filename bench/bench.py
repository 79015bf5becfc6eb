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

# Placement (2 cores): the load generator (trafgen) on core 0, the frontend
# ("guest": testpmd's forwarding lcore, or vu-guest) on core 1, the system
# under test unpinned (testpmd peers use -l 0,1, so their forwarding lcore is 1).
GEN_CPU = "0"
GUEST_CPU = "1"


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


def daemon_counters(proc, timeout=5.0):
    """SIGUSR1, then the last report: summed over queues {counter: value}."""
    before = proc.text().count("counters:")
    proc.p.send_signal(signal.SIGUSR1)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = proc.text()
        if text.count("counters:") > before:
            time.sleep(0.05)
            return parse_counters(proc.text())
        time.sleep(0.02)
    return {}


def parse_counters(text):
    start = text.rfind("counters:")
    if start < 0:
        return {}
    out = {}
    for line in text[start:].splitlines()[1:]:
        line = line.strip()
        if not line.startswith("device="):
            if line and not line.startswith("tap=") and "=" not in line.split()[0]:
                break
            continue
        for kv in line.split()[2:]:
            k, _, v = kv.partition("=")
            try:
                out[k] = out.get(k, 0) + int(v)
            except ValueError:
                pass
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


def start_system(ctx, system, sc, logdir, tap, sock):
    """Returns (Proc, kind) once it listens / has its TAP."""
    q = sc["queues"]
    if system.startswith("vhost-tap"):
        mode = "fq-codel" if system.endswith("fq-codel") else "backpressure"
        argv = [os.path.join(ctx.bin, "vhost-tap"), "--socket", sock, "--tap", tap,
                "--mode", mode, "--queues", str(q)]
        p = Proc("system", argv, logdir, env={"RUST_LOG": "info"})
        ok = p.wait_for(r"listening on", 10)
        return p, ok
    if system == "dpdk-peer":
        argv = ["stdbuf", "-oL", "dpdk-testpmd", "-l", "0,1", "--no-pci", "--no-huge", "-m", "512",
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
    if system in ("bare", "bare-cold"):
        mode = "read" if sc["dir"] == "h2g" else "write"
        argv = [os.path.join(ctx.bin, "bare-tap"), "--tap", tap, "--mode", mode, "--queues", str(q),
                "--size", str(sc["size"])]
        if sc.get("gso"):
            argv.append("--gso")
        if system == "bare-cold":
            argv += ["--buffers", "1024"]
        p = Proc("system", argv, logdir)
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


def snapshot(sys_proc, system, tap):
    s = {"t": time.monotonic()}
    cpu, threads = proc_cpu(sys_proc.pid)
    s["cpu"] = cpu
    s["threads"] = threads
    s.update(tap_stats(tap))
    s.update(qdisc_stats(tap))
    if system.startswith("vhost-tap"):
        s["daemon"] = daemon_counters(sys_proc)
    s["t_end"] = time.monotonic()
    return s


def one_run(ctx, sc, system, fe, rep, rate=None):
    a = ctx.args
    name = f"{sc['id']}__{system}__{fe}__r{rep}"
    logdir = os.path.join(ctx.outdir, "logs", name)
    os.makedirs(logdir, exist_ok=True)
    tap = ctx.uniq("bt")
    sock = os.path.join(logdir, "vhost.sock")
    res = {"scenario": sc["id"], "dir": sc["dir"], "size": sc["size"], "gso": bool(sc.get("gso")),
           "queues": sc["queues"], "system": system, "frontend": fe, "rep": rep,
           "duration": a.duration, "slow_rate": rate, "ok": False, "error": None}
    procs = []
    gen = None
    try:
        sp, ok = start_system(ctx, system, sc, logdir, tap, sock)
        procs.append(sp)
        if not ok:
            raise RuntimeError(f"{system} did not start:\n{sp.text()[-2000:]}")
        fp = None
        if fe != "none":
            fp, ok = start_frontend(ctx, fe, system, sc, logdir, sock, rate)
            procs.append(fp)
            if not ok:
                raise RuntimeError(f"frontend {fe} did not connect:\n{fp.text()[-2000:]}")
            if system.startswith("vhost-tap") and not sp.wait_for(r"guest acked features", 10):
                raise RuntimeError("daemon saw no feature negotiation")
        time.sleep(0.5)
        if sc["dir"] == "h2g":
            conf = os.path.join(logdir, "udp.trafgen")
            trafgen_conf(conf, sc["size"])
            gen = Proc("trafgen", ["trafgen", "--dev", tap, "--conf", conf, "-P", "1",
                                   "--no-sock-mem", "-q"], logdir, cpus=GEN_CPU)
            procs.append(gen)
        time.sleep(a.warmup)
        s0 = snapshot(sp, system, tap)
        perf = None
        if a.perf and system.startswith("vhost-tap") and rep == 0:
            pdata = os.path.join(logdir, "perf.data")
            perf = subprocess.Popen(["perf", "record", "-g", "-F", "999", "-p", str(sp.pid), "-o", pdata,
                                     "--", "sleep", str(a.duration)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(a.duration)
        s1 = snapshot(sp, system, tap)
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
            if fe == "none":
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
            elif fe == "none":
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
        # where frames went (per second, over the window)
        d = lambda k: (s1.get(k, 0) - s0.get(k, 0)) / win
        res["tap_tx_pps"] = d("tx_packets")          # into the tun ring (host->guest)
        res["tun_tail_drops_ps"] = d("tx_dropped")   # tun ring full
        res["tap_rx_dropped_ps"] = d("rx_dropped")
        res["qdisc_drops_ps"] = d("qdisc_dropped")
        res["qdisc_sent_pps"] = d("qdisc_sent_pkts")
        if sc["dir"] == "h2g":
            res["offered_pps"] = d("qdisc_sent_pkts") + d("qdisc_dropped")
        if "daemon" in s1:
            c0, c1 = s0["daemon"], s1["daemon"]
            res["daemon_counters"] = {k: c1[k] - c0.get(k, 0) for k in c1
                                      if not k.endswith("high_water") and not k.startswith("rx_aqm_backlog")
                                      and k != "rx_aqm_flows"}
            res["daemon_drops"] = {k: v for k, v in res["daemon_counters"].items() if is_drop(k) and v}
            res["daemon_drops_total"] = sum(v for k, v in res["daemon_counters"].items() if is_drop(k))
            res["aqm_drops"] = {k: v for k, v in res["daemon_counters"].items() if is_aqm_drop(k) and v}
            res["aqm_drops_ps"] = sum(v for k, v in res["daemon_counters"].items() if is_aqm_drop(k)) / win
            res["ring_high_water"] = c1.get("rx_ring_high_water")
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
# scenarios

def scenarios(systems_h2g, systems_g2h):
    fes = ["testpmd", "vu"]
    S = []
    def add(id_, dir_, size, queues=1, gso=False, frontends=fes, systems=None, bare=True, slow=False, title="",
            cold=False):
        combos = [(s, f) for s in systems for f in frontends]
        if bare:
            combos.append(("bare", "none"))
        if cold:
            combos.append(("bare-cold", "none"))
        S.append({"id": id_, "dir": dir_, "size": size, "queues": queues, "gso": gso,
                  "combos": combos, "slow": slow, "title": title})
    add("h2g-64", "h2g", 64, systems=systems_h2g, title="host→guest, 64 B frames, 1 queue pair")
    add("g2h-64", "g2h", 64, systems=systems_g2h, title="guest→host, 64 B frames, 1 queue pair")
    add("h2g-1500", "h2g", 1514, systems=systems_h2g, title="host→guest, 1514 B frames")
    add("g2h-1500", "g2h", 1514, systems=systems_g2h, title="guest→host, 1514 B frames")
    add("g2h-gso64k", "g2h", 65536, gso=True, frontends=["vu"], systems=systems_g2h, cold=True,
        title="guest→host, 64 KiB TCPv4 GSO frames (offloads on)")
    add("h2g-64-2q", "h2g", 64, queues=2, systems=systems_h2g, title="host→guest, 64 B, 2 queue pairs")
    add("g2h-64-2q", "g2h", 64, queues=2, systems=systems_g2h, title="guest→host, 64 B, 2 queue pairs")
    add("h2g-slow", "h2g", 64, frontends=["vu"], systems=systems_h2g, bare=False, slow=True,
        title="host→guest, 64 B, slow guest taking 10 % of the offered rate")
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
    return f"{v:.0f}"


def aggregate(results):
    groups = {}
    for r in results:
        groups.setdefault((r["scenario"], r["system"], r["frontend"]), []).append(r)
    out = []
    for (scid, system, fe), rs in groups.items():
        ok = [r for r in rs if r["ok"]]
        g = {"scenario": scid, "system": system, "frontend": fe, "runs": len(rs), "ok_runs": len(ok),
             "errors": [r["error"] for r in rs if not r["ok"]]}
        for k in ("pps", "bps", "us_per_frame", "cpu_pct", "offered_pps", "tun_tail_drops_ps",
                  "qdisc_drops_ps", "guest_drops_ps", "peer_drops_ps", "sent_pps", "daemon_drops_total",
                  "aqm_drops_ps"):
            g[k] = med_spread([r.get(k) for r in ok])
        drops = {}
        for r in ok:
            for k, v in (r.get("daemon_drops") or {}).items():
                drops[k] = drops.get(k, 0) + v
        g["daemon_drops_by_reason"] = drops
        g["threads"] = ok[len(ok) // 2].get("threads_cpu_pct") if ok else {}
        out.append(g)
    return out


def summary_md(S, agg, meta):
    L = []
    by = {(g["scenario"], g["system"], g["frontend"]): g for g in agg}
    L.append(f"# Benchmark results {meta['stamp']}\n")
    L.append(f"Command: `{meta['command']}`  ")
    L.append(f"Machine: {meta['cpu']}, {meta['ncpu']} CPUs, kernel {meta['kernel']}  ")
    L.append(f"Load before/after: `{meta['uptime_before']}` / `{meta.get('uptime_after', '')}`  ")
    L.append(f"Repetitions: {meta['reps']} × {meta['duration']} s (warm-up {meta['warmup']} s); "
             "medians, spread = min–max over the repetitions.\n")
    L.append("Placement: trafgen on CPU 0, frontend (testpmd forwarding lcore 1 / vu-guest) on CPU 1, "
             "system under test unpinned (DPDK peer: -l 0,1, forwarding lcore on CPU 1).\n")
    for sc in S:
        rows = [by[(sc["id"], s, f)] for s, f in sc["combos"] if (sc["id"], s, f) in by]
        if not rows:
            continue
        L.append(f"## {sc['id']}: {sc['title']}\n")
        gbps = sc.get("gso") or sc["size"] > 1000
        L.append("| system | frontend | Mpps (min–max) | " + ("Gbit/s | " if gbps else "") +
                 "CPU % | µs CPU/frame (min–max) | offered Mpps | tun tail drops/s | qdisc drops/s | "
                 "daemon drops | AQM drops/s | peer drops/s | guest drops/s |")
        L.append("|---|---|---|" + ("---|" if gbps else "") + "---|---|---|---|---|---|---|---|---|")
        for g in rows:
            m, lo, hi = g["pps"]
            u, ulo, uhi = g["us_per_frame"]
            dd = g["daemon_drops_total"][0]
            ddtxt = "–" if dd is None else (f"{dd:.0f}" + (f" ({', '.join(f'{k}={v}' for k, v in g['daemon_drops_by_reason'].items())})" if g["daemon_drops_by_reason"] else ""))
            err = "" if g["ok_runs"] == g["runs"] else f" ({g['runs'] - g['ok_runs']} failed)"
            L.append(f"| {g['system']}{err} | {g['frontend']} | {fmt(m, 'Mpps')} ({fmt(lo, 'Mpps')}–{fmt(hi, 'Mpps')}) | "
                     + (f"{fmt(g['bps'][0], 'Gbps')} | " if gbps else "")
                     + f"{fmt(g['cpu_pct'][0], 'pct')} | {fmt(u, 'us')} ({fmt(ulo, 'us')}–{fmt(uhi, 'us')}) | "
                     f"{fmt(g['offered_pps'][0], 'Mpps')} | {fmt(g['tun_tail_drops_ps'][0])} | "
                     f"{fmt(g['qdisc_drops_ps'][0])} | {ddtxt} | {fmt(g['aqm_drops_ps'][0])} | {fmt(g['peer_drops_ps'][0])} | "
                     f"{fmt(g['guest_drops_ps'][0])} |")
        L.append("")
    L.append("## Targets\n")
    L += targets(agg)
    fails = [g for g in agg if g["errors"]]
    if fails:
        L.append("\n## Failed runs\n")
        for g in fails:
            L.append(f"- {g['scenario']} {g['system']} {g['frontend']}: {g['errors'][0][:300]!r}")
    return "\n".join(L) + "\n"


def targets(agg):
    by = {(g["scenario"], g["system"], g["frontend"]): g for g in agg}
    L = []

    def get(sc, sy, fe, k):
        g = by.get((sc, sy, fe))
        return g[k][0] if g and g[k][0] is not None else None

    def line(name, val, goal, ok):
        mark = "–" if ok is None else ("met" if ok else "MISSED")
        L.append(f"| {name} | {val} | {goal} | {mark} |")

    L.append("| target | measured (medians) | goal | |")
    L.append("|---|---|---|---|")
    for fe in ("testpmd", "vu"):
        d = get("h2g-64", "vhost-tap", fe, "us_per_frame")
        b = get("h2g-64", "bare", "none", "us_per_frame")
        if d and b:
            line(f"h2g 64 B CPU/frame vs bare read() ({fe} guest)", f"{d:.2f} / {b:.2f} µs = {d / b:.2f}×",
                 "≤ 1.2×", d / b <= 1.2)
        p = get("h2g-64", "vhost-tap", fe, "pps")
        if p:
            line(f"h2g 64 B pps vs 2× cloud-hypervisor reference ({fe} guest)",
                 f"{p / 1e6:.3f} Mpps vs 2 × {CH_REF_H2G_MPPS} (TESTBED reference, not this run) = "
                 f"{p / 1e6 / CH_REF_H2G_MPPS:.2f}× ", "≥ 2×", p / 1e6 >= 2 * CH_REF_H2G_MPPS)
        p = get("g2h-64", "vhost-tap", fe, "pps")
        q = get("g2h-64", "dpdk-peer", fe, "pps")
        if p and q:
            line(f"g2h 64 B pps vs DPDK peer ({fe} guest)", f"{p / 1e6:.3f} vs {q / 1e6:.3f} Mpps = {p / q:.2f}×",
                 "≥ 1×", p >= q)
        d = get("g2h-64", "vhost-tap", fe, "us_per_frame")
        b = get("g2h-64", "bare", "none", "us_per_frame")
        if d and b:
            line(f"g2h 64 B CPU/frame vs bare write() ({fe} guest)", f"{d:.2f} / {b:.2f} µs = {d / b:.2f}×",
                 "≤ 1.2×", d / b <= 1.2)
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
                reasons[f"{g['scenario']}/{g['system']}/{k}"] = v
    aqm = {f"{g['scenario']}/{g['system']}": round(g["aqm_drops_ps"][0]) for g in agg
           if g["aqm_drops_ps"][0]}
    if aqm:
        L.append(f"| (fq-codel AQM decisions, drops/s, not counted above) | {aqm} | by design | – |")
    line("daemon drops, every scenario (all repetitions)", f"{tot:.0f} " + (str(reasons) if reasons else ""),
         "0", tot == 0)
    return L


def plots(S, agg, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing, no plots", file=sys.stderr)
        return []
    by = {(g["scenario"], g["system"], g["frontend"]): g for g in agg}
    files = []
    for sc in S:
        rows = [by[(sc["id"], s, f)] for s, f in sc["combos"] if (sc["id"], s, f) in by]
        rows = [g for g in rows if g["pps"][0] is not None]
        if not rows:
            continue
        gb = bool(sc.get("gso"))
        fig, axs = plt.subplots(1, 2, figsize=(9, 3.2))
        labels = [f"{g['system']}\n{g['frontend']}" for g in rows]
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
            ax.set_xticklabels(labels, fontsize=6.5)
            ax.set_ylabel(un)
            ax.set_title(title, fontsize=9)
        fig.suptitle(f"{sc['id']}: {sc['title']}", fontsize=9)
        fig.tight_layout()
        f = os.path.join(outdir, f"{sc['id']}.png")
        fig.savefig(f, dpi=80)
        plt.close(fig)
        files.append(f)
    return files


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="measurement window, s")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true", help="1 × 3 s, warm-up 1 s")
    ap.add_argument("--scenarios", default="", help="comma list of scenario ids (default all)")
    ap.add_argument("--systems", default="", help="comma list: vhost-tap,vhost-tap-fq-codel,dpdk-peer,bare")
    ap.add_argument("--frontends", default="", help="comma list: testpmd,vu")
    ap.add_argument("--slow-fraction", type=float, default=0.10)
    ap.add_argument("--perf", action="store_true", help="perf record the daemon in its first repetition")
    ap.add_argument("--bin", default=os.environ.get("BENCH_BIN", "/work/target-bench/release"))
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--command", default=" ".join(sys.argv))
    a = ap.parse_args()
    if a.quick:
        a.reps, a.duration, a.warmup = 1, 3.0, 1.0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(a.out, stamp)
    os.makedirs(outdir, exist_ok=True)
    ctx = Ctx(a, outdir)

    helptext = subprocess.run([os.path.join(a.bin, "vhost-tap"), "--help"], capture_output=True, text=True).stdout
    sys_h2g = ["vhost-tap"] + (["vhost-tap-fq-codel"] if "fq-codel" in helptext else []) + ["dpdk-peer"]
    sys_g2h = ["vhost-tap", "dpdk-peer"]
    S = scenarios(sys_h2g, sys_g2h)
    want_sc = set(filter(None, a.scenarios.split(",")))
    want_sys = set(filter(None, a.systems.split(",")))
    want_fe = set(filter(None, a.frontends.split(",")))
    S = [s for s in S if not want_sc or s["id"] in want_sc]
    for s in S:
        s["combos"] = [(sy, fe) for sy, fe in s["combos"]
                       if (not want_sys or sy in want_sys) and (not want_fe or fe in want_fe or fe == "none")]

    meta = {"stamp": stamp, "command": a.command, "cpu": sh("lscpu | sed -n 's/^Model name: *//p'"),
            "ncpu": os.cpu_count(), "kernel": os.uname().release, "uptime_before": sh("uptime"),
            "reps": a.reps, "duration": a.duration, "warmup": a.warmup,
            "vhost_tap_help_modes": [m for m in ("backpressure", "fq-codel", "auto") if m in helptext],
            "dpdk": sh("dpkg-query -W -f='${Version}' dpdk"), "trafgen": sh("trafgen -v | head -1"),
            "git": sh(f"git -C {REPO} rev-parse --short HEAD") + (" + uncommitted changes" if sh(f"git -C {REPO} status --porcelain crates") else "")}
    print(f"bench: {len(S)} scenarios, {sum(len(s['combos']) for s in S)} combinations × {a.reps} → {outdir}", flush=True)
    results = []
    raw = open(os.path.join(outdir, "runs.jsonl"), "w")
    offered = {}
    for sc in S:
        for rep in range(a.reps):
            for system, fe in sc["combos"]:
                rate = None
                if sc["slow"]:
                    base = offered.get("h2g-64") or 1.5e6
                    rate = a.slow_fraction * base
                t = time.monotonic()
                r = one_run(ctx, sc, system, fe, rep, rate)
                results.append(r)
                raw.write(json.dumps(r) + "\n")
                raw.flush()
                if r["ok"] and r.get("offered_pps") and sc["id"] == "h2g-64" and system == "bare":
                    offered["h2g-64"] = r["offered_pps"]
                status = "ok" if r["ok"] else "FAILED: " + (r["error"] or "").splitlines()[0][:120]
                pps = r.get("pps")
                us = r.get("us_per_frame")
                print(f"  {sc['id']:11} {system:19} {fe:8} rep {rep}: "
                      f"{(pps or 0) / 1e6:7.3f} Mpps  {us if us is not None else float('nan'):6.2f} µs/frame  "
                      f"drops daemon={r.get('daemon_drops_total', '-')} tun={r.get('tun_tail_drops_ps', 0):.0f}/s  "
                      f"[{time.monotonic() - t:.0f} s] {status}", flush=True)
    raw.close()
    meta["uptime_after"] = sh("uptime")
    agg = aggregate(results)
    with open(os.path.join(outdir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump(agg, f, indent=1)
    keys = ["scenario", "system", "frontend", "rep", "ok", "pps", "bps", "sent_pps", "offered_pps",
            "cpu_pct", "us_per_frame", "tun_tail_drops_ps", "qdisc_drops_ps", "daemon_drops_total", "aqm_drops_ps",
            "peer_drops_ps", "guest_drops_ps", "tap_tx_pps", "window_s", "slow_rate", "error"]
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
