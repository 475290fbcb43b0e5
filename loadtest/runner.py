"""`python -m loadtest run`: the publisher and viewer processes, the progress and the report.

Bounded everywhere: the publisher gets `SETUP_S` to encode (or load) its clip and connect,
the workers `SETUP_S` to start, and from the first join everything must have reported
within ramp + duration + 30 s; whatever is still running then is killed, and the report
says so. Every child process is ended in a `finally`, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from loadtest.report import Series, ServerSampler, build_report, progress_line

__all__ = ["run"]

SETUP_S = 120.0  # publisher clip encoding (first run at a new size) + connect; worker start
GRACE_S = 30.0


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def udp_drops() -> int | None:
    """This machine's UDP receive-buffer overflows so far (Linux), for every socket: with a
    server on loopback, the loss that neither side's counters explain."""
    try:
        udp = Path("/proc/net/snmp").read_text().split("\nUdp: ")[2].split()
        return int(udp[4])
    except (OSError, IndexError, ValueError):
        return None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ctx = mp.get_context("spawn")
        self.q: Any = self.ctx.Queue()
        self.go, self.abort, self.pub_stop = self.ctx.Event(), self.ctx.Event(), self.ctx.Event()
        self.start_value: Any = self.ctx.Value("d", 0.0)
        self.procs: list[Any] = []  # every child
        self.workers: list[Any] = []
        self.errors: list[str] = []
        self.series = Series()
        self.finals: dict[int, list[dict[str, Any]]] = {}
        self.ready: set[int] = set()
        self.t_start: float | None = None  # monotonic: the first join, the planned stop
        self.t_stop: float | None = None
        self.publisher: dict[str, Any] | None = None
        self.pub_final: dict[str, Any] | None = None
        base = args.base_url.rstrip("/") + "/"
        self.whep = urljoin(base, args.whep_path.format(stream=args.stream).lstrip("/"))
        self.whip = urljoin(base, args.whip_path.format(stream=args.stream).lstrip("/"))
        self.metrics = urljoin(base, args.metrics_path.lstrip("/"))
        self.loopback = is_loopback(args.base_url)

    # -- messages ---------------------------------------------------------------------
    def pump(self, until: float) -> None:
        """Handle child messages until the monotonic time `until`."""
        while True:
            left = until - time.monotonic()
            try:
                msg = self.q.get(timeout=max(0.0, left)) if left > 0 else self.q.get_nowait()
            except queue_mod.Empty:
                return
            self.handle(msg)

    def handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "ready":
            self.ready.add(msg[1])
        elif kind == "tick":
            self.series.update(msg[1], msg[2], msg[3])
        elif kind == "final":
            self.finals[msg[1]] = msg[2]
        elif kind == "pub-ready":
            self.publisher = msg[1]
        elif kind == "pub-final":
            self.pub_final = msg[1]
        elif kind in ("worker-error", "pub-error"):
            who = f"worker {msg[1]}" if kind == "worker-error" else "publisher"
            self.errors.append(f"{who}: {msg[-2]}")
            _log(f"loadtest: {who} failed: {msg[-2]}" + (f"\n{msg[-1]}" if msg[-1] else ""))

    # -- phases -----------------------------------------------------------------------
    def start_publisher(self, clip: dict[str, Any]) -> bool:
        from loadtest.publisher import publisher_main

        a = self.args
        token = a.publish_token or a.token
        max_life = SETUP_S + a.ramp + a.duration + GRACE_S + 30
        cfg = {"url": self.whip, "token": token, "clip": clip, "loopback": self.loopback}
        cfg["max_life_s"], cfg["honour_pli"] = max_life, a.honour_pli
        p = self.ctx.Process(
            target=publisher_main, args=(cfg, self.q, self.pub_stop), name="lt-publisher"
        )
        p.daemon = True
        p.start()
        self.procs.append(p)
        _log(f"loadtest: publishing {clip['width']}x{clip['height']} to {self.whip}")
        deadline = time.monotonic() + SETUP_S
        while self.publisher is None and not self.errors and time.monotonic() < deadline:
            self.pump(min(deadline, time.monotonic() + 0.5))
            if not p.is_alive() and self.publisher is None:
                self.pump(time.monotonic() + 0.5)
                if self.publisher is None and not self.errors:
                    self.errors.append(f"publisher: exited with {p.exitcode}")
        if self.publisher is None and not self.errors:
            self.errors.append(f"publisher: not connected within {SETUP_S:.0f} s")
        return self.publisher is not None

    def start_workers(self, worker_cfg: dict[str, Any]) -> bool:
        from loadtest.viewer import worker_main

        a = self.args
        n, procs = a.viewers, max(1, min(a.processes, a.viewers)) if a.viewers else 0
        specs: list[list[tuple[int, bool, float]]] = [[] for _ in range(procs)]
        for vid in range(n):
            offset = a.ramp * vid / n if n > 1 else 0.0
            specs[vid % procs].append((vid, vid < a.decode_sample, offset))
        for wid, share in enumerate(specs):
            args = (wid, worker_cfg, share, self.q, self.go, self.start_value, self.abort)
            p = self.ctx.Process(target=worker_main, args=args, name=f"lt-worker-{wid}")
            p.daemon = True
            p.start()
            self.procs.append(p)
            self.workers.append(p)
        deadline = time.monotonic() + SETUP_S
        while len(self.ready) < procs and not self.errors and time.monotonic() < deadline:
            self.pump(min(deadline, time.monotonic() + 0.5))
            if any(not p.is_alive() for p in self.workers):
                self.pump(time.monotonic() + 0.5)
                if len(self.ready) < procs:
                    self.errors.append("a worker process exited before starting")
                    break
        if len(self.ready) < procs and not self.errors:
            self.errors.append(f"workers not started within {SETUP_S:.0f} s")
        return len(self.ready) == procs

    def measure(self, client: httpx.Client, sampler: ServerSampler) -> None:
        """Start the viewers; a series point and progress line each second; the finals."""
        a = self.args
        start = self.t_start = time.monotonic() + 0.5
        self.start_value.value = start
        self.go.set()
        stop_at = self.t_stop = start + a.ramp + a.duration
        deadline, k = stop_at + GRACE_S, 0
        while time.monotonic() < deadline:
            k += 1
            tick = start + k + 0.3  # just after the workers' own ticks at start + k
            self.pump(min(tick, deadline))
            if tick < stop_at + 1.5:  # later, the viewers are closing: no more points
                cpu, rss = sampler.sample(client)
                t = self.series.snapshot_time(min(tick, stop_at)) - start
                point = self.series.point(t, cpu, rss)
                if not a.quiet:
                    _log(progress_line(point, a.viewers))
            if tick > stop_at and len(self.finals) == len(self.workers):
                break
            if tick > stop_at + 1.5 and not any(p.is_alive() for p in self.workers):
                self.pump(time.monotonic() + 1)
                break
        if self.series.latest:  # the workers' last snapshots, frozen at the stop
            self.series.point(self.series.snapshot_time(stop_at) - start, *sampler.sample(client))
        missing = len(self.workers) - len(self.finals)
        if missing:
            self.errors.append(f"{missing} worker(s) did not report by the deadline")

    def stop_all(self) -> None:
        """Ask, then terminate, then kill: every child process ends here."""
        self.abort.set()
        self.pub_stop.set()
        deadline = time.monotonic() + 8
        while any(p.is_alive() for p in self.procs) and time.monotonic() < deadline:
            self.pump(time.monotonic() + 0.2)  # children flush their queues before exiting
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        with contextlib.suppress(Exception):
            self.pump(time.monotonic())
        self.q.close()
        self.q.cancel_join_thread()


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the same path as Ctrl-C: stop everything, report what came


