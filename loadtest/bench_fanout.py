"""Per-core fan-out benchmark: server pinned to CPU 0, load tool pinned to CPU 1.

    python -m loadtest.bench_fanout --steps 5,10,20,30,40 --duration 15 \\
        --bitrate 2500k --width 1280 --height 720 --json f.json --plot f.png

Starts `python -m broadcast serve` on CPU 0, then for each step N runs `python -m loadtest run`
on CPU 1 (its own synthetic publisher, a fresh stream name, N viewers, one worker process).
Server CPU/RSS come from /proc/<pid> as each of the tool's progress lines arrives: the steady
window (after ramp + settle) then matches the report's packet counts. Stepping stops at loss >
--max-loss (server) or when the client core saturates (UDP drops, CPU 1 busy, failed viewers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TICK, PAGE = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
LINE = re.compile(r"^\[\s*([\d.]+)s\] viewers (\d+)/(\d+) connected, (\d+) failed")
OVERHEAD_B = 12 + 16 + 8 + 20  # RTP header + SRTP GCM tag + UDP + IPv4, per packet


DELAY = re.compile(
    r'^broadcast_forward_delay_seconds_bucket\{le="([0-9.e+-]+|\+Inf)"\} ([0-9.e+]+)$', re.M
)


def proc_sample(pid: int) -> dict[str, float]:
    """Server CPU seconds, RSS, and CPU 1's busy/total jiffies, now."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    cpu1 = next(x for x in Path("/proc/stat").read_text().splitlines() if x.startswith("cpu1 "))
    j = [int(x) for x in cpu1.split()[1:9]]
    user, sys_ = int(stat[11]) / TICK, int(stat[12]) / TICK  # utime, stime: proc(5)
    busy = sum(j) - j[3] - j[4]  # - idle, iowait
    out = {"mono": time.monotonic(), "cpu": user + sys_, "user": user, "sys": sys_, "rss": rss}
    return out | {"c1_busy": busy, "c1_all": sum(j)}


