"""The cluster registry: claims and records shared through Redis (BROADCAST_REDIS_URL).

Key schema (prefix `broadcast`; the `{...}` hash tags keep Redis Cluster happy):

    broadcast:{<stream>}:owner      string  node id of the origin, PX ttl
    broadcast:{<stream>}:info       string  JSON StreamInfo, PX ttl
    broadcast:{nodes}:node:<id>     string  JSON NodeInfo, PX ttl
    broadcast:{nodes}:index         zset    node ids scored by expiry (Unix ms)
    broadcast:{streams}:index       zset    stream names scored by expiry (Unix ms)

A stream's owner and info keys share the tag `{<stream>}`, so every Lua script below
touches a single hash slot. The indexes are hints: readers drop members whose score has
passed or whose record is gone, so a crashed node vanishes `ttl` seconds after its last
heartbeat without anyone cleaning up after it.

Lua scripts (each runs atomically on the server, so no two nodes interleave inside one):

- CLAIM: owner absent -> set to node with PX ttl; owner == node -> extend PX ttl; both
  answer 1. Any other owner -> 0, untouched. Exactly one of N racing nodes wins.
- REFRESH: extend PX ttl only if the owner is still node (never revives a lost claim).
- RELEASE: delete owner and info only if the owner is still node (a late release by a
  node that lost the claim cannot delete the new owner's claim).
- BEAT: REFRESH, plus write the info record, in the same atomic step; a stream whose
  claim was lost gets no record. It answers Redis's clock (ms) when it wrote, and the
  stream's index score is that plus the TTL: exactly when the record expires.
- NODE: write a node's record and score it in the node index on Redis's clock, in one step.

Any connection or timeout failure becomes `RegistryUnavailable` (503, Retry-After: 5).
Clients use 1 s socket timeouts and one quick retry, so a dead Redis fails fast; the retry
also replaces a pooled connection that went stale when Redis restarted, and redis-py opens
fresh connections on the next call, so the same object works once Redis is back.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar, cast
from urllib.parse import unquote, urlsplit

from redis import exceptions as rex
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ConstantBackoff

from broadcast.registry.base import CLAIM_TTL, NodeInfo, RegistryUnavailable, StreamInfo

__all__ = [
    "RedisRegistry",
    "RedisTarget",
    "node_index_key",
    "node_key",
    "owner_key",
    "parse_redis_url",
    "stream_index_key",
    "stream_info_key",
]

RETRY_AFTER = 5  # seconds, for the 503 when Redis is unreachable
SOCKET_TIMEOUT = 1.0

_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
return 0
"""
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
"""
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_BEAT = (
    _NOW_MS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
return now
"""
)
_NODE = (
    _NOW_MS
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return now
"""
)

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rex.ConnectionError,  # includes BusyLoadingError, MasterNotFoundError (sentinel)
    rex.TimeoutError,
    rex.ClusterDownError,  # includes MasterDownError
    rex.TryAgainError,
    rex.ReadOnlyError,  # a replica answered mid-failover
    rex.SlotNotCoveredError,
    OSError,
    TimeoutError,
)
_UNAVAILABLE_OR_CLUSTER: tuple[type[BaseException], ...] = (
    *_UNAVAILABLE,
    rex.RedisClusterException,
    rex.RedisError,  # OOM, NOPERM, MISCONF...: the registry cannot serve us either
)


def owner_key(prefix: str, stream: str) -> str:
    return f"{prefix}:{{{stream}}}:owner"


def stream_info_key(prefix: str, stream: str) -> str:
    return f"{prefix}:{{{stream}}}:info"


def node_key(prefix: str, node_id: str) -> str:
    return f"{prefix}:{{nodes}}:node:{node_id}"


def node_index_key(prefix: str) -> str:
    return f"{prefix}:{{nodes}}:index"


def stream_index_key(prefix: str) -> str:
    return f"{prefix}:{{streams}}:index"


Kind = Literal["redis", "cluster", "sentinel"]


@dataclass(frozen=True)
class RedisTarget:
    url: str = ""  # redis/cluster: what from_url gets
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_redis_url(url: str) -> tuple[Kind, RedisTarget]:
    """`redis://`, `rediss://`, `unix://`, `redis+cluster://host:port`, or
    `redis+sentinel://[user:pass@]host1:port1,host2:port2/<service_name>[/db]`."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"not a Redis URL (no scheme): {url!r}")
    if scheme in ("redis", "rediss", "unix"):
        return "redis", RedisTarget(url=url)
    if scheme in ("redis+cluster", "rediss+cluster"):
        if not urlsplit(url).hostname:
            raise ValueError(f"redis+cluster URL needs a host: {url!r}")
        return "cluster", RedisTarget(url=f"{scheme.split('+')[0]}://{rest}")
    if scheme == "redis+sentinel":
        netloc, _, path = rest.partition("/")
        userinfo, _, hosts = netloc.rpartition("@")
        username, password = None, None
        if userinfo:
            user, has_pass, pw = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(pw) if has_pass else None
        sentinels = []
        for hostport in filter(None, hosts.split(",")):
            host, colon, port = hostport.rpartition(":")
            host, port = (host, port) if colon else (port, "26379")
            if not host or not port.isdigit():
                raise ValueError(f"bad sentinel address {hostport!r} in {url!r}")
            sentinels.append((host.strip("[]"), int(port)))
        parts = [p for p in path.split("/") if p]
        db_ok = len(parts) == 1 or (len(parts) == 2 and parts[1].isdigit())
        if not sentinels or not db_ok:
            raise ValueError(f"expected redis+sentinel://host:port,.../service_name[/db]: {url!r}")
        return "sentinel", RedisTarget(
            sentinels=tuple(sentinels),
            service_name=unquote(parts[0]),
            db=int(parts[1]) if len(parts) == 2 else 0,
            username=username,
            password=password,
        )
    raise ValueError(
        f"unsupported Redis URL scheme {scheme!r}: use redis://, rediss://, unix://, "
        "redis+cluster:// or redis+sentinel://"
    )


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}{sep}{netloc.rpartition('@')[2]}{slash}{path}"


