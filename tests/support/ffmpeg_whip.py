"""A real WHIP publisher for tests: FFmpeg's own ``whip`` muxer, driven through PyAV.

Run it as a separate process (never in the server's process: PyAV calls
``avformat_write_header`` with the GIL held, and that call is the whole WHIP exchange —
POST, ICE, DTLS — so a server in the same interpreter could never answer it)::

    python -m tests.support.ffmpeg_whip --url http://127.0.0.1:8080/whip/live \\
        [--token T] [--seconds S] [--dtls-active] [--gop N] \\
        [--width 640 --height 360 --fps 30] [--cert-dir DIR]

stdout carries JSON lines only:

* ``{"event": "connected", "t_post": ..., "t_connected": ...}`` once the muxer header
  is written, i.e. the answer was accepted and ICE + DTLS completed. ``t_post`` is
  ``time.time()`` right before ``av.open``; nothing before it touches the network and
  the POST itself goes out inside ``start_encoding()``, a few milliseconds later
  (``t_header`` is the time right before that call).
* ``{"event": "done", "frames": N}`` after ``--seconds`` of media, video frames sent.

On failure it prints ``{"event": "error", "stage": ..., "error": ...}`` and a
readable line on stderr, and exits 1. On any exit it closes the container, which
makes FFmpeg send the WHIP ``DELETE`` to the ``Location`` it was given.

FFmpeg 8 facts this relies on (libavformat/whip.c in the PyAV 18.1 wheel: FFmpeg 8.1, GnuTLS):

* Muxer options (read from the muxer's AVClass): ``handshake_timeout`` (ms, 5000),
  ``pkt_size`` (1200), ``ts_buffer_size`` (-1), ``whip_flags`` (flag ``dtls_active``),
  ``rtp_history`` (512), ``authorization`` (sent as ``Authorization: Bearer <value>`` on
  the POST and on the DELETE), ``cert_file``, ``key_file``. No ``strict`` needed.
* Its self-generated DTLS certificate is ECDSA P-224, which the OpenSSL behind aiortc
  rejects in both DTLS roles; we hand it a P-256 certificate instead.
* H.264 without B-frames plus Opus 48 kHz stereo only. The offer has no candidates
  (port 9, ``c=IN IP4 0.0.0.0``) and ``a=setup:passive`` (``active`` with
  ``dtls_active``), it never trickles, and it uses the first UDP host candidate of the
  answer. ``Location`` may be relative; it DELETEs it when the container is closed.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import math
import os
import signal
import struct
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

AUDIO_RATE = 48_000
AUDIO_FRAME = 960  # 20 ms, what Opus in WebRTC uses
TONE_HZ = 440.0

CERT_NAME = "whip-cert.pem"
KEY_NAME = "whip-key.pem"


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def ensure_certificate(cert_dir: Path) -> tuple[Path, Path]:
    """Return (cert, key) PEM paths in cert_dir, creating a P-256 self-signed pair if absent.

    Publishers running in parallel may share cert_dir: the pair is created once, under
    a lock, key first and certificate last, and never replaced; so whoever sees the
    certificate file sees its final key too.
    """
    cert_path, key_path = cert_dir / CERT_NAME, cert_dir / KEY_NAME
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    cert_dir.mkdir(parents=True, exist_ok=True)
    with open(cert_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ffmpeg-whip-test")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256())
        )
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem_cert = cert.public_bytes(serialization.Encoding.PEM)
        for path, data in ((key_path, pem_key), (cert_path, pem_cert)):
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_bytes(data)
            tmp.chmod(0o600)
            tmp.replace(path)
    return cert_path, key_path


def pick_encoder(candidates: list[str]) -> str:
    for name in candidates:
        if name in av.codecs_available:
            try:
                av.Codec(name, "w")
            except Exception:  # listed, but not usable as an encoder here
                continue
            return name
    raise RuntimeError(f"none of the encoders {candidates} is in this PyAV build")


def add_video(container: Any, args: argparse.Namespace) -> Any:
    codec = pick_encoder(["libx264", "libopenh264"])
    options: dict[str, str] = {}
    if codec == "libx264":
        options = {
            "preset": "ultrafast",
            "tune": "zerolatency",  # no B-frames, no lookahead, no frame threads delay
            "profile": "baseline",
            "x264-params": (
                f"keyint={args.gop}:min-keyint={args.gop}:scenecut=0:bframes=0:repeat-headers=1"
            ),
        }
    else:  # libopenh264: constrained baseline only, never B-frames
        options = {"profile": "constrained_baseline", "allow_skip_frames": "0"}
    stream = container.add_stream(codec, rate=args.fps, options=options)
    stream.width = args.width
    stream.height = args.height
    stream.pix_fmt = "yuv420p"
    ctx = stream.codec_context
    ctx.gop_size = args.gop
    ctx.max_b_frames = 0
    ctx.bit_rate = 1_000_000
    ctx.time_base = Fraction(1, args.fps)
    return stream


def add_audio(container: Any) -> Any:
    codec = pick_encoder(["libopus", "opus"])
    stream = container.add_stream(codec, rate=AUDIO_RATE, layout="stereo")
    stream.codec_context.bit_rate = 64_000
    if codec == "opus":  # FFmpeg's native Opus encoder is experimental
        stream.codec_context.options = {"strict": "experimental"}
    return stream


class Frames:
    """Synthetic media: a scrolling gradient with a moving bar, and a 440 Hz tone."""

    def __init__(self, width: int, height: int) -> None:
        probe = av.VideoFrame(width, height, "yuv420p")
        self.width, self.height = width, height
        self.y_stride = probe.planes[0].line_size
        self.c_stride = probe.planes[1].line_size
        self.c_height = probe.planes[1].height
        self.y_row = bytes((x * 2) & 0xFF for x in range(self.y_stride)) * 2
        # One second of interleaved s16 stereo: exactly 440 periods, so it loops cleanly.
        samples = bytearray()
        for i in range(AUDIO_RATE):
            v = int(8000 * math.sin(2 * math.pi * TONE_HZ * i / AUDIO_RATE))
            samples += struct.pack("<hh", v, v)
        self.tone = bytes(samples) * 2

    def video(self, n: int) -> av.VideoFrame:
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        off = (n * 4) % self.y_stride
        row = bytearray(self.y_row[off : off + self.y_stride])
        bar = (n * 8) % max(1, self.width - 16)
        row[bar : bar + 16] = b"\xff" * 16
        frame.planes[0].update(bytes(row) * self.height)
        u = bytes([(n * 2) & 0xFF]) * (self.c_stride * self.c_height)
        frame.planes[1].update(u)
        frame.planes[2].update(bytes([128]) * (self.c_stride * self.c_height))
        frame.pts = n
        return frame

    def audio(self, n: int) -> av.AudioFrame:
        frame = av.AudioFrame(format="s16", layout="stereo", samples=AUDIO_FRAME)
        start = ((n * AUDIO_FRAME) % AUDIO_RATE) * 4
        frame.planes[0].update(self.tone[start : start + AUDIO_FRAME * 4])
        frame.sample_rate = AUDIO_RATE
        frame.pts = n * AUDIO_FRAME
        return frame


def publish(args: argparse.Namespace) -> int:
    options = {"handshake_timeout": str(args.handshake_timeout)}
    if not args.ffmpeg_cert:
        cert_path, key_path = ensure_certificate(Path(args.cert_dir))
        options["cert_file"] = str(cert_path)
        options["key_file"] = str(key_path)
    if args.token:
        options["authorization"] = args.token
    if args.dtls_active:
        options["whip_flags"] = "dtls_active"
    if args.verbose:  # FFmpeg's own logger, straight to stderr (no Python in the way)
        av.logging.restore_default_callback()
        av.logging.set_libav_level(av.logging.DEBUG if args.verbose > 1 else av.logging.VERBOSE)

    stage = "open"
    frames_sent = 0
    container = None
    try:
        t_post = time.time()
        container = av.open(args.url, "w", format="whip", container_options=options)
        video = add_video(container, args)
        audio = add_audio(container)
        stage = "handshake"
        t_header = time.time()
        container.start_encoding()  # POST offer, ICE, DTLS: returns once connected
        t_connected = time.time()
        emit("connected", t_post=t_post, t_header=t_header, t_connected=t_connected)

        stage = "stream"
        media = Frames(args.width, args.height)
        total_video = round(args.seconds * args.fps)
        start = time.monotonic()
        n_audio = 0
        while frames_sent < total_video:
            t_video = frames_sent / args.fps
            t_audio = n_audio * AUDIO_FRAME / AUDIO_RATE
            if t_audio < t_video:
                due, packets = t_audio, audio.encode(media.audio(n_audio))
                n_audio += 1
            else:
                due, packets = t_video, video.encode(media.video(frames_sent))
                frames_sent += 1
            delay = start + due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            container.mux(packets)
        stage = "flush"
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    except Exception as exc:
        emit("error", stage=stage, error=str(exc))
        print(f"ffmpeg_whip: {stage} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if container is not None:
            try:
                container.close()  # av_write_trailer + deinit: FFmpeg DELETEs the session
            except av.FFmpegError as exc:
                print(f"ffmpeg_whip: close failed: {exc}", file=sys.stderr)
    emit("done", frames=frames_sent)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", required=True, help="WHIP endpoint (http:// or https://)")
    p.add_argument("--token", help="Bearer token (muxer option 'authorization')")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--dtls-active", action="store_true", help="whip_flags=dtls_active")
    p.add_argument("--gop", type=int, default=30, help="keyframe interval in frames")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument(
        "--cert-dir",
        default=str(Path(tempfile.gettempdir()) / "broadcast-ffmpeg-whip"),
        help="reuse, or create, whip-cert.pem + whip-key.pem (ECDSA P-256) here",
    )
    p.add_argument(
        "--ffmpeg-cert",
        action="store_true",
        help="let FFmpeg generate its own DTLS certificate (P-224 in the GnuTLS build: "
        "an aiortc peer must reject it; for testing the failure path)",
    )
    p.add_argument("--handshake-timeout", type=int, default=5000, help="ICE+DTLS, in ms")
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="FFmpeg log on stderr (-vv: debug)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (what test harnesses send) must unwind through `finally` so the
    # container is closed and the DELETE goes out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return publish(args)


if __name__ == "__main__":
    sys.exit(main())
