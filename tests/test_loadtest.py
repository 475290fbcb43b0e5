"""The load-test tool (python -m loadtest): its pure accounting, and one real short run."""

from __future__ import annotations

import contextlib
import fractions
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from loadtest.__main__ import build_parser, parse_bitrate
from loadtest.publisher import read_counter, stamp_counter
from loadtest.quick_cpu import PacketTrack
from loadtest.report import Series, parse_metrics
from loadtest.stats import SeqTracker, percentile, summarize
from loadtest.viewer import TrackCounter
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def feed(seqs: list[int]) -> SeqTracker:
    t = SeqTracker(90000)
    for i, seq in enumerate(seqs):
        t.add(seq, i * 3000, i / 30)
    return t


# --- loss ------------------------------------------------------------------------------------


def test_in_order_without_loss() -> None:
    t = feed([100, 101, 102, 103])
    assert (t.received, t.expected, t.lost, t.reordered, t.duplicates) == (4, 4, 0, 0, 0)


def test_gaps_are_lost() -> None:
    t = feed([10, 11, 14, 15, 17])  # 12, 13, 16 missing
    assert (t.received, t.expected, t.lost) == (5, 8, 3)


def test_wraparound() -> None:
    t = feed([65533, 65534, 65535, 0, 1, 3])  # 2 missing, across the wrap
    assert (t.received, t.expected, t.lost) == (6, 7, 1)
    assert t.highest == 65536 + 3


def test_many_wraps() -> None:
    t = feed([i % 65536 for i in range(65530, 65530 + 3 * 65536, 7)])
    assert t.lost == t.expected - t.received == (t.expected - 1) * 6 // 7


def test_reordering_is_not_loss() -> None:
    t = feed([1, 3, 2, 4, 6, 5])
    assert (t.received, t.expected, t.lost, t.reordered) == (6, 6, 0, 2)


def test_reordered_before_the_first_and_across_the_wrap() -> None:
    t = feed([0, 65535, 1, 65534, 2])  # the older ones arrive late: no loss
    assert (t.received, t.expected, t.lost, t.reordered) == (5, 5, 0, 2)
    t = feed([5, 3, 6])  # 4 never comes
    assert (t.received, t.expected, t.lost) == (3, 4, 1)


def test_duplicates_count_apart() -> None:
    t = feed([7, 8, 8, 9, 7])
    assert (t.received, t.duplicates, t.lost) == (3, 2, 0)


def test_retransmission_recovers_a_gap() -> None:
    t = feed([1, 2, 4])
    assert t.lost == 1
    assert t.recover(3) and not t.recover(3)
    assert (t.received, t.lost, t.duplicates) == (4, 0, 1)


# --- jitter (RFC 3550 6.4.1) ------------------------------------------------------------------


def test_jitter() -> None:
    t = SeqTracker(90000)
    t.add(1, 0, 0.000)
    t.add(2, 900, 0.010)  # exactly on time: D = 0
    assert t.jitter == 0
    t.add(3, 1800, 0.030)  # 10 ms late: D = 900 ticks, J = 900 / 16
    assert t.jitter == pytest.approx(56.25)
    assert t.jitter_ms == pytest.approx(0.625)


def test_jitter_across_timestamp_wrap() -> None:
    t = SeqTracker(48000)
    t.add(1, 2**32 - 480, 0.0)
    t.add(2, 480, 0.020)  # 960 ticks = 20 ms later, across the wrap
    assert t.jitter == pytest.approx(0.0, abs=1e-6)


# --- percentiles and the rest of the arithmetic --------------------------------------------------


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1, 2, 3, 4], 0) == 1 and percentile([1, 2, 3, 4], 100) == 4
    assert percentile(range(1, 101), 95) == pytest.approx(95.05)
    assert percentile([1, 2, 3, 4], 95) == pytest.approx(float(np.percentile([1, 2, 3, 4], 95)))
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_summarize_skips_none() -> None:
    s = summarize([None, 10.0, 30.0, None, 20.0])
    assert s["n"] == 3 and s["p50"] == 20.0 and s["min"] == 10 and s["max"] == 30
    assert s["mean"] == 20.0
    assert summarize([None])["p95"] is None


