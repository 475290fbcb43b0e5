"""RTP/RTCP header helpers: building headers, header extensions, RTX, serial arithmetic, NTP.

Pure functions for the forwarding hot path: no I/O, no asyncio, no per-call objects beyond
the ``bytes`` they return.

- RTP fixed header, sequence numbers, NTP timestamps: RFC 3550
  https://www.rfc-editor.org/rfc/rfc3550
- Header extensions (one-byte form): RFC 8285  https://www.rfc-editor.org/rfc/rfc8285
- Retransmission payload format: RFC 4588  https://www.rfc-editor.org/rfc/rfc4588
- abs-send-time: https://webrtc.googlesource.com/src/+/refs/heads/main/docs/native-code/rtp-hdrext/abs-send-time/
"""

from __future__ import annotations

import struct

__all__ = [
    "NTP_UNIX_OFFSET",
    "abs_send_time",
    "abs_send_time_bytes",
    "ntp_middle32",
    "ntp_to_seconds",
    "one_byte_extension_block",
    "rtp_header",
    "rtx_payload",
    "seconds_to_ntp",
    "seq_diff",
    "seq_newer",
    "ts_diff",
    "ts_newer",
]

# Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01), RFC 868.
NTP_UNIX_OFFSET = 2208988800

# RFC 3550 §5.1: |V=2|P|X|CC|M|PT|sequence number|timestamp|SSRC|.
_FIXED_HEADER = struct.Struct("!BBHII")
_VERSION_2 = 0x80
_EXTENSION_BIT = 0x10
_U16 = struct.Struct("!H")

# RFC 8285 §4.2: "defined by profile" value of the one-byte header form.
_ONE_BYTE_PROFILE = b"\xbe\xde"

_MASK16 = 0xFFFF
_MASK24 = 0xFFFFFF
_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
_TWO_POW_32 = 4294967296.0
# abs-send-time is seconds in 6.18 fixed point.
_TWO_POW_18 = 262144.0


def rtp_header(
    *,
    marker: bool,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    extension: bytes = b"",
) -> bytes:
    """The RTP fixed header (RFC 3550 §5.1: V=2, no padding, no CSRC), then ``extension``.

    ``sequence`` and ``timestamp`` wrap modulo 2^16 and 2^32, so offset arithmetic can be
    passed as is. ``extension`` is a complete header extension (RFC 3550 §5.3.1: 16-bit
    profile, 16-bit length in words, data), e.g. from :func:`one_byte_extension_block`;
    when it is not empty the X bit is set.
    """
    if not 0 <= payload_type <= 127:
        raise ValueError(f"RTP payload type must be 0-127, got {payload_type}")
    if not extension:
        return _FIXED_HEADER.pack(
            _VERSION_2,
            marker << 7 | payload_type,
            sequence & _MASK16,
            timestamp & _MASK32,
            ssrc,
        )
    size = len(extension)
    if size & 3 or size < 4 or (extension[2] << 8 | extension[3]) != (size >> 2) - 1:
        raise ValueError(
            "RTP header extension must be a profile/length word plus length 32-bit words"
        )
    return (
        _FIXED_HEADER.pack(
            _VERSION_2 | _EXTENSION_BIT,
            marker << 7 | payload_type,
            sequence & _MASK16,
            timestamp & _MASK32,
            ssrc,
        )
        + extension
    )


def one_byte_extension_block(elements: list[tuple[int, bytes]]) -> bytes:
    """An RFC 8285 §4.2 one-byte-header extension block: 0xBEDE, length, elements, padding.

    Each element is ``(id, data)`` with id 1-14 and 1-16 bytes of data. No elements give
    ``b""`` (no extension at all).
    """
    if not elements:
        return b""
    body = bytearray()
    for ext_id, data in elements:
        # RFC 8285 §4.2: ID 0 is padding, 15 is reserved; L is length - 1 in 4 bits.
        if not 1 <= ext_id <= 14:
            raise ValueError(f"one-byte header extension id must be 1-14, got {ext_id}")
        if not 1 <= len(data) <= 16:
            raise ValueError(f"one-byte header extension data must be 1-16 bytes, got {len(data)}")
        body.append(ext_id << 4 | (len(data) - 1))
        body += data
    # RFC 3550 §5.3.1: the extension is a whole number of 32-bit words; RFC 8285 §4.2 pads
    # with zero bytes.
    body += bytes(-len(body) & 3)
    return _ONE_BYTE_PROFILE + _U16.pack(len(body) >> 2) + body


def abs_send_time(now_seconds: float) -> int:
    """abs-send-time value for ``now_seconds``: 24-bit, 6.18 fixed point, wraps every 64 s.

    Any clock will do; receivers only use differences.
    """
    # Rounded to nearest like libwebrtc's AbsoluteSendTime::To24Bits.
    return int(now_seconds * _TWO_POW_18 + 0.5) & _MASK24


def abs_send_time_bytes(value: int) -> bytes:
    """The 3 data bytes of the abs-send-time extension element (network order)."""
    return (value & _MASK24).to_bytes(3, "big")


def rtx_payload(original_sequence: int, payload: bytes) -> bytes:
    """RFC 4588 §4: an RTX payload is the original sequence number (OSN) and payload."""
    return _U16.pack(original_sequence & _MASK16) + payload


def seq_diff(a: int, b: int) -> int:
    """``a - b`` for 16-bit RTP sequence numbers, in [-32768, 32767] (RFC 3550 App. A.1)."""
    return ((a - b + 0x8000) & _MASK16) - 0x8000


def seq_newer(a: int, b: int) -> bool:
    """True if sequence number ``a`` comes after ``b`` (serial arithmetic, RFC 1982 §3.2).

    Numbers exactly 2^15 apart are newer in neither direction.
    """
    return 0 < ((a - b) & _MASK16) < 0x8000


def ts_diff(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps, in [-2^31, 2^31 - 1] (RFC 3550 §5.1)."""
    return ((a - b + 0x80000000) & _MASK32) - 0x80000000


def ts_newer(a: int, b: int) -> bool:
    """True if RTP timestamp ``a`` comes after ``b`` (serial arithmetic, RFC 1982 §3.2)."""
    return 0 < ((a - b) & _MASK32) < 0x80000000


def ntp_to_seconds(ntp: int) -> float:
    """Seconds since 1900-01-01 of a 64-bit NTP timestamp (RFC 3550 §4: 32.32 fixed point).

    Era 0 only: subtract :data:`NTP_UNIX_OFFSET` for Unix time.
    """
    return ntp / _TWO_POW_32


def seconds_to_ntp(t: float) -> int:
    """The 64-bit NTP timestamp of ``t`` seconds since 1900-01-01 (RFC 3550 §4).

    Wraps modulo 2^32 seconds (NTP eras, RFC 5905 §6), so it stays valid after 2036.
    """
    return int(t * _TWO_POW_32) & _MASK64


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR field of RTCP reports (RFC 3550 §6.4.1)."""
    return (ntp >> 16) & _MASK32
