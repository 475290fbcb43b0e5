"""Server CPU time per forwarded RTP packet per viewer (python -m loadtest.quick_cpu --help).

Server: a subprocess, measured from /proc. Here: an aiortc publisher (pre-encoded VP8 720p30 +
Opus) and N viewers counting RTP (viewer 0 decodes). Windows: 0 viewers, each N, 0 again."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import marshal
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aioice.ice
import aiortc
import av
import httpx
import pylibsrtp
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc import RTCSessionDescription as SDP
from aiortc.mediastreams import MediaStreamError

W, H, FPS, GOP, CLIP_S, KBPS, STREAM = 1280, 720, 30, 60, 10, 2500, "quickcpu"
CACHE, ROOT = Path("/tmp/broadcast-loadtest"), Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
VP8 = "deadline=realtime cpu-used=8 lag-in-frames=0 auto-alt-ref=0 error-resilient=1"


def encode(kbps: int) -> tuple[list[bytes], list[bytes]]:
    """VP8 CBR, fixed GOP, no alt-ref: CLIP_S s of testsrc2 + noise (cached); Opus: 10 s."""
    path = CACHE / f"vp8-{W}x{H}-{FPS}fps-{kbps}k-g{GOP}-{CLIP_S}s.marshal"
    lavfi = f"testsrc2=size={W}x{H}:rate={FPS},noise=alls=12:allf=t"
    ctx: Any = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.gop_size = W, H, "yuv420p", GOP
    ctx.time_base, ctx.framerate, ctx.bit_rate = fractions.Fraction(1, FPS), FPS, kbps * 1000
    ctx.options = dict(o.split("=") for o in VP8.split()) | {"keyint_min": str(GOP)}
    ctx.options |= {"minrate": f"{kbps}k", "maxrate": f"{kbps}k", "bufsize": f"{kbps}k"}
    video: list[bytes] = [] if not path.exists() else marshal.loads(path.read_bytes())
    for i, frame in enumerate(av.open(lavfi, format="lavfi").decode(video=0) if not video else []):
        frame.pts, frame.time_base = i, ctx.time_base
        frame.pict_type = av.video.frame.PictureType.NONE  # lavfi marks every frame I
        video += [bytes(p) for p in ctx.encode(frame if i < FPS * CLIP_S else None)]
        if i == FPS * CLIP_S:
            path.with_suffix(".tmp").write_bytes(marshal.dumps(video))
            path.with_suffix(".tmp").replace(path)
            break
    opus: Any = av.CodecContext.create("libopus", "w")
    opus.sample_rate, opus.layout, opus.format, opus.bit_rate = 48000, "stereo", "s16", 64000
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000, frame_size=960)
    sine = av.open("sine=frequency=440:sample_rate=48000:duration=10", format="lavfi")
    frames = [f for frame in sine.decode(audio=0) for f in resampler.resample(frame)]
    return list(video), [bytes(p) for f in frames for p in opus.encode(f)]


def calibrate(n: int = 20000) -> dict[str, float]:
    """The machine's speed now, in us per call: most of a forwarded packet's cost is these."""
    P = pylibsrtp.Policy  # AES-256-GCM: what two aiortc peers negotiate
    policy = P(os.urandom(44), P.SSRC_ANY_OUTBOUND, P.SRTP_PROFILE_AEAD_AES_256_GCM)
    srtp = pylibsrtp.Session(policy)
    pkts = [b"\x80\x60" + (i % 65536).to_bytes(2, "big") + bytes(1196) for i in range(n)]
    with socket.socket(type=socket.SOCK_DGRAM) as rx, socket.socket(type=socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))  # never read: the kernel drops the overflow, after the work
        out, addr = {}, rx.getsockname()
        tests = {"sum_range_100": lambda p: sum(range(100)), "protect_1200B": srtp.protect}
        tests["sendto_1200B"] = lambda p: tx.sendto(p, addr)
        for name, fn in tests.items():
            t = time.process_time()
            for p in pkts:
                fn(p)
            out[f"{name}_us"] = (time.process_time() - t) / n * 1e6
    return out


class PacketTrack(MediaStreamTrack):
    """Pre-encoded av.Packets, paced in real time and looping: aiortc only packetizes them."""

    def __init__(self, kind: str, payloads: list[bytes], period: float, gop: int = 0) -> None:
        super().__init__()
        self.kind, self.payloads, self.period, self.gop = kind, payloads, period, gop
        self.count, self.start, self.skip, self.keyframes_on_request = 0, 0.0, 0, 0

    def request_keyframe(self) -> None:
        """Skip ahead to the clip's next keyframe (every `gop` frames): a keyframe on demand."""
        at = (self.count + self.skip) % self.gop if self.gop else 0
        if at:
            self.skip += self.gop - at
            self.keyframes_on_request += 1

    async def recv(self) -> av.Packet:
        self.start = self.start or time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.count * self.period - time.monotonic()))
        packet = av.Packet(self.payloads[(self.count + self.skip) % len(self.payloads)])
        packet.pts, packet.time_base = self.count, fractions.Fraction(1, round(1 / self.period))
        self.count += 1
        return packet


