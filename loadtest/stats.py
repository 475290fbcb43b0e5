"""Pure accounting for the load test: RTP sequence/loss/jitter per SSRC, and percentiles.

Nothing here touches the network or asyncio, so it is unit-tested with literal sequences.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["SeqTracker", "percentile", "summarize"]

_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32
_DEDUP_KEEP = 2048  # duplicates are recognised within this many sequence numbers of the newest


class SeqTracker:
    """One RTP source (SSRC): received/expected/lost and RFC 3550 interarrival jitter.

    Sequence numbers are extended to 64-bit relative to the highest one seen so far: a step
    of less than half the 16-bit space forward is newer (wrapping as needed), anything else
    is older (reordered). Expected is highest - lowest + 1 extended numbers, as in RFC 3550
    A.3 except that a reordered packet older than the first one extends the range downward
    instead of counting as a negative loss. Duplicates (within the last 2048 numbers) are
    counted apart and not as received.
    """

    __slots__ = (
        "_last_arrival",
        "_last_ts",
        "_seen",
        "clock_rate",
        "duplicates",
        "highest",
        "jitter",
        "lowest",
        "received",
        "reordered",
    )

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.received = 0
        self.duplicates = 0
        self.reordered = 0
        self.highest = -1  # extended sequence numbers; -1: nothing yet
        self.lowest = -1
        self.jitter = 0.0  # RFC 3550 J, in RTP timestamp units
        self._last_arrival: float | None = None
        self._last_ts = 0
        self._seen: set[int] = set()

    def extend(self, seq: int) -> int:
        """The extended sequence number of a 16-bit `seq`, relative to the highest seen."""
        if self.highest < 0:
            return seq
        delta = (seq - self.highest) % _SEQ_MOD
        if delta < _SEQ_MOD // 2:
            return self.highest + delta
        return self.highest - (_SEQ_MOD - delta)

    def _count(self, seq: int) -> bool:
        ext = self.extend(seq)
        if ext in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(ext)
        if len(self._seen) > 2 * _DEDUP_KEEP:
            floor = max(self.highest, ext) - _DEDUP_KEEP
            self._seen = {s for s in self._seen if s >= floor}
        self.received += 1
        if self.highest < 0:
            self.highest = self.lowest = ext
        elif ext > self.highest:
            self.highest = ext
        else:
            self.reordered += 1
            self.lowest = min(self.lowest, ext)
        return True

    def add(self, seq: int, timestamp: int, arrival_s: float) -> bool:
        """Count one packet; False for a duplicate. Updates the jitter (RFC 3550 6.4.1, A.8)."""
        if not self._count(seq):
            return False
        if self._last_arrival is not None:
            ts_delta = (timestamp - self._last_ts) % _TS_MOD
            if ts_delta >= _TS_MOD // 2:
                ts_delta -= _TS_MOD
            d = (arrival_s - self._last_arrival) * self.clock_rate - ts_delta
            self.jitter += (abs(d) - self.jitter) / 16
        self._last_arrival, self._last_ts = arrival_s, timestamp
        return True

    def recover(self, seq: int) -> bool:
        """A retransmitted packet (RTX, carrying the original `seq`): received unless a
        duplicate; it does not enter the jitter, which is about the original flow."""
        return self._count(seq)

    @property
    def expected(self) -> int:
        return 0 if self.highest < 0 else self.highest - self.lowest + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)

    @property
    def jitter_ms(self) -> float:
        return self.jitter / self.clock_rate * 1000 if self.clock_rate else 0.0


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (as
    numpy's default); None for no values."""
    data = sorted(values)
    if not data:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """n, min, mean, p50, p95, p99 and max of the values that are not None."""
    data = [v for v in values if v is not None]
    out: dict[str, float | int | None] = {"n": len(data)}
    out["min"] = min(data) if data else None
    out["mean"] = sum(data) / len(data) if data else None
    for q in (50, 95, 99):
        out[f"p{q}"] = percentile(data, q)
    out["max"] = max(data) if data else None
    return out
