"""Correspondences for the fit: adjacent optical flow with forward-backward checks, and flow to the reference frame.

Flow to a distant reference frame is aggregated as RNA does (methods.md 3.4): for each frame t, processed outward
from the reference, several chains t -> mid -> ref through intermediate frames (mid's own reference flow is already
known) and a direct t -> ref flow, measured against the reference warped by the camera's motion (so it survives
pans, zooms and occlusions that break every chain). The direct flow is used where it is valid, the chains' average
elsewhere (validity is their OR), and a final illumination-invariant photometric check (local normalized cross-correlation,
standing in for RNA's DINO similarity) removes wrong matches. The flow backend is pluggable (OpenCV DIS by
default); flows are cached on disk.

Where no reference correspondence survives (content the reference frame never saw, frames after the ROI has left
the picture) the fit falls back on the camera's motion: a robust similarity transform per adjacent pair, composed
toward the reference frame.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

FLOW_FIXED_POINT = 16.0  # cached flows are int16 in 1/16 px (range +-2048 px): exact enough, half the bytes


@runtime_checkable
class FlowBackend(Protocol):
    """Dense optical flow a -> b: `flow[y, x] = (dx, dy)` so that a(x, y) matches b(x + dx, y + dy)."""

    name: str

    def params(self) -> dict[str, Any]: ...

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


class DisFlow:
    """OpenCV's DIS optical flow on grayscale frames (CPU; releases the GIL, so threads scale)."""

    name = "dis"
    _PRESETS = {
        "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
        "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
        "fine": getattr(cv2, "DISOPTICAL_FLOW_PRESET_FINE", cv2.DISOPTICAL_FLOW_PRESET_MEDIUM),
    }

    def __init__(self, preset: str = "medium") -> None:
        if preset not in self._PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r} (choose from {', '.join(self._PRESETS)})")
        self.preset = preset

    def params(self) -> dict[str, Any]:
        return {"backend": self.name, "preset": self.preset, "cv2": cv2.__version__}

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # one DIS object per call: instances keep internal buffers and are not thread-safe
        dis = cv2.DISOpticalFlow_create(self._PRESETS[self.preset])
        flow = dis.calc(_gray(a), _gray(b), None)
        return flow.astype(np.float32, copy=False)


_BACKENDS: dict[str, Callable[..., FlowBackend]] = {"dis": DisFlow}


def register_flow_backend(name: str, factory: Callable[..., FlowBackend]) -> None:
    """Make a flow backend (e.g. a learned one) selectable by name in FitConfig.flow.flow_backend."""
    _BACKENDS[name] = factory


def get_flow_backend(name: str, **kwargs: Any) -> FlowBackend:
    if name not in _BACKENDS:
        raise ValueError(f"unknown flow backend {name!r} (registered: {', '.join(sorted(_BACKENDS))})")
    return _BACKENDS[name](**kwargs)


def default_cache_dir() -> Path:
    return Path(os.environ.get("VATLAS_CACHE") or Path.home() / ".cache" / "vatlas")


def _gray(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)


class FlowCache:
    """Flows on disk as npz (int16 fixed point), keyed by sha256 of both frames and the backend parameters."""

    def __init__(self, directory: Path | str | None) -> None:
        self.directory = None if directory is None else Path(directory) / "flows"

    def key(self, hash_a: str, hash_b: str, params: dict[str, Any]) -> str:
        text = json.dumps([hash_a, hash_b, params], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> np.ndarray | None:
        if self.directory is None:
            return None
        path = self.directory / key[:2] / f"{key}.npz"
        try:
            with np.load(path) as data:
                return data["flow"].astype(np.float32) / FLOW_FIXED_POINT
        except (OSError, KeyError, ValueError):
            return None  # missing or damaged entries are recomputed

    def put(self, key: str, flow: np.ndarray) -> None:
        if self.directory is None:
            return
        path = self.directory / key[:2] / f"{key}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        fixed = np.clip(np.rint(flow * FLOW_FIXED_POINT), -32767, 32767).astype(np.int16)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, flow=fixed)
        tmp.replace(path)


def compute_flows(
    frames: np.ndarray,
    pairs: Iterable[tuple[int, int]],
    backend: FlowBackend,
    cache: FlowCache,
    *,
    threads: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[tuple[int, int], np.ndarray]:
    """Flows for (a, b) frame-index pairs, in parallel threads, through the cache."""
    pairs = list(dict.fromkeys(pairs))
    hashes: dict[int, str] = {}
    for i in {i for pair in pairs for i in pair}:
        hashes[i] = hashlib.sha256(np.ascontiguousarray(frames[i]).tobytes()).hexdigest()
    params = {**backend.params(), "shape": list(frames.shape[1:3])}

    def one(pair: tuple[int, int]) -> np.ndarray:
        key = cache.key(hashes[pair[0]], hashes[pair[1]], params)
        flow = cache.get(key)
        if flow is None:
            flow = backend(frames[pair[0]], frames[pair[1]])
            cache.put(key, flow)
        if progress is not None:
            progress(1)
        return flow

    workers = threads or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, pairs))
    return dict(zip(pairs, results, strict=True))


