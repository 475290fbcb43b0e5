"""The load test's PNG: viewers, aggregate bitrate, loss and server CPU/RSS over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot"]


def plot(report: dict[str, Any], path: Path) -> None:
    """Four stacked subplots sharing the time axis (matplotlib, Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = report["timeseries"]
    t = [p["t"] for p in pts]
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(8, 9), constrained_layout=True)
    ax_v, ax_b, ax_l, ax_c = axes
    ax_v.plot(t, [p["connected"] for p in pts], label="connected")
    ax_v.plot(t, [p["failed"] for p in pts], label="failed", color="tab:red")
    ax_v.set_ylabel("viewers")
    ax_v.legend(loc="upper left")
    ax_b.plot(t, [p["bitrate_bps"] / 1e6 for p in pts], color="tab:green")
    ax_b.set_ylabel("aggregate Mbit/s")
    ax_b.set_ylim(bottom=0)
    ax_l.plot(t, [p["loss_pct"] for p in pts], color="tab:orange")
    ax_l.set_ylabel("loss %")
    ax_l.set_ylim(0, max([1.0, *(p["loss_pct"] * 1.2 for p in pts)]))
    cpu = [(x, p["server_cpu_pct"]) for x, p in zip(t, pts, strict=True)]
    cpu = [(x, y) for x, y in cpu if y is not None]
    rss = [(x, p["server_rss_bytes"]) for x, p in zip(t, pts, strict=True)]
    rss = [(x, y / 2**20) for x, y in rss if y is not None]
    if cpu:
        ax_c.plot(*zip(*cpu, strict=True), color="tab:purple", label="CPU")
        ax_c.set_ylabel("server CPU %")
        ax_c.set_ylim(bottom=0)
    else:
        ax_c.text(0.5, 0.5, "server CPU not exposed", ha="center", transform=ax_c.transAxes)
    if rss:
        twin = ax_c.twinx()
        twin.plot(*zip(*rss, strict=True), color="tab:gray", linestyle="--", label="RSS")
        twin.set_ylabel("server RSS MiB")
    ax_c.set_xlabel("seconds since start")
    for ax in axes:
        ax.grid(alpha=0.3)
    agg, args = report["aggregate"], report["args"]
    loss = agg["loss_pct"]
    title = f"{args['viewers']} viewers of {report['target']['stream']!r}: "
    title += f"{agg['bitrate_bps'] / 1e6:.1f} Mbit/s, loss "
    title += f"{loss:.2f}%" if loss is not None else "n/a"
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
