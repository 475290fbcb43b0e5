"""Connect FFmpeg's WHIP muxer in milliseconds, and say why a DTLS handshake failed.

Why FFmpeg publishers took more than a second
---------------------------------------------
FFmpeg 8's ``whip`` muxer offers ``a=setup:passive`` unless told ``whip_flags=dtls_active``,
so aiortc becomes the DTLS client and speaks first. The muxer runs ICE and DTLS in one
loop over one non-blocking UDP socket that it reads itself, and since aiortc is not
ICE-lite it takes the *first DTLS datagram* as its "ICE is connected" signal (its verbose
log says ``ICE STUN ok ... res=169B``: those 169 bytes are our ClientHello). Only then
does it start its DTLS layer (GnuTLS, ``listen=1``) on the same socket, and GnuTLS reads
the socket again: the ClientHello that woke the muxer up was consumed by it and never
reaches GnuTLS. Nothing more happens until OpenSSL's retransmit timer in aiortc fires,
and OpenSSL's first DTLS timeout is 1 s (``RTCDtlsTransport._recv_next`` waits for
``DTLSv1_get_timeout()``). Measured on loopback: POST → connected ≈ 1.1 s.

The timer cannot be shortened from Python: pyOpenSSL/cryptography expose no
``DTLS_set_timer_cb``, and ``DTLSv1_handle_timeout()`` does nothing before it expires.

The fix
-------
:func:`install` sends the client's very first flight (the ClientHello datagram, the same
bytes) once more, :data:`FAST_RETRANSMIT_DELAY` after the original, if the peer has not
sent a single datagram back by then. FFmpeg's DTLS layer reads the copy and answers at
once: POST → connected ≈ 0.14 s, the rest being FFmpeg's own 5-50 ms socket polling.
A peer that did get the original sees the copy as a replayed record (same epoch and
sequence number) and drops it, or treats it as a retransmitted ClientHello; either way
it costs one datagram, and a peer answering within the delay never sees it. Nothing else
changes: OpenSSL's own timer (1 s, then doubling) still handles any further loss, and
when aiortc is the DTLS server (an offer with ``a=setup:active``) there is no copy.
The hook sits on the transport's ``RTCIceTransport._send`` only until the first flight
has gone out; then the original method is put back, so media never passes through it.

Why a handshake failed
----------------------
aiortc swallows the reason: ``RTCDtlsTransport._do_handshake`` catches ``SSL.Error``, logs
``x DTLS handshake failed (error ...)`` at DEBUG level and only sets the state to
``failed``; a fingerprint mismatch or a missing SRTP profile is just as silent, and
OpenSSL often leaves its error queue empty when it rejects the peer's certificate.
:func:`install` records the reason before the ``statechange`` event fires (OpenSSL's
error, the fatal alert sent or received, the peer's key type when it is on a curve we
refuse, or the failing step), logs it as a WARNING on this module's logger and returns
it from :func:`handshake_failure_reason`. The classic case is FFmpeg's own certificate,
ECDSA P-224, which the OpenSSL bundled with cryptography (4.0 here) refuses in both DTLS
roles: FFmpeg must be given a P-256 certificate with ``cert_file``/``key_file``.

Usage: call ``install(pc)`` right after ``await pc.setRemoteDescription(offer)``.
Relies on aiortc 1.16 internals (pinned in pyproject).
"""

from __future__ import annotations

import asyncio
import logging

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsParameters, RTCDtlsTransport, State
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL

__all__ = [
    "FAST_RETRANSMIT_DELAY",
    "handshake_failure_reason",
    "install",
    "install_transport",
]

logger = logging.getLogger(__name__)

#: Seconds between the first ClientHello and its single copy. A peer on a LAN or loopback
#: has answered by then (so it never gets the copy); FFmpeg polls its socket every
#: 5-50 ms, and 0, 5, 20 and 50 ms all measured the same for it (≈ 0.14 s to connected).
FAST_RETRANSMIT_DELAY = 0.02

# TLS alert descriptions (RFC 8446 section 6, RFC 5246 section 7.2).
_ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    120: "no_application_protocol",
}

# Curves the OpenSSL bundled with cryptography accepts for a peer's ECDSA certificate
# in DTLS 1.2 (its default groups). FFmpeg's own WHIP certificate is P-224.
_ACCEPTED_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
_CURVE_HINT = (
    "FFmpeg's default WHIP certificate is ECDSA P-224: give FFmpeg a P-256 one with "
    "-cert_file/-key_file"
)

# The per-transport state lives on the transport itself (a reference cycle the garbage
# collector handles), so it goes away with the connection.
_ATTR = "_broadcast_dtls_fast_start"


def install(pc: RTCPeerConnection, delay: float = FAST_RETRANSMIT_DELAY) -> None:
    """Install the fast start and the failure reason on every DTLS transport of ``pc``.

    Call it right after ``setRemoteDescription`` (the transports exist by then; their
    DTLS role may still be ``auto`` and is read only when the handshake starts).
    Idempotent.
    """
    transports: list[RTCDtlsTransport] = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for transport in transports:
        install_transport(transport, delay)


def install_transport(dtls: RTCDtlsTransport, delay: float = FAST_RETRANSMIT_DELAY) -> None:
    """:func:`install` for a single ``RTCDtlsTransport``, before its handshake starts."""
    if getattr(dtls, _ATTR, None) is not None:
        return
    if dtls._state != State.NEW:
        raise RuntimeError("dtls_fast_start must be installed before the DTLS handshake")
    setattr(dtls, _ATTR, _FastStart(dtls, delay))


