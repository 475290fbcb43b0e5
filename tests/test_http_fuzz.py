"""Fuzz the HTTP surface: bad input never yields a 5xx, a hang, or a leaked session.

Hypothesis drives the real uvicorn server of tests/conftest.py (one server per test function,
shared by that test's examples; pytest-asyncio runs ``@given`` on ``async def`` tests in the
fixtures' loop). Every request must answer below 500 within REQUEST_TIMEOUT, the server must
log no exception, and after every example the hub must hold exactly the sessions the test
keeps open, and no stream may be held by anything else. Each test ends with /healthz 200, no
session, and (``publisher_grace=0``) no stream once the hub's janitor has run.

``FUZZ_SCALE=20`` in the environment multiplies the examples of every property (a longer run).

ICE candidates with mDNS (``*.local``) host names are left out of the random input on purpose:
each unresolvable one costs a 1 s mDNS query, which would make the run slow, not wiser.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcast.media.hub import JANITOR_INTERVAL

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
ROLES = ("whip", "whep")
REQUEST_TIMEOUT = 5.0
"""Every answer must come within this (the slowest legitimate one, a 201, takes ~20 ms)."""
MIN_EXAMPLES = 50
"""Each property must really have driven the server this many times."""


def fuzz_settings(max_examples: int) -> settings:
    """`FUZZ_SCALE=20` in the environment runs 20 times as many examples (a longer campaign)."""
    return settings(
        max_examples=max_examples * int(os.environ.get("FUZZ_SCALE", "1")),
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


# --- Strategies -----------------------------------------------------------------------------

T = TypeVar("T")


def mostly(common: st.SearchStrategy[T], rare: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`common` four times in five, shrinking towards it (nested one_of would flatten)."""
    return st.integers(0, 4).flatmap(lambda i: rare if i == 4 else common)


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
ASCII_TEXT = st.text(PRINTABLE, max_size=40)
NUMBER = st.one_of(
    st.integers(-2, 70000).map(str),
    st.sampled_from(
        "0 127 128 255 65535 65536 2147483647 2147483648 4294967295 4294967296 -1 +1 1e3 0x10"
        " 1.5 99999999999999999999".split()
    ),
    # Empty, spaced, and non-ASCII digits (int() takes them, the regexes must not).
    st.sampled_from(["", " 1", "\u0663", "\uff11"]),
)
WORD = st.from_regex(r"[A-Za-z0-9._+/-]{1,12}", fullmatch=True)
TOKEN = st.one_of(NUMBER, WORD, ASCII_TEXT, st.text(max_size=6))
NAME = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
CODEC = st.sampled_from(
    "opus VP8 VP9 H264 AV1 rtx red ulpfec flexfec-03 PCMU PCMA G722 telephone-event CN"
    " H265 foo".split()
)
FMTP_PARAMS = st.lists(
    st.tuples(
        st.sampled_from(
            "apt profile-level-id packetization-mode level-asymmetry-allowed minptime x"
            " useinbandfec stereo max-fr max-fs maxplaybackrate profile-id".split()
        ),
        st.one_of(NUMBER, st.from_regex(r"[0-9A-Fa-f]{0,8}", fullmatch=True), WORD),
        st.booleans(),
    ),
    max_size=4,
).map(lambda params: ";".join(f"{k}={v}" if eq else k for k, v, eq in params))
ADDRESS = st.one_of(
    st.ip_addresses(v=4, network="192.0.2.0/24").map(str),  # documentation ranges only:
    st.ip_addresses(v=6, network="2001:db8::/32").map(str),  # ICE checks go there
    st.sampled_from(
        "127.0.0.1 0.0.0.0 255.255.255.255 :: ::1 localhost a..b -x host.example 256.1.1.1"
        " 1.2.3 [::1] local x.local.example".split()
    ),
    st.just("x" * 300),
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True).filter(
        lambda host: not host.endswith(".local")  # no mDNS: see the module docstring
    ),
)
CANDIDATE = st.one_of(
    st.builds(
        "{} {} {} {} {} {} {} {}{}".format,
        st.one_of(st.from_regex(r"[A-Za-z0-9+/]{1,34}", fullmatch=True), WORD),
        NUMBER,
        st.sampled_from(["udp", "UDP", "tcp", "x"]),
        NUMBER,
        ADDRESS,
        NUMBER,
        st.sampled_from(["typ", "typ", "type"]),
        st.sampled_from(["host", "srflx", "prflx", "relay", "x"]),
        st.lists(
            st.one_of(
                st.tuples(st.sampled_from(["raddr"]), ADDRESS),
                st.tuples(st.sampled_from(["rport", "generation", "network-id"]), NUMBER),
                st.tuples(st.just("tcptype"), st.sampled_from(["active", "passive", "so"])),
                st.tuples(WORD, WORD),
            ),
            max_size=3,
        ).map(lambda pairs: "".join(f" {k} {v}" for k, v in pairs)),
    ),
    ASCII_TEXT,
)
EXTMAP_URI = st.sampled_from(
    "urn:ietf:params:rtp-hdrext:sdes:mid urn:ietf:params:rtp-hdrext:ssrc-audio-level x"
    " http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time".split()
)
ATTRIBUTE_VALUES: dict[str, st.SearchStrategy[str]] = {
    "mid": st.one_of(st.sampled_from(["0", "1", "2", "audio", "video"]), ASCII_TEXT),
    "setup": st.sampled_from(["actpass", "active", "passive", "holdconn", "x", ""]),
    "rtpmap": st.builds(
        "{} {}/{}{}".format, NUMBER, CODEC, NUMBER, st.sampled_from(["", "/1", "/2", "/0", "/x"])
    ),
    "fmtp": st.builds("{} {}".format, NUMBER, FMTP_PARAMS),
    "rtcp-fb": st.builds(
        "{} {}".format,
        st.one_of(st.just("*"), NUMBER),
        st.sampled_from(["nack", "nack pli", "ccm fir", "goog-remb", "transport-cc", ""]),
    ),
    "extmap": st.builds(
        "{}{} {}".format, NUMBER, st.sampled_from(["", "/sendonly", "/x"]), EXTMAP_URI
    ),
    "ssrc": st.builds(
        "{} {}".format, NUMBER, st.one_of(st.sampled_from(["cname:x", "msid:a b", "x"]), TOKEN)
    ),
    "ssrc-group": st.builds(
        "{} {}".format,
        st.sampled_from(["FID", "SIM", "FEC-FR", "X"]),
        st.lists(NUMBER, max_size=3).map(" ".join),
    ),
    "group": st.builds(
        "{} {}".format,
        st.sampled_from(["BUNDLE", "LS", "X", ""]),
        st.lists(st.sampled_from(["0", "1", "2", "x"]), max_size=3).map(" ".join),
    ),
    "candidate": CANDIDATE,
    "ice-ufrag": st.one_of(st.from_regex(r"[A-Za-z0-9+/]{0,30}", fullmatch=True), ASCII_TEXT),
    "ice-pwd": st.one_of(st.from_regex(r"[A-Za-z0-9+/]{0,40}", fullmatch=True), ASCII_TEXT),
    "ice-options": st.sampled_from(["trickle", "ice2", "trickle ice2", "", "renomination"]),
    "fingerprint": st.builds(
        "{} {}".format,
        st.sampled_from(["sha-256", "sha-1", "SHA-256", "md5", "x"]),
        st.lists(st.from_regex(r"[0-9A-Fa-f]{2}", fullmatch=True), max_size=33).map(":".join),
    ),
    "rid": st.builds("{} {}{}".format, WORD, st.sampled_from(["send", "recv", "x"]), ASCII_TEXT),
    "simulcast": st.sampled_from(["send a;b", "recv a", "send", "send ~a;b", ""]),
    "msid": ASCII_TEXT,
    "rtcp": st.builds("{}{}".format, NUMBER, st.sampled_from(["", " IN IP4 0.0.0.0", " IN"])),
    "sctp-port": NUMBER,
    "max-message-size": NUMBER,
    "sctpmap": st.builds("{} {}".format, NUMBER, WORD),
    "msid-semantic": ASCII_TEXT,
    "framerate": NUMBER,
}
FLAGS = ["sendrecv", "sendonly", "recvonly", "inactive", "rtcp-mux", "rtcp-rsize", "bundle-only"]
FLAGS += ["ice-lite", "end-of-candidates", "extmap-allow-mixed", "mid", "rtpmap", "candidate"]
A_LINE = st.one_of(
    st.sampled_from(list(ATTRIBUTE_VALUES)).flatmap(
        lambda name: ATTRIBUTE_VALUES[name].map(lambda value: f"a={name}:{value}")
    ),
    st.sampled_from(FLAGS).map("a={}".format),
    ASCII_TEXT.map("a={}".format),
)
OTHER_LINE = st.one_of(
    st.builds(
        "m={} {} {} {}".format,
        st.sampled_from(["audio", "video", "application", "text", ""]),
        NUMBER,
        st.sampled_from(["UDP/TLS/RTP/SAVPF", "RTP/AVP", "UDP/DTLS/SCTP", "DTLS/SCTP", "x"]),
        st.lists(st.one_of(NUMBER, st.just("webrtc-datachannel")), max_size=4).map(" ".join),
    ),
    st.builds("c=IN {} {}".format, st.sampled_from(["IP4", "IP6", "X"]), ADDRESS),
    st.builds("o=- {} {} IN IP4 {}".format, NUMBER, NUMBER, ADDRESS),
    st.builds("{}={}".format, st.sampled_from(list("vostbcmkrzeupix")), ASCII_TEXT),
    st.text(max_size=30),  # anything, unicode included
)
RANDOM_LINE = st.one_of(A_LINE, A_LINE, OTHER_LINE)

