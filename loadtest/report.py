"""The load test's numbers: server samples, the per-second series and the JSON report.

Report fields (all times in ms are measured from the viewer's WHEP POST):

- ``window_s``: seconds from the first viewer's scheduled join to the stop (ramp + duration).
- ``viewers[]``: per viewer ``packets_received``, ``packets_lost`` (expected - received from
  the lowest/highest extended RTP sequence number, per SSRC, audio + video),
  ``loss_pct``, ``bytes_received`` (RTP payload), ``bitrate_bps`` (payload bytes from its
  first RTP to the stop), ``jitter_ms`` (RFC 3550, the worse track), ``join_ms`` (POST ->
  201), ``first_rtp_ms``, ``first_keyframe_ms``, ``first_frame_ms`` (first keyframe RTP for
  counting viewers, first decoded frame for decoding viewers), ``tracks`` and ``decoded``.
- ``aggregate``: the sums, ``loss_pct`` over all, ``bitrate_bps`` = the sum of the viewers'
  bitrates (what the server delivers with everyone connected), ``mean_bitrate_bps`` = all
  bytes over ``window_s``, and n/min/mean/p50/p95/p99/max of the latencies and jitter.
- ``failures`` (viewer, reason) and ``failure_reasons`` (reason -> count).
- ``timeseries``: per second ``t`` (s since start), ``connected``, ``failed``,
  ``bitrate_bps``, ``loss_pct`` (lost / expected within that second), ``server_cpu_pct``
  and ``server_rss_bytes`` (null when neither /metrics nor --server-pid gives them).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from loadtest.stats import summarize

__all__ = ["Series", "ServerSampler", "build_report", "parse_metrics", "progress_line"]

CPU, RSS = "process_cpu_seconds_total", "process_resident_memory_bytes"


def parse_metrics(text: str) -> dict[str, float]:
    """The unlabelled samples of the Prometheus process collector found in `text`."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in (CPU, RSS):
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return out


class ServerSampler:
    """Server CPU seconds and RSS: from /metrics when it has them, else /proc/<pid> (when
    the server runs on this machine and its pid was given), else None."""

    def __init__(self, metrics_url: str, headers: dict[str, str], pid: int | None) -> None:
        self.url, self.headers, self.pid = metrics_url, headers, pid
        self.source: str | None = None
        self.use_metrics = True  # until /metrics answers without them, or fails 3 times
        self.misses = 0
        self.last: tuple[float, float] | None = None  # (t, cpu seconds)

    def _proc(self) -> dict[str, float]:
        if self.pid is None:
            return {}
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            pages = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return {}
        tick = os.sysconf("SC_CLK_TCK")
        cpu = (int(stat[11]) + int(stat[12])) / tick
        return {CPU: cpu, RSS: float(pages * os.sysconf("SC_PAGE_SIZE"))}

    def _metrics(self, client: httpx.Client) -> dict[str, float]:
        try:
            r = client.get(self.url, headers=self.headers, timeout=1.0)
        except httpx.HTTPError:
            self.misses += 1
            self.use_metrics = self.misses < 3
            return {}
        values = parse_metrics(r.text) if r.status_code == 200 else {}
        self.use_metrics = bool(values)
        return values

    def sample(self, client: httpx.Client) -> tuple[float | None, float | None]:
        """(CPU %, RSS bytes) now; the first CPU % is None (it needs two samples)."""
        values = self._metrics(client) if self.use_metrics else {}
        if values:
            self.source = "metrics"
        elif values := self._proc():
            self.source = f"/proc/{self.pid}"
        now, cpu_pct = time.monotonic(), None
        if CPU in values:
            if self.last is not None and now > self.last[0]:
                cpu_pct = 100 * (values[CPU] - self.last[1]) / (now - self.last[0])
            self.last = (now, values[CPU])
        return cpu_pct, values.get(RSS)


