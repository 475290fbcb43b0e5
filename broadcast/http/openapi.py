"""The OpenAPI 3.1 description of the node's HTTP interface, served at `GET /openapi.json`.

Written by hand as a dict, next to the handlers it describes (`endpoints.py`, `events.py`,
`layers.py`, `ops.py`, `pages.py`); `tests/test_openapi.py` checks that it is valid
OpenAPI 3.1, that it names exactly the routes the application serves, that a live
server's answers match its schemas, and fuzzes every operation with schemathesis.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broadcast import __version__

__all__ = ["DESCRIPTION", "openapi_json", "openapi_route"]

JSON = dict[str, Any]

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
PROBLEM = "application/problem+json"
STREAM_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
RID_PATTERN = "^[A-Za-z0-9_-]{1,255}$"  # RFC 8851 §10 rid-id, as protocol/simulcast.RID


def _schema(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(name: str) -> JSON:
    return {"$ref": f"#/components/responses/{name}"}


def _header(name: str, *, required: bool = False) -> JSON:
    return _HEADERS[name] | {"required": required}


def _errors(*statuses: int) -> JSON:
    """Problem responses (RFC 9457) by status, from components/responses."""
    return {str(status): _response(_PROBLEMS[status][0]) for status in statuses}


def _empty(
    description: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()
) -> JSON:
    """A response without content; `required`, `optional`: the headers it carries."""
    response: JSON = {"description": description}
    headers = {h: _header(h, required=True) for h in required}
    if headers or optional:
        response["headers"] = headers | {h: _header(h) for h in optional}
    return response


def _json(description: str, schema: JSON) -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(description: str, media_type: str, schema: JSON | None = None) -> JSON:
    return {
        "description": description,
        "content": {media_type: {"schema": schema or {"type": "string"}}},
    }


def _nullable(type_: str) -> JSON:
    return {"type": [type_, "null"]}


def _object(properties: JSON, *, optional: tuple[str, ...] = ()) -> JSON:
    """A closed object: every property but `optional` is required, nothing else allowed."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


COUNT: JSON = {"type": "integer", "minimum": 0}
BITS: JSON = {"type": "number", "minimum": 0}

# status: component name, headers it carries, when.
_PROBLEMS: dict[int, tuple[str, str, str]] = {
    307: ("TemporaryRedirect", "Location", "Repeat the POST at Location (RFC 9725 §4.5)."),
    400: ("BadRequest", "", "Malformed name, SDP, sdpfrag, JSON, `layer` or body."),
    401: ("Unauthorized", "WWW-Authenticate", "Bearer token missing or wrong (RFC 6750)."),
    403: ("Forbidden", "WWW-Authenticate", "Valid credentials for another stream or role."),
    404: ("NotFound", "", "No such stream, session or subscription (it may have ended)."),
    409: ("Conflict", "Retry-After", "Already published; or not live (REQUIRE_LIVE)."),
    412: ("PreconditionFailed", "", "`If-Match` does not name the current ETag."),
    413: ("PayloadTooLarge", "", "Body over BROADCAST_MAX_BODY_BYTES (JSON: 4096)."),
    415: ("UnsupportedMediaType", "Accept-Post Accept-Patch", "Wrong Content-Type."),
    422: ("UnprocessableContent", "", "Offer not servable here, or an ICE restart."),
    429: ("TooManyRequests", "Retry-After", "Over BROADCAST_RATE_LIMIT for this address."),
    503: ("ServiceUnavailable", "Retry-After", "Node full, registry or relay down, draining."),
}


def _hdr(description: str, pattern: str | None = None) -> JSON:
    schema: JSON = {"type": "string"} if pattern is None else {"type": "string", "pattern": pattern}
    return {"description": description, "schema": schema}


