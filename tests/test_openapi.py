"""The OpenAPI 3.1 description (broadcast/http/openapi.py) against the server it describes.

- It is valid OpenAPI 3.1 (openapi-spec-validator, offline: its metaschemas are bundled).
- It names exactly the routes and methods the application serves.
- A live server's answers (a publishing stream, a viewer, another node in the registry)
  match its response schemas and headers.
- schemathesis fuzzes every operation against a live server, SDP and sdpfrag bodies
  included: no answer is a 5xx, none takes longer than REQUEST_TIMEOUT, and every answer
  conforms to the description (status code, content type, headers, body schema).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import requests
import schemathesis
from aiortc import RTCConfiguration, RTCPeerConnection
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Mount, Route

from broadcast.http.endpoints import ENDPOINT_METHODS, SESSION_METHODS
from broadcast.http.openapi import DESCRIPTION
from broadcast.registry.base import NodeInfo, StreamInfo
from tests.conftest import RunningServer, ServerFactory
from tests.support.peers import Publisher, Viewer, wait_state

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
REQUEST_TIMEOUT = 5.0
FUZZ_SCALE = int(os.environ.get("FUZZ_SCALE", "1"))  # e.g. 20: a longer campaign
EXAMPLES = 40 * FUZZ_SCALE  # per operation and generation mode
FIXTURES = Path(__file__).parent / "fixtures"
OFFER = (FIXTURES / "chromium-156-whep-offer.sdp").read_text()
WHIP_OFFER = (FIXTURES / "chromium156-simulcast-whip-offer.sdp").read_text()
TOKENS = {"whip": "publish-secret", "whep": "viewer-secret"}
JWT_SECRET = "jwt-secret-of-32-characters-long"
JWT = jwt.encode({"role": "view", "stream": "fuzz", "exp": 2**33}, JWT_SECRET)  # not publish
MAX_BODY = 8192  # the fuzzed server's limit: a grown offer passes it (413)


# --- The description itself -----------------------------------------------------------------


def test_description_is_valid_openapi_31() -> None:
    assert DESCRIPTION["openapi"].startswith("3.1")
    validate_spec(DESCRIPTION)  # raises OpenAPIValidationError with the JSON path


def _routed(server: RunningServer) -> set[tuple[str, str]]:
    """(path template, method) the application serves; HEAD left out (it follows GET)."""
    out: set[tuple[str, str]] = set()
    for route in server.app.routes:
        if isinstance(route, Mount):
            out.add((f"{route.path}/{{file}}", "GET"))
            continue
        assert isinstance(route, Route)
        if route.methods is None:  # a WHIP/WHEP resource answers its own methods
            session = route.path.count("{") == 2
            methods = (SESSION_METHODS if session else ENDPOINT_METHODS).split(", ")
        else:
            methods = sorted(route.methods)
        out.update((route.path, m) for m in methods if m != "HEAD")
    return out


def _described() -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in DESCRIPTION["paths"].items()
        for method in item
        if method not in ("parameters", "head")
    }


async def test_description_names_every_route(server: RunningServer) -> None:
    assert _described() == _routed(server)
    for role in ("whip", "whep"):  # WHEP §4.1 discovery: HEAD, stated explicitly
        assert "head" in DESCRIPTION["paths"][f"/{role}/{{stream}}"]
    response = await server.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == DESCRIPTION


# --- Live answers against the schemas -------------------------------------------------------


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    # Local "#/components/..." references resolve against the description's components.
    return Draft202012Validator(schema | {"components": DESCRIPTION["components"]})


def _resolve(item: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in item:
        node: Any = DESCRIPTION
        for part in item["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        item = node
    return item


def check_answer(path: str, method: str, response: httpx.Response) -> None:
    """The answer's status, media type, required headers and JSON body are as described."""
    responses = DESCRIPTION["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    assert status in responses, f"{method} {path}: {status} is not described"
    described = _resolve(responses[status])
    for name, header in described.get("headers", {}).items():
        value = response.headers.get(name)
        if header.get("required"):
            assert value is not None, f"{method} {path} {status}: no {name}"
        if value is not None:
            _validator(header["schema"]).validate(value)
    content = described.get("content", {})
    media_type = response.headers.get("content-type", "").split(";")[0]
    if not content:
        assert response.content == b"", f"{method} {path} {status}: a body was not described"
        return
    assert media_type in content, f"{method} {path} {status}: {media_type} is not described"
    if media_type.endswith("json") and method != "HEAD":
        errors = list(_validator(content[media_type]["schema"]).iter_errors(response.json()))
        assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@dataclass
class Stage:
    server: RunningServer
    publisher: Publisher
    viewer: Viewer
    tasks: list[Any] = field(default_factory=list)


async def _wait_for_video(server: RunningServer, stream: str) -> None:
    """Until the stream's video has a size (read from a keyframe) and a bitrate to show."""
    for _ in range(100):
        body = (await server.client.get(f"/api/streams/{stream}")).json()
        video = [t for t in body.get("tracks", []) if t["kind"] == "video"]
        if video and all("width" in layer for layer in video[0]["layers"]):
            if body.get("viewer_sessions") and body["viewer_sessions"][0]["tracks"]:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no video described on {stream} after 10 s")


async def test_live_answers_match_the_schemas(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = server.client
    publisher = Publisher(server.base_url, "live")
    viewer = Viewer(server.base_url, "live")
    try:
        published = await publisher.start(client)
        assert published.status == 201
        check_answer("/whip/{stream}", "POST", await _raw(client, "POST", "/whip/x", OFFER))
        assert (await viewer.start(client)).status == 201
        await wait_state(viewer.pc, {"connected"})
        await _wait_for_video(server, "live")
        # Another node of the cluster, as the registry would show it.
        other = NodeInfo("node-b", "http://node-b:8080", 3, 2.5e6, 0.4, False, (("far", 0, 1),))
        far = StreamInfo("far", "node-b", time.time(), ("video/VP8", "audio/opus"), ("h", "l"))
        registry = server.hub.registry
        own = await registry.nodes()
        monkeypatch.setattr(registry, "nodes", _returns([*own, other]))
        monkeypatch.setattr(registry, "streams", _returns([far]))

        for path, url, expect in [
            ("/api/streams", "/api/streams", 200),
            ("/api/streams/{stream}", "/api/streams/live", 200),
            ("/api/streams/{stream}", "/api/streams/nobody", 404),
            ("/api/streams/{stream}", "/api/streams/bad%20name", 400),
            ("/api/nodes", "/api/nodes", 200),
            ("/healthz", "/healthz", 200),
            ("/readyz", "/readyz", 200),
            ("/openapi.json", "/openapi.json", 200),
            ("/metrics", "/metrics", 200),
            ("/whep/{stream}", "/whep/live", 200),
            ("/watch/{stream}", "/watch/live", 200),
            ("/player/{file}", "/player/whep.js", 200),
            ("/player/{file}", "/player/nothing.js", 404),
        ]:
            response = await client.get(url)
            assert response.status_code == expect, (url, response.text)
            check_answer(path, "GET", response)
        listed = (await client.get("/api/streams")).json()
        assert {s["stream"] for s in listed} == {"live", "far"}

        session = "/whep/{stream}/{session}"
        assert viewer.result is not None and viewer.result.location
        location = viewer.result.location
        for method, path, url, body, ctype, expect in [
            ("OPTIONS", "/whep/{stream}", "/whep/live", "", None, 200),
            ("HEAD", "/whip/{stream}", "/whip/live", "", None, 200),
            ("POST", "/whip/{stream}", "/whip/live", OFFER, "text/plain", 415),
            ("POST", "/whip/{stream}", "/whip/live", "v=0\r\n", SDP, 400),
            ("POST", "/whip/{stream}", "/whip/live", "x" * 200_000, SDP, 413),
            ("POST", "/whep/{stream}", "/whep/live?layer=%25", OFFER, SDP, 400),
            ("PATCH", session, location, "a=end-of-candidates\r\n", SDPFRAG, 204),
            ("PATCH", session, location, "a=ice-ufrag:abcd\r\na=ice-pwd:" + "p" * 22, SDPFRAG, 422),
            ("PATCH", session, location, "", "text/plain", 415),
            ("GET", session, location, "", None, 200),
            ("OPTIONS", session, location, "", None, 200),
            ("DELETE", session, "/whep/live/nobody", "", None, 404),
            ("POST", session + "/sse", location + "/sse", '["active","layers"]', None, 201),
            ("POST", session + "/sse", location + "/sse", '["x"]', None, 400),
            ("POST", session + "/layer", location + "/layer", "{}", None, 204),
            ("POST", session + "/layer", location + "/layer", '{"maxWidth": 0}', None, 400),
            ("GET", session + "/sse/{subscription}", location + "/sse/nothing", "", None, 404),
        ]:
            response = await _raw(client, method, url, body, ctype)
            assert response.status_code == expect, (method, url, response.text)
            check_answer(path, method, response)
        live = (await client.get("/api/streams/live")).json()
        assert live["viewer_sessions"][0]["tracks"]["video"]["packets"] > 0
    finally:
        await viewer.stop(client)
        await publisher.stop(client)


async def test_refusals_match_the_schemas(make_server: ServerFactory) -> None:
    """403 (a JWT for another role), 409 (not live), 401, then 429 past the burst."""
    server = await make_server(
        jwt_secret=JWT_SECRET, require_live=True, rate_limit=0.01, rate_burst=3
    )
    for path, url, token, expect in [
        ("/whip/{stream}", "/whip/fuzz", JWT, 403),
        ("/whep/{stream}", "/whep/x", None, 409),
        ("/whip/{stream}", "/whip/x", None, 401),
        ("/whip/{stream}", "/whip/x", None, 429),
    ]:
        headers = {"Content-Type": SDP} | ({"Authorization": f"Bearer {token}"} if token else {})
        response = await server.client.post(url, content=OFFER, headers=headers)
        assert response.status_code == expect, (url, response.text)
        check_answer(path, "POST", response)


def _returns(value: Any) -> Any:
    async def call() -> Any:
        return value

    return call


async def _raw(
    client: httpx.AsyncClient, method: str, url: str, body: str, ctype: str | None = SDP
) -> httpx.Response:
    headers = {} if ctype is None else {"Content-Type": ctype}
    return await client.request(method, url, content=body.encode(), headers=headers)


# --- schemathesis ---------------------------------------------------------------------------

PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@st.composite
def mutated_offer(draw: st.DrawFn) -> str:
    """A real offer with lines dropped, replaced by noise, duplicated or cut short."""
    lines = draw(st.sampled_from([OFFER, WHIP_OFFER])).splitlines()
    for _ in range(draw(st.integers(1, 6))):
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "noise", "dup", "cut", "value", "grow"]))
        if action == "grow":
            lines = lines * 2
        elif action == "drop":
            del lines[index]
        elif action == "noise":
            lines[index] = draw(PRINTABLE)
        elif action == "dup":
            lines.insert(index, lines[index])
        elif action == "cut":
            lines = lines[:index]
        else:
            key = lines[index].partition(":")[0]
            lines[index] = f"{key}:{draw(PRINTABLE)}"
        if not lines:
            break
    return "\r\n".join(lines) + draw(st.sampled_from(["\r\n", "\n", ""]))