# A mutation: (operation, position, second position or value, text). Positions are taken
# modulo the current length, so any list of operations applies to any body.
LINE_OPS = ("delete", "duplicate", "insert", "replace", "swap", "token")
POSITION = st.integers(0, 2**16)
MUTATION = st.one_of(
    st.tuples(st.sampled_from(["delete", "duplicate"]), POSITION, st.just(0), st.just("")),
    st.tuples(st.sampled_from(["insert", "replace"]), POSITION, st.just(0), RANDOM_LINE),
    st.tuples(st.just("swap"), POSITION, POSITION, st.just("")),
    st.tuples(st.just("token"), POSITION, POSITION, TOKEN),
    st.tuples(st.just("flip"), POSITION, st.integers(0, 254), st.just("")),
    st.tuples(st.just("truncate"), POSITION, st.just(0), st.just("")),
    st.tuples(st.just("splice"), POSITION, st.just(0), st.text(max_size=12)),
    st.tuples(
        st.just("splice"),
        POSITION,
        st.just(0),
        st.binary(max_size=8).map(lambda b: b.decode("latin-1")),
    ),
)
MUTATIONS = st.lists(MUTATION, max_size=6)
EOL = st.sampled_from(["\r\n", "\r\n", "\n", "\r"])
SDP_TYPES = st.sampled_from([SDP, SDP, SDP, "APPLICATION/SDP", "application/sdp; charset=utf-8"])
CONTENT_TYPE = st.one_of(
    st.none(),
    st.sampled_from(
        f"{SDP} Application/Sdp;x=y {SDPFRAG} text/plain application/json */* ; /"
        " application/x-www-form-urlencoded".split()
    ),
    st.sampled_from(["", "multipart/form-data; boundary=x", "application/sdp, text/plain"]),
    ASCII_TEXT,
)
RANDOM_BODY = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=3000).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.builds(
        lambda head, lines, eol: mutate([*head, *lines], [], eol),
        st.sampled_from([[], ["v=0"]]),
        st.lists(RANDOM_LINE, max_size=40),
        EOL,
    ),
)
HEADER_VALUE = st.one_of(
    ASCII_TEXT, st.binary(max_size=20).map(lambda b: bytes(c for c in b if c >= 0x80) + b"x")
)