def test_parse_metrics_and_bitrate() -> None:
    text = (
        "# HELP process_cpu_seconds_total Total user and system CPU time\n"
        "process_cpu_seconds_total 12.5\nprocess_resident_memory_bytes 1.2e+08\n"
        'broadcast_sessions{role="whep"} 3.0\n'
    )
    assert parse_metrics(text) == {
        "process_cpu_seconds_total": 12.5,
        "process_resident_memory_bytes": 1.2e8,
    }
    assert parse_metrics("broadcast_streams 1.0\n") == {}
    assert parse_bitrate("2500k") == 2_500_000 and parse_bitrate("2.5M") == 2_500_000
    assert parse_bitrate("800000") == 800_000


def test_series_per_second_loss_and_bitrate() -> None:
    s = Series()
    s.update(0, 10.0, {"connected": 2, "received": 100, "expected": 100, "bytes": 1000})
    s.update(1, 10.0, {"connected": 1, "received": 50, "expected": 50, "bytes": 500})
    p = s.point(1.0, None, None)
    assert (p["connected"], p["bitrate_bps"], p["loss_pct"]) == (3, 12000, 0)
    s.update(0, 11.0, {"connected": 2, "received": 190, "expected": 200, "lost": 10})
    s.update(0, 11.0, s.latest[0] | {"bytes": 2000})
    p = s.point(2.0, 50.0, 1e8)
    assert p["loss_pct"] == pytest.approx(10.0) and p["bitrate_bps"] == 8000
    assert s.point(2.0, None, None) is p  # nothing new: no new point


def test_track_counter_rtx_and_keyframe() -> None:
    c = TrackCounter("video")
    c.codecs = {96: ("vp8", 90000, False), 97: ("rtx", 90000, True)}
    key = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A])  # S=1 PID=0, P=0: a keyframe's first packet
    inter = bytes([0x10, 0x01, 0x00])
    c.add(96, 1, 1000, 0, inter, 1.0)
    c.add(96, 1, 1002, 0, inter, 1.1)
    assert c.first_key is None and c.lost == 1
    c.add(97, 2, 5, 0, (1001).to_bytes(2, "big") + inter, 1.2)  # RTX of 1001
    c.add(96, 1, 1003, 3000, key, 1.3)
    c.add(111, 1, 1004, 3000, inter, 1.4)  # not negotiated
    assert (c.lost, c.packets, c.rtx, c.unknown_pt, c.first_key) == (0, 3, 1, 1, 1.3)