def udp_sockets(pid: int) -> int:
    """UDP sockets process `pid` holds now (its fds that /proc/net/udp{,6} lists)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    udp = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        rows = Path(table).read_text().splitlines()[1:]
        udp += sum(row.split()[9] in inodes for row in rows)
    return udp


def start_server(
    port: int, module: str = "broadcast", udp_port: int | None = None
) -> subprocess.Popen[bytes]:
    """`python -m <module> ... --port` pinned to CPU 0, once it listens (broadcast: `serve`);
    `udp_port`: all media on that one UDP port (BROADCAST_UDP_PORT)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    if udp_port is not None:
        env["BROADCAST_UDP_PORT"] = str(udp_port)
    env |= {"BROADCAST_ICE_ADDRESSES": "127.0.0.1", "BROADCAST_LOG_LEVEL": "warning"}
    env["BROADCAST_WORKERS"] = "1"  # one process on the one pinned core
    env["BROADCAST_RATE_LIMIT"] = "0"  # every viewer joins from this one address
    env["PYTHONPATH"] = str(ROOT)
    serve = ["serve"] if module == "broadcast" else []
    cmd = ["taskset", "-c", "0", sys.executable, "-m", module, *serve, "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
    for _ in range(150):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return server
        time.sleep(0.1)
    raise RuntimeError(f"{module} did not start listening within 15 s")


def stop_server(server: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the server's process group (uvicorn drains), SIGKILL it after 5 s."""
    if server is None or server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(5)


def add_step_arguments(ap: argparse.ArgumentParser, ramp_per_viewer: float) -> None:
    """The options every stepped benchmark shares (clip, step timing, loss limit)."""
    ap.add_argument("--duration", type=float, default=15.0, help="steady seconds per step")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after the ramp, skipped")
    ap.add_argument(
        "--ramp-per-viewer", type=float, default=ramp_per_viewer, help="ramp s per viewer (min 2)"
    )
    ap.add_argument("--bitrate", default="2500k")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--max-loss", type=float, default=0.5, help="%% in the steady window")


def delay_buckets(port: int) -> dict[float, float]:
    """The server's forwarding-delay histogram from /metrics: upper bound -> cumulative count."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[float, float] = {}
    for m in DELAY.finditer(text):
        out[float(m.group(1))] = float(m.group(2))
    return out


def delay_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Upper bucket bound holding quantile q of the packets forwarded between two readings."""
    bounds = sorted(after)
    total = after[bounds[-1]] - before.get(bounds[-1], 0.0) if bounds else 0.0
    if total <= 0:
        return None
    for le in bounds:
        if after[le] - before.get(le, 0.0) >= q * total:
            return le
    return None


def run_step(args: argparse.Namespace, pid: int, port: int, n: int, tmp: Path) -> dict[str, Any]:
    ramp = max(2.0, n * args.ramp_per_viewer)
    delays_before = delay_buckets(port)
    out = tmp / f"step-{n}.json"
    cmd = ["taskset", "-c", "1", sys.executable, "-m", "loadtest", "run"]
    cmd += ["--base-url", f"http://127.0.0.1:{port}", "--stream", f"bench{n}"]
    cmd += ["--viewers", str(n), "--ramp", str(ramp), "--duration", str(args.duration)]
    cmd += ["--processes", "1", "--json", str(out), "--server-pid", str(pid)]
    cmd += ["--width", str(args.width), "--height", str(args.height), "--bitrate", args.bitrate]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    samples: dict[float, dict[str, float]] = {}  # the tool's t -> /proc at that line's arrival
    udp: int | None = None
    p = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert p.stderr is not None
        for line in p.stderr:  # progress lines, once a second, as they happen
            if m := LINE.match(line):
                samples[float(m.group(1))] = proc_sample(pid)
                if float(m.group(1)) >= ramp + args.settle and udp is None:
                    udp = udp_sockets(pid)  # with every viewer connected
            elif not line.startswith("loadtest: publishing"):
                print(f"  [N={n}] {line.rstrip()}", file=sys.stderr)
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    rep = json.loads(out.read_text())
    ts = {round(x["t"], 1): x for x in rep["timeseries"]}
    ok_t = sorted(t for t in samples if t in ts and ramp + args.settle <= t <= ramp + args.duration)
    if len(ok_t) < 2:
        raise RuntimeError(f"N={n}: steady window too short: {sorted(samples)}")
    t0, t1 = ok_t[0], ok_t[-1]
    a, b, pa, pb = samples[t0], samples[t1], ts[t0], ts[t1]
    dt, recv = b["mono"] - a["mono"], pb["packets_received"] - pa["packets_received"]
    lost = pb["packets_lost"] - pa["packets_lost"]
    agg, mach = rep["aggregate"], rep["machine"]
    s: dict[str, Any] = {"viewers": n, "ramp_s": ramp, "window": [t0, t1], "window_s": dt}
    s["server_cores"] = (b["cpu"] - a["cpu"]) / dt
    # user: the interpreter, libsrtp; system: syscalls and, on loopback, delivery to the viewer
    s["server_user_cores"], s["server_sys_cores"] = (
        (b["user"] - a["user"]) / dt,
        (b["sys"] - a["sys"]) / dt,
    )
    s["forwarded_pps"] = recv / (t1 - t0)
    s["pps_per_viewer"] = s["forwarded_pps"] / n
    s["window_loss_pct"] = 100 * lost / (recv + lost) if recv + lost > 0 else None
    s["loss_pct"] = agg["loss_pct"]
    s["bitrate_bps_per_viewer"] = agg["bitrate_bps"] / max(1, agg["receiving"])
    s["server_rss_bytes"], s["server_rss_window_end"] = proc_sample(pid)["rss"], b["rss"]
    s["server_udp_sockets"] = udp
    s["client_cpu1_busy"] = (b["c1_busy"] - a["c1_busy"]) / max(1, b["c1_all"] - a["c1_all"])
    s["udp_rcvbuf_errors"] = mach.get("udp_rcvbuf_errors")
    s |= {k: agg[k] for k in ("receiving", "failed", "packets_received", "packets_lost")}
    s["failure_reasons"], s["exit_code"] = rep["failure_reasons"], p.returncode
    s["publisher"] = rep.get("publisher")
    # Whole step (ramp included): one publisher packet's arrival to its send to the last viewer.
    delays_after = delay_buckets(port)
    for q in (0.5, 0.99):
        s[f"forward_delay_p{round(q * 100)}_s"] = delay_quantile(delays_before, delays_after, q)
    return s


def fit(steps: list[dict[str, Any]], max_loss: float) -> dict[str, Any]:
    good = [s for s in steps if (s["window_loss_pct"] or 0) <= max_loss and not s["client_limit"]]
    f: dict[str, Any] = {"steps_used": [s["viewers"] for s in good]}
    if len(good) < 2:
        return f | {"error": "fewer than two steps within the loss limit"}
    xs, ys = [s["forwarded_pps"] for s in good], [s["server_cores"] for s in good]
    slope, icpt = statistics.linear_regression(xs, ys)
    pps = statistics.mean(s["pps_per_viewer"] for s in good)
    bps = statistics.mean(s["bitrate_bps_per_viewer"] for s in good)
    vpc = 1 / (slope * pps)
    rslope, _ = statistics.linear_regression(
        [s["viewers"] for s in good], [s["server_rss_bytes"] for s in good]
    )
    f |= {"us_per_packet_per_viewer": slope * 1e6, "intercept_cores": icpt}
    f |= {"pps_per_viewer": pps, "payload_bps_per_viewer": bps, "viewers_per_core": vpc}
    f["viewers_per_core_after_ingest"] = (1 - icpt) / (slope * pps)  # the fit's intercept off
    f["egress_gbps_per_core_payload"] = vpc * bps / 1e9
    f["egress_gbps_per_core_ip"] = vpc * (bps + pps * OVERHEAD_B * 8) / 1e9
    f["rss_bytes_per_viewer"] = rslope
    f["r2"] = statistics.correlation(xs, ys) ** 2 if len(xs) > 2 else None
    for part in ("user", "sys"):
        ps = [s[f"server_{part}_cores"] for s in good]
        f[f"us_per_packet_per_viewer_{part}"] = statistics.linear_regression(xs, ps)[0] * 1e6
    return f


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, f = r["steps"], r["fit"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [s["viewers"] for s in steps]
    ax.plot(xs, [s["server_cores"] for s in steps], "o", label="server CPU (CPU 0)")
    ax.plot(xs, [s["client_cpu1_busy"] for s in steps], "x", label="client core busy (CPU 1)")
    if "us_per_packet_per_viewer" in f:
        top = max(xs)
        y0, k = f["intercept_cores"], f["pps_per_viewer"] * f["us_per_packet_per_viewer"] / 1e6
        ax.plot(
            [0, top],
            [y0, y0 + k * top],
            "-",
            label=f"fit {f['us_per_packet_per_viewer']:.1f} us/pkt/viewer",
        )
    c = r["clip"]
    title = f"VP8 {c['width']}x{c['height']} {c['bitrate']}: stop = {r['stop_reason']}"
    ax.set(xlabel="viewers", ylabel="cores", title=title, ylim=(0, 1.1))
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument(
        "--steps", default="5,10,20,30,40", type=lambda s: [int(x) for x in s.split(",")]
    )
    add_step_arguments(ap, ramp_per_viewer=0.1)
    ap.add_argument("--max-client-busy", type=float, default=0.95, help="CPU 1 busy fraction")
    ap.add_argument("--udp-port", type=int, help="run the server with BROADCAST_UDP_PORT")
    ap.add_argument("--json", type=Path, default=Path("loadtest/results/bench_fanout.json"))
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1})  # this script's own small work stays off the server's core
    cpu = [x.split(":")[1].strip() for x in Path("/proc/cpuinfo").open() if "model name" in x]
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    r: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "started": now}
    r["git"] = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    r["machine"] = {"nproc": os.cpu_count(), "cpu_model": cpu[0] if cpu else None}
    r["machine"]["pinning"] = {"server": "taskset -c 0", "load tool": "taskset -c 1"}
    r["machine"] |= {"uname": os.uname()[2], "python": sys.version.split()[0]}
    r["clip"] = {"width": args.width, "height": args.height, "bitrate": args.bitrate}
    r["steps"], r["stop_reason"] = [], "all steps done"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server = start_server(port, udp_port=args.udp_port)
        r["server"] = {"pid": server.pid, "port": port, "rss_idle": proc_sample(server.pid)["rss"]}
        with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
            for n in args.steps:
                try:
                    s = run_step(args, server.pid, port, n, Path(tmp))
                except (RuntimeError, OSError, ValueError, KeyError) as exc:
                    r["stop_reason"] = f"step N={n} failed: {exc}"
                    break
                r["steps"].append(s)
                print(
                    f"N={n:4d} server {s['server_cores']:.3f} cores, "
                    f"{s['forwarded_pps']:.0f} pkt/s, loss {s['window_loss_pct']:.3f}%, "
                    f"rss {s['server_rss_bytes'] / 2**20:.0f} MiB, "
                    f"client core {100 * s['client_cpu1_busy']:.0f}%, "
                    f"udp drops {s['udp_rcvbuf_errors']}",
                    flush=True,
                )
                client = []
                if s["udp_rcvbuf_errors"]:
                    client.append(f"{s['udp_rcvbuf_errors']} UDP receive-buffer drops")
                if s["failed"] or s["receiving"] < n:
                    client.append(f"{s['failed']} failed, {s['receiving']}/{n} receiving")
                if s["client_cpu1_busy"] > args.max_client_busy:
                    client.append(f"CPU 1 {100 * s['client_cpu1_busy']:.0f}% busy")
                if s.setdefault("client_limit", "; ".join(client) or None):  # not in the fit
                    r["stop_reason"] = f"client limit at N={n}: {s['client_limit']}"
                    break
                if (s["window_loss_pct"] or 0) > args.max_loss:
                    r["stop_reason"] = f"server limit at N={n}: loss {s['window_loss_pct']:.2f}%"
                    break
                if server.poll() is not None:
                    r["stop_reason"] = f"server exited ({server.returncode})"
                    break
    finally:
        stop_server(server)
    r["fit"] = fit(r["steps"], args.max_loss)
    top = max(r["steps"], key=lambda s: s["viewers"], default=None)
    if top:
        r["highest"] = {"viewers": top["viewers"], "server_cores": top["server_cores"]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=1, default=str))
    if args.plot:
        plot(r, args.plot)
    print(json.dumps({k: r.get(k) for k in ("stop_reason", "fit", "highest")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