SDP_BODIES = st.one_of(
    mutated_offer(),
    PRINTABLE,
    st.sampled_from([OFFER, WHIP_OFFER]),
    st.binary(max_size=64).map(repr),
).map(str.encode)
FRAG_LINE = st.one_of(
    st.from_regex(r"a=ice-(ufrag|pwd):[A-Za-z0-9+/]{0,30}", fullmatch=True),
    st.builds(
        "a=candidate:{} 1 {} {} 192.0.2.{} {} typ {}".format,
        st.integers(0, 9),
        st.sampled_from(["udp", "tcp", "x"]),
        st.integers(-1, 2**32),
        st.integers(0, 255),
        st.integers(-1, 70000),
        st.sampled_from(["host", "srflx", "relay", "x"]),
    ),
    st.sampled_from(["m=audio 9 RTP/AVP 0", "a=mid:0", "a=mid:1", "a=end-of-candidates"]),
    st.sampled_from(["a=ice-options:trickle", "a=group:BUNDLE 0 1", "m=", "a="]),
    PRINTABLE,
)
FRAG_BODIES = st.lists(FRAG_LINE, max_size=6).map(lambda lines: "\r\n".join(lines).encode())
schemathesis.openapi.media_type(SDP, SDP_BODIES)
schemathesis.openapi.media_type(SDPFRAG, FRAG_BODIES)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class FuzzRun:
    base_url: str
    live: dict[str, dict[str, str]]  # role -> path parameters of a live session
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    inputs: int = 0


