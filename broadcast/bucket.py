"""A token bucket: `rate` events a second with bursts of `burst` (HTTP requests per client
in broadcast.http.ratelimit, data channel messages per sender in broadcast.media.datachannels)."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """Starts full; a rate of 0 lets everything pass."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        if self.rate <= 0:
            return True
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def wait(self) -> float:
        """Seconds until the next token, as of the last take (0: one is there)."""
        if self.rate <= 0 or self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate
