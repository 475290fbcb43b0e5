"""Per-core benchmark of the textbook aiortc fan-out (loadtest.naive_server), vs. broadcast.

    python -m loadtest.bench_naive --steps 1,2,4,6 --duration 15 \\
        --json loadtest/results/bench_naive.json --plot loadtest/results/bench_naive.png

Same method as loadtest.bench_fanout (whose run_step it reuses): the naive server is pinned to
CPU 0, `python -m loadtest run` (720p30 2500k synthetic publisher, fresh stream, N viewers) to
CPU 1, server CPU from /proc over the steady window. Stepping stops when the server core
saturates (> --max-server-cores, or pkt/s per viewer < --min-delivery x the N=1 step's) or loss
> --max-loss. An N=0 step (publisher only) comes first. Fit over unsaturated, loss-free steps:
cores = a + b*N, b = cores per viewer, vs. broadcast's 720p fit in --ours (us/pkt * pkt/s/viewer).
The naive server re-encodes VP8 per viewer with aiortc's stock encoder (capped at 1.5 Mbit/s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.bench_fanout import (
    LINE,
    ROOT,
    add_step_arguments,
    proc_sample,
    run_step,
    start_server,
    stop_server,
)


def idle_step(args: argparse.Namespace, pid: int, port: int) -> dict[str, Any]:
    """N=0: the publisher alone (the server still receives and decodes it): the fit's base."""
    cmd = ["taskset", "-c", "1", sys.executable, "-m", "loadtest", "run", "--viewers", "0"]
    cmd += ["--base-url", f"http://127.0.0.1:{port}", "--stream", "bench0", "--processes", "1"]
    cmd += ["--duration", str(args.duration), "--width", str(args.width)]
    cmd += ["--height", str(args.height), "--bitrate", args.bitrate]
    env, pipe = os.environ | {"PYTHONPATH": str(ROOT)}, subprocess.PIPE
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=pipe, text=True)
    assert p.stderr is not None
    got = [(float(m.group(1)), proc_sample(pid)) for x in p.stderr if (m := LINE.match(x))]
    p.wait(60)
    ok = [x for t, x in got if 2 + args.settle <= t]
    if len(ok) < 2:
        raise RuntimeError(f"N=0: steady window too short ({len(got)} lines)")
    a, b = ok[0], ok[-1]
    s = {"viewers": 0, "server_cores": (b["cpu"] - a["cpu"]) / (b["mono"] - a["mono"]), "ok": True}
    return s | {"client_cpu1_busy": (b["c1_busy"] - a["c1_busy"]) / (b["c1_all"] - a["c1_all"])}