class RedisRegistry:
    def __init__(self, url: str, *, ttl: float = CLAIM_TTL, prefix: str = "broadcast") -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"registry prefix must not contain braces: {prefix!r}")
        self._where = _redacted(url)
        self._ttl_ms = max(1, round(ttl * 1000))
        self._prefix = prefix
        self._sentinel: Sentinel | None = None
        kind, target = parse_redis_url(url)
        opts: dict[str, Any] = {
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": SOCKET_TIMEOUT,
            "retry": Retry(ConstantBackoff(0.05), 1),  # one retry: reconnect, not wait
        }
        self._client: Redis | RedisCluster
        if kind == "cluster":
            self._client = RedisCluster.from_url(target.url, decode_responses=True, **opts)
        elif kind == "sentinel":
            sentinel_opts = {**opts, "retry": Retry(ConstantBackoff(0.05), 1)}
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(target.sentinels), sentinel_kwargs=sentinel_opts
            )
            self._client = self._sentinel.master_for(
                target.service_name,
                db=target.db,
                username=target.username,
                password=target.password,
                decode_responses=True,
                **opts,
            )
        else:
            self._client = Redis.from_url(target.url, decode_responses=True, **opts)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except _UNAVAILABLE_OR_CLUSTER as exc:
            if isinstance(exc, rex.RedisClusterException) and not isinstance(
                exc.__cause__, _UNAVAILABLE
            ):
                raise  # a misconfiguration (e.g. cluster mode off), not an outage
            raise RegistryUnavailable(
                f"the cluster registry ({self._where}) is unreachable: {exc}",
                retry_after=RETRY_AFTER,
            ) from exc

    async def _eval(self, script: str, keys: list[str], *args: str | int) -> int:
        with self._guard():
            return int(await self._client.eval(script, len(keys), *keys, *args))

    async def connect(self) -> None:
        """Check that Redis answers (the client also connects lazily on first use)."""
        with self._guard():
            await self._client.ping()

    async def claim(self, stream: str, node: str) -> bool:
        keys = [owner_key(self._prefix, stream)]
        return await self._eval(_CLAIM, keys, node, self._ttl_ms) == 1

    async def refresh(self, stream: str, node: str) -> bool:
        keys = [owner_key(self._prefix, stream)]
        return await self._eval(_REFRESH, keys, node, self._ttl_ms) == 1

    async def release(self, stream: str, node: str) -> None:
        keys = [owner_key(self._prefix, stream), stream_info_key(self._prefix, stream)]
        await self._eval(_RELEASE, keys, node)  # its index entry is skipped, then pruned

    async def lookup(self, stream: str) -> str | None:
        with self._guard():
            owner = await self._client.get(owner_key(self._prefix, stream))
        return cast("str | None", owner)  # decode_responses=True

    async def _now_ms(self) -> int:
        """Redis's clock, in ms: index scores from every node compare on one clock, so skew
        between the nodes' own clocks cannot hide or prune live records."""
        seconds, microseconds = await self._client.time()
        return int(seconds) * 1000 + int(microseconds) // 1000

    async def heartbeat(self, node: NodeInfo, streams: list[StreamInfo]) -> list[str]:
        p = self._prefix
        with self._guard():
            pipe = self._client.pipeline(transaction=False)
            record = json.dumps(asdict(node))
            node_keys = [node_key(p, node.node_id), node_index_key(p)]
            pipe.eval(_NODE, 2, *node_keys, record, self._ttl_ms, node.node_id)
            for s in streams:
                keys = [owner_key(p, s.stream), stream_info_key(p, s.stream)]
                pipe.eval(_BEAT, 2, *keys, node.node_id, self._ttl_ms, json.dumps(asdict(s)))
            results = await pipe.execute()
            now_ms, beats = int(results[0]), results[1:]
            # Each index score is the instant its record expires, from the same script
            # that wrote it: a node that stalls mid-heartbeat cannot make a record leave
            # the listings while its keys (its claims) live on.
            owned = {
                s.stream: int(at) + self._ttl_ms for s, at in zip(streams, beats, strict=True) if at
            }
            lost = [s.stream for s, at in zip(streams, beats, strict=True) if not at]
            pipe = self._client.pipeline(transaction=False)
            if owned:  # lost streams stay: their new owner's heartbeat scores them
                pipe.zadd(stream_index_key(p), owned)
            pipe.zremrangebyscore(stream_index_key(p), "-inf", now_ms)
            await pipe.execute()
        return lost

    async def _live(self, index: str) -> list[str]:
        now_ms = await self._now_ms()
        return cast("list[str]", await self._client.zrangebyscore(index, now_ms, "+inf"))

    async def _records(self, keys: list[str]) -> list[dict[str, Any]]:
        """The JSON records at `keys` that exist and parse (others are skipped: a node of
        another version may write fields this one does not know)."""
        if not keys:
            return []
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        raws: list[str | None] = await pipe.execute()
        records = []
        for raw in raws:
            if raw is None:
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    async def nodes(self) -> list[NodeInfo]:
        with self._guard():
            ids = await self._live(node_index_key(self._prefix))
            records = await self._records([node_key(self._prefix, i) for i in ids])
        return [n for r in records if (n := _build(NodeInfo, _sources(r))) is not None]

    async def node(self, node_id: str) -> NodeInfo | None:
        with self._guard():
            records = await self._records([node_key(self._prefix, node_id)])
        return _build(NodeInfo, _sources(records[0])) if records else None

    async def streams(self) -> list[StreamInfo]:
        with self._guard():
            names = await self._live(stream_index_key(self._prefix))
            records = await self._records([stream_info_key(self._prefix, n) for n in names])
        for r in records:  # JSON has lists
            r["codecs"], r["layers"] = tuple(r.get("codecs", ())), tuple(r.get("layers", ()))
        return [i for r in records if (i := _build(StreamInfo, r)) is not None]

    async def close(self) -> None:
        await self._client.aclose()
        if self._sentinel is not None:
            for conn in self._sentinel.sentinels:
                await conn.aclose()


_Record = TypeVar("_Record", NodeInfo, StreamInfo)


def _build(cls: type[_Record], record: dict[str, Any]) -> _Record | None:
    """`cls` from the record's known fields; None if a required one is missing."""
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in record.items() if k in known})
    except TypeError:
        return None


def _sources(record: dict[str, Any]) -> dict[str, Any]:
    """A node record's `sources` as tuples again (JSON has lists); dropped if malformed."""
    try:
        record["sources"] = tuple(
            (str(name), int(hops), int(served)) for name, hops, served in record.get("sources", ())
        )
    except (TypeError, ValueError):
        record.pop("sources", None)
    return record
