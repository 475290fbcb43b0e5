"""The WHEP video layer extension (draft-ietf-wish-whep §4.7.2): a viewer picks its
simulcast layer, or hands the choice back to the server.

    POST {session}/layer   {"mediaId": "1", "encodingId": "m"}      -> 204  (pin a layer)
                           {"mediaId": "1", "maxWidth": 640}        -> 204  (the largest that fits)
                           {"mediaId": "1"}  or  {}                 -> 204  (automatic again)

`mediaId` is the mid of the viewer's video section; `encodingId` a rid the publisher sends
(the `layers` server-sent event lists them). The switch happens at the layer's next
keyframe, with continuous sequence numbers and timestamps.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broadcast.config import Settings
from broadcast.errors import BadRequest, BroadcastError
from broadcast.http.auth import Authenticator
from broadcast.http.common import (
    cors_headers,
    read_text_body,
    stream_name,
)
from broadcast.http.events import json_preflight, problem_with_cors
from broadcast.media.hub import Hub
from broadcast.media.session import Session
from broadcast.media.viewer import ViewerSession
from broadcast.protocol.links import extension_link

__all__ = ["LAYER_REL", "LayerExtension", "choose_layer"]

LAYER_REL = "urn:ietf:params:whep:ext:core:layer"
_KEYS = {"mediaId", "encodingId", "maxWidth", "maxHeight"}


class LayerExtension:
    def __init__(self, hub: Hub, settings: Settings) -> None:
        self.hub = hub
        self.settings = settings
        self.auth = Authenticator(settings)  # the viewer's credentials, as on WHEP POST

    def link(self, session: Session) -> str:
        return extension_link(f"{session.path}/layer", LAYER_REL)

    def routes(self) -> list[Route]:
        return [Route("/whep/{stream}/{session}/layer", self.select, methods=["POST", "OPTIONS"])]

    async def select(self, request: Request) -> Response:
        cors = cors_headers(request, self.settings, methods="POST, OPTIONS")
        if request.method == "OPTIONS":
            return json_preflight(cors)
        try:
            name = stream_name(request.path_params["stream"])
            self.auth.check(request, "view", name)
            session = self.hub.get("whep", name, request.path_params["session"])
            assert isinstance(session, ViewerSession)
            body = _json_object(await read_text_body(request, 4096))
            mids = {t.mid for t in session.pc.getTransceivers() if t.kind == "video" and t.mid}
            layers = {rid: feed.dimensions for rid, feed in session.stream.layers.items()}
            rid = choose_layer(body, mids, layers)
        except BroadcastError as error:
            return problem_with_cors(error, request, cors)
        session.set_layer(rid)
        return Response(b"", status_code=204, headers=cors)


def _json_object(body: str) -> dict[str, Any]:
    try:
        value = json.loads(body) if body.strip() else {}
    except ValueError as exc:
        raise BadRequest(f"the body must be a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise BadRequest(f"unknown members {unknown}; known: {sorted(_KEYS)}")
    return value


def choose_layer(
    body: dict[str, Any], video_mids: set[str], layers: dict[str, tuple[int, int] | None]
) -> str | None:
    """The rid a layer request pins (None: automatic). Pure; raises BadRequest."""
    media = body.get("mediaId")
    if media is not None and str(media) not in video_mids:
        raise BadRequest(
            f"mediaId {media!r} is not this session's video (mid {sorted(video_mids)})"
        )
    if "encodingId" in body:
        rid = body["encodingId"]
        if not isinstance(rid, str) or rid not in layers:
            known = sorted(layers) or "none: the publisher does not send simulcast"
            raise BadRequest(f"encodingId {rid!r} is not a layer of this stream (layers: {known})")
        return rid
    limits = {k: body[k] for k in ("maxWidth", "maxHeight") if k in body}
    for key, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise BadRequest(f"{key} must be a positive integer")
    if not limits:
        return None
    if not layers:
        raise BadRequest("the publisher does not send simulcast layers")
    width, height = limits.get("maxWidth", 1 << 30), limits.get("maxHeight", 1 << 30)
    sized = {rid: dims for rid, dims in layers.items() if dims is not None}
    fitting = [(w * h, rid) for rid, (w, h) in sized.items() if w <= width and h <= height]
    if fitting:
        return max(fitting)[1]
    if sized:  # none fits: the smallest there is
        return min((w * h, rid) for rid, (w, h) in sized.items())[1]
    return None
