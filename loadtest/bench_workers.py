"""Node capacity with BROADCAST_WORKERS=1 and 2: the most viewers a node serves without loss.

    python -m loadtest.bench_workers --json loadtest/results/bench_workers.json \\
        --plot loadtest/results/bench_workers.png

For W = 1, then W = 2: starts `python -m broadcast serve` with BROADCAST_WORKERS=W, pinned
to CPUs 0..W-1, and runs `python -m loadtest run` (a synthetic publisher and N viewers over
--processes client processes) pinned to the CPUs after them. A step passes when every viewer
receives and the loss in its steady window (after ramp + settle) is at most --max-loss;
capacity(W) is the largest passing step. W = 1 steps up from --start by x1.5 until a step
fails, then bisects twice. W = 2 starts at 1.8 x capacity(1) and moves by 0.1 x capacity(1)
up while steps pass (then bisects once) or down until one does. Each step starts a fresh
server. The client side must not be the limit: a step whose client CPU set is over 90 %
busy stops the run and says so. Needs W + 1 + (clients) CPUs: 16 for the defaults.
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

from loadtest.bench_fanout import LINE, stop_server

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def pythonpath() -> str:
    """This checkout first, then whatever PYTHONPATH already holds."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


def cpus(first: int, last: int) -> str:
    return f"{first}-{last}" if last > first else str(first)


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (the supervisor and its workers)."""
    total = 0.0
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(stat[11]) + int(stat[12])) / TICK  # utime, stime: proc(5)
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total += sum(tree_cpu(int(child)) for child in children)
    return total


def cpu_busy(first: int, last: int) -> tuple[int, int]:
    """(busy, total) jiffies of CPUs first..last, now."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name = line.split()[0]
        if name.startswith("cpu") and name[3:].isdigit() and first <= int(name[3:]) <= last:
            j = [int(x) for x in line.split()[1:9]]
            busy, total = busy + sum(j) - j[3] - j[4], total + sum(j)
    return busy, total


