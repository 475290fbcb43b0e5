"""The Redis cluster registry against a real, private redis-server (and the shared contract
that MemoryRegistry, the workers' ClaimTable and its LocalRegistry client meet too)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from broadcast.registry.base import NodeInfo, RegistryUnavailable, StreamInfo, StreamRegistry
from broadcast.registry.local import LocalRegistry, serve_table
from broadcast.registry.memory import MemoryRegistry
from broadcast.registry.redis import (
    RedisRegistry,
    RedisTarget,
    node_index_key,
    node_key,
    owner_key,
    parse_redis_url,
    stream_index_key,
    stream_info_key,
)
from broadcast.registry.table import ClaimTable
from tests.support.redisproc import RedisProcess, free_port, redis_server

__all__ = ["redis_server"]

TTL = 0.5
NODE_A = NodeInfo(node_id="a", url="http://a:8080", viewers=3, egress_bps=1.5e6, cpu=0.25)
NODE_B = NodeInfo(node_id="b", url="http://b:8080", draining=True)

MakeRedis = Callable[..., RedisRegistry]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    """Poll `check` every 50 ms for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def make_redis(redis_server: RedisProcess) -> AsyncIterator[MakeRedis]:
    made: list[RedisRegistry] = []

    def make(**kwargs: Any) -> RedisRegistry:
        kwargs.setdefault("ttl", TTL)
        registry = RedisRegistry(redis_server.url, **kwargs)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close()


