"""The WHEP server-sent events extension (draft-ietf-wish-whep §4.7.1 and its events
document): a viewer learns when the stream goes live or stops, how many watch it, and
which simulcast layers exist, without polling.

    POST {session}/sse   ["active", "layers", "viewercount"]   -> 201, Location: {sse}/{id}
    GET  {sse}/{id}      text/event-stream, until the session ends

Events: `active` / `inactive` (the publisher came or went), `viewercount`
(`{"viewercount": n}`), `layers` (`{"<mid>": {"active": [...], "inactive": [...],
"layers": [...]}}` for the viewer's video section, the shape the draft's examples use),
`reconnect` (`{"url": "..."}`: the node is going away; join again there). Each
subscription sends the current state first, then changes; it reads the stream's state
every POLL_S seconds instead of hooking every place that changes it, which keeps the
media path free of event bookkeeping.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from broadcast.config import Settings
from broadcast.errors import BadRequest, BroadcastError, NotFound
from broadcast.http.auth import Authenticator
from broadcast.http.common import (
    cors_headers,
    problem_response,
    read_text_body,
    stream_name,
)
from broadcast.media.hub import Hub
from broadcast.media.session import Session
from broadcast.protocol.links import extension_link
from broadcast.sfu.stream import Stream

__all__ = ["SSE_REL", "SUPPORTED_EVENTS", "EventsExtension", "json_preflight", "problem_with_cors"]

SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events"
SUPPORTED_EVENTS = ("active", "inactive", "layers", "viewercount", "reconnect")
POLL_S = 0.5
HEARTBEAT_S = 15.0  # a comment line keeps proxies from closing an idle stream
MAX_SUBSCRIPTIONS = 4  # per session: a page reloading its subscriber, not a fan-out

Describe = Callable[[Stream], dict[str, Any]]


@dataclass
class Subscription:
    id: str
    events: frozenset[str]
    session: Session
    reconnect_url: str | None = None
    sent: dict[str, Any] = field(default_factory=dict)


class EventsExtension:
    def __init__(self, hub: Hub, settings: Settings, describe: Describe) -> None:
        self.hub = hub
        self.settings = settings
        self.auth = Authenticator(settings)  # the viewer's credentials, as on WHEP POST
        self.describe = describe
        self.subscriptions: dict[str, Subscription] = {}

    def link(self, session: Session) -> str:
        events = ",".join(SUPPORTED_EVENTS)
        return extension_link(f"{session.path}/sse", SSE_REL, params={"events": events})

    def routes(self) -> list[Route]:
        return [
            Route("/whep/{stream}/{session}/sse", self.subscribe, methods=["POST", "OPTIONS"]),
            Route("/whep/{stream}/{session}/sse/{subscription}", self.events, methods=["GET"]),
        ]

    def announce_reconnect(self, base_url: str) -> None:
        """Ask every subscriber to rejoin its stream on the node at `base_url` (this one
        is draining)."""
        for sub in self.subscriptions.values():
            sub.reconnect_url = f"{base_url.rstrip('/')}/whep/{sub.session.stream.name}"

    async def subscribe(self, request: Request) -> Response:
        cors = cors_headers(request, self.settings, methods="POST, OPTIONS")
        if request.method == "OPTIONS":
            return json_preflight(cors)
        try:
            session = self._session(request)
            body = await read_text_body(request, 4096)
            wanted = _event_list(body)
        except BroadcastError as error:
            return problem_with_cors(error, request, cors)
        mine = [s for s in self.subscriptions.values() if s.session is session]
        for old in mine[: max(0, len(mine) - MAX_SUBSCRIPTIONS + 1)]:
            self.subscriptions.pop(old.id, None)  # the newest few win
        sub = Subscription(secrets.token_urlsafe(12), wanted, session)
        self.subscriptions[sub.id] = sub
        location = f"{session.path}/sse/{sub.id}"
        return Response(b"", status_code=201, headers=cors | {"Location": location})

    async def events(self, request: Request) -> Response:
        cors = cors_headers(request, self.settings, methods="GET")
        try:
            session = self._session(request)
            sub = self.subscriptions.get(request.path_params["subscription"])
            if sub is None or sub.session is not session:
                raise NotFound("no such event subscription; subscribe again")
        except BroadcastError as error:
            return problem_with_cors(error, request, cors)
        sub.sent.clear()  # a new reader gets the whole current state first
        headers = cors | {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(self._stream(sub), media_type="text/event-stream", headers=headers)

    def _session(self, request: Request) -> Session:
        name = stream_name(request.path_params["stream"])
        self.auth.check(request, "view", name)
        return self.hub.get("whep", name, request.path_params["session"])

    async def _stream(self, sub: Subscription) -> AsyncIterator[bytes]:
        idle = 0.0
        try:
            while not sub.session.ended and sub.id in self.subscriptions:
                chunk = b"".join(encode_event(name, data) for name, data in self._changes(sub))
                if chunk:
                    idle = 0.0
                    yield chunk
                elif idle >= HEARTBEAT_S:
                    idle = 0.0
                    yield b": keep-alive\n\n"
                await asyncio.sleep(POLL_S)
                idle += POLL_S
        finally:
            if sub.session.ended:
                self.subscriptions.pop(sub.id, None)

    def _changes(self, sub: Subscription) -> list[tuple[str, Any]]:
        """The events whose state differs from what this subscription last sent."""
        stream = sub.session.stream
        now: dict[str, Any] = {"live": stream.live}
        if "viewercount" in sub.events:
            now["viewercount"] = {"viewercount": stream.viewer_count}
        if "layers" in sub.events:
            now["layers"] = self._layers(sub.session)
        if "reconnect" in sub.events and sub.reconnect_url:
            now["reconnect"] = {"url": sub.reconnect_url}
        out: list[tuple[str, Any]] = []
        if now["live"] != sub.sent.get("live"):
            name = "active" if now["live"] else "inactive"
            if name in sub.events:
                out.append((name, {}))
        for key in ("viewercount", "layers", "reconnect"):
            if key in now and now[key] != sub.sent.get(key):
                out.append((key, now[key]))
        sub.sent = now
        return out

    def _layers(self, session: Session) -> dict[str, Any]:
        mid = next(
            (t.mid for t in session.pc.getTransceivers() if t.kind == "video" and t.mid),
            None,
        )
        video = next(
            (t for t in self.describe(session.stream)["tracks"] if t["kind"] == "video"), None
        )
        if mid is None or video is None:
            return {}
        layers = [
            {"encodingId": x["rid"]} | {k: x[k] for k in ("bitrate", "width", "height") if k in x}
            for x in video["layers"]
            if x.get("rid") is not None
        ]
        active = [
            {"id": x["rid"]} for x in video["layers"] if x.get("rid") and x.get("active", True)
        ]
        inactive = [
            {"id": x["rid"]} for x in video["layers"] if x.get("rid") and not x.get("active", True)
        ]
        return {mid: {"active": active, "inactive": inactive, "layers": layers}}


def _event_list(body: str) -> frozenset[str]:
    """The JSON array of event names a subscriber POSTs (draft-ietf-wish-whep §4.7.1)."""
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"the body must be a JSON array of event names: {exc}") from exc
    if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
        raise BadRequest("the body must be a non-empty JSON array of event names")
    unknown = sorted(set(value) - set(SUPPORTED_EVENTS))
    if unknown:
        raise BadRequest(f"unsupported events {unknown}; supported: {list(SUPPORTED_EVENTS)}")
    return frozenset(value)


def encode_event(name: str, data: Any) -> bytes:
    """One text/event-stream event (WHATWG HTML §9.2.6): JSON data on one line."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def json_preflight(cors: dict[str, str]) -> Response:
    """The answer to a CORS preflight of a JSON-bodied extension request."""
    return Response(b"", status_code=204, headers=cors | {"Accept-Post": "application/json"})


def problem_with_cors(error: BroadcastError, request: Request, cors: dict[str, str]) -> Response:
    """An RFC 9457 problem a page on another origin can read."""
    response = problem_response(error, request.url.path)
    response.headers.update(cors)
    return response
