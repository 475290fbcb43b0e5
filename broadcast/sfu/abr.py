"""Per-viewer simulcast layer choice from the viewer's own RTCP (pure; no I/O, no clock).

Each viewer reports what reaches it: receiver reports (fraction lost, jitter, and with our
sender reports, RTT: RFC 3550 §6.4.1), REMB (a receiver-side bandwidth estimate computed
from the abs-send-time we stamp: draft-alvestrand-rmcat-remb), NACKs and PLIs. The policy
keeps one bandwidth estimate per viewer and turns it into a layer:

- **Estimate.** REMB when the viewer sends it (capped by loss: a viewer losing packets is
  over its link whatever it estimates); otherwise a loss-based estimate in the manner of
  GCC's loss controller (draft-ietf-rmcat-gcc-02 §6): above 10 % loss it shrinks by half
  the loss, under 2 % it grows 8 % a second, in between it holds. RTT growing to twice its
  floor (a queue building up) counts as congestion too, even before loss shows.
- **Down** once congestion (loss, a queue, or an estimate under the current layer's
  bitrate) has lasted `down_after` seconds, to the highest layer that fits the estimate
  with headroom: within 2 s of the link shrinking.
- **Up** one layer at a time, only after the estimate has cleared the next layer (with
  headroom) for `up_after` seconds and at least `hold_after_down` since the last switch
  down; that hold doubles each time a switch up is followed by a switch down within it,
  so a link that cannot carry the layer is not probed every few seconds (no oscillation),
  up to `max_hold`, which with `up_after` bounds the way back once a limit lifts (18 s).
  Going up needs 1.2x the next layer's bitrate, going down less than 1x the current one:
  an estimate wandering around one layer's bitrate does not flip it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["AbrPolicy", "Feedback", "Layer"]

LOSS_HIGH = 0.10  # above: congested, the estimate shrinks
LOSS_LOW = 0.02  # below: the estimate may grow
GROWTH_PER_S = 0.08
RTT_QUEUE_FACTOR = 2.0  # RTT at this multiple of its floor: a queue is building
RTT_MIN_RISE_S = 0.05  # ...and at least this much above it (jitter on a LAN is not a queue)


@dataclass(frozen=True)
class Layer:
    """One simulcast encoding as the publisher sends it now."""

    rid: str
    bitrate: int  # bit/s, measured at ingest
    active: bool = True


@dataclass(frozen=True)
class Feedback:
    """What one viewer's RTCP said since the previous Feedback."""

    now: float  # seconds, any monotonic origin
    loss: float | None = None  # fraction lost, 0..1, from the latest receiver report
    rtt: float | None = None  # seconds
    remb: int | None = None  # bit/s


@dataclass
class AbrPolicy:
    down_after: float = 1.0
    up_after: float = 3.0
    headroom: float = 1.2  # a layer "fits" when estimate >= bitrate * headroom
    hold_after_down: float = 8.0
    max_hold: float = 15.0  # hold + up_after bounds the way back up once a limit lifts
    estimate: float | None = None  # bit/s
    _last: float | None = None
    _rtt_floor: float | None = None
    _congested_since: float | None = None
    _fits_up_since: float | None = None
    _last_down: float | None = None
    _last_up: float | None = None
    _hold: float = field(default=0.0)

    def __post_init__(self) -> None:
        self._hold = self.hold_after_down

    def update(self, feedback: Feedback, layers: Sequence[Layer], current: str | None) -> str:
        """The rid this viewer should receive now (`current` when nothing changes)."""
        usable = sorted((x for x in layers if x.active), key=lambda x: x.bitrate)
        if not usable:
            raise ValueError("no active layer to choose from")
        now = feedback.now
        congested = self._estimate(feedback, usable[-1].bitrate)
        index = next((i for i, x in enumerate(usable) if x.rid == current), None)
        if index is None:  # a new viewer, or its layer stopped: start where the estimate fits
            return self._fitting(usable).rid
        assert self.estimate is not None
        congested = congested or self.estimate < usable[index].bitrate
        if congested:
            self._fits_up_since = None
            if self._congested_since is None:
                self._congested_since = now
            fitting = self._fitting(usable)
            if now - self._congested_since >= self.down_after and fitting.bitrate < (
                usable[index].bitrate
            ):
                self._switched_down(now)
                return fitting.rid
            return usable[index].rid
        self._congested_since = None
        if index + 1 < len(usable) and self._fits(usable[index + 1]):
            if self._fits_up_since is None:
                self._fits_up_since = now
            held = self._last_down is None or now - self._last_down >= self._hold
            if held and now - self._fits_up_since >= self.up_after:
                self._fits_up_since = None
                self._last_up = now
                return usable[index + 1].rid
        else:
            self._fits_up_since = None
        return usable[index].rid

    def _estimate(self, fb: Feedback, top: int) -> bool:
        """Fold one feedback into the estimate; True if the viewer is congested now."""
        elapsed = 0.0 if self._last is None else max(0.0, fb.now - self._last)
        self._last = fb.now
        if self.estimate is None:
            # Nothing measured yet: assume the top layer fits until told otherwise.
            self.estimate = float(fb.remb if fb.remb is not None else top * self.headroom)
        queue = False
        if fb.rtt is not None:
            floor = self._rtt_floor
            self._rtt_floor = fb.rtt if floor is None else min(floor, fb.rtt)
            rise = fb.rtt - self._rtt_floor
            queue = fb.rtt >= RTT_QUEUE_FACTOR * self._rtt_floor and rise >= RTT_MIN_RISE_S
        loss = fb.loss or 0.0
        if fb.remb is not None:
            self.estimate = float(fb.remb)
        if loss > LOSS_HIGH:
            self.estimate *= 1 - loss / 2
        elif loss < LOSS_LOW and not queue and fb.remb is None:
            # Grow at most to 1.5x the top layer: nothing above it is ever needed.
            self.estimate = min(self.estimate * (1 + GROWTH_PER_S) ** elapsed, 1.5 * top)
        if queue:
            self.estimate *= 0.85
        return loss > LOSS_HIGH or queue

    def _fits(self, layer: Layer) -> bool:
        return self.estimate is not None and self.estimate >= layer.bitrate * self.headroom

    def _fitting(self, usable: Sequence[Layer]) -> Layer:
        """The highest layer within the estimate, or the lowest if none is."""
        best = usable[0]
        for layer in usable:
            if self._fits(layer):
                best = layer
        return best

    def _switched_down(self, now: float) -> None:
        self._congested_since = None
        if self._last_up is not None and now - self._last_up < self._hold:
            self._hold = min(self.max_hold, self._hold * 2)  # the probe up failed
        elif self._last_down is not None and now - self._last_down > 4 * self._hold:
            self._hold = self.hold_after_down  # stable for long: forgive
        self._last_down = now
