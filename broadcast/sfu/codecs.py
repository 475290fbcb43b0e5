"""Which of a viewer's negotiated codecs can carry the publisher's RTP unchanged."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from broadcast.protocol.offer import h264_profile

__all__ = ["CodecSpec", "payload_type_map"]


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """A negotiated codec, reduced to what decides bitstream compatibility."""

    payload_type: int
    mime: str  # lower case, e.g. "video/h264"
    clock_rate: int
    channels: int | None = None
    parameters: Mapping[str, object] | None = None

    @property
    def name(self) -> str:
        return self.mime.split("/", 1)[1]

    @property
    def is_rtx(self) -> bool:
        return self.mime.endswith("/rtx")

    @property
    def apt(self) -> int | None:
        value = (self.parameters or {}).get("apt")
        return int(str(value)) if value is not None else None

    def _h264_key(self) -> tuple[str, str]:
        params = {k: str(v) for k, v in (self.parameters or {}).items() if v is not None}
        try:
            profile = h264_profile(params)
        except ValueError:
            profile = "unknown"
        # RFC 6184 §8.1: packetization-mode defaults to 0 when absent.
        return profile, params.get("packetization-mode", "0")

    def carries(self, other: CodecSpec) -> bool:
        """True if RTP of `other` can be sent with this codec's payload type as is."""
        if self.mime != other.mime or self.clock_rate != other.clock_rate:
            return False
        if self.mime == "video/h264":
            return self._h264_key() == other._h264_key()
        return True


def payload_type_map(
    publisher: Iterable[CodecSpec], viewer: Iterable[CodecSpec]
) -> dict[int, tuple[int, int | None]]:
    """Publisher payload type -> (viewer payload type, viewer RTX payload type or None).

    A publisher codec the viewer did not negotiate is absent: its packets are not sent.
    """
    viewer_list = list(viewer)
    rtx_for = {c.apt: c.payload_type for c in viewer_list if c.is_rtx and c.apt is not None}
    media = [c for c in viewer_list if not c.is_rtx]
    mapping: dict[int, tuple[int, int | None]] = {}
    for codec in publisher:
        if codec.is_rtx:
            continue
        for candidate in media:
            if candidate.carries(codec):
                mapping[codec.payload_type] = (
                    candidate.payload_type,
                    rtx_for.get(candidate.payload_type),
                )
                break
    return mapping