def _base_grid(h: int, w: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return np.stack([xs, ys], axis=-1)


def sample(field_: np.ndarray, flow: np.ndarray, *, nearest: bool = False, fill: float = np.nan) -> np.ndarray:
    """field_ sampled at x + flow(x) (bilinear by default); `fill` where the target leaves the frame."""
    h, w = flow.shape[:2]
    coords = _base_grid(h, w) + flow
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    src = np.ascontiguousarray(field_.astype(np.float32, copy=False))
    # replicate, then fill by an explicit bounds test: a constant NaN border would leak into the last row and
    # column through bilinear taps of weight zero
    out = cv2.remap(src, coords[..., 0], coords[..., 1], interp, borderMode=cv2.BORDER_REPLICATE)
    outside = ~_inside(coords, h, w)
    out[outside] = fill
    return out


def _inside(coords: np.ndarray, h: int, w: int) -> np.ndarray:
    x, y = coords[..., 0], coords[..., 1]
    return (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def in_frame(flow: np.ndarray) -> np.ndarray:
    h, w = flow.shape[:2]
    return _inside(_base_grid(h, w) + flow, h, w)


def fb_valid(fwd: np.ndarray, bwd: np.ndarray, threshold_px: float) -> np.ndarray:
    """Forward-backward check: |fwd(x) + bwd(x + fwd(x))| < threshold, and the target inside the frame."""
    back = sample(bwd, fwd)
    err = np.linalg.norm(fwd + back, axis=-1)
    return np.nan_to_num(err, nan=np.inf) < threshold_px


def local_ncc(a: np.ndarray, b: np.ndarray, *, window: int = 9, flat_std: float = 0.02) -> np.ndarray:
    """Per-pixel normalized cross-correlation of two grayscale images in [0, 1]; flat-on-flat counts as 1."""
    k = (window, window)
    mean_a, mean_b = cv2.blur(a, k), cv2.blur(b, k)
    var_a = np.maximum(cv2.blur(a * a, k) - mean_a**2, 0.0)
    var_b = np.maximum(cv2.blur(b * b, k) - mean_b**2, 0.0)
    cov = cv2.blur(a * b, k) - mean_a * mean_b
    ncc = cov / np.sqrt(var_a * var_b + 1e-8)
    flat = (np.sqrt(var_a) < flat_std) & (np.sqrt(var_b) < flat_std)
    return np.where(flat, 1.0, ncc)


@dataclass
class Correspondences:
    """Everything the fit needs from optical flow, at the working resolution.

    adj_fwd[t] is the flow t -> t+1 and adj_bwd[t] the flow t+1 -> t (both (T-1, H, W, 2)), with validity
    masks; ref_flow[t] maps frame t to the reference frame, ref_valid[t] its validity; init_mask[t] is the
    reference ROI mask propagated to frame t through ref_flow (RNA's bootstrap target). camera_to_ref[t] is a
    (2, 3) affine map from frame t's pixel coordinates to the reference frame's: the camera's motion.
    """

    ref_frame: int
    adj_fwd: np.ndarray
    adj_fwd_valid: np.ndarray
    adj_bwd: np.ndarray
    adj_bwd_valid: np.ndarray
    ref_flow: np.ndarray
    ref_valid: np.ndarray
    init_mask: np.ndarray
    camera_to_ref: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def _pair_motion(flow: np.ndarray, valid: np.ndarray, *, stride: int = 8, min_points: int = 32) -> np.ndarray | None:
    """Similarity transform (2, 3) fitted robustly (RANSAC) to a flow's FB-valid vectors; None if too few."""
    h, w = flow.shape[:2]
    grid = _base_grid(h, w)[::stride, ::stride].reshape(-1, 2)
    vec = flow[::stride, ::stride].reshape(-1, 2)
    ok = valid[::stride, ::stride].reshape(-1)
    if ok.sum() < min_points:
        return None
    src = grid[ok].astype(np.float32)
    matrix, _ = cv2.estimateAffinePartial2D(src, src + vec[ok], method=cv2.RANSAC, ransacReprojThreshold=2.0)
    return matrix


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The (2, 3) affine map x -> outer(inner(x))."""
    return outer[:, :2] @ inner + np.concatenate([np.zeros((2, 2)), outer[:, 2:]], axis=1)


def camera_motion(adj_fwd: np.ndarray, adj_fwd_valid: np.ndarray, adj_bwd: np.ndarray, adj_bwd_valid: np.ndarray,
                  ref_frame: int) -> np.ndarray:
    """(T, 2, 3) affine maps from each frame's pixel coordinates to the reference frame's, composed from
    robust per-pair similarity fits of the adjacent flows (a pair with too few valid vectors counts as still)."""
    num = adj_fwd.shape[0] + 1
    identity = np.eye(2, 3)
    out = np.repeat(identity[None], num, axis=0)
    for t in range(ref_frame + 1, num):  # frame t -> t-1: the backward flow of pair t-1
        step = _pair_motion(adj_bwd[t - 1], adj_bwd_valid[t - 1])
        out[t] = _compose(out[t - 1], identity if step is None else step.astype(np.float64))
    for t in range(ref_frame - 1, -1, -1):  # frame t -> t+1: the forward flow of pair t
        step = _pair_motion(adj_fwd[t], adj_fwd_valid[t])
        out[t] = _compose(out[t + 1], identity if step is None else step.astype(np.float64))
    return out


def reference_pairs(num_frames: int, ref_frame: int, hops: int) -> list[tuple[int, int]]:
    """The non-adjacent frame pairs the chains need (both directions, for FB checks); the direct flows to the
    reference frame are camera-guided (`guided_reference_flows`) and not listed here."""
    pairs: list[tuple[int, int]] = []
    for t in range(num_frames):
        d = abs(t - ref_frame)
        if d == 0:
            continue
        step = 1 if ref_frame > t else -1
        for mid in (t + step * k for k in range(2, min(hops, d - 1) + 1)):
            pairs += [(t, mid), (mid, t)]
    return pairs


def contrast_normalized(image: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    """Grey uint8 with the local mean and contrast taken out (Gaussian window of `sigma` px): a gain or a soft
    shadow changes neither, so brightness-constancy flows (DIS) can match across them."""
    grey = _gray(image).astype(np.float32)
    mean = cv2.GaussianBlur(grey, (0, 0), sigma)
    centred = grey - mean
    std = np.sqrt(cv2.GaussianBlur(centred * centred, (0, 0), sigma))
    return np.clip(128.0 + 40.0 * centred / (std + 2.0), 0, 255).astype(np.uint8)


def _disagrees_with_surroundings(flow: np.ndarray, direct: np.ndarray, direct_ok: np.ndarray, limit_px: float,
                                 sigma: float = 6.0, min_support: float = 0.2) -> np.ndarray:
    """Pixels whose chained flow is more than limit_px from the direct flow of the valid pixels around them.

    A chain can follow an occluder that moves with the surface and come back with a plausible-looking but wrong
    match; where the direct flow is known nearby, the surface's motion there is known too. Pixels with too few
    valid direct neighbours (support under min_support) are left alone. limit_px <= 0 turns the check off."""
    if limit_px <= 0 or not direct_ok.any():
        return np.zeros(direct_ok.shape, bool)
    weight = cv2.GaussianBlur(direct_ok.astype(np.float32), (0, 0), sigma)
    smooth = np.stack([cv2.GaussianBlur(np.where(direct_ok, direct[..., c], 0.0).astype(np.float32), (0, 0), sigma)
                       for c in range(2)], axis=-1) / np.maximum(weight, 1e-6)[..., None]
    return (weight > min_support * weight.max()) & ~direct_ok & \
        (np.linalg.norm(flow - smooth, axis=-1) > limit_px)


def guided_frames(num_frames: int, ref_frame: int) -> list[int]:
    """Frames that get a camera-guided direct flow to the reference (all but it and its neighbours)."""
    return [t for t in range(num_frames) if abs(t - ref_frame) >= 2]


def flow_count(num_frames: int, ref_frame: int, hops: int) -> int:
    """Optical flows compute_correspondences runs (the progress bar's units)."""
    adjacent = 2 * max(num_frames - 1, 0)
    return adjacent + len(reference_pairs(num_frames, ref_frame, hops)) + 2 * len(guided_frames(num_frames, ref_frame))


def guided_reference_flows(frames: np.ndarray, ref_frame: int, camera: np.ndarray, targets: list[int],
                           backend: FlowBackend, cache: FlowCache, fb_px: float, *, threads: int = 0,
                           progress: Callable[[int], None] | None = None
                           ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Flow t -> reference for each target frame, measured against the reference warped by the camera motion.

    A direct flow across a wide pan, a zoom or a rotation is beyond DIS; after the camera's own motion is taken
    out, only the residual is left to find. It re-anchors the chains where a long occlusion broke them: a
    surface the occluder hid in every intermediate frame has no chain, and without this, no correspondence to
    the reference at all. Returns (flow, FB-valid) per target frame."""
    h, w = frames.shape[1:3]
    ref = np.ascontiguousarray(frames[ref_frame])
    warped = [cv2.warpAffine(ref, camera[t].astype(np.float64), (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE) for t in targets]
    # far from the reference the light differs (gain, moving shadows), and DIS assumes it does not
    images = np.stack([contrast_normalized(f) for f in [*frames[targets], *warped]]) if targets else \
        np.zeros((0, h, w), np.uint8)
    k = len(targets)
    pairs = [(i, k + i) for i in range(k)] + [(k + i, i) for i in range(k)]
    flows = compute_flows(images, pairs, backend, cache, threads=threads, progress=progress)
    grid = _base_grid(h, w)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, t in enumerate(targets):
        residual = flows[(i, k + i)]
        valid = fb_valid(residual, flows[(k + i, i)], fb_px)
        q = grid + residual
        cam = camera[t].astype(np.float32)
        target = q @ cam[:, :2].T + cam[:, 2]
        flow = (target - grid).astype(np.float32)
        out[t] = (flow, valid & in_frame(flow))
    return out


def compute_correspondences(
    frames: np.ndarray,
    roi_mask: np.ndarray,
    ref_frame: int,
    *,
    backend: FlowBackend | None = None,
    cache_dir: Path | str | None = "default",
    adj_fb_px: float = 1.0,
    ref_fb_px: float = 5.0,
    hops: int = 6,
    ncc_min: float = 0.5,
    chain_check_px: float = 3.0,
    threads: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Correspondences:
    """Adjacent flows + aggregated reference flows for (T, H, W, 3) uint8 frames; see the module docstring."""
    num, h, w = frames.shape[:3]
    if not 0 <= ref_frame < num:
        raise ValueError(f"reference frame {ref_frame} outside 0..{num - 1}")
    backend = backend or DisFlow()
    cache = FlowCache(default_cache_dir() if cache_dir == "default" else cache_dir)
    adj = [(t, t + 1) for t in range(num - 1)] + [(t + 1, t) for t in range(num - 1)]
    flows = compute_flows(frames, adj + reference_pairs(num, ref_frame, hops), backend, cache,
                          threads=threads, progress=progress)

    adj_fwd = np.stack([flows[(t, t + 1)] for t in range(num - 1)]) if num > 1 else np.zeros((0, h, w, 2), np.float32)
    adj_bwd = np.stack([flows[(t + 1, t)] for t in range(num - 1)]) if num > 1 else np.zeros((0, h, w, 2), np.float32)
    adj_fwd_valid = np.stack([fb_valid(adj_fwd[t], adj_bwd[t], adj_fb_px) for t in range(num - 1)]) if num > 1 \
        else np.zeros((0, h, w), bool)
    adj_bwd_valid = np.stack([fb_valid(adj_bwd[t], adj_fwd[t], adj_fb_px) for t in range(num - 1)]) if num > 1 \
        else np.zeros((0, h, w), bool)

    camera = camera_motion(adj_fwd, adj_fwd_valid, adj_bwd, adj_bwd_valid, ref_frame)
    guided = guided_reference_flows(frames, ref_frame, camera, guided_frames(num, ref_frame), backend, cache,
                                    ref_fb_px, threads=threads, progress=progress)

    # slight blur: NCC then tolerates the sub-pixel drift that chaining accumulates on fine texture
    gray = np.stack([cv2.GaussianBlur(f.mean(axis=-1, dtype=np.float32) / 255.0, (0, 0), 1.0) for f in frames])
    ref_flow = np.zeros((num, h, w, 2), np.float32)
    ref_valid = np.zeros((num, h, w), bool)
    ref_valid[ref_frame] = True
    # chains continue through the FB-checked validity; the photometric check only filters the output, so one
    # frame's rejections do not compound along every later chain
    chain_valid = ref_valid.copy()
    direct_fraction: list[float] = []
    order = sorted(range(num), key=lambda t: abs(t - ref_frame))
    for t in order[1:]:
        d = abs(t - ref_frame)
        step = 1 if ref_frame > t else -1
        acc = np.zeros((h, w, 2), np.float32)
        count = np.zeros((h, w), np.float32)
        # chains through up to `hops` frames short of the reference (its neighbour's one hop is the reference
        # itself); every farther frame's direct flow is the guided one below
        last = 1 if d == 1 else min(hops, d - 1)
        for mid in (t + step * k for k in range(1, last + 1)):
            f_tm, f_mt = flows[(t, mid)], flows[(mid, t)]
            thr = adj_fb_px if abs(mid - t) == 1 else ref_fb_px
            valid = fb_valid(f_tm, f_mt, thr)
            if mid == ref_frame:
                chained = f_tm
            else:
                onward = sample(ref_flow[mid], f_tm)
                onward_ok = sample(chain_valid[mid].astype(np.float32), f_tm, fill=0.0) > 0.5
                chained = f_tm + np.nan_to_num(onward)
                valid &= onward_ok
            acc[valid] += chained[valid]
            count[valid] += 1.0
        ok = count > 0
        flow = np.where(ok[..., None], acc / np.maximum(count, 1.0)[..., None], 0.0).astype(np.float32)
        if t in guided:
            # one measured step beats an average of chains, whose errors add up hop by hop
            direct, direct_ok = guided[t]
            direct_fraction.append(float(direct_ok.mean()))
            ok &= ~_disagrees_with_surroundings(flow, direct, direct_ok, chain_check_px)
            flow = np.where(direct_ok[..., None], direct, flow)
            ok |= direct_ok
        warped_ref = np.nan_to_num(sample(gray[ref_frame], flow), nan=0.0)
        ncc = local_ncc(gray[t], warped_ref)
        ref_flow[t] = flow
        chain_valid[t] = ok & in_frame(flow)
        ref_valid[t] = chain_valid[t] & (ncc > ncc_min)

    init_mask = np.zeros((num, h, w), np.float32)
    roi = roi_mask.astype(np.float32)
    for t in range(num):
        propagated = np.nan_to_num(sample(roi, ref_flow[t], nearest=True), nan=0.0)
        init_mask[t] = propagated * ref_valid[t]
    init_mask[ref_frame] = roi

    others = [t for t in range(num) if t != ref_frame]
    stats = {
        "adj_valid": float(np.mean([adj_fwd_valid.mean(), adj_bwd_valid.mean()])) if num > 1 else 1.0,
        "ref_valid": float(ref_valid[others].mean()) if others else 1.0,
        "ref_valid_direct": float(np.mean(direct_fraction)) if direct_fraction else None,
        "flow_pairs": len(flows) + 2 * len(guided),
    }
    return Correspondences(ref_frame, adj_fwd, adj_fwd_valid, adj_bwd, adj_bwd_valid, ref_flow, ref_valid,
                           init_mask, camera, stats)
