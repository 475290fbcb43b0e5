"""The WHEP layer extension: the pure choice, and the endpoint over HTTP."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcast.errors import BadRequest
from broadcast.http.layers import choose_layer
from broadcast.protocol.links import parse_link_header
from tests.support.peers import Viewer

LAYERS: dict[str, tuple[int, int] | None] = {"h": (1280, 720), "m": (640, 360), "l": (320, 180)}
LAYER_REL = "urn:ietf:params:whep:ext:core:layer"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, None),
        ({"mediaId": "1"}, None),
        ({"mediaId": "1", "encodingId": "m"}, "m"),
        ({"encodingId": "l"}, "l"),
        ({"maxWidth": 700}, "m"),
        ({"maxHeight": 720}, "h"),
        ({"maxWidth": 100}, "l"),  # nothing fits: the smallest
    ],
)
def test_choice(body: dict[str, object], expected: str | None) -> None:
    assert choose_layer(body, {"1"}, LAYERS) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"mediaId": "0"},  # the audio section
        {"encodingId": "x"},
        {"encodingId": 1},
        {"maxWidth": 0},
        {"maxWidth": "640"},
        {"maxHeight": True},
    ],
)
def test_refusals(body: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        choose_layer(body, {"1"}, LAYERS)


def test_no_simulcast_means_only_automatic() -> None:
    assert choose_layer({}, {"1"}, {}) is None
    for body in ({"encodingId": "h"}, {"maxWidth": 640}):
        with pytest.raises(BadRequest):
            choose_layer(body, {"1"}, {})


@given(
    st.dictionaries(
        st.sampled_from(["mediaId", "encodingId", "maxWidth", "maxHeight"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=5), st.booleans()),
    )
)
def test_any_body_is_a_layer_or_a_bad_request(body: dict[str, object]) -> None:
    try:
        assert choose_layer(body, {"1"}, LAYERS) in {None, *LAYERS}
    except BadRequest:
        pass


async def test_endpoint_over_http(server) -> None:
    viewer = Viewer(server.base_url, "ext")
    result = await viewer.start(server.client)
    links = {p["rel"]: t for t, p in parse_link_header(result.headers["link"])}
    url = links[LAYER_REL]
    assert (await server.client.post(url, json={})).status_code == 204
    for body, status in [
        (b"[1]", 400),
        (b"{nope", 400),
        (b'{"encodingId": "h"}', 400),  # this publisher-less stream has no layers
        (b'{"colour": "blue"}', 400),
    ]:
        r = await server.client.post(
            url, content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    await viewer.stop(server.client)
    assert (await server.client.post(url, json={})).status_code == 404
