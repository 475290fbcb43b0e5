"""A per-peer budget of malformed packets: a peer that keeps sending them is ended.

aiortc drops a packet it cannot use without telling anyone: an SRTP/SRTCP packet whose
authentication fails (RFC 3711 §3.3 step 5, §3.4) and an RTCP packet that does not parse
are logged at DEBUG level and forgotten, so a broken or hostile peer can make the server
pay for an unprotect and a parse per datagram for as long as it likes. And a packet that
parses but carries a short REMB (``unpack_remb_fci`` raises ``struct.error``, not
``ValueError``) escaped aiortc's RTCP handler, was logged as a traceback and closed the
whole DTLS transport: one datagram ended the session.

:func:`install` counts both kinds per DTLS transport; once a session's count within
:data:`WINDOW` seconds goes above :data:`LIMIT`, ``on_exhausted`` is called (the session
ends "too many malformed packets"). A legitimate peer sends none: SRTP replays (a
duplicated datagram) are not counted, since the network makes those.

Usage: ``install(pc, callback)`` right after ``setRemoteDescription`` (the transports
exist, SRTP is not set up yet). Relies on aiortc 1.16 internals (pinned in pyproject).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import RtcpPacket

__all__ = ["LIMIT", "WINDOW", "ErrorBudget", "install"]

logger = logging.getLogger(__name__)

#: Malformed packets a peer may send within WINDOW seconds before its session ends.
LIMIT = 100
WINDOW = 10.0

_ATTR = "_broadcast_error_budget"
# libsrtp's replay errors (pylibsrtp.ERRORS): a duplicated datagram, not a broken peer.
_REPLAY = "replay check failed"


class ErrorBudget:
    """At most `limit` errors per `window` seconds; `hit` answers whether it is spent.

    Pure: the caller gives the time. Counts in fixed windows, so a peer spreading errors
    evenly gets between `limit` and 2 * `limit` per `window`: either way, a bound.
    """

    __slots__ = ("count", "limit", "total", "window", "window_start")

    def __init__(self, limit: int = LIMIT, window: float = WINDOW) -> None:
        self.limit = limit
        self.window = window
        self.window_start: float | None = None
        self.count = 0
        self.total = 0

    def hit(self, now: float) -> bool:
        """Count one error at `now`; True once more than `limit` fell in one window."""
        self.total += 1
        if self.window_start is None or now - self.window_start >= self.window:
            self.window_start, self.count = now, 0
        self.count += 1
        return self.count > self.limit


class _CountingSrtp:
    """A pylibsrtp.Session for receiving that counts authentication failures."""

    __slots__ = ("_on_error", "_session")

    def __init__(self, session: pylibsrtp.Session, on_error: Callable[[], None]) -> None:
        self._session = session
        self._on_error = on_error

    def unprotect(self, packet: bytes) -> bytes:
        return self._counted(self._session.unprotect, packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        return self._counted(self._session.unprotect_rtcp, packet)

    def _counted(self, unprotect: Callable[[bytes], bytes], packet: bytes) -> bytes:
        try:
            return unprotect(packet)
        except pylibsrtp.Error as exc:
            if not str(exc).startswith(_REPLAY):
                self._on_error()
            raise


class _Tracker:
    """One DTLS transport's hooks: SRTP failures, RTCP that does not parse or route."""

    def __init__(
        self, dtls: RTCDtlsTransport, budget: ErrorBudget, on_exhausted: Callable[[], None]
    ) -> None:
        self.dtls = dtls
        self.budget = budget
        self.on_exhausted = on_exhausted
        self.exhausted = False
        d: Any = dtls
        self._orig_setup_srtp = d._setup_srtp
        d._setup_srtp = self._setup_srtp
        d._handle_rtcp_data = self._handle_rtcp_data

    def malformed(self) -> None:
        if self.exhausted:
            return
        if self.budget.hit(asyncio.get_running_loop().time()):
            self.exhausted = True
            self.on_exhausted()

    def _setup_srtp(self) -> None:
        self._orig_setup_srtp()
        d: Any = self.dtls
        if d._rx_srtp is not None:
            d._rx_srtp = _CountingSrtp(d._rx_srtp, self.malformed)

    async def _handle_rtcp_data(self, data: bytes) -> None:
        # aiortc's RTCDtlsTransport._handle_rtcp_data, with the failures counted, and a
        # packet its handlers choke on dropped instead of closing the transport.
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            self.malformed()
            return
        router: Any = self.dtls._rtp_router
        for packet in packets:
            try:
                recipients = router.route_rtcp(packet)
            except (ValueError, struct.error):  # the router unpacks REMB's SSRCs itself
                self.malformed()
                continue
            for recipient in recipients:
                try:
                    await recipient._handle_rtcp_packet(packet)
                except (ValueError, struct.error):  # e.g. a REMB too short to unpack
                    self.malformed()
                except Exception:
                    logger.warning("RTCP packet from the peer not handled", exc_info=True)
                    self.malformed()


def install(
    pc: RTCPeerConnection,
    on_exhausted: Callable[[], None],
    *,
    limit: int = LIMIT,
    window: float = WINDOW,
) -> ErrorBudget:
    """Count malformed packets on every DTLS transport of `pc`, against one budget.

    Call right after ``setRemoteDescription``; `on_exhausted` is called once. Idempotent
    per transport (a second call adds nothing to transports already counted).
    """
    budget = ErrorBudget(limit, window)
    transports: list[RTCDtlsTransport] = []
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport not in transports:
            transports.append(transport)
    if pc.sctp is not None and pc.sctp.transport not in transports:
        transports.append(pc.sctp.transport)
    fired = False

    def once() -> None:
        nonlocal fired
        if not fired:
            fired = True
            on_exhausted()

    for transport in transports:
        if getattr(transport, _ATTR, None) is None:
            setattr(transport, _ATTR, _Tracker(transport, budget, once))
    return budget