def free_block(count: int) -> int:
    """The first of `count` consecutive free ports (the public one + one per worker)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(first)
    raise RuntimeError("no free port block")


def start_server(workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_block(workers + 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    env |= {"BROADCAST_ICE_ADDRESSES": "127.0.0.1", "BROADCAST_LOG_LEVEL": "warning"}
    env |= {"BROADCAST_WORKERS": str(workers), "PYTHONPATH": pythonpath()}
    env["BROADCAST_RATE_LIMIT"] = "0"  # every viewer joins from this one address
    cmd = ["taskset", "-c", cpus(0, workers - 1), sys.executable, "-m", "broadcast", "serve"]
    server = subprocess.Popen(
        [*cmd, "--port", str(port)], env=env, cwd=ROOT, start_new_session=True
    )
    for _ in range(200):
        with contextlib.suppress(httpx.HTTPError):
            if len(httpx.get(f"http://127.0.0.1:{port}/api/nodes", timeout=1).json()) == workers:
                return server, port
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError("the server did not start within 20 s")


def run_step(args: argparse.Namespace, workers: int, n: int, tmp: Path) -> dict[str, Any]:
    server, port = start_server(workers)
    first, last = workers + 1, (os.cpu_count() or 2) - 1  # CPU `workers`: this script
    ramp = max(2.0, n * args.ramp_per_viewer)
    out = tmp / f"w{workers}-{n}.json"
    cmd = ["taskset", "-c", cpus(first, last), sys.executable, "-m", "loadtest", "run"]
    cmd += ["--base-url", f"http://127.0.0.1:{port}", "--stream", f"bench{n}"]
    cmd += ["--viewers", str(n), "--ramp", str(ramp), "--duration", str(args.duration)]
    cmd += ["--processes", str(args.processes), "--json", str(out)]
    cmd += ["--width", str(args.width), "--height", str(args.height), "--bitrate", args.bitrate]
    env = os.environ | {"PYTHONPATH": pythonpath()}
    samples: dict[float, tuple[float, float, tuple[int, int]]] = {}
    nodes: list[dict[str, Any]] = []
    tool = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert tool.stderr is not None
        for line in tool.stderr:  # progress lines, once a second
            if m := LINE.match(line):
                t = float(m.group(1))
                samples[t] = (time.monotonic(), tree_cpu(server.pid), cpu_busy(first, last))
                if t >= ramp + args.settle and not nodes:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        url = f"http://127.0.0.1:{port}/api/nodes"
                        nodes = httpx.get(url, timeout=2).json()
            elif not line.startswith("loadtest: publishing"):
                print(f"  [W={workers} N={n}] {line.rstrip()}", file=sys.stderr)
        tool.wait(60)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
        stop_server(server)
    report = json.loads(out.read_text())
    series = {round(x["t"], 1): x for x in report["timeseries"]}
    window = sorted(
        t for t in samples if t in series and ramp + args.settle <= t <= ramp + args.duration
    )
    if len(window) < 2:
        raise RuntimeError(f"W={workers} N={n}: steady window too short")
    t0, t1 = window[0], window[-1]
    (m0, c0, b0), (m1, c1, b1) = samples[t0], samples[t1]
    received = series[t1]["packets_received"] - series[t0]["packets_received"]
    lost = series[t1]["packets_lost"] - series[t0]["packets_lost"]
    aggregate = report["aggregate"]
    step: dict[str, Any] = {"viewers": n, "ramp_s": ramp, "window_s": m1 - m0}
    step["server_cores"] = (c1 - c0) / (m1 - m0)
    step["forwarded_pps"] = received / (t1 - t0)
    step["us_per_forwarded_packet"] = 1e6 * step["server_cores"] / max(step["forwarded_pps"], 1)
    step["window_loss_pct"] = 100 * lost / (received + lost) if received + lost else 100.0
    step["client_busy"] = (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
    step["udp_rcvbuf_errors"] = report["machine"].get("udp_rcvbuf_errors")
    step |= {k: aggregate[k] for k in ("receiving", "failed", "loss_pct")}
    step["viewers_per_worker"] = {x["node_id"]: x["viewers"] for x in nodes}
    step["passed"] = (
        step["receiving"] == n and not step["failed"] and step["window_loss_pct"] <= args.max_loss
    )
    # UDP receive-buffer drops are counted machine-wide, and a server near saturation
    # drops its own ingest: they are recorded, but only a busy client CPU set is a limit.
    step["client_limit"] = step["client_busy"] > 0.9
    print(
        f"W={workers} N={n:4d}: {'pass' if step['passed'] else 'FAIL'}, "
        f"server {step['server_cores']:.2f} cores, loss {step['window_loss_pct']:.2f}%, "
        f"{step['receiving']}/{n} receiving, {step['us_per_forwarded_packet']:.1f} us/pkt, "
        f"client {100 * step['client_busy']:.0f}% busy, per worker {step['viewers_per_worker']}",
        flush=True,
    )
    return step


def walk_up(
    args: argparse.Namespace,
    workers: int,
    plan: list[int],
    tmp: Path,
    steps: list[dict[str, Any]],
    best: int = 0,
    bisect: int = 2,
) -> int:
    """Run `plan` (ascending) until a step fails, then bisect; the largest passing step."""
    worst = None
    for n in plan:
        if not run(args, workers, n, tmp, steps):
            worst = n
            break
        best = n
    for _ in range(bisect if worst is not None else 0):
        n = (best + worst) // 2  # type: ignore[operator]
        if n in (best, worst):
            break
        best, worst = (n, worst) if run(args, workers, n, tmp, steps) else (best, n)
    return best


def run(
    args: argparse.Namespace, workers: int, n: int, tmp: Path, steps: list[dict[str, Any]]
) -> bool:
    step = run_step(args, workers, n, tmp)
    steps.append(step | {"workers": workers})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"partial": True, "steps": steps}, indent=1))
    if step["client_limit"]:
        raise RuntimeError(f"the client side is the limit at W={workers} N={n}")
    return bool(step["passed"])


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for workers, mark in ((1, "o"), (2, "s")):
        steps = [s for s in result["steps"] if s["workers"] == workers]
        for passed, fill in ((True, None), (False, "none")):
            xs = [s["viewers"] for s in steps if s["passed"] is passed]
            ys = [s["server_cores"] for s in steps if s["passed"] is passed]
            label = f"{workers} worker{'s' if workers > 1 else ''}, {'pass' if passed else 'loss'}"
            ax.plot(xs, ys, mark, fillstyle=fill or "full", label=label)
        ax.axvline(result["capacity"][str(workers)], linestyle=":", color="grey")
    ratio = result["ratio"]
    ax.set(xlabel="viewers", ylabel="server cores", title=f"capacity 2 workers / 1 = {ratio:.2f}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--start", type=int, default=100, help="first W=1 step (viewers)")
    ap.add_argument("--capacity-one", type=int, help="skip W=1: its capacity from a past run")
    ap.add_argument(
        "--two-factors",
        type=lambda text: [float(x) for x in text.split(",")],
        help="instead of the W=2 search: these multiples of capacity(1), e.g. 1.8,2.1",
    )
    ap.add_argument("--processes", type=int, default=10, help="client processes")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per step, ramp after")
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--ramp-per-viewer", type=float, default=0.01)
    ap.add_argument("--bitrate", default="2500k")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--max-loss", type=float, default=0.5, help="%% in the steady window")
    ap.add_argument("--json", type=Path, default=Path("loadtest/results/bench_workers.json"))
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    if (os.cpu_count() or 1) < 8:
        print("bench_workers needs at least 8 CPUs (2 server, 1 script, 5+ clients)")
        return 2
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {2})  # off the server's CPUs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    model = [x.split(":")[1].strip() for x in Path("/proc/cpuinfo").open() if "model name" in x]
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    result["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result["machine"] = {"nproc": os.cpu_count(), "cpu_model": model[0] if model else None}
    result["machine"] |= {"python": sys.version.split()[0], "uname": os.uname()[2]}
    result["steps"] = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as directory:
        tmp = Path(directory)
        steps: list[dict[str, Any]] = result["steps"]
        plan = [round(args.start * 1.5**k) for k in range(8)]
        one = args.capacity_one or walk_up(args, 1, plan, tmp, steps)
        up = [round(one * f / 10) for f in range(18, 26)]
        if args.two_factors:
            fixed = [round(one * f) for f in args.two_factors]
            two = max((n for n in fixed if run(args, 2, n, tmp, steps)), default=0)
        elif run(args, 2, up[0], tmp, steps):  # 1.8 x capacity(1): then further up
            two = walk_up(args, 2, up[1:], tmp, steps, best=up[0], bisect=1)
        else:  # down until a step passes
            down = [round(one * f / 10) for f in range(17, 9, -1)]
            two = next((n for n in down if run(args, 2, n, tmp, steps)), 0)
    result["capacity"] = {"1": one, "2": two}
    result["ratio"] = two / one if one else 0.0
    args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
    print(json.dumps({k: result[k] for k in ("capacity", "ratio")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
