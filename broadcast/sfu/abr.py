"""Per-viewer simulcast layer choice from the viewer's own RTCP (pure; no I/O, no clock).

Each viewer reports what reaches it: receiver reports (fraction lost and, with our sender
reports, RTT: RFC 3550 §6.4.1) and REMB (a receiver-side estimate computed from the
abs-send-time we stamp: draft-alvestrand-rmcat-remb). The policy keeps one bandwidth
estimate per viewer and turns it into a layer:

- **Congestion signals** are: more than 10 % loss (by receiver report or by the packets
  its NACKs name); RTT at twice its floor and 50 ms above it (a queue building up, before
  loss shows); REMB 10 % under its highest value of the last `REMB_WINDOW` seconds and
  under what is being sent (the viewer's delay-based estimator saw overuse: it only ever
  lowers its estimate then); `PLI_BURST` picture loss indications between two reports.
  Each lowers the estimate (unknown, meaning unlimited, until the first signal) to what
  the link evidently carries. Signals less than `calm_after` apart make one congestion
  episode. Report jitter is not a signal: forwarded timestamps are the publisher's, so it
  carries the publisher's own pacing and uplink jitter, and RTT shows a queue better.
- **Down** once an episode has lasted `down_after` seconds, to the highest lower layer that
  fits the estimate with headroom: well within 2 s of the link shrinking. Reports written
  before a switch took effect are not held against the new layer (`settle`).
- **Up** needs proof, because a receiver's REMB never exceeds 1.5x what it receives
  (draft-ietf-rmcat-gcc-02 §5.5) and so cannot show room for a bigger layer. After
  `up_after` seconds without congestion, the policy *probes*: the viewer is sent padding
  (RTX copies of recent packets, which its decoder ignores) on top of its layer, up to the
  next layer's bitrate with headroom, for `probe_for` seconds and until the first receiver
  report after that (only a report sees a slowly growing queue). If no congestion shows,
  the viewer moves up, and the probe for the layer above follows `chain_after` later; if
  it does, padding stops at once and the next probe waits twice as long (`hold`, up to
  `max_hold`): a link that cannot carry the layer is not hammered, and a link that
  recovered is found within `max_hold + probe_for` seconds. Without RTX to pad with, the
  switch up itself is the probe.
- Going up needs 1.2x the next layer's bitrate, going down happens only on congestion:
  an estimate wandering around one layer's bitrate does not flip it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["AbrPolicy", "Feedback", "Layer", "Probe"]

LOSS_HIGH = 0.10  # above: congested (draft-ietf-rmcat-gcc-02 §6)
RTT_QUEUE_FACTOR = 2.0  # RTT at this multiple of its floor: a queue is building
RTT_MIN_RISE_S = 0.05  # ...and at least this much above it (jitter on a LAN is not a queue)
QUEUE_BACKOFF = 0.85  # a queue: the link carries less than was sent (GCC's beta)
REMB_DROP = 0.9  # REMB below this fraction of its recent highest: overuse was detected
REMB_WINDOW = 2.0  # seconds of REMB history that "recent" means
MAX_LOSS_COUNTED = 0.9  # a link losing everything still carries something: no estimate of 0
PLI_BURST = 2  # this many PLIs between two reports: the viewer's decoder keeps failing


@dataclass(frozen=True)
class Layer:
    """One simulcast encoding as the publisher sends it now."""

    rid: str
    bitrate: int  # bit/s, measured at ingest
    active: bool = True
    pixels: int = 0  # width x height where known: ranks layers before bitrate does


@dataclass(frozen=True)
class Feedback:
    """What one viewer's RTCP said since the previous Feedback."""

    now: float  # seconds, any monotonic origin
    loss: float | None = None  # fraction lost, 0..1, from the latest receiver report
    rtt: float | None = None  # seconds
    remb: int | None = None  # bit/s
    nacked: float | None = None  # distinct packets NACKed / packets sent, since the last
    plis: int | None = None  # picture loss indications since the last


@dataclass(frozen=True)
class Probe:
    """Padding sent to test whether the viewer's link carries the `rid` layer."""

    rid: str
    padding_bps: int
    started: float