_HEADERS: dict[str, JSON] = {
    "Location": _hdr("The session (201), or where to repeat the request (307)."),
    "ETag": _hdr("Strong tag of the ICE session (RFC 9725 §4.3.1).", '^"[0-9a-f]{32}"$'),
    "Link": _hdr("ICE servers (RFC 9725 §4.6); on a WHEP 201 also the extensions' URNs."),
    "Retry-After": _hdr("Seconds to wait before trying again.", "^[0-9]+$"),
    "Accept-Post": _hdr("The media type POST takes."),
    "Accept-Patch": _hdr("The media type PATCH takes."),
    "Allow": _hdr("The methods this URL serves."),
    "WWW-Authenticate": _hdr('RFC 6750 §3 challenge: `Bearer realm="broadcast"`.'),
}


def _problem_responses() -> JSON:
    out: JSON = {}
    for status, (name, headers, when) in _PROBLEMS.items():
        sent = tuple(headers.split())
        always = status in (307, 401, 403, 429)  # sent with these every time
        response = _empty(when, *((sent, ()) if always else ((), sent)))
        out[name] = response | _text(when, PROBLEM, _schema("Problem"))
    return out


_LAYER: JSON = _object(
    {
        "rid": _nullable("string"),
        "bitrate": {**BITS, "type": "integer", "description": "Ingest bit/s since last asked."},
        "active": {"type": "boolean"},
        "width": {"type": "integer", "minimum": 1},
        "height": {"type": "integer", "minimum": 1},
    },
    optional=("width", "height"),
)
_TRACK: JSON = _object(
    {
        "kind": {"enum": ["audio", "video"]},
        "codec": {"type": ["string", "null"], "examples": ["video/VP8"]},
        "layers": {"type": "array", "items": _schema("Layer")},
    }
    | dict.fromkeys(("packets", "bytes", "keyframes", "keyframe_requests"), COUNT)
)
_STREAM_PROPERTIES: JSON = {
    "stream": {"type": "string", "pattern": STREAM_PATTERN},
    "node": {"type": "string", "description": "The origin: the node its publisher is on."},
    "relayed": {"type": "boolean", "description": "Served here through an upstream session."},
    "relayed_from": {**_nullable("string"), "description": "The node pulled from."},
    "live": {"type": "boolean"},
    "publisher": {**_nullable("string"), "description": "The WHIP (or upstream) session."},
    "viewers": COUNT,
    "tracks": {"type": "array", "items": _schema("Track")},
    "started_at": {**_nullable("number"), "description": "Unix time it went live."},
}
_REMOTE_STREAM: JSON = _object(
    {
        "stream": {"type": "string", "pattern": STREAM_PATTERN},
        "node": {"type": "string"},
        "live": {"const": True},
        "viewers": {"type": "null", "description": "Known on the origin only."},
        "tracks": {"type": "array", "items": _object({"codec": {"type": "string"}})},
        "layers": {"type": "array", "items": {"type": "string"}},
        "started_at": {"type": "number"},
    }
)
_VIEWER_TRACK: JSON = _object(
    {
        **dict.fromkeys(("packets", "bytes", "bitrate_bps"), COUNT),
        "fraction_lost": {"type": "number", "minimum": 0, "maximum": 1},
        "packets_lost": {"type": "integer"},
        "jitter_s": {"type": "number"},
        "rtt_s": _nullable("number"),
        **dict.fromkeys(("retransmits", "nacks", "plis", "padding_bytes"), COUNT),
        "synced": {"type": "boolean"},
        "layer": {**_nullable("string"), "description": "The simulcast rid sent now."},
        "estimate_bps": {**_nullable("integer"), "description": "Video only: ABR estimate."},
    },
    optional=("estimate_bps",),
)
_VIEWER: JSON = _object(
    {
        "session": {"type": "string"},
        "role": {"const": "whep"},
        "created_at": {"type": "number"},
        "state": {"enum": ["new", "connecting", "connected", "disconnected", "failed", "closed"]},
        "tracks": {
            "type": "object",
            "description": "By kind (`audio`, `video`; an edge's upstream: `video1`...).",
            "additionalProperties": _schema("ViewerTrack"),
        },
    }
)
_NODE: JSON = _object(
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
_PROBLEM: JSON = {
    "type": "object",
    "description": "RFC 9457 problem details; `detail` says what to do.",
    "properties": {
        "type": {"type": "string", "const": "about:blank"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 300, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}


def _param(name: str, where: str = "path", description: str = "", **schema: Any) -> JSON:
    param: JSON = {"name": name, "in": where, "required": where == "path"}
    if description:
        param["description"] = description
    return param | {"schema": {"type": "string", **schema}}


_STREAM = _param("stream", pattern=STREAM_PATTERN)
_SESSION = _param("session", description="The id in the 201's Location.")
_BEARER: JSON = {"security": [{}, {"bearer": []}]}  # only when credentials are configured


def _op(op_id: str, summary: str, responses: JSON, *params: JSON, **extra: Any) -> JSON:
    operation: JSON = {"operationId": op_id, "summary": summary, "responses": responses}
    if params:
        operation["parameters"] = list(params)
    return operation | extra


def _body(media_type: str, schema: JSON | None = None) -> JSON:
    return {"required": True, "content": {media_type: {"schema": schema or {"type": "string"}}}}


_201_HEADERS = ("Location", "ETag", "Accept-Patch")
_ALLOW_POST = ("Accept-Post", "Allow")


def _endpoint(role: str) -> JSON:
    """`/{role}/{stream}`: the WHIP or WHEP endpoint (RFC 9725 §4.2, WHEP §4.2)."""
    who = "publisher" if role == "whip" else "viewer"
    direction = "sendonly" if role == "whip" else "recvonly"
    created = _empty("The answer, the session URL, its ICE session tag.", _201_HEADERS, ("Link",))
    created["content"] = {SDP: {"schema": {"type": "string", "minLength": 1}}}
    errors = _errors(307, 400, 401, 403, 409, 413, 415, 422, 429, 503)
    params: list[JSON] = []
    if role == "whep":
        rid = "The simulcast rid to receive while it sends (else the largest)."
        params.append(_param("layer", "query", rid, pattern=RID_PATTERN))
    post = _op(
        f"{role}_post",
        f"Start a {who} session: the SDP offer ({direction}) in, the answer out",
        {"201": created, **errors},
        *params,
        requestBody=_body(SDP),
        **_BEARER,
    )
    discover = _empty("Discovery (WHEP §4.1, RFC 9725 §4.2): no content.", ("Accept-Post",))
    discover["content"] = {SDP: {"schema": {"type": "string", "maxLength": 0}}}
    allowed = _empty("Allowed methods; ICE servers unless a preflight.", _ALLOW_POST, ("Link",))
    return {
        "parameters": [_STREAM],
        "post": post,
        "get": _op(f"{role}_get", "Discover", {"200": discover, **_errors(400)}),
        "head": _op(f"{role}_head", "Discover", {"200": discover, **_errors(400)}),
        "options": _op(f"{role}_options", "CORS preflight", {"200": allowed}),
    }


def _session(role: str) -> JSON:
    """`/{role}/{stream}/{session}`: the session resource (RFC 9725 §4.3, §4.4)."""
    exists = {"200": _empty("It does."), **_errors(400, 404)}
    trickled = _empty("Candidates added (unusable ones are ignored).")
    return {
        "parameters": [_STREAM, _SESSION],
        "patch": _op(
            f"{role}_patch",
            "Trickle ICE candidates (RFC 8840); an ICE restart is refused (422)",
            {"204": trickled, **_errors(400, 401, 403, 404, 412, 413, 415, 422, 429)},
            _param("If-Match", "header"),
            requestBody=_body(SDPFRAG),
            **_BEARER,
        ),
        "delete": _op(
            f"{role}_delete",
            "End the session and free everything",
            {"200": _empty("Ended."), **_errors(400, 401, 403, 404, 429)},
            **_BEARER,
        ),
        "get": _op(f"{role}_session_get", "The session exists", exists),
        "head": _op(f"{role}_session_head", "The session exists", exists),
        "options": _op(
            f"{role}_session_options",
            "CORS preflight",
            {"200": _empty("Allowed methods.", ("Accept-Patch", "Allow"))},
        ),
    }


def _json_extension(op_id: str, summary: str, body: JSON, ok: JSON) -> JSON:
    return {
        "parameters": [_STREAM, _SESSION],
        "post": _op(
            op_id,
            summary,
            {**ok, **_errors(400, 401, 403, 404, 413, 429)},
            requestBody=_body("application/json", body),
            **_BEARER,
        ),
        "options": _op(
            f"{op_id}_options", "CORS preflight", {"204": _empty("Accepted.", ("Accept-Post",))}
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


def _get(op_id: str, summary: str, responses: JSON, *params: JSON) -> JSON:
    return {"get": _op(op_id, summary, responses, *params)}


def _html(op_id: str, summary: str, *params: JSON) -> JSON:
    errors = _errors(400, 404) if params else _errors(404)
    return _get(op_id, summary, {"200": _text("The page.", "text/html"), **errors}, *params)


_HEALTH: JSON = _object({"status": {"const": "ok"}})
_READY: JSON = _object(
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
            {"201": _empty("Subscribed: GET Location for the event stream.", ("Location",))},
        ),
        "/whep/{stream}/{session}/sse/{subscription}": _get(
            "whep_sse_events",
            "The event stream: the current state, then changes, until the session ends",
            {
                "200": _text("`event:` + one-line JSON `data:` per event.", "text/event-stream"),
                **_errors(400, 401, 403, 404),
            },
            _STREAM,
            _SESSION,
            _param("subscription"),
        ),
        "/whep/{stream}/{session}/layer": _json_extension(
            "whep_layer_select",
            "Layer extension: choose the simulcast layer (at its next keyframe)",
            _LAYER_REQUEST,
            {"204": _empty("Chosen.")},
        ),
        "/api/streams": _get(
            "list_streams",
            "Live streams, cluster-wide",
            {
                "200": _json(
                    "This node's in full, other nodes' from the registry.",
                    {
                        "type": "array",
                        "items": {"oneOf": [_schema("Stream"), _schema("RemoteStream")]},
                    },
                )
            },
        ),
        "/api/streams/{stream}": _get(
            "get_stream",
            "A stream published (or relayed) here, with its viewers",
            {"200": _json("The stream.", _schema("StreamDetail")), **_errors(400, 404)},
            _STREAM,
        ),
        "/api/nodes": _get(
            "list_nodes",
            "The cluster's live nodes and their load",
            {
                "200": _json("From the registry.", {"type": "array", "items": _schema("Node")}),
                **_errors(503),
            },
        ),
        "/healthz": _get(
            "healthz", "Liveness (never depends on Redis)", {"200": _json("Alive.", _HEALTH)}
        ),
        "/readyz": _get(
            "readyz",
            "Readiness: 503 while draining",
            {
                "200": _json("Takes new sessions.", _READY),
                "503": _json("Draining.", _READY),
            },
        ),
        "/metrics": _get(
            "metrics", "Prometheus metrics", {"200": _text("Prometheus text format.", "text/plain")}
        ),
        "/openapi.json": _get(
            "openapi", "This description", {"200": _json("OpenAPI 3.1.", {"type": "object"})}
        ),
        "/": _html("index_page", "The stream list page"),
        "/watch/{stream}": _html("watch_page", "The player page", _STREAM),
        "/publish/{stream}": _html("publish_page", "The publisher page", _STREAM),
        "/player/{file}": _get(
            "player_file",
            "The pages' ES modules and styles (any origin may load them)",
            {
                "200": {
                    "description": "The file.",
                    "content": {t: {} for t in ("text/javascript", "text/css", "text/html")},
                },
                **_errors(404),
            },
            _param("file"),
        ),
    },
    "components": {
        "schemas": {
            "Problem": _PROBLEM,
            "Layer": _LAYER,
            "Track": _TRACK,
            "Stream": _object(_STREAM_PROPERTIES),
            "RemoteStream": _REMOTE_STREAM,
            "StreamDetail": _object(
                _STREAM_PROPERTIES
                | {"viewer_sessions": {"type": "array", "items": _schema("Viewer")}}
            ),
            "Viewer": _VIEWER,
            "ViewerTrack": _VIEWER_TRACK,
            "Node": _NODE,
        },
        "responses": _problem_responses(),
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
