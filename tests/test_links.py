"""Link header values: ICE servers (RFC 9725 §4.6), extensions (§4.9), RFC 8288 parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcast.protocol import links
from broadcast.protocol.links import (
    extension_link,
    ice_server_links,
    parse_link_header,
    turn_credentials,
)

NOW = 1700000000.5


def whip_js_parse(header: str) -> list[tuple[str, str | None, dict[str, str]]]:
    """What medooze whip-whep.js does with a Link header (whip.js, publish())."""
    out = []
    for item in re.split(r",\s+(?=<)", header):
        parts = item.split(";")
        url = re.sub(r"<(.*)>", r"\1", parts[0].strip()).strip()
        rel, params = None, {}
        for part in parts[1:]:
            key, _, value = part.partition("=")
            value = value.strip().replace('"', "").replace("'", "")
            if key.strip() == "rel":
                rel = value
            else:
                params[key.strip()] = value
        out.append((url, rel, params))
    return out


def test_stun_only() -> None:
    assert ice_server_links(
        ["stun:stun.example.net:3478"], turn_secret=None, turn_ttl=60, now=NOW, user="whip"
    ) == ['<stun:stun.example.net:3478>; rel="ice-server"']


def test_turn_rest_credentials() -> None:
    values = ice_server_links(
        ["stun:stun.example.net", "turn:turn.example.net:3478?transport=udp", "turns:t.example"],
        turn_secret="s3cret",
        turn_ttl=3600,
        now=NOW,
        user="whip",
    )
    # Checked with: printf 1700003600:whip | openssl dgst -sha1 -hmac s3cret -binary | base64
    credential = "4o5AYR1qhfm+noeDQpWwetPQDbo="
    assert values[1] == (
        '<turn:turn.example.net:3478?transport=udp>; rel="ice-server"; '
        f'username="1700003600:whip"; credential="{credential}"; credential-type="password"'
    )
    assert values[2].startswith('<turns:t.example>; rel="ice-server"; username="1700003600:whip"')
    assert values[0] == '<stun:stun.example.net>; rel="ice-server"'
    header = ", ".join(values)
    assert parse_link_header(header)[1] == (
        "turn:turn.example.net:3478?transport=udp",
        {
            "rel": "ice-server",
            "username": "1700003600:whip",
            "credential": credential,
            "credential-type": "password",
        },
    )
    # The crude parser of a popular JS client sees the same thing.
    assert whip_js_parse(header)[1] == (
        "turn:turn.example.net:3478?transport=udp",
        "ice-server",
        {"username": "1700003600:whip", "credential": credential, "credential-type": "password"},
    )


def test_turn_without_secret_has_no_credentials() -> None:
    values = ice_server_links(
        ["turn:turn.example.net"], turn_secret=None, turn_ttl=3600, now=NOW, user="whep"
    )
    assert values == ['<turn:turn.example.net>; rel="ice-server"']


def test_turn_credentials_match_the_rest_api_draft() -> None:
    username, credential = turn_credentials("k", ttl=86400, now=100.9, user="viewer-1")
    assert username == "86500:viewer-1"
    digest = hmac.new(b"k", b"86500:viewer-1", hashlib.sha1).digest()
    assert base64.b64decode(credential) == digest


@pytest.mark.parametrize(
    "url",
    [
        "http://example.net",
        "stun:host name",
        'stun:a"b',
        "stun:a<b",
        "stun:a>b",
        "stun:a,b",
        "stun:a;b",
        "stun:a'b",
        "stun:a\\b",
        "stun:é.example",
        "stun:a\r\nSet-Cookie: x",
    ],
)
def test_unsafe_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        ice_server_links([url], turn_secret=None, turn_ttl=1, now=NOW, user="whip")


@pytest.mark.parametrize("user", ["", "a b", 'a"b', "a;b", "a,b", "a'b", "ü"])
def test_unsafe_users_are_refused(user: str) -> None:
    with pytest.raises(ValueError):
        ice_server_links(["turn:t.example"], turn_secret="s", turn_ttl=1, now=NOW, user=user)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        turn_credentials("s", ttl=0, now=NOW, user="whip")
    with pytest.raises(TypeError):
        ice_server_links("stun:x", turn_secret=None, turn_ttl=1, now=NOW, user="whip")


def test_extension_link() -> None:
    urn = "urn:ietf:params:whep:ext:core:server-sent-events"
    value = extension_link(
        "https://edge.example/whep/s/1/events", urn, params={"events": "active,inactive,layers"}
    )
    assert value == (
        f'<https://edge.example/whep/s/1/events>; rel="{urn}"; events="active,inactive,layers"'
    )
    layer = extension_link("/whep/s/1/layer", "urn:ietf:params:whep:ext:core:layer")
    header = f"{value}, {layer}"
    assert parse_link_header(header) == [
        ("https://edge.example/whep/s/1/events", {"rel": urn, "events": "active,inactive,layers"}),
        ("/whep/s/1/layer", {"rel": "urn:ietf:params:whep:ext:core:layer"}),
    ]
    assert [item[1] for item in whip_js_parse(header)] == [
        urn,
        "urn:ietf:params:whep:ext:core:layer",
    ]


@pytest.mark.parametrize(
    ("url", "urn", "params"),
    [
        ("/x", "http://not-a-urn", None),
        ("/x", "urn:a b", None),
        ("/x", 'urn:a"', None),
        ("/x>", "urn:a", None),
        ("/x", "urn:a", {"rel": "other"}),
        ("/x", "urn:a", {"bad name": "v"}),
        ("/x", "urn:a", {"events": "a, b"}),
        ("/x", "urn:a", {"events": "a;b"}),
        ("/x", "urn:a", {"events": ""}),
    ],
)
def test_extension_link_refuses_unsafe_values(
    url: str, urn: str, params: dict[str, str] | None
) -> None:
    with pytest.raises(ValueError):
        extension_link(url, urn, params=params)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", []),
        (" , ,", []),
        ("<a>", [("a", {})]),
        ("<a>;rel=next", [("a", {"rel": "next"})]),
        ('<a> ; REL = "x y" ; flag', [("a", {"rel": "x y", "flag": ""})]),
        ('<a>; t="q\\"u\\\\o"', [("a", {"t": 'q"u\\o'})]),
        ('<a>; rel="one"; rel="two"', [("a", {"rel": "one"})]),
        ('<a>; t="x, <b>; y", <c>', [("a", {"t": "x, <b>; y"}), ("c", {})]),
        ("<a>,<b>;x=1,\t<c>", [("a", {}), ("b", {"x": "1"}), ("c", {})]),
        ("<urn:x, y>", [("urn:x, y", {})]),
    ],
)
def test_parse_link_header(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert parse_link_header(header) == expected


@pytest.mark.parametrize(
    "header", ["a", "<a", "<a> x", '<a>; t="open', "<a>; =x", "<a>; t=", '<a>; t="x" y', "<a>;"]
)
def test_parse_link_header_rejects_garbage(header: str) -> None:
    with pytest.raises(ValueError):
        parse_link_header(header)


def test_public_surface() -> None:
    assert set(links.__all__) == {
        "extension_link",
        "ice_server_links",
        "parse_link_header",
        "turn_credentials",
    }


_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_HOST = st.builds("{}{}".format, _LABEL, st.sampled_from(["", ".example", ".example.net"]))
_URL = st.builds(
    "{}:{}{}{}".format,
    st.sampled_from(["stun", "stuns", "turn", "turns"]),
    _HOST,
    st.sampled_from(["", ":3478", ":5349", ":443"]),
    st.sampled_from(["", "?transport=udp", "?transport=tcp"]),
)


@settings(max_examples=50, deadline=None)
@given(
    urls=st.lists(_URL, min_size=1, max_size=5),
    secret=st.none() | st.text(min_size=1, max_size=20),
    ttl=st.integers(1, 10**7),
    now=st.floats(0, 2e9),
    user=st.text("abcXYZ0189_.:@-", min_size=1, max_size=24),
)
def test_ice_server_links_round_trip(
    urls: list[str], secret: str | None, ttl: int, now: float, user: str
) -> None:
    values = ice_server_links(urls, turn_secret=secret, turn_ttl=ttl, now=now, user=user)
    header = ", ".join(values)
    parsed = parse_link_header(header)
    assert [target for target, _ in parsed] == urls
    assert [(url, rel) for url, rel, _ in whip_js_parse(header)] == [
        (url, "ice-server") for url in urls
    ]
    for (url, params), (_, _, js_params) in zip(parsed, whip_js_parse(header), strict=True):
        assert params.pop("rel") == "ice-server"
        assert params == js_params  # a crude client reads exactly the same values
        if secret is not None and url.startswith("turn"):
            assert params["username"] == f"{int(now) + ttl}:{user}"
            assert params["credential-type"] == "password"
            key, msg = secret.encode(), params["username"].encode()
            assert base64.b64decode(params["credential"]) == hmac.digest(key, msg, "sha1")
        else:
            assert params == {}
