"""The start-bitrate hint in a WHIP answer: `x-google-start-bitrate` (kbit/s) on each video
codec's fmtp line.

A WebRTC sender starts its bandwidth estimate at 300 kbit/s and, with REMB feedback only,
grows it about 8 % a second (draft-ietf-rmcat-gcc-02 §6), so a Chromium publisher needs
some 25 s before its estimate carries a 720p simulcast top layer and the layer appears.
libwebrtc reads this parameter from the remote description's video codecs and starts its
estimate there instead (the same hint mediasoup-client and Janus offer); a sender that
does not know it ignores the unknown format parameter (RFC 8866 §6.15). Loss and the
REMB we send still bring the estimate down at once where the uplink is smaller.
"""

from __future__ import annotations

import re

__all__ = ["PARAMETER", "add_start_bitrate"]

PARAMETER = "x-google-start-bitrate"
_RTPMAP = re.compile(r"a=rtpmap:(\d+) ([A-Za-z0-9-]+)/")
_FMTP = re.compile(r"a=fmtp:(\d+) ")
_NOT_MEDIA = {"rtx", "red", "ulpfec", "flexfec-03"}


def add_start_bitrate(answer: str, bitrate: int) -> str:
    """`answer` with the hint (`bitrate` in bit/s; 0 leaves the answer as it is)."""
    if bitrate <= 0:
        return answer
    lines = answer.split("\r\n")
    out: list[str] = []
    video = False
    codecs: list[str] = []  # this video section's media payload types
    with_fmtp: set[str] = set()
    for line in lines:
        if line.startswith("m="):
            out = _close_section(out, codecs, with_fmtp, bitrate)
            video = line.startswith("m=video")
            codecs, with_fmtp = [], set()
        elif video and (rtpmap := _RTPMAP.match(line)):
            if rtpmap.group(2).lower() not in _NOT_MEDIA:
                codecs.append(rtpmap.group(1))
        elif video and (fmtp := _FMTP.match(line)) and fmtp.group(1) in codecs:
            with_fmtp.add(fmtp.group(1))
            if PARAMETER not in line:
                line = f"{line};{PARAMETER}={bitrate // 1000}"
        out.append(line)
    return "\r\n".join(_close_section(out, codecs, with_fmtp, bitrate))


def _close_section(
    out: list[str], codecs: list[str], with_fmtp: set[str], bitrate: int
) -> list[str]:
    """Give the codecs that had no fmtp line one, before the section's trailing blank."""
    missing = [f"a=fmtp:{pt} {PARAMETER}={bitrate // 1000}" for pt in codecs if pt not in with_fmtp]
    if not missing:
        return out
    tail = 1 if out and out[-1] == "" else 0
    return out[: len(out) - tail] + missing + out[len(out) - tail :]
