"""The `broadcast` command as `make run` starts it: a real process on a free port."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from broadcast import __version__, logs
from tests.conftest import free_port
from tests.support.peers import Publisher


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "broadcast", "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    assert __version__ in out.stdout


def test_serve_answers_whip_options_as_the_rfc_says() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    env["BROADCAST_WORKERS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "broadcast", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        response = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                response = httpx.options(f"http://127.0.0.1:{port}/whip/test", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)  # the process is still starting; nothing to await
        assert response is not None, "the server did not start within 20 s"
        # RFC 9725 §4.2: OPTIONS is supported; the 200 carries Accept-Post.
        assert response.status_code == 200
        assert response.headers["accept-post"] == "application/sdp"
        assert "POST" in response.headers["allow"]
        assert response.content == b""
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert proc.returncode in (0, -15)


def test_invalid_settings_exit_with_a_reason() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    env["BROADCAST_PORT"] = "not-a-port"
    out = subprocess.run(
        [sys.executable, "-m", "broadcast", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "invalid settings" in out.stderr and "port" in out.stderr


def test_check_config_prints_the_effective_settings_without_secrets() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    env |= {
        "BROADCAST_PUBLISH_TOKEN": "s3cret-token",
        "BROADCAST_REDIS_URL": "redis://:hunter2@redis:6379/0",
        "BROADCAST_CLUSTER_SECRET": "cluster-s3cret",
        "BROADCAST_WORKERS": "3",
        "BROADCAST_UDP_PORT": "8189",
    }
    out = subprocess.run(
        [sys.executable, "-m", "broadcast", "check-config", "--port", "9000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "BROADCAST_PORT=9000" in lines
    assert "BROADCAST_PUBLISH_TOKEN=<set>" in lines and "BROADCAST_VIEWER_TOKEN=" in lines
    assert "BROADCAST_REDIS_URL=redis://redis:6379/0" in lines
    for secret in ("s3cret-token", "hunter2", "cluster-s3cret"):
        assert secret not in out.stdout
    assert "# media: UDP port(s) 8189-8191, one socket per worker" in lines
    assert "private HTTP ports 9001-9003" in out.stdout

    env["BROADCAST_UDP_PORT"] = "70000"
    bad = subprocess.run(
        [sys.executable, "-m", "broadcast", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0 and "udp_port" in bad.stderr


async def test_logs_are_json_lines_with_node_stream_and_session(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    env |= {
        "BROADCAST_WORKERS": "1",
        "BROADCAST_NODE_ID": "node-7",
        "BROADCAST_ICE_ADDRESSES": "127.0.0.1",
        "BROADCAST_LOG_FORMAT": "json",
    }
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broadcast", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(200):
                try:
                    await client.get(f"{base}/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)  # the process is still starting
            publisher = Publisher(base, "cam")
            assert (await publisher.start(client)).status == 201
            await asyncio.wait_for(publisher.connected.wait(), 10)
            await publisher.stop(client)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records, "nothing was logged"
    assert all({"event", "level", "logger", "timestamp", "node"} <= set(r) for r in records)
    assert {r["node"] for r in records} == {"node-7"}
    connected = [r for r in records if r["event"] == "WHIP session connected"]
    assert len(connected) == 1
    assert connected[0]["stream"] == "cam" and connected[0]["role"] == "whip"
    assert connected[0]["session"] == publisher.result.location.rsplit("/", 1)[1]  # type: ignore[union-attr]


def test_console_logs_are_readable_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("info", "console", "node-1")
        logging.getLogger("broadcast.example").info("hello %s", "there", extra={"stream": "cam"})
    finally:
        root.handlers, _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "hello there" in err and "stream=cam" in err and "node=node-1" in err
    assert not err.lstrip().startswith("{")
