"""Textbook aiortc fan-out, as a comparison baseline for the broadcast SFU.

    python -m loadtest.naive_server --port 8090

WHIP `POST /whip/{stream}` keeps the publisher's remote tracks; WHEP `POST /whep/{stream}` adds
`MediaRelay().subscribe(track)` per kind to a new sendonly RTCPeerConnection. That is the usual
aiortc recipe: the relay decodes the publisher's media once and every viewer's sender ENCODES it
again (VP8 / Opus per viewer). aiortc's stock VP8 encoder is left as it is, so it caps each
viewer at 1.5 Mbit/s whatever the publisher sends -- this is the textbook baseline, not tuned.
`DELETE` on the returned Location closes that peer connection. ICE host candidates are limited
to 127.0.0.1 (as the broadcast server does with BROADCAST_ICE_ADDRESSES=127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Any

import aioice.ice
import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # type: ignore[assignment]

log = logging.getLogger("naive_server")
relay = MediaRelay()
streams: dict[str, dict[str, Any]] = {}  # stream -> {"pc": publisher pc, "tracks": {kind: track}}
sessions: dict[str, RTCPeerConnection] = {}  # session id -> pc (publishers and viewers)


def new_pc(sid: str) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await drop(sid)

    sessions[sid] = pc
    return pc


async def drop(sid: str) -> None:
    pc = sessions.pop(sid, None)
    if pc is None:
        return
    for name, st in list(streams.items()):
        if st["pc"] is pc:
            del streams[name]
    await pc.close()


async def answer(pc: RTCPeerConnection, request: Request, sid: str, kind: str) -> Response:
    await pc.setLocalDescription(await pc.createAnswer())  # waits for ICE gathering
    return Response(
        pc.localDescription.sdp,
        status_code=201,
        media_type="application/sdp",
        headers={"Location": f"/{kind}/{request.path_params['stream']}/{sid}"},
    )


async def whip(request: Request) -> Response:
    if "application/sdp" not in request.headers.get("content-type", ""):
        return Response("expected application/sdp", status_code=415)
    stream, sid = request.path_params["stream"], uuid.uuid4().hex
    pc = new_pc(sid)
    tracks: dict[str, Any] = {}

    @pc.on("track")
    def on_track(track: Any) -> None:
        tracks[track.kind] = track

    offer = RTCSessionDescription(sdp=(await request.body()).decode(), type="offer")
    await pc.setRemoteDescription(offer)
    old = streams.get(stream)
    streams[stream] = {"pc": pc, "tracks": tracks}
    if old is not None:
        for osid, opc in list(sessions.items()):
            if opc is old["pc"]:
                await drop(osid)
    return await answer(pc, request, sid, "whip")


async def whep(request: Request) -> Response:
    if "application/sdp" not in request.headers.get("content-type", ""):
        return Response("expected application/sdp", status_code=415)
    st = streams.get(request.path_params["stream"])
    if st is None or not st["tracks"]:
        return Response("no such stream", status_code=404)
    sid = uuid.uuid4().hex
    pc = new_pc(sid)
    offer = RTCSessionDescription(sdp=(await request.body()).decode(), type="offer")
    await pc.setRemoteDescription(offer)
    for t in pc.getTransceivers():
        src = st["tracks"].get(t.kind)
        if src is not None:
            pc.addTrack(relay.subscribe(src))  # binds to the offer's transceiver of that kind
        t.direction = "sendonly" if src is not None else "inactive"
    return await answer(pc, request, sid, "whep")


async def delete(request: Request) -> Response:
    sid = request.path_params["sid"]
    if sid not in sessions:
        return Response(status_code=404)
    await drop(sid)
    return Response(status_code=200)


@asynccontextmanager
async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
    yield
    await asyncio.gather(*(drop(s) for s in list(sessions)), return_exceptions=True)


app = Starlette(
    routes=[
        Route("/whip/{stream}", whip, methods=["POST"]),
        Route("/whep/{stream}", whep, methods=["POST"]),
        Route("/whip/{stream}/{sid}", delete, methods=["DELETE"]),
        Route("/whep/{stream}/{sid}", delete, methods=["DELETE"]),
    ],
    lifespan=lifespan,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args()
    logging.basicConfig(level=args.log_level.upper())
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
