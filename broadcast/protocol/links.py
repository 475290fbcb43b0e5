"""``Link`` header values for WHIP/WHEP responses (RFC 8288), and a parser for them.

RFC 9725 §4.6 advertises STUN/TURN servers as ``rel="ice-server"`` links, with credentials
for TURN; §4.9 (and the WHEP draft) advertise each supported extension as a link whose
``rel`` is its URN::

    Link: <stun:stun.example.net:3478>; rel="ice-server"
    Link: <turn:turn.example.net?transport=udp>; rel="ice-server"; username="1700000000:whip";
          credential="VpN4C3...="; credential-type="password"

The values are joined with ``", "`` into one header. Real clients parse them crudely:
whip-whep.js splits the header on ``/,\\s+(?=<)/``, each value on ``;``, the key from the value
at the first ``=``, and strips every ``"`` and ``'``. So no value built here contains ``<``,
``>``, ``"``, ``'``, ``;``, ``,``, whitespace or controls: the builders raise ValueError (a
configuration or programming error) rather than escape.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

__all__ = ["extension_link", "ice_server_links", "parse_link_header", "turn_credentials"]

_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")  # RFC 7064 §3.1, RFC 7065 §3.1
# Printable ASCII but space, the characters crude Link parsers split or strip on (",;<>'),
# and the backslash a quoted-string would need to escape.
_SAFE = re.compile(r"[!#-&(-+\--:=?-\[\]-~]+")
_SAFE_PARAM = re.compile(r"[!#-&(-+\--:=?-\[\]-~]+(?:,[!#-&(-+\--:=?-\[\]-~]+)*")
# RFC 9110 §5.6.2 tchar, for parameter names.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_url(url: str) -> str:
    if not _SAFE.fullmatch(url):
        raise ValueError(f"URL {url!r} must be ASCII without spaces or any of <>\"',;\\")
    return url


def _check_value(name: str, value: str, pattern: re.Pattern[str] = _SAFE) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{name} {value!r} must be ASCII without spaces or any of <>\"',;\\")
    return value


def turn_credentials(secret: str, *, ttl: int, now: float, user: str) -> tuple[str, str]:
    """Time-limited TURN credentials (draft-uberti-behave-turn-rest-00 §2.2).

    username = "<expiry unix time>:<user>", credential = base64(HMAC-SHA1(secret, username)):
    what coturn checks with ``use-auth-secret`` / ``static-auth-secret``.
    """
    if ttl <= 0:
        raise ValueError("the TURN credential lifetime must be positive")
    username = f"{int(now) + ttl}:{_check_value('TURN user', user)}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_server_links(
    urls: Sequence[str], *, turn_secret: str | None, turn_ttl: int, now: float, user: str
) -> list[str]:
    """One ``rel="ice-server"`` Link value per URL (RFC 9725 §4.6).

    turn:/turns: URLs get TURN REST API credentials when `turn_secret` is set, all with the
    same username. Join the values with ``", "`` into a single Link header.
    """
    if isinstance(urls, str):
        raise TypeError("urls must be a list of URLs, not one string")
    links = []
    credentials = None
    for url in urls:
        if not url.startswith(_ICE_SCHEMES):
            raise ValueError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL")
        link = f'<{_check_url(url)}>; rel="ice-server"'
        if turn_secret is not None and url.startswith(("turn:", "turns:")):
            if credentials is None:
                credentials = turn_credentials(turn_secret, ttl=turn_ttl, now=now, user=user)
            link += f'; username="{credentials[0]}"; credential="{credentials[1]}"'
            link += '; credential-type="password"'
        links.append(link)
    return links


def extension_link(url: str, urn: str, *, params: Mapping[str, str] | None = None) -> str:
    """``<url>; rel="urn:…"`` advertising a protocol extension (RFC 9725 §4.9).

    `params` adds link parameters, e.g. ``{"events": "active,inactive,layers"}`` for the WHEP
    server-sent-events extension: commas between words are fine there, spaces are not.
    """
    if not urn.lower().startswith("urn:"):
        raise ValueError(f"extension relation {urn!r} must be a URN")
    link = f'<{_check_url(url)}>; rel="{_check_value("URN", urn)}"'
    for name, value in (params or {}).items():
        if not _TOKEN.fullmatch(name) or name.lower() == "rel":
            raise ValueError(f"link parameter name {name!r} is not a token other than rel")
        link += f'; {name}="{_check_value(name, value, _SAFE_PARAM)}"'
    return link


def _skip_spaces(value: str, pos: int) -> int:
    while pos < len(value) and value[pos] in " \t":
        pos += 1
    return pos


def _quoted(value: str, pos: int) -> tuple[str, int]:
    # RFC 9110 §5.6.4: quoted-string with quoted-pair escapes; `pos` is at the opening quote.
    out: list[str] = []
    pos += 1
    while pos < len(value):
        char = value[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\" and pos + 1 < len(value):
            pos += 1
            char = value[pos]
        out.append(char)
        pos += 1
    raise ValueError("unterminated quoted string in Link header")


def parse_link_header(value: str) -> list[tuple[str, dict[str, str]]]:
    """Parse a Link header (RFC 8288 §3) into (target, {param: value}) pairs, in order.

    Parameter names are lower-cased; the first occurrence of a name wins (RFC 8288 §3.3);
    a parameter without a value maps to "". Commas inside quoted strings are kept.
    Raises ValueError on a malformed header.
    """
    links: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while True:
        pos = _skip_spaces(value, pos)
        while pos < len(value) and value[pos] == ",":  # RFC 9110 §5.6.1: empty list elements
            pos = _skip_spaces(value, pos + 1)
        if pos >= len(value):
            return links
        if value[pos] != "<":
            raise ValueError(f"expected '<' at offset {pos} of the Link header")
        end = value.find(">", pos)
        if end < 0:
            raise ValueError("unterminated '<' in Link header")
        target = value[pos + 1 : end]
        params: dict[str, str] = {}
        pos = _skip_spaces(value, end + 1)
        while pos < len(value) and value[pos] == ";":
            pos = _skip_spaces(value, pos + 1)
            match = _TOKEN.match(value, pos)
            if match is None:
                raise ValueError(f"expected a parameter name at offset {pos} of the Link header")
            name, pos = match[0].lower(), _skip_spaces(value, match.end())
            param = ""
            if pos < len(value) and value[pos] == "=":
                pos = _skip_spaces(value, pos + 1)
                if pos < len(value) and value[pos] == '"':
                    param, pos = _quoted(value, pos)
                else:
                    token = _TOKEN.match(value, pos)
                    if token is None:
                        raise ValueError(f"expected a value at offset {pos} of the Link header")
                    param, pos = token[0], token.end()
            params.setdefault(name, param)
            pos = _skip_spaces(value, pos)
        if pos < len(value) and value[pos] != ",":
            raise ValueError(f"expected ',' or ';' at offset {pos} of the Link header")
        links.append((target, params))