def fit(steps: list[dict[str, Any]], ours: dict[str, Any]) -> dict[str, Any]:
    good = [s for s in steps if s["ok"]]
    f: dict[str, Any] = {"steps_used": [s["viewers"] for s in good]}
    if len(good) < 2:
        return f | {"error": "fewer than two usable steps"}
    xs, ys = [s["viewers"] for s in good], [s["server_cores"] for s in good]
    slope, icpt = statistics.linear_regression(xs, ys)
    pps = statistics.mean(s["pps_per_viewer"] for s in good if s["viewers"])
    f |= {"cores_per_viewer": slope, "intercept_cores": icpt, "viewers_per_core": 1 / slope}
    f["viewers_per_core_after_ingest"] = (1 - icpt) / slope
    f["pps_per_viewer"] = pps
    bps = [s["bitrate_bps_per_viewer"] for s in good if s["viewers"]]
    f["payload_bps_per_viewer"] = statistics.mean(bps)
    f["us_per_packet_per_viewer"] = slope / pps * 1e6
    f["r2"] = statistics.correlation(xs, ys) ** 2 if len(xs) > 2 else None
    o_cpv = ours["us_per_packet_per_viewer"] * 1e-6 * ours["pps_per_viewer"]
    keys = ("us_per_packet_per_viewer", "pps_per_viewer", "payload_bps_per_viewer")
    f["ours"] = {k: ours.get(k) for k in (*keys, "intercept_cores")}
    f["ours"] |= {"cores_per_viewer": o_cpv, "viewers_per_core": 1 / o_cpv}
    f["ratio_cores_per_viewer_naive_over_ours"] = slope / o_cpv
    f["ratio_us_per_packet_naive_over_ours"] = f[keys[0]] / ours[keys[0]]
    return f


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, f = r["steps"], r["fit"]
    xs = [s["viewers"] for s in steps]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(xs, [s["server_cores"] for s in steps], "o", label="naive server CPU (CPU 0)")
    ax.plot(xs, [s["client_cpu1_busy"] for s in steps], "x", label="client core busy (CPU 1)")
    top = max(xs, default=1)
    if "cores_per_viewer" in f:
        y0, k = f["intercept_cores"], f["cores_per_viewer"]
        ax.plot([0, top], [y0, y0 + k * top], "-", label=f"naive fit {k:.3f} cores/viewer")
        ko, o0 = f["ours"]["cores_per_viewer"], f["ours"]["intercept_cores"] or 0
        ax.plot([0, top], [o0, o0 + ko * top], "--", label=f"broadcast 720p {ko:.4f} cores/viewer")
    c = r["clip"]
    title = f"naive aiortc relay, {c['width']}x{c['height']} {c['bitrate']}: {r['stop_reason']}"
    ax.set(xlabel="viewers", ylabel="cores", title=title, ylim=(0, 1.1))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--steps", default="1,2,4,6", type=lambda s: [int(x) for x in s.split(",")])
    add_step_arguments(ap, ramp_per_viewer=0.5)
    ap.add_argument("--no-zero", dest="zero", action="store_false", help="skip the N=0 step")
    ap.add_argument("--max-server-cores", type=float, default=0.95)
    ap.add_argument("--min-delivery", type=float, default=0.8, help="pkt/s/viewer vs. 1st step")
    ap.add_argument("--ours", type=Path, default=ROOT / "loadtest/results/bench_fanout.json")
    ap.add_argument("--json", type=Path, default=Path("loadtest/results/bench_naive.json"))
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    os.sched_setaffinity(0, {1})  # as bench_fanout: off the server's core
    ours = json.loads(args.ours.read_text())
    cpu = [x.split(":")[1].strip() for x in Path("/proc/cpuinfo").open() if "model name" in x]
    r: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    r["started"], r["pinning"] = time.strftime("%Y-%m-%dT%H:%M:%S%z"), "server CPU 0, tool CPU 1"
    r["machine"] = {"nproc": os.cpu_count(), "cpu_model": cpu[0] if cpu else None}
    r["server_kind"] = "loadtest.naive_server: aiortc MediaRelay, decode once, VP8 re-encode/viewer"
    r["clip"] = {"width": args.width, "height": args.height, "bitrate": args.bitrate}
    r["ours_source"] = {"file": str(args.ours), "clip": ours.get("clip"), "git": ours.get("git")}
    r["steps"], r["stop_reason"] = [], "all steps done"
    with socket.socket() as sock:
        port = sock.bind(("127.0.0.1", 0)) or sock.getsockname()[1]
    server = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server = start_server(port, module="loadtest.naive_server")
        with tempfile.TemporaryDirectory(prefix="bench-naive-") as tmp:
            if args.zero:
                r["steps"].append(idle_step(args, server.pid, port))
                print(f"N=  0 server {r['steps'][0]['server_cores']:.3f} cores", flush=True)
            for n in args.steps:
                try:
                    s = run_step(args, server.pid, port, n, Path(tmp))
                except (RuntimeError, OSError, ValueError, KeyError) as exc:
                    r["stop_reason"] = f"step N={n} failed: {exc}"
                    break
                for k in ("forward_delay_p50_s", "forward_delay_p99_s"):  # no /metrics here
                    s.pop(k, None)
                loss, sat = s["window_loss_pct"] or 0, s["server_cores"] > args.max_server_cores
                first = next((x["pps_per_viewer"] for x in r["steps"] if x["viewers"]), None)
                # Full core: aiortc drops frames (not packets), and /proc may read ~0.93, not 1.
                s["delivery_vs_first_step"] = s["pps_per_viewer"] / first if first else 1.0
                sat = sat or s["delivery_vs_first_step"] < args.min_delivery
                s["ok"] = (
                    loss <= args.max_loss and not sat and s["receiving"] == n > 0 == s["failed"]
                )
                r["steps"].append(s)
                msg = f"N={n:3d} server {s['server_cores']:.3f} cores, {s['pps_per_viewer']:.0f}"
                msg += f" pkt/s/viewer, {s['bitrate_bps_per_viewer'] / 1e6:.2f} Mbit/s/viewer, "
                print(msg + f"loss {loss:.3f}%, {s['receiving']}/{n} receiving", flush=True)
                if sat:
                    r["stop_reason"] = (
                        f"server core saturated at N={n}: {s['server_cores']:.2f} cores, "
                        f"{100 * s['delivery_vs_first_step']:.0f}% of N=1 pkt/s per viewer"
                    )
                    break
                if loss > args.max_loss:
                    r["stop_reason"] = f"loss {loss:.2f}% at N={n}"
                    break
                if server.poll() is not None:
                    r["stop_reason"] = f"server exited ({server.returncode})"
                    break
    finally:
        stop_server(server)
    r["fit"] = fit(r["steps"], ours["fit"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=1, default=str))
    if args.plot:
        plot(r, args.plot)
    print(json.dumps({k: r.get(k) for k in ("stop_reason", "fit")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
