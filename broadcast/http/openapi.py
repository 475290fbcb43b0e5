"""The OpenAPI 3.1 description of the node's HTTP interface, served at `GET /openapi.json`.

Written by hand as a dict, next to the handlers it describes (`endpoints.py`, `events.py`,
`layers.py`, `ops.py`, `pages.py`); `tests/test_openapi.py` checks that it is valid
OpenAPI 3.1, that it names exactly the routes the application serves, that a live
server's answers match its schemas, and fuzzes every operation with schemathesis.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broadcast import __version__
from broadcast.http.openapi_kit import (
    BITS,
    COUNT,
    JSON,
    PROBLEM_SCHEMA,
    RID_PATTERN,
    SDP,
    SDPFRAG,
    STREAM_PATTERN,
    closed_object,
    empty,
    errors,
    get,
    json_content,
    nullable,
    operation,
    param,
    problem_responses,
    ref,
    request_body,
    text_content,
)
from broadcast.http.openapi_recording import RECORDING_PATHS, RECORDING_SCHEMAS, STREAM_STATE

__all__ = ["DESCRIPTION", "openapi_json", "openapi_route"]


_LAYER: JSON = closed_object(
    {
        "rid": nullable("string"),
        "bitrate": {**BITS, "type": "integer", "description": "Ingest bit/s since last asked."},
        "active": {"type": "boolean"},
        "width": {"type": "integer", "minimum": 1},
        "height": {"type": "integer", "minimum": 1},
    },
    optional=("width", "height"),
)
_TRACK: JSON = closed_object(
    {
        "kind": {"enum": ["audio", "video"]},
        "codec": {"type": ["string", "null"], "examples": ["video/VP8"]},
        "layers": {"type": "array", "items": ref("Layer")},
    }
    | dict.fromkeys(("packets", "bytes", "keyframes", "keyframe_requests"), COUNT)
)
_STREAM_PROPERTIES: JSON = {
    "stream": {"type": "string", "pattern": STREAM_PATTERN},
    "node": {"type": "string", "description": "The origin: the node its publisher is on."},
    "relayed": {"type": "boolean", "description": "Served here through an upstream session."},
    "relayed_from": {**nullable("string"), "description": "The node pulled from."},
    "live": {"type": "boolean"},
    "publisher": {**nullable("string"), "description": "The WHIP (or upstream) session."},
    "viewers": COUNT,
    "tracks": {"type": "array", "items": ref("Track")},
    "started_at": {**nullable("number"), "description": "Unix time it went live."},
    **STREAM_STATE,
}
_REMOTE_STREAM: JSON = closed_object(
    {
        "stream": {"type": "string", "pattern": STREAM_PATTERN},
        "node": {"type": "string"},
        "live": {"const": True},
        "viewers": {"type": "null", "description": "Known on the origin only."},
        "tracks": {"type": "array", "items": closed_object({"codec": {"type": "string"}})},
        "layers": {"type": "array", "items": {"type": "string"}},
        "started_at": {"type": "number"},
    }
)
_VIEWER_TRACK: JSON = closed_object(
    {
        **dict.fromkeys(("packets", "bytes", "bitrate_bps"), COUNT),
        "fraction_lost": {"type": "number", "minimum": 0, "maximum": 1},
        "packets_lost": {"type": "integer"},
        "jitter_s": {"type": "number"},
        "rtt_s": nullable("number"),
        **dict.fromkeys(("retransmits", "nacks", "plis", "padding_bytes"), COUNT),
        "synced": {"type": "boolean"},
        "layer": {**nullable("string"), "description": "The simulcast rid sent now."},
        "estimate_bps": {**nullable("integer"), "description": "Video only: ABR estimate."},
    },
    optional=("estimate_bps",),
)
_VIEWER: JSON = closed_object(
    {
        "session": {"type": "string"},
        "role": {"const": "whep"},
        "created_at": {"type": "number"},
        "state": {"enum": ["new", "connecting", "connected", "disconnected", "failed", "closed"]},
        "tracks": {
            "type": "object",
            "description": "By kind (`audio`, `video`; an edge's upstream: `video1`...).",
            "additionalProperties": ref("ViewerTrack"),
        },
    }
)
_NODE: JSON = closed_object(
    {
        "node_id": {"type": "string"},
        "url": {"type": "string"},
        "viewers": COUNT,
        "egress_bps": BITS,
        "cpu": {"type": "number", "minimum": 0},
        "draining": {"type": "boolean"},
        "sources": {
            "type": "array",
            "description": "[stream, relay hops from the origin, upstreams served].",
            "items": {
                "type": "array",
                "prefixItems": [{"type": "string"}, COUNT, COUNT],
                "minItems": 3,
                "maxItems": 3,
            },
        },
    }
)

_STREAM = param("stream", pattern=STREAM_PATTERN)
_SESSION = param("session", description="The id in the 201's Location.")
_BEARER: JSON = {"security": [{}, {"bearer": []}]}  # only when credentials are configured


_201_HEADERS = ("Location", "ETag", "Accept-Patch")
_ALLOW_POST = ("Accept-Post", "Allow")


def _endpoint(role: str) -> JSON:
    """`/{role}/{stream}`: the WHIP or WHEP endpoint (RFC 9725 §4.2, WHEP §4.2)."""
    who = "publisher" if role == "whip" else "viewer"
    direction = "sendonly" if role == "whip" else "recvonly"
    created = empty("The answer, the session URL, its ICE session tag.", _201_HEADERS, ("Link",))
    created["content"] = {SDP: {"schema": {"type": "string", "minLength": 1}}}
    refusals = errors(307, 400, 401, 403, 409, 413, 415, 422, 429, 503)
    params: list[JSON] = []
    if role == "whep":
        rid = "The simulcast rid to receive while it sends (else the largest)."
        params.append(param("layer", "query", rid, pattern=RID_PATTERN))
    post = operation(
        f"{role}_post",
        f"Start a {who} session: the SDP offer ({direction}) in, the answer out",
        {"201": created, **refusals},
        *params,
        requestBody=request_body(SDP),
        **_BEARER,
    )
    discover = empty("Discovery (WHEP §4.1, RFC 9725 §4.2): no content.", ("Accept-Post",))
    discover["content"] = {SDP: {"schema": {"type": "string", "maxLength": 0}}}
    allowed = empty("Allowed methods; ICE servers unless a preflight.", _ALLOW_POST, ("Link",))
    return {
        "parameters": [_STREAM],
        "post": post,
        "get": operation(f"{role}get", "Discover", {"200": discover, **errors(400)}),
        "head": operation(f"{role}_head", "Discover", {"200": discover, **errors(400)}),
        "options": operation(f"{role}_options", "CORS preflight", {"200": allowed}),
    }


def _session(role: str) -> JSON:
    """`/{role}/{stream}/{session}`: the session resource (RFC 9725 §4.3, §4.4)."""
    exists = {"200": empty("It does."), **errors(400, 404)}
    trickled = empty("Candidates added (unusable ones are ignored).")
    return {
        "parameters": [_STREAM, _SESSION],
        "patch": operation(
            f"{role}_patch",
            "Trickle ICE candidates (RFC 8840); an ICE restart is refused (422)",
            {"204": trickled, **errors(400, 401, 403, 404, 412, 413, 415, 422, 429)},
            param("If-Match", "header"),
            requestBody=request_body(SDPFRAG),
            **_BEARER,
        ),
        "delete": operation(
            f"{role}_delete",
            "End the session and free everything",
            {"200": empty("Ended."), **errors(400, 401, 403, 404, 429)},
            **_BEARER,
        ),
        "get": operation(f"{role}_session_get", "The session exists", exists),
        "head": operation(f"{role}_session_head", "The session exists", exists),
        "options": operation(
            f"{role}_session_options",
            "CORS preflight",
            {"200": empty("Allowed methods.", ("Accept-Patch", "Allow"))},
        ),
    }


def _json_extension(op_id: str, summary: str, body: JSON, ok: JSON) -> JSON:
    return {
        "parameters": [_STREAM, _SESSION],
        "post": operation(
            op_id,
            summary,
            {**ok, **errors(400, 401, 403, 404, 413, 429)},
            requestBody=request_body("application/json", body),
            **_BEARER,
        ),
        "options": operation(
            f"{op_id}_options", "CORS preflight", {"204": empty("Accepted.", ("Accept-Post",))}
        ),
    }


_EVENTS: JSON = {"enum": ["active", "inactive", "layers", "viewercount", "reconnect"]}
_LAYER_REQUEST: JSON = {
    "type": "object",
    "description": "`encodingId` pins a layer, `maxWidth`/`maxHeight` the largest that fits, "
    "neither returns to automatic.",
    "properties": {
        "mediaId": {"type": "string", "description": "The mid of the video section."},
        "encodingId": {"type": "string", "pattern": RID_PATTERN},
        "maxWidth": {"type": "integer", "minimum": 1},
        "maxHeight": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}


def _html(op_id: str, summary: str, *params: JSON) -> JSON:
    refusals = errors(400, 404) if params else errors(404)
    return get(op_id, summary, {"200": text_content("The page.", "text/html"), **refusals}, *params)


_HEALTH: JSON = closed_object({"status": {"const": "ok"}})
_READY: JSON = closed_object(
    {"status": {"enum": ["ready", "draining"]}, "registry": {"enum": ["ok", "unavailable"]}}
)

DESCRIPTION: JSON = {
    "openapi": "3.1.0",
    "info": {
        "title": "broadcast",
        "version": __version__,
        "summary": "WHIP (RFC 9725) ingest and WHEP egress of live WebRTC streams",
        "description": "Every error is an RFC 9457 `application/problem+json` document. "
        "Answers to a request with an allowed `Origin` carry CORS headers (not listed).",
        "license": {"name": "MIT", "identifier": "MIT"},
    },
    "paths": {
        "/whip/{stream}": _endpoint("whip"),
        "/whip/{stream}/{session}": _session("whip"),
        "/whep/{stream}": _endpoint("whep"),
        "/whep/{stream}/{session}": _session("whep"),
        "/whep/{stream}/{session}/sse": _json_extension(
            "whep_sse_subscribe",
            "Server-sent events extension: subscribe to events",
            {"type": "array", "items": _EVENTS, "minItems": 1},
            {"201": empty("Subscribed: GET Location for the event stream.", ("Location",))},
        ),
        "/whep/{stream}/{session}/sse/{subscription}": get(
            "whep_sse_events",
            "The event stream: the current state, then changes, until the session ends",
            {
                "200": text_content(
                    "`event:` + one-line JSON `data:` per event.", "text/event-stream"
                ),
                **errors(400, 401, 403, 404),
            },
            _STREAM,
            _SESSION,
            param("subscription"),
        ),
        "/whep/{stream}/{session}/layer": _json_extension(
            "whep_layer_select",
            "Layer extension: choose the simulcast layer (at its next keyframe)",
            _LAYER_REQUEST,
            {"204": empty("Chosen.")},
        ),
        "/api/streams": get(
            "list_streams",
            "Live streams, cluster-wide",
            {
                "200": json_content(
                    "This node's in full, other nodes' from the registry.",
                    {
                        "type": "array",
                        "items": {"oneOf": [ref("Stream"), ref("RemoteStream")]},
                    },
                )
            },
        ),
        "/api/streams/{stream}": get(
            "get_stream",
            "A stream published (or relayed) here, with its viewers",
            {"200": json_content("The stream.", ref("StreamDetail")), **errors(400, 404)},
            _STREAM,
        ),
        **RECORDING_PATHS,
        "/api/nodes": get(
            "list_nodes",
            "The cluster's live nodes and their load",
            {
                "200": json_content("From the registry.", {"type": "array", "items": ref("Node")}),
                **errors(503),
            },
        ),
        "/healthz": get(
            "healthz", "Liveness (never depends on Redis)", {"200": json_content("Alive.", _HEALTH)}
        ),
        "/readyz": get(
            "readyz",
            "Readiness: 503 while draining",
            {
                "200": json_content("Takes new sessions.", _READY),
                "503": json_content("Draining.", _READY),
            },
        ),
        "/metrics": get(
            "metrics",
            "Prometheus metrics",
            {"200": text_content("Prometheus text format.", "text/plain")},
        ),
        "/openapi.json": get(
            "openapi", "This description", {"200": json_content("OpenAPI 3.1.", {"type": "object"})}
        ),
        "/": _html("index_page", "The stream list page"),
        "/watch/{stream}": _html("watch_page", "The player page", _STREAM),
        "/publish/{stream}": _html("publish_page", "The publisher page", _STREAM),
        "/player/{file}": get(
            "player_file",
            "The pages' ES modules and styles (any origin may load them)",
            {
                "200": {
                    "description": "The file.",
                    "content": {t: {} for t in ("text/javascript", "text/css", "text/html")},
                },
                **errors(404),
            },
            param("file"),
        ),
    },
    "components": {
        "schemas": {
            "Problem": PROBLEM_SCHEMA,
            "Layer": _LAYER,
            "Track": _TRACK,
            "Stream": closed_object(_STREAM_PROPERTIES),
            "RemoteStream": _REMOTE_STREAM,
            "StreamDetail": closed_object(
                _STREAM_PROPERTIES | {"viewer_sessions": {"type": "array", "items": ref("Viewer")}}
            ),
            "Viewer": _VIEWER,
            "ViewerTrack": _VIEWER_TRACK,
            "Node": _NODE,
            **RECORDING_SCHEMAS,
        },
        "responses": problem_responses(),
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "BROADCAST_PUBLISH_TOKEN (WHIP), BROADCAST_VIEWER_TOKEN (WHEP).",
            }
        },
    },
}


async def openapi_json(request: Request) -> Response:
    """`GET /openapi.json`: the description above."""
    return JSONResponse(DESCRIPTION, headers={"Access-Control-Allow-Origin": "*"})


def openapi_route() -> Route:
    return Route("/openapi.json", openapi_json, methods=["GET", "HEAD"])
