"""Conformance of one node's HTTP surface to the WHIP/WHEP checklist (see CONFORMANCE.md).

One test (parametrized over WHIP and WHEP where the row applies to both) per checklist
row: status codes, headers and bodies, as RFC 9725 (WHIP) and draft-ietf-wish-whep ask.
CONFORMANCE.md maps every row to the tests here. Offers come from real aiortc peers;
every peer connection is closed and every session DELETEd (the `peers` fixture checks
that the server holds no session afterwards). Only the rows about a session surviving a
failed ICE restart wait for ICE/DTLS to connect.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from broadcast.protocol.links import parse_link_header
from tests.conftest import RunningServer, ServerFactory

ROLES = ["whip", "whep"]
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
PROBLEM = "application/problem+json"
MAX_BODY = 65536  # BROADCAST_MAX_BODY_BYTES default
ICE_SETTINGS: dict[str, Any] = {
    "ice_servers": ["stun:stun.example.net:3478", "turn:turn.example.net:3478"],
    "turn_secret": "s3cret",
}
ORIGIN = "https://player.example"
OTHER_ROLE = {"whip": "whep", "whep": "whip"}
# What each role offers (RFC 9725 §4.2; draft-ietf-wish-whep §4.2) and must be answered.
OFFER_DIRECTION = {"whip": "sendonly", "whep": "recvonly"}
ANSWER_DIRECTION = {"whip": "recvonly", "whep": "sendonly"}


# --------------------------------------------------------------------------- helpers


class Peers:
    """Real aiortc offerers, and the sessions they open, cleaned up after each test."""

    def __init__(self) -> None:
        self.pcs: list[RTCPeerConnection] = []
        self.sessions: list[tuple[RunningServer, str, dict[str, str]]] = []
        self.servers: list[RunningServer] = []

    def pc(
        self,
        role: str,
        *,
        direction: str | None = None,
        kinds: tuple[str, ...] = ("audio", "video"),
    ) -> RTCPeerConnection:
        direction = direction or OFFER_DIRECTION[role]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.append(pc)
        for kind in kinds:
            if direction in ("sendonly", "sendrecv"):
                track = AudioStreamTrack() if kind == "audio" else VideoStreamTrack()
                pc.addTransceiver(track, direction=direction)
            else:
                pc.addTransceiver(kind, direction=direction)
        return pc

    async def offer(
        self,
        role: str,
        *,
        direction: str | None = None,
        kinds: tuple[str, ...] = ("audio", "video"),
    ) -> str:
        return (await self.offer_pc(role, direction=direction, kinds=kinds))[1]

    async def offer_pc(
        self,
        role: str,
        *,
        direction: str | None = None,
        kinds: tuple[str, ...] = ("audio", "video"),
    ) -> tuple[RTCPeerConnection, str]:
        pc = self.pc(role, direction=direction, kinds=kinds)
        await pc.setLocalDescription(await pc.createOffer())
        return pc, str(pc.localDescription.sdp)

    async def post(
        self,
        server: RunningServer,
        path: str,
        body: str | bytes,
        *,
        content_type: str | None = SDP,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST an offer; a 201's session is DELETEd after the test."""
        sent = dict(headers or {})
        if content_type is not None:
            sent["Content-Type"] = content_type
        response = await server.client.post(path, content=body, headers=sent)
        if server not in self.servers:
            self.servers.append(server)
        if response.status_code == 201:
            auth = {k: v for k, v in sent.items() if k.lower() == "authorization"}
            self.sessions.append((server, response.headers["location"], auth))
        return response

    async def session(
        self, server: RunningServer, role: str, stream: str = "conf", **kwargs: Any
    ) -> tuple[RTCPeerConnection, httpx.Response]:
        """A created session: the offering pc and the 201."""
        pc, sdp = await self.offer_pc(role, **kwargs)
        response = await self.post(server, f"/{role}/{stream}", sdp)
        assert response.status_code == 201, response.text
        return pc, response

    async def close(self) -> None:
        for server, location, auth in self.sessions:
            response = await server.client.delete(location, headers=auth)
            assert response.status_code in (200, 204, 404), response.text
        for pc in self.pcs:
            await pc.close()
        for server in self.servers:
            for _ in range(100):
                if not server.hub.sessions:
                    break
                await asyncio.sleep(0.01)
            assert not server.hub.sessions, "a test leaked server sessions"