# Trickle ICE fragments: (credentials, sections, session-level end-of-candidates, options).
# @UFRAG@, @PWD@ and @ETAG@ stand for the live session's values.
CREDENTIALS = st.one_of(
    st.just(("@UFRAG@", "@PWD@")),  # the session's own: trickle
    st.just(("NeWu", "NewPasswordNewPassword1")),  # another: an ICE restart
    st.sampled_from([None, ("ab", "short"), ("@UFRAG@", None), (None, "@PWD@")]),
    st.just(("@UFRAG@", "x" * 300)),
)
FRAG_SECTION = st.tuples(
    st.one_of(st.sampled_from(["0", "1", "2", None]), ASCII_TEXT),
    st.lists(CANDIDATE, max_size=3),
    st.booleans(),
)
FRAGMENT = st.tuples(
    CREDENTIALS,
    st.lists(FRAG_SECTION, max_size=3),
    st.booleans(),
    st.sampled_from([None, "trickle", "trickle ice2", ""]),
)
IF_MATCH = st.one_of(
    st.none(),
    st.sampled_from(["*", "@ETAG@", 'W/"@ETAG@"', "@ETAG@, *", '""', "", " * "]),
    ASCII_TEXT,
)


def fragment_lines(fragment: tuple[Any, ...]) -> list[str]:
    credentials, sections, session_end, options = fragment
    lines: list[str] = []
    if options is not None:
        lines.append(f"a=ice-options:{options}")
    if credentials is not None:
        ufrag, pwd = credentials
        lines += [f"a=ice-ufrag:{ufrag}"] if ufrag is not None else []
        lines += [f"a=ice-pwd:{pwd}"] if pwd is not None else []
    if session_end:
        lines.append("a=end-of-candidates")
    for mid, candidates, end in sections:
        lines.append("m=audio 9 UDP/TLS/RTP/SAVPF 0")
        lines += [f"a=mid:{mid}"] if mid is not None else []
        lines += [f"a=candidate:{candidate}" for candidate in candidates]
        lines += ["a=end-of-candidates"] if end else []
    return lines


