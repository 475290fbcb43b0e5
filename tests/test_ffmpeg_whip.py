"""Acceptance: FFmpeg 8's own `whip` muxer (inside the PyAV wheel) publishes to us."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.peers import Viewer

ROOT = Path(__file__).resolve().parent.parent


async def read_event(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    assert line, "the FFmpeg publisher exited without a word"
    event: dict[str, Any] = json.loads(line)
    return event


@pytest.mark.parametrize("dtls_active", [False, True], ids=["ffmpeg-dtls-server", "dtls-active"])
async def test_ffmpeg_whip_publishes(make_server, tmp_path: Path, dtls_active: bool) -> None:
    server = await make_server(publish_token="s3cret")
    viewer = Viewer(server.base_url, "ffmpeg")
    assert (await viewer.start(server.client)).status == 201

    args = [
        sys.executable,
        "-m",
        "tests.support.ffmpeg_whip",
        "--url",
        f"{server.base_url}/whip/ffmpeg",
        "--token",
        "s3cret",
        "--seconds",
        "4",
        "--gop",
        "300",
        "--cert-dir",
        str(tmp_path),
    ]
    if dtls_active:
        args.append("--dtls-active")
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        event = await read_event(proc, 20)
        assert event["event"] == "connected", event
        await viewer.wait_frames(video=30, audio=20, timeout=15)
        assert viewer.video.first_frame_wall is not None
        first_frame = viewer.video.first_frame_wall - event["t_post"]
        print(f"FFmpeg whip, dtls_active={dtls_active}: first frame after {first_frame:.3f} s")
        assert 0 < first_frame < 1.0, f"first frame {first_frame:.3f} s after the POST"
        assert viewer.video.sizes == {(640, 360)}

        listed = (await server.client.get("/api/streams")).json()
        assert [s["stream"] for s in listed] == ["ffmpeg"]
        publisher_id = listed[0]["publisher"]
        session = server.hub.sessions[publisher_id]

        done = await read_event(proc, 20)
        assert done["event"] == "done", done
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # Closing the muxer sent the WHIP DELETE; the server ended the session for it.
    assert session.end_reason == "deleted by the client"
    assert publisher_id not in server.hub.sessions
    assert (await server.client.get("/api/streams")).json() == []
    await viewer.stop(server.client)


async def test_ffmpeg_default_certificate_fails_with_a_clear_reason(
    server, caplog: pytest.LogCaptureFixture
) -> None:
    # FFmpeg's own DTLS certificate is ECDSA P-224, which our OpenSSL refuses: the
    # publisher must fail, and the server must say why in its log.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.ffmpeg_whip",
        "--url",
        f"{server.base_url}/whip/p224",
        "--seconds",
        "1",
        "--ffmpeg-cert",
        "--handshake-timeout",
        "3000",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    event = await read_event(proc, 20)
    assert event["event"] == "error", event
    assert await asyncio.wait_for(proc.wait(), 20) == 1
    reasons = [r.getMessage() for r in caplog.records if "DTLS handshake failed" in r.getMessage()]
    assert reasons, "the server logged no DTLS failure"
    assert any("P-224" in text and "P-256" in text for text in reasons), reasons
    assert server.hub.sessions == {}
