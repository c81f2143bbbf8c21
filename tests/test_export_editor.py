"""Export like an editor, checked with PyAV on real files made here: the source's audio copied packet for
packet (and cut with --frames), 29.97 and variable frame rates with their timestamps, rotation, colour range
and tags, odd sizes delivered exactly, ProRes 4444, and the codec/container choice with one-line errors."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from vatlas.models.bundle import Bundle, save_bundle
from vatlas.server.edits.engine import EditEngine
from vatlas.server.export import export_clip, preview_scale

from vatlas.cli import main
from vatlas.metrics import psnr
from vatlas.synth import make_scene
from vatlas.video import content_hash, read_video, write_png_sequence

SAMPLE_RATE = 48000


def moving_frames(count: int, width: int, height: int) -> np.ndarray:
    """Smooth colour ramps that move with the frame index (so order and timing mistakes show)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = [np.stack([60 + 120 * ((xs + 3 * k) % width) / width, 50 + 140 * ys / height,
                        np.full_like(xs, 30.0 + 12 * k)], axis=-1) for k in range(count)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def make_clip(path: Path, *, count: int = 12, size: tuple[int, int] = (64, 48), rate: Fraction = Fraction(30),
              time_base: Fraction | None = None, pts: list[int] | None = None, rotation: int | None = None,
              full_range: bool = False, audio: str | None = None) -> Path:
    """A source clip written with PyAV directly (not with vatlas), optionally with an audio track
    (``audio``: "aac", stereo, or "pcm_u8", mono)."""
    time_base = time_base or 1 / rate
    pts = list(range(count)) if pts is None else pts
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        video.codec_context.time_base = time_base
        for attr in ("colorspace", "color_primaries", "color_trc"):
            setattr(video.codec_context, attr, 1)  # BT.709
        video.codec_context.color_range = 2 if full_range else 1
        if rotation is not None:
            video.set_display_rotation(rotation)
        sound = container.add_stream(audio, rate=SAMPLE_RATE) if audio else None
        layout = "stereo" if audio == "aac" else "mono"
        if sound is not None:
            sound.layout = layout
        for k, rgb in enumerate(moving_frames(count, *size)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="itu709", dst_color_range=2 if full_range else 1)
            frame.pts, frame.time_base = pts[k], time_base
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            total = int(SAMPLE_RATE * (pts[-1] + pts[-1] - pts[-2]) * time_base)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / SAMPLE_RATE)).astype(np.float32)
            for start in range(0, total, 1024):
                if audio == "aac":
                    chunk = np.ascontiguousarray(np.stack([tone[start:start + 1024]] * 2))
                    samples = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                else:
                    chunk = (128 + 100 * tone[None, start:start + 1024]).astype(np.uint8)
                    samples = av.AudioFrame.from_ndarray(chunk, format="u8", layout=layout)
                samples.sample_rate, samples.pts, samples.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
                container.mux(sound.encode(samples))
            container.mux(sound.encode(None))
    return path


def bundle_of(source: Path) -> Bundle:
    """A ground-truth bundle whose frames are the decoded source and whose `source` is what a fit records."""
    video = read_video(source)
    scene = make_scene(frames=video.num_frames, size=video.size, seed=1)
    bundle = scene.ground_truth_bundle(atlas_size=32)
    bundle.frames = video.frames
    bundle.fps = video.fps
    bundle.source = {"path": str(source.resolve()), "sha256": content_hash(source), "size": list(video.size),
                     "frame_range": list(video.frame_range), "stride": 1, **video.info}
    bundle.validate()
    return bundle


def packets(path: Path, kind: str) -> list[av.Packet]:
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return [p for p in container.demux(stream) if p.size]


def frame_times(path: Path) -> list[Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.pts * Fraction(stream.time_base) for f in container.decode(stream)]


def first_frame(path: Path) -> av.VideoFrame:
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


@pytest.fixture(scope="module")
def clip_with_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("audio") / "talk.mp4", count=12, audio="aac")