def _replace_token(line: str, which: int, text: str) -> str:
    parts = re.split(r"([ :/=;,])", line)
    tokens = range(0, len(parts), 2)
    parts[tokens[which % len(tokens)]] = text
    return "".join(parts)


def mutate(lines: Sequence[str], mutations: Sequence[tuple[str, int, int, str]], eol: str) -> bytes:
    """Apply line operations, then byte operations, to an SDP body."""
    out = list(lines)
    for op, a, b, text in (m for m in mutations if m[0] in LINE_OPS):
        n = len(out)
        if op == "insert":
            out.insert(a % (n + 1), text)
        elif n == 0:
            continue
        elif op == "delete":
            del out[a % n]
        elif op == "duplicate":
            out.insert(a % n, out[a % n])
        elif op == "replace":
            out[a % n] = text
        elif op == "swap":
            out[a % n], out[b % n] = out[b % n], out[a % n]
        else:
            out[a % n] = _replace_token(out[a % n], b, text)
    data = (eol.join(out) + eol).encode("utf-8", "surrogatepass")
    for op, a, b, text in (m for m in mutations if m[0] not in LINE_OPS):
        at = a % (len(data) + 1)
        if op == "flip" and data:
            at %= len(data)
            data = data[:at] + bytes([data[at] ^ (b + 1)]) + data[at + 1 :]
        elif op == "truncate":
            data = data[:at]
        elif op == "splice":
            data = data[:at] + text.encode("utf-8", "surrogatepass") + data[at:]
    return data


def header_safe(value: str | bytes) -> str | bytes:
    """What h11 lets a client send as a header value: no whitespace at either end."""
    return value.strip()


# --- The server under test ------------------------------------------------------------------


class ServerLog(logging.Handler):
    """Collects what only a server bug logs: exceptions and failed background tasks."""

    LOGGERS = ("uvicorn.error", "broadcast", "asyncio")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.problems: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.getMessage().startswith(
            "background task failed"
        ):
            self.problems.append(record)

    def report(self) -> str:
        return "\n".join(
            f"{r.name} {r.levelname}: {r.getMessage()}\n{self.format(r) if r.exc_info else ''}"
            for r in self.problems
        )

    def __enter__(self) -> ServerLog:
        # After uvicorn.Config: its logging dictConfig replaces the handlers of its loggers.
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