def run(args: argparse.Namespace) -> int:
    from loadtest.publisher import ClipSpec

    signal.signal(signal.SIGTERM, _sigterm)
    r = Run(args)
    spec = ClipSpec(args.width, args.height, args.fps, args.bitrate // 1000, args.gop)
    clip = {
        "width": spec.width,
        "height": spec.height,
        "fps": spec.fps,
        "kbps": spec.kbps,
        "gop": spec.gop,
        "seconds": spec.seconds,
    }
    auth = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    worker_cfg = {"url": r.whep, "auth": auth, "publish": args.publish, "loopback": r.loopback}
    worker_cfg |= {"ramp": args.ramp, "duration": args.duration, "rcvbuf": args.rcvbuf}
    worker_cfg["clip"] = clip | {"frames": spec.frames}
    meta: dict[str, Any] = {"tool": "loadtest", "format": 1}
    meta["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta["args"].pop("func", None)
    meta["target"] = {"base_url": args.base_url, "stream": args.stream, "whep_url": r.whep}
    meta["target"] |= {"whip_url": r.whip if args.publish == "synthetic" else None}
    meta["machine"] = {"nproc": os.cpu_count(), "python": sys.version.split()[0]}
    udp_before = udp_drops()
    viewers: list[dict[str, Any]] = []
    sampler = ServerSampler(r.metrics, auth, args.server_pid)
    try:
        ok = args.publish == "none" or r.start_publisher(clip)
        if ok:
            with httpx.Client(headers=auth, timeout=5) as client:
                if r.start_workers(worker_cfg):
                    r.measure(client, sampler)
    except KeyboardInterrupt:
        r.errors.append("interrupted")
        r.t_stop = min(r.t_stop, time.monotonic()) if r.t_stop else None
        _log("loadtest: interrupted; stopping the viewers and the publisher")
    finally:
        r.stop_all()
    viewers = [v for share in r.finals.values() for v in share]
    meta["publisher"] = (
        (r.publisher or {}) | (r.pub_final or {}) if args.publish != "none" else None
    )
    meta["server"] = {"metrics_url": r.metrics, "source": sampler.source}
    meta["machine"]["loadavg_end"] = os.getloadavg()
    udp_after = udp_drops()
    if udp_before is not None and udp_after is not None:  # this machine's kernel, all sockets
        meta["machine"]["udp_rcvbuf_errors"] = udp_after - udp_before
    window = max(0.0, r.t_stop - r.t_start) if r.t_start and r.t_stop else 0.0
    report = build_report(meta, viewers, r.series, window, r.errors)
    report["aggregate"]["viewers_planned"] = args.viewers
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if args.plot:
        from loadtest.plot import plot

        try:
            plot(report, args.plot)
        except ImportError as exc:
            _log(f"loadtest: no plot: {exc}")
    agg = report["aggregate"]
    summary = {k: agg[k] for k in ("viewers", "receiving", "failed", "packets_received")}
    summary |= {k: agg[k] for k in ("packets_lost", "loss_pct", "bitrate_bps")}
    summary |= {"join_ms_p95": agg["join_ms"]["p95"], "first_frame_ms_p95": None}
    summary["first_frame_ms_p95"] = agg["first_frame_ms"]["p95"]
    summary["window_s"] = report["window_s"]
    print(json.dumps(summary))
    bad = bool(report["failures"]) or agg["receiving"] < args.viewers
    if args.max_loss_pct is not None and (agg["loss_pct"] or 0) > args.max_loss_pct:
        bad = True
    return 1 if bad else 0
