"""Join storm: N viewers joining a live stream within a few seconds, for two publishers.

    python -m loadtest.bench_storm --viewers 200 --ramp 10 --json f.json --plot f.png

Starts `python -m broadcast serve` pinned to CPU 0; each scenario runs `python -m loadtest run`
pinned to CPU 1 against a fresh stream: its synthetic publisher, then N viewers joining evenly
over --ramp seconds (--decode-sample of them decode). Scenarios:

- `honours-pli`: the publisher answers PLI with a keyframe (a live encoder, a browser);
- `ignores-pli`: a 4 s keyframe interval and PLI ignored (OBS): the server's keyframe cache
  is what gives a late viewer its first picture.

Reported per scenario: POST → 201, POST → first keyframe (every viewer) and POST → first
decoded frame (the decoding sample) as p50/p95/p99, loss, and server CPU/RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.bench_fanout import ROOT, proc_sample, start_server, stop_server
from loadtest.stats import summarize

SCENARIOS = {"honours-pli": ["--honour-pli", "--gop", "60"], "ignores-pli": ["--gop", "120"]}


def run_scenario(args: argparse.Namespace, name: str, pid: int, tmp: Path) -> dict[str, Any]:
    out = tmp / f"{name}.json"
    cmd = ["taskset", "-c", "1", sys.executable, "-m", "loadtest", "run", "--quiet"]
    cmd += ["--base-url", f"http://127.0.0.1:{args.port}", "--stream", f"storm-{name}"]
    cmd += ["--viewers", str(args.viewers), "--ramp", str(args.ramp)]
    cmd += ["--duration", str(args.duration), "--processes", "1", "--json", str(out)]
    cmd += ["--decode-sample", str(args.decode_sample), "--server-pid", str(pid)]
    cmd += ["--width", str(args.width), "--height", str(args.height), "--bitrate", args.bitrate]
    cmd += SCENARIOS[name]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    before = proc_sample(pid)
    subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, timeout=600, check=False)
    after = proc_sample(pid)
    rep = json.loads(out.read_text())
    viewers, agg = rep["viewers"], rep["aggregate"]
    decoded = [v["first_frame_ms"] for v in viewers if v["decode"]]
    r: dict[str, Any] = {"scenario": name, "publisher_args": SCENARIOS[name]}
    r |= {k: agg[k] for k in ("viewers_planned", "receiving", "failed", "loss_pct")}
    r["join_ms"], r["first_rtp_ms"] = agg["join_ms"], agg["first_rtp_ms"]
    r["first_keyframe_ms"] = agg["first_keyframe_ms"]
    r["first_decoded_frame_ms"] = summarize(decoded)
    r["first_keyframe_ms_each"] = sorted(
        v["first_keyframe_ms"] for v in viewers if v["first_keyframe_ms"] is not None
    )
    r["server_cores_mean"] = (after["cpu"] - before["cpu"]) / (after["mono"] - before["mono"])
    r["server_cpu_pct"] = rep["server"].get("cpu_pct")
    r["server_rss_bytes"] = after["rss"]
    r["publisher"] = rep["publisher"]
    r["failure_reasons"] = rep["failure_reasons"]
    r["udp_rcvbuf_errors"] = rep["machine"].get("udp_rcvbuf_errors")
    return r


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in result["scenarios"]:
        xs = [t / 1000 for t in r["first_keyframe_ms_each"]]
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(
            xs, ys, where="post", label=f"{r['scenario']} (p95 {xs[int(0.95 * len(xs)) - 1]:.2f} s)"
        )
    a = result["args"]
    title = f"{a['viewers']} viewers joining over {a['ramp']:g} s, {a['width']}x{a['height']}"
    ax.set(xlabel="POST → first keyframe (s)", ylabel="fraction of viewers", title=title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--viewers", type=int, default=200)
    ap.add_argument("--ramp", type=float, default=10.0, help="seconds over which viewers join")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds after the ramp")
    ap.add_argument("--decode-sample", type=int, default=10)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--bitrate", default="2500k")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--port", type=int, default=18090)
    ap.add_argument("--json", type=Path, default=Path("loadtest/results/bench_storm.json"))
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    server = start_server(args.port)
    result: dict[str, Any] = {"bench": "storm", "args": vars(args) | {"json": str(args.json)}}
    result["args"]["plot"] = str(args.plot) if args.plot else None
    result["machine"] = {"cpu": os.uname().machine, "python": sys.version.split()[0]}
    result["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result["scenarios"] = [
                run_scenario(args, name, server.pid, Path(tmp))
                for name in args.scenarios.split(",")
            ]
    finally:
        stop_server(server)
    for r in result["scenarios"]:
        k, d = r["first_keyframe_ms"], r["first_decoded_frame_ms"]
        print(
            f"{r['scenario']}: {r['receiving']}/{r['viewers_planned']} receiving, "
            f"loss {r['loss_pct']:.3f} %, first keyframe p50/p95/p99 "
            f"{k['p50']:.0f}/{k['p95']:.0f}/{k['p99']:.0f} ms, first decoded frame p50/p95 "
            f"{d['p50'] or 0:.0f}/{d['p95'] or 0:.0f} ms (n={d['n']}), "
            f"server {r['server_cores_mean']:.2f} cores"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