class Series:
    """Per-second aggregate points from the workers' cumulative snapshots."""

    def __init__(self) -> None:
        self.latest: dict[int, dict[str, int]] = {}
        self.times: dict[int, float] = {}  # when each worker took its latest snapshot
        self.points: list[dict[str, Any]] = []
        self._prev: dict[str, float] | None = None

    def update(self, wid: int, t: float, snapshot: dict[str, int]) -> None:
        self.latest[wid], self.times[wid] = snapshot, t

    def snapshot_time(self, default: float) -> float:
        """When the workers' latest snapshots were taken (monotonic): points are dated so,
        not by when they are computed."""
        return max(self.times.values(), default=default)

    def totals(self) -> dict[str, int]:
        keys = ("connected", "failed", "received", "expected", "lost", "bytes")
        return {k: sum(s.get(k, 0) for s in self.latest.values()) for k in keys}

    def point(self, t: float, cpu: float | None, rss: float | None) -> dict[str, Any]:
        tot = self.totals()
        cur = {"t": t, "bytes": tot["bytes"], "expected": tot["expected"], "lost": tot["lost"]}
        prev = self._prev or {"t": 0.0, "bytes": 0, "expected": 0, "lost": 0}
        dt = t - prev["t"]
        if dt <= 0 and self.points:  # no new snapshot since the last point
            return self.points[-1]
        d_exp, d_lost = cur["expected"] - prev["expected"], cur["lost"] - prev["lost"]
        p: dict[str, Any] = {"t": round(t, 3), "connected": tot["connected"]}
        p["failed"] = tot["failed"]
        p["bitrate_bps"] = (cur["bytes"] - prev["bytes"]) * 8 / dt if dt > 0 else 0.0
        p["loss_pct"] = max(0.0, 100 * d_lost / d_exp) if d_exp > 0 else 0.0
        p["packets_received"], p["packets_lost"] = tot["received"], tot["lost"]
        p["server_cpu_pct"], p["server_rss_bytes"] = cpu, rss
        self._prev = cur
        self.points.append(p)
        return p


def _sum(viewers: list[dict[str, Any]], key: str) -> int:
    return sum(v.get(key) or 0 for v in viewers)


def aggregate(viewers: list[dict[str, Any]], window_s: float) -> dict[str, Any]:
    received, lost = _sum(viewers, "packets_received"), _sum(viewers, "packets_lost")
    expected, octets = _sum(viewers, "packets_expected"), _sum(viewers, "bytes_received")
    decoding = [v for v in viewers if v["decode"]]
    a: dict[str, Any] = {"viewers": len(viewers)}  # those that reported
    a["receiving"] = sum(1 for v in viewers if v["packets_received"] and not v["error"])
    a["failed"] = sum(1 for v in viewers if v["error"])
    a |= {"packets_received": received, "packets_lost": lost, "packets_expected": expected}
    a["loss_pct"] = 100 * lost / expected if expected else None
    a["bytes_received"] = octets
    a["bitrate_bps"] = sum(v["bitrate_bps"] or 0 for v in viewers)
    a["mean_bitrate_bps"] = octets * 8 / window_s if window_s > 0 else None
    a["rtx_packets"] = _sum(viewers, "rtx_packets")
    for key in ("join_ms", "first_rtp_ms", "first_keyframe_ms", "first_frame_ms", "jitter_ms"):
        a[key] = summarize([v[key] for v in viewers])
    a["loss_pct_per_viewer"] = summarize([v["loss_pct"] for v in viewers])
    a["decoded_frames"] = sum(v["decoded"]["frames"] for v in decoding)
    skips = [v["decoded"]["counter_skips"] for v in decoding]
    a["decoded_counter_skips"] = None if None in skips else sum(skips)  # synthetic only
    return a


def build_report(
    meta: dict[str, Any],
    viewers: list[dict[str, Any]],
    series: Series,
    window_s: float,
    errors: list[str],
) -> dict[str, Any]:
    viewers = sorted(viewers, key=lambda v: v["id"])
    failures = [{"viewer": v["id"], "reason": v["error"]} for v in viewers if v["error"]]
    failures += [{"viewer": None, "reason": e} for e in errors]
    cpu = [p["server_cpu_pct"] for p in series.points]
    rss = [p["server_rss_bytes"] for p in series.points]
    r = dict(meta)
    r["window_s"] = window_s
    r["aggregate"] = aggregate(viewers, window_s)
    r["failures"] = failures
    r["failure_reasons"] = dict(Counter(f["reason"] for f in failures))
    r["server"] = meta.get("server", {}) | {
        "cpu_pct": summarize(cpu),
        "rss_bytes_max": max((x for x in rss if x is not None), default=None),
    }
    r["timeseries"] = series.points
    r["viewers"] = viewers
    return r


def progress_line(p: dict[str, Any], viewers: int) -> str:
    line = f"[{p['t']:6.1f}s] viewers {p['connected']}/{viewers} connected, {p['failed']} failed"
    line += f" | {p['bitrate_bps'] / 1e6:8.2f} Mbit/s | loss {p['loss_pct']:5.2f}%"
    if p["server_cpu_pct"] is not None:
        line += f" | server cpu {p['server_cpu_pct']:5.1f}%"
    if p["server_rss_bytes"] is not None:
        line += f" rss {p['server_rss_bytes'] / 2**20:.0f} MiB"
    return line
