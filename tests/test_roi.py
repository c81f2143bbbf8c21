"""vatlas.roi: JSON polygons and PNG masks, rasterization, scaling, validation and every error path."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA

from vatlas.errors import RoiError
from vatlas.roi import Roi, load_roi, polygon_area

DATA = SHARED_DATA


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_rectangle_mask_is_hand_computable() -> None:
    # Continuous coordinates: x in [2, 6], y in [1, 4]. fillPoly includes the outline, so the mask covers the
    # pixels whose centre lies inside plus the last column/row: x 2..6, y 1..4.
    roi = Roi(0, [[[2, 1], [6, 1], [6, 4], [2, 4]]])
    expected = np.zeros((8, 10), bool)
    expected[1:5, 2:7] = True
    assert np.array_equal(roi.mask(8, 10), expected)
    # A sub-pixel polygon keeps exactly the pixels whose centres are inside.
    inner = Roi(0, [[[2.2, 1.2], [5.6, 1.2], [5.6, 4.6], [2.2, 4.6]]])
    expected = np.zeros((8, 10), bool)
    expected[1:5, 2:6] = True
    assert np.array_equal(inner.mask(8, 10), expected)


def test_triangle_area_close_to_geometry() -> None:
    roi = Roi(0, [[[0, 0], [400, 0], [0, 300]]])
    assert polygon_area(roi.polygons[0]) == 60000
    area = roi.mask(300, 400).sum()
    assert abs(area - 60000) / 60000 < 0.01


def test_several_polygons_are_several_rois(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "roi.json",
        {"ref_frame": 3, "polygons": [[[1, 1], [5, 1], [5, 5], [1, 5]], [[10, 2], [14, 2], [12, 6]]]},
    )
    roi = load_roi(path)
    assert roi.ref_frame == 3 and len(roi.polygons) == 2
    labels = roi.label_mask(10, 16)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[3, 3] == 1 and labels[3, 12] == 2
    roi.validate(16, 10, 5)
    assert load_roi(path, ref_frame=1).ref_frame == 1  # an explicit ref_frame overrides the file's


def test_scaled_is_exact_in_continuous_coordinates() -> None:
    roi = Roi(0, [[[10, 20], [50, 20], [50, 60], [10, 60]]])
    half = roi.scaled(0.5, 0.25)
    np.testing.assert_allclose(half.polygons[0], [[5, 5], [25, 5], [25, 15], [5, 15]])
    full_area = roi.mask(80, 64).sum()
    doubled = roi.scaled(2, 2).mask(160, 128).sum()
    assert abs(doubled / full_area - 4) < 0.2


def test_json_round_trip(tmp_path: Path) -> None:
    roi = Roi(2, [np.array([[1.5, 2.25], [9.0, 2.0], [5.0, 7.75]])])
    again = load_roi(roi.save(tmp_path / "r.json"))
    assert again.ref_frame == 2
    np.testing.assert_array_equal(again.polygons[0], roi.polygons[0])
    assert json.loads((tmp_path / "r.json").read_text()) == roi.to_json()


def test_png_mask_keeps_holes_and_resizes(tmp_path: Path) -> None:
    mask = np.zeros((40, 60), np.uint8)
    mask[5:35, 10:50] = 255
    mask[15:25, 20:30] = 0  # a hole
    path = tmp_path / "mask.png"
    cv2.imwrite(str(path), mask)
    roi = load_roi(path, ref_frame=4)
    assert roi.ref_frame == 4 and len(roi.polygons) == 1
    assert np.array_equal(roi.mask(40, 60), mask > 0)
    assert np.array_equal(roi.mask(20, 30), mask[::2, ::2] > 0)
    assert load_roi(path).ref_frame == 0
    # The polygon (outer contour, at pixel centres) spans the region.
    lo, hi = roi.polygons[0].min(axis=0), roi.polygons[0].max(axis=0)
    np.testing.assert_allclose(lo, [10.5, 5.5])
    np.testing.assert_allclose(hi, [49.5, 34.5])
    roi.validate(60, 40, 5)


def test_real_clip_rois_load_and_fit_their_clips() -> None:
    manifest = json.loads((DATA / "manifest.json").read_text())
    checked = 0
    for clip in manifest:
        path = DATA / clip["name"] / "roi.json"
        if not path.exists():
            continue
        roi = load_roi(path)
        roi.validate(clip["width"], clip["height"], clip["frames"])
        assert roi.mask(clip["height"], clip["width"]).sum() > 1000
        checked += 1
    assert checked >= 8
    swan = load_roi(DATA / "blackswan" / "roi.json")
    assert swan.mask(480, 854).sum() == (617 - 446 + 1) * (466 - 370 + 1)


def test_real_mask_png_becomes_roi() -> None:
    path = DATA / "blackswan" / "masks" / "00000.png"
    roi = load_roi(path)
    truth = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0
    assert np.array_equal(roi.mask(480, 854), truth)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps([1, 2]), "expected"),
        (json.dumps({"ref_frame": 0}), "expected"),
        (
            json.dumps({"ref_frame": "zero", "polygons": [[[0, 0], [1, 0], [1, 1]]]}),
            "ref_frame must be an integer",
        ),
        (json.dumps({"ref_frame": -2, "polygons": [[[0, 0], [1, 0], [1, 1]]]}), ">= 0"),
        (json.dumps({"polygons": []}), "no polygons"),
        (json.dumps({"polygons": [[[0, 0], [1, 0]]]}), "at least 3"),
        (json.dumps({"polygons": [[[0, 0], [1, 0], [1]]]}), "number pairs"),
        (json.dumps({"polygons": [[["a", 0], [1, 0], [1, 1]]]}), "number pairs"),
        (json.dumps({"polygons": [[[0, 0], [1, 0], [1, 1e999]]]}), "non-finite"),
    ],
)
def test_malformed_json(tmp_path: Path, content: str, pattern: str) -> None:
    path = tmp_path / "roi.json"
    path.write_text(content)
    with pytest.raises(RoiError, match=pattern) as exc:
        load_roi(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RoiError, match="no such ROI file"):
        load_roi(tmp_path / "roi.json")


def test_unreadable_and_empty_masks(tmp_path: Path) -> None:
    fake = tmp_path / "mask.png"
    fake.write_text("not a png")
    with pytest.raises(RoiError, match="not a readable mask"):
        load_roi(fake)
    empty = tmp_path / "empty.png"
    cv2.imwrite(str(empty), np.zeros((10, 10), np.uint8))
    with pytest.raises(RoiError, match=str(empty)):
        load_roi(empty)


def test_validate_rejects_bad_geometry() -> None:
    square = [[10, 10], [30, 10], [30, 30], [10, 30]]
    with pytest.raises(RoiError, match="beyond the video's 4 frames"):
        Roi(4, [square]).validate(64, 64, 4)
    with pytest.raises(RoiError, match="outside"):
        Roi(0, [[[100, 100], [120, 100], [120, 120]]]).validate(64, 64, 4)
    with pytest.raises(RoiError, match="overlap"):
        Roi(0, [square, [[20, 20], [40, 20], [40, 40], [20, 40]]]).validate(64, 64, 4)
    with pytest.raises(RoiError, match="area below one pixel"):
        Roi(0, [[[10.6, 10.6], [10.7, 10.6], [10.7, 10.7]]]).validate(64, 64, 4)
