#!/usr/bin/python3
"""Plot a soak run's samples: tests/soak-plot.py SAMPLES.csv OUT.png

The CSV comes from `VT_SOAK_CSV=FILE` with crates/vhost-tap/tests/soak.rs:
t_s, open_fds, rss_kib, connections (frontend connections so far)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(src)))
t = [float(r["t_s"]) / 60 for r in rows]
fig, ax = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
ax[0].plot(t, [int(r["open_fds"]) for r in rows], marker=".")
ax[0].set_ylabel("open fds")
ax[1].plot(t, [int(r["rss_kib"]) / 1024 for r in rows], marker=".", color="tab:orange")
ax[1].set_ylabel("RSS (MiB)")
ax[2].plot(t, [int(r["connections"]) for r in rows], marker=".", color="tab:green")
ax[2].set_ylabel("connections so far")
ax[2].set_xlabel("minutes")
for a in ax:
    a.set_ylim(bottom=0)
    a.grid(alpha=0.3)
fig.suptitle("vhost-tap soak: 2 devices x 2 queue pairs, RX stalls, reconnects every 2-6 s")
fig.tight_layout()
fig.savefig(out, dpi=90)
print(f"soak-plot: {out}")
