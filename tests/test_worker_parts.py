"""The pieces of BROADCAST_WORKERS: the supervisor's claim table and its socket, session
ids that name their worker, the merged /metrics, where each worker listens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from broadcast.config import Settings
from broadcast.http.affinity import WorkerRouter, merge_metrics
from broadcast.media.session import new_session_id, set_worker_index, worker_of
from broadcast.registry.base import NodeInfo, RegistryUnavailable, StreamInfo
from broadcast.registry.local import LocalRegistry, serve_table
from broadcast.registry.table import ClaimTable
from broadcast.workers import Layout
from tests.support.redisproc import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_claims_and_records_expire_ttl_after_the_last_heartbeat() -> None:
    clock = Clock()
    table = ClaimTable(ttl=6.0, clock=clock)
    node = NodeInfo("n-w0", "http://127.0.0.1:8081")
    assert await table.claim("cam", "n-w0")
    assert await table.heartbeat(node, [StreamInfo("cam", "n-w0")]) == []
    clock.now += 5.9
    assert await table.lookup("cam") == "n-w0"
    assert await table.heartbeat(node, [StreamInfo("cam", "n-w0")]) == []  # refreshed
    clock.now += 5.9
    assert [s.stream for s in await table.streams()] == ["cam"]
    clock.now += 0.2  # 6.1 s after the last heartbeat
    assert await table.lookup("cam") is None
    assert await table.streams() == [] and await table.nodes() == []
    assert await table.claim("cam", "n-w1")  # free for another worker
    # A lost claim is reported, never revived by the old owner's heartbeat.
    assert await table.heartbeat(node, [StreamInfo("cam", "n-w0")]) == ["cam"]
    assert await table.lookup("cam") == "n-w1"


async def test_forget_drops_a_dead_workers_claims_at_once() -> None:
    table = ClaimTable()
    await table.claim("cam", "n-w0")
    await table.claim("other", "n-w1")
    await table.heartbeat(NodeInfo("n-w0", "u"), [StreamInfo("cam", "n-w0")])
    table.forget("n-w0")
    assert await table.lookup("cam") is None and await table.node("n-w0") is None
    assert await table.lookup("other") == "n-w1"
    assert await table.streams() == []


async def test_racing_workers_get_one_claim(tmp_path: Path) -> None:
    path = str(tmp_path / "r.sock")
    server = await serve_table(ClaimTable(), path)
    clients = [LocalRegistry(path) for _ in range(8)]
    try:
        won = await asyncio.gather(*(c.claim("cam", f"n-w{i}") for i, c in enumerate(clients)))
        assert sorted(won) == [False] * 7 + [True]
        winner = won.index(True)
        assert {await c.lookup("cam") for c in clients} == {f"n-w{winner}"}
    finally:
        for client in clients:
            await client.close()
        server.close()


async def test_bad_requests_get_an_error_and_the_socket_keeps_serving(tmp_path: Path) -> None:
    path = str(tmp_path / "r.sock")
    server = await serve_table(ClaimTable(), path)
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        for line in (b"not json\n", b'{"op": "drop_all", "args": []}\n', b'{"op": "claim"}\n'):
            writer.write(line)
            assert b'"error"' in await asyncio.wait_for(reader.readline(), 2)
        writer.write(b'{"op": "claim", "args": ["cam", "n-w0"]}\n')
        assert await asyncio.wait_for(reader.readline(), 2) == b'{"ok": true}\n'
        writer.close()
    finally:
        server.close()


async def test_no_supervisor_is_registry_unavailable(tmp_path: Path) -> None:
    registry = LocalRegistry(str(tmp_path / "absent.sock"))
    with pytest.raises(RegistryUnavailable) as caught:
        await registry.lookup("cam")
    assert caught.value.status == 503


def test_session_ids_name_their_worker() -> None:
    try:
        set_worker_index(3)
        session = new_session_id()
        assert session.startswith("3.") and len(session) == 24
        assert worker_of(session) == 3
    finally:
        set_worker_index(None)
    assert worker_of(new_session_id()) is None
    assert worker_of("0.abc") == 0


@given(st.text(max_size=40))
def test_worker_of_takes_any_path_segment(segment: str) -> None:
    index = worker_of(segment)
    assert index is None or (0 <= index <= 9999 and segment.startswith(f"{index}."))


def test_merged_metrics_label_every_sample_with_its_worker() -> None:
    one = (
        "# HELP broadcast_sessions Sessions.\n# TYPE broadcast_sessions gauge\n"
        'broadcast_sessions{role="whep"} 2.0\n'
        "# HELP x_total Things.\n# TYPE x_total counter\nx_total 5.0\n"
    )
    two = (
        "# HELP broadcast_sessions Sessions.\n# TYPE broadcast_sessions gauge\n"
        'broadcast_sessions{role="whep"} 7.0\n'
    )
    text = merge_metrics([(0, one), (1, two), (2, None)]).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sessions = {s.labels["worker"]: s.value for s in families["broadcast_sessions"].samples}
    assert sessions == {"0": 2.0, "1": 7.0}
    assert [s.labels for s in families["x"].samples] == [{"worker": "0"}]
    up = {s.labels["worker"]: s.value for s in families["broadcast_workers_up"].samples}
    assert up == {"0": 1.0, "1": 1.0, "2": 0.0}


def test_layout_ports_and_urls() -> None:
    layout = Layout(Settings(port=8080, workers=3, node_id="pod", host="0.0.0.0"))
    assert [layout.private_port(i) for i in range(3)] == [8081, 8082, 8083]
    assert layout.local_url(1) == "http://127.0.0.1:8082"
    assert layout.node_id(2) == "pod-w2"
    public = Layout(Settings(port=80, workers=2, public_url="https://10.1.2.3/"))
    assert public.record_url(0) == "http://10.1.2.3:81"
    settings = public.worker_settings(1)
    assert (settings.node_id, settings.base_url, settings.workers) == (
        f"{public.settings.node_id}-w1",
        "http://10.1.2.3:82",
        1,
    )


async def test_a_sibling_that_does_not_answer_is_a_503_not_a_500() -> None:
    async def local(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse(f"served here: {scope['path']}")(scope, receive, send)

    async def lookup(stream: str) -> str | None:
        return None

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    router = WorkerRouter(local, 0, [closed, closed], ["n-w0", "n-w1"], 8080, lookup, 1024)
    transport = httpx.ASGITransport(app=router)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver:8080") as client:
        mine = await client.delete("/whep/cam/0.abc")
        assert mine.text == "served here: /whep/cam/0.abc"
        theirs = await client.delete("/whep/cam/1.abc")
        assert theirs.status_code == 503, theirs.text
        assert theirs.headers["retry-after"] == "2"
        assert "worker 1" in theirs.json()["detail"]
