"""Who may publish and watch: shared tokens, per-stream publish keys, signed JWTs.

A real server; the offers are placeholders ("v=0"): a request that passes authentication
is refused later by the SDP check (400/422), one that does not gets 401/403 first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from broadcast.config import Settings
from broadcast.errors import Forbidden, Unauthorized
from broadcast.http.auth import Authenticator, _any_equal
from tests.conftest import RunningServer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SECRET = "jwt-test-secret-0123456789abcdefghij"  # RFC 7518 §3.2: at least 32 bytes
NOW = int(time.time())


def token(key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    body = {"stream": "cam", "role": "publish", "exp": NOW + 600} | claims
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


def hs256_by_hand(key: bytes) -> str:
    """An HS256 JWT whose HMAC key is `key` (PyJWT refuses to make one with a PEM key)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"stream": "cam", "role": "publish", "exp": NOW + 600}).encode())
    signature = hmac.new(key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


async def post(server: RunningServer, path: str, credentials: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/sdp"}
    if credentials is not None:
        headers["Authorization"] = f"Bearer {credentials}"
    return await server.client.post(path, content=b"v=0\r\n", headers=headers)


def admitted(response: httpx.Response) -> bool:
    """Past authentication: refused only for the placeholder offer."""
    assert response.status_code not in (401, 403), response.text
    return response.status_code in (400, 422)


def refused(response: httpx.Response, status: int, error: str | None = None) -> None:
    assert response.status_code == status, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    if error is not None:
        assert f'error="{error}"' in challenge
    assert response.headers["content-type"] == "application/problem+json"


async def test_jwt_claims_decide(make_server: Any) -> None:
    server = await make_server(jwt_secret=SECRET)
    assert admitted(await post(server, "/whip/cam", token()))
    assert admitted(await post(server, "/whip/team-a", token(stream="team-*")))
    assert admitted(await post(server, "/whip/any", token(stream="*", role=["view", "publish"])))
    refused(await post(server, "/whip/cam", None), 401)
    refused(await post(server, "/whip/cam", token(exp=NOW - 60)), 401, "invalid_token")
    refused(await post(server, "/whip/cam", token(nbf=NOW + 600)), 401, "invalid_token")
    refused(await post(server, "/whip/cam", token(exp=None)), 401, "invalid_token")
    refused(await post(server, "/whip/cam", token(key="another-secret-0123456789abcdefghijk")), 401)
    head, _, signature = token().split(".")
    forged = jwt.encode({"stream": "*", "role": "publish", "exp": NOW + 600}, "x" * 32)
    tampered = f"{head}.{forged.split('.')[1]}.{signature}"  # claims swapped, old signature
    refused(await post(server, "/whip/cam", tampered), 401, "invalid_token")
    none_alg = jwt.encode({"stream": "cam", "role": "publish", "exp": NOW + 600}, None, "none")
    refused(await post(server, "/whip/cam", none_alg), 401, "invalid_token")
    refused(await post(server, "/whip/other", token()), 403, "insufficient_scope")
    refused(await post(server, "/whip/team-b", token(stream="team-a")), 403)
    refused(await post(server, "/whip/cam", token(role="view")), 403, "insufficient_scope")
    # Viewing is open unless BROADCAST_JWT_VIEWERS or a viewer token says otherwise.
    assert admitted(await post(server, "/whep/cam", None))


async def test_viewers_need_a_view_token_when_asked(make_server: Any) -> None:
    server = await make_server(jwt_secret=SECRET, jwt_viewers=True)
    refused(await post(server, "/whep/cam", None), 401)
    refused(await post(server, "/whep/cam", token(role="publish")), 403)
    assert admitted(await post(server, "/whep/cam", token(role="view")))


async def test_eddsa_tokens_with_a_public_key_file(make_server: Any) -> None:
    server = await make_server(jwt_public_key_file=str(FIXTURES / "jwt-ed25519.pub"))
    private = (FIXTURES / "jwt-ed25519.key").read_bytes()
    assert admitted(await post(server, "/whip/cam", token(private, "EdDSA")))
    # An HS256 token "signed" with the public key text must not pass (algorithm confusion).
    public = (FIXTURES / "jwt-ed25519.pub").read_bytes()
    refused(await post(server, "/whip/cam", hs256_by_hand(public)), 401, "invalid_token")


async def test_per_stream_publish_keys(make_server: Any) -> None:
    server = await make_server(publish_keys=["cam=cam-key-123", "stage=stage-key-456"])
    assert admitted(await post(server, "/whip/cam", "cam-key-123"))
    assert admitted(await post(server, "/whip/stage", "stage-key-456"))
    refused(await post(server, "/whip/stage", "cam-key-123"), 401, "invalid_token")
    refused(await post(server, "/whip/other", "cam-key-123"), 401)
    refused(await post(server, "/whip/cam", None), 401)


async def test_tokens_are_never_logged_or_echoed(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await make_server(jwt_secret=SECRET, publish_token="shared-publish-token")
    credentials = [token(), token(exp=NOW - 60), token(stream="x"), "shared-publish-token", "bad"]
    bodies = [(await post(server, "/whip/cam", c)).text for c in credentials]
    for secret in (*credentials, SECRET):
        assert all(secret not in body for body in bodies)
        assert secret not in caplog.text


def fastest(candidates: list[str], secrets: list[str]) -> list[float]:
    """For each candidate, the quickest of many timed comparisons, taken in turns (the
    minimum filters out scheduling noise; turns share the cache and allocator state)."""
    best = [float("inf")] * len(candidates)
    for _ in range(30):
        for i, candidate in enumerate(candidates):
            started = time.perf_counter()
            for _ in range(5):
                assert not _any_equal(candidate, secrets)
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def test_static_tokens_compare_in_constant_time() -> None:
    # 1 MiB secrets: a comparison that stops at the first differing byte takes far longer
    # for a guess right up to its last byte than for one wrong at its first.
    secret = "s" * (1 << 20)
    secrets = [secret, "t" * (1 << 20)]
    early, late = fastest(["x" + secret[1:], secret[:-1] + "x"], secrets)
    assert 0.7 < early / late < 1.4, (early, late)
    auth = Authenticator(Settings(publish_token="short-token", node_id="n"))
    headers = [(b"authorization", b"Bearer short-tokeN")]
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers})
    with pytest.raises(Unauthorized):
        auth.check(request, "publish", "cam")


def test_forbidden_is_403_with_insufficient_scope() -> None:
    error = Forbidden("no")
    assert error.status == 403
    assert 'error="insufficient_scope"' in error.headers["WWW-Authenticate"]


JWT_AUTH = Authenticator(Settings(jwt_secret=SECRET, publish_keys=["cam=cam-key-123"], node_id="n"))


@given(
    st.one_of(
        st.text(max_size=300), st.from_regex(r"[A-Za-z0-9_=-]{0,80}(\.[A-Za-z0-9_=-]{0,80}){2}")
    )
)
def test_any_bearer_string_gets_401_or_403(credentials: str) -> None:
    value = f"Bearer {credentials}".encode("utf-8", "surrogateescape")
    request = Request(
        {"type": "http", "method": "POST", "path": "/", "headers": [(b"authorization", value)]}
    )
    with pytest.raises((Unauthorized, Forbidden)):
        JWT_AUTH.check(request, "publish", "cam")
