"""Automatic layers under congestion, end to end.

Chromium publishes three VP8 layers. Two aiortc viewers watch without pinning a layer; one
of them has its link shaped (tests/support/shaper.py, a token-bucket filter like `tc tbf`)
to well below the top layer's bitrate for a while, then freed. The constrained viewer must
go down quickly and keep decoding clean frames, come back up once the link is free; the
other viewer stays on the top layer all along.

Set ABR_TRACE=path.json to keep the run's trace (`python -m loadtest.plot_abr`
draws it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.browserlike import BrowserLikeRecovery
from tests.support.peers import Viewer
from tests.support.shaper import Shaper
from tests.support.vp8check import Vp8FrameCheck
from tests.test_simulcast import LAYERS, go_live_with_simulcast, launch

__all__ = ["launch"]

pytestmark = pytest.mark.timeout(240)

LIMIT = 0.5  # of the top layer's bitrate
DOWN_WITHIN = 5.0  # seconds
UP_WITHIN = 20.0
CONSTRAINED_FOR = 12.0
SAMPLE = 0.25


def _session_id(viewer: Viewer) -> str:
    assert viewer.result is not None and viewer.result.location
    return viewer.result.location.rstrip("/").rsplit("/", 1)[-1]


async def _state(server: Any, name: str) -> tuple[dict[str, dict[str, Any]], int]:
    """(video track stats per viewer session, the top layer's bitrate)."""
    detail = (await server.client.get(f"/api/streams/{name}")).json()
    (video,) = [t for t in detail["tracks"] if t["kind"] == "video"]
    top = max(layer["bitrate"] for layer in video["layers"] if layer["rid"] == "h")
    viewers = {s["session"]: s["tracks"]["video"] for s in detail["viewer_sessions"]}
    return viewers, top


async def _metrics_show_it(server: Any) -> None:
    """/metrics (parsed as Prometheus does): both viewers on h now, the policy's switches
    counted, the constrained viewer's estimate in the distribution."""
    text = (await server.client.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("broadcast_viewer_layers", (("layer", "h"),))] == 2
    assert samples[("broadcast_layer_switches_total", (("reason", "down"),))] >= 1
    assert samples[("broadcast_layer_switches_total", (("reason", "up"),))] >= 1
    assert samples[("broadcast_viewer_estimate_bps_gcount", ())] >= 1


async def test_constrained_viewer_moves_down_and_back(
    make_server: Any, launch: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING, logger="aiortc.rtcrtpreceiver")
    server = await make_server()
    page, problems = await go_live_with_simulcast(server, launch, "abr")
    free, shaped = Viewer(server.base_url, "abr"), Viewer(server.base_url, "abr")
    checks = {}
    for viewer in (free, shaped):
        checks[viewer] = Vp8FrameCheck(viewer.pc)
        assert (await viewer.start(server.client)).status == 201
    shaper = Shaper()
    shaper.install(shaped.pc)
    recovery = BrowserLikeRecovery(shaped.pc)
    await asyncio.gather(*(v.wait_frames(video=30, timeout=30) for v in (free, shaped)))
    ids = {free: _session_id(free), shaped: _session_id(shaped)}

    trace: list[dict[str, Any]] = []
    started = time.monotonic()
    limited_at: float | None = None
    lifted_at: float | None = None
    down_at: float | None = None
    up_at: float | None = None
    frames_down = 0
    top = 0
    for _ in range(int(90 / SAMPLE)):
        now = time.monotonic() - started
        viewers, top = await _state(server, "abr")
        mine, other = viewers[ids[shaped]], viewers[ids[free]]
        if limited_at is None and now >= 3 and mine["layer"] == "h":
            shaper.limit(LIMIT * top)
            limited_at = now
        elif limited_at is not None and down_at is None and mine["layer"] != "h":
            down_at, frames_down = now, shaped.video.frames
        elif down_at is not None and lifted_at is None and now - limited_at >= CONSTRAINED_FOR:
            shaper.limit(None)
            lifted_at = now
        elif lifted_at is not None and up_at is None and mine["layer"] == "h":
            up_at = now
        trace.append(
            {
                "t": round(now, 2),
                "limit_bps": shaper.rate,
                "layer": mine["layer"],
                "estimate_bps": mine.get("estimate_bps"),
                "received_bps": mine["bitrate_bps"],
                "padding_bytes": mine["padding_bytes"],
                "top_bps": top,
                "free_layer": other["layer"],
                "free_estimate_bps": other.get("estimate_bps"),
                "frames": shaped.video.frames,
            }
        )
        if up_at is not None and now - up_at >= 3:  # a little of the way on, for the plot
            break
        if limited_at is not None and now - limited_at > DOWN_WITHIN + 1 and down_at is None:
            break
        if lifted_at is not None and up_at is None and now - lifted_at > UP_WITHIN + 1:
            break
        await asyncio.sleep(SAMPLE)

    out = os.environ.get("ABR_TRACE")
    for path in [tmp_path / "abr-trace.json", *([Path(out)] if out else [])]:
        path.write_text(json.dumps({"limit_fraction": LIMIT, "samples": trace}, indent=1))
    print(json.dumps(trace[-3:]))
    assert limited_at is not None, "the constrained viewer never started on the top layer"
    assert down_at is not None, f"not moved down within {DOWN_WITHIN} s"
    limit = next(s["limit_bps"] for s in trace if s["limit_bps"])
    print(f"limit {limit / 1e6:.2f} Mbit/s: down after {down_at - limited_at:.2f} s")
    assert down_at - limited_at <= DOWN_WITHIN
    assert lifted_at is not None
    assert shaped.video.frames >= frames_down + 60, "no clean decoding on the lower layer"
    assert up_at is not None, f"not back on the top layer within {UP_WITHIN} s"
    print(f"limit lifted: back on top after {up_at - lifted_at:.2f} s")
    assert [s["free_layer"] for s in trace if s["free_layer"] != "h"] == []
    constrained = [s for s in trace if s["limit_bps"] and s["t"] >= down_at]
    assert all(s["layer"] != "h" for s in constrained), "probed back to the top while limited"

    await _metrics_show_it(server)
    await shaped.wait_frames(video=shaped.video.frames + 30, timeout=10)
    assert shaped.video.sizes >= {LAYERS["h"]}
    check = checks[shaped]
    print(f"shaper dropped {shaper.dropped} datagrams; constrained viewer: {check.frames} frames")
    print(f"({check.keyframes} keyframes, {recovery.skips} skips to a keyframe)")
    assert checks[free].gaps == 0 and checks[free].keyframe_jumps == 0
    assert checks[shaped].gaps == 0
    assert [r.message for r in caplog.records if "failed to decode" in r.message] == []
    await recovery.stop()
    for viewer in (free, shaped):
        await viewer.stop(server.client)
    await page.click("#stop")
    assert problems.items == []
