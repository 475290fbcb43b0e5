"""RFC 8840 ``application/trickle-ice-sdpfrag`` bodies, as WHIP and WHEP PATCH use them.

RFC 9725 §4.3 (WHIP) and draft-ietf-wish-whep reuse the SDP fragment of RFC 8840 §9 for trickle
ICE and ICE restarts over HTTP PATCH. A fragment is a handful of SDP lines::

    a=ice-ufrag:EsAw                       credentials of the ICE session (session level)
    a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1
    m=audio 9 RTP/AVP 0                    a dummy m-line opens each media section...
    a=mid:0                                ...which a=mid identifies
    a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host
    a=end-of-candidates

Errors: `parse_sdpfrag` raises `MalformedSdpFrag` (400) for a body the client must fix; the
builder raises `ValueError` for bad server-side input (a bug, never the client's fault).
`candidate_problem`, `ice_ufrag_problem`, `ice_pwd_problem` and `sdp_lines` serve `offer.py` too.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from broadcast.errors import BadRequest, MalformedSdpFrag

__all__ = [
    "MAX_CANDIDATES",
    "MAX_SDPFRAG_LINES",
    "FragMedia",
    "SdpFrag",
    "candidate_problem",
    "ice_pwd_problem",
    "ice_ufrag_problem",
    "parse_sdpfrag",
    "sdp_lines",
]

MAX_CANDIDATES = 64
"""More candidates than this in one PATCH is abuse, not trickle ICE."""

MAX_SDPFRAG_LINES = 512
"""Bounds the work one PATCH can cause; the HTTP layer caps the body size too (413)."""

# RFC 8839 §5.4: ice-char = ALPHA / DIGIT / "+" / "/"
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_DIGITS = re.compile(r"[0-9]{1,10}")
# RFC 9110 §5.6.2 token: what RFC 8839 §5.1 calls transport-extension / token
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*\.?")
# Printable ASCII, no controls: also what keeps str.split() and str.splitlines() predictable.
_LINE = re.compile(r"([a-z])=([\x20-\x7e]*)")
# C0/C1 controls but tab, DEL, line/paragraph separators and lone surrogates.
_BAD_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def ice_ufrag_problem(value: str) -> str | None:
    """Why `value` is not a valid ice-ufrag (RFC 8839 §5.4), or None."""
    if not 4 <= len(value) <= 256:
        return f"ice-ufrag must be 4 to 256 characters, got {len(value)} (RFC 8839 §5.4)"
    if not _ICE_CHARS.fullmatch(value):
        return "ice-ufrag may only contain letters, digits, '+' and '/' (RFC 8839 §5.4)"
    return None


def ice_pwd_problem(value: str) -> str | None:
    """Why `value` is not a valid ice-pwd (RFC 8839 §5.4), or None."""
    if not 22 <= len(value) <= 256:
        return f"ice-pwd must be 22 to 256 characters, got {len(value)} (RFC 8839 §5.4)"
    if not _ICE_CHARS.fullmatch(value):
        return "ice-pwd may only contain letters, digits, '+' and '/' (RFC 8839 §5.4)"
    return None


def _address_ok(value: str) -> bool:
    # RFC 8839 §5.1 connection-address: IPv4, IPv6 or FQDN (mDNS "<uuid>.local" included).
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return len(value) <= 253 and _HOSTNAME.fullmatch(value) is not None
    return True


def _port_ok(value: str) -> bool:
    return _DIGITS.fullmatch(value) is not None and int(value) <= 65535


def candidate_problem(value: str) -> str | None:
    """Why `value` (the part after ``candidate:``) is not an ICE candidate, or None.

    RFC 8839 §5.1: foundation SP component-id SP transport SP priority SP connection-address
    SP port SP "typ" SP cand-type [SP "raddr" SP address] [SP "rport" SP port]
    *(SP extension-att-name SP extension-att-value). Whatever passes, aiortc's
    ``candidate_from_sdp`` parses without raising.
    """
    if not value.isascii() or not value.isprintable():
        return "candidate must be printable ASCII"
    bits = value.split(" ")
    if len(bits) < 8 or "" in bits:
        return (
            "candidate must read '<foundation> <component> <transport> <priority> <address>"
            " <port> typ <type>' separated by single spaces (RFC 8839 §5.1)"
        )
    foundation, component, transport, priority, address, port, typ, cand_type = bits[:8]
    if not (len(foundation) <= 32 and _ICE_CHARS.fullmatch(foundation)):
        return f"candidate foundation {foundation!r} must be 1 to 32 ice-chars (RFC 8839 §5.1)"
    if not (_DIGITS.fullmatch(component) and 1 <= int(component) <= 256):
        return f"candidate component-id {component!r} must be 1 to 256 (RFC 8839 §5.1)"
    if not _TOKEN.fullmatch(transport):
        return f"candidate transport {transport!r} is not a token (RFC 8839 §5.1)"
    if not (_DIGITS.fullmatch(priority) and 1 <= int(priority) <= 2**31 - 1):
        return f"candidate priority {priority!r} must be 1 to 2^31-1 (RFC 8839 §5.1)"
    if not _address_ok(address):
        return f"candidate address {address!r} is not an IP address or host name"
    if not _port_ok(port):
        return f"candidate port {port!r} must be 0 to 65535"
    if typ != "typ" or not _TOKEN.fullmatch(cand_type):
        return "candidate must carry 'typ <host|srflx|prflx|relay>' after the port"
    rest = bits[8:]
    if len(rest) % 2:
        return "candidate extensions must come as '<name> <value>' pairs (RFC 8839 §5.1)"
    for name, ext in zip(rest[::2], rest[1::2], strict=True):
        if name == "raddr" and not _address_ok(ext):
            return f"candidate raddr {ext!r} is not an IP address or host name"
        if name == "rport" and not _port_ok(ext):
            return f"candidate rport {ext!r} must be 0 to 65535"
    return None


@dataclass(frozen=True, slots=True)
class FragMedia:
    """One media section of a fragment."""

    mid: str | None
    mline_index: int
    """Position of the m-line within the fragment (the fragment names m-lines by a=mid)."""
    candidates: tuple[str, ...]
    """Candidate attribute values after ``candidate:``, as ``candidate_from_sdp`` expects."""
    end_of_candidates: bool


@dataclass(frozen=True, slots=True)
class SdpFrag:
    """A parsed ``application/trickle-ice-sdpfrag`` body."""

    ice_ufrag: str | None
    ice_pwd: str | None
    ice_options: tuple[str, ...]
    media: tuple[FragMedia, ...]
    end_of_candidates: bool = False
    """Session-level a=end-of-candidates: it applies to every media section."""

    @property
    def is_ice_restart(self) -> bool:
        """True when the body carries credentials: compare them with the current ones.

        whip-whep.js sends the current ufrag/pwd with every trickle PATCH, so equal
        credentials mean trickle, different ones an ICE restart (RFC 8839 §4.4.3.1.1).
        """
        return self.ice_ufrag is not None and self.ice_pwd is not None

    @property
    def candidates(self) -> tuple[tuple[str | None, int, str], ...]:
        """Every candidate as (mid, mline_index, value), in body order."""
        return tuple((m.mid, m.mline_index, c) for m in self.media for c in m.candidates)

    @property
    def has_end_of_candidates(self) -> bool:
        return self.end_of_candidates or any(m.end_of_candidates for m in self.media)


class _Section:
    __slots__ = ("candidates", "end", "mid")

    def __init__(self) -> None:
        self.mid: str | None = None
        self.candidates: list[str] = []
        self.end = False


def sdp_lines(
    body: str | bytes, error: type[BadRequest], *, ascii_only: bool, max_lines: int
) -> list[str]:
    """Split an SDP body into lines: CRLF or LF, trailing empty lines dropped (RFC 8866 §5).

    Raises `error` for text that is not ASCII (or UTF-8 unless `ascii_only`), for control
    characters (so nothing str.splitlines() splits on survives) and past `max_lines` lines.
    """
    if isinstance(body, bytes):
        try:
            body = body.decode("ascii" if ascii_only else "utf-8")
        except UnicodeDecodeError:
            raise error(f"the body must be {'ASCII' if ascii_only else 'UTF-8'} text") from None
    if ascii_only and not body.isascii():
        raise error("the body must be ASCII text")
    lines = [line[:-1] if line.endswith("\r") else line for line in body.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) > max_lines:
        raise error(f"the body has more than {max_lines} lines")
    for lineno, line in enumerate(lines, 1):
        if _BAD_CHARS.search(line):
            raise error(f"line {lineno}: control characters are not allowed; end lines with CRLF")
    return lines


def _credential(current: str | None, value: str, check: str | None, name: str, lineno: int) -> str:
    if check is not None:
        raise MalformedSdpFrag(f"line {lineno}: {check}")
    if current is not None and current != value:
        raise MalformedSdpFrag(
            f"line {lineno}: conflicting a={name} values; a fragment describes one ICE session"
        )
    return value


def parse_sdpfrag(body: str | bytes) -> SdpFrag:
    """Parse a trickle ICE / ICE restart PATCH body (RFC 8840 §9.2 grammar, RFC 9725 §4.3).

    Raises `MalformedSdpFrag` for anything a client must fix; never anything else.
    Unknown attributes and line types are ignored (RFC 8866 §5).
    """
    lines = sdp_lines(body, MalformedSdpFrag, ascii_only=True, max_lines=MAX_SDPFRAG_LINES)
    if not lines:
        raise MalformedSdpFrag("empty body: send a=ice-ufrag/a=ice-pwd and/or a=candidate lines")
    ufrag: str | None = None
    pwd: str | None = None
    options: list[str] = []
    session_end = False
    sections: list[_Section] = []
    count = 0
    for lineno, line in enumerate(lines, 1):
        match = _LINE.fullmatch(line)
        if match is None:
            raise MalformedSdpFrag(
                f"line {lineno}: expected '<letter>=<value>' in printable ASCII, got {line[:40]!r}"
            )
        kind, value = match.groups()
        if kind == "m":
            if not value or value.startswith(" "):
                raise MalformedSdpFrag(f"line {lineno}: m= line needs a media type")
            sections.append(_Section())
            continue
        if kind != "a":
            continue
        name, colon, attr = value.partition(":")
        section = sections[-1] if sections else None
        if name == "ice-ufrag":
            ufrag = _credential(ufrag, attr, ice_ufrag_problem(attr), name, lineno)
        elif name == "ice-pwd":
            pwd = _credential(pwd, attr, ice_pwd_problem(attr), name, lineno)
        elif name == "ice-options":
            # RFC 8839 §5.6: ice-options = ice-option-tag *(SP ice-option-tag)
            for tag in attr.split():
                if tag not in options:
                    options.append(tag)
        elif name == "candidate":
            if section is None:
                raise MalformedSdpFrag(
                    f"line {lineno}: a=candidate must follow an m= line and a=mid (RFC 8840 §9)"
                )
            problem = candidate_problem(attr) if colon else "a=candidate needs a value"
            if problem is not None:
                raise MalformedSdpFrag(f"line {lineno}: {problem}")
            count += 1
            if count > MAX_CANDIDATES:
                raise MalformedSdpFrag(f"more than {MAX_CANDIDATES} candidates in one PATCH")
            section.candidates.append(attr)
        elif name == "end-of-candidates":
            if section is None:
                session_end = True
            else:
                section.end = True
        elif name == "mid":
            if section is None:
                raise MalformedSdpFrag(f"line {lineno}: a=mid must follow an m= line")
            if not colon or not attr or " " in attr:
                raise MalformedSdpFrag(f"line {lineno}: a=mid needs an identification tag")
            if section.mid is not None:
                raise MalformedSdpFrag(f"line {lineno}: second a=mid in one media section")
            section.mid = attr
    if (ufrag is None) != (pwd is None):
        raise MalformedSdpFrag("a=ice-ufrag and a=ice-pwd must be sent together (RFC 8839 §5.4)")
    mids = [s.mid for s in sections if s.mid is not None]
    if len(mids) != len(set(mids)):
        raise MalformedSdpFrag("the same a=mid appears in two media sections")
    media = tuple(
        FragMedia(s.mid, index, tuple(s.candidates), s.end) for index, s in enumerate(sections)
    )
    return SdpFrag(ufrag, pwd, tuple(options), media, session_end)
