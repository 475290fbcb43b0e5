"""Who may publish and who may watch (RFC 6750 Bearer tokens).

Credentials a WHIP POST may carry, any of which admits it:
- BROADCAST_PUBLISH_TOKEN, the one shared publish token;
- the stream's own key from BROADCAST_PUBLISH_KEYS (`stream=key`: a key admits only its
  stream);
- a signed JWT (BROADCAST_JWT_SECRET for HS256, or BROADCAST_JWT_PUBLIC_KEY_FILE for
  EdDSA/ES256/RS256) whose `role` claim holds `publish` and whose `stream` claim is the
  stream or a pattern matching it (`team-*`, `*`); `exp` is required, `nbf` honoured.
A WHEP POST needs credentials only if BROADCAST_VIEWER_TOKEN is set or BROADCAST_JWT_VIEWERS
is true: then the viewer token or a JWT with role `view`. Another node's relay session
uses the cluster secret (broadcast.http.endpoints).

No credentials, or ones that are not valid (wrong, tampered, expired, not yet valid): 401.
Valid ones for another stream or role: 403. Static secrets are compared in constant time,
all of them every time; tokens are never logged or echoed.
"""

from __future__ import annotations

import hmac
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import jwt
from starlette.requests import Request

from broadcast.config import Settings
from broadcast.errors import Forbidden, Unauthorized
from broadcast.http.common import bearer

__all__ = ["Authenticator", "Role"]

Role = Literal["publish", "view"]
LEEWAY = 5  # seconds of clock skew allowed on exp and nbf
ASYMMETRIC = ["EdDSA", "ES256", "RS256"]


def _any_equal(candidate: str, secrets: list[str]) -> bool:
    """`candidate` equals one of `secrets`, in time that does not depend on where they
    differ: every secret is compared, with hmac.compare_digest."""
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(candidate.encode(), secret.encode())
    return found


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.publish_token = settings.publish_token
        self.viewer_token = settings.viewer_token
        self.publish_keys = dict(settings.publish_key_map)
        self.jwt_key: str | bytes | None = None
        self.jwt_algorithms: list[str] = []
        if settings.jwt_secret is not None:
            self.jwt_key, self.jwt_algorithms = settings.jwt_secret, ["HS256"]
        elif settings.jwt_public_key_file is not None:
            self.jwt_key = Path(settings.jwt_public_key_file).read_bytes()
            self.jwt_algorithms = ASYMMETRIC
        self.publishing_open = (
            self.publish_token is None and not self.publish_keys and self.jwt_key is None
        )
        self.viewing_open = self.viewer_token is None and not (
            settings.jwt_viewers and self.jwt_key is not None
        )

    def check(self, request: Request, role: Role, stream: str) -> None:
        """Admit the request for `role` on `stream`, or raise 401/403."""
        if self.publishing_open if role == "publish" else self.viewing_open:
            return
        credentials = bearer(request)
        if credentials is None:
            raise Unauthorized(f"to {role} this stream, send 'Authorization: Bearer <token>'")
        if role == "publish":
            static = [t for t in (self.publish_token, self.publish_keys.get(stream)) if t]
        else:
            static = [self.viewer_token] if self.viewer_token else []
        if _any_equal(credentials, static):
            return
        if self.jwt_key is not None and credentials.count(".") == 2:
            self._check_jwt(credentials, role, stream)
            return
        raise Unauthorized("the bearer token is not valid", error="invalid_token")

    def _check_jwt(self, token: str, role: Role, stream: str) -> None:
        assert self.jwt_key is not None
        try:
            claims = jwt.decode(
                token,
                self.jwt_key,
                algorithms=self.jwt_algorithms,
                options={"require": ["exp", "role", "stream"]},
                leeway=LEEWAY,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired", error="invalid_token") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet (nbf)", error="invalid_token") from None
        except jwt.InvalidTokenError as exc:
            # The library's reason names a claim or the signature, never the token itself.
            reason = str(exc)[:120]
            raise Unauthorized(f"the token is not valid: {reason}", error="invalid_token") from None
        roles = claims["role"] if isinstance(claims["role"], list) else [claims["role"]]
        if role not in roles:
            raise Forbidden(f"the token does not allow the {role} role")
        pattern = claims["stream"]
        if not isinstance(pattern, str) or not fnmatchcase(stream, pattern):
            raise Forbidden(f"the token is not for stream {stream!r}")
