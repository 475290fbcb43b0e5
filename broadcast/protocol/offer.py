"""First-line validation of WHIP/WHEP SDP offers, before aiortc sees them.

aiortc's ``SessionDescription.parse`` raises whatever falls out (AssertionError, KeyError,
ValueError, StopIteration...) on bad input, so `inspect_offer` accepts only what that parser
(aiortc 1.16) handles and what RFC 8866 / JSEP (RFC 9429) call an offer, and summarises it::

    MalformedSdp          400  not SDP, or an offer aiortc cannot parse (RFC 9725 §4.2)
    UnprocessableContent  422  well-formed, but not an offer this server can take (RFC 9725 §4.2)

Two RFC defaults that aiortc 1.16 does not apply itself are reported, not fixed: an offer
without a=setup is ``actpass`` (``setup_explicit=False``; aiortc dereferences a missing DTLS
role), and an m-line without a direction attribute takes the session-level one or ``sendrecv``
(``direction_explicit=False``; aiortc's createAnswer fails on a missing direction).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

from broadcast.errors import MalformedSdp, UnprocessableContent
from broadcast.protocol import sdpfrag
from broadcast.protocol.simulcast import Simulcast, section_simulcast

__all__ = [
    "MAX_MEDIA_SECTIONS",
    "MAX_OFFER_LINES",
    "Direction",
    "OfferCodec",
    "OfferMedia",
    "OfferSummary",
    "Setup",
    "h264_profile",
    "inspect_offer",
]

MAX_OFFER_LINES = 4096
"""More lines is not an offer from any real client: 400 (the HTTP layer also caps bytes)."""
MAX_MEDIA_SECTIONS = 64
"""More m-lines is an unsupported number of streams: 422 (RFC 9725 §4.2)."""

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
Setup = Literal["actpass", "active", "passive"]

_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_TRANSPORT = ("a=ice-ufrag", "a=ice-pwd", "a=fingerprint")
# aiortc.sdp.FMTP_INT_PARAMETERS (1.16): aiortc int()s these fmtp values.
_FMTP_INT_PARAMETERS = "apt max-fr max-fs maxplaybackrate minptime stereo useinbandfec".split()

_LINE = re.compile(r"([a-z])=(.*)")
_ORIGIN = re.compile(r"[!-~]+(?: [!-~]+){5}")
_CONNECTION = re.compile(r"IN IP[46] [!-~]+")  # aiortc: ^IN (IP4|IP6) ([^ ]+)$
_MLINE = re.compile(r"([!-~]+) ([0-9]{1,5}) ([A-Z/]+)((?: [!-~]+)+)")  # aiortc: proto [A-Z/]+
_NUMBER = re.compile(r"[0-9]{1,10}")
_RTPMAP = re.compile(r"([0-9]{1,3}) ([A-Za-z0-9_.-]+)/([0-9]{1,10})(?:/([0-9]{1,2}))?")
_EXTMAP = re.compile(r"([0-9]{1,5})(?:/(?:sendrecv|sendonly|recvonly|inactive))? ([!-~]+)")
# Attributes whose value must match, with the shape to tell the client. Each pattern is at
# least as strict as what aiortc 1.16 int()s, split()s or looks up in that attribute.
_SYNTAX: dict[str, tuple[re.Pattern[str], str]] = {
    name: (re.compile(pattern), shape)
    for name, pattern, shape in (
        ("mid", r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", "<token> (RFC 5888 §4)"),
        ("fingerprint", r"[A-Za-z0-9-]+ [0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})+", "<hash> XX:XX:.."),
        ("setup", r"actpass|active|passive|holdconn", "actpass|active|passive (RFC 4145 §4)"),
        ("rtpmap", _RTPMAP.pattern, "<pt> <name>/<clock>[/<channels>] (RFC 8866 §6.6)"),
        ("fmtp", r"([0-9]{1,3}) (.*)", "<pt> <parameters> (RFC 8866 §6.15)"),
        ("rtcp-fb", r"(\*|[0-9]{1,3}) ([!-~]+(?: [!-~]+)*)", "<pt|*> <type> (RFC 4585 §4.2)"),
        ("extmap", _EXTMAP.pattern, "<id>[/<direction>] <uri> (RFC 8285 §8)"),
        ("rid", r"([A-Za-z0-9_-]{1,255}) (send|recv)(?: .*)?", "<id> send|recv (RFC 8851 §10)"),
        ("simulcast", r".*[!-~].*", "send|recv <rids> (RFC 8853 §5.1)"),
        ("ssrc", r"([0-9]{1,10}) (.*)", "<ssrc> <attribute>:<value> (RFC 5576 §4.1)"),
        ("ssrc-group", r"[!-~]+(?: [0-9]{1,10})*", "<semantics> <ssrc> ... (RFC 5576 §4.2)"),
        ("rtcp", r"[0-9]{1,5}(?: IN IP[46] [!-~]+)?", "<port> [IN IP4 <address>] (RFC 3605)"),
        ("sctp-port", _NUMBER.pattern, "<port> (RFC 8841 §5.2)"),
        ("max-message-size", _NUMBER.pattern, "<bytes> (RFC 8841 §6)"),
        ("sctpmap", r"[0-9]{1,5} .*", "<port> <protocol> ..."),
        ("group", r".*", "<semantics> <mid> ... (RFC 5888 §5)"),
        ("msid-semantic", r".*", "<semantics> ..."),
    )
}


@dataclass(frozen=True, slots=True)
class OfferCodec:
    pt: int
    name: str  # as in a=rtpmap: "H264", "opus", "rtx"...
    clock_rate: int
    channels: int | None  # None when a=rtpmap has none (aiortc then assumes 1 for audio)
    fmtp: dict[str, str] = field(default_factory=dict)
    rtcp_fb: tuple[str, ...] = ()  # a=rtcp-fb values for this pt, wildcard ones included


@dataclass(frozen=True, slots=True)
class OfferMedia:
    kind: str
    mid: str | None
    direction: Direction
    port: int
    proto: str
    codecs: tuple[OfferCodec, ...]  # payload types with an a=rtpmap (aiortc ignores others)
    rids: tuple[str, ...] = ()  # RFC 8851 a=rid:<id> send, in offer order
    simulcast: str | None = None
    extmaps: dict[int, str] = field(default_factory=dict)
    bundle_only: bool = False
    direction_explicit: bool = True
    layers: Simulcast | None = None  # a WHIP offer's validated simulcast (RFC 8853)


@dataclass(frozen=True, slots=True)
class OfferSummary:
    media: tuple[OfferMedia, ...]
    setup: Setup
    has_candidates: bool
    bundle_mids: tuple[str, ...]
    ice_lite: bool
    ice_ufrag: str  # of the transport (first BUNDLE m-line): trickle PATCHes repeat them
    ice_pwd: str
    ice_options: tuple[str, ...] = ()
    setup_explicit: bool = True

    @property
    def audio(self) -> OfferMedia | None:
        return next((m for m in self.media if m.kind == "audio"), None)

    @property
    def video(self) -> OfferMedia | None:
        return next((m for m in self.media if m.kind == "video"), None)

    def simulcast(self) -> dict[int, Simulcast]:
        """Simulcast per media section, keyed by m-line index (WHIP offers only)."""
        return {i: m.layers for i, m in enumerate(self.media) if m.layers is not None}


class _Section:
    def __init__(self, lineno: int, kind: str, port: int, proto: str, fmts: list[str]) -> None:
        self.lineno, self.kind, self.port, self.proto, self.fmts = lineno, kind, port, proto, fmts
        self.mid: str | None = None
        self.direction: str | None = None
        self.ufrag: str | None = None
        self.pwd: str | None = None
        self.setup: str | None = None
        self.simulcast: str | None = None
        self.fingerprint = self.rtcp_mux = self.bundle_only = False
        self.candidates = 0
        self.rtpmap: dict[int, tuple[str, int, int | None]] = {}
        self.fmtp: dict[int, tuple[int, dict[str, str]]] = {}
        self.rtcp_fb: list[tuple[str, str]] = []
        self.rids: list[str] = []
        self.rid_values: list[str] = []
        self.simulcast_values: list[str] = []
        self.extmaps: dict[int, str] = {}
        self.options: list[str] = []
        self.ice_lite = False  # session level only, like bundles
        self.bundles: list[list[str]] = []

    @property
    def name(self) -> str:
        mid = "" if self.mid is None else f", mid {self.mid}"
        return f"m={self.kind} (line {self.lineno}{mid})"


def _bad(lineno: int, message: str) -> MalformedSdp:
    return MalformedSdp(f"line {lineno}: {message}")


def _fmtp_params(text: str, lineno: int) -> dict[str, str]:
    params: dict[str, str] = {}
    for piece in text.split(";"):
        key, eq, value = (part.strip() for part in piece.partition("="))
        if eq and key in _FMTP_INT_PARAMETERS and not _NUMBER.fullmatch(value):
            raise _bad(lineno, f"a=fmtp parameter {key} must be an integer")
        if key:
            params[key] = value
    return params


def _missing(s: _Section, session: _Section) -> str:
    have = (s.ufrag or session.ufrag, s.pwd or session.pwd, s.fingerprint or session.fingerprint)
    return ", ".join(name for name, ok in zip(_TRANSPORT, have, strict=True) if not ok)


def _attribute(s: _Section, name: str, value: str | None, lineno: int) -> None:
    v = value or ""
    match = None
    if name in _SYNTAX:
        match = _SYNTAX[name][0].fullmatch(v) if value is not None else None
        if match is None:
            if name == "extmap" and _EXTMAP.fullmatch(" ".join(v.split(" ")[:2])):
                raise UnprocessableContent(f"line {lineno}: extmap attributes are not supported")
            raise _bad(lineno, f"a={name} must read '{_SYNTAX[name][1]}'")
    if name in _DIRECTIONS:
        if s.direction is not None:
            raise _bad(lineno, "more than one direction attribute")
        s.direction = name
    elif name in ("ice-ufrag", "ice-pwd"):
        check = sdpfrag.ice_ufrag_problem if name == "ice-ufrag" else sdpfrag.ice_pwd_problem
        problem = f"a={name} needs a value" if value is None else check(value)
        if problem is not None:
            raise _bad(lineno, problem)
        setattr(s, "ufrag" if name == "ice-ufrag" else "pwd", value)
    elif name == "ice-options":
        s.options += [o for o in v.split() if o not in s.options]
    elif name == "fingerprint":
        s.fingerprint = True
    elif name == "setup":
        if v == "holdconn":
            raise UnprocessableContent(f"line {lineno}: a=setup:holdconn is not supported")
        s.setup = v
    elif s.lineno == 0:  # the session level
        if name == "ice-lite":
            s.ice_lite = True
        elif name == "group" and v.split()[:1] == ["BUNDLE"]:
            s.bundles.append(v.split()[1:])
    elif name == "candidate":
        problem = sdpfrag.candidate_problem(v) if value is not None else "a=candidate needs a value"
        if problem is not None:
            raise _bad(lineno, problem)
        s.candidates += 1
    elif name == "mid":
        if s.mid is not None:
            raise _bad(lineno, "a second a=mid in one m-line (RFC 5888 §4)")
        s.mid = v
    elif name in ("rtcp-mux", "bundle-only"):
        setattr(s, name.replace("-", "_"), True)
    elif name == "rtpmap" and match:
        if match[1] not in s.fmts or int(match[1]) in s.rtpmap:
            raise _bad(lineno, f"a=rtpmap:{match[1]} is repeated or not on the m= line")
        channels = None if match[4] is None else int(match[4])
        s.rtpmap[int(match[1])] = (match[2], int(match[3]), channels)
    elif name == "fmtp" and match:
        if int(match[1]) in s.fmtp:
            raise _bad(lineno, f"a second a=fmtp:{match[1]}")
        s.fmtp[int(match[1])] = (lineno, _fmtp_params(match[2], lineno))
    elif name == "rtcp-fb" and match:
        s.rtcp_fb.append((match[1], match[2]))
    elif name == "extmap" and match:
        ext_id = int(match[1])
        if not (1 <= ext_id <= 255 or 4096 <= ext_id <= 4351) or ext_id in s.extmaps:
            raise _bad(lineno, f"a=extmap id {ext_id} is out of range or repeated (RFC 8285 §5)")
        s.extmaps[ext_id] = match[2]
    elif name == "rid" and match:
        s.rid_values.append(v)
        if match[2] == "send":
            s.rids.append(match[1])
    elif name == "simulcast":
        s.simulcast = v.strip()
        s.simulcast_values.append(v)
    elif name == "ssrc" and match:
        if int(match[1]) >= 2**32:
            raise _bad(lineno, f"SSRC {match[1]} does not fit 32 bits")
        if ":" not in match[2]:
            raise UnprocessableContent(f"line {lineno}: a=ssrc attributes need a value")


def _parse(lines: list[str]) -> tuple[_Section, list[_Section]]:
    session = _Section(0, "session", 0, "", [])
    sections: list[_Section] = []
    has_origin = False
    for lineno, line in enumerate(lines[1:], 2):
        match = _LINE.fullmatch(line)
        if match is None:
            raise _bad(lineno, f"expected '<letter>=<value>', got {line[:40]!r}")
        kind, value = match.groups()
        current = sections[-1] if sections else session
        if kind == "m":
            m = _MLINE.fullmatch(value)
            if m is None or int(m[2]) > 65535:
                raise _bad(lineno, "an m= line reads 'm=<media> <port> <PROTO> <fmt> ...'")
            fmts = m[4].split(" ")[1:]
            if m[1] in ("audio", "video") and not all(
                re.fullmatch(r"[0-9]{1,3}", f) and int(f) <= 127 and not 72 <= int(f) <= 76
                for f in fmts
            ):
                raise _bad(lineno, "RTP payload types must be 0-127 except 72-76 (RFC 5761 §4)")
            if m[1] == "application" and m[3] == "DTLS/SCTP" and not fmts[0].isdigit():
                raise _bad(lineno, "m=application ... DTLS/SCTP takes an SCTP port number")
            sections.append(_Section(lineno, m[1], int(m[2]), m[3], fmts))
        elif kind == "v":
            raise _bad(lineno, "a second v= line")
        elif kind == "o" and not sections:
            if has_origin or not _ORIGIN.fullmatch(value):
                raise _bad(lineno, "o= takes 6 fields, once (RFC 8866 §5.2)")
            has_origin = True
        elif kind == "c" and not _CONNECTION.fullmatch(value):
            raise _bad(lineno, "c= must read 'IN IP4|IP6 <address>' (RFC 8866 §5.7)")
        elif kind == "a":
            name, colon, attr = value.partition(":")
            _attribute(current, name, attr if colon else None, lineno)
    if not has_origin:
        raise MalformedSdp("the offer has no o= line (RFC 8866 §5.2)")
    if not sections:
        raise MalformedSdp("the offer has no m= line: offer at least one audio or video track")
    for s in sections:
        for pt, (lineno, _) in s.fmtp.items():
            if pt not in s.rtpmap:
                raise _bad(lineno, f"a=fmtp:{pt} has no matching a=rtpmap")
    return session, sections


def _codecs(s: _Section) -> tuple[OfferCodec, ...]:
    codecs = []
    for pt, (name, clock, channels) in s.rtpmap.items():
        feedback = tuple(fb for target, fb in s.rtcp_fb if target in ("*", str(pt)))
        fmtp = s.fmtp[pt][1] if pt in s.fmtp else {}
        codecs.append(OfferCodec(pt, name, clock, channels, fmtp, feedback))
    return tuple(codecs)


def inspect_offer(
    sdp: str | bytes, *, role: Literal["whip", "whep"], video_sections: int = 1
) -> OfferSummary:
    """Validate an offer POSTed to a WHIP (publish) or WHEP (play) endpoint and summarise it.

    Raises only `MalformedSdp` (400) and `UnprocessableContent` (422); see the module doc.
    Codec support is the caller's decision: the summary lists what was offered.
    """
    if role not in ("whip", "whep"):
        raise ValueError(f"role must be 'whip' or 'whep', not {role!r}")
    lines = sdpfrag.sdp_lines(sdp, MalformedSdp, ascii_only=False, max_lines=MAX_OFFER_LINES)
    if not lines or lines[0] != "v=0":
        raise MalformedSdp("an SDP offer starts with the line 'v=0' (RFC 8866 §5.1)")
    if sum(line.startswith("m=") for line in lines) > MAX_MEDIA_SECTIONS:
        raise UnprocessableContent(f"more than {MAX_MEDIA_SECTIONS} m-lines")
    session, sections = _parse(lines)
    mids = [s.mid for s in sections if s.mid is not None]
    if len(mids) != len(set(mids)):
        raise MalformedSdp("two m-lines share an a=mid (RFC 5888 §4)")
    for mid in (mid for bundle in session.bundles for mid in bundle if mid not in mids):
        raise MalformedSdp(f"a=group:BUNDLE names mid {mid!r}, which no m-line has")
    for s in sections:
        if _missing(s, session) and s.port != 0 and not s.bundle_only:
            raise MalformedSdp(f"{s.name} has no {_missing(s, session)} (RFC 8839 §5.4, RFC 8122)")

    # Semantics: RFC 9725 §4.2 "422 Unprocessable Content" for offers we will not take.
    for s in sections:
        if s.kind not in ("audio", "video", "application"):
            raise UnprocessableContent(f"{s.name}: only audio, video and application are supported")
        if s.port == 0 and not s.bundle_only:
            raise UnprocessableContent(f"{s.name} is rejected (port 0); offer only live m-lines")
        if _missing(s, session):  # JSEP (RFC 9429 §5.2.1) leaves them off bundle-only m-lines
            raise UnprocessableContent(f"{s.name} is bundle-only without {_missing(s, session)}")
    for kind in ("audio", "video", "application"):
        # An edge node's upstream asks for one video section per simulcast layer.
        most = video_sections if kind == "video" else 1
        if sum(s.kind == kind for s in sections) > most:
            raise UnprocessableContent(f"more than one {kind} m-line; send one track per kind")
    if not any(s.kind in ("audio", "video") for s in sections):
        raise UnprocessableContent("the offer has neither an audio nor a video m-line")
    if len(session.bundles) > 1:
        raise UnprocessableContent("more than one BUNDLE group; use max-bundle (RFC 9725 §4.4.1)")
    allowed = ("sendonly", "sendrecv") if role == "whip" else ("recvonly", "sendrecv")
    media: list[OfferMedia] = []
    for s in sections:
        direction = s.direction or session.direction or "sendrecv"
        if s.kind != "application":
            if direction not in allowed:
                raise UnprocessableContent(
                    f"{s.name} is {direction}; a {role.upper()} offer must be "
                    f"{' or '.join(allowed)} (RFC 9725 §4.2)"
                )
            if not s.rtcp_mux:
                raise UnprocessableContent(f"{s.name} needs a=rtcp-mux (RFC 9725 §4.4.1)")
        args = (s.kind, s.mid, cast(Direction, direction), s.port, s.proto, _codecs(s))
        extras = (tuple(s.rids), s.simulcast, dict(s.extmaps), s.bundle_only)
        layers = None
        if role == "whip" and s.kind == "video":
            pts = [int(f) for f in s.fmts]
            layers = section_simulcast(s.rid_values, s.simulcast_values, pts)
        explicit = s.direction is not None
        media.append(OfferMedia(*args, *extras, direction_explicit=explicit, layers=layers))
    setups = {s.setup or session.setup for s in sections}
    if len(setups) > 1:
        raise UnprocessableContent("give every m-line the same a=setup (bundled m-lines share one)")
    setup = setups.pop()
    bundle_mids = tuple(session.bundles[0]) if session.bundles else ()
    first = next((s for s in sections if bundle_mids and s.mid == bundle_mids[0]), sections[0])
    options = session.options + [o for s in sections for o in s.options]
    head = (tuple(media), cast(Setup, setup or "actpass"), any(s.candidates for s in sections))
    ice = (first.ufrag or session.ufrag or "", first.pwd or session.pwd or "")
    tail = (tuple(dict.fromkeys(options)), setup is not None)
    return OfferSummary(*head, bundle_mids, session.ice_lite, *ice, *tail)


# RFC 6184 §8.1 Table 5: profile_idc, profile-iop bits (x = either), profile. 64 00001100,
# constrained high, is from H.264 (2012) A.2.4.2, as libwebrtc maps it.
_H264_TABLE = """
42 x1xx0000 constrained-baseline    4D 1xxx0000 constrained-baseline
58 11xx0000 constrained-baseline    42 x0xx0000 baseline
58 10xx0000 baseline                4D 0x0x0000 main
58 00xx0000 extended                64 00000000 high
64 00001100 constrained-high        6E 00000000 high-10
7A 00000000 high-422                F4 00000000 high-444
6E 00010000 high-10-intra           7A 00010000 high-422-intra
F4 00010000 high-444-intra          2C 00010000 cavlc-444-intra
""".split()
_H264_PROFILES = [
    (int(_H264_TABLE[i], 16), _H264_TABLE[i + 1], _H264_TABLE[i + 2])
    for i in range(0, len(_H264_TABLE), 3)
]


def h264_profile(fmtp: Mapping[str, str]) -> str:
    """The H.264 profile an fmtp's profile-level-id names (RFC 6184 §8.1).

    Absent means 42e01f, constrained baseline, as libwebrtc and aiortc assume (RFC 6184 itself
    infers Baseline level 1.0). Raises ValueError for a value that is not 6 hex digits or names
    no known profile: treat that as "codec not supported", not as a malformed offer.
    """
    value = next((v for k, v in fmtp.items() if k.lower() == "profile-level-id"), "42e01f")
    if not re.fullmatch(r"[0-9A-Fa-f]{6}", value):
        raise ValueError(f"profile-level-id {value!r} is not 6 hex digits (RFC 6184 §8.1)")
    idc, iop = int(value[0:2], 16), int(value[2:4], 16)
    bits = f"{iop:08b}"
    for profile_idc, pattern, name in _H264_PROFILES:
        if profile_idc == idc and all(p in ("x", b) for p, b in zip(pattern, bits, strict=True)):
            return name
    raise ValueError(f"profile-level-id {value!r} names no H.264 profile (RFC 6184 §8.1)")