@pytest.fixture
async def raw(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


# --- one contract for both implementations -------------------------------------------


@pytest.fixture(params=["memory", "redis", "table", "local"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StreamRegistry]:
    reg: StreamRegistry
    server = None
    if request.param == "memory":
        reg = MemoryRegistry(NODE_A)
    elif request.param == "table":
        reg = ClaimTable(ttl=5.0)
    elif request.param == "local":  # the worker processes' client of a supervisor's table
        path = str(tmp_path / "registry.sock")
        server = await serve_table(ClaimTable(ttl=5.0), path)
        reg = LocalRegistry(path)
    else:
        redis: RedisProcess = request.getfixturevalue("redis_server")
        reg = RedisRegistry(redis.url, ttl=5.0)
    yield reg
    await reg.close()
    if server is not None:
        server.close()


async def test_contract_claim_lookup_release(registry: StreamRegistry) -> None:
    assert await registry.lookup("cam") is None
    assert await registry.claim("cam", "a")
    assert await registry.claim("cam", "a")  # already mine
    assert not await registry.claim("cam", "b")
    assert await registry.lookup("cam") == "a"
    assert await registry.refresh("cam", "a")
    assert not await registry.refresh("cam", "b")
    await registry.release("cam", "b")  # not the owner: nothing happens
    assert await registry.lookup("cam") == "a"
    await registry.release("cam", "a")
    assert await registry.lookup("cam") is None
    assert not await registry.refresh("cam", "a")
    assert await registry.claim("cam", "b")


async def test_contract_heartbeat(registry: StreamRegistry) -> None:
    assert await registry.claim("cam", "a")
    assert await registry.claim("other", "b")
    mine = StreamInfo("cam", "a", started_at=1700000000.5, codecs=("VP8", "opus"), layers=("h",))
    theirs = StreamInfo("other", "a", started_at=1.0)
    assert await registry.heartbeat(NODE_A, [mine, theirs]) == ["other"]
    assert await registry.streams() == [mine]
    assert NODE_A in await registry.nodes()
    assert await registry.node("a") == NODE_A
    assert await registry.node("nobody") is None


async def test_contract_node_sources_round_trip(registry: StreamRegistry) -> None:
    # What a node can be pulled from (stream, hops from the origin, upstreams served).
    relaying = dataclasses.replace(NODE_A, sources=(("cam", 0, 2), ("far", 1, 0)))
    await registry.heartbeat(relaying, [])
    assert await registry.node("a") == relaying
    assert relaying in await registry.nodes()


# --- Redis specifics ---------------------------------------------------------------------


async def test_claim_sets_and_refreshes_expiry(make_redis: MakeRedis, raw: Redis) -> None:
    reg = make_redis()
    assert await reg.claim("cam", "a")
    assert await raw.get("broadcast:{cam}:owner") == "a"
    assert 0 < await raw.pttl("broadcast:{cam}:owner") <= 500
    await raw.pexpire("broadcast:{cam}:owner", 100)
    assert await reg.claim("cam", "a")  # reclaiming my own stream extends it
    assert await raw.pttl("broadcast:{cam}:owner") > 300
    await raw.pexpire("broadcast:{cam}:owner", 100)
    assert not await reg.claim("cam", "b")  # someone else's claim is left alone
    assert await raw.pttl("broadcast:{cam}:owner") <= 100
    await raw.pexpire("broadcast:{cam}:owner", 100)
    assert await reg.refresh("cam", "a")
    assert await raw.pttl("broadcast:{cam}:owner") > 300


async def test_claim_expires_without_refresh(make_redis: MakeRedis) -> None:
    a, b = make_redis(), make_redis()
    assert await a.claim("cam", "a")
    assert not await b.claim("cam", "b")

    async def gone() -> bool:
        return await b.lookup("cam") is None

    await eventually(gone)
    assert not await a.refresh("cam", "a")  # an expired claim is not revived
    assert await b.claim("cam", "b")
    assert await a.lookup("cam") == "b"


async def test_release_by_owner_removes_stream_record(make_redis: MakeRedis, raw: Redis) -> None:
    reg = make_redis(ttl=5.0)
    assert await reg.claim("cam", "a")
    assert await reg.heartbeat(NODE_A, [StreamInfo("cam", "a")]) == []
    assert [s.stream for s in await reg.streams()] == ["cam"]
    await reg.release("cam", "b")
    assert await raw.exists("broadcast:{cam}:owner", "broadcast:{cam}:info") == 2
    await reg.release("cam", "a")
    assert await raw.exists("broadcast:{cam}:owner", "broadcast:{cam}:info") == 0
    assert await reg.streams() == []  # its index entry is skipped until pruned


async def test_heartbeat_records_and_expiry(make_redis: MakeRedis, raw: Redis) -> None:
    a, b = make_redis(), make_redis()
    assert await a.claim("cam", "a")
    assert await b.claim("desk", "b")
    cam = StreamInfo("cam", "a", started_at=12.5, codecs=("H264",), layers=("f", "h", "q"))
    desk = StreamInfo("desk", "b", codecs=("VP8",))
    assert await a.heartbeat(NODE_A, [cam]) == []
    assert await b.heartbeat(NODE_B, [desk, StreamInfo("cam", "b")]) == ["cam"]
    assert sorted(await a.nodes(), key=lambda n: n.node_id) == [NODE_A, NODE_B]
    assert await b.node("a") == NODE_A
    assert sorted(await b.streams(), key=lambda s: s.stream) == [cam, desk]
    assert 0 < await raw.pttl("broadcast:{nodes}:node:a") <= 500
    assert 0 < await raw.pttl("broadcast:{cam}:info") <= 500

    async def only_a_left() -> bool:  # b stops beating; a keeps going
        await a.heartbeat(NODE_A, [cam])
        return [n.node_id for n in await a.nodes()] == ["a"]

    await eventually(only_a_left)
    assert await a.node("b") is None
    assert await a.streams() == [cam]
    assert await a.lookup("desk") is None
    assert await raw.zrange("broadcast:{nodes}:index", 0, -1) == ["a"]  # pruned

    async def all_gone() -> bool:
        return await a.nodes() == [] and await a.streams() == []

    await eventually(all_gone)


async def test_index_scores_are_when_the_records_expire(make_redis: MakeRedis, raw: Redis) -> None:
    """Scored on Redis's clock by the script that writes the record, so a node stalled
    between reading the clock and writing cannot drop out of the listings while its claim
    lives on (a 4.1 s "gone" with a 6 s claim was seen under load)."""
    registry = make_redis(ttl=5.0)
    assert await registry.claim("cam", "a")
    real = registry._client.pipeline

    def stalling(*args: Any, **kwargs: Any) -> Any:  # the node stalls 0.3 s before writing
        pipe = real(*args, **kwargs)
        execute = pipe.execute

        async def late(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.3)
            return await execute(*args, **kwargs)

        pipe.execute = late
        return pipe

    registry._client.pipeline = stalling  # type: ignore[method-assign]
    await registry.heartbeat(NODE_A, [StreamInfo("cam", "a")])
    seconds, micros = await raw.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    for index, member, key in (
        ("broadcast:{nodes}:index", "a", "broadcast:{nodes}:node:a"),
        ("broadcast:{streams}:index", "cam", "broadcast:{cam}:info"),
        ("broadcast:{streams}:index", "cam", "broadcast:{cam}:owner"),
    ):
        score, pttl = await raw.zscore(index, member), await raw.pttl(key)
        assert score is not None and abs(score - (now + pttl)) <= 5, (key, score, now + pttl)


async def test_heartbeat_keeps_claim_alive(make_redis: MakeRedis) -> None:
    reg = make_redis()
    assert await reg.claim("cam", "a")
    deadline = time.monotonic() + 1.2  # more than twice the ttl
    while time.monotonic() < deadline:
        assert await reg.heartbeat(NODE_A, [StreamInfo("cam", "a")]) == []
        await asyncio.sleep(0.1)
    assert await reg.lookup("cam") == "a"


async def test_concurrent_claims_have_one_winner(make_redis: MakeRedis) -> None:
    a, b = make_redis(ttl=5.0), make_redis(ttl=5.0)
    for round_ in range(50):
        stream = f"race-{round_}"
        won_a, won_b = await asyncio.gather(a.claim(stream, "a"), b.claim(stream, "b"))
        assert won_a != won_b, f"round {round_}: a={won_a} b={won_b}"
        assert await a.lookup(stream) == ("a" if won_a else "b")


async def test_prefixes_are_isolated(make_redis: MakeRedis) -> None:
    one, two = make_redis(prefix="one"), make_redis(prefix="two")
    assert await one.claim("cam", "a")
    assert await two.claim("cam", "b")
    assert await one.lookup("cam") == "a"


async def test_dead_redis_fails_fast_then_recovers(
    make_redis: MakeRedis, redis_server: RedisProcess
) -> None:
    reg = make_redis(ttl=5.0)
    await reg.connect()
    assert await reg.claim("cam", "a")  # the pool now holds a live connection
    redis_server.stop()
    calls: list[Callable[[], Awaitable[object]]] = [
        reg.connect,
        lambda: reg.claim("cam", "a"),
        lambda: reg.refresh("cam", "a"),
        lambda: reg.release("cam", "a"),
        lambda: reg.lookup("cam"),
        lambda: reg.heartbeat(NODE_A, [StreamInfo("cam", "a")]),
        reg.nodes,
        lambda: reg.node("a"),
        reg.streams,
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable) as info:
            await call()
        assert time.monotonic() - started < 3.0
        assert info.value.status == 503
        assert info.value.headers["Retry-After"] == "5"
        assert "redis://127.0.0.1" in info.value.detail
    redis_server.start()  # same port, empty data: the same object just works again
    assert await reg.claim("cam", "a")
    assert await reg.heartbeat(NODE_A, [StreamInfo("cam", "a")]) == []
    assert await reg.node("a") == NODE_A
    redis_server.stop()  # a restart between two calls: the pooled connection is stale
    redis_server.start()
    assert await reg.claim("cam", "a")


async def test_cluster_and_sentinel_unreachable_are_unavailable() -> None:
    port = free_port()  # nothing listens here
    for url in (f"redis+cluster://127.0.0.1:{port}", f"redis+sentinel://127.0.0.1:{port}/main"):
        reg = RedisRegistry(url)
        try:
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable):
                await reg.claim("cam", "a")
            assert time.monotonic() - started < 3.0
        finally:
            await reg.close()


# --- pure functions ------------------------------------------------------------------------


def test_keys_are_hash_tagged() -> None:
    assert owner_key("broadcast", "cam") == "broadcast:{cam}:owner"
    assert stream_info_key("broadcast", "cam") == "broadcast:{cam}:info"
    assert node_key("broadcast", "n1") == "broadcast:{nodes}:node:n1"
    assert node_index_key("broadcast") == "broadcast:{nodes}:index"
    assert stream_index_key("x") == "x:{streams}:index"
    for stream in ("cam", "a-b_c.1", "weird}name", "{x"):
        assert key_slot(owner_key("p", stream).encode()) == key_slot(
            stream_info_key("p", stream).encode()
        )
    assert key_slot(node_key("p", "n1").encode()) == key_slot(node_index_key("p").encode())


def test_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisRegistry("redis://127.0.0.1:1", prefix="{bad}")


@pytest.mark.parametrize(
    ("url", "kind", "target"),
    [
        ("redis://h:1/0", "redis", RedisTarget(url="redis://h:1/0")),
        ("rediss://u:p@h:6380/2", "redis", RedisTarget(url="rediss://u:p@h:6380/2")),
        ("unix:///run/redis.sock?db=1", "redis", RedisTarget(url="unix:///run/redis.sock?db=1")),
        ("redis+cluster://h:7000", "cluster", RedisTarget(url="redis://h:7000")),
        ("rediss+cluster://u:p@h:7000", "cluster", RedisTarget(url="rediss://u:p@h:7000")),
        (
            "redis+sentinel://s1:26379,s2:26380/mymaster",
            "sentinel",
            RedisTarget(sentinels=(("s1", 26379), ("s2", 26380)), service_name="mymaster"),
        ),
        (
            "redis+sentinel://:se%40cret@s1,[::1]:5000/main/3",
            "sentinel",
            RedisTarget(
                sentinels=(("s1", 26379), ("::1", 5000)),
                service_name="main",
                db=3,
                password="se@cret",
            ),
        ),
    ],
)
def test_parse_redis_url(url: str, kind: str, target: RedisTarget) -> None:
    assert parse_redis_url(url) == (kind, target)


@pytest.mark.parametrize(
    "url",
    [
        "http://h:6379",
        "memcached://h",
        "127.0.0.1:6379",
        "redis+cluster://",
        "redis+sentinel://s1:26379",  # no service name
        "redis+sentinel:///main",  # no sentinels
        "redis+sentinel://s1:x/main",
        "redis+sentinel://s1/main/notadb",
        "redis+sentinel://s1/main/0/extra",
    ],
)
def test_parse_redis_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        parse_redis_url(url)
    with pytest.raises(ValueError):
        RedisRegistry(url)