def test_audio_is_copied_not_reencoded(clip_with_audio: Path, tmp_path: Path) -> None:
    engine = EditEngine(bundle_of(clip_with_audio), "cpu")
    out = export_clip(engine, tmp_path / "full.mp4")
    src, got = packets(clip_with_audio, "audio"), packets(out, "audio")
    with av.open(str(out)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
    # The whole clip: every packet, byte for byte, at its own time.
    assert [bytes(p) for p in got] == [bytes(p) for p in src]
    assert [p.pts for p in got] == [p.pts for p in src]
    assert len(packets(out, "video")) == 12


def test_frame_range_cuts_the_audio_to_the_same_span(clip_with_audio: Path, tmp_path: Path) -> None:
    engine = EditEngine(bundle_of(clip_with_audio), "cpu")
    out = export_clip(engine, tmp_path / "cut.mov", frames=list(range(3, 9)), codec="h264")
    t0, t1 = Fraction(3, 30), Fraction(9, 30)
    src = packets(clip_with_audio, "audio")
    tb = Fraction(src[0].time_base)
    span = [p for p in src if t0 <= p.pts * tb < t1]
    got = packets(out, "audio")
    assert len(got) == len(span) > 5
    assert [bytes(p) for p in got] == [bytes(p) for p in span]  # copied, not re-encoded
    # Shifted with the video: the span's first packet sits where it sat relative to frame 3.
    assert got[0].pts * Fraction(got[0].time_base) == span[0].pts * tb - t0
    assert frame_times(out) == [Fraction(k, 30) for k in range(6)]


def test_audio_left_out_when_the_source_changed(clip_with_audio: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    bundle = bundle_of(clip_with_audio)
    bundle.source["sha256"] = "0" * 64
    with caplog.at_level(logging.WARNING):
        out = export_clip(EditEngine(bundle, "cpu"), tmp_path / "silent.mp4")
    assert "changed since the fit" in caplog.text
    with av.open(str(out)) as container:
        assert not container.streams.audio and container.streams.video[0].frames == 12
    quiet = export_clip(EditEngine(bundle_of(clip_with_audio), "cpu"), tmp_path / "n.mp4", audio=False)
    with av.open(str(quiet)) as container:
        assert not container.streams.audio  # asked for


def test_audio_the_container_cannot_hold_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = make_clip(tmp_path / "raw.mkv", count=6, audio="pcm_u8")
    engine = EditEngine(bundle_of(source), "cpu")
    with caplog.at_level(logging.WARNING):
        out = export_clip(engine, tmp_path / "raw.mp4")
    assert "pcm_u8 audio cannot go in a .mp4 file" in caplog.text
    with av.open(str(out)) as container:
        assert not container.streams.audio and container.streams.video[0].frames == 6
    assert not list(tmp_path.glob("*.part*"))
    # A .mov takes it, packet for packet.
    kept = export_clip(engine, tmp_path / "raw.mov", codec="h264")
    assert [bytes(p) for p in packets(kept, "audio")] == [bytes(p) for p in packets(source, "audio")]


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", "h264"), (".mov", "prores")])
def test_29_97_keeps_rate_time_base_and_count(tmp_path: Path, suffix: str, codec: str) -> None:
    rate = Fraction(30000, 1001)
    source = make_clip(tmp_path / "ntsc.mp4", count=15, rate=rate, time_base=Fraction(1, 30000),
                       pts=[1001 * k for k in range(15)])
    out = export_clip(EditEngine(bundle_of(source), "cpu"), tmp_path / f"out{suffix}", codec=codec)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == rate and isinstance(stream.average_rate, Fraction)
        assert stream.frames == 15
        assert Fraction(stream.time_base) == Fraction(1, 30000)
        assert stream.duration * Fraction(stream.time_base) == 15 / rate  # the last frame keeps its length
    assert frame_times(out) == frame_times(source)


def test_variable_frame_rate_keeps_the_timestamps(tmp_path: Path) -> None:
    stamps = [0, 3000, 6000, 12000, 13000, 20000, 21000, 30000, 33000, 36000]
    source = make_clip(tmp_path / "vfr.mp4", count=10, rate=Fraction(24), time_base=Fraction(1, 90000), pts=stamps)
    engine = EditEngine(bundle_of(source), "cpu")
    for name, codec in (("vfr.mp4", None), ("vfr.mov", None)):
        out = export_clip(engine, tmp_path / "out" / name, codec=codec)
        assert frame_times(out) == [Fraction(s, 90000) for s in stamps]
    cut = export_clip(engine, tmp_path / "cut.mp4", frames=list(range(2, 7)))
    assert frame_times(cut) == [Fraction(s - 6000, 90000) for s in stamps[2:7]]
    with av.open(str(cut)) as container:
        stream = container.streams.video[0]
        assert stream.duration * Fraction(stream.time_base) == Fraction(30000 - 6000, 90000)  # ends where frame 7 starts


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", "h264"), (".mov", "prores")])
def test_rotation_and_colour_are_kept(tmp_path: Path, suffix: str, codec: str) -> None:
    source = make_clip(tmp_path / "phone.mp4", count=6, rotation=90, full_range=True)
    bundle = bundle_of(source)
    assert bundle.source["rotation"] == 90 and bundle.source["color"]["range"] == "full"
    out = export_clip(EditEngine(bundle, "cpu"), tmp_path / f"out{suffix}", codec=codec)
    want, got = first_frame(source), first_frame(out)
    assert got.rotation == want.rotation == 90
    assert read_video(out).info["display_matrix"] == bundle.source["display_matrix"]
    assert (got.color_primaries, got.color_trc, got.colorspace) == (1, 1, 1)
    # H.264 keeps the full range; ProRes is video range by definition, and the picture is the same anyway.
    assert int(got.color_range) == (2 if codec == "h264" else 1)
    assert psnr(read_video(out).frames, bundle.frames) > 38


def test_odd_sizes_come_back_at_the_source_size(tmp_path: Path) -> None:
    frames = moving_frames(4, 63, 45)
    write_png_sequence(tmp_path / "odd", frames)
    engine = EditEngine(bundle_of(tmp_path / "odd"), "cpu")
    for name in ("odd.mp4", "odd.mov"):
        out = export_clip(engine, tmp_path / name)
        video = read_video(out)
        assert video.frames.shape == (4, 45, 63, 3)
        assert psnr(video.frames, frames) > 40
        assert psnr(video.frames[:, :, -1], frames[:, :, -1]) > 35  # no smeared last column or row
        assert psnr(video.frames[:, -1], frames[:, -1]) > 35
    with av.open(str(tmp_path / "odd.mp4")) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"  # 4:2:0 cannot code 63x45


def test_prores_round_trip(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "plate.mp4", count=5, size=(96, 64))
    bundle = bundle_of(source)
    out = export_clip(EditEngine(bundle, "cpu"), tmp_path / "plate.mov")
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        # ProRes 4444: full chroma (the decoder reports its 12-bit output format).
        assert stream.codec_context.name == "prores" and stream.codec_context.pix_fmt == "yuv444p12le"
        assert stream.codec_context.profile == "4444" and stream.frames == 5
    video = read_video(out)
    assert video.frames.shape == bundle.frames.shape and psnr(video.frames, bundle.frames) > 50


def test_preview_scale(clip_with_audio: Path, tmp_path: Path) -> None:
    assert preview_scale((854, 480), max_side=427) == 0.5 and preview_scale((854, 480)) == 1.0
    assert preview_scale((64, 48), max_side=1000) == 1.0 and preview_scale((64, 48), scale=0.25) == 0.25
    for bad in ({"scale": 0.0}, {"scale": 2.0}, {"max_side": 4}, {"scale": 0.5, "max_side": 100}):
        with pytest.raises(ValueError):
            preview_scale((64, 48), **bad)
    out = export_clip(EditEngine(bundle_of(clip_with_audio), "cpu"), tmp_path / "small.mp4", scale=0.5)
    assert read_video(out).frames.shape == (12, 24, 32, 3)
    assert len(packets(out, "audio")) == len(packets(clip_with_audio, "audio"))


# --------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def saved(clip_with_audio: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(bundle_of(clip_with_audio), tmp_path_factory.mktemp("cli") / "talk.vatlas")


def test_cli_codec_by_suffix_or_flag(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases: list[tuple[str, list[str], str]] = [("a.mov", [], "prores"), ("b.mov", ["--codec", "h264"], "h264"),
                                               ("c.mp4", [], "h264")]
    for name, extra, codec in cases:
        assert main(["export", str(saved), "-o", str(tmp_path / name), "--quiet", *extra]) == 0
        with av.open(str(tmp_path / name)) as container:
            assert container.streams.video[0].codec_context.name == codec
            assert container.streams.audio[0].codec_context.name == "aac"
    assert main(["export", str(saved), "-o", str(tmp_path / "d.mp4"), "--frames", "2:6", "--max-side", "32",
                 "--no-audio", "--quiet"]) == 0
    with av.open(str(tmp_path / "d.mp4")) as container:
        stream: Any = container.streams.video[0]
        assert not container.streams.audio and (stream.width, stream.height, stream.frames) == (32, 24, 4)
    render = tmp_path / "r.png"
    assert main(["render", str(saved), "--frame", "1", "--scale", "0.5", "-o", str(render)]) == 0
    assert "32x24" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("output", "extra", "needle"),
    [("x.avi", [], ".avi"), ("x.mp4", ["--codec", "prores"], ".mov"), ("folder", ["--codec", "h264"], "h264"),
     ("x.mov", ["--codec", "png"], "folder"), ("x.mp4", ["--scale", "3"], "scale")],
)
def test_cli_unsupported_combinations_are_one_line(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   output: str, extra: list[str], needle: str) -> None:
    assert main(["export", str(saved), "-o", str(tmp_path / output), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / output).exists()
