"""Server CPU for recording and for data-channel fan-out: server on CPU 0, load on CPU 1.

    python -m loadtest.bench_record_data --viewers 0,5,10,20 --rate 50 \\
        --json loadtest/results/bench_record_data.json --plot loadtest/results/bench_record_data.png

1. Recording: one aiortc publisher (pre-encoded 640x360 VP8 + Opus, no viewers), once on a
   server without BROADCAST_RECORD_DIR and once with it; server CPU over a steady window,
   packets ingested (the stream API's tracks[].packets), so µs per packet recorded. The file
   is then opened with PyAV (frames, duration, size).
2. Data channels: a publisher with a reliable "chat" channel and N viewers that offer
   m=application (and count RTP without decoding); an idle window (media only), then the
   publisher sends --rate messages/s of --size bytes, each carrying its sequence number and
   send time (time.monotonic: one process, one clock). Server CPU of the send window minus
   the idle one, per message and per message per viewer, and a fit over N of the two parts
   (N=0: the publisher side alone); per-viewer delivery, order and latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

import aioice.ice
import av
import httpx
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCRtpSender
from aiortc import RTCSessionDescription as SDP

from loadtest.bench_fanout import proc_sample, stop_server
from loadtest.publisher import ClipSpec, encode_clip
from loadtest.quick_cpu import PacketTrack

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = ["us_per_message", "us_per_message_per_viewer", "complete", "in_order"]
SUMMARY_KEYS += ["latency_p50_ms", "latency_p95_ms"]
CLIP = ClipSpec(width=640, height=360, fps=30, kbps=800, gop=60)


def start_server(port: int, env_extra: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m broadcast serve` pinned to CPU 0, once it listens; stderr to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    env |= {"BROADCAST_ICE_ADDRESSES": "127.0.0.1", "BROADCAST_LOG_LEVEL": "warning"}
    env |= {"BROADCAST_WORKERS": "1", "BROADCAST_RATE_LIMIT": "0", "PYTHONPATH": str(ROOT)}
    env |= env_extra
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "broadcast", "serve", "--port", str(port)]
    with log.open("ab") as f:
        server = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=f, start_new_session=True)
    for _ in range(150):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return server
        if server.poll() is not None:
            break
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not start listening within 15 s: see {log}")


async def post(client: httpx.AsyncClient, pc: RTCPeerConnection, url: str) -> str:
    """Offer, POST, answer; the resource URL."""
    await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), 10)
    headers = {"Content-Type": "application/sdp"}
    r = await client.post(url, content=pc.localDescription.sdp, headers=headers)
    if r.status_code != 201:
        raise RuntimeError(f"POST {url}: {r.status_code} {r.text[:300]}")
    await asyncio.wait_for(pc.setRemoteDescription(SDP(sdp=r.text, type="answer")), 10)
    return str(r.headers.get("location", ""))


class Pub:
    """Pre-encoded VP8 + Opus (aiortc only packetizes); a "chat" channel if asked."""

    def __init__(self, clip: tuple[list[bytes], list[bytes]], chat: bool) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver(PacketTrack("video", clip[0], 1 / CLIP.fps), direction="sendonly")
        self.pc.addTransceiver(PacketTrack("audio", clip[1], 0.02), direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        pick = [c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")]
        self.pc.getTransceivers()[0].setCodecPreferences(pick[:1] + pick[-1:])
        self.chat: RTCDataChannel | None = self.pc.createDataChannel("chat") if chat else None
        self.location = ""

    async def start(self, client: httpx.AsyncClient, stream: str) -> None:
        self.location = await post(client, self.pc, f"/whip/{stream}")
        for _ in range(150):  # connected (and the chat channel open): bounded, 15 s
            ok = self.pc.connectionState == "connected"
            if ok and (self.chat is None or self.chat.readyState == "open"):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"publisher not connected: {self.pc.connectionState}")

    async def stop(self, client: httpx.AsyncClient) -> None:
        with contextlib.suppress(httpx.HTTPError):
            if self.location:
                await client.delete(self.location)
        await asyncio.wait_for(self.pc.close(), 5)


class DataViewer:
    """Recvonly audio + video, counting RTP without decoding; a channel of its own in the
    offer (so m=application); records (seq, latency) of each "chat" message."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.createDataChannel("whep")
        self.rtp = 0
        self.seqs: list[int] = []
        self.latency: list[float] = []
        self.chat: RTCDataChannel | None = None
        self.location = ""
        for tr in self.pc.getTransceivers():

            async def count(packet: Any, arrival_time_ms: int) -> None:
                self.rtp += 1

            tr.receiver._handle_rtp_packet = count  # type: ignore[method-assign]

        @self.pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            if channel.label != "chat":
                return
            self.chat = channel

            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                now = time.monotonic()
                text = message if isinstance(message, str) else message.decode()
                seq, sent = text.split(" ", 2)[:2]
                self.seqs.append(int(seq))
                self.latency.append(now - float(sent))

    async def stop(self, client: httpx.AsyncClient) -> None:
        with contextlib.suppress(httpx.HTTPError):
            if self.location:
                await client.delete(self.location)
        await asyncio.wait_for(self.pc.close(), 5)


