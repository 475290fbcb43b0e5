"""Simulcast in SDP: RTP stream identifiers (RFC 8851) and a=simulcast (RFC 8853).

Pure parsing, validation and answer building for one media section of a WHIP offer. A
publisher that sends simulcast describes each encoding with ``a=rid:<id> send [...]`` and
lists them with ``a=simulcast:send <list>``; the answerer accepts them by echoing
``a=rid:<id> recv`` and ``a=simulcast:recv <list>`` (RFC 8853 §5.3). aiortc 1.16 neither
parses nor writes these attributes, so broadcast.media adds the answer lines built here.

Every problem raises `InvalidSimulcast` (HTTP 400) with a message naming the rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from broadcast.errors import InvalidSimulcast

__all__ = [
    "MAX_LAYERS",
    "RID",
    "RidDescription",
    "Simulcast",
    "add_answer_lines",
    "parse_rid",
    "parse_simulcast",
    "section_simulcast",
]

# RFC 8851 §10: rid-id = 1*(alpha-numeric / "-" / "_"); 255 is RFC 8852 §3.3's SDES limit.
RID = re.compile(r"[A-Za-z0-9_-]{1,255}")
MAX_LAYERS = 8
"""More encodings than any encoder sends (Chromium: 3, OBS 32.1: up to 4)."""

# RFC 8851 §10: rid-param-other = 1*(alpha-numeric / "-") ["=" param-val], and
# param-val = *(%x20-3A / %x3C-7E): any printable character except ";".
_PARAM = re.compile(r"([A-Za-z0-9-]+)(?:=([ -:<-~]*))?")
_NUMERIC = {"max-width", "max-height", "max-fs", "max-br", "max-pps"}
_DECIMAL = {"max-fps", "max-bpp"}
_DECIMAL_VALUE = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,6})?")


@dataclass(frozen=True, slots=True)
class RidDescription:
    """One ``a=rid`` line (RFC 8851 §4)."""

    rid: str
    direction: str  # "send" or "recv"
    payload_types: tuple[int, ...] = ()
    restrictions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Simulcast:
    """The simulcast streams of one media section, in the offer's order.

    `streams` holds one tuple per simulcast stream (RFC 8853 §5.1: separated by ";"), each
    listing its alternative rids (separated by ","), with the paused ones ("~") in `paused`.
    """

    direction: str
    streams: tuple[tuple[str, ...], ...]
    paused: frozenset[str] = frozenset()
    rids: tuple[RidDescription, ...] = ()

    @property
    def layers(self) -> tuple[str, ...]:
        """Every rid the list names, in order: each one can become a layer."""
        return tuple(rid for stream in self.streams for rid in stream)

    def answer_lines(self) -> list[str]:
        """``a=rid:<id> recv`` per layer and ``a=simulcast:recv`` with the same list.

        RFC 8853 §5.3: the answer reverses the direction and may keep the whole list; the
        rid lines carry no restrictions, so the publisher's own stay in force (RFC 8851 §6).
        """
        return [f"a=rid:{rid} recv" for rid in self.layers] + [
            f"a=simulcast:recv {self.stream_list()}"
        ]

    def stream_list(self) -> str:
        return ";".join(
            ",".join(("~" if rid in self.paused else "") + rid for rid in stream)
            for stream in self.streams
        )


def parse_rid(value: str, payload_types: Iterable[int] | None = None) -> RidDescription:
    """Parse the value of ``a=rid:`` (RFC 8851 §10 grammar).

    `payload_types`: the m-line's formats; a ``pt=`` restriction must name only those
    (RFC 8851 §4).
    """
    rid, _, rest = value.partition(" ")
    if not RID.fullmatch(rid):
        raise InvalidSimulcast(
            f"a=rid:{rid[:40]!r}: a rid is 1-255 letters, digits, '-' or '_' (RFC 8851 §10)"
        )
    direction, _, params = rest.partition(" ")
    if direction not in ("send", "recv"):
        raise InvalidSimulcast(f"a=rid:{rid} needs the direction send or recv (RFC 8851 §10)")
    pts: tuple[int, ...] = ()
    restrictions: dict[str, str] = {}
    for index, piece in enumerate(params.split(";") if params else ()):
        match = _PARAM.fullmatch(piece)
        if match is None:
            raise InvalidSimulcast(f"a=rid:{rid}: {piece[:40]!r} is not a restriction")
        key, val = match[1], match[2]
        if key == "pt":
            if index != 0 or val is None:
                raise InvalidSimulcast(f"a=rid:{rid}: pt=<list> must come first (RFC 8851 §10)")
            pts = _payload_types(rid, val, payload_types)
            continue
        if key in restrictions:
            raise InvalidSimulcast(f"a=rid:{rid}: {key} is given twice")
        if key in _NUMERIC and (val is None or not val.isdigit() or len(val) > 10):
            raise InvalidSimulcast(f"a=rid:{rid}: {key} takes an integer (RFC 8851 §5)")
        if key in _DECIMAL and (val is None or not _DECIMAL_VALUE.fullmatch(val)):
            raise InvalidSimulcast(f"a=rid:{rid}: {key} takes a number (RFC 8851 §5)")
        restrictions[key] = val or ""
    return RidDescription(rid, direction, pts, restrictions)


def _payload_types(rid: str, text: str, allowed: Iterable[int] | None) -> tuple[int, ...]:
    pts: list[int] = []
    for item in text.split(","):
        if not item.isdigit() or len(item) > 3 or int(item) > 127:
            raise InvalidSimulcast(f"a=rid:{rid}: pt= lists payload types 0-127 (RFC 8851 §10)")
        pts.append(int(item))
    if allowed is not None:
        offered = set(allowed)
        for pt in pts:
            if pt not in offered:
                raise InvalidSimulcast(f"a=rid:{rid}: pt={pt} is not on the m= line (RFC 8851 §4)")
    return tuple(pts)


def parse_simulcast(
    value: str,
) -> tuple[tuple[str, tuple[tuple[str, ...], ...], frozenset[str]], ...]:
    """Parse the value of ``a=simulcast:`` (RFC 8853 §5.1 grammar).

    Returns one (direction, streams, paused) per direction given ("send", "recv" or both).
    """
    words = value.split(" ")
    if len(words) not in (2, 4):
        raise InvalidSimulcast("a=simulcast must read 'send <rid>;<rid>...' (RFC 8853 §5.1)")
    parts: list[tuple[str, tuple[tuple[str, ...], ...], frozenset[str]]] = []
    for direction, text in zip(words[::2], words[1::2], strict=True):
        if direction not in ("send", "recv") or any(direction == p[0] for p in parts):
            raise InvalidSimulcast(
                f"a=simulcast: {direction[:20]!r} must be send or recv, once each (RFC 8853 §5.1)"
            )
        streams: list[tuple[str, ...]] = []
        paused: set[str] = set()
        for stream in text.split(";"):
            alternatives: list[str] = []
            for item in stream.split(","):
                rid = item.removeprefix("~")
                if not RID.fullmatch(rid):
                    raise InvalidSimulcast(
                        f"a=simulcast: {item[:40]!r} is not a rid, or '~' and a rid (RFC 8853 §5.1)"
                    )
                if rid != item:
                    paused.add(rid)
                alternatives.append(rid)
            streams.append(tuple(alternatives))
        parts.append((direction, tuple(streams), frozenset(paused)))
    return tuple(parts)


def section_simulcast(
    rid_values: Sequence[str],
    simulcast_values: Sequence[str],
    payload_types: Iterable[int] | None = None,
) -> Simulcast | None:
    """Validate the a=rid and a=simulcast values of one media section of a WHIP offer.

    None when the section has no a=simulcast: any a=rid lines then only restrict the one
    stream (RFC 8851 §4), and the answer leaves them out, which RFC 8851 §6.4 allows.
    """
    allowed = None if payload_types is None else tuple(payload_types)
    rids = [parse_rid(value, allowed) for value in rid_values]
    by_id: dict[str, RidDescription] = {}
    for description in rids:
        if description.rid in by_id:
            raise InvalidSimulcast(f"a=rid:{description.rid} is defined twice (RFC 8851 §4)")
        by_id[description.rid] = description
    if not simulcast_values:
        return None
    if len(simulcast_values) > 1:
        raise InvalidSimulcast("more than one a=simulcast in a media section (RFC 8853 §5.1)")
    parts = parse_simulcast(simulcast_values[0])
    if any(direction == "recv" for direction, _, _ in parts):
        raise InvalidSimulcast(
            "a WHIP offer sends media: a=simulcast takes 'send', not 'recv' (RFC 9725 §4.2)"
        )
    _, streams, paused = parts[0]
    listed = [rid for stream in streams for rid in stream]
    if len(listed) > MAX_LAYERS:
        raise InvalidSimulcast(f"a=simulcast lists more than {MAX_LAYERS} rids")
    seen: set[str] = set()
    for rid in listed:
        if rid in seen:
            raise InvalidSimulcast(f"a=simulcast names rid {rid} twice (RFC 8853 §5.1)")
        seen.add(rid)
        described = by_id.get(rid)
        if described is None or described.direction != "send":
            raise InvalidSimulcast(
                f"a=simulcast names rid {rid}, which has no 'a=rid:{rid} send' (RFC 8853 §5.1)"
            )
    return Simulcast("send", streams, paused, tuple(by_id[rid] for rid in listed))


def add_answer_lines(answer: str, simulcast: Mapping[int, Simulcast]) -> str:
    """Add each section's answer lines at the end of that media section of `answer`.

    The answer has the offer's media sections in the offer's order (RFC 3264 §6), so the
    m-line index names the same section in both. Without simulcast the text is unchanged.
    """
    if not simulcast:
        return answer
    newline = "\r\n" if "\r\n" in answer else "\n"
    lines = answer.split(newline)
    trailing = lines[-1] == ""
    if trailing:
        lines.pop()
    out: list[str] = []
    index = -1
    for line in lines:
        if line.startswith("m="):
            if index in simulcast:
                out += simulcast[index].answer_lines()
            index += 1
        out.append(line)
    if index in simulcast:
        out += simulcast[index].answer_lines()
    return newline.join(out) + (newline if trailing else "")
