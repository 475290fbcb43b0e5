"""Plot one constrained viewer's layer and bandwidth estimate over time.

The trace comes from tests/test_abr_congestion.py (Chromium publishes three layers; one
aiortc viewer's link is shaped to half the top layer's bitrate, then freed)::

    ABR_TRACE=loadtest/results/abr_trace.json .venv/bin/pytest tests/test_abr_congestion.py
    .venv/bin/python -m loadtest.plot_abr loadtest/results/abr_trace.json

writes loadtest/results/abr_trace.png beside it.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["plot_abr"]

RANK = {"l": 0, "m": 1, "h": 2}


def _moments(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    """When the limit started and ended, and when the viewer left and regained the top."""
    limited = [s["t"] for s in samples if s["limit_bps"]]
    start = limited[0] if limited else None
    end = next((s["t"] for s in samples if start and s["t"] > start and not s["limit_bps"]), None)
    down = next((s["t"] for s in samples if start and s["t"] >= start and s["layer"] != "h"), None)
    up = next((s["t"] for s in samples if end and s["t"] >= end and s["layer"] == "h"), None)
    return {"limited": start, "lifted": end, "down": down, "up": up}


def plot_abr(trace: dict[str, Any], path: Path) -> dict[str, float | None]:
    """Two panels sharing time: bit/s (limit, estimate, received, top layer) and layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = trace["samples"]
    t = [s["t"] for s in samples]
    moments = _moments(samples)
    fig, (ax_b, ax_l) = plt.subplots(
        2, 1, sharex=True, figsize=(9, 6), constrained_layout=True, height_ratios=[2, 1]
    )

    def mbit(key: str) -> list[float | None]:
        return [None if s[key] is None else s[key] / 1e6 for s in samples]

    ax_b.step(t, mbit("limit_bps"), where="post", color="black", label="link limit (shaper)")
    ax_b.plot(t, mbit("received_bps"), color="tab:green", label="sent to the viewer")
    ax_b.plot(t, mbit("estimate_bps"), color="tab:orange", label="ABR estimate")
    padding = [0.0] + [
        (b["padding_bytes"] - a["padding_bytes"]) * 8 / (b["t"] - a["t"]) / 1e6
        for a, b in itertools.pairwise(samples)
    ]
    ax_b.fill_between(t, padding, step="pre", color="tab:blue", alpha=0.3, label="probe padding")
    ax_b.plot(t, mbit("top_bps"), color="tab:gray", linestyle=":", label="top layer (h) ingest")
    ax_b.set_ylabel("Mbit/s")
    ax_b.set_ylim(bottom=0)
    ax_b.legend(loc="upper right", fontsize="small")
    ax_l.step(t, [RANK.get(s["layer"], -1) for s in samples], where="post", label="constrained")
    ax_l.step(
        t,
        [RANK.get(s["free_layer"], -1) + 0.05 for s in samples],
        where="post",
        color="tab:gray",
        linestyle="--",
        label="unconstrained",
    )
    ax_l.set_yticks(list(RANK.values()), [f"{rid}" for rid in RANK])
    ax_l.set_ylabel("layer")
    ax_l.set_xlabel("seconds")
    ax_l.legend(loc="lower right", fontsize="small")
    title = "Automatic layer choice for a viewer whose link shrinks, then recovers"
    if moments["limited"] is not None and moments["down"] is not None:
        title += f"\ndown {moments['down'] - moments['limited']:.1f} s after the limit"
    if moments["lifted"] is not None and moments["up"] is not None:
        title += f", back on top {moments['up'] - moments['lifted']:.1f} s after it lifted"
    for key in ("limited", "lifted"):
        if moments[key] is not None:
            for ax in (ax_b, ax_l):
                ax.axvline(moments[key], color="black", linewidth=0.5, alpha=0.4)
    fig.suptitle(title, fontsize="medium")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return moments


def main() -> None:
    source = Path(sys.argv[1])
    moments = plot_abr(json.loads(source.read_text()), source.with_suffix(".png"))
    print(json.dumps(moments))


if __name__ == "__main__":
    main()