async def aiortc_offer(role: str, *, trickle: bool = False) -> tuple[RTCPeerConnection, str]:
    """A real aiortc offer: sendonly audio+video for WHIP, recvonly for WHEP.

    `trickle` leaves candidates out, as a trickle ICE client does (the server then learns
    ours as peer-reflexive once we apply its answer).
    """
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in ("audio", "video"):
        pc.addTransceiver(kind, direction="sendonly" if role == "whip" else "recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    if trickle:
        lines = sdp.splitlines()
        sdp = "".join(f"{line}\r\n" for line in lines if not line.startswith(_CANDIDATE_LINES))
    return pc, sdp


_CANDIDATE_LINES = ("a=candidate:", "a=end-of-candidates")


@dataclass
class Fuzz:
    server: Any  # tests.conftest.RunningServer
    log: ServerLog
    offers: dict[str, str] = field(default_factory=dict, repr=False)
    examples: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    self_ended: int = 0
    """201 sessions that the server had already ended (ICE failed at once) before DELETE."""
    expect: int = 0

    @property
    def hub(self) -> Any:
        return self.server.hub

    def example(self, expect: int = 0) -> None:
        """Count one example; `expect`: how many the test must have run in the end."""
        self.examples += 1
        self.expect = max(self.expect, expect)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            client: httpx.AsyncClient = self.server.client
            response = await client.request(method, url, timeout=REQUEST_TIMEOUT, **kwargs)
        except httpx.TimeoutException:
            pytest.fail(f"{method} {url[:200]} got no answer within {REQUEST_TIMEOUT} s")
        self.statuses[response.status_code] += 1
        where = f"{method} {url[:200]} -> {response.status_code} {response.text[:500]!r}"
        assert response.status_code < 500, where
        assert not self.log.problems, f"{where}\n{self.log.report()}"
        if response.status_code == 405:
            allow = [m.strip() for m in response.headers.get("allow", "").split(",")]
            assert allow != [""], f"405 without Allow: {where}"
            assert method not in allow, f"405 names {method} in Allow: {where}"
        return response

    async def delete_created(self, response: httpx.Response, role: str, name: str) -> None:
        """DELETE the session a 201 created; the server may have ended it already."""
        if response.status_code != 201:
            return
        location = response.headers["location"]
        assert re.fullmatch(rf"/{role}/{re.escape(name)}/[A-Za-z0-9_-]{{22}}", location)
        session_id = location.rsplit("/", 1)[1]
        deleted = await self.request("DELETE", location)
        if deleted.status_code == 404:
            # Legitimate: e.g. an offer with a=end-of-candidates and no usable candidate
            # fails ICE at once, and the server ends the session itself.
            assert session_id not in self.hub.sessions
            self.self_ended += 1
        else:
            assert deleted.status_code == 200, deleted.text

    def assert_clean(self, keep: Sequence[str] = ()) -> None:
        """Exactly the sessions in `keep` are open, and only they hold a stream.

        A stream nobody holds is the janitor's to forget (publisher_grace=0: at its next
        round); the end of each test waits for that.
        """
        assert sorted(self.hub.sessions) == sorted(keep)
        sessions = list(self.hub.sessions.values())
        for stream in self.hub.streams.values():
            assert not stream.live or stream.publisher in sessions, f"{stream.name}: publisher"
            assert all(viewer in sessions for viewer in stream.subscriptions), stream.name


async def _fuzz_server(make_server: Any, **overrides: Any) -> AsyncIterator[Fuzz]:
    server = await make_server(publisher_grace=0, rate_limit=0, **overrides)
    with ServerLog() as log:
        state = Fuzz(server, log)
        for role in ROLES:
            pc, state.offers[role] = await aiortc_offer(role)
            await pc.close()
        yield state
        health = await server.client.get("/healthz", timeout=REQUEST_TIMEOUT)
        assert health.status_code == 200
        assert server.hub.sessions == {}
        for _ in range(int(3 * JANITOR_INTERVAL / 0.05)):  # bounded: three janitor rounds
            if not server.hub.streams:
                break
            await asyncio.sleep(0.05)
        assert server.hub.streams == {}, "streams outlived publisher_grace=0"
        assert not log.problems, log.report()
        assert state.examples >= state.expect, "hypothesis ran too few examples"
        statuses = dict(sorted(state.statuses.items()))
        print(f"\n{state.examples} examples, statuses {statuses}, self-ended {state.self_ended}")


@pytest.fixture
async def fuzz(make_server: Any) -> AsyncIterator[Fuzz]:
    async for state in _fuzz_server(make_server):
        yield state


@pytest.fixture
async def fuzz_auth(make_server: Any) -> AsyncIterator[Fuzz]:
    """Bearer tokens on both endpoints and one allowed Origin: auth and CORS paths run too."""
    servers = _fuzz_server(
        make_server,
        publish_token="pub-secret",
        viewer_token="view-secret",
        allow_origins=["https://ok.example"],
    )
    async for state in servers:
        yield state


@dataclass
class LiveSession:
    role: str
    location: str
    etag: str
    ufrag: str
    pwd: str
    pc: RTCPeerConnection

    @property
    def id(self) -> str:
        return self.location.rsplit("/", 1)[1]


async def connect(fuzz: Fuzz, role: str) -> LiveSession:
    """A trickle ICE session, connected: PATCHed candidates then reach a live ICE agent."""
    pc, offer = await aiortc_offer(role, trickle=True)
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def _() -> None:
        if pc.connectionState == "connected":
            connected.set()

    try:
        response = await fuzz.request(
            "POST", f"/{role}/fuzz-{role}", content=offer, headers={"Content-Type": SDP}
        )
        assert response.status_code == 201, response.text
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        await asyncio.wait_for(connected.wait(), 10)
    except BaseException:
        await pc.close()
        raise
    ufrag, pwd = (re.findall(rf"^a=ice-{k}:(\S+)", offer, re.M)[0] for k in ("ufrag", "pwd"))
    headers = response.headers
    return LiveSession(role, headers["location"], headers["etag"], ufrag, pwd, pc)


@pytest.fixture
async def live(fuzz: Fuzz) -> AsyncIterator[dict[str, LiveSession]]:
    sessions = {role: await connect(fuzz, role) for role in ROLES}
    yield sessions
    for session in sessions.values():
        # Whatever was PATCHed, the ICE/DTLS connection is still up.
        assert fuzz.hub.sessions[session.id].pc.connectionState == "connected"
        assert (await fuzz.request("DELETE", session.location)).status_code == 200
        await session.pc.close()


# --- Properties -----------------------------------------------------------------------------


@fuzz_settings(max_examples=250)
@given(
    role=st.sampled_from(ROLES),
    cross=st.sampled_from([False, False, False, True]),
    name=NAME,
    mutations=MUTATIONS,
    eol=EOL,
    content_type=SDP_TYPES,
)
async def test_mutated_offers_never_5xx(
    fuzz: Fuzz,
    role: str,
    cross: bool,
    name: str,
    mutations: list[tuple[str, int, int, str]],
    eol: str,
    content_type: str,
) -> None:
    fuzz.example(expect=MIN_EXAMPLES)
    base = fuzz.offers[{"whip": "whep", "whep": "whip"}[role] if cross else role]
    body = mutate(base.splitlines(), mutations, eol)
    headers = {"Content-Type": content_type}
    response = await fuzz.request("POST", f"/{role}/{name}", content=body, headers=headers)
    try:
        assert response.status_code in (201, 400, 415, 422), response.text
        if response.status_code != 201:
            assert response.headers["content-type"] == "application/problem+json"
    finally:
        await fuzz.delete_created(response, role, name)
    fuzz.assert_clean()


@fuzz_settings(max_examples=200)
@given(
    role=st.sampled_from(ROLES),
    name=NAME,
    body=RANDOM_BODY,
    content_type=mostly(st.just(SDP), CONTENT_TYPE),
)
async def test_random_bodies_never_5xx(
    fuzz: Fuzz, role: str, name: str, body: bytes, content_type: str | None
) -> None:
    fuzz.example(expect=MIN_EXAMPLES)
    headers = {} if content_type is None else {"Content-Type": header_safe(content_type)}
    response = await fuzz.request("POST", f"/{role}/{name}", content=body, headers=headers)
    await fuzz.delete_created(response, role, name)
    assert response.status_code in (400, 415, 422), response.text
    fuzz.assert_clean()


@fuzz_settings(max_examples=250)
@given(
    role=st.sampled_from(ROLES),
    body=mostly(
        st.tuples(FRAGMENT, MUTATIONS, EOL).map(lambda t: mutate(fragment_lines(t[0]), *t[1:])),
        RANDOM_BODY,
    ),
    content_type=mostly(st.just(SDPFRAG), CONTENT_TYPE),
    if_match=IF_MATCH,
)
async def test_mutated_sdpfrag_patches_never_5xx(
    fuzz: Fuzz,
    live: dict[str, LiveSession],
    role: str,
    body: bytes,
    content_type: str | None,
    if_match: str | None,
) -> None:
    fuzz.example(expect=MIN_EXAMPLES)
    session = live[role]
    for placeholder, value in (("@UFRAG@", session.ufrag), ("@PWD@", session.pwd)):
        body = body.replace(placeholder.encode(), value.encode())
    headers: dict[str, str | bytes] = {}
    if content_type is not None:
        headers["Content-Type"] = header_safe(content_type)
    if if_match is not None:
        headers["If-Match"] = header_safe(if_match.replace("@ETAG@", session.etag.strip('"')))
    response = await fuzz.request("PATCH", session.location, content=body, headers=headers)
    assert response.status_code in (204, 400, 412, 415, 422), response.text
    # Nothing a PATCH carries ends the session or changes its ICE session (no restarts).
    assert (await fuzz.request("GET", session.location)).status_code == 200
    assert fuzz.hub.sessions[session.id].etag == session.etag
    fuzz.assert_clean([s.id for s in live.values()])


ROUTES = ["/whip/{name}", "/whep/{name}", "/whip/{name}/{id}", "/whep/{name}/{id}", "/"]
ROUTES += ["/healthz", "/readyz", "/metrics", "/api/streams", "/api/streams/{name}"]
SEGMENT = st.one_of(
    st.sampled_from(["whip", "whep", "api", "streams", "healthz", "", ".", "..", "%00", "%2F"]),
    st.sampled_from(["%FF", "%", "%zz", "%C3%A9", "%F0%9F%92%A9", "x%00y", "a;b", "~", "*"]),
    st.from_regex(r"[A-Za-z0-9._~!$&'()*+,;=:@-]{1,30}", fullmatch=True),
    st.integers(65, 20000).map(lambda n: "a" * n),
)
RANDOM_PATH = st.lists(SEGMENT, min_size=0, max_size=5).map(lambda parts: "/" + "/".join(parts))
PATH = mostly(
    st.builds(
        lambda route, name, sid: route.format(name=name, id=sid),
        st.sampled_from(ROUTES),
        mostly(NAME, SEGMENT),
        mostly(st.from_regex(r"[A-Za-z0-9_-]{22}", fullmatch=True), SEGMENT),
    ),
    st.one_of(
        st.sampled_from(["/whip/", "/whep/", "/whip/a/b/c", "/whep/a/b/c/d", "//", "/whip//x"]),
        RANDOM_PATH,
    ),
)
METHOD = mostly(
    st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "PATCH", "POST", "OPTIONS", "TRACE"]),
    st.one_of(
        st.sampled_from(["CONNECT", "FOO", "PROPFIND", "M-SEARCH"]),
        st.from_regex(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}", fullmatch=True),
    ),
)
OPTIONAL_HEADERS = st.dictionaries(
    st.sampled_from(
        ["Origin", "Access-Control-Request-Method", "Authorization", "If-Match", "Accept"]
    ),
    st.one_of(
        st.sampled_from(["https://ok.example", "null", "Bearer pub-secret", "Bearer view-secret"]),
        st.sampled_from(["Bearer", "bearer  pub-secret ", "Basic x", "POST", "*"]),
        HEADER_VALUE,
    ),
    max_size=3,
)


