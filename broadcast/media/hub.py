"""The node's streams and sessions: creates, finds and ends them; expires the idle."""

from __future__ import annotations

import asyncio
import logging

from aiortc import RTCIceServer
from prometheus_client import Counter, Histogram

from broadcast.config import Settings
from broadcast.errors import Conflict, NotFound, ServiceUnavailable, UnprocessableContent
from broadcast.media import udpmux
from broadcast.media.cluster import Cluster
from broadcast.media.datachannels import DataChannelHub
from broadcast.media.ledger import Ledger
from broadcast.media.publisher import PublisherSession
from broadcast.media.recordings import Recordings
from broadcast.media.relay import Relay, UpstreamSession
from broadcast.media.session import Session
from broadcast.media.viewer import ViewerSession
from broadcast.protocol.simulcast import Simulcast
from broadcast.registry.base import StreamRegistry
from broadcast.sfu.stream import Stream
from broadcast.tasks import spawn

__all__ = ["Hub"]

logger = logging.getLogger(__name__)

JANITOR_INTERVAL = 1.0


class Hub:
    def __init__(
        self, settings: Settings, registry: StreamRegistry, ice_servers: list[RTCIceServer]
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.ice_servers = ice_servers
        self.streams: dict[str, Stream] = {}
        self.sessions: dict[str, Session] = {}
        # Inside the server: a publisher packet's arrival to its send to the last viewer.
        self.forward_delay = Histogram(
            "broadcast_forward_delay_seconds",
            "Time from a publisher packet's arrival to its send to the last viewer",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=None,
        )
        # Simulcast layer changes of viewers: the ABR policy's (down, up) or the viewer's own.
        self.layer_switches = Counter(
            "broadcast_layer_switches",
            "Simulcast layer changes asked for viewers, by who decided",
            ["reason"],
            registry=None,
        )
        for reason in ("down", "up", "viewer"):
            self.layer_switches.labels(reason)
        self.draining = False  # new sessions go elsewhere (broadcast.drain)
        self._connect_timers: dict[str, asyncio.TimerHandle] = {}
        self._janitor: asyncio.Task[None] | None = None
        self.ledger = Ledger()  # joins, refusals, and the counters of what has ended
        self.recordings = Recordings(settings)
        # One UDP port and/or NAT 1:1 addresses for this process's ICE (None: aioice's way).
        self.gathering = udpmux.plan(settings.udp_port, settings.public_ips, settings.ice_addresses)
        self.relay = Relay(settings, ice_servers, self._stream, self.viewer_count, self.gathering)
        self.cluster = Cluster(
            settings,
            registry,
            self.relay,
            lambda: list(self.streams.values()),
            self.viewer_count,
            self.egress_octets,
            lambda stream: sum(v.relay_layers for v in self.viewers_of(stream)),
        )

    async def start(self) -> None:
        if isinstance(self.gathering, udpmux.UdpMux):
            await self.gathering.open()
        self._janitor = asyncio.ensure_future(self._janitor_loop())
        self.cluster.start()

    async def close(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
        await self.cluster.stop()
        await self.recordings.close()  # every file finished before its publisher goes
        sessions = list(self.sessions.values())
        for session in sessions:
            session.end("server shutting down")
        await asyncio.gather(*(s.pc.close() for s in sessions), return_exceptions=True)
        for stream in self.streams.values():
            stream.close()
        self.streams.clear()
        if isinstance(self.gathering, udpmux.UdpMux):
            self.gathering.close()

    def _stream(self, name: str) -> Stream:
        stream = self.streams.get(name)
        if stream is None:
            stream = self.streams[name] = Stream(name)
            for feed in stream.feeds.values():
                feed.delay_observer = self.forward_delay.observe
            s = self.settings
            stream.data = DataChannelHub(
                max_message_bytes=s.data_max_message_bytes,
                rate=s.data_rate,
                burst=s.data_burst,
                viewer_messages=s.data_viewer_messages,
                buffer_bytes=s.data_buffer_bytes,
                grace=s.publisher_grace,
            )
        return stream

    async def publish(
        self, name: str, offer_sdp: str, simulcast: dict[int, Simulcast] | None = None
    ) -> PublisherSession:
        """Start a WHIP session; `simulcast`: the offer's, per m-line index."""
        posted_at = asyncio.get_running_loop().time()
        if self.draining:
            await self.cluster.elsewhere("whip", name, "")
        self._check_capacity("whip", name, hops=0)
        stream = self._stream(name)
        now = asyncio.get_event_loop().time()
        current = stream.publisher
        if isinstance(current, PublisherSession) and not isinstance(current, UpstreamSession):
            if not current.silent(now, self.settings.connect_timeout):
                raise Conflict(
                    f"stream {name!r} already has a live publisher; stop it first "
                    "or publish under another name",
                    retry_after=int(self.settings.connect_timeout),
                )
            current.end("replaced by a new publisher after going silent")
        session = PublisherSession(
            stream,
            self.ice_servers,
            self._ended,
            simulcast=simulcast,
            start_bitrate=self.settings.publisher_start_bitrate,
        )
        # Reserve the stream before the first await: a concurrent POST gets 409.
        stream.set_publisher(session)
        try:
            if not await self.registry.claim(name, self.settings.node_id):
                raise Conflict(
                    f"stream {name!r} is published on another node",
                    retry_after=int(self.settings.connect_timeout),
                )
            if isinstance(current, UpstreamSession):  # relayed here until now
                self.relay.close(name, "published on this node now")
            await self._negotiate(session, offer_sdp)
        except BaseException:
            if stream.publisher is session:
                # A stream relayed here goes on being relayed to its viewers.
                relayed = isinstance(current, UpstreamSession) and not current.ended
                stream.set_publisher(current if relayed else None)
            if stream.data is not None:
                stream.data.detach_publisher(session.pc)
            await session.pc.close()
            raise
        self.sessions[session.id] = session
        self.ledger.started(session, posted_at, self.settings.connect_timeout)
        self._reap_unless_connected(session)
        self.recordings.published(stream)
        # Write the stream's record now, with the claim: the cluster lists the stream at
        # once, and the record never expires before the claim it describes.
        spawn(self.cluster.beat())
        return session

    async def play(
        self, name: str, offer_sdp: str, layer: str | None = None, hops: int = 0
    ) -> ViewerSession:
        """Start a WHEP session; `layer`: the simulcast rid to receive (None: highest);
        `hops`: relay hops between the asking node and the origin (0: a client)."""
        posted_at = asyncio.get_running_loop().time()
        if self.draining and hops == 0:  # other nodes' upstreams still pull from here
            await self.cluster.elsewhere("whep", name, "" if layer is None else f"layer={layer}")
        self._check_capacity("whep", name, hops)
        stream = self.streams.get(name)
        if stream is None or stream.publisher is None:
            # Published on another node? Redirect there, or relay it here.
            await self.cluster.route_viewer(name, hops, "" if layer is None else f"layer={layer}")
            stream = self.streams.get(name)
        if self.settings.require_live and (stream is None or not stream.live):
            # draft-ietf-wish-whep §4.2: 409 while no publication is live.
            raise Conflict(f"stream {name!r} is not live", retry_after=5)
        stream = self._stream(name)
        session = ViewerSession(
            stream,
            self.ice_servers,
            self._ended,
            layer=layer,
            on_switch=lambda reason: self.layer_switches.labels(reason).inc(),
            relay_layers=hops > 0,
            # An edge's several video sections share one transport (aiortc's default
            # policy would give the later ones their own, never connected).
            max_bundle=hops > 0,
        )
        await self._negotiate(session, offer_sdp)
        self.sessions[session.id] = session
        self.ledger.started(session, posted_at, self.settings.connect_timeout)
        self._reap_unless_connected(session)
        return session

    def _reap_unless_connected(self, session: Session) -> None:
        """End the session BROADCAST_CONNECT_TIMEOUT after its POST if ICE and DTLS are
        not up by then (on time; the janitor's once-a-second sweep is the backstop)."""

        def reap() -> None:
            self._connect_timers.pop(session.id, None)
            if session.connected_at is None and not session.ended:
                session.end("ICE/DTLS did not connect in time")

        deadline = session.created_loop_time + self.settings.connect_timeout
        # Kept by id and cancelled when the session ends, so that a timer does not hold an
        # ended session (and its peer connection) in memory until its deadline.
        self._connect_timers[session.id] = asyncio.get_running_loop().call_at(deadline, reap)

    def _check_capacity(self, role: str, name: str, hops: int) -> None:
        """503 + Retry-After past BROADCAST_MAX_HANDSHAKES sessions still connecting, or
        past the publisher/viewer limits (0: none; other nodes' relays are not viewers)."""
        s = self.settings
        sessions = list(self.sessions.values())
        connecting = sum(x.connected_at is None and not x.ended for x in sessions)
        if connecting >= s.max_handshakes:
            raise ServiceUnavailable(
                f"{connecting} sessions are connecting; try again in a moment", retry_after=1
            )
        if role == "whip":
            publishers = sum(x.role == "whip" for x in sessions)
            if s.max_publishers and publishers >= s.max_publishers:
                raise ServiceUnavailable(
                    f"this node takes at most {s.max_publishers} publishers", retry_after=30
                )
            return
        if hops:
            return
        viewers = [x for x in sessions if isinstance(x, ViewerSession) and not x.relay_layers]
        if s.max_viewers and len(viewers) >= s.max_viewers:
            raise ServiceUnavailable(
                f"this node takes at most {s.max_viewers} viewers", retry_after=10
            )
        watching = sum(x.stream.name == name for x in viewers)
        if s.max_viewers_per_stream and watching >= s.max_viewers_per_stream:
            raise ServiceUnavailable(
                f"stream {name!r} takes at most {s.max_viewers_per_stream} viewers here",
                retry_after=10,
            )

    async def _negotiate(self, session: Session, offer_sdp: str) -> str:
        try:
            with udpmux.gathering_on(self.gathering):
                session.answer = await session.negotiate(offer_sdp)
        except Exception as exc:
            session.ended = True
            await session.pc.close()
            raise UnprocessableContent(
                f"the offer could not be negotiated: {_describe(exc)}"
            ) from exc
        return session.answer

    def get(self, role: str, name: str, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.role != role or session.stream.name != name:
            raise NotFound("no such session; it may have ended or expired")
        return session

    async def delete(self, session: Session) -> None:
        session.end("deleted by the client")
        await session.pc.close()

    def _ended(self, session: Session, reason: str) -> None:
        self.sessions.pop(session.id, None)
        timer = self._connect_timers.pop(session.id, None)
        if timer is not None:
            timer.cancel()
        self.ledger.session_ended(session)
        if isinstance(session, PublisherSession) and not session.stream.live:
            self.recordings.unpublished(session.stream)

    def egress_octets(self) -> int:
        """Media octets sent to viewers so far (RTP payloads)."""
        live = sum(
            d.octets
            for s in self.sessions.values()
            if isinstance(s, ViewerSession)
            for d in s.downtracks.values()
        )
        return self.ledger.ended.egress_octets + live

    def viewer_count(self, stream: Stream) -> int:
        return len(self.viewers_of(stream))

    def _forget_stream_if_unused(self, stream: Stream, now: float) -> None:
        """Drop a stream nobody uses once its publisher grace is over (janitor only)."""
        if stream.live or stream.subscriptions:
            return
        if any(s.stream is stream for s in self.sessions.values()):
            return
        if self.streams.get(stream.name) is stream:
            idle = stream.idle_since
            grace = self.settings.publisher_grace
            if idle is not None and now - idle < grace:
                return  # a reconnecting publisher gets its stream back
            del self.streams[stream.name]
            self.ledger.stream_removed(stream)
            stream.close()
            spawn(self._release(stream.name))

    async def _release(self, name: str) -> None:
        await self.registry.release(name, self.settings.node_id)
        stream = self.streams.get(name)
        if stream is not None and stream.live and not isinstance(stream.publisher, UpstreamSession):
            # Published again while the release was in flight: take the claim back.
            await self.registry.claim(name, self.settings.node_id)

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_INTERVAL)
            try:
                self.expire(asyncio.get_event_loop().time())
            except Exception:
                logger.exception("janitor failed")

    def expire(self, now: float) -> None:
        """End sessions that never connected, viewers whose publisher left and did not
        come back within BROADCAST_PUBLISHER_GRACE, and viewers that waited too long.

        Clients that re-POST after an ICE failure without a DELETE (Eyevinn's webrtc-player
        does) would otherwise leak sessions.
        """
        timeout = self.settings.connect_timeout
        for session in list(self.sessions.values()):
            if session.connected_at is None and now - session.created_loop_time > timeout:
                session.end("ICE/DTLS did not connect in time")
            elif isinstance(session, ViewerSession):
                stream = session.stream
                idle, left = stream.idle_since, stream.left_at
                if idle is None:
                    continue
                if left is not None and session.created_loop_time <= left:
                    if now - left > self.settings.publisher_grace:
                        session.end("the publisher left and did not come back")
                elif now - max(idle, session.created_loop_time) > self.settings.wait_timeout:
                    session.end("no publisher within BROADCAST_WAIT_TIMEOUT")
        for stream in list(self.streams.values()):
            self._forget_stream_if_unused(stream, now)

    def live_streams(self) -> list[Stream]:
        return [s for s in self.streams.values() if s.live]

    def viewers_of(self, stream: Stream) -> list[ViewerSession]:
        return [
            s for s in self.sessions.values() if isinstance(s, ViewerSession) and s.stream is stream
        ]


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
