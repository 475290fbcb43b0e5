"""Payload type mapping between a publisher's and a viewer's negotiated codecs."""

from __future__ import annotations

from broadcast.sfu.codecs import CodecSpec, payload_type_map


def h264(pt: int, profile_level_id: str, mode: str = "1") -> CodecSpec:
    params = {"profile-level-id": profile_level_id, "packetization-mode": mode}
    return CodecSpec(pt, "video/h264", 90000, None, params)


def rtx(pt: int, apt: int) -> CodecSpec:
    return CodecSpec(pt, "video/rtx", 90000, None, {"apt": apt})


VP8 = CodecSpec(96, "video/vp8", 90000)


def test_same_codec_different_payload_types() -> None:
    viewer = [CodecSpec(100, "video/vp8", 90000), rtx(101, 100)]
    assert payload_type_map([VP8, rtx(97, 96)], viewer) == {96: (100, 101)}


def test_codec_the_viewer_lacks_is_absent() -> None:
    assert payload_type_map([VP8], [h264(102, "42e01f")]) == {}


def test_h264_exact_profile_preferred_over_a_wider_one() -> None:
    viewer = [h264(100, "640c1f"), h264(102, "42001f"), h264(104, "42e01f"), rtx(105, 104)]
    assert payload_type_map([h264(106, "42e01f")], viewer) == {106: (104, 105)}


def test_ffmpeg_plain_baseline_plays_on_constrained_baseline_only_viewer() -> None:
    assert payload_type_map([h264(106, "42001e")], [h264(108, "42e01f")]) == {106: (108, None)}


def test_high_does_not_go_to_a_baseline_decoder() -> None:
    assert payload_type_map([h264(96, "64001f")], [h264(108, "42e01f")]) == {}


def test_main_goes_to_a_high_decoder() -> None:
    assert payload_type_map([h264(96, "4d001f")], [h264(108, "64001f")]) == {96: (108, None)}


def test_packetization_mode_must_match() -> None:
    assert payload_type_map([h264(96, "42e01f", "1")], [h264(97, "42e01f", "0")]) == {}