def _fuzz(run: FuzzRun) -> None:
    """Every operation, positive and negative inputs; sync (requests), in a worker thread."""
    schema = schemathesis.openapi.from_dict(DESCRIPTION)
    http = requests.Session()
    rng = random.Random(0)
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def exercise(case: schemathesis.Case) -> None:
                _aim_at_live_session(case, run.live, rng)
                _vary_headers(case, rng)
                started = time.monotonic()
                try:
                    response = case.call(
                        base_url=run.base_url, session=http, timeout=REQUEST_TIMEOUT
                    )
                except requests.RequestException as exc:
                    run.failures.append(
                        f"{exc!r} after {time.monotonic() - started:.1f} s:\n"
                        f"{case.as_curl_command()}"
                    )
                    return
                run.inputs += 1
                run.statuses[response.status_code] += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except (Exception, BaseExceptionGroup) as exc:  # a FailureGroup
                    run.failures.append(f"{exc}\n{case.as_curl_command()}")

            try:
                exercise()
            except Unsatisfiable:  # nothing to negate: no parameters, no body
                assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label


def _aim_at_live_session(
    case: schemathesis.Case, live: dict[str, dict[str, str]], rng: random.Random
) -> None:
    """Half the session-URL cases go to a real session, so the handlers behind the 404 run.

    Not DELETE (it would end the session for the cases after it) and not the event stream
    itself (a real subscription streams until the session ends).
    """
    path = case.operation.path
    match = re.fullmatch(r"/(whip|whep)/\{stream\}/\{session\}(/sse|/layer)?", path)
    if match is None or case.method == "DELETE" or rng.random() < 0.5:
        return
    case.path_parameters = (case.path_parameters or {}) | live[match.group(1)]