def handshake_failure_reason(dtls: RTCDtlsTransport) -> str | None:
    """Why the DTLS handshake of ``dtls`` failed, or None (not failed, or not installed)."""
    state = getattr(dtls, _ATTR, None)
    return state.reason if isinstance(state, _FastStart) else None


def _describe_ssl_error(exc: SSL.Error) -> str:
    """Turn pyOpenSSL's ``Error([(lib, func, reason), ...])`` into one readable line."""
    parts: list[str] = []
    for entry in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(entry, tuple) and len(entry) == 3:
            lib, _func, why = entry
            parts.append(f"{lib}: {why}" if lib else str(why))
    return "; ".join(parts)


def _peer_key(ssl: SSL.Connection) -> str | None:
    """The peer certificate's key type, e.g. ``ECDSA secp224r1``, if it was received."""
    try:
        cert = ssl.get_peer_certificate(as_cryptography=True)
        key = cert.public_key() if cert is not None else None
    except Exception:  # whatever the failure left behind, the reason must not raise
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return None if key is None else type(key).__name__


_PHASE_REASONS = {
    "handshake": "the ICE transport closed during the handshake",
    "fingerprint": "the peer's certificate does not match the a=fingerprint of its SDP",
    "srtp": "no common DTLS-SRTP protection profile",
}


class _FastStart:
    """Per-transport state: the one early ClientHello copy and the failure reason."""

    def __init__(self, dtls: RTCDtlsTransport, delay: float) -> None:
        self.dtls = dtls
        self.delay = delay
        self.reason: str | None = None
        self.alert: str | None = None
        self.phase = "handshake"
        # aiortc calls all of these as self.<name>(...), so an instance attribute
        # shadows the class's method for this one transport only.
        self._orig_send = dtls.transport._send
        dtls.transport._send = self._send_first_flight
        self._orig_do_handshake = dtls._do_handshake
        dtls._do_handshake = self._do_handshake  # type: ignore[method-assign]
        self._orig_validate = dtls._validate_peer_identity
        dtls._validate_peer_identity = self._validate_peer_identity  # type: ignore[method-assign]
        self._orig_setup_srtp = dtls._setup_srtp
        dtls._setup_srtp = self._setup_srtp  # type: ignore[method-assign]
        self._orig_set_state = dtls._set_state
        dtls._set_state = self._set_state  # type: ignore[method-assign]

    # -- fast start ------------------------------------------------------------------

    async def _send_first_flight(self, data: bytes) -> None:
        # The first datagram a DTLS transport sends is its first flight. Unhook at once:
        # everything after it, media included, goes straight to aioice again.
        self.dtls.transport._send = self._orig_send
        await self._orig_send(data)
        if self.dtls._role == "client" and self.dtls._state == State.CONNECTING:
            asyncio.get_running_loop().call_later(self.delay, self._resend, data)

    def _resend(self, data: bytes) -> None:
        if self.dtls._state != State.CONNECTING:
            return
        # Only while the peer has sent nothing at all: once it has (ServerHello, or a
        # HelloVerifyRequest asking for a cookie), resending the first flight is noise.
        if getattr(self.dtls, "_RTCDtlsTransport__rx_packets", 0):
            return
        logger.debug("DTLS fast start: resending the first flight (%d bytes)", len(data))
        task = asyncio.ensure_future(self._orig_send(data))
        task.add_done_callback(_log_resend_error)

    # -- failure reason --------------------------------------------------------------

    async def _do_handshake(self) -> None:
        ssl = self.dtls._ssl
        if ssl is not None:
            # OpenSSL often leaves its error queue empty when it rejects the peer's
            # certificate; the alert it sends (or receives) still says what happened.
            ssl.set_info_callback(self._on_info)
            real = ssl.do_handshake

            def do_handshake() -> None:
                try:
                    real()
                except SSL.WantReadError:
                    raise
                except SSL.Error as exc:
                    self.reason = self._explain(_describe_ssl_error(exc), _peer_key(ssl))
                    raise

            ssl.do_handshake = do_handshake  # type: ignore[method-assign]
        await self._orig_do_handshake()

    def _validate_peer_identity(self, remoteParameters: RTCDtlsParameters) -> None:
        self.phase = "fingerprint"
        self._orig_validate(remoteParameters)

    def _setup_srtp(self) -> None:
        self.phase = "srtp"
        self._orig_setup_srtp()

    def _set_state(self, state: State) -> None:
        # aiortc emits "statechange" from inside _set_state: have the reason ready first.
        if state == State.FAILED and self.dtls._state != State.FAILED:
            if self.reason is None:
                self.reason = f"DTLS handshake failed: {_PHASE_REASONS[self.phase]}"
            logger.warning("%s (%s role)", self.reason, self.dtls._role)
        self._orig_set_state(state)

    def _on_info(self, _conn: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_ALERT and ret >> 8 == 2:  # fatal alerts only
            direction = "sent" if where & SSL.SSL_CB_WRITE else "received"
            name = _ALERTS.get(ret & 0xFF, str(ret & 0xFF))
            self.alert = f"{direction} fatal alert {name}"

    def _explain(self, error: str, peer_key: str | None) -> str:
        details = [d for d in (error, self.alert) if d] or ["no details from OpenSSL"]
        if peer_key is not None and peer_key.startswith("ECDSA "):
            if peer_key.removeprefix("ECDSA ") not in _ACCEPTED_CURVES:
                details.append(f"the peer's certificate is {peer_key}, not accepted here")
                details.append(_CURVE_HINT)
        elif peer_key is None and "wrong curve" in error:
            details.append(_CURVE_HINT)
        return "DTLS handshake failed: " + "; ".join(details)


def _log_resend_error(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("DTLS fast start: resend failed: %r", task.exception())