async def ingress_packets(client: httpx.AsyncClient, stream: str) -> int:
    body = (await client.get(f"/api/streams/{stream}")).json()
    return sum(int(t["packets"]) for t in body["tracks"])


async def window(client: httpx.AsyncClient, pid: int, stream: str, secs: float) -> dict[str, Any]:
    """Server CPU (cores, user/sys) and ingested packets/s over `secs` seconds."""
    p0, a = await ingress_packets(client, stream), proc_sample(pid)
    await asyncio.sleep(secs)
    p1, b = await ingress_packets(client, stream), proc_sample(pid)
    dt = b["mono"] - a["mono"]
    w = {"seconds": dt, "server_cores": (b["cpu"] - a["cpu"]) / dt}
    w |= {"server_user_cores": (b["user"] - a["user"]) / dt}
    w |= {"server_sys_cores": (b["sys"] - a["sys"]) / dt, "ingress_pps": (p1 - p0) / dt}
    w["client_cpu1_busy"] = (b["c1_busy"] - a["c1_busy"]) / max(1, b["c1_all"] - a["c1_all"])
    return w | {"loadavg": os.getloadavg()}


def inspect_file(directory: Path) -> dict[str, Any]:
    """The recording's files, and the first one's video frames and duration (PyAV demux)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    out: dict[str, Any] = {"files": [str(p.relative_to(directory)) for p in files]}
    if not files:
        return out | {"error": "no file written"}
    path = files[0]
    out["bytes"] = path.stat().st_size
    try:
        with av.open(str(path)) as c:
            counts = {s.type: 0 for s in c.streams}
            keys = 0
            for pkt in c.demux():
                if pkt.size:
                    counts[pkt.stream.type] = counts.get(pkt.stream.type, 0) + 1
                    keys += bool(pkt.is_keyframe and pkt.stream.type == "video")
            out["streams"] = [f"{s.type}:{s.codec_context.name}" for s in c.streams]
            out["duration_s"] = None if c.duration is None else c.duration / 1e6
            out |= {"video_frames": counts.get("video", 0), "audio_packets": counts.get("audio")}
            out["video_keyframes"] = keys
    except (av.FFmpegError, OSError) as exc:
        out["error"] = repr(exc)
    return out


async def recording(args: argparse.Namespace, port: int, pid: int, clip: Any) -> dict[str, Any]:
    stream = f"rec{port}"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        pub = Pub(clip, chat=False)
        try:
            await pub.start(client, stream)
            await asyncio.sleep(args.warmup)
            w = await window(client, pid, stream, args.record_duration)
            body = (await client.get(f"/api/streams/{stream}")).json()
            w["recording_state"] = body.get("recording")
        finally:
            await pub.stop(client)
    return w


async def data_step(
    args: argparse.Namespace, port: int, pid: int, clip: Any, n: int
) -> dict[str, Any]:
    stream = f"data{n}"
    s: dict[str, Any] = {"viewers": n}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        pub, viewers = Pub(clip, chat=True), [DataViewer() for _ in range(n)]
        try:
            await pub.start(client, stream)
            for v in viewers:
                v.location = await post(client, v.pc, f"/whep/{stream}")
            for _ in range(300):  # every viewer has an open "chat" mirror: bounded, 30 s
                if all(v.chat and v.chat.readyState == "open" for v in viewers):
                    break
                await asyncio.sleep(0.1)
            else:
                have = sum(bool(v.chat and v.chat.readyState == "open") for v in viewers)
                raise RuntimeError(f"N={n}: only {have} viewers got an open chat mirror")
            await asyncio.sleep(args.warmup)
            s["idle"] = await window(client, pid, stream, args.data_duration)
            s["send"] = await send_window(args, client, pid, stream, pub, viewers)
            s["data_api"] = (await client.get(f"/api/streams/{stream}")).json().get("data")
        finally:
            peers: list[Pub | DataViewer] = [*viewers, pub]
            for peer in peers:
                with contextlib.suppress(Exception):
                    await peer.stop(client)
    expected = s["send"]["sent"]
    idle = s["idle"]["server_cores"]
    extra = s["send"]["server_cpu_s"] - idle * s["send"]["seconds"]
    s["extra_server_cpu_s"] = extra
    s["us_per_message_per_viewer"] = extra / (expected * n) * 1e6 if expected * n else None
    s["us_per_message"] = extra / expected * 1e6 if expected else None
    s["delivered"] = [len(v.seqs) for v in viewers]
    s["in_order"] = all(v.seqs == list(range(len(v.seqs))) for v in viewers)
    s["complete"] = all(len(v.seqs) == expected for v in viewers)
    s["expected_per_viewer"] = expected
    lat = sorted(x for v in viewers for x in v.latency)
    if lat:
        q = statistics.quantiles(lat, n=100, method="inclusive")
        s |= {"latency_p50_ms": q[49] * 1e3, "latency_p95_ms": q[94] * 1e3}
        s["latency_max_ms"] = lat[-1] * 1e3
    s["viewer_rtp_packets"] = [v.rtp for v in viewers]
    return s


async def send_window(
    args: argparse.Namespace,
    client: httpx.AsyncClient,
    pid: int,
    stream: str,
    pub: Pub,
    viewers: list[DataViewer],
) -> dict[str, Any]:
    """Send rate*duration messages paced in real time; the CPU window runs until the last
    one reached every viewer (or `drain` seconds after the last send)."""
    assert pub.chat is not None
    count = round(args.rate * args.data_duration)
    pad = "x" * args.size
    a = proc_sample(pid)
    start = time.monotonic()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
        pub.chat.send(f"{i} {time.monotonic():.6f} {pad}"[: max(args.size, 24)])
    for _ in range(round(args.drain * 20)):
        if all(len(v.seqs) >= count for v in viewers):
            break
        await asyncio.sleep(0.05)
    b = proc_sample(pid)
    dt = b["mono"] - a["mono"]
    out = {"sent": count, "seconds": dt, "server_cpu_s": b["cpu"] - a["cpu"]}
    out |= {"server_cores": (b["cpu"] - a["cpu"]) / dt}
    out["client_cpu1_busy"] = (b["c1_busy"] - a["c1_busy"]) / max(1, b["c1_all"] - a["c1_all"])
    return out | {"loadavg": os.getloadavg()}


def log_problems(log: Path) -> list[str]:
    keys = ("Traceback", "ERROR", "WARNING", "Exception", "error")
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [x for x in lines if any(k in x for k in keys)][:40]


async def run(args: argparse.Namespace, r: dict[str, Any], tmp: Path) -> None:
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
    clip = encode_clip(CLIP)
    kbps = sum(map(len, clip[0])) * 8 / (CLIP.frames / CLIP.fps) / 1000
    r["clip"] = {"size": f"{CLIP.width}x{CLIP.height}", "fps": CLIP.fps, "video_kbps": kbps}
    rec_dir, log = tmp / "rec", tmp / "server.log"
    runs = [("off", {"BROADCAST_DATA_RATE": "0"}), ("on", {"BROADCAST_RECORD_DIR": str(rec_dir)})]
    for name, extra in runs:
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        server = start_server(port, extra, log)
        try:
            r["recording"][name] = w = await recording(args, port, server.pid, clip)
            print(
                f"recording {name}: {w['server_cores']:.3f} cores, {w['ingress_pps']:.0f} pkt/s",
                flush=True,
            )
            if name == "on":
                for _ in range(100):  # the writer closes the file after the publisher left
                    await asyncio.sleep(0.1)
                    f = inspect_file(rec_dir)
                    if "video_frames" in f and not f.get("error"):
                        break
                r["recording"]["file"] = f
            else:
                for n in args.viewers:
                    try:
                        s = await data_step(args, port, server.pid, clip, n)
                    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
                        r["data_error"] = f"N={n}: {exc!r}"
                        break
                    r["data"].append(s)
                    print(step_line(s), flush=True)
                    await asyncio.sleep(2)
        finally:
            stop_server(server)
            r["server_returncodes"].append(server.returncode)


def step_line(s: dict[str, Any]) -> str:
    per_viewer, got = s["us_per_message_per_viewer"], s["delivered"] or [0]
    line = f"data N={s['viewers']}: {s['us_per_message']:.0f} us/msg"
    line += f", {per_viewer:.1f} us/msg/viewer" if per_viewer is not None else ""
    line += f", delivered {min(got)}..{max(got)}/{s['expected_per_viewer']}"
    return line + f", in order {s['in_order']}, p50 {s.get('latency_p50_ms', 0):.1f} ms"


def summarize(r: dict[str, Any]) -> None:
    rec = r["recording"]
    if "off" in rec and "on" in rec:
        diff = rec["on"]["server_cores"] - rec["off"]["server_cores"]
        pps = rec["on"]["ingress_pps"]
        r["summary"]["recording_extra_cores"] = diff
        r["summary"]["recording_us_per_packet"] = diff / pps * 1e6 if pps else None
        r["summary"]["ingress_pps"] = pps
    pts = [x for x in r["data"] if x["us_per_message"] is not None]
    if (
        len({x["viewers"] for x in pts}) >= 2
    ):  # extra cores = per message (publisher side) + per message per viewer
        xs = [x["expected_per_viewer"] * x["viewers"] / x["send"]["seconds"] for x in pts]
        ys = [x["extra_server_cpu_s"] / x["send"]["seconds"] for x in pts]
        slope, icpt = statistics.linear_regression(xs, ys)
        rate = pts[0]["expected_per_viewer"] / pts[0]["send"]["seconds"]
        r["summary"]["data_fit_us_per_message_per_viewer"] = slope * 1e6
        r["summary"]["data_fit_us_per_message_ingress"] = icpt / rate * 1e6
    r["summary"]["data"] = {s["viewers"]: {k: s.get(k) for k in SUMMARY_KEYS} for s in r["data"]}


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    rec = r["recording"]
    names = [k for k in ("off", "on") if k in rec]
    ax1.bar(names, [100 * rec[k]["server_cores"] for k in names], color=["tab:gray", "tab:red"])
    us = r["summary"].get("recording_us_per_packet")
    ax1.set(
        ylabel="server CPU, % of a core",
        xlabel="recording",
        title=f"1 publisher, {r['clip']['size']}: {us or 0:.1f} us/packet recorded",
    )
    pts = [s for s in r["data"] if s["us_per_message_per_viewer"] is not None]
    if pts:
        xs = [s["viewers"] for s in pts]
        ax2.plot(xs, [s["us_per_message_per_viewer"] for s in pts], "o-", label="server µs")
        ax2.set(
            xlabel="viewers",
            ylabel="server CPU µs per message per viewer",
            title=f"data channel fan-out, {r['args']['rate']} msg/s",
            ylim=(0, None),
        )
        twin = ax2.twinx()
        twin.plot(xs, [s.get("latency_p95_ms") for s in pts], "x--", color="tab:orange")
        twin.set_ylabel("latency p95, ms", color="tab:orange")
        twin.set_ylim(bottom=0)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--viewers", default="0,5,10,20", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--rate", type=float, default=50.0, help="messages/s the publisher sends")
    ap.add_argument("--size", type=int, default=100, help="bytes per message (min 24)")
    ap.add_argument("--data-duration", type=float, default=15.0, help="idle and send windows")
    ap.add_argument("--record-duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--drain", type=float, default=5.0, help="max s for the last messages")
    ap.add_argument("--json", type=Path, default=Path("loadtest/results/bench_record_data.json"))
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1})  # publisher and viewers: CPU 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    r: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    r |= {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": os.getloadavg()}
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    r["git"] = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    r["machine"] = {"nproc": os.cpu_count(), "python": sys.version.split()[0]}
    r["machine"]["pinning"] = {"server": "taskset -c 0", "load": "sched_setaffinity {1}"}
    r |= {"recording": {}, "data": [], "summary": {}, "server_returncodes": []}
    bound = 120 + 2 * (args.warmup + args.record_duration + 20)
    bound += len(args.viewers) * (2 * args.data_duration + args.warmup + args.drain + 60)
    with tempfile.TemporaryDirectory(prefix="bench-record-data-") as tmp:
        try:
            asyncio.run(asyncio.wait_for(run(args, r, Path(tmp)), bound))
        finally:  # servers are stopped by run()'s own finally blocks
            r["server_log_problems"] = log_problems(Path(tmp) / "server.log")
            r["loadavg_end"] = os.getloadavg()
            summarize(r)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(r, indent=1, default=str))
    if args.plot:
        plot(r, args.plot)
    print(json.dumps(r["summary"], indent=1))
    for line in r["server_log_problems"]:
        print("server log:", line)
    return 0 if not r.get("data_error") else 1


if __name__ == "__main__":
    sys.exit(main())
