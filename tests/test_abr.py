"""The layer policy on synthetic traces: a viewer's link is simulated, its RTCP derived.

The link model is a bottleneck with a 200 ms tail-drop queue: what is sent above its
capacity is lost and the queue adds to the round trip. The viewer's REMB behaves like
aiortc's and Chromium's estimators: it grows 8 % a second, never above 1.5x what arrives,
and drops to 0.85x of what arrives when the queue grows (overuse).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcast.sfu.abr import AbrPolicy, Feedback, Layer

LAYERS = [
    Layer("l", 150_000, pixels=320 * 180),
    Layer("m", 500_000, pixels=640 * 360),
    Layer("h", 1_500_000, pixels=1280 * 720),
]
BITRATE = {x.rid: x.bitrate for x in LAYERS}
STEP = 0.25
BASE_RTT = 0.02
MAX_HOLD = AbrPolicy().max_hold


@dataclass
class Run:
    trace: list[tuple[float, str]] = field(default_factory=list)
    probes: list[tuple[float, str]] = field(default_factory=list)  # (start, target)


def run(
    capacity: Callable[[float], float],
    seconds: float,
    *,
    remb: bool = True,
    rtt: Callable[[float], float] | None = None,
    loss: Callable[[float], float] | None = None,
    can_probe: bool = True,
) -> Run:
    """A receiver report every second, REMB (when sent) every half second."""
    policy, layer, out = AbrPolicy(can_probe=can_probe), "h", Run()
    estimate = 300_000.0  # the viewer's REMB estimator, starting low like aiortc's
    for i in range(int(seconds / STEP)):
        now = i * STEP
        cap = capacity(now)
        sent = BITRATE[layer] + policy.padding_bps
        arriving = min(sent, cap)
        overuse = sent > cap
        lost = max(0.0, 1 - cap / sent) if sent else 0.0
        if loss is not None:
            lost = max(lost, loss(now))
        estimate = (
            0.85 * arriving if overuse else min(estimate * 1.08**STEP, 1.5 * arriving + 10_000)
        )
        feedback = None
        if i % 4 == 0:
            round_trip = (rtt(now) if rtt else BASE_RTT) + (0.2 if overuse else 0.0)
            feedback = Feedback(now=now, loss=lost, rtt=round_trip)
        elif remb and i % 2 == 0:
            feedback = Feedback(now=now, remb=int(estimate))
        if feedback is not None:
            probing = policy.probe
            layer = policy.update(feedback, LAYERS, layer)
            if policy.probe is not None and policy.probe is not probing:
                out.probes.append((now, policy.probe.rid))
        out.trace.append((now, layer))
    return out


def first_time(trace: list[tuple[float, str]], after: float, layer: str) -> float:
    return next(t for t, x in trace if t >= after and x == layer) - after


def switches(trace: list[tuple[float, str]]) -> int:
    return sum(1 for (_, a), (_, b) in itertools.pairwise(trace) if a != b)


def limited(start: float, end: float, cap: float) -> Callable[[float], float]:
    return lambda t: cap if start <= t < end else math.inf


@pytest.mark.parametrize("remb", [True, False], ids=["remb", "loss-only"])
def test_step_limit_moves_down_within_2_s_and_back_up_within_20_s(remb: bool) -> None:
    result = run(limited(10, 40, 800_000), 70, remb=remb)
    trace = result.trace
    assert all(x == "h" for t, x in trace if t < 10)
    assert first_time(trace, 10, "m") <= 2.0
    # Probes during the limit fail without a switch: the picture never goes back up.
    assert all(x == "m" for t, x in trace if 12 <= t < 40)
    assert [rid for t, rid in result.probes if 12 <= t < 40] != []
    assert first_time(trace, 40, "h") <= 20.0
    assert all(x == "h" for t, x in trace if t >= 60)


def test_a_deep_limit_goes_to_the_lowest_layer_and_climbs_back_one_by_one() -> None:
    trace = run(limited(5, 30, 200_000), 70).trace
    assert first_time(trace, 5, "l") <= 2.0
    assert all(x == "l" for t, x in trace if 7 <= t < 30)
    up = first_time(trace, 30, "m")
    assert first_time(trace, 30, "h") > up
    assert first_time(trace, 30, "h") <= 20.0


def test_failed_probes_thin_out() -> None:
    # Five minutes at a limit between m and h: the probes must back off to max_hold
    # apart, and none of them may move the viewer.
    result = run(limited(0, 300, 800_000), 300)
    starts = [t for t, _ in result.probes]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) <= 300 / MAX_HOLD + 3
    assert gaps and min(gaps[3:]) >= MAX_HOLD
    assert switches(result.trace) == 1


def test_without_padding_the_switch_up_is_the_probe_and_backs_off() -> None:
    result = run(limited(0, 300, 800_000), 300, can_probe=False)
    trace = result.trace
    ups = [t for (_, a), (t, b) in itertools.pairwise(trace) if (a, b) == ("m", "h")]
    gaps = [b - a for a, b in itertools.pairwise(ups)]
    assert gaps and min(gaps[3:]) >= MAX_HOLD
    assert switches(trace) <= 2 * (300 / MAX_HOLD + 3)


def test_capacity_wandering_around_a_layer_does_not_flip_it() -> None:
    # Capacity between 1.3 and 1.9 Mbit/s around the 1.5 Mbit/s top layer.
    trace = run(lambda t: 1_600_000 + 300_000 * math.sin(t / 3), 120).trace
    assert switches(trace) <= 2 * (120 / MAX_HOLD + 1)


def test_slow_rtt_growth_without_loss_moves_down() -> None:
    # A queue building elsewhere on the path: RTT from 20 ms to 220 ms over 10 s, no loss.
    trace = run(lambda t: math.inf, 30, remb=False, rtt=lambda t: 0.02 + 0.02 * min(t, 10)).trace
    moved = [t for t, x in trace if x != "h"]
    assert moved and moved[0] <= 6.0


def test_step_loss_moves_down_and_clean_link_stays() -> None:
    # 30 % random loss from t=10 (a bad radio link, capacity unchanged).
    trace = run(lambda t: math.inf, 20, loss=lambda t: 0.3 if t >= 10 else 0.0).trace
    assert all(x == "h" for t, x in trace if t < 10)
    assert first_time(trace, 10, "m") <= 2.5


def test_nacks_and_picture_losses_count_as_congestion() -> None:
    # A receiver whose reports show no loss (it counts repaired packets as received) but
    # whose NACKs name 30 % of the packets; another whose decoder keeps asking for pictures.
    for quiet_reports in (
        [Feedback(now=t, loss=0.0, nacked=0.3) for t in (0.0, 1.0, 2.0)],
        [Feedback(now=t, loss=0.0, plis=3) for t in (0.0, 1.0, 2.0)],
    ):
        policy, layer = AbrPolicy(), "h"
        for feedback in quiet_reports:
            layer = policy.update(feedback, LAYERS, layer)
        assert layer != "h"
    policy = AbrPolicy()
    for t in (0.0, 1.0, 2.0):  # one PLI now and then is no congestion
        assert policy.update(Feedback(now=t, loss=0.0, nacked=0.01, plis=1), LAYERS, "h") == "h"


def test_an_unconstrained_viewer_never_leaves_the_top() -> None:
    assert switches(run(lambda t: math.inf, 120).trace) == 0


def test_starts_on_top_then_where_the_estimate_fits() -> None:
    policy = AbrPolicy()
    assert policy.update(Feedback(now=0.0), LAYERS, None) == "h"  # nothing known yet
    policy.update(Feedback(now=1.0, loss=0.5), LAYERS, "h")  # 750 kbit/s arrive
    assert policy.update(Feedback(now=1.1), LAYERS, None) == "m"


def test_layers_rank_by_picture_size_before_bitrate() -> None:
    # Just after going live every layer's measured bitrate is still near zero.
    early = [Layer("h", 300, pixels=1280 * 720), Layer("l", 4000, pixels=320 * 180)]
    policy = AbrPolicy()
    policy.update(Feedback(now=0.0, loss=0.5), early, "h")
    assert policy.update(Feedback(now=1.5, loss=0.5), early, "h") == "l"


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
            st.one_of(st.none(), st.floats(0, 1)),
            st.one_of(st.none(), st.integers(0, 100)),
        ),
        max_size=60,
    )
)
def test_any_feedback_yields_an_active_layer(
    reports: list[tuple[float, float | None, int | None, float | None, int | None]],
) -> None:
    policy, layer = AbrPolicy(), "h"
    for i, (loss, rtt, remb, nacked, plis) in enumerate(reports):
        feedback = Feedback(now=i * 0.3, loss=loss, rtt=rtt, remb=remb, nacked=nacked, plis=plis)
        layer = policy.update(feedback, LAYERS, layer)
        assert layer in BITRATE
        assert policy.padding_bps >= 0
