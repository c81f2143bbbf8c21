"""vatlas.video: PyAV/folder reading, MP4 and PNG writing, content hashes, and every input error path."""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA

from vatlas.errors import VideoError
from vatlas.metrics import psnr
from vatlas.video import (
    Timing,
    audio_from_source,
    choose_codec,
    content_hash,
    fps_fraction,
    frame_timestamps,
    list_image_files,
    read_frame,
    read_video,
    timing_from_source,
    write_mp4,
    write_png_sequence,
    write_video,
)

DATA = SHARED_DATA


def smooth_frames(count: int, width: int, height: int) -> np.ndarray:
    """Smooth gradients whose brightness encodes the frame index (so order and stride are checkable)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # Fixed fine (luma) detail makes the encoded file big enough to cut mid-stream.
    detail = np.random.default_rng(0).uniform(-20, 20, size=(height, width)).astype(np.float32)
    frames = []
    for k in range(count):
        r = 40 + 100 * xs / width + detail
        g = 40 + 100 * ys / height + detail
        b = 20.0 + 10.0 * k + detail
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def frame_index(frame: np.ndarray) -> int:
    return int(round((float(frame[..., 2].mean()) - 20.0) / 10.0))


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    frames = smooth_frames(12, 96, 64)
    path = write_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, 30)
    return path, frames


def test_mp4_round_trip_keeps_count_size_fps_and_content(clip: tuple[Path, np.ndarray]) -> None:
    path, frames = clip
    video = read_video(path)
    assert video.frames.shape == frames.shape and video.frames.dtype == np.uint8
    assert video.fps == 30.0
    assert video.source_size == (96, 64) and video.frame_range == (0, 12)
    assert psnr(video.frames, frames) > 35
    assert [frame_index(f) for f in video.frames] == list(range(12))


@pytest.mark.parametrize(
    ("fps", "rate", "count"),
    [(29.97002997, Fraction(30000, 1001), 5), (29.97, Fraction(30000, 1001), 3), (23.976, Fraction(24000, 1001), 3),
     (16, Fraction(16), 5), (25.0, 25, 5), (30, 30, 60)],
)
def test_mp4_frame_rate_and_count_are_exact(tmp_path: Path, fps: float, rate: Fraction, count: int) -> None:
    assert fps_fraction(fps) == rate
    # Noise makes every frame expensive; frames stamped with the stream's time base once broke 60-frame clips.
    frames = np.random.default_rng(0).integers(0, 256, size=(count, 64, 64, 3), dtype=np.uint8)
    path = write_mp4(tmp_path / "rate.mp4", frames, fps)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == rate
        assert stream.frames == count
    video = read_video(path)
    assert video.fps == pytest.approx(float(rate)) and video.num_frames == count


def test_odd_size_is_written_exactly(tmp_path: Path) -> None:
    frames = smooth_frames(4, 63, 45)
    path = write_mp4(tmp_path / "odd.mp4", frames, 30, progress=True)
    video = read_video(path)
    assert video.frames.shape == (4, 45, 63, 3)  # no padding: 4:4:4 H.264 codes the odd size itself
    assert psnr(video.frames, frames) > 35
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"
    with av.open(str(write_mp4(tmp_path / "even.mp4", smooth_frames(2, 64, 46), 30))) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"  # even sizes stay 4:2:0


def test_info_records_timing_rotation_colour_and_audio(tmp_path: Path) -> None:
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(30000, 1001))
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        video.codec_context.time_base = Fraction(1, 30000)
        video.codec_context.color_range, video.codec_context.color_primaries = 2, 1
        video.set_display_rotation(-90)
        audio = container.add_stream("pcm_s16le", rate=8000)
        for k, frame in enumerate(smooth_frames(6, 32, 32)):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p",
                                                                                    dst_color_range=2)
            video_frame.pts, video_frame.time_base = 1001 * k, Fraction(1, 30000)
            container.mux(video.encode(video_frame))
        container.mux(video.encode(None))
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        samples.sample_rate, samples.pts = 8000, 0
        container.mux(audio.encode(samples))
        container.mux(audio.encode(None))
    info = read_video(path).info
    assert info["time_base"] == "1/30000" and info["frame_rate"] == "30000/1001"
    assert info["pts"] == [1001 * k for k in range(6)] and info["end_pts"] == 6006
    assert info["at_start"] and info["at_end"]
    assert info["rotation"] == -90 and len(info["display_matrix"]) == 9
    assert info["color"]["range"] == "full" and info["color"]["primaries"] == 1
    assert info["audio"] == {"stream": 1, "codec": "pcm_s16le", "time_base": "1/8000"}
    cut = read_video(path, frames=(2, 4)).info
    assert cut["pts"] == [2002, 3003] and cut["end_pts"] == 4004 and not cut["at_start"] and not cut["at_end"]
    json.dumps(info)  # it goes into a bundle's manifest as is
    assert read_video(path, frames=(1, 6), stride=2).info["pts"] == [1001, 3003, 5005]


def test_timing_and_audio_plans_from_a_source_dict(tmp_path: Path) -> None:
    source = {"time_base": "1/90000", "frame_rate": "24", "pts": [0, 3000, 9000, 10000], "end_pts": 14000,
              "at_start": True, "at_end": True}
    timing = timing_from_source(source, [1, 2, 3], 4, 24.0)
    assert timing.time_base == Fraction(1, 90000) and timing.pts == (0, 6000, 7000) and timing.end == 11000
    assert timing_from_source(source, [0, 1], 4, 24.0).end == 9000  # a frame lasts until the next one
    # No timestamps (folders, older bundles) or a frame count that does not match: a constant rate.
    assert timing_from_source({}, [0, 1, 2], 3, 29.97) == Timing(Fraction(1001, 30000), (0, 1, 2), 3,
                                                                 Fraction(30000, 1001))
    assert timing_from_source(source, [0, 1], 5, 24.0).pts == (0, 1)
    assert audio_from_source(source, [0, 1], 4) == (None, None)  # the source had no audio
    clip = write_mp4(tmp_path / "a.mp4", smooth_frames(4, 16, 16), 24)
    with_audio = {**source, "audio": {"stream": 1}, "path": str(clip), "sha256": content_hash(clip)}
    copy, note = audio_from_source(with_audio, [0, 1, 2, 3], 4)
    assert note is None and copy is not None and copy.start is None and copy.stop is None
    copy, _ = audio_from_source(with_audio, [1, 2], 4)
    assert copy is not None and (copy.origin, copy.start, copy.stop) == (Fraction(1, 30), Fraction(1, 30),
                                                                          Fraction(1, 9))
    assert "contiguous" in str(audio_from_source(with_audio, [0, 2], 4)[1])
    assert "changed" in str(audio_from_source({**with_audio, "sha256": "0" * 64}, [0], 4)[1])
    assert "not there" in str(audio_from_source({**with_audio, "path": str(tmp_path / "gone.mp4")}, [0], 4)[1])


def test_codec_choice() -> None:
    assert [choose_codec(p) for p in ("a.mp4", "a.MOV", "frames")] == ["h264", "prores", "png"]
    assert choose_codec("a.mov", "h264") == "h264" and choose_codec("dir", "png") == "png"
    for path, codec in (("a.avi", None), ("a.mp4", "prores"), ("a.mkv", "h264"), ("dir", "h264"),
                        ("a.mov", "png"), ("a.mp4", "vp9")):
        with pytest.raises(ValueError) as exc:
            choose_codec(path, codec)
        assert "\n" not in str(exc.value)


def test_prores_and_vfr_write(tmp_path: Path) -> None:
    # A width that is a multiple of 16: prores_ks in PyAV's FFmpeg 8 does not give the same bytes twice
    # for other widths (its rate control varies; the quality stays high on real content).
    frames = smooth_frames(5, 48, 21)
    timing = Timing(Fraction(1, 1000), (0, 40, 120, 130, 200), 260, Fraction(20))
    path = write_video(tmp_path / "x.mov", frames, codec="prores", timing=timing)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "prores" and stream.frames == 5
        times = [f.pts * Fraction(stream.time_base) for f in container.decode(stream)]
    assert times == [Fraction(t, 1000) for t in timing.pts]
    assert psnr(read_video(path).frames, frames) > 45
    with pytest.raises(VideoError, match="5 timestamps for 4 frames"):
        write_video(tmp_path / "y.mp4", frames[:4], timing=timing)
    with pytest.raises(VideoError, match="increasing"):
        Timing(Fraction(1, 10), (0, 2, 2), 3, Fraction(10))


def test_frame_range_stride_and_resize(clip: tuple[Path, np.ndarray]) -> None:
    path, _ = clip
    video = read_video(path, frames=(2, 9), stride=3, size=(48, 30))
    assert video.frames.shape == (3, 30, 48, 3)
    assert [frame_index(f) for f in video.frames] == [2, 5, 8]
    assert video.frame_range == (2, 9) and video.stride == 3 and video.source_size == (96, 64)
    assert read_video(path, frames=(10, None)).num_frames == 2
    assert read_video(path, fps=12.5).fps == 12.5


@pytest.mark.parametrize("container", ["mkv", "mp4"])
def test_one_frame_from_the_key_frame_before_it(tmp_path: Path, container: str) -> None:
    """read_frame seeks (key frames every 8, B-frames) and returns exactly what decoding from the start gives."""
    path = tmp_path / f"gop.{container}"
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (30, 48, 64, 3), np.uint8)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = 8
        stream.options = {"bf": "2", "crf": "30"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    everything = read_video(path).frames
    stamps = frame_timestamps(path)
    assert len(stamps) == len(everything) == 30
    for index in (0, 1, 7, 8, 9, 17, 29):
        rgb, fps = read_frame(path, index, stamps)
        assert fps == 25.0 and np.array_equal(rgb, everything[index]), index
    with pytest.raises(VideoError, match="beyond"):
        read_frame(path, 30, stamps)


def test_png_sequence_round_trip_is_lossless_and_numeric(tmp_path: Path) -> None:
    frames = smooth_frames(12, 40, 24)
    paths = write_png_sequence(tmp_path / "seq", frames)
    assert [p.name for p in paths[:2]] == ["00000.png", "00001.png"]
    video = read_video(tmp_path / "seq")
    assert np.array_equal(video.frames, frames)
    assert video.fps == 30.0
    assert read_video(tmp_path / "seq", fps=24).fps == 24.0
    sub = read_video(tmp_path / "seq", frames=(1, 12), stride=5, size=(20, 12))
    assert sub.frames.shape == (3, 12, 20, 3)


def test_folder_order_is_numeric_not_lexical(tmp_path: Path) -> None:
    frames = smooth_frames(11, 16, 16)
    folder = tmp_path / "unpadded"
    folder.mkdir()
    for k, frame in enumerate(frames):
        ext = ".jpg" if k == 3 else ".png"  # mixed extensions are one sequence
        cv2.imwrite(str(folder / f"frame_{k}{ext}"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not a frame")
    assert [p.stem for p in list_image_files(folder)][:3] == ["frame_0", "frame_1", "frame_2"]
    video = read_video(folder)
    assert [frame_index(f) for f in video.frames] == list(range(11))


def test_real_clips_read(tmp_path: Path) -> None:
    swan = read_video(DATA / "blackswan" / "frames", frames=(0, 3), size=(214, 120))
    assert swan.frames.shape == (3, 120, 214, 3) and swan.source_size == (854, 480)
    bear = read_video(DATA / "bear" / "clip.mp4", frames=(0, 4))
    assert bear.frames.shape == (4, 480, 854, 3) and bear.fps == pytest.approx(30.0)
    walk = read_video(DATA / "kite-walk" / "clip.mp4", stride=20)
    assert walk.frames.shape == (4, 384, 640, 3) and walk.fps == pytest.approx(16.0)
    manifest = {c["name"]: c for c in json.loads((DATA / "manifest.json").read_text())}
    assert manifest["kite-walk"]["frames"] == 80


# ---------------------------------------------------------------------------------------------- errors


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoError, match="no such file") as exc:
        read_video(path)
    assert_one_line_naming(exc, path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(VideoError, match="empty") as exc:
        read_video(path)
    assert_one_line_naming(exc, path)


def test_text_file_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "fake.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match="not a readable video") as exc:
        read_video(path)
    assert_one_line_naming(exc, path)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = (np.sin(np.arange(8000) / 5.0) * 3000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        container.mux(stream.encode(None))
    with pytest.raises(VideoError, match="no video stream") as exc:
        read_video(path)
    assert_one_line_naming(exc, path)


def test_mp4_cut_in_half_is_truncated(tmp_path: Path) -> None:
    # Frame-to-frame changing noise makes every packet large, so the cut lands mid-stream.
    noise = np.random.default_rng(1).normal(128, 30, size=(40, 64, 96, 3))
    data = write_mp4(tmp_path / "full.mp4", np.clip(noise, 0, 255).astype(np.uint8), 30).read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="truncated") as exc:
        read_video(path)
    assert_one_line_naming(exc, path)
    # The frames before the cut are still readable when only they are asked for.
    assert read_video(path, frames=(0, 5)).num_frames == 5


def test_tiny_mp4_cut_in_half(clip: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    data = clip[0].read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="truncated") as exc:
        read_video(path)
    assert_one_line_naming(exc, path)


def test_mp4_with_index_at_end_cut_in_half(tmp_path: Path) -> None:
    # Without faststart the index (moov) is at the end: half a file cannot even be opened.
    full = tmp_path / "tail_index.mp4"
    with av.open(str(full), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k, frame in enumerate(smooth_frames(10, 32, 32)):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = k
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    assert read_video(full).num_frames == 10
    path = tmp_path / "tail_half.mp4"
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError) as exc:
        read_video(path)
    assert_one_line_naming(exc, path)


def test_frame_range_beyond_the_clip(clip: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path = clip[0]
    with pytest.raises(VideoError, match="beyond its 12 frames") as exc:
        read_video(path, frames=(5, 40))
    assert_one_line_naming(exc, path)
    with pytest.raises(VideoError, match="starts at 30"):
        read_video(path, frames=(30, None))
    write_png_sequence(tmp_path / "seq", smooth_frames(3, 16, 16))
    with pytest.raises(VideoError, match="beyond its 3 frames"):
        read_video(tmp_path / "seq", frames=(1, 5))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"stride": 0}, "stride"),
        ({"size": (0, 10)}, "size"),
        ({"frames": (5, 5)}, "frame range"),
        ({"frames": (-1, 3)}, "frame range"),
        ({"fps": 0}, "fps"),
    ],
)
def test_bad_read_arguments(clip: tuple[Path, np.ndarray], kwargs: dict, pattern: str) -> None:
    with pytest.raises(VideoError, match=pattern) as exc:
        read_video(clip[0], **kwargs)
    assert_one_line_naming(exc, clip[0])


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no frames here")
    with pytest.raises(VideoError, match="no image files") as exc:
        read_video(tmp_path)
    assert_one_line_naming(exc, tmp_path)


def test_folder_with_unreadable_image(tmp_path: Path) -> None:
    write_png_sequence(tmp_path, smooth_frames(3, 16, 16))
    bad = tmp_path / "00001.png"
    bad.write_text("broken")
    with pytest.raises(VideoError, match="not a readable image") as exc:
        read_video(tmp_path)
    assert_one_line_naming(exc, bad)


def test_folder_with_mixed_frame_sizes(tmp_path: Path) -> None:
    write_png_sequence(tmp_path, smooth_frames(2, 16, 16))
    odd = tmp_path / "00002.png"
    cv2.imwrite(str(odd), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(VideoError, match="differs") as exc:
        read_video(tmp_path)
    assert_one_line_naming(exc, odd)


def test_write_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="no frames"):
        write_mp4(tmp_path / "x.mp4", [], 30)
    with pytest.raises(VideoError, match="uint8"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32), 30)
    with pytest.raises(VideoError, match="fps"):
        write_mp4(tmp_path / "x.mp4", smooth_frames(2, 8, 8), 0)
    with pytest.raises(VideoError, match="frame 1 has size"):
        write_mp4(tmp_path / "x.mp4", [smooth_frames(1, 8, 8)[0], smooth_frames(1, 10, 8)[0]], 30)
    with pytest.raises(VideoError, match=r"\(H, W, 3\)"):
        write_png_sequence(tmp_path / "seq", np.zeros((2, 8, 8), np.uint8))
    assert not (tmp_path / "x.mp4").exists()
    assert not list(tmp_path.glob("*.part*"))  # the failed write left nothing behind


# ---------------------------------------------------------------------------------------------- hashes


def test_content_hash(tmp_path: Path, clip: tuple[Path, np.ndarray]) -> None:
    frames = smooth_frames(3, 16, 16)
    assert content_hash(frames) == content_hash(frames.copy())
    changed = frames.copy()
    changed[1, 2, 3, 0] ^= 1
    assert content_hash(changed) != content_hash(frames)
    assert content_hash(frames.reshape(3, 16, 48, 1)) != content_hash(frames)  # same bytes, other shape
    assert content_hash(clip[0]) == hashlib.sha256(clip[0].read_bytes()).hexdigest()
    folder = tmp_path / "seq"
    write_png_sequence(folder, frames)
    before = content_hash(folder)
    assert len(before) == 64
    write_png_sequence(folder, changed)
    assert content_hash(folder) != before
    with pytest.raises(VideoError, match="no such file"):
        content_hash(tmp_path / "missing")
