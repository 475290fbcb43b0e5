"""Soak: one server, 100 viewers for half an hour; does memory creep, does CPU, does anyone stall?

    python -m loadtest.soak --minutes 30            # loadtest/results/soak.json and .png

Starts ``python -m broadcast serve`` (one worker, ICE on 127.0.0.1) on a free port and
``python -m loadtest run`` against it (the synthetic VP8 publisher, `--viewers` counting
viewers joining over `--ramp` seconds, then `--minutes` of watching). Meanwhile:

- every `--sample` seconds (10), the server's RSS and CPU from ``/proc/<pid>``;
- every `--poll` seconds (0.25), ``GET /api/streams/<stream>``: the stream's ingress video
  packets and every viewer session's video packets sent. A **stall** is a viewer whose
  count stops for more than `--stall` seconds (1) while the publisher's keeps rising:
  the server sent that viewer nothing while it had something to send. The load tool's
  own report has no per-viewer timeline (only per-second aggregates and per-viewer
  totals), so this is measured on the server's side; what the viewers received is in
  ``loadtest`` below (loss per viewer, failures, per-second loss).

The JSON holds the settings, the samples, the stalls and a summary (RSS at the start of the
watching and at the end, its growth and slope per hour, CPU mean/p95/max) plus the load
tool's aggregate. Not part of ``make test``. Exit status: the load tool's (0: every viewer
joined and received media).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
SERVER_START_S = 30.0  # the server must answer /healthz by then
SETUP_S = 150.0  # the load tool: clip encoding (first run at a size) + worker start
STOP_S = 60.0  # the load tool's own stop and report, after its planned end


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_sample(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, RSS bytes) of a process, from /proc; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, pages * os.sysconf("SC_PAGE_SIZE")


class StallWatch:
    """Viewers whose server-side video packet count stops while the publisher's rises."""

    def __init__(self, limit_s: float) -> None:
        self.limit = limit_s
        self.progress: dict[str, tuple[int, float]] = {}  # session -> (packets, when)
        self.open: dict[str, float] = {}  # session -> stall start (its last progress)
        self.stalls: list[dict[str, Any]] = []
        self.ingress: tuple[int, float] | None = None
        self.ingress_gaps: list[dict[str, float]] = []
        self.polls = 0
        self.max_viewers = 0

    def update(self, body: dict[str, Any], now: float, t0: float) -> None:
        self.polls += 1
        video = next((t for t in body.get("tracks", []) if t.get("kind") == "video"), None)
        ingress = int(video["packets"]) if video else 0
        flowing = False
        if self.ingress is None or ingress > self.ingress[0]:
            if self.ingress is not None and now - self.ingress[1] > self.limit:
                self.ingress_gaps.append(
                    {"t": round(self.ingress[1] - t0, 2), "s": round(now - self.ingress[1], 2)}
                )
            flowing = self.ingress is not None
            self.ingress = (ingress, now)
        sessions = body.get("viewer_sessions", [])
        self.max_viewers = max(self.max_viewers, len(sessions))
        seen = set()
        for session in sessions:
            sid = session["session"]
            seen.add(sid)
            packets = int(session.get("tracks", {}).get("video", {}).get("packets", 0))
            last = self.progress.get(sid)
            if last is None or packets > last[0]:
                if sid in self.open:
                    self._close(sid, now, t0)
                if packets:
                    self.progress[sid] = (packets, now)
            elif flowing and now - last[1] > self.limit and sid not in self.open:
                self.open[sid] = last[1]
        for sid in [s for s in self.progress if s not in seen]:  # left
            self.progress.pop(sid)
            if sid in self.open:
                self._close(sid, now, t0, ended=True)

    def _close(self, sid: str, now: float, t0: float, ended: bool = False) -> None:
        start = self.open.pop(sid)
        self.stalls.append(
            {"session": sid, "t": round(start - t0, 2), "s": round(now - start, 2), "ended": ended}
        )

    def finish(self, now: float, t0: float) -> None:
        for sid in list(self.open):
            self._close(sid, now, t0, ended=True)


