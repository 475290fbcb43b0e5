"""HTTP helpers shared by every endpoint: errors as problem+json, CORS, auth, bodies."""

from __future__ import annotations

import hmac
import json
import re

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from broadcast.config import Settings
from broadcast.errors import (
    BadRequest,
    BroadcastError,
    InvalidStreamName,
    PayloadTooLarge,
    UnsupportedMediaType,
)

__all__ = [
    "STREAM_NAME",
    "bearer",
    "cors_headers",
    "if_match_allows",
    "is_preflight",
    "media_type",
    "problem_response",
    "read_text_body",
    "require_media_type",
    "stream_name",
]

STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Fetch standard: response headers a cross-origin page may read. WHIP/WHEP clients need
# Location (session URL), ETag (ICE session), Link (ICE servers, extensions).
_EXPOSE = "Location, ETag, Link, Accept-Patch, Accept-Post, Allow, Retry-After, Content-Type"
_ALLOW_HEADERS = "Authorization, Content-Type, If-Match"


def problem_response(error: BroadcastError, instance: str | None = None) -> Response:
    """RFC 9457 problem details; HEAD gets the headers alone (the server drops bodies)."""
    body = json.dumps(error.problem(instance)).encode()
    return Response(
        body, status_code=error.status, media_type="application/problem+json", headers=error.headers
    )


def stream_name(value: str) -> str:
    if not STREAM_NAME.fullmatch(value):
        raise InvalidStreamName("stream names are 1-64 characters of letters, digits, '_' and '-'")
    return value


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower case (RFC 9110 §8.3.1)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_media_type(request: Request, expected: str, *, header: str) -> None:
    if media_type(request) != expected:
        got = request.headers.get("content-type")
        raise UnsupportedMediaType(
            f"Content-Type must be {expected}, got {got!r}"
            if got
            else f"Content-Type must be {expected}",
            accept=expected,
            header=header,
        )


async def read_text_body(request: Request, limit: int) -> str:
    """The request body as UTF-8 text, refusing more than `limit` bytes (413)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise BadRequest("the client closed the connection before sending the whole body") from exc
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8 text (byte {exc.start})") from exc


def bearer(request: Request) -> str | None:
    """The Bearer credentials of the request, if it has some (RFC 6750 §2.1)."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def bearer_is(request: Request, token: str) -> bool:
    """The request carries exactly `token` as its Bearer credentials (constant time)."""
    credentials = bearer(request)
    return credentials is not None and hmac.compare_digest(credentials.encode(), token.encode())


def if_match_allows(header: str, etag: str) -> bool:
    """RFC 9110 §13.1.1: If-Match is "*" or a list of entity tags, compared strongly."""
    if header.strip() == "*":
        return True
    # Entity tags are quoted and hold no comma or quote (RFC 9110 §8.8.3): split on commas.
    return any(tag.strip() == etag for tag in header.split(","))


def is_preflight(request: Request) -> bool:
    return (
        request.method == "OPTIONS"
        and "origin" in request.headers
        and "access-control-request-method" in request.headers
    )


def cors_headers(request: Request, settings: Settings, *, methods: str) -> dict[str, str]:
    """CORS response headers (Fetch standard) for an allowed Origin; empty otherwise."""
    origin = request.headers.get("origin")
    if origin is None:
        return {}
    allowed = settings.allow_origins
    headers: dict[str, str] = {}
    if "*" in allowed:
        headers["Access-Control-Allow-Origin"] = "*"
    elif origin in allowed:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Vary"] = "Origin"
    else:
        return {}
    headers["Access-Control-Expose-Headers"] = _EXPOSE
    if is_preflight(request):
        headers["Access-Control-Allow-Methods"] = methods
        headers["Access-Control-Allow-Headers"] = _ALLOW_HEADERS
        headers["Access-Control-Max-Age"] = "86400"
    return headers
