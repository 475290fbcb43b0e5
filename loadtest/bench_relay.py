"""What one relay hop costs: glass-to-glass delay added and CPU, origin vs. edge viewers.

Two nodes share a redis-server: the synthetic publisher sends to the origin, N counting
viewers watch on the origin and N on the edge (which relays the stream from the origin
over one upstream WHEP session), all in the same run. One decoding viewer on each node
reads the frame number the publisher draws into every frame; the same frame decoded at
the edge later than at the origin is the delay the hop adds (the publisher's send time
cancels out, so no clock needs to be shared). Each node's CPU comes from its /metrics.

    python -m loadtest.bench_relay --viewers 20 --duration 20 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from loadtest.publisher import read_counter
from tests.support.nodes import Node
from tests.support.redisproc import RedisProcess

__all__ = ["main"]

WARM_UP = 3.0  # seconds of the decoding viewers' start left out of the delay


class CounterViewer:
    """A decoding WHEP viewer noting when each frame number is first shown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("video", direction="recvonly")
        self.shown: dict[int, float] = {}  # frame number -> first shown (one clip loop)
        self._task: asyncio.Task[None] | None = None

        @self.pc.on("track")
        def on_track(track: Any) -> None:
            self._task = asyncio.ensure_future(self._read(track))

    async def start(self, client: httpx.AsyncClient) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        response = await client.post(
            self.url,
            content=self.pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        )
        response.raise_for_status()
        await self.pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))

    async def _read(self, track: Any) -> None:
        previous = None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            luma = np.frombuffer(frame.planes[0], np.uint8).reshape(
                frame.planes[0].height, frame.planes[0].line_size
            )
            number = read_counter(luma)
            if number != previous:
                self.shown.setdefault(number, now)
                previous = number

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.pc.close()


def _load(base_url: str, stream: str, args: argparse.Namespace, out: Path, publish: bool) -> Any:
    cmd = [
        sys.executable,
        "-m",
        "loadtest",
        "run",
        *("--base-url", base_url, "--stream", stream),
        *("--viewers", str(args.viewers), "--duration", str(args.duration)),
        *("--publish", "synthetic" if publish else "none", "--json", str(out), "--quiet"),
    ]
    return subprocess.Popen(cmd)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    stream = "relay"
    with RedisProcess() as redis:
        origin = Node("origin", redis.url)
        edge = Node("edge", redis.url)
        try:
            work = Path(args.workdir)
            work.mkdir(parents=True, exist_ok=True)
            on_origin = _load(origin.url, stream, args, work / "origin.json", publish=True)
            await asyncio.sleep(3)  # the publisher is live and claimed
            on_edge = _load(edge.url, stream, args, work / "edge.json", publish=False)
            async with httpx.AsyncClient(timeout=10) as client:
                watchers = [CounterViewer(f"{n.url}/whep/{stream}") for n in (origin, edge)]
                for watcher in watchers:
                    await watcher.start(client)
                await asyncio.sleep(args.duration)
                for watcher in watchers:
                    await watcher.stop()
            for process in (on_origin, on_edge):
                process.wait(args.duration + 120)
        finally:
            origin.stop()
            edge.stop()
    first, second = watchers[0].shown, watchers[1].shown
    # Frames after the warm-up only: at the start each viewer catches up from a keyframe.
    settled = min(first.values(), default=0.0) + WARM_UP
    added = sorted(
        (second[n] - first[n]) * 1000 for n in first.keys() & second.keys() if first[n] > settled
    )
    reports = {name: json.loads((work / f"{name}.json").read_text()) for name in ("origin", "edge")}
    result: dict[str, Any] = {
        "viewers_per_node": args.viewers,
        "duration_s": args.duration,
        "frames_matched": len(added),
        "added_delay_ms": {
            "p50": statistics.median(added) if added else None,
            "p95": added[int(len(added) * 0.95)] if added else None,
            "mean": statistics.fmean(added) if added else None,
        },
    }
    for name, report in reports.items():
        agg = report["aggregate"]
        result[name] = {
            "receiving": agg["receiving"],
            "loss_pct": agg["loss_pct"],
            "packets_received": agg["packets_received"],
            "server_cpu_pct": report["server"]["cpu_pct"],
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--viewers", type=int, default=20, help="counting viewers per node")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--workdir", default="/tmp/bench_relay")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
