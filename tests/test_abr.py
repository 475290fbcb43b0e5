"""The layer policy on synthetic traces: a viewer's link is simulated, RTCP derived from it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcast.sfu.abr import AbrPolicy, Feedback, Layer

LAYERS = [Layer("l", 150_000), Layer("m", 500_000), Layer("h", 1_500_000)]
BITRATE = {x.rid: x.bitrate for x in LAYERS}
STEP = 0.5  # a receiver report every 0.5 s


def run(
    capacity: Callable[[float], float],
    seconds: float,
    *,
    remb: bool,
    rtt: Callable[[float], float] | None = None,
    start: str = "h",
) -> list[tuple[float, str]]:
    """(time, layer) after each report. Loss is what does not fit the link; REMB, when
    the viewer sends it, reads the link's capacity (what Chromium's estimator converges to)."""
    policy, layer, out = AbrPolicy(), start, []
    for i in range(int(seconds / STEP)):
        now = i * STEP
        cap = capacity(now)
        loss = max(0.0, 1 - cap / BITRATE[layer])
        fb = Feedback(
            now=now,
            loss=loss,
            rtt=rtt(now) if rtt else 0.02,
            remb=int(min(cap, 10_000_000)) if remb else None,
        )
        layer = policy.update(fb, LAYERS, layer)
        out.append((now, layer))
    return out


def first_time(trace: list[tuple[float, str]], after: float, layer: str) -> float:
    return next(t for t, x in trace if t >= after and x == layer) - after


def switches(trace: list[tuple[float, str]]) -> int:
    return sum(1 for (_, a), (_, b) in itertools.pairwise(trace) if a != b)


def limited(start: float, end: float, cap: float) -> Callable[[float], float]:
    return lambda t: cap if start <= t < end else math.inf


@pytest.mark.parametrize("remb", [True, False], ids=["remb", "loss-only"])
def test_step_limit_moves_down_within_2_s_and_back_up_within_20_s(remb: bool) -> None:
    trace = run(limited(10, 40, 800_000), 70, remb=remb)
    assert all(x == "h" for t, x in trace if t < 10)
    assert first_time(trace, 10, "m") <= 2.0
    assert all(x != "h" for t, x in trace if 12 <= t < 40 and remb)  # REMB knows: no probing
    assert first_time(trace, 40, "h") <= 20.0
    assert all(x == "h" for t, x in trace if t >= 60)


def test_a_deep_limit_goes_to_the_lowest_layer() -> None:
    trace = run(limited(5, 30, 200_000), 30, remb=True)
    assert first_time(trace, 5, "l") <= 2.0


def test_loss_only_probing_backs_off_instead_of_oscillating() -> None:
    # No REMB: the only way to learn the link recovered is to try. Over 5 minutes at a
    # limit between m and h, the probes up must thin out (hold doubles to 15 s).
    trace = run(limited(0, 300, 800_000), 300, remb=False)
    assert switches(trace) <= 2 * (300 / 15 + 1)
    ups = [t for (_, a), (t, b) in itertools.pairwise(trace) if (a, b) == ("m", "h")]
    gaps = [b - a for a, b in itertools.pairwise(ups)]
    assert gaps and min(gaps[2:] or gaps) >= 15


def test_remb_wandering_around_a_layer_does_not_flip_it() -> None:
    # REMB between 1.3 and 1.9 Mbit/s (the top layer is 1.5 Mbit/s and fits at 1.8): the
    # estimate crosses 1.5 without loss. It may go down once, but must not flip-flop.
    trace = run(lambda t: 1_600_000 + 300_000 * math.sin(t), 120, remb=True)
    assert switches(trace) <= 2 * (120 / 15 + 1)


def test_rtt_growth_without_loss_moves_down() -> None:
    # A queue building at the bottleneck: RTT from 20 ms to 220 ms over 10 s, no loss yet.
    trace = run(lambda t: math.inf, 30, remb=False, rtt=lambda t: 0.02 + 0.02 * min(t, 10))
    moved = [t for t, x in trace if x != "h"]
    assert moved and moved[0] <= 6.0


def test_starts_on_the_layer_the_estimate_fits() -> None:
    policy = AbrPolicy()
    assert policy.update(Feedback(now=0.0, remb=700_000), LAYERS, None) == "m"
    assert AbrPolicy().update(Feedback(now=0.0), LAYERS, None) == "h"  # nothing known yet


def test_a_stopped_layer_is_left() -> None:
    layers = [Layer("l", 150_000), Layer("m", 500_000), Layer("h", 1_500_000, active=False)]
    assert AbrPolicy().update(Feedback(now=0.0, loss=0.0), layers, "h") == "m"
    with pytest.raises(ValueError):
        AbrPolicy().update(Feedback(now=0.0), [Layer("h", 1, active=False)], "h")


@given(
    st.lists(
        st.tuples(
            st.floats(0, 1),
            st.one_of(st.none(), st.floats(0, 5)),
            st.one_of(st.none(), st.integers(0, 50_000_000)),
        ),
        max_size=60,
    )
)
def test_any_feedback_yields_an_active_layer(
    reports: list[tuple[float, float | None, int | None]],
) -> None:
    policy, layer = AbrPolicy(), "h"
    for i, (loss, rtt, remb) in enumerate(reports):
        layer = policy.update(Feedback(now=i * 0.3, loss=loss, rtt=rtt, remb=remb), LAYERS, layer)
        assert layer in BITRATE
