"""WHEP load test: many lightweight viewers of one stream, with a built-in WHIP publisher.

    python -m loadtest run --base-url http://127.0.0.1:8080 --stream demo --viewers 100 \\
        --duration 60 --ramp 10 --processes 4 --json out.json --plot out.png

Viewers are aiortc WHEP clients that count RTP (loss, jitter, bitrate, first keyframe)
without decoding; --decode-sample of them decode for real. Only standard WHIP/WHEP HTTP is
used, so it runs against any WHEP server. Also: python -m loadtest.quick_cpu --help.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["main", "parse_bitrate"]


def parse_bitrate(text: str) -> int:
    """'2500k' / '2.5M' / '800000' -> bit/s."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)(?:bps|bit/s)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a bitrate: {text!r} (e.g. 2500k, 2.5M)")
    scale = {"": 1, "k": 1000, "m": 1_000_000}[m.group(2).lower()]
    bps = round(float(m.group(1)) * scale)
    if not 50_000 <= bps <= 50_000_000:
        raise argparse.ArgumentTypeError(f"bitrate {bps} bit/s outside 50k..50M")
    return bps


def _positive(kind: type[int] | type[float], low: float) -> Callable[[str], int | float]:
    def check(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} < {low}")
        return value

    return check


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").split("\n")[1:]),
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="publish (or attach to) a stream and run N viewers for a while",
        description="Run N WHEP viewers of one stream; report JSON (and a PNG) at the end. "
        "Exit status 0 when every viewer joined and received media without failures, "
        "1 otherwise.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = run.add_argument_group("target")
    g.add_argument("--base-url", default="http://127.0.0.1:8080", help="the server")
    g.add_argument("--stream", default="loadtest", help="stream name")
    g.add_argument("--whep-path", default="/whep/{stream}", help="WHEP endpoint, under the base")
    g.add_argument("--whip-path", default="/whip/{stream}", help="WHIP endpoint, under the base")
    g.add_argument("--metrics-path", default="/metrics", help="Prometheus text, for server CPU")
    g.add_argument("--token", help="Bearer token for WHEP (and WHIP unless --publish-token)")
    g.add_argument("--publish-token", help="Bearer token for WHIP")
    g.add_argument(
        "--server-pid",
        type=int,
        help="a server on this machine: read its CPU/RSS from /proc when /metrics lacks them",
    )
    g = run.add_argument_group("viewers")
    g.add_argument("--viewers", type=_positive(int, 0), default=10, help="how many")
    g.add_argument("--duration", type=_positive(float, 1), default=30.0, help="seconds, after ramp")
    g.add_argument("--ramp", type=_positive(float, 0), default=0.0, help="seconds to spread joins")
    g.add_argument("--processes", type=_positive(int, 1), default=2, help="worker processes")
    g.add_argument(
        "--decode-sample", type=_positive(int, 0), default=0, help="viewers that really decode"
    )
    g.add_argument(
        "--rcvbuf",
        type=_positive(int, 0),
        default=1 << 20,
        help="viewers' UDP SO_RCVBUF bytes (0: the system's), so that the load generator's "
        "own socket drops stay out of the loss",
    )
    g = run.add_argument_group("publisher")
    g.add_argument(
        "--publish",
        choices=("synthetic", "none"),
        default="synthetic",
        help="synthetic: a pre-encoded VP8 + Opus WHIP publisher; none: an existing stream",
    )
    g.add_argument("--width", type=_positive(int, 16), default=1280)
    g.add_argument("--height", type=_positive(int, 16), default=720)
    g.add_argument("--fps", type=_positive(int, 1), default=30)
    g.add_argument("--bitrate", type=parse_bitrate, default="2500k", help="video, e.g. 2500k")
    g.add_argument("--gop", type=_positive(int, 1), default=60, help="keyframe interval, frames")
    g.add_argument(
        "--honour-pli",
        action="store_true",
        help="answer PLI with the clip's next keyframe, like a live encoder (default: ignore "
        "PLI, like OBS)",
    )
    g = run.add_argument_group("output")
    g.add_argument("--json", type=Path, help="write the full report here")
    g.add_argument("--plot", type=Path, help="write a PNG here (needs matplotlib)")
    g.add_argument("--max-loss-pct", type=float, help="also exit 1 above this aggregate loss")
    g.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.width % 2 or args.height % 2:
        ap.error("--width and --height must be even")
    from loadtest.runner import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
