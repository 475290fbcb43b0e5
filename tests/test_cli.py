"""The `broadcast` command as `make run` starts it: a real process on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from broadcast import __version__
from tests.conftest import free_port


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
