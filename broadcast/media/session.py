"""What WHIP and WHEP sessions share: a peer connection, an id, an ETag, a lifetime."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

from aiortc import RTCIceServer, RTCSessionDescription

from broadcast.media import aiortc_glue as glue
from broadcast.media import dtls_fast_start, error_budget
from broadcast.sfu.codecs import CodecSpec
from broadcast.sfu.stream import Stream
from broadcast.tasks import spawn

__all__ = ["Session", "codec_specs", "new_session_id", "set_worker_index", "worker_of"]

logger = logging.getLogger(__name__)

Role = Literal["whip", "whep"]


# "<index>." in worker process <index> of a node (BROADCAST_WORKERS > 1): a request for
# the session that lands on a sibling worker is passed to this one (broadcast.http.affinity).
_id_prefix = ""


def set_worker_index(index: int | None) -> None:
    global _id_prefix
    _id_prefix = "" if index is None else f"{index}."


def worker_of(session_id: str) -> int | None:
    """The worker index a session id was made by, if any."""
    index, dot, _ = session_id.partition(".")
    return int(index) if dot and index.isdigit() and len(index) <= 4 else None


def new_session_id() -> str:
    """128 bits from the OS CSPRNG (RFC 9725 §4.1 / RFC 4086): unguessable URLs."""
    return _id_prefix + secrets.token_urlsafe(16)


def new_etag() -> str:
    """A strong entity tag for one ICE session (RFC 9725 §4.3.1, RFC 9110 §8.8.3)."""
    return f'"{secrets.token_hex(16)}"'


def codec_specs(transceiver: Any) -> list[CodecSpec]:
    return [
        CodecSpec(
            payload_type=c.payloadType or 0,
            mime=c.mimeType.lower(),
            clock_rate=c.clockRate,
            channels=c.channels,
            parameters=dict(c.parameters),
        )
        for c in glue.transceiver_codecs(transceiver)
    ]


class Session:
    """A peer connection bound to one stream; ended exactly once."""

    role: Role

    def __init__(
        self,
        stream: Stream,
        ice_servers: list[RTCIceServer],
        on_ended: Callable[[Session, str], None],
        *,
        max_bundle: bool = False,
    ) -> None:
        self.id = new_session_id()
        self.etag = new_etag()
        self.stream = stream
        self.pc = glue.new_peer_connection(ice_servers, max_bundle=max_bundle)
        self.created_at = time.time()
        self.created_loop_time = asyncio.get_event_loop().time()
        self.connected_at: float | None = None
        self.connected = asyncio.Event()
        self.ended = False
        self.end_reason: str | None = None
        self.answer = ""
        self.remote_ufrag: str | None = None
        self._on_ended = on_ended
        self.log = logging.LoggerAdapter(
            logger, {"stream": stream.name, "session": self.id, "role": self.role}
        )

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            state = self.pc.connectionState
            if state == "connected" and self.connected_at is None:
                self.connected_at = asyncio.get_event_loop().time()
                self.connected.set()
                self.log.info("%s session connected", self.role.upper())
                self.on_connected()
            elif state == "failed":
                reason = self.failure_reason()
                self.log.warning("%s session failed: %s", self.role.upper(), reason)
                self.end(f"connection failed: {reason}")
            elif state == "closed":
                self.end("connection closed")

    def _malformed(self) -> None:
        self.log.warning(
            "%s peer sent over %d malformed packets within %.0f s",
            self.role.upper(),
            error_budget.LIMIT,
            error_budget.WINDOW,
        )
        self.end("too many malformed packets")

    def failure_reason(self) -> str:
        """Why the connection failed, as far as DTLS can tell (else ICE is to blame)."""
        for transceiver in self.pc.getTransceivers():
            reason = dtls_fast_start.handshake_failure_reason(transceiver.receiver.transport)
            if reason:
                return reason
        return "ICE connectivity checks failed or consent expired"

    @property
    def path(self) -> str:
        return f"/{self.role}/{self.stream.name}/{self.id}"

    async def negotiate(self, offer_sdp: str) -> str:
        """Apply the client's offer and return our answer, candidates included."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        self.remote_ufrag = glue.remote_ice_ufrag(self.pc)
        glue.adopt_offered_h264_parameters(self.pc)
        dtls_fast_start.install(self.pc)
        error_budget.install(self.pc, self._malformed)
        self.prepare()
        # setLocalDescription gathers host candidates, so the answer carries them:
        # non-trickle clients (OBS, FFmpeg) need them there.
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.finish_answer(str(self.pc.localDescription.sdp))

    def prepare(self) -> None:
        """Hook transceivers between setRemoteDescription and createAnswer."""

    def finish_answer(self, answer: str) -> str:
        """The answer as sent: aiortc's, plus what aiortc cannot write itself."""
        return answer

    def on_connected(self) -> None:
        """ICE and DTLS are up."""

    def end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self.log.info("%s session ended: %s", self.role.upper(), reason)
        self.on_end()
        self._on_ended(self, reason)
        spawn(self.pc.close())

    def on_end(self) -> None:
        """Detach from the stream; called once, before the peer connection closes."""

    def stats(self) -> dict[str, object]:
        return {
            "session": self.id,
            "role": self.role,
            "created_at": self.created_at,
            "state": self.pc.connectionState,
        }
