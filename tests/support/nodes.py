"""Real `broadcast serve` processes on loopback, as the nodes of one cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.redisproc import free_port

__all__ = ["Node", "nodes"]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "cluster-test-secret"


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports (a node's worker ports)."""
    for _ in range(50):
        first = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise RuntimeError(f"no {count} consecutive free ports found")


class Node:
    def __init__(
        self, node_id: str, redis_url: str | None, workers: int = 1, **settings: str
    ) -> None:
        """`workers` > 1: worker i also listens on `port + 1 + i` (`private_url(i)`)."""
        self.node_id = node_id
        self.port = free_ports(workers + 1)
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
        if redis_url is not None:
            env["BROADCAST_REDIS_URL"] = redis_url
        env |= {
            "BROADCAST_NODE_ID": node_id,
            "BROADCAST_PUBLIC_URL": self.url,
            "BROADCAST_WORKERS": str(workers),
            "BROADCAST_CLUSTER_SECRET": SECRET,
            "BROADCAST_ICE_ADDRESSES": "127.0.0.1",
            "BROADCAST_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT),
        }
        env |= {f"BROADCAST_{k.upper()}": v for k, v in settings.items()}
        cmd = [sys.executable, "-m", "broadcast", "serve", "--port", str(self.port)]
        self.process = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"node {node_id} exited with {self.process.returncode}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"node {node_id} did not answer /healthz within 15 s")

    def private_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.port + 1 + index}"

    def kill(self) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def stop(self) -> None:
        """SIGTERM; a node still draining its sessions half a second later gets the second
        SIGTERM, which ends the drain at once (broadcast.drain); SIGKILL after 5 s more."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            for grace in (0.5, 5.0):
                try:
                    self.process.wait(grace)
                    return
                except subprocess.TimeoutExpired:
                    if grace < 5.0:
                        os.killpg(self.process.pid, signal.SIGTERM)
            self.kill()


@pytest.fixture
def nodes() -> Iterator[Callable[..., Node]]:
    """Start nodes with `nodes(node_id, redis_url, **settings)`; all stop at teardown."""
    started: list[Node] = []

    def start(node_id: str, redis_url: str | None, workers: int = 1, **settings: str) -> Node:
        node = Node(node_id, redis_url, workers, **settings)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
