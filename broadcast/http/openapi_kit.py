"""Building blocks of the OpenAPI 3.1 description (broadcast/http/openapi.py): closed
object schemas, references, the problem responses (RFC 9457) and operations."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BITS",
    "COUNT",
    "HEADERS",
    "JSON",
    "PROBLEM",
    "PROBLEMS",
    "PROBLEM_SCHEMA",
    "RID_PATTERN",
    "SDP",
    "SDPFRAG",
    "STREAM_PATTERN",
    "closed_object",
    "empty",
    "errors",
    "get",
    "header",
    "json_content",
    "nullable",
    "operation",
    "param",
    "problem_responses",
    "ref",
    "request_body",
    "response_ref",
    "text_content",
]

JSON = dict[str, Any]

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
PROBLEM = "application/problem+json"
STREAM_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
RID_PATTERN = "^[A-Za-z0-9_-]{1,255}$"  # RFC 8851 §10 rid-id, as protocol/simulcast.RID


def ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def response_ref(name: str) -> JSON:
    return {"$ref": f"#/components/responses/{name}"}


def header(name: str, *, required: bool = False) -> JSON:
    return HEADERS[name] | {"required": required}


def errors(*statuses: int) -> JSON:
    """Problem responses (RFC 9457) by status, from components/responses."""
    return {str(status): response_ref(PROBLEMS[status][0]) for status in statuses}


def empty(description: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> JSON:
    """A response without content; `required`, `optional`: the headers it carries."""
    response: JSON = {"description": description}
    headers = {h: header(h, required=True) for h in required}
    if headers or optional:
        response["headers"] = headers | {h: header(h) for h in optional}
    return response


def json_content(description: str, schema: JSON) -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def text_content(description: str, media_type: str, schema: JSON | None = None) -> JSON:
    return {
        "description": description,
        "content": {media_type: {"schema": schema or {"type": "string"}}},
    }


def nullable(type_: str) -> JSON:
    return {"type": [type_, "null"]}


def closed_object(properties: JSON, *, optional: tuple[str, ...] = ()) -> JSON:
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
PROBLEMS: dict[int, tuple[str, str, str]] = {
    307: ("TemporaryRedirect", "Location", "Repeat the POST at Location (RFC 9725 §4.5)."),
    400: ("BadRequest", "", "Malformed name, SDP, sdpfrag, JSON, `layer` or body."),
    401: ("Unauthorized", "WWW-Authenticate", "Bearer token missing or wrong (RFC 6750)."),
    403: ("Forbidden", "WWW-Authenticate", "Valid credentials for another stream or role."),
    404: ("NotFound", "", "No such stream, session or subscription (it may have ended)."),
    409: ("Conflict", "Retry-After", "Already published; not live; recording off or busy."),
    412: ("PreconditionFailed", "", "`If-Match` does not name the current ETag."),
    413: ("PayloadTooLarge", "", "Body over BROADCAST_MAX_BODY_BYTES (JSON: 4096)."),
    415: ("UnsupportedMediaType", "Accept-Post Accept-Patch", "Wrong Content-Type."),
    422: ("UnprocessableContent", "", "Offer not servable here, or an ICE restart."),
    429: ("TooManyRequests", "Retry-After", "Over BROADCAST_RATE_LIMIT for this address."),
    503: ("ServiceUnavailable", "Retry-After", "Node full, registry or relay down, draining."),
}


def header_doc(description: str, pattern: str | None = None) -> JSON:
    schema: JSON = {"type": "string"} if pattern is None else {"type": "string", "pattern": pattern}
    return {"description": description, "schema": schema}


HEADERS: dict[str, JSON] = {
    "Location": header_doc("The session (201), or where to repeat the request (307)."),
    "ETag": header_doc("Strong tag of the ICE session (RFC 9725 §4.3.1).", '^"[0-9a-f]{32}"$'),
    "Link": header_doc("ICE servers (RFC 9725 §4.6); on a WHEP 201 also the extensions' URNs."),
    "Retry-After": header_doc("Seconds to wait before trying again.", "^[0-9]+$"),
    "Accept-Post": header_doc("The media type POST takes."),
    "Accept-Patch": header_doc("The media type PATCH takes."),
    "Allow": header_doc("The methods this URL serves."),
    "WWW-Authenticate": header_doc('RFC 6750 §3 challenge: `Bearer realm="broadcast"`.'),
}


def problem_responses() -> JSON:
    out: JSON = {}
    for status, (name, headers, when) in PROBLEMS.items():
        sent = tuple(headers.split())
        always = status in (307, 401, 403, 429)  # sent with these every time
        response = empty(when, *((sent, ()) if always else ((), sent)))
        out[name] = response | text_content(when, PROBLEM, ref("Problem"))
    return out


PROBLEM_SCHEMA: JSON = {
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


def param(name: str, where: str = "path", description: str = "", **schema: Any) -> JSON:
    param: JSON = {"name": name, "in": where, "required": where == "path"}
    if description:
        param["description"] = description
    return param | {"schema": {"type": "string", **schema}}


def operation(op_id: str, summary: str, responses: JSON, *params: JSON, **extra: Any) -> JSON:
    operation: JSON = {"operationId": op_id, "summary": summary, "responses": responses}
    if params:
        operation["parameters"] = list(params)
    return operation | extra


def request_body(media_type: str, schema: JSON | None = None) -> JSON:
    return {"required": True, "content": {media_type: {"schema": schema or {"type": "string"}}}}


def get(op_id: str, summary: str, responses: JSON, *params: JSON) -> JSON:
    return {"get": operation(op_id, summary, responses, *params)}