def test_frame_counter_survives_vp8() -> None:
    w, h = 320, 180
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt, enc.bit_rate = w, h, "yuv420p", 300_000
    enc.time_base = fractions.Fraction(1, 30)
    dec = av.CodecContext.create("libvpx", "r")
    rng = np.random.default_rng(1)
    seen = []
    for i in [0, 1, 2, 77, 300, 65535]:
        planes = rng.integers(0, 255, (h * 3 // 2, w), dtype=np.uint8)
        stamp_counter(planes[:h], i)
        assert read_counter(planes[:h]) == i
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts = len(seen)
        for packet in enc.encode(frame):
            for out in dec.decode(packet):
                seen.append(read_counter(out.to_ndarray(format="gray")))
    assert seen == [0, 1, 2, 77, 300, 65535]


def test_packet_track_skips_to_the_next_keyframe_on_request() -> None:
    track = PacketTrack("video", [bytes([i]) for i in range(120)], 1 / 30, gop=60)
    track.count = 25
    track.request_keyframe()
    assert (track.count + track.skip) % 120 == 60 and track.keyframes_on_request == 1
    track.request_keyframe()  # already at a keyframe: nothing to skip
    assert track.skip == 35 and track.keyframes_on_request == 1
    track.count = 61
    track.request_keyframe()
    assert (track.count + track.skip) % 120 == 0 and track.keyframes_on_request == 2


def test_help() -> None:
    for argv in (["--help"], ["run", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(argv)
        assert exit_info.value.code == 0
    args = build_parser().parse_args(["run", "--viewers", "3", "--bitrate", "800k"])
    assert (args.viewers, args.bitrate, args.publish, args.ramp) == (3, 800_000, "synthetic", 0)


# --- a real run: server and tool in their own processes -------------------------------------


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def test_run_against_a_server(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    env |= {"BROADCAST_ICE_ADDRESSES": "127.0.0.1", "BROADCAST_LOG_LEVEL": "warning"}
    env["BROADCAST_WORKERS"] = "1"
    env["BROADCAST_RATE_LIMIT"] = "0"  # every viewer joins from this one address
    server_cmd = [sys.executable, "-m", "broadcast", "serve", "--port", str(port)]
    server = subprocess.Popen(server_cmd, cwd=ROOT, env=env, start_new_session=True)
    tool: subprocess.Popen[bytes] | None = None
    base = f"http://127.0.0.1:{port}"
    out, png = tmp_path / "report.json", tmp_path / "report.png"
    try:
        for _ in range(150):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            assert server.poll() is None, "the server exited"
            time.sleep(0.1)
        cmd = [sys.executable, "-m", "loadtest", "run", "--base-url", base, "--viewers", "5"]
        cmd += ["--duration", "5", "--processes", "2", "--decode-sample", "1"]
        cmd += ["--json", str(out), "--plot", str(png), "--server-pid", str(server.pid)]
        cmd += ["--width", "640", "--height", "360", "--bitrate", "800k", "--quiet"]
        cmd += ["--honour-pli"]
        tool = subprocess.Popen(
            cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE
        )
        stdout, _ = tool.communicate(timeout=90)
        assert tool.returncode == 0, stdout
    finally:
        if tool is not None:
            _kill_group(tool)
        _kill_group(server)

    report = json.loads(out.read_text())
    agg = report["aggregate"]
    for key in ("packets_received", "packets_lost", "loss_pct", "bitrate_bps"):
        assert key in agg
    assert report["window_s"] == pytest.approx(5, abs=0.1)
    assert agg["packets_received"] > 0 and agg["bitrate_bps"] > 0 and agg["failed"] == 0
    assert agg["join_ms"]["p95"] is not None and agg["first_frame_ms"]["p99"] is not None
    assert len(report["viewers"]) == 5 and report["failures"] == []
    assert report["publisher"]["keyframes_on_pli"] >= 1  # the viewers' PLIs reached it
    for v in report["viewers"]:
        assert v["error"] is None, v
        assert v["packets_received"] > 0 and v["loss_pct"] <= 5, v
        assert v["packets_received"] >= 0.95 * (v["packets_received"] + v["packets_lost"])
        for key in ("packets_lost", "bitrate_bps", "join_ms", "first_frame_ms", "first_rtp_ms"):
            assert v[key] is not None, (key, v)
        assert set(v["tracks"]) == {"audio", "video"}
        assert v["tracks"]["video"]["codec"] == "vp8" and v["tracks"]["audio"]["codec"] == "opus"
    decoding = [v for v in report["viewers"] if v["decode"]]
    counting = [v for v in report["viewers"] if not v["decode"]]
    assert all(v["counted_from_srtp_headers"] for v in counting), counting
    assert not decoding[0]["counted_from_srtp_headers"]
    reference = decoding[0]["tracks"]["video"]["bitrate_bps"]
    for v in counting:  # header counting sees the same payload bytes as decrypting
        assert 0.8 < v["tracks"]["video"]["bitrate_bps"] / reference < 1.25, (v, reference)
    assert len(decoding) == 1 and decoding[0]["decoded"]["frames"] > 30
    assert decoding[0]["decoded"]["sizes"] == ["640x360"]
    series = report["timeseries"]
    assert len(series) >= 4 and series[-1]["connected"] == 5
    assert any(p["server_cpu_pct"] is not None for p in series)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
