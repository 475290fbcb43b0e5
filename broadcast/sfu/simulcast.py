"""Simulcast layers: which SSRC carries which rid, and which layer a viewer gets.

All layers of a simulcast video track share one payload type (RFC 8853 §5.1), so only
the rid header extensions tell them apart (RFC 8852 §3): ``rtp-stream-id`` names a
media stream's rid, ``repaired-rtp-stream-id`` the rid an RTX stream repairs. Encoders
send them in the first packets of each SSRC only (libwebrtc stops once a receiver report
acknowledges the SSRC), so the mapping is learnt once and kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["LayerState", "RidDemux", "choose_layer"]


class RidDemux:
    """SSRC -> rid for media streams, RTX SSRC -> the media SSRC it repairs."""

    __slots__ = ("_layer_of", "_repairs", "_rtx_of", "_ssrc_of", "rids")

    def __init__(self, rids: Iterable[str]) -> None:
        self.rids = frozenset(rids)
        self._layer_of: dict[int, str] = {}
        self._ssrc_of: dict[str, int] = {}
        self._repairs: dict[int, str] = {}
        self._rtx_of: dict[str, int] = {}

    def media(self, ssrc: int, rid: str | None) -> str | None:
        """The layer of a media packet; `rid` is its rtp-stream-id, if it carries one."""
        if rid is not None and rid in self.rids and self._layer_of.get(ssrc) != rid:
            old = self._ssrc_of.get(rid)
            if old is not None:  # the encoder restarted this layer with a new SSRC
                del self._layer_of[old]
            self._layer_of[ssrc] = rid
            self._ssrc_of[rid] = ssrc
        return self._layer_of.get(ssrc)

    def repaired(self, rtx_ssrc: int, repaired_rid: str | None) -> int | None:
        """The media SSRC an RTX packet repairs (RFC 4588 §4), once both are known."""
        if repaired_rid in self.rids and self._repairs.get(rtx_ssrc) != repaired_rid:
            old = self._rtx_of.get(repaired_rid)
            if old is not None:  # one RTX stream per layer: the maps stay bounded
                del self._repairs[old]
            self._repairs[rtx_ssrc] = repaired_rid
            self._rtx_of[repaired_rid] = rtx_ssrc
        rid = self._repairs.get(rtx_ssrc)
        return None if rid is None else self._ssrc_of.get(rid)

    def layer_of(self, ssrc: int) -> str | None:
        return self._layer_of.get(ssrc)


@dataclass(frozen=True, slots=True)
class LayerState:
    """What the layer choice needs to know about one layer."""

    rid: str
    active: bool
    dimensions: tuple[int, int] | None = None
    first_packet_at: float | None = None


def choose_layer(layers: Sequence[LayerState], pinned: str | None = None) -> str | None:
    """The layer a viewer should receive, or None while no layer is sending.

    The pinned rid while it sends; else the largest picture among the sending layers whose
    size is known (read from keyframes); before any size is known, the first layer that
    sent.
    """
    active = [layer for layer in layers if layer.active]
    if not active:
        return None
    if pinned is not None and any(layer.rid == pinned for layer in active):
        return pinned
    sized = [(layer.dimensions, layer.rid) for layer in active if layer.dimensions is not None]
    if sized:
        return max(sized, key=lambda item: item[0][0] * item[0][1])[1]
    return min(active, key=lambda layer: layer.first_packet_at or 0.0).rid