@pytest.fixture
async def peers(make_server: ServerFactory) -> AsyncIterator[Peers]:
    # Depends on make_server so that it is torn down before any server stops.
    tracker = Peers()
    try:
        yield tracker
    finally:
        await tracker.close()


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem document with the given status (RFC 9725 §4.2 allows it)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    """(session-level lines, one list of lines per m-section)."""
    head: list[str] = []
    media: list[list[str]] = []
    for line in sdp.replace("\r\n", "\n").strip().split("\n"):
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            head.append(line)
    return head, media


def attribute(lines: list[str], name: str) -> str | None:
    prefix = f"a={name}:"
    return next((line[len(prefix) :] for line in lines if line.startswith(prefix)), None)


def ice_credentials(sdp: str) -> tuple[str, str]:
    ufrag = re.search(r"^a=ice-ufrag:(\S+)", sdp, re.MULTILINE)
    pwd = re.search(r"^a=ice-pwd:(\S+)", sdp, re.MULTILINE)
    assert ufrag and pwd
    return ufrag[1], pwd[1]


def offer_candidates(sdp: str) -> list[str]:
    """The candidate values (after `candidate:`) of the first m-section."""
    _, media = sections(sdp)
    return [line[len("a=candidate:") :] for line in media[0] if line.startswith("a=candidate:")]


def without_candidates(sdp: str) -> str:
    """The offer whip-whep.js POSTs: before gathering, so no candidates at all."""
    kept = [
        line
        for line in sdp.split("\r\n")
        if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    ]
    return "\r\n".join(kept)


