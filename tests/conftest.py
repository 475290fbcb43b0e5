"""Shared fixtures: a real uvicorn server on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from broadcast.app import create_app
from broadcast.config import ENV_PREFIX, Settings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _normal_scheduling() -> Iterator[None]:
    """Put the test process back to normal scheduling after each test.

    libsvtav1 (PyAV's AV1 encoder, used by test_dimensions) makes its calling thread
    SCHED_FIFO 99 when it runs as root. Every process a later test starts (Chromium, its
    driver, FFmpeg) would inherit that and could starve the two cores until a teardown hangs.
    """
    yield
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


@dataclass
class RunningServer:
    base_url: str
    app: Starlette
    client: httpx.AsyncClient

    @property
    def hub(self) -> Any:
        return self.app.state.hub


ServerFactory = Callable[..., Any]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    running: list[tuple[uvicorn.Server, asyncio.Task[None], httpx.AsyncClient]] = []

    async def start(**overrides: Any) -> RunningServer:
        port = free_port()
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "ice_addresses": ["127.0.0.1"],
            "node_id": "test-node",
        }
        values.update(overrides)
        settings = Settings(**values)
        app = create_app(settings)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", loop="asyncio"
        )
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve())
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start within 2 s"
        base = f"http://127.0.0.1:{port}"
        client = httpx.AsyncClient(base_url=base, timeout=10)
        running.append((server, task, client))
        return RunningServer(base_url=base, app=app, client=client)

    yield start
    for server, task, client in running:
        await client.aclose()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def server(make_server: ServerFactory) -> RunningServer:
    result: RunningServer = await make_server()
    return result