def start_server(port: int, log: Any) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    env |= {
        "BROADCAST_WORKERS": "1",
        "BROADCAST_ICE_ADDRESSES": "127.0.0.1",
        "BROADCAST_LOG_LEVEL": "warning",
        "BROADCAST_LOG_FORMAT": "json",
    }
    cmd = [sys.executable, "-m", "broadcast", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(client: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if client.get("/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /healthz within {SERVER_START_S:.0f} s")


def stop_process(proc: subprocess.Popen[Any], signals: int = 2, wait: float = 10.0) -> None:
    """SIGTERM (the server drains on the first, exits on the second), then SIGKILL."""
    for _ in range(signals):
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def summarize(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p95": None, "max": None}
    ordered = sorted(values)
    return {
        "mean": sum(values) / len(values),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value), per hour."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    if var == 0:
        return None
    return 3600 * sum((x - mx) * (y - my) for x, y in points) / var


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    minutes = [s["t"] / 60 for s in samples]
    fig, (ax_rss, ax_cpu) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax_rss.plot(minutes, [s["rss_bytes"] / 2**20 for s in samples], marker=".")
    ax_rss.set_ylabel("server RSS (MiB)")
    ax_cpu.plot(minutes, [s["cpu_pct"] for s in samples], marker=".", color="tab:orange")
    ax_cpu.set_ylabel("server CPU (% of a core)")
    ax_cpu.set_xlabel("minutes since the server started")
    for stall in report["stalls"]:
        ax_cpu.axvline(stall["t"] / 60, color="red", alpha=0.3, linewidth=0.8)
    watch = report["summary"]["watch_start_s"]
    if watch is not None:
        for ax in (ax_rss, ax_cpu):
            ax.axvline(watch / 60, color="grey", linestyle="--", linewidth=0.8)
    s = report["summary"]
    fig.suptitle(
        f"soak: {report['config']['viewers']} viewers, {report['config']['minutes']:g} min; "
        f"RSS growth {s['rss_growth_pct']}%, stalls {s['stalls']} (red)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.soak",
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--minutes", type=float, default=30.0, help="watching time, after the ramp")
    ap.add_argument("--viewers", type=int, default=100)
    ap.add_argument("--ramp", type=float, default=10.0, help="seconds to spread the joins over")
    ap.add_argument("--processes", type=int, default=2, help="the load tool's worker processes")
    ap.add_argument("--bitrate", default="2500k", help="the synthetic publisher's video")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between RSS/CPU samples")
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between stall polls")
    ap.add_argument("--stall", type=float, default=1.0, help="a viewer stalls past this gap, s")
    ap.add_argument("--json", type=Path, default=RESULTS / "soak.json")
    ap.add_argument("--plot", type=Path, default=RESULTS / "soak.png")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stream = "soak"
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    server_log = (workdir / "server.log").open("wb")
    loadtest_json = workdir / "loadtest.json"
    t0 = time.monotonic()
    server = start_server(port, server_log)
    samples: list[dict[str, Any]] = []
    watch = StallWatch(args.stall)
    loadtest: subprocess.Popen[bytes] | None = None
    watch_start: float | None = None
    errors: list[str] = []
    try:
        with httpx.Client(base_url=base, timeout=2) as client:
            wait_healthy(client, server)
            cmd = [sys.executable, "-m", "loadtest", "run", "--base-url", base]
            cmd += ["--stream", stream, "--viewers", str(args.viewers), "--ramp", str(args.ramp)]
            cmd += ["--duration", str(args.minutes * 60), "--processes", str(args.processes)]
            cmd += ["--bitrate", args.bitrate, "--server-pid", str(server.pid)]
            cmd += ["--json", str(loadtest_json), "--quiet"]
            loadtest = subprocess.Popen(cmd, stdout=subprocess.PIPE)
            print(f"soak: server pid {server.pid} on {base}; load tool started", file=sys.stderr)
            deadline = time.monotonic() + SETUP_S + args.ramp + args.minutes * 60 + STOP_S
            last_cpu: tuple[float, float] | None = None
            next_sample = time.monotonic()
            while loadtest.poll() is None and time.monotonic() < deadline:
                now = time.monotonic()
                if now >= next_sample:
                    sample = proc_sample(server.pid)
                    if sample is None:
                        errors.append("the server process went away")
                        break
                    cpu_pct = None
                    if last_cpu is not None:
                        cpu_pct = 100 * (sample[0] - last_cpu[1]) / (now - last_cpu[0])
                    last_cpu = (now, sample[0])
                    samples.append(
                        {
                            "t": round(now - t0, 2),
                            "rss_bytes": sample[1],
                            "cpu_pct": None if cpu_pct is None else round(cpu_pct, 2),
                            "viewers": len(watch.progress),
                        }
                    )
                    print(
                        f"soak: t={now - t0:7.1f}s rss {sample[1] / 2**20:6.1f} MiB "
                        f"cpu {cpu_pct or 0:5.1f}% viewers {len(watch.progress)} "
                        f"stalls {len(watch.stalls) + len(watch.open)}",
                        file=sys.stderr,
                    )
                    next_sample += args.sample
                try:
                    r = client.get(f"/api/streams/{stream}")
                    if r.status_code == 200:
                        watch.update(r.json(), time.monotonic(), t0)
                        if watch_start is None and len(watch.progress) >= args.viewers:
                            watch_start = time.monotonic() - t0
                except httpx.HTTPError as exc:
                    errors.append(f"poll: {exc!r}")
                time.sleep(args.poll)
            watch.finish(time.monotonic(), t0)
    except KeyboardInterrupt:
        errors.append("interrupted")
    finally:
        if loadtest is not None and loadtest.poll() is None:
            stop_process(loadtest, signals=1, wait=STOP_S)
        stop_process(server)
        server_log.close()
    status = loadtest.returncode if loadtest is not None else 1
    summary_line = loadtest.stdout.read().decode().strip() if loadtest and loadtest.stdout else ""
    lt: dict[str, Any] = {}
    if loadtest_json.exists():
        full = json.loads(loadtest_json.read_text())
        lt = {k: full.get(k) for k in ("aggregate", "failures", "failure_reasons", "window_s")}
        lt["loss_pct_per_second"] = [
            [p["t"], round(p["loss_pct"], 3)] for p in full.get("timeseries", [])
        ]
        lt["publisher"] = full.get("publisher")
    # Growth over the watching: from the first sample with every viewer in to the last.
    watching = [s for s in samples if watch_start is not None and s["t"] >= watch_start]
    rss_start = watching[0]["rss_bytes"] if watching else None
    rss_end = watching[-1]["rss_bytes"] if watching else None
    cpus = [s["cpu_pct"] for s in watching if s["cpu_pct"] is not None]
    slope = slope_per_hour([(s["t"], s["rss_bytes"]) for s in watching])
    report: dict[str, Any] = {
        "tool": "loadtest.soak",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": vars(args) | {"json": str(args.json), "plot": str(args.plot)},
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
        "summary": {
            "watch_start_s": None if watch_start is None else round(watch_start, 2),
            "viewers_max": watch.max_viewers,
            "rss_start_bytes": rss_start,
            "rss_end_bytes": rss_end,
            "rss_max_bytes": max((s["rss_bytes"] for s in samples), default=None),
            "rss_growth_pct": round(100 * (rss_end / rss_start - 1), 2)
            if rss_start and rss_end
            else None,
            "rss_slope_bytes_per_hour": None if slope is None else round(slope),
            "cpu_pct": summarize(cpus),
            "stalls": len(watch.stalls),
            "stalled_viewers": len({s["session"] for s in watch.stalls}),
            "stall_s_max": max((s["s"] for s in watch.stalls), default=None),
            "ingress_gaps": len(watch.ingress_gaps),
            "polls": watch.polls,
            "loadtest_exit": status,
            "loadtest_summary": json.loads(summary_line) if summary_line.startswith("{") else None,
            "errors": errors,
        },
        "samples": samples,
        "stalls": watch.stalls,
        "ingress_gaps": watch.ingress_gaps,
        "loadtest": lt,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    try:
        plot(report, args.plot)
    except ImportError as exc:
        print(f"soak: no plot: {exc}", file=sys.stderr)
    print(json.dumps(report["summary"], indent=1))
    return status if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