def sdpfrag(
    ufrag: str, pwd: str, candidates: list[str], *, mid: str = "0", end: bool = False
) -> str:
    lines = [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", "m=audio 9 UDP/TLS/RTP/SAVPF 0"]
    lines += [f"a=mid:{mid}", *(f"a=candidate:{c}" for c in candidates)]
    if end:
        lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


def server_session(server: RunningServer, response: httpx.Response) -> Any:
    return server.hub.sessions[response.headers["location"].rsplit("/", 1)[1]]


def remote_candidates(session: Any) -> set[tuple[str, int]]:
    """Where the server's ICE agent may send checks (aiortc's public getRemoteCandidates)."""
    found = set()
    for transceiver in session.pc.getTransceivers():
        for candidate in transceiver.receiver.transport.transport.getRemoteCandidates():
            found.add((candidate.ip, candidate.port))
    return found


async def wait_connected(pc: RTCPeerConnection, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pc.connectionState != "connected":
        assert pc.connectionState not in ("failed", "closed"), pc.connectionState
        assert time.monotonic() < deadline, f"still {pc.connectionState} after {timeout} s"
        await asyncio.sleep(0.02)


def header_list(response: httpx.Response, name: str) -> list[str]:
    return [v.strip().lower() for v in response.headers.get(name, "").split(",") if v.strip()]


def ice_links(response: httpx.Response) -> list[tuple[str, dict[str, str]]]:
    return [
        (target, params)
        for target, params in parse_link_header(response.headers.get("link", ""))
        if params.get("rel") == "ice-server"
    ]


def check_ice_links(response: httpx.Response, role: str) -> None:
    """RFC 9725 §4.6: one rel="ice-server" Link per URL, TURN with REST API credentials."""
    links = dict(ice_links(response))
    assert set(links) == set(ICE_SETTINGS["ice_servers"]), response.headers.get("link")
    stun = links["stun:stun.example.net:3478"]
    assert "username" not in stun and "credential" not in stun
    turn = links["turn:turn.example.net:3478"]
    assert turn["credential-type"] == "password"
    expiry, _, user = turn["username"].partition(":")
    assert user == role and int(expiry) > time.time()
    digest = hmac.new(b"s3cret", turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(digest).decode()


# --------------------------------------------------------------------------- POST


@pytest.mark.parametrize("role", ROLES)
async def test_post_offer_answers_201_with_sdp_location_etag(
    server: RunningServer, peers: Peers, role: str
) -> None:
    """RFC 9725 §4.2 / WHEP §4.2: 201, application/sdp answer, Location, ETag (§4.3.1)."""
    response = await peers.post(server, f"/{role}/conf", await peers.offer(role))
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == SDP
    # Location: an absolute path, readable whatever the case of the header name.
    location = response.headers["Location"]
    assert location == response.headers["location"] == response.headers["LOCATION"]
    assert re.fullmatch(rf"/{role}/conf/[A-Za-z0-9_-]+", location), location
    etag = response.headers["etag"]
    assert re.fullmatch(r'"[\x21\x23-\x7e]+"', etag), etag  # strong: quoted, no W/
    assert response.headers["accept-patch"] == SDPFRAG

    answer = response.text
    head, media = sections(answer)
    assert head[0] == "v=0"
    assert [m[0].split()[0] for m in media] == ["m=audio", "m=video"]
    mids = [attribute(m, "mid") for m in media]
    bundle = attribute(head, "group")
    assert bundle is not None and bundle.split() == ["BUNDLE", *mids]  # max-bundle
    assert "a=ice-lite" not in answer  # full ICE (RFC 9725 §4.4)
    for section in media:
        assert f"a={ANSWER_DIRECTION[role]}" in section, section
        assert not {"a=sendrecv", "a=inactive", f"a={OFFER_DIRECTION[role]}"} & set(section)
        assert "a=rtcp-mux" in section
        # RFC 8858 §4.3: rtcp-mux-only is the offerer's; the answerer MUST NOT send it.
        assert "a=rtcp-mux-only" not in section
        assert any(line.startswith("a=candidate:") for line in section)  # for non-trickle
        assert attribute(section, "setup") in ("active", "passive")
    if role == "whep":
        # Single MediaStream: every track carries the same stream id (a=msid).
        streams = {(attribute(m, "msid") or "").split()[0] for m in media}
        assert streams == {"conf"}


@pytest.mark.parametrize("role", ROLES)
async def test_session_url_has_128_bits_of_randomness(
    server: RunningServer, peers: Peers, role: str
) -> None:
    """RFC 9725 §4.1 / §6: unguessable session URLs from a CSPRNG (RFC 4086)."""
    ids = []
    for stream in ("one", "two"):
        _, response = await peers.session(server, role, stream)
        ids.append(response.headers["location"].rsplit("/", 1)[1])
    for value in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", value), value  # 22 x 6 bits >= 128
    assert ids[0] != ids[1]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
async def test_post_wrong_content_type_is_415_with_accept_post(
    server: RunningServer, peers: Peers, role: str, content_type: str | None
) -> None:
    response = await peers.post(
        server, f"/{role}/conf", await peers.offer(role), content_type=content_type
    )
    assert_problem(response, 415)
    assert response.headers["accept-post"] == SDP


@pytest.mark.parametrize("role", ROLES)
async def test_post_media_type_is_case_insensitive(
    server: RunningServer, peers: Peers, role: str
) -> None:
    """RFC 9110 §8.3.1: type and subtype are case-insensitive; parameters are allowed."""
    response = await peers.post(
        server, f"/{role}/conf", await peers.offer(role), content_type="Application/SDP; x=1"
    )
    assert response.status_code == 201, response.text


MALFORMED = {
    "not-sdp": lambda offer: "hello, world",
    "empty": lambda offer: "",
    "no-m-line": lambda offer: "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
    "truncated": lambda offer: offer[: len(offer) // 3].rsplit("\r\n", 1)[0],
    "no-fingerprint": lambda offer: re.sub(r"a=fingerprint:[^\r]*\r\n", "", offer),
    "binary": lambda offer: "v=0\r\n\x00\x01\x02",
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_post_malformed_sdp_is_400_problem(
    server: RunningServer, peers: Peers, role: str, case: str
) -> None:
    body = MALFORMED[case](await peers.offer(role))
    body_problem = assert_problem(await peers.post(server, f"/{role}/conf", body), 400)
    assert body_problem["instance"] == f"/{role}/conf"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", ["a.b", "x" * 65, "%20", "caf%C3%A9"])
async def test_post_bad_stream_name_is_400(
    server: RunningServer, peers: Peers, role: str, name: str
) -> None:
    assert_problem(await peers.post(server, f"/{role}/{name}", await peers.offer(role)), 400)


@pytest.mark.parametrize("role", ROLES)
async def test_post_too_many_tracks_is_422(server: RunningServer, peers: Peers, role: str) -> None:
    """≤ 1 audio and ≤ 1 video track; the whole POST is refused, no m-line rejected."""
    offer = await peers.offer(role, kinds=("audio", "video", "video"))
    response = await peers.post(server, f"/{role}/conf", offer)
    assert_problem(response, 422)
    assert not server.hub.sessions


@pytest.mark.parametrize(
    ("role", "direction"),
    [("whip", "recvonly"), ("whip", "inactive"), ("whep", "sendonly"), ("whep", "inactive")],
)
async def test_post_wrong_direction_is_422(
    server: RunningServer, peers: Peers, role: str, direction: str
) -> None:
    offer = await peers.offer(role, direction=direction)
    assert_problem(await peers.post(server, f"/{role}/conf", offer), 422)


@pytest.mark.parametrize("role", ROLES)
async def test_post_sendrecv_offer_is_answered_one_way(
    server: RunningServer, peers: Peers, role: str
) -> None:
    """A client MAY offer sendrecv (whip-whep.js viewers do); the answer stays one-way."""
    offer = await peers.offer(role, direction="sendrecv")
    response = await peers.post(server, f"/{role}/conf", offer)
    assert response.status_code == 201, response.text
    for section in sections(response.text)[1]:
        assert f"a={ANSWER_DIRECTION[role]}" in section


@pytest.mark.parametrize("role", ROLES)
async def test_post_no_common_codec_is_422(server: RunningServer, peers: Peers, role: str) -> None:
    offer = re.sub(r"(a=rtpmap:\d+ )(?!rtx/)[A-Za-z0-9]+/", r"\1X-NOPE/", await peers.offer(role))
    response = await peers.post(server, f"/{role}/conf", offer)
    assert response.status_code < 500
    assert_problem(response, 422)
    assert not server.hub.sessions


@pytest.mark.parametrize("role", ROLES)
async def test_post_without_rtcp_mux_is_422(server: RunningServer, peers: Peers, role: str) -> None:
    """RFC 9725 §4.4.1: RTP/RTCP multiplexing is mandatory."""
    offer = (await peers.offer(role)).replace("a=rtcp-mux\r\n", "")
    assert_problem(await peers.post(server, f"/{role}/conf", offer), 422)


@pytest.mark.parametrize("role", ROLES)
async def test_post_setup_active_offer_is_supported(
    server: RunningServer, peers: Peers, role: str
) -> None:
    """RFC 9725 §4.2: reject a=setup:active only if unsupported; we take the DTLS server role."""
    offer = (await peers.offer(role)).replace("a=setup:actpass", "a=setup:active")
    response = await peers.post(server, f"/{role}/conf", offer)
    assert response.status_code == 201, response.text
    for section in sections(response.text)[1]:
        assert attribute(section, "setup") == "passive"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_post_body_too_large_is_413(
    server: RunningServer, peers: Peers, role: str, chunked: bool
) -> None:
    offer = await peers.offer(role)
    body = (offer + "a=x-padding:" + "p" * MAX_BODY + "\r\n").encode()
    headers = {"Content-Type": SDP}
    if chunked:

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 16384):
                yield body[start : start + 16384]

        response = await server.client.post(f"/{role}/conf", content=pieces(), headers=headers)
        assert response.request.headers.get("transfer-encoding") == "chunked"
    else:
        response = await server.client.post(f"/{role}/conf", content=body, headers=headers)
        assert response.request.headers["content-length"] == str(len(body))
    assert_problem(response, 413)
    assert not server.hub.sessions


@pytest.mark.parametrize("role", ROLES)
async def test_extensions_are_advertised_never_required(
    server: RunningServer, peers: Peers, role: str
) -> None:
    """RFC 9725 §4.9: extensions are advertised as URN Links and never required: a plain
    offer succeeds. WHEP advertises the server-sent events extension with its session
    (draft-ietf-wish-whep §4.7); WHIP advertises none."""
    _, response = await peers.session(server, role)
    location = response.headers["location"]
    urns = {
        params["rel"]: target
        for target, params in parse_link_header(response.headers.get("link", ""))
        if params.get("rel", "").startswith("urn:")
    }
    if role == "whip":
        assert urns == {}
    else:
        assert urns == {
            "urn:ietf:params:whep:ext:core:server-sent-events": f"{location}/sse",
            "urn:ietf:params:whep:ext:core:layer": f"{location}/layer",
        }


# --------------------------------------------------------------------------- OPTIONS, CORS


@pytest.mark.parametrize("role", ROLES)
async def test_options_on_endpoint_is_200_with_accept_post(
    server: RunningServer, role: str
) -> None:
    response = await server.client.options(f"/{role}/conf")
    assert response.status_code == 200
    assert response.headers["accept-post"] == SDP
    assert "POST" in response.headers["allow"]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("target", "method"),
    [("endpoint", "POST"), ("session", "PATCH"), ("session", "DELETE")],
)
async def test_cors_preflight_allows_client_and_has_no_ice_servers(
    make_server: ServerFactory, role: str, target: str, method: str
) -> None:
    server: RunningServer = await make_server(**ICE_SETTINGS)
    path = f"/{role}/conf" if target == "endpoint" else f"/{role}/conf/{'A' * 22}"
    response = await server.client.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type,if-match",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)
    assert method.lower() in header_list(response, "access-control-allow-methods")
    allowed = header_list(response, "access-control-allow-headers")
    assert {"authorization", "content-type", "if-match"} <= set(allowed)
    assert int(response.headers["access-control-max-age"]) > 0
    # RFC 9725 §4.6: ICE server credentials SHOULD NOT be sent on a CORS preflight.
    assert "link" not in response.headers


@pytest.mark.parametrize("role", ROLES)
async def test_options_without_preflight_carries_ice_server_links(
    make_server: ServerFactory, role: str
) -> None:
    server: RunningServer = await make_server(**ICE_SETTINGS)
    response = await server.client.options(f"/{role}/conf")
    assert response.status_code == 200
    check_ice_links(response, role)
    # An OPTIONS from a page that is not a preflight (no Access-Control-Request-Method).
    response = await server.client.options(f"/{role}/conf", headers={"Origin": ORIGIN})
    check_ice_links(response, role)


@pytest.mark.parametrize("role", ROLES)
async def test_201_carries_ice_server_links(
    make_server: ServerFactory, peers: Peers, role: str
) -> None:
    server: RunningServer = await make_server(**ICE_SETTINGS)
    _, response = await peers.session(server, role)
    check_ice_links(response, role)


@pytest.mark.parametrize("role", ROLES)
async def test_cross_origin_responses_expose_location_etag_link(
    server: RunningServer, peers: Peers, role: str
) -> None:
    """Pages on other origins must read Location, ETag and Link (FACTS: whip-whep leaks a
    session when Location is hidden); errors are readable too."""
    offer = await peers.offer(role)
    response = await peers.post(server, f"/{role}/conf", offer, headers={"Origin": ORIGIN})
    assert response.status_code == 201
    assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)
    assert {"location", "etag", "link"} <= set(
        header_list(response, "access-control-expose-headers")
    )
    error = await peers.post(
        server, f"/{role}/conf", offer, content_type="text/plain", headers={"Origin": ORIGIN}
    )
    assert error.status_code == 415
    assert error.headers["access-control-allow-origin"] in ("*", ORIGIN)


@pytest.mark.parametrize("role", ROLES)
async def test_restricted_origins_get_no_cors_headers_elsewhere(
    make_server: ServerFactory, peers: Peers, role: str
) -> None:
    server: RunningServer = await make_server(allow_origins=["https://a.example"])
    preflight = {"Access-Control-Request-Method": "POST"}
    other = await server.client.options(
        f"/{role}/conf", headers={"Origin": "https://b.example", **preflight}
    )
    assert "access-control-allow-origin" not in other.headers
    offer = await peers.offer(role)
    posted = await peers.post(
        server, f"/{role}/conf", offer, headers={"Origin": "https://b.example"}
    )
    assert "access-control-allow-origin" not in posted.headers
    allowed = await server.client.options(
        f"/{role}/conf", headers={"Origin": "https://a.example", **preflight}
    )
    assert allowed.headers["access-control-allow-origin"] == "https://a.example"
    assert "origin" in header_list(allowed, "vary")


# --------------------------------------------------------------------------- GET, HEAD, 405


@pytest.mark.parametrize("role", ROLES)
async def test_get_and_head_on_endpoint_are_200_without_body(
    server: RunningServer, role: str
) -> None:
    """RFC 9725 §4.1 (GET 2xx, no content); WHEP §4.1 (HEAD 200, application/sdp, same
    headers as GET)."""
    get = await server.client.get(f"/{role}/conf")
    head = await server.client.head(f"/{role}/conf")
    for response in (get, head):
        assert response.status_code == 200
        assert response.content == b""
        assert response.headers["content-type"] == SDP
    assert {k: v for k, v in get.headers.items() if k != "date"} == {
        k: v for k, v in head.headers.items() if k != "date"
    }


@pytest.mark.parametrize("role", ROLES)
async def test_get_and_head_on_session_are_2xx_without_body(
    server: RunningServer, peers: Peers, role: str
) -> None:
    _, created = await peers.session(server, role)
    location = created.headers["location"]
    for response in (await server.client.get(location), await server.client.head(location)):
        assert 200 <= response.status_code < 300
        assert response.content == b""


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("target", "method"),
    [
        ("endpoint", "PUT"),
        ("endpoint", "PATCH"),
        ("endpoint", "DELETE"),
        ("session", "POST"),
        ("session", "PUT"),
    ],
)
async def test_method_not_allowed_is_405_with_allow(
    server: RunningServer, peers: Peers, role: str, target: str, method: str
) -> None:
    path = f"/{role}/conf"
    if target == "session":
        _, created = await peers.session(server, role)
        path = created.headers["location"]
    response = await server.client.request(method, path, content=b"x")
    assert_problem(response, 405)
    allow = header_list(response, "allow")
    assert method.lower() not in allow
    assert ("post" if target == "endpoint" else "delete") in allow


# --------------------------------------------------------------------------- PATCH


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("content_type", [SDP, "text/plain", None])
async def test_patch_wrong_content_type_is_415(
    server: RunningServer, peers: Peers, role: str, content_type: str | None
) -> None:
    """RFC 9725 §4.3: application/trickle-ice-sdpfrag only. WHEP's application/sdp PATCH
    exists only after a 406 counter-offer, which this server never sends."""
    pc, created = await peers.session(server, role)
    ufrag, pwd = ice_credentials(pc.localDescription.sdp)
    headers = {} if content_type is None else {"Content-Type": content_type}
    body = sdpfrag(ufrag, pwd, offer_candidates(pc.localDescription.sdp))
    response = await server.client.patch(created.headers["location"], content=body, headers=headers)
    assert_problem(response, 415)
    assert response.headers["accept-patch"] == SDPFRAG


MALFORMED_FRAGS = {
    "empty": "",
    "not-sdp": "hello\r\n",
    "candidate-outside-m": "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n",
    "bad-candidate": "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:garbage\r\n",
    "ufrag-without-pwd": "a=ice-ufrag:abcd\r\n",
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", sorted(MALFORMED_FRAGS))
async def test_patch_malformed_sdpfrag_is_400(
    server: RunningServer, peers: Peers, role: str, case: str
) -> None:
    _, created = await peers.session(server, role)
    response = await server.client.patch(
        created.headers["location"],
        content=MALFORMED_FRAGS[case],
        headers={"Content-Type": SDPFRAG},
    )
    assert_problem(response, 400)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("if_match", ["absent", "current", "star", "in-list"])
async def test_patch_trickle_is_204_without_body_or_etag(
    server: RunningServer, peers: Peers, role: str, if_match: str
) -> None:
    """RFC 9725 §4.3.1: trickle → 204, no body, no ETag. whip-whep.js POSTs before
    gathering and trickles; it sends no If-Match on WHEP."""
    _, offer = await peers.offer_pc(role)
    created = await peers.post(server, f"/{role}/conf", without_candidates(offer))
    assert created.status_code == 201, created.text
    session = server_session(server, created)
    assert remote_candidates(session) == set()
    etag = created.headers["etag"]
    headers = {"Content-Type": SDPFRAG}
    if if_match != "absent":
        headers["If-Match"] = {"current": etag, "star": "*", "in-list": f'"stale", {etag}'}[
            if_match
        ]
    ufrag, pwd = ice_credentials(offer)
    candidates = offer_candidates(offer)
    response = await server.client.patch(
        created.headers["location"], content=sdpfrag(ufrag, pwd, candidates), headers=headers
    )
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert "etag" not in response.headers
    trickled = {(c.split()[4], int(c.split()[5])) for c in candidates}
    assert trickled and trickled <= remote_candidates(session)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("if_match", ['"stale"', "weak"])
async def test_patch_trickle_with_stale_if_match_is_412(
    server: RunningServer, peers: Peers, role: str, if_match: str
) -> None:
    """RFC 9725 §4.3.1 / RFC 9110 §13.1.1: If-Match uses the strong comparison."""
    pc, created = await peers.session(server, role)
    offer = pc.localDescription.sdp
    value = f"W/{created.headers['etag']}" if if_match == "weak" else if_match
    response = await server.client.patch(
        created.headers["location"],
        content=sdpfrag(*ice_credentials(offer), offer_candidates(offer)),
        headers={"Content-Type": SDPFRAG, "If-Match": value},
    )
    assert_problem(response, 412)


@pytest.mark.parametrize("role", ROLES)
async def test_patch_session_level_end_of_candidates_is_applied(
    server: RunningServer, peers: Peers, role: str
) -> None:
    """RFC 8840 §4.4: a=end-of-candidates may stand at session level (no m-line)."""
    _, offer = await peers.offer_pc(role)
    created = await peers.post(server, f"/{role}/conf", without_candidates(offer))
    ufrag, pwd = ice_credentials(offer)
    body = f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=end-of-candidates\r\n"
    response = await server.client.patch(
        created.headers["location"], content=body, headers={"Content-Type": SDPFRAG}
    )
    assert response.status_code == 204, response.text
    session = server_session(server, created)
    # aioice's own flag: no remote candidate is awaited any more (private, aioice 0.13).
    for transceiver in session.pc.getTransceivers():
        assert transceiver.receiver.transport.transport._connection._remote_candidates_end


@pytest.mark.parametrize("role", ROLES)
async def test_patch_ice_restart_is_422_and_session_survives(
    server: RunningServer, peers: Peers, role: str
) -> None:
    """RFC 9725 §4.3.2: a server that cannot restart ICE answers 422 and MUST keep the
    existing ICE session; it still trickles and connects afterwards."""
    pc, created = await peers.session(server, role)
    offer = pc.localDescription.sdp
    location = created.headers["location"]
    session_id = location.rsplit("/", 1)[1]
    restart = sdpfrag("Nw9r", "nEwPaSsWoRd0123456789xyz", offer_candidates(offer)[:1])
    response = await server.client.patch(
        location, content=restart, headers={"Content-Type": SDPFRAG, "If-Match": "*"}
    )
    assert_problem(response, 422)
    assert session_id in server.hub.sessions
    assert (await server.client.get(location)).status_code == 200
    trickle = await server.client.patch(
        location,
        content=sdpfrag(*ice_credentials(offer), offer_candidates(offer)),
        headers={"Content-Type": SDPFRAG, "If-Match": created.headers["etag"]},
    )
    assert trickle.status_code == 204, trickle.text
    await pc.setRemoteDescription(RTCSessionDescription(sdp=created.text, type="answer"))
    await wait_connected(pc)
    session = server.hub.sessions[session_id]
    for _ in range(500):  # the server sees DTLS finish a moment after the client
        if session.connected_at is not None:
            break
        await asyncio.sleep(0.01)
    assert session.connected_at is not None


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("method", ["PATCH", "DELETE", "GET"])
async def test_unknown_session_is_404(
    server: RunningServer, peers: Peers, role: str, method: str
) -> None:
    _, created = await peers.session(server, OTHER_ROLE[role])
    other_id = created.headers["location"].rsplit("/", 1)[1]
    body = "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=end-of-candidates\r\n"
    # A random id, and a live session's id under the other protocol.
    for session_id in ("Q" * 22, other_id):
        response = await server.client.request(
            method,
            f"/{role}/conf/{session_id}",
            content=body if method == "PATCH" else None,
            headers={"Content-Type": SDPFRAG} if method == "PATCH" else None,
        )
        if method == "GET":
            assert response.status_code == 404
        else:
            assert_problem(response, 404)


UNUSABLE = {
    "unresolvable-fqdn": "1 1 udp 2130706431 foo.invalid 5000 typ host",
    "mdns": "2 1 udp 2130706431 x.local 5000 typ host",
    "tcp": "3 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active",
    "prflx": "4 1 udp 1845501695 127.0.0.1 5001 typ prflx raddr 0.0.0.0 rport 0",
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", sorted(UNUSABLE))
async def test_patch_unusable_candidate_is_discarded_silently(
    server: RunningServer, peers: Peers, role: str, case: str
) -> None:
    """RFC 9725 §4.3.1: unsupported or unresolvable candidates are silently discarded."""
    pc, created = await peers.session(server, role)
    ufrag, pwd = ice_credentials(pc.localDescription.sdp)
    response = await server.client.patch(
        created.headers["location"],
        content=sdpfrag(ufrag, pwd, [UNUSABLE[case]]),
        headers={"Content-Type": SDPFRAG},
    )
    assert response.status_code == 204, response.text
    assert response.content == b""


# --------------------------------------------------------------------------- DELETE


@pytest.mark.parametrize("role", ROLES)
async def test_delete_ends_session_and_frees_it(
    server: RunningServer, peers: Peers, role: str
) -> None:
    """RFC 9725 §4.2: DELETE terminates ICE/DTLS (consent revoked: the ICE agent is
    closed and answers no more checks) and frees the session."""
    pc, created = await peers.session(server, role)
    location = created.headers["location"]
    session = server_session(server, created)
    response = await server.client.delete(location)
    assert 200 <= response.status_code < 300
    assert session.id not in server.hub.sessions
    assert session.pc.connectionState == "closed"
    for transceiver in session.pc.getTransceivers():
        assert transceiver.receiver.transport.transport.state == "closed"
    assert (await server.client.get(location)).status_code == 404
    offer = pc.localDescription.sdp
    patch = await server.client.patch(
        location,
        content=sdpfrag(*ice_credentials(offer), offer_candidates(offer)),
        headers={"Content-Type": SDPFRAG},
    )
    assert_problem(patch, 404)
    assert_problem(await server.client.delete(location), 404)


@pytest.mark.parametrize("role", ROLES)
async def test_delete_ignores_if_match(server: RunningServer, peers: Peers, role: str) -> None:
    """RFC 9725 §4.2: the ETag is ignored on DELETE."""
    _, created = await peers.session(server, role)
    response = await server.client.delete(
        created.headers["location"], headers={"If-Match": '"not-the-etag"'}
    )
    assert 200 <= response.status_code < 300
    assert not server.hub.sessions


# --------------------------------------------------------------------------- auth

TOKENS = {"whip": "pub", "whep": "view"}


@pytest.fixture
async def auth_server(make_server: ServerFactory) -> RunningServer:
    server: RunningServer = await make_server(publish_token="pub", viewer_token="view")
    return server


@pytest.mark.parametrize("role", ROLES)
async def test_auth_missing_token_is_401_bearer_challenge(
    auth_server: RunningServer, peers: Peers, role: str
) -> None:
    response = await peers.post(auth_server, f"/{role}/conf", await peers.offer(role))
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].lower().startswith("bearer")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("token", ["wrong", "other-role"])
async def test_auth_wrong_token_is_401_invalid_token(
    auth_server: RunningServer, peers: Peers, role: str, token: str
) -> None:
    """RFC 6750 §3.1; the WHIP token does not open WHEP and vice versa."""
    value = TOKENS[OTHER_ROLE[role]] if token == "other-role" else token
    response = await peers.post(
        auth_server,
        f"/{role}/conf",
        await peers.offer(role),
        headers={"Authorization": f"Bearer {value}"},
    )
    assert_problem(response, 401)
    challenge = response.headers["www-authenticate"]
    assert challenge.lower().startswith("bearer") and 'error="invalid_token"' in challenge


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_auth_right_token_is_201_and_guards_the_session(
    auth_server: RunningServer, peers: Peers, role: str, scheme: str
) -> None:
    """RFC 6750 §2.1 (auth-scheme is case-insensitive, RFC 9110 §11.1)."""
    headers = {"Authorization": f"{scheme} {TOKENS[role]}"}
    response = await peers.post(
        auth_server, f"/{role}/conf", await peers.offer(role), headers=headers
    )
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert_problem(await auth_server.client.delete(location), 401)
    assert (await auth_server.client.delete(location, headers=headers)).status_code == 200


@pytest.mark.parametrize("role", ROLES)
async def test_auth_not_needed_for_options_or_preflight(
    auth_server: RunningServer, role: str
) -> None:
    plain = await auth_server.client.options(f"/{role}/conf")
    preflight = await auth_server.client.options(
        f"/{role}/conf",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert plain.status_code == preflight.status_code == 200
    assert "authorization" in header_list(preflight, "access-control-allow-headers")


# --------------------------------------------------------------------------- stream state


async def test_second_publisher_on_live_stream_is_409(server: RunningServer, peers: Peers) -> None:
    _, first = await peers.session(server, "whip")
    response = await peers.post(server, "/whip/conf", await peers.offer("whip"))
    assert_problem(response, 409)
    assert server_session(server, first).stream.publisher is server_session(server, first)


async def test_whep_without_live_publication_is_409_retry_after_when_required(
    make_server: ServerFactory, peers: Peers
) -> None:
    """draft-ietf-wish-whep §4.2: 409 + Retry-After while a required publication is absent."""
    server: RunningServer = await make_server(require_live=True)
    response = await peers.post(server, "/whep/conf", await peers.offer("whep"))
    assert_problem(response, 409)
    assert int(response.headers["retry-after"]) > 0
    await peers.session(server, "whip")
    response = await peers.post(server, "/whep/conf", await peers.offer("whep"))
    assert response.status_code == 201, response.text


async def test_whep_waits_for_publication_by_default(server: RunningServer, peers: Peers) -> None:
    _, response = await peers.session(server, "whep")
    assert not server.hub.streams["conf"].live
    for section in sections(response.text)[1]:
        assert "a=sendonly" in section