@fuzz_settings(max_examples=300)
@given(
    method=METHOD,
    path=PATH,
    query=st.one_of(st.just(""), st.from_regex(r"\?[A-Za-z0-9=&%]{0,20}", fullmatch=True)),
    headers=OPTIONAL_HEADERS,
    content_type=CONTENT_TYPE,
    body=st.one_of(st.just(b""), st.binary(max_size=200)),
)
async def test_any_method_at_any_path_never_5xx(
    fuzz_auth: Fuzz,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str | bytes],
    content_type: str | None,
    body: bytes,
) -> None:
    fuzz = fuzz_auth
    fuzz.example(expect=MIN_EXAMPLES)
    headers = {k: header_safe(v) for k, v in headers.items()}
    if content_type is not None:
        headers["Content-Type"] = header_safe(content_type)
    response = await fuzz.request(method, path + query, content=body, headers=headers)
    if response.status_code == 201:  # a random body is never an offer, but be safe
        await fuzz.request("DELETE", response.headers["location"], headers=headers)
    fuzz.assert_clean()


EVERY_METHOD = ["GET", "HEAD", "PUT", "PATCH", "POST", "OPTIONS", "TRACE", "CONNECT", "FOO"]
EVERY_PATH = ["/whip/x/AAAAAAAAAAAAAAAAAAAAAA", "/whep/x/AAAAAAAAAAAAAAAAAAAAAA", "/whip/x"]
EVERY_PATH += ["/whep/x", "/", "/healthz", "/readyz", "/metrics", "/api/streams"]
EVERY_PATH += ["/api/streams/x", "/whip/", "/whip/a/b/c", "/whip/%00", "/whep/" + "a" * 5000]