def _vary_headers(case: schemathesis.Case, rng: random.Random) -> None:
    """Mostly the right Bearer token for the role; sometimes none, a wrong one, or another
    Content-Type than the described one (401, 415 and the parsing behind them)."""
    headers = dict(case.headers or {})
    role = "whip" if case.operation.path.startswith("/whip/") else "whep"
    pick = rng.random()
    if pick < 0.8:
        headers["Authorization"] = f"Bearer {TOKENS[role]}"
    elif pick < 0.9:
        headers["Authorization"] = rng.choice(
            ["Bearer", "Basic eDp5", "bearer  x", "Bearer \xe9", "Bearer a.b.c", f"Bearer {JWT}"]
        )
    if case.body is not None and rng.random() < 0.15:
        headers["Content-Type"] = rng.choice(
            ["text/plain", "application/SDP; charset=utf-8", "application/json", "", "*/*"]
        )
    case.headers = headers


# The server shares this process: its event loop (aioice, aiortc) draws from the global
# `random` while hypothesis generates in the fuzzing thread, which hypothesis takes for a
# strategy using `random`.
@pytest.mark.timeout(120 * FUZZ_SCALE)
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
async def test_schemathesis_finds_no_server_error(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(
        record_dir=str(tmp_path),  # the recording API starts, stops and lists for real
        connect_timeout=300,
        max_handshakes=100_000,  # its sessions never connect: no 503 for that
        rate_limit=0,  # ~100 requests a second: no 429
        max_body_bytes=MAX_BODY,
        publish_token=TOKENS["whip"],
        viewer_token=TOKENS["whep"],
        jwt_secret=JWT_SECRET,
    )
    client = server.client
    publisher = Publisher(server.base_url, "fuzz")
    # A WHEP session that never connects (its answer is never applied): cheap to keep.
    watcher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    watcher.addTransceiver("video", direction="recvonly")
    watcher.addTransceiver("audio", direction="recvonly")
    try:
        assert (await publisher.start(client, token=TOKENS["whip"])).status == 201
        await asyncio.wait_for(publisher.connected.wait(), 10)
        await watcher.setLocalDescription(await watcher.createOffer())
        offer = watcher.localDescription.sdp
        watching = await client.post(
            "/whep/fuzz",
            content=offer,
            headers={"Content-Type": SDP, "Authorization": f"Bearer {TOKENS['whep']}"},
        )
        assert watching.status_code == 201
        live = {
            role: dict(zip(("stream", "session"), location.split("/")[2:], strict=True))
            for role, location in [
                ("whip", publisher.result.location if publisher.result else ""),
                ("whep", watching.headers["location"]),
            ]
        }
        run = FuzzRun(server.base_url, live)
        await asyncio.to_thread(_fuzz, run)
        server_errors = sum(n for status, n in run.statuses.items() if status >= 500)
        print(f"\nschemathesis: {run.inputs} inputs, statuses {dict(sorted(run.statuses.items()))}")
        assert not run.failures, "\n\n".join(run.failures[:5])
        assert server_errors == 0
        assert run.inputs >= 500
        assert (await client.get("/healthz")).status_code == 200
    finally:
        await watcher.close()
        await publisher.stop()
