"""Join cost: server CPU per WHEP join (POST, ICE, DTLS), and joins per second per core.

    python -m loadtest.bench_joins --viewers 120 --json out.json

The server runs pinned to CPU 0 with no publisher, so nothing is forwarded; viewers (aiortc,
recvonly, pinned to CPU 1) all join at once and wait until connected. The CPU the connected
viewers cost while idle (RTCP, consent checks) is measured afterwards and taken off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from broadcast.media.aiortc_glue import restrict_host_addresses
from loadtest.bench_fanout import start_server, stop_server


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def join(client: httpx.AsyncClient, pc: RTCPeerConnection) -> None:
    connected = asyncio.Event()
    pc.on("connectionstatechange", lambda: pc.connectionState == "connected" and connected.set())
    await pc.setLocalDescription(await pc.createOffer())
    response = await client.post(
        "/whep/joins", content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
    )
    response.raise_for_status()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
    await asyncio.wait_for(connected.wait(), 60)


async def measure(port: int, pid: int, viewers: int) -> dict[str, Any]:
    pcs = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(viewers)]
    for pc in pcs:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        cpu0, t0 = server_cpu(pid), time.monotonic()
        await asyncio.gather(*(join(client, pc) for pc in pcs))
        await asyncio.sleep(1.0)  # the server's last handshake steps and logging
        cpu1, t1 = server_cpu(pid), time.monotonic()
        await asyncio.sleep(3.0)
        idle = (server_cpu(pid) - cpu1) / 3.0  # cores the connected viewers cost at rest
    for pc in pcs:
        await pc.close()
    # Viewers were connected, on average, for about half of the join window.
    spent = (cpu1 - cpu0) - idle * (t1 - t0) / 2
    return {
        "viewers": viewers,
        "window_s": t1 - t0,
        "server_cpu_s": cpu1 - cpu0,
        "idle_cores_connected": idle,
        "cpu_ms_per_join": 1000 * spent / viewers,
        "joins_per_s_per_core": viewers / spent,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=120)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server(port)  # pinned to CPU 0, listening
    try:
        os.sched_setaffinity(0, {1})
        restrict_host_addresses(["127.0.0.1"])
        result = asyncio.run(measure(port, server.pid, args.viewers))
    finally:
        stop_server(server)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
