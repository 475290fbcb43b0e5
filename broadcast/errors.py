"""The one exception tree of broadcast, and its single mapping to HTTP.

    BroadcastError                      500 (never raised on purpose)
    ├── TemporaryRedirect               307 + Location (the stream lives on another node)
    ├── BadRequest                      400
    │   ├── InvalidStreamName           400
    │   ├── MalformedSdp                400
    │   │   └── InvalidSimulcast        400 (a=rid / a=simulcast, RFC 8851 / RFC 8853)
    │   └── MalformedSdpFrag            400
    ├── Unauthorized                    401 + WWW-Authenticate: Bearer
    ├── NotFound                        404
    ├── MethodNotAllowed                405 + Allow
    ├── Conflict                        409 (+ Retry-After when it may pass)
    ├── PreconditionFailed              412 (stale If-Match)
    ├── PayloadTooLarge                 413
    ├── UnsupportedMediaType            415
    ├── UnprocessableContent            422 (well-formed but unsupported offer)
    ├── PreconditionRequired            428 (If-Match missing)
    ├── TooManyRequests                 429 + Retry-After
    └── ServiceUnavailable              503 + Retry-After

Every error is rendered as an RFC 9457 problem document (`application/problem+json`)
whose `detail` tells the client what to do.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadRequest",
    "BroadcastError",
    "Conflict",
    "Forbidden",
    "InvalidSimulcast",
    "InvalidStreamName",
    "MalformedSdp",
    "MalformedSdpFrag",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "PreconditionRequired",
    "ServiceUnavailable",
    "TemporaryRedirect",
    "TooManyRequests",
    "Unauthorized",
    "UnprocessableContent",
    "UnsupportedMediaType",
]


class BroadcastError(Exception):
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})

    def problem(self, instance: str | None = None) -> dict[str, object]:
        """RFC 9457 §3 problem details object."""
        body: dict[str, object] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        return body


class BadRequest(BroadcastError):
    status = 400
    title = "Bad Request"


class InvalidStreamName(BadRequest):
    pass


class MalformedSdp(BadRequest):
    pass


class InvalidSimulcast(MalformedSdp):
    pass


class MalformedSdpFrag(BadRequest):
    pass


class Unauthorized(BroadcastError):
    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str, *, error: str | None = None) -> None:
        # RFC 6750 §3: a request without credentials gets the bare challenge.
        challenge = 'Bearer realm="broadcast"'
        if error is not None:
            challenge += f', error="{error}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(BroadcastError):
    """Valid credentials that do not cover this stream or role (RFC 6750 §3.1)."""

    status = 403
    title = "Forbidden"

    def __init__(self, detail: str) -> None:
        challenge = 'Bearer realm="broadcast", error="insufficient_scope"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class NotFound(BroadcastError):
    status = 404
    title = "Not Found"


class MethodNotAllowed(BroadcastError):
    status = 405
    title = "Method Not Allowed"

    def __init__(self, detail: str, *, allow: str) -> None:
        super().__init__(detail, headers={"Allow": allow})


class Conflict(BroadcastError):
    status = 409
    title = "Conflict"

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        super().__init__(detail, headers=headers)


class PreconditionFailed(BroadcastError):
    status = 412
    title = "Precondition Failed"


class PayloadTooLarge(BroadcastError):
    status = 413
    title = "Content Too Large"


class UnsupportedMediaType(BroadcastError):
    status = 415
    title = "Unsupported Media Type"

    def __init__(self, detail: str, *, accept: str, header: str = "Accept-Post") -> None:
        super().__init__(detail, headers={header: accept})


class UnprocessableContent(BroadcastError):
    status = 422
    title = "Unprocessable Content"


class TemporaryRedirect(BroadcastError):
    """RFC 9725 §4.5: the client repeats its POST at `location` (RFC 9110 §15.4.8)."""

    status = 307
    title = "Temporary Redirect"

    def __init__(self, detail: str, *, location: str) -> None:
        super().__init__(detail, headers={"Location": location})


class PreconditionRequired(BroadcastError):
    status = 428
    title = "Precondition Required"


class TooManyRequests(BroadcastError):
    status = 429
    title = "Too Many Requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(BroadcastError):
    status = 503
    title = "Service Unavailable"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
