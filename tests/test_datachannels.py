"""Data-channel fan-out (broadcast.media.datachannels) with real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection

from broadcast.media import datachannels
from broadcast.media.datachannels import DataChannelHub, TokenBucket

TIMEOUT = 10.0
Message = str | bytes


def test_public_surface() -> None:
    assert set(datachannels.__all__) == {
        "DROP_REASONS",
        "GRACE",
        "MAX_CHANNELS",
        "DataChannelHub",
        "TokenBucket",
    }


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)  # one token back after 0.5 s
    assert sum(bucket.take(100.0) for _ in range(10)) == 3  # never above the burst
    unlimited = TokenBucket(rate=0, burst=1, now=0.0)
    assert all(unlimited.take(0.0) for _ in range(1000))


async def until(predicate: Callable[[], bool]) -> None:
    """Wait, bounded, for a condition nothing emits an event for (the hub's counters)."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT)


async def _reach(channel: RTCDataChannel, state: str, event: str) -> None:
    if channel.readyState != state:
        done = asyncio.Event()
        channel.once(event, done.set)
        await asyncio.wait_for(done.wait(), TIMEOUT)


async def opened(channel: RTCDataChannel) -> None:
    await _reach(channel, "open", "open")


async def closed(channel: RTCDataChannel) -> None:
    await _reach(channel, "closed", "close")


@dataclass(eq=False)
class Client:
    """A client pc (the offerer) and the server-side pc that answers it."""

    pc: RTCPeerConnection
    server: RTCPeerConnection
    own: dict[str, RTCDataChannel] = field(default_factory=dict)  # created by the client
    channels: dict[str, list[RTCDataChannel]] = field(default_factory=dict)  # from the server
    inbox: dict[str, asyncio.Queue[Message]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        @self.pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            self.channels.setdefault(channel.label, []).append(channel)
            channel.on("message", self.queue(channel.label).put_nowait)
            self.arrived.set()

    def queue(self, label: str) -> asyncio.Queue[Message]:
        return self.inbox.setdefault(label, asyncio.Queue())

    async def mirror(self, label: str, nth: int = 1) -> RTCDataChannel:
        """The `nth` channel the server opened with this label, once open."""

        async def wait() -> RTCDataChannel:
            while len(self.channels.get(label, ())) < nth:
                self.arrived.clear()
                await self.arrived.wait()
            return self.channels[label][nth - 1]

        channel = await asyncio.wait_for(wait(), TIMEOUT)
        await opened(channel)
        return channel

    async def receive(self, label: str, count: int = 1) -> list[Message]:
        queue = self.queue(label)
        return [await asyncio.wait_for(queue.get(), TIMEOUT) for _ in range(count)]


class Rig:
    def __init__(self, **options: Any) -> None:
        settings: dict[str, Any] = {
            "max_message_bytes": 16384,
            "rate": 0.0,
            "burst": 1000,
            "viewer_messages": False,
            "buffer_bytes": 1 << 20,
        }
        settings.update(options)
        self.hub = DataChannelHub(**settings)
        self.pcs: list[RTCPeerConnection] = []

    def new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.append(pc)
        return pc

    async def connect(self, client: Client) -> None:
        states = {pc: asyncio.Event() for pc in (client.pc, client.server)}
        for pc, event in states.items():
            pc.on("connectionstatechange", lambda pc=pc, event=event: _connected(pc, event))
        await client.pc.setLocalDescription(await client.pc.createOffer())
        await client.server.setRemoteDescription(client.pc.localDescription)
        await client.server.setLocalDescription(await client.server.createAnswer())
        await client.pc.setRemoteDescription(client.server.localDescription)
        for event in states.values():
            await asyncio.wait_for(event.wait(), TIMEOUT)

    async def publisher(self, *, chat_protocol: str = "chat-v1", unordered: bool = True) -> Client:
        client = Client(self.new_pc(), self.new_pc())
        self.hub.attach_publisher(client.server)
        client.own["chat"] = client.pc.createDataChannel("chat", protocol=chat_protocol)
        client.own["telemetry"] = client.pc.createDataChannel(
            "telemetry", ordered=not unordered, maxRetransmits=0
        )
        client.own["chat"].on("message", client.queue("chat").put_nowait)
        await self.connect(client)
        for channel in client.own.values():
            await opened(channel)
        await until(lambda: len(self.hub.stats()) == 2)
        return client

    async def viewer(self, key: object, *, data: bool = True) -> Client:
        client = Client(self.new_pc(), self.new_pc())
        if data:
            client.own["dummy"] = client.pc.createDataChannel("dummy")
        else:
            client.pc.addTransceiver("audio", direction="recvonly")
        await self.connect(client)
        self.hub.attach_viewer(key, client.server)
        return client

    async def close(self) -> None:
        self.hub.close()
        await asyncio.wait_for(asyncio.gather(*(pc.close() for pc in self.pcs)), TIMEOUT)


def _connected(pc: RTCPeerConnection, event: asyncio.Event) -> None:
    if pc.connectionState == "connected":
        event.set()


@pytest.fixture
async def rigs() -> AsyncIterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**options: Any) -> Rig:
        made.append(Rig(**options))
        return made[-1]

    yield make
    for rig in made:
        await rig.close()


async def test_reliable_messages_complete_and_in_order(rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    publisher = await rig.publisher()
    viewers = [await rig.viewer(i) for i in range(3)]
    for viewer in viewers:
        await viewer.mirror("chat")
    for n in range(1000):
        publisher.own["chat"].send(str(n))
    for viewer in viewers:
        assert await viewer.receive("chat", 1000) == [str(n) for n in range(1000)]
    assert rig.hub.messages_in == 1000
    assert rig.hub.messages_out == 3000
    chat = next(s for s in rig.hub.stats() if s["label"] == "chat")
    assert chat["viewers"] == 3 and chat["messages"] == 1000
    assert chat["bytes"] == sum(len(str(n)) for n in range(1000))


async def test_mirror_options_and_message_types(rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    publisher = await rig.publisher()
    viewer = await rig.viewer("v")
    chat, telemetry = await viewer.mirror("chat"), await viewer.mirror("telemetry")
    assert (chat.ordered, chat.maxRetransmits, chat.protocol) == (True, None, "chat-v1")
    assert (telemetry.ordered, telemetry.maxRetransmits) == (False, 0)
    assert telemetry.maxPacketLifeTime is None
    assert "dummy" not in viewer.channels  # the viewer's own channel is not mirrored back
    assert {s["label"] for s in rig.hub.stats()} == {"chat", "telemetry"}
    for message in ("héllo", b"\x00\x01binary", "", b""):
        publisher.own["chat"].send(message)
    received = await viewer.receive("chat", 4)
    assert received == ["héllo", b"\x00\x01binary", "", b""]
    assert [type(m) for m in received] == [str, bytes, str, bytes]
    publisher.own["telemetry"].send(b"t")  # unreliable, but loopback loses nothing
    assert await viewer.receive("telemetry") == [b"t"]


async def test_size_limit_measures_utf8(rigs: Callable[..., Rig]) -> None:
    rig = rigs(max_message_bytes=100)
    publisher = await rig.publisher()
    viewer = await rig.viewer("v")
    await viewer.mirror("chat")
    publisher.own["chat"].send("é" * 51)  # 51 characters, 102 bytes
    publisher.own["chat"].send(b"x" * 101)
    publisher.own["chat"].send("é" * 50)
    assert await viewer.receive("chat") == ["é" * 50]  # ordered: the others never came
    assert rig.hub.dropped["size"] == 2


async def test_rate_limit_per_sender(rigs: Callable[..., Rig]) -> None:
    rig = rigs(rate=0.001, burst=3, viewer_messages=True)
    publisher = await rig.publisher()
    viewer = await rig.viewer("v")
    mirror = await viewer.mirror("chat")
    for n in range(5):
        publisher.own["chat"].send(str(n))
    assert await viewer.receive("chat", 3) == ["0", "1", "2"]
    await until(lambda: rig.hub.dropped["rate"] == 2)
    # The viewer has its own bucket, untouched by the publisher's.
    for n in range(4):
        mirror.send(f"v{n}")
    assert await publisher.receive("chat", 3) == ["v0", "v1", "v2"]
    await until(lambda: rig.hub.dropped["rate"] == 3)
    assert viewer.queue("chat").empty()


@pytest.mark.parametrize("allowed", [True, False])
async def test_viewer_to_publisher(rigs: Callable[..., Rig], allowed: bool) -> None:
    rig = rigs(viewer_messages=allowed)
    publisher = await rig.publisher()
    viewers = [await rig.viewer(i) for i in range(2)]
    mirror = await viewers[0].mirror("chat")
    await viewers[1].mirror("chat")
    mirror.send("from viewer")
    mirror.send(b"x" * 20000)  # over max_message_bytes
    if allowed:
        assert await publisher.receive("chat") == ["from viewer"]
        await until(lambda: rig.hub.dropped["size"] == 1)
    else:
        await until(lambda: rig.hub.dropped["viewer_disallowed"] == 2)
    assert publisher.queue("chat").empty()
    # Never echoed to the other viewers (nor back to the sender).
    publisher.own["chat"].send("marker")
    for viewer in viewers:
        assert await viewer.receive("chat") == ["marker"]


async def test_late_viewer_gets_mirrors(rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    publisher = await rig.publisher()
    early = await rig.viewer("early")
    await early.mirror("chat")
    publisher.own["chat"].send("one")
    assert await early.receive("chat") == ["one"]
    late = await rig.viewer("late")
    publisher.own["chat"].send("two")  # may wait in the hub for the mirror's ACK
    assert await late.receive("chat") == ["two"]
    assert await early.receive("chat") == ["two"]
    assert set(late.channels) == {"chat", "telemetry"}


async def test_viewer_without_application_section_is_skipped(rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    publisher = await rig.publisher()
    bare = await rig.viewer("bare", data=False)
    viewer = await rig.viewer("v")
    assert bare.server.sctp is None and bare.pc.sctp is None
    await viewer.mirror("chat")
    publisher.own["chat"].send("hi")
    assert await viewer.receive("chat") == ["hi"]
    assert all(s["viewers"] == 1 for s in rig.hub.stats())
    rig.hub.detach_viewer("bare")


async def test_detach_viewer_stops_sending(rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    publisher = await rig.publisher()
    gone, staying = await rig.viewer("gone"), await rig.viewer("staying")
    mirror = await gone.mirror("chat")
    await staying.mirror("chat")
    rig.hub.detach_viewer("gone")
    await closed(mirror)  # RFC 8831 §6.7: the server resets its stream
    publisher.own["chat"].send("after")
    assert await staying.receive("chat") == ["after"]
    assert gone.queue("chat").empty()
    rig.hub.detach_viewer("gone")  # twice: no harm


async def test_publisher_reconnect_reuses_mirrors(rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    first = await rig.publisher()
    viewer = await rig.viewer("v")
    chat, telemetry = await viewer.mirror("chat"), await viewer.mirror("telemetry")
    first.own["chat"].send("before")
    assert await viewer.receive("chat") == ["before"]
    rig.hub.detach_publisher(first.server)
    await asyncio.wait_for(asyncio.gather(first.pc.close(), first.server.close()), TIMEOUT)
    assert chat.readyState == "open"
    assert all(s["publisher"] is False for s in rig.hub.stats())
    # Same label and options for chat; telemetry now ordered: a new mirror replaces it.
    second = await rig.publisher(unordered=False)
    second.own["chat"].send("after")
    assert await viewer.receive("chat") == ["after"]
    assert viewer.channels["chat"] == [chat]
    await closed(telemetry)
    assert (await viewer.mirror("telemetry", 2)).ordered is True
    assert len(viewer.channels["telemetry"]) == 2


async def test_gone_publisher_mirrors_close_after_grace(rigs: Callable[..., Rig]) -> None:
    rig = rigs(grace=0.2)
    publisher = await rig.publisher()
    viewer = await rig.viewer("v")
    chat = await viewer.mirror("chat")
    rig.hub.detach_publisher(publisher.server)
    await closed(chat)
    assert rig.hub.stats() == []


async def test_slow_viewer_loses_reliable_mirror_only(rigs: Callable[..., Rig]) -> None:
    rig = rigs(buffer_bytes=16384)
    publisher = await rig.publisher()
    fast, slow = await rig.viewer("fast"), await rig.viewer("slow")
    await fast.mirror("chat")
    await fast.mirror("telemetry")
    await slow.mirror("chat")
    await slow.mirror("telemetry")

    async def ignore(data: bytes) -> None:
        pass

    # The slow viewer stops reading: nothing is acknowledged, the server's queue grows.
    assert slow.pc.sctp is not None
    slow.pc.sctp._handle_data = ignore  # type: ignore[method-assign]
    payload = b"\xab" * 4096
    for n in range(20):
        publisher.own["chat"].send(bytes([n]) + payload)
        assert await fast.receive("chat") == [bytes([n]) + payload]
    counts = {s["label"]: s["viewers"] for s in rig.hub.stats()}
    assert counts["chat"] == 1  # closed for the slow viewer only
    closed_at = rig.hub.dropped["buffer"]
    assert closed_at >= 1
    for n in range(20):
        publisher.own["telemetry"].send(bytes([n]) + payload)
        assert await fast.receive("telemetry") == [bytes([n]) + payload]
    # Unreliable: the slow viewer's messages are dropped, its mirror stays.
    assert {s["label"]: s["viewers"] for s in rig.hub.stats()}["telemetry"] == 2
    assert rig.hub.dropped["buffer"] > closed_at