async def test_every_method_at_every_route(fuzz: Fuzz) -> None:
    """The deterministic core of the property above, on a live session's URL too."""
    created = await fuzz.request(
        "POST", "/whep/x", content=fuzz.offers["whep"], headers={"Content-Type": SDP}
    )
    assert created.status_code == 201, created.text
    session = created.headers["location"]
    for path in [session, *EVERY_PATH]:
        for method in [*EVERY_METHOD, "DELETE"]:  # DELETE last: it ends the live session
            fuzz.example()
            await fuzz.request(method, path)  # < 500, and a 405 names what is allowed
    assert (await fuzz.request("GET", session)).status_code == 404
    fuzz.assert_clean()


# --- Huge bodies ----------------------------------------------------------------------------


async def chunks(size: int, piece: int = 65536) -> AsyncIterator[bytes]:
    """`size` bytes sent chunked (no Content-Length)."""
    for start in range(0, size, piece):
        yield b"a" * min(piece, size - start)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_huge_bodies_get_413_and_the_server_stays_up(fuzz: Fuzz, chunked: bool) -> None:
    limit = fuzz.server.app.state.settings.max_body_bytes
    # A real (unconnected) session to PATCH.
    created = await fuzz.request(
        "POST", "/whep/big", content=fuzz.offers["whep"], headers={"Content-Type": SDP}
    )
    assert created.status_code == 201, created.text
    session = created.headers["location"]
    targets = [("POST", "/whip/big", SDP), ("POST", "/whep/big", SDP), ("PATCH", session, SDPFRAG)]
    for size, status in ((200_000, 413), (2_000_000, 413), (limit + 1, 413), (limit, 400)):
        for method, url, media_type in targets:
            content: bytes | AsyncIterator[bytes] = chunks(size) if chunked else b"a" * size
            fuzz.example()
            response = await fuzz.request(
                method, url, content=content, headers={"Content-Type": media_type}
            )
            assert response.status_code == status, (method, url, size, response.text)
            assert (await fuzz.request("GET", "/healthz")).status_code == 200
            assert (await fuzz.request("GET", session)).status_code == 200
    assert len(fuzz.hub.sessions) == 1
    assert (await fuzz.request("DELETE", session)).status_code == 200
    fuzz.assert_clean()


# --- Regressions found by fuzzing ---------------------------------------------------------


async def test_client_disconnect_mid_body_is_not_a_server_error(fuzz: Fuzz) -> None:
    port = int(fuzz.server.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /whip/cut HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
        b"Content-Length: 100\r\n\r\nv=0\r\n"
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.wait_for(reader.read(), REQUEST_TIMEOUT)
    await asyncio.sleep(0.2)
    problems, fuzz.log.problems = fuzz.log.problems[:], []
    assert not problems, fuzz.log.report()


@pytest.mark.parametrize("url", ["/whip/x", "/whep/x/abc"])
async def test_allow_lists_only_methods_that_are_allowed(fuzz: Fuzz, url: str) -> None:
    response = await fuzz.request("FOO", url)
    assert response.status_code == 405
    for method in response.headers["allow"].split(", "):
        assert (await fuzz.request(method, url)).status_code != 405, (method, response.headers)
