"""All cores of one machine: `BROADCAST_WORKERS=N` worker processes behind one HTTP port.

The supervisor (the `broadcast serve` process) starts N workers and restarts one that
dies. Each worker is a whole node of its own to the registry, named `<node id>-w<index>`:

- it listens on the public port with SO_REUSEPORT, so the kernel spreads connections over
  the workers, and on a private port, `BROADCAST_PORT + 1 + index`, which is the URL in its
  registry record (other workers and nodes relay from it there);
- without BROADCAST_REDIS_URL the workers share a registry kept by the supervisor
  (`broadcast.registry.local`); with it they are members of the Redis cluster registry;
- a viewer that lands on a worker without the stream is served through the in-node relay
  (one upstream WHEP session per worker and stream, authenticated with the cluster secret,
  generated here when BROADCAST_CLUSTER_SECRET is unset);
- requests about another worker's session are passed to it (`broadcast.http.affinity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from urllib.parse import urlsplit

import uvicorn

from broadcast import logs
from broadcast.config import Settings

__all__ = ["Layout", "run_workers"]

logger = logging.getLogger(__name__)

EARLY_EXIT = 5.0  # seconds: a worker that dies this soon after its start failed to start
EARLY_EXITS = 3  # ...and this many failed starts in a row stop the node (port taken, say)
STOP_TIMEOUT = 10.0  # seconds the workers get to stop before they are killed
_PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where worker `index` of a node listens and how it is named."""

    settings: Settings

    @property
    def count(self) -> int:
        return self.settings.workers

    def node_id(self, index: int) -> str:
        return f"{self.settings.node_id}-w{index}"

    def private_port(self, index: int) -> int:
        return self.settings.port + 1 + index

    def local_url(self, index: int) -> str:
        """The private port as this machine's processes reach it."""
        host = self.settings.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{_bracket(host)}:{self.private_port(index)}"

    def record_url(self, index: int) -> str:
        """The private port as other nodes reach it: the public URL's host, else the
        bind address."""
        if self.settings.public_url:
            host = urlsplit(self.settings.public_url).hostname or self.settings.host
            return f"http://{_bracket(host)}:{self.private_port(index)}"
        return self.local_url(index)

    def worker_settings(self, index: int) -> Settings:
        udp = self.settings.udp_port
        return self.settings.model_copy(
            update={
                "node_id": self.node_id(index),
                "public_url": self.record_url(index),
                "workers": 1,
                # One media port per worker: BROADCAST_UDP_PORT + index.
                "udp_port": None if udp is None else udp + index,
            }
        )


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _listen(host: str, port: int, *, shared: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(2048)
    return sock


def _die_with_parent(parent: int) -> None:
    """The kernel sends SIGINT (stop now, no drain) to this worker when the supervisor
    dies (prctl(2))."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
    if os.getppid() != parent:  # it died before prctl took effect
        raise SystemExit(1)


def worker_main(settings: Settings, index: int, registry_path: str | None, parent: int) -> None:
    """The body of worker process `index` (multiprocessing, spawn start method)."""
    from broadcast.app import create_app
    from broadcast.drain import DrainingServer
    from broadcast.http.affinity import WorkerRouter
    from broadcast.media.session import set_worker_index
    from broadcast.registry.local import LocalRegistry

    _die_with_parent(parent)
    logs.configure(settings.log_level, settings.log_format, Layout(settings).node_id(index))
    set_worker_index(index)
    layout = Layout(settings)
    registry = LocalRegistry(registry_path) if registry_path else None
    private = layout.private_port(index)
    app = create_app(layout.worker_settings(index), registry=registry, private_port=private)
    hub = app.state.hub
    router = WorkerRouter(
        app,
        index,
        [layout.local_url(k) for k in range(layout.count)],
        [layout.node_id(k) for k in range(layout.count)],
        settings.port,
        hub.registry.lookup,
        settings.max_body_bytes,
    )
    sockets = [
        _listen(settings.host, settings.port, shared=True),
        _listen(settings.host, private, shared=False),
    ]
    config = uvicorn.Config(router, log_level=settings.log_level, log_config=None, access_log=False)
    DrainingServer(config, app.state.drain).run(sockets=sockets)


def run_workers(settings: Settings) -> int:
    """Run the supervisor until its workers drained (SIGTERM) or SIGINT / a second
    SIGTERM; the exit status."""
    if settings.port == 0:
        raise ValueError("BROADCAST_WORKERS > 1 needs a fixed BROADCAST_PORT (not 0)")
    if settings.cluster_secret is None:
        # In-node relays authenticate with it; nobody outside this machine needs it.
        settings = settings.model_copy(update={"cluster_secret": secrets.token_urlsafe(32)})
    return asyncio.run(_supervise(settings))


async def _supervise(settings: Settings) -> int:
    from broadcast.registry.local import serve_table
    from broadcast.registry.table import ClaimTable

    layout = Layout(settings)
    context = multiprocessing.get_context("spawn")
    stop = asyncio.Event()
    draining = False
    loop = asyncio.get_running_loop()
    workers: dict[int, tuple[BaseProcess, float]] = {}

    def on_sigterm() -> None:
        # The first SIGTERM drains every worker (broadcast.drain); the second stops them.
        nonlocal draining
        if draining:
            stop.set()
            return
        draining = True
        logger.info("draining %d workers", len(workers))
        for process, _ in workers.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    with tempfile.TemporaryDirectory(prefix="broadcast-") as directory:  # mode 0700
        table: ClaimTable | None = None
        path: str | None = None
        if not settings.redis_url:
            table, path = ClaimTable(), os.path.join(directory, "registry.sock")
            server = await serve_table(table, path)
        failed = dict.fromkeys(range(layout.count), 0)  # failed starts in a row

        def start(index: int) -> None:
            process = context.Process(
                target=worker_main,
                args=(settings, index, path, os.getpid()),
                name=f"broadcast-w{index}",
            )
            process.start()
            workers[index] = (process, time.monotonic())

        for index in range(layout.count):
            start(index)
        logger.info("%d workers serving on port %d", layout.count, settings.port)
        status = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if draining and not any(p.is_alive() for p, _ in workers.values()):
                break  # drained
            for index, (process, started) in list(workers.items()):
                if process.is_alive() or stop.is_set() or draining:
                    continue
                if table is not None:
                    table.forget(layout.node_id(index))
                early = time.monotonic() - started < EARLY_EXIT
                failed[index] = failed[index] + 1 if early else 0
                if failed[index] >= EARLY_EXITS:
                    logger.error("worker %d cannot start (%s)", index, process.exitcode)
                    status = 1
                    stop.set()
                    break
                logger.warning("worker %d exited (%s); restarting it", index, process.exitcode)
                start(index)
        await _stop([process for process, _ in workers.values()])
        if table is not None:
            server.close()
    return status


async def _stop(processes: list[BaseProcess]) -> None:
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join(1)