class Peer:
    """An aiortc peer; as a viewer it counts RTP packets, and decodes only if asked."""

    def __init__(self, decode: bool = False) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.decode, self.location, self.packets, self.frames, self.sizes = decode, "", 0, 0, set()

    def tap(self) -> None:
        for tr in self.pc.getTransceivers():

            async def handle(packet: Any, arrival_time_ms: int, f=tr.receiver._handle_rtp_packet):
                self.packets += 1
                if self.decode:
                    await f(packet, arrival_time_ms=arrival_time_ms)

            tr.receiver._handle_rtp_packet = handle
        self.pc.on("track", lambda t: self.decode and asyncio.ensure_future(self.drain(t)))

    async def drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while frame := await track.recv():
                if track.kind == "video":
                    self.frames += 1
                    self.sizes.add(f"{frame.width}x{frame.height}")

    async def connect(self, client: httpx.AsyncClient, url: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp, headers = self.pc.localDescription.sdp, {"Content-Type": "application/sdp"}
        r = await client.post(url, content=sdp, headers=headers)
        if r.status_code != 201:
            raise RuntimeError(f"POST {url}: {r.status_code} {r.text[:300]}")
        self.location = r.headers["location"]
        await self.pc.setRemoteDescription(SDP(sdp=r.text, type="answer"))

    async def close(self, client: httpx.AsyncClient) -> None:
        with contextlib.suppress(httpx.HTTPError):
            if self.location:
                await client.delete(self.location)
        await asyncio.wait_for(self.pc.close(), 5)


async def counters(client: httpx.AsyncClient, pid: int, peers: list[Peer]) -> dict[str, float]:
    """Every cumulative counter at one instant (CPU seconds, packets): windows subtract."""
    body = (await client.get(f"/api/streams/{STREAM}")).json()
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # all threads
    c = {"t": time.monotonic(), "client_cpu": sum(os.times()[:2])}
    c["server_user"], c["server_sys"] = int(f[11]) / TICK, int(f[12]) / TICK
    cpu = [int(x) / TICK for x in Path("/proc/stat").read_text().split()[1:9]]
    c["machine_busy"], c["machine_steal"] = sum(cpu) - cpu[3] - cpu[4] - cpu[7], cpu[7]
    udp = Path("/proc/net/snmp").read_text().split("\nUdp: ")[2].split()  # machine-wide drops
    c["udp_rcvbuf_errors"], c["udp_sndbuf_errors"] = int(udp[4]), int(udp[5])
    c |= {f"ingest_{t['kind']}": t["packets"] for t in body["tracks"]}
    for tracks in (v["tracks"] for v in body["viewer_sessions"]):
        for kind, t in tracks.items():
            for key in ("packets", "retransmits", "nacks", "plis"):
                name = f"sent_{kind}" if key == "packets" else key
                c[name] = c.get(name, 0) + t[key]
    c["client_received"] = sum(p.packets for p in peers)  # vs sent + retransmits: the loss
    c["decoded_frames"] = sum(p.frames for p in peers)
    return c


async def measure(client: httpx.AsyncClient, pid: int, peers: list[Peer], secs: float) -> Any:
    a = await counters(client, pid, peers)
    await asyncio.sleep(secs)
    b = await counters(client, pid, peers)
    dt, counts = b["t"] - a["t"], {k: b[k] - a.get(k, 0) for k in b if k != "t"}
    rate = {k: v / dt for k, v in counts.items()}
    w = {"viewers": len(peers), "seconds": dt}
    w["server_cores"] = rate["server_user"] + rate["server_sys"]
    w["forwarded_pps"] = rate.get("sent_video", 0) + rate.get("sent_audio", 0)
    sent = [counts.get(k, 0) for k in ("sent_video", "sent_audio", "retransmits")]
    w["lost"] = sum(sent) - counts["client_received"]  # +-1 at the window edges
    w["decoded_sizes"] = sorted({s for p in peers for s in p.sizes})
    return w | {"per_second": rate, "counts": counts, "loadavg": os.getloadavg()}


async def add_viewers(client: httpx.AsyncClient, n: int, audio: bool) -> list[Peer]:
    peers = [Peer(decode=i == 0) for i in range(n)]
    for p in peers:
        for kind in ("video", "audio") if audio else ("video",):
            p.pc.addTransceiver(kind, direction="recvonly")
        p.tap()
        await p.connect(client, f"/whep/{STREAM}")
    for _ in range(60):  # every session synced on every track, and counted here
        await asyncio.sleep(0.5)
        body = (await client.get(f"/api/streams/{STREAM}")).json()
        tracks = [t for v in body["viewer_sessions"] for t in v["tracks"].values()]
        if len(tracks) == n * (1 + audio) and all(t["synced"] and t["packets"] for t in tracks):
            if all(p.packets for p in peers):
                return peers
    raise RuntimeError(f"{n} viewers not all receiving after 30 s: {body}")


async def run(args: argparse.Namespace, r: dict[str, Any]) -> None:
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
    video, audio = encode(KBPS)
    audio, kbps = [] if args.no_audio else audio, sum(map(len, video)) * 8 / CLIP_S / 1000
    r["clip"] = {"size": f"{W}x{H}", "fps": FPS, "gop": GOP, "audio": bool(audio), "kbps": kbps}
    r["calibration_start"] = calibrate()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "broadcast", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    env |= {"BROADCAST_ICE_ADDRESSES": "127.0.0.1", "BROADCAST_LOG_LEVEL": "warning"}
    env["BROADCAST_WORKERS"] = "1"
    env["BROADCAST_RATE_LIMIT"] = "0"  # every viewer joins from this one address
    log = (CACHE / f"server-{os.getpid()}.log").open("w+")
    server = subprocess.Popen(cmd, env=env, stderr=log, start_new_session=True, cwd=ROOT)
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
    pub, peers, r["server"], r["points"] = Peer(), [], {"cmd": cmd, "pid": server.pid}, []
    try:
        for _ in range(150):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    break
            await asyncio.sleep(0.1)
        pub.pc.addTransceiver(PacketTrack("video", video, 1 / FPS), direction="sendonly")
        if audio:
            pub.pc.addTransceiver(PacketTrack("audio", audio, 0.02), direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        pick = [c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")]
        pub.pc.getTransceivers()[0].setCodecPreferences(pick[:1] + pick[-1:])
        await pub.connect(client, f"/whip/{STREAM}")
        await asyncio.sleep(args.warmup + 2)  # DTLS, then ingest settles
        r["baseline"] = await measure(client, server.pid, [], args.duration)
        for n in args.viewers:
            peers = await add_viewers(client, n, bool(audio))
            await asyncio.sleep(args.warmup)
            r["points"].append(p := await measure(client, server.pid, peers, args.duration))
            print(f"N={n}", {k: p[k] for k in ("server_cores", "forwarded_pps", "lost")})
            await asyncio.gather(*(p.close(client) for p in peers))  # again, harmless, at the end
            await asyncio.sleep(2)
        r["baseline_after"] = await measure(client, server.pid, [], args.duration)
        r["calibration_end"] = calibrate()  # contention (a busy SMT sibling) shows here too
    finally:
        await asyncio.gather(*(p.close(client) for p in [*peers, pub]), return_exceptions=True)
        await client.aclose()
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(5)
        if server.poll() is None:
            os.killpg(server.pid, 9)
        log.close()
        r["server"] |= {"returncode": server.wait(5), "log": Path(log.name).read_text()[-4000:]}


def plot(r: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib.pyplot as plt  # picks the Agg backend when there is no display
    except ImportError:
        return "skipped: matplotlib is not installed"
    pts, fit = [r["baseline"], *r["points"], r["baseline_after"]], r["fit"]
    us, y0 = fit["us_per_packet_per_viewer"], fit["intercept_cores"]
    xs, ys = [p["forwarded_pps"] for p in pts], [p["server_cores"] for p in pts]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(xs, ys, "o", [0, max(xs)], [y0, y0 + max(xs) * us / 1e6], "-")
    for p in pts:
        ax.annotate(f" N={p['viewers']}", (p["forwarded_pps"], p["server_cores"]))
    title = f"VP8 {H}p {r['clip']['kbps']:.0f} kbit/s: {us:.1f} us/packet/viewer"
    ax.set(xlabel="forwarded packets/s, all viewers", ylabel="server CPU, cores", title=title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--viewers", default="1,4,16", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per window")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument("--json", type=Path, default=Path("loadtest/results/quick_cpu.json"))
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(ImportError):  # the client is not measured but shares the CPUs
        __import__("uvloop").install()
    cpu = [x.split(":")[1].strip() for x in Path("/proc/cpuinfo").open() if "model name" in x]
    r: dict[str, Any] = {"args": vars(args), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]  # the server under test
    r["git"] = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    r["machine"] = {"nproc": os.cpu_count(), "cpu_model": cpu[0], "python": sys.version}
    r["machine"] |= {"uname": os.uname()[2], "aiortc": aiortc.__version__, "av": av.__version__}
    bound = 180 + (len(args.viewers) + 2) * (args.duration + args.warmup + 40)
    asyncio.run(asyncio.wait_for(run(args, r), bound))  # run()'s cleanup runs on timeout too
    base, points = r["baseline"]["server_cores"], r["points"]
    for p in points:
        p["us_per_packet_per_viewer"] = (p["server_cores"] - base) / p["forwarded_pps"] * 1e6
    xs, ys = [p["forwarded_pps"] for p in points], [p["server_cores"] for p in points]
    slope, intercept = statistics.linear_regression(xs, ys) if len(xs) > 1 else (0.0, 0.0)
    pps = statistics.mean(p["forwarded_pps"] / p["viewers"] for p in points)
    r["fit"] = {"us_per_packet_per_viewer": slope * 1e6, "intercept_cores": intercept}
    r["fit"] |= {"per_viewer_pps": pps, "viewers_per_core": 1 / (slope * pps) if slope else None}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    r["plot"] = plot(r, args.json.with_suffix(".png"))
    r["summary"] = {p["viewers"]: p["us_per_packet_per_viewer"] for p in r["points"]} | r["fit"]
    args.json.write_text(json.dumps(r, indent=1, default=str))
    print(json.dumps([r["summary"], r["calibration_start"], r["calibration_end"]], indent=1))


if __name__ == "__main__":
    main()