@dataclass
class AbrPolicy:
    down_after: float = 1.0
    calm_after: float = 1.5  # no signal this long ends a congestion episode
    up_after: float = 3.0  # no signal this long before probing the next layer
    probe_for: float = 2.0
    chain_after: float = 1.0  # after a probe succeeded, the next one may start this soon
    headroom: float = 1.2  # a layer "fits" when estimate >= bitrate * headroom
    settle: float = 2.0
    hold_after_down: float = 5.0
    max_hold: float = 10.0  # bounds the way back up once a limit lifts
    can_probe: bool = True  # padding is possible (RTX negotiated)
    estimate: float | None = None  # bit/s; None: no limit seen
    probe: Probe | None = None
    _rembs: list[tuple[float, int]] = field(default_factory=list)
    _rtt_floor: float | None = None
    _congested_since: float | None = None
    _quiet_since: float | None = None  # no signal and no switch since
    _last_signal: float | None = None
    _settle_until: float = -1.0
    _last_down: float | None = None
    _last_up: float | None = None
    _last_switch: float | None = None
    _chained: bool = False  # the last switch was a probe's success
    _hold: float = 0.0

    def __post_init__(self) -> None:
        self._hold = self.hold_after_down

    @property
    def padding_bps(self) -> int:
        """Padding the viewer should be sent now, bit/s (0: none)."""
        return 0 if self.probe is None else self.probe.padding_bps

    def update(self, feedback: Feedback, layers: Sequence[Layer], current: str | None) -> str:
        """The rid this viewer should receive now (`current` when nothing changes)."""
        usable = sorted((x for x in layers if x.active), key=lambda x: (x.pixels, x.bitrate))
        if not usable:
            raise ValueError("no active layer to choose from")
        now = feedback.now
        index = next((i for i, x in enumerate(usable) if x.rid == current), None)
        sent = (usable[index].bitrate if index is not None else 0) + self.padding_bps
        signal = self._estimate(feedback, sent)
        if signal:
            self._chained = False
            self._last_signal = now
            self._quiet_since = None
            if self._congested_since is None:
                self._congested_since = now
        elif self._last_signal is None or now - self._last_signal >= self.calm_after:
            self._congested_since = None
        if self._quiet_since is None and not signal:
            self._quiet_since = now
        if index is None:  # a new viewer, or its layer stopped: start where the estimate fits
            self.probe = None
            return self._switch(now, self._fitting(usable)).rid
        if self.probe is not None and all(x.rid != self.probe.rid for x in usable):
            self.probe = None
        if signal and self.probe is not None:  # the link cannot carry the next layer (yet)
            self.probe = None
            self._backed_off(now)
            # The congestion was the padding's; reports still to come about it are too.
            self._settle_until = now + self.settle
            return usable[index].rid
        if self._congested_since is not None:
            if now < self._settle_until:
                self._congested_since = now
            elif now - self._congested_since >= self.down_after and index > 0:
                self._congested_since = None
                self._settle_until = now + self.settle
                if self._last_up is not None and now - self._last_up < self._hold:
                    self._backed_off(now)  # the switch up was the probe, and it failed
                elif self._last_down is not None and now - self._last_down > 4 * self._hold:
                    self._hold = self.hold_after_down  # stable for long: forgive
                self._last_down = now
                return self._switch(now, self._fitting(usable[:index])).rid
            return usable[index].rid
        if self.probe is not None:
            if now - self.probe.started < self.probe_for or feedback.loss is None:
                return usable[index].rid
            target = next(x for x in usable if x.rid == self.probe.rid)
            self.probe = None
            if self.estimate is not None:
                self.estimate = max(self.estimate, target.bitrate * self.headroom)
            self._chained = True
            return self._switch(now, target, up=True).rid
        held = self._last_down is None or now - self._last_down >= self._hold
        wait = self.chain_after if self._chained else self.up_after
        quiet = self._quiet_since is not None and now - self._quiet_since >= wait
        if index + 1 < len(usable) and held and quiet:
            target = usable[index + 1]
            if not self.can_probe:
                return self._switch(now, target, up=True).rid
            wanted = target.bitrate * self.headroom - usable[index].bitrate
            self.probe = Probe(target.rid, max(0, round(wanted)), now)
        return usable[index].rid

    def _estimate(self, fb: Feedback, sent: int) -> bool:
        """Fold one feedback into the estimate; True if it signals congestion."""
        queue = False
        if fb.rtt is not None:
            floor = self._rtt_floor
            self._rtt_floor = fb.rtt if floor is None else min(floor, fb.rtt)
            rise = fb.rtt - self._rtt_floor
            queue = fb.rtt >= RTT_QUEUE_FACTOR * self._rtt_floor and rise >= RTT_MIN_RISE_S
        # What the receiver report says, or what its NACKs say if that is worse: NACKs name
        # each lost packet at once, and some receivers count a repaired one as received.
        loss = max(fb.loss or 0.0, fb.nacked or 0.0)
        overuse = False
        if fb.remb is not None:
            self._rembs = [(t, r) for t, r in self._rembs if fb.now - t < REMB_WINDOW]
            highest = max((r for _, r in self._rembs), default=None)
            self._rembs.append((fb.now, fb.remb))
            overuse = highest is not None and fb.remb < REMB_DROP * highest and fb.remb < sent
        limits = []
        if loss > LOSS_HIGH:
            limits.append(sent * (1 - min(loss, MAX_LOSS_COUNTED)))
        if queue:
            limits.append(sent * QUEUE_BACKOFF)
        if overuse and fb.remb is not None:
            limits.append(float(fb.remb))
        if (fb.plis or 0) >= PLI_BURST and not limits:
            limits.append(sent * QUEUE_BACKOFF)
        if limits:
            # Within one episode the evidence adds up; a new episode starts afresh.
            if self._congested_since is not None and self.estimate is not None:
                limits.append(self.estimate)
            self.estimate = min(limits)
        return bool(limits)

    def _fits(self, layer: Layer) -> bool:
        return self.estimate is None or self.estimate >= layer.bitrate * self.headroom

    def _fitting(self, usable: Sequence[Layer]) -> Layer:
        """The highest layer within the estimate, or the lowest if none is."""
        best = usable[0]
        for layer in usable:
            if self._fits(layer):
                best = layer
        return best

    @property
    def last_switch_up(self) -> bool:
        """The latest change of layer went up (a probe's success or a try)."""
        return self._last_up is not None and self._last_up == self._last_switch

    def _switch(self, now: float, layer: Layer, *, up: bool = False) -> Layer:
        self._last_switch = now
        if up:
            self._last_up = now
        self._quiet_since = now
        return layer

    def _backed_off(self, now: float) -> None:
        """A probe failed: wait twice as long before the next one."""
        self._hold = min(self.max_hold, self._hold * 2)
        self._last_down = now
