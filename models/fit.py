"""Fit an RNA atlas to a video and an ROI, then bake a bundle.

Stages: flow (correspondences) -> init (T toward identity) -> main (T, A, M, L jointly, RNA eq. 2-8) ->
refine (only M, RNA eq. 9-10) -> inverse (only B, INVE 3.3) -> bake (soft mask by matting, dense fields, metrics).
Ctrl-C during a training stage writes a resumable checkpoint next to the output; `resume=True` continues it.
The checkpoint holds what training changed: weights that differ from their seeded initialisation (rebuilt on
resume), the best-PSNR snapshot only where it differs from the weights, and the current stage's optimizer.
One progress bar covers the whole fit (FitProgress).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vatlas.roi import Roi

from . import bake as bake_module
from . import losses
from .bake import bake_bundle, delivery_atlas_size
from .bundle import Bundle, save_bundle
from .config import FitConfig
from .correspondence import Correspondences, compute_correspondences, flow_count, get_flow_backend
from .encoding import FusedReluMLP, HashGridConfig
from .inverse_map import inverse_loss
from .networks import NetworkConfig, RnaModel
from .prepare import FitData

STAGES = ("flow", "init", "main", "refine", "inverse", "bake")
TRAIN_STAGES = ("init", "main", "refine", "inverse")
# 2: T may hold per-frame affine maps; 3: L is a module of its own kind; 4: only what training changed
CHECKPOINT_VERSION = 4
READABLE_CHECKPOINTS = (3, 4)
POTENTIAL_MASK_SIZE = 512


class FitError(Exception):
    """A fit cannot start or resume (bad checkpoint, inputs that do not match it)."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise FitError("--device cuda requested but CUDA is not available")
    if device not in ("cpu", "cuda"):
        raise FitError(f"unknown device {device!r} (auto, cpu or cuda)")
    return torch.device(device)


def checkpoint_path(out: Path | str) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def network_config(cfg: FitConfig, width: int, height: int, num_frames: int, span: float) -> NetworkConfig:
    """Networks sized from the fit config."""
    net = cfg.network

    def grid(dims: int, finest: float) -> HashGridConfig:
        return HashGridConfig(n_input_dims=dims, n_levels=net.hash_levels, log2_hashmap_size=net.hash_log2_size,
                              base_resolution=16, finest_resolution=finest)

    return NetworkConfig(
        width=width, height=height, num_frames=num_frames, atlas_span_px=span,
        atlas_grid=grid(2, float(net.atlas_finest_resolution)),
        mask_grid=grid(3, float(max(width, height))),
        inverse_grid=grid(3, 256.0), mapping_width=net.mapping_width, mapping_frame_affine=net.frame_affine,
        illumination_encoding=net.illumination_encoding, illumination_grid=grid(3, float(net.illumination_finest)),
        seed=cfg.seed,
        hash_backend=None if net.hash_backend == "auto" else net.hash_backend,
    )


def unfuse_mlps(model: torch.nn.Module) -> None:
    """Swap every FusedReluMLP for a plain nn.Sequential of the same layers (same parameters, same state)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FusedReluMLP):
                setattr(parent, name, torch.nn.Sequential(*child))


# ---------------------------------------------------------------- progress
# Seconds per iteration of each training stage relative to the main stage's (measured on a CPU, draft preset):
# they place a stage on the overall bar until its own rate is measured.
RELATIVE_COST = {"init": 0.18, "main": 1.0, "refine": 0.41, "inverse": 0.25}
# A main-stage iteration costs about this many network-point evaluations per batch pixel (six T lookups,
# three M, one A, one L, forward and backward): the bake's point count is weighed against it.
MAIN_POINTS_PER_PIXEL = 35.0
# Readout per stage besides the total loss: at most two terms (all of them with verbose=True).
READOUT_TERMS = {"main": ("recon",), "refine": ("recon", "no")}
HEARTBEAT_S = 1.0  # the bar is redrawn at least this often, so elapsed time and ETA move in silent steps
SINK_S = 0.5  # machine-readable progress (FitProgress.sink) at most this often
PREVIEW_SIDE = 256  # long side of a preview of the reconstruction (Fitter.preview)
RATE_WINDOW_S = 2.0  # a stage's warm-up, left out of its rate; rates need this long (GPU steps are queued)


@dataclass
class StagePlan:
    """One stage's share of the overall bar."""

    name: str
    units: int  # iterations, flow pairs or frames
    done: float = 0.0
    elapsed: float = 0.0  # seconds spent in this stage so far (finished stages: all of it)
    finished: bool = False
    rate: float | None = None  # measured seconds per unit, smoothed
    expected: float | None = None  # bake: expected seconds, from the main stage's measured rate
    _mark: tuple[float, float] | None = None  # (time, done) where the rate's averaging began
    _windows: int = 0


class FitProgress:
    """One bar over a whole fit: stage names, a short loss readout and an ETA over all stages.

    The ETA adds each remaining stage's units times its seconds per unit: measured (averaged over the stage, its
    first RATE_WINDOW_S left out as warm-up) or, before that, the main stage's rate times RELATIVE_COST. The shown ETA eases toward that sum, so a stage switch does not make it jump.
    """

    def __init__(self, plan: list[StagePlan], *, enabled: bool, bake_seconds_per_main_iter: float,
                 sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.plan = {s.name: s for s in plan}
        self.order = [s.name for s in plan]
        self.bake_per_main = bake_seconds_per_main_iter
        self.enabled = enabled
        self.sink = sink  # gets what the bar shows as a dict (machine-readable progress), at most every SINK_S
        self._sunk_at = -math.inf
        self.stage = self.order[0]
        self.readout = ""
        self._began = time.perf_counter()
        self._stage_began = self._began
        self._eta_shown: float | None = None
        self._eta_at = self._began
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar = tqdm(total=1000, disable=not enabled, dynamic_ncols=True, leave=False,
                         bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}{postfix}")
        self._heartbeat: threading.Thread | None = None
        if enabled or sink is not None:
            self._heartbeat = threading.Thread(target=self._beat, name="fit-progress", daemon=True)
            self._heartbeat.start()

    # ---- events from the fit
    def begin(self, stage: str, done: float = 0.0) -> None:
        with self._lock:
            for name in self.order[:self.order.index(stage)]:
                self.plan[name].finished = True
            self.stage, self.readout = stage, ""
            s = self.plan[stage]
            s.done, s._mark, s._windows = done, None, 0
            self._stage_began = time.perf_counter() - s.elapsed
            self._draw()

    def advance(self, done: float) -> None:
        """The current stage has `done` units; samples its rate and redraws (at most every 0.1 s)."""
        with self._lock:
            self._advance(done)

    def add(self, units: int = 1) -> None:
        """`units` more done in the current stage (flow pairs arrive from worker threads)."""
        with self._lock:
            self._advance(self.plan[self.stage].done + units)

    def _advance(self, done: float) -> None:
        s = self.plan[self.stage]
        s.done = done
        now = time.perf_counter()
        if s._mark is None:
            s._mark = (now, done)
        elif now - s._mark[0] >= RATE_WINDOW_S and done > s._mark[1]:
            rate = (now - s._mark[0]) / (done - s._mark[1])
            if s._windows == 0:
                # the first window (warm-up: allocations, caches) only stands in: the rate is then averaged
                # over everything after it, which a busy machine's bursts barely move
                s.rate, s._mark = rate, (now, done)
                s._windows = 1
            else:
                s.rate = rate
        if now - self._eta_at >= 0.1 or done >= s.units:
            self._draw()

    def finish(self, stage: str, elapsed: float) -> None:
        with self._lock:
            s = self.plan[stage]
            s.done, s.elapsed, s.finished = s.units, elapsed, True
            if s.units and s.rate is None:
                s.rate = elapsed / s.units
            self._draw(sink_now=True)  # a stage shorter than SINK_S still reports its last readout

    def set_readout(self, text: str) -> None:
        self.readout = text

    def close(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=2.0)
        self._bar.close()

    # ---- estimates
    def _main_rate(self) -> float | None:
        """Seconds per main-stage iteration: measured, or inferred from a measured training stage."""
        main = self.plan.get("main")
        if main is not None and main.rate is not None:
            return main.rate
        for name in ("refine", "inverse", "init"):
            s = self.plan.get(name)
            if s is not None and s.rate is not None:
                return s.rate / RELATIVE_COST[name]
        return None

    def _seconds(self, s: StagePlan) -> tuple[float, float] | None:
        """(seconds spent, seconds left) for stage s, or None while its cost cannot be estimated."""
        if s.finished:
            return s.elapsed, 0.0
        main_rate = self._main_rate()
        if s.name == "bake":
            if main_rate is None:
                return None
            expected = max(main_rate * self.bake_per_main, s.elapsed * 1.1)  # past its estimate: not done yet
            return s.elapsed, expected - s.elapsed
        rate = s.rate if s.rate is not None else \
            main_rate * RELATIVE_COST[s.name] if main_rate is not None and s.name in RELATIVE_COST else None
        if rate is None:
            return None
        return s.done * rate, max(s.units - s.done, 0.0) * rate

    def _draw(self, *, sink_now: bool = False) -> None:
        """Redraw the bar (and tell the sink); the caller holds the lock."""
        if not self.enabled and self.sink is None:
            return
        now = time.perf_counter()
        s = self.plan[self.stage]
        if not s.finished:
            s.elapsed = now - self._stage_began
        parts = [self._seconds(self.plan[name]) for name in self.order]
        eta_text = "ETA …"
        if all(p is not None for p in parts):
            spent = sum(p[0] for p in parts if p is not None)
            left = sum(p[1] for p in parts if p is not None)
            if self._eta_shown is None:
                self._eta_shown = left
            else:  # count down, then ease toward the estimate (a time constant of 5 s)
                shown = self._eta_shown - (now - self._eta_at)
                self._eta_shown = max(shown + (left - shown) * min(1.0, (now - self._eta_at) / 5.0), 0.0)
            eta_text = "ETA " + tqdm.format_interval(round(self._eta_shown))
            fraction = spent / max(spent + left, 1e-9)
            self._bar.n = max(self._bar.n, min(int(fraction * 1000), 999))  # never backwards, full when done
        self._eta_at = now
        number = self.order.index(self.stage) + 1
        unit = "pairs" if self.stage == "flow" else "frames" if self.stage == "bake" else "it"
        counted = f" {int(s.done)}/{s.units} {unit}" if s.units else ""
        self._bar.set_description_str(f"fit {self.stage} ({number}/{len(self.order)}){counted}", refresh=False)
        self._bar.set_postfix_str(eta_text + (f", {self.readout}" if self.readout else ""), refresh=False)
        if self.enabled:
            self._bar.refresh()
        if self.sink is not None and (sink_now or now - self._sunk_at >= SINK_S or self._bar.n >= 1000):
            self._sunk_at = now
            self.sink({"stage": self.stage, "stage_number": number, "stage_count": len(self.order),
                       "done": int(s.done), "units": s.units, "fraction": self._bar.n / 1000,
                       "eta_seconds": None if self._eta_shown is None else round(self._eta_shown, 1),
                       "elapsed_seconds": round(now - self._began, 2), "readout": self.readout})

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                self._draw()

    def complete(self) -> None:
        with self._lock:
            self._bar.n = 1000
            self._eta_shown = 0.0
            self._draw()

    def count_frames(self, iterable: Any) -> Any:
        """Wraps the bake's per-frame loop: frames baked show on the bar."""
        for i, item in enumerate(iterable):
            yield item
            self.advance(i + 1)
        if self.plan["bake"].units:
            self.set_readout("frames done, baking the atlas and maps")


def format_terms(terms: dict[str, float], stage: str, verbose: bool, psnr: float | None = None) -> str:
    """'loss 0.0312, recon 0.0102, ROI 27.4 dB': the total and the stage's key terms (all with verbose)."""
    shown = list(terms) if verbose else [k for k in READOUT_TERMS.get(stage, ()) if k in terms]
    text = ", ".join([f"loss {sum(terms.values()):.4f}"] + [f"{k} {terms[k]:.4f}" for k in shown])
    if psnr is not None and math.isfinite(psnr):
        text += f", ROI {psnr:.1f} dB"
    return text


# ---------------------------------------------------------------- checkpoint packing
def pack_tensor(value: torch.Tensor, base: torch.Tensor | None, *, half: bool = False) -> Any:
    """`value` for a checkpoint, against `base` (None: zeros) that the loader can rebuild: None where it equals
    a given base, else a bitmap of the changed entries and their values (fp16 when `half` and it holds them)."""
    value = value.detach().cpu()
    base = base.detach().cpu() if base is not None else None
    if not value.is_floating_point() or value.numel() < 1024:  # small or integer: whole, unless unchanged
        same = torch.equal(value, base) if base is not None and base.shape == value.shape else False
        return None if same else value.clone()
    changed = value != (base if base is not None else 0)
    if base is not None and not bool(changed.any()):
        return None
    values = value[changed]
    if half and value.dtype == torch.float32 and torch.isfinite(values.half()).all():
        values = values.half()
    return {"changed": torch.from_numpy(np.packbits(changed.reshape(-1).numpy())), "values": values.clone(),
            "shape": tuple(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}


def unpack_tensor(entry: Any, base: torch.Tensor | None) -> torch.Tensor | None:
    """The tensor pack_tensor stored (None stays None: the caller keeps `base`)."""
    if entry is None or isinstance(entry, torch.Tensor):
        return entry
    shape, dtype = tuple(entry["shape"]), getattr(torch, entry["dtype"])
    out = base.detach().cpu().to(dtype).clone() if base is not None else torch.zeros(shape, dtype=dtype)
    bits = np.unpackbits(entry["changed"].numpy(), count=math.prod(shape)).astype(bool)
    out.view(-1)[torch.from_numpy(bits)] = entry["values"].to(dtype)
    return out


def _pack_optimizer(state: dict[str, Any]) -> dict[str, Any]:
    """Adam's moments are exactly zero where a hash table was never sampled: stored as changed entries."""
    packed = {k: {name: pack_tensor(v, None) if isinstance(v, torch.Tensor) else v for name, v in per.items()}
              for k, per in state["state"].items()}
    return {"state": packed, "param_groups": state["param_groups"], "packed": True}


def _unpack_optimizer(state: dict[str, Any] | None) -> dict[str, Any] | None:
    if state is None or not state.get("packed"):
        return state
    unpacked = {k: {name: unpack_tensor(v, None) if isinstance(v, dict) else v for name, v in per.items()}
                for k, per in state["state"].items()}
    return {"state": unpacked, "param_groups": state["param_groups"]}


def _checksums(state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-tensor sums of the seeded initialisation: a resume on another torch build must rebuild the same."""
    return {k: float(v.detach().double().sum()) for k, v in state.items() if v.is_floating_point()}


class Fitter:
    """Runs the stages; holds model, optimizer and progress so a checkpoint can capture all of it."""

    def __init__(self, data: FitData, cfg: FitConfig, device: torch.device, *, show_progress: bool = True,
                 log: Callable[[str], None] | None = None,
                 callback: Callable[[str, int], None] | None = None, verbose: bool = False,
                 progress_sink: Callable[[dict[str, Any]], None] | None = None,
                 preview: Callable[[np.ndarray, int], None] | None = None, preview_seconds: float = 3.0) -> None:
        self.data, self.cfg, self.device = data, cfg, device
        self.progress_sink = progress_sink  # FitProgress.sink: the bar's state as dicts
        # preview(rgb, frame): the reconstruction of the reference frame, every preview_seconds while training
        self.preview, self.preview_seconds = preview, preview_seconds
        self._previewed_at = time.perf_counter()
        self.show_progress = show_progress
        self.verbose = verbose  # every loss term in the readout, not only the stage's key ones
        self.progress: FitProgress | None = None
        self.callback = callback  # called as callback(stage, iteration) after every training step
        self.resumed_from: dict[str, Any] | None = None
        self.log = log or (lambda msg: tqdm.write(msg) if show_progress else None)
        t, h, w = data.frames_np.shape[:3]
        self.num_frames, self.height, self.width = t, h, w
        self.span = cfg.network.atlas_span * max(w, h)
        self.net_cfg = network_config(cfg, w, h, t, self.span)
        torch.manual_seed(cfg.seed)
        self.model = RnaModel(self.net_cfg).to(device)
        if not cfg.network.fused_mlp:
            unfuse_mlps(self.model)
        self.stage = "flow"
        self.iteration = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_psnr = -math.inf
        self.stage_times: dict[str, float] = {}
        self.stage_spans: dict[str, tuple[float, float]] = {}  # perf_counter (start, end) of this run's stages
        # sampling on the compute device: no host-to-device copy (and no sync) per batch
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.corr: Correspondences | None = None
        self.potential: torch.Tensor | None = None
        self.tau = cfg.losses.refine_tau

    # ---------------------------------------------------------------- checkpoints
    def _initial_state(self) -> dict[str, torch.Tensor]:
        """The networks' weights before training, rebuilt from the seed as __init__ made them (CPU)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed)
            model = RnaModel(self.net_cfg)
        if not self.cfg.network.fused_mlp:
            unfuse_mlps(model)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """A resumable state that holds only what training changed (see the module docstring)."""
        initial = self._initial_state()
        weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        model = {k: pack_tensor(v, initial.get(k)) for k, v in weights.items()}
        best = None
        if self.best_state is not None:
            # a snapshot restored once, at the end of the main stage: fp16 keeps it within 5e-4 of itself
            best = {k: pack_tensor(v, weights.get(k), half=True) for k, v in self.best_state.items()}
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "shape": [self.num_frames, self.height, self.width],
            "ref_frame": self.data.ref_frame,
            "stage": self.stage,
            "iteration": self.iteration,
            "model": model,
            "initial_checksums": _checksums(initial),
            "optimizer": _pack_optimizer(self.optimizer.state_dict()) if self.optimizer is not None else None,
            "best_state": best,
            "best_psnr": self.best_psnr,
            "stage_times": self.stage_times,
            "generator": self.generator.get_state(),
        }

    def save_checkpoint(self, path: Path) -> Path:
        tmp = path.with_name(path.name + ".part")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as exc:
            raise FitError(f"{path}: unreadable checkpoint ({exc})") from None
        version = state.get("version")
        if version not in READABLE_CHECKPOINTS:
            raise FitError(f"{path}: checkpoint version {version} not supported")
        if list(state["shape"]) != [self.num_frames, self.height, self.width] or \
                state["ref_frame"] != self.data.ref_frame:
            raise FitError(f"{path}: checkpoint was made for another video size, frame range or reference frame")
        # the model was just built from the seed: it is the base the checkpoint's changes apply to
        initial = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if set(state["model"]) != set(initial):
            raise FitError(f"{path}: checkpoint was made with different network settings")
        sums = state.get("initial_checksums")
        if sums is not None and any(not math.isclose(sums.get(k, math.nan), v, rel_tol=1e-9, abs_tol=1e-6)
                                    for k, v in _checksums(initial).items()):
            raise FitError(f"{path}: checkpoint was made with different network settings or another torch "
                           "build (its starting weights cannot be rebuilt here)")
        try:
            weights = {}
            for k, entry in state["model"].items():
                value = unpack_tensor(entry, initial[k])
                weights[k] = initial[k] if value is None else value
            self.model.load_state_dict(weights)
        except (RuntimeError, IndexError, ValueError):
            raise FitError(f"{path}: checkpoint was made with different network settings") from None
        self.stage, self.iteration = state["stage"], int(state["iteration"])
        best = state["best_state"]
        if best is not None:
            best = {k: (weights[k] if (v := unpack_tensor(e, weights.get(k))) is None else v.to(weights[k].dtype))
                       .to(self.device) for k, e in best.items()}
        self.best_state, self.best_psnr = best, float(state["best_psnr"])
        self.stage_times = dict(state["stage_times"])
        self.generator.set_state(state["generator"].cpu())
        self._pending_optimizer = _unpack_optimizer(state["optimizer"])

    # ---------------------------------------------------------------- tensors
    def _prepare_tensors(self) -> None:
        dev, corr = self.device, self.corr
        assert corr is not None
        # uint8 on the device (a quarter of float32: 1,000 frames at 768x432 hold 1 GB, not 4); batches convert
        self.frames = torch.from_numpy(self.data.frames_np).to(dev)
        self.ref_flow = torch.from_numpy(corr.ref_flow).to(dev)
        self.ref_valid = torch.from_numpy(corr.ref_valid).to(dev)
        self.init_mask = torch.from_numpy(corr.init_mask).to(dev)
        self.camera_to_ref = self._normalized_camera(corr.camera_to_ref)
        if self.num_frames > 1:
            self.adj_fwd = torch.from_numpy(corr.adj_fwd).to(dev)
            self.adj_bwd = torch.from_numpy(corr.adj_bwd).to(dev)
            self.adj_fwd_valid = torch.from_numpy(corr.adj_fwd_valid).to(dev)
            self.adj_bwd_valid = torch.from_numpy(corr.adj_bwd_valid).to(dev)
        self.roi_mask_t = torch.from_numpy(self.data.roi_mask).to(dev).float()
        ys, xs = np.nonzero(self.data.roi_mask)
        self.roi_pixels = torch.from_numpy(np.stack([xs, ys], 1)).to(dev)
        self.ref_t_n = self.net_cfg.normalize_t(torch.tensor(float(self.data.ref_frame))).item()

    def _xyt(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Continuous pixel coords + frame index -> normalized (N, 3)."""
        return self.net_cfg.normalize_xyt(x, y, t.float())

    def _reference_roi_at(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The reference ROI mask (0/1) at continuous reference-frame pixel coordinates (0 outside the frame)."""
        ix, iy = x.floor().long(), y.floor().long()
        inside = (ix >= 0) & (ix < self.width) & (iy >= 0) & (iy < self.height)
        return self.roi_mask_t[iy.clamp(0, self.height - 1), ix.clamp(0, self.width - 1)] * inside

    def _rand(self, n: int, high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=self.generator, device=self.device)

    def _sample(self, n: int) -> dict[str, torch.Tensor]:
        """n random pixels over all frames and their correspondences."""
        t = self._rand(n, self.num_frames)
        y = self._rand(n, self.height)
        x = self._rand(n, self.width)
        batch = {"t": t, "x": x.float() + 0.5, "y": y.float() + 0.5, "rgb": self.frames[t, y, x].float() / 255.0}
        flow = self.ref_flow[t, y, x]
        batch["ref_x"], batch["ref_y"] = batch["x"] + flow[:, 0], batch["y"] + flow[:, 1]
        batch["ref_valid"] = self.ref_valid[t, y, x].float()
        batch["init_mask"] = self.init_mask[t, y, x]
        if self.num_frames > 1:
            fwd = t < self.num_frames - 1
            tf = t.clamp(max=self.num_frames - 2)
            tb = (t - 1).clamp(min=0)
            adj = torch.where(fwd[:, None], self.adj_fwd[tf, y, x], self.adj_bwd[tb, y, x])
            valid = torch.where(fwd, self.adj_fwd_valid[tf, y, x], self.adj_bwd_valid[tb, y, x])
            batch["adj_t"] = torch.where(fwd, t + 1, t - 1)
            batch["adj_x"], batch["adj_y"] = batch["x"] + adj[:, 0], batch["y"] + adj[:, 1]
            batch["adj_valid"] = valid.float()
        return batch

    def _sample_reference(self, n: int) -> dict[str, torch.Tensor]:
        """Reference-frame samples: half inside the ROI (position + BCE), half uniform (BCE)."""
        k = self._rand(n // 2, self.roi_pixels.shape[0])
        inside = self.roi_pixels[k]
        x = torch.cat([inside[:, 0], self._rand(n - n // 2, self.width)])
        y = torch.cat([inside[:, 1], self._rand(n - n // 2, self.height)])
        t = torch.full_like(x, self.data.ref_frame)
        return {"x": x.float() + 0.5, "y": y.float() + 0.5, "t": t, "roi": self.roi_mask_t[y, x],
                "inside": torch.arange(n, device=self.device) < n // 2}

    # ---------------------------------------------------------------- stages
    def run(self, out: Path | None, *, resume: bool = False) -> tuple[Bundle, dict[str, Any]]:
        ckpt = checkpoint_path(out) if out is not None else None
        self._pending_optimizer = None
        if resume:
            if ckpt is None or not ckpt.exists():
                raise FitError(f"nothing to resume: {ckpt} does not exist")
            self.load_checkpoint(ckpt)
            self.resumed_from = {"stage": self.stage, "iteration": self.iteration}
            self.log(f"resuming at stage {self.stage!r}, iteration {self.iteration}")
        start_stage = self.stage
        progress = self.progress = self._make_progress(start_stage)
        try:
            for stage in STAGES[STAGES.index(start_stage):]:
                if stage != self.stage:
                    self.stage, self.iteration = stage, 0
                    self._pending_optimizer = None
                began = time.perf_counter()
                progress.begin(stage, self.iteration if stage in TRAIN_STAGES else 0)
                if stage == "flow":
                    self._stage_flow()
                elif stage in TRAIN_STAGES:
                    if self.corr is None:
                        self._stage_flow()
                    self._train(stage)
                else:
                    if self.corr is None:
                        self._stage_flow()
                    bundle = self._stage_bake()
                spent = time.perf_counter() - began
                self.stage_times[stage] = self.stage_times.get(stage, 0.0) + spent
                self.stage_spans[stage] = (began, began + spent)
                progress.finish(stage, spent)
                self.log(f"stage {stage} done: {self.stage_times[stage]:.1f} s")
            progress.complete()
        except KeyboardInterrupt:
            progress.close()
            if ckpt is not None and self.stage != "flow":
                self.save_checkpoint(ckpt)
                size = ckpt.stat().st_size / 2**20
                self.log(f"interrupted: checkpoint written to {ckpt} ({size:.1f} MB; continue with --resume)")
            raise
        finally:
            progress.close()
            self.progress = None
        bundle.metrics["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_times.items()}
        bundle.metrics["total_seconds"] = round(sum(self.stage_times.values()), 3)
        if self.resumed_from is not None:
            bundle.metrics["resumed_from"] = self.resumed_from
        if self.device.type == "cuda":
            bundle.metrics["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        if out is not None:
            save_bundle(bundle, out)
            if ckpt is not None and ckpt.exists():
                ckpt.unlink()
        return bundle, bundle.metrics

    def _make_progress(self, start_stage: str) -> FitProgress:
        """The overall bar: every stage's units, and the bake weighed in main-stage iterations."""
        cfg, t = self.cfg, self.num_frames
        schedule = cfg.schedule
        pairs = flow_count(t, self.data.ref_frame, cfg.flow.ref_hops)
        iters = {"init": schedule.iters_mapping_init, "main": schedule.iters_main, "refine": schedule.iters_refine,
                 "inverse": schedule.iters_inverse}
        plan = [StagePlan("flow", pairs), *(StagePlan(k, n) for k, n in iters.items()), StagePlan("bake", t)]
        for s in plan[:STAGES.index(start_stage)]:  # a resumed fit: what was done before
            s.finished, s.done, s.elapsed = True, s.units, self.stage_times.get(s.name, 0.0)
        frames = self.data.delivered_frames
        dh, dw = frames.shape[1:3]
        atlas = delivery_atlas_size(cfg.bake.atlas_size, self.span * dw / self.width)
        # the bake evaluates A on the atlas's texels, T, M, A and L twice per delivered pixel, and B and T on
        # the inverse grid per frame; 1.5 covers the matting and copies that are not network points
        points = atlas * atlas + t * dh * dw * 5 + t * cfg.bake.inverse_grid ** 2 * 2
        per_main = 1.5 * points / (MAIN_POINTS_PER_PIXEL * schedule.batch_size)
        return FitProgress(plan, enabled=self.show_progress, bake_seconds_per_main_iter=per_main,
                           sink=self.progress_sink)

    def _stage_flow(self) -> None:
        cfg, flow = self.cfg, self.cfg.flow
        backend = get_flow_backend(flow.flow_backend, **({"preset": flow.flow_preset} if flow.flow_backend == "dis"
                                                         else {}))
        progress = None
        if self.progress is not None:
            if self.progress.stage == "flow":
                progress = self.progress.add
            else:  # a resumed fit rebuilds its correspondences (from the flow cache) before training on
                self.progress.set_readout("rebuilding the correspondences")
        self.corr = compute_correspondences(
            self.data.frames_np, self.data.roi_mask, self.data.ref_frame, backend=backend,
            cache_dir=cfg.extra.get("cache_dir", "default"), adj_fb_px=flow.adj_fb_px, ref_fb_px=flow.ref_fb_px,
            hops=flow.ref_hops, ncc_min=flow.ref_ncc_min, threads=flow.flow_threads, progress=progress,
        )
        if self.progress is not None and progress is None:
            self.progress.set_readout("")
        self.log(f"flow: {self.corr.stats['flow_pairs']} pairs, adjacent valid {self.corr.stats['adj_valid']:.2f},"
                 f" reference valid {self.corr.stats['ref_valid']:.2f}")
        self._prepare_tensors()

    def _mapping_groups(self) -> list[dict[str, Any]]:
        model, schedule = self.model, self.cfg.schedule
        groups: list[dict[str, Any]] = [{"params": list(model.mapping_mlp.parameters()), "lr": schedule.lr_mapping,
                                         "name": "mapping"}]
        if model.frame_affine is not None:
            groups.append({"params": [model.frame_affine], "lr": schedule.lr_frame_affine, "name": "frame_affine"})
        return groups

    def _optimizer_for(self, stage: str) -> tuple[torch.optim.Optimizer, int]:
        model, schedule = self.model, self.cfg.schedule
        if stage == "init":
            groups = self._mapping_groups()
            iters = schedule.iters_mapping_init
        elif stage == "main":
            groups = model.param_groups(schedule.lr_grid, schedule.lr_mlp, nets=("atlas", "mask", "illumination"))
            groups += self._mapping_groups()
            iters = schedule.iters_main
        elif stage == "refine":
            groups = model.param_groups(schedule.lr_grid, schedule.lr_mlp, nets=("mask",))
            iters = schedule.iters_refine
        else:
            groups = model.param_groups(schedule.lr_grid * 0.2, schedule.lr_inverse, nets=("inverse",))
            iters = schedule.iters_inverse
        cuda = self.device.type == "cuda"
        opt = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15 if cuda else 1e-8, fused=cuda or None)
        if self._pending_optimizer is not None:
            opt.load_state_dict(self._pending_optimizer)
            self._pending_optimizer = None
        return opt, iters

    def _normalized_camera(self, camera: np.ndarray) -> torch.Tensor:
        """(T, 2, 3) camera maps from pixel-index coordinates re-expressed on the networks' normalized xy."""
        cam = torch.from_numpy(camera).to(self.device).float()
        centre = cam.new_tensor([self.width / 2.0 - 0.5, self.height / 2.0 - 0.5])
        linear = cam[:, :, :2]
        offset = (linear @ centre + cam[:, :, 2] - centre) / (self.span / 2.0)
        return torch.cat([linear, offset[:, :, None]], dim=2)

    @torch.no_grad()
    def _start_affine_at_camera(self) -> None:
        """T's per-frame affine maps (offsets from the identity) := the camera motion."""
        assert self.model.frame_affine is not None
        self.model.frame_affine.copy_(self.camera_to_ref - torch.eye(2, 3, device=self.device))

    def _train(self, stage: str) -> None:
        cfg = self.cfg
        if stage == "init" and self.iteration == 0 and cfg.schedule.affine_init == "camera" and \
                self.model.frame_affine is not None:
            self._start_affine_at_camera()
        self.optimizer, iters = self._optimizer_for(stage)
        base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        if stage == "refine":
            if self.best_state is not None and self.iteration == 0:  # RNA refines from the best-PSNR weights
                self.model.load_state_dict(self.best_state)
            self.potential = self._potential_mask()
            self.tau = max(cfg.losses.refine_tau, 2.0 * self._reference_error_median())
            self.log(f"refine: non-occlusion threshold tau = {self.tau:.4f}")
        if stage == "inverse" and self.potential is None:
            self.potential = self._potential_mask()
        step_fn = {"init": self._step_init, "main": self._step_main, "refine": self._step_refine,
                   "inverse": self._step_inverse}[stage]
        progress = self.progress
        while self.iteration < iters:
            decay = cfg.schedule.lr_final_factor ** (self.iteration / max(iters, 1))
            for group, lr in zip(self.optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr * decay
            terms = step_fn()
            loss = sum(terms.values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.iteration += 1
            if stage == "main" and (self.iteration % max(cfg.schedule.eval_every, 1) == 0 or self.iteration == iters):
                self._evaluate_best()
            if progress is not None:
                if self.iteration % 50 == 0 or self.iteration == iters:  # .item() waits for the GPU: not every step
                    values = {k: v.item() for k, v in terms.items()}
                    psnr = self.best_psnr if stage == "main" else None
                    progress.set_readout(format_terms(values, stage, self.verbose, psnr))
                progress.advance(self.iteration)
            if self.callback is not None:
                self.callback(stage, self.iteration)
            if self.preview is not None and time.perf_counter() - self._previewed_at >= self.preview_seconds:
                self.preview(self.reconstruction(self.data.ref_frame), self.data.ref_frame)
                self._previewed_at = time.perf_counter()
        if stage == "main" and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            self.best_state = None  # the weights are now the best ones: a checkpoint need not hold them twice

    def _step_init(self) -> dict[str, torch.Tensor]:
        """T toward the reference correspondences (the camera's motion where there are none): a warm start
        that already knows the camera motion, which the main stage then refines.

        An identity fallback would put content the reference frame never saw at the same atlas place as whatever
        the reference frame shows there, the ROI included, under a panning camera."""
        b = self._sample(max(self.cfg.schedule.batch_size // 2, 256))
        xyt = self._xyt(b["x"], b["y"], b["t"])
        target = self._xyt(b["ref_x"], b["ref_y"], b["t"])[:, :2]
        fallback = xyt[:, :2]
        if self.cfg.schedule.init_fallback == "camera":
            camera = self.camera_to_ref[b["t"]]
            moved = (camera[:, :, :2] @ fallback[:, :, None])[:, :, 0] + camera[:, :, 2]
            # tanh saturates at the atlas border: content the camera shows far outside it is parked there
            fallback = moved.clamp(-0.98, 0.98)
        valid = b["ref_valid"][:, None]
        target = valid * target + (1.0 - valid) * fallback
        weight = 0.05 + 0.95 * b["ref_valid"]
        uv = self.model.mapping(xyt)
        return {"init": (((uv - target) ** 2).sum(-1) * weight).mean() * 100.0}

    def _step_main(self) -> dict[str, torch.Tensor]:
        cfg, model = self.cfg, self.model
        w = cfg.losses  # the weights (`losses` is the module of the terms)
        n = cfg.schedule.batch_size
        b = self._sample(n)
        r = self._sample_reference(max(n // 4, 2))
        step = w.rigidity_delta_px / (self.span / 2.0)
        xyt = self._xyt(b["x"], b["y"], b["t"])
        xyt_ref = self._xyt(r["x"], r["y"], r["t"])
        xyt_r = self._xyt(b["ref_x"], b["ref_y"], torch.full_like(b["t"], self.data.ref_frame))
        dx = xyt.new_tensor([step, 0.0, 0.0])
        dy = xyt.new_tensor([0.0, step, 0.0])
        parts = [xyt, xyt + dx, xyt + dy, xyt_r, xyt_ref]
        if self.num_frames > 1:
            parts.append(self._xyt(b["adj_x"], b["adj_y"], b["adj_t"]))
        uv_all = model.mapping(torch.cat(parts))
        uv, uv_dx, uv_dy, uv_r, uv_ref = uv_all[:n], uv_all[n:2 * n], uv_all[2 * n:3 * n], \
            uv_all[3 * n:4 * n], uv_all[4 * n:4 * n + xyt_ref.shape[0]]
        m_parts = [xyt, xyt_r, xyt_ref] + ([parts[-1]] if self.num_frames > 1 else [])
        logits = model.mask_logit(torch.cat(m_parts))
        logit, logit_r = logits[:n], logits[n:2 * n]
        logit_ref = logits[2 * n:2 * n + xyt_ref.shape[0]]
        alpha, alpha_r = torch.sigmoid(logit), torch.sigmoid(logit_r)
        t_n = xyt[:, 2:3]
        rgb_atlas = model.atlas(uv)
        light = model.illumination(uv, t_n)
        a = alpha[:, None]
        pred = a * light * rgb_atlas + (1.0 - a) * b["rgb"]
        a_detached = alpha.detach()
        done = self.iteration / max(cfg.schedule.iters_main, 1)
        prior = w.prior_final_factor ** done
        if w.corr_ref_weight == "roi":
            # a checked match into the reference ROI says "this is the ROI's surface" whatever M says: where M
            # gives up on a hard frame, T is still held (else it forks off under a long occlusion)
            ref_w = self._reference_roi_at(b["ref_x"], b["ref_y"]) * b["ref_valid"]
        else:
            ref_w = a_detached * b["ref_valid"]
        ref_prior = prior if w.corr_ref_final_factor is None else w.corr_ref_final_factor ** done
        terms = {
            "recon": w.reconstruction * losses.reconstruction(pred, b["rgb"]),
            "rigid": w.rigidity * losses.rigidity(losses.finite_difference_jacobian(uv, uv_dx, uv_dy, step)),
            "pos": prior * w.position * losses.position(uv_ref[r["inside"]], xyt_ref[r["inside"], :2]),
            "corr_ref": ref_prior * w.corr_ref * losses.weighted_correspondence(uv, uv_r, ref_w),
            "ref_mask": w.ref_mask * losses.mask_bce(logit_ref, r["roi"]),
            "ref_alpha": w.ref_flow_alpha * losses.alpha_consistency(alpha, alpha_r, b["ref_valid"]),
            "illum": w.illumination_reg * losses.illumination(light, a_detached),
        }
        if self.iteration < w.mask_bootstrap_until:
            terms["boot"] = w.mask_bootstrap * losses.mask_bce(logit, b["init_mask"], b["ref_valid"])
        if self.num_frames > 1:
            uv_a = uv_all[4 * n + xyt_ref.shape[0]:]
            alpha_a = torch.sigmoid(logits[2 * n + xyt_ref.shape[0]:])
            terms["corr_adj"] = prior * w.corr_adj * losses.weighted_correspondence(uv, uv_a, a_detached * b["adj_valid"])
            terms["flow_alpha"] = w.flow_alpha * losses.alpha_consistency(alpha, alpha_a, b["adj_valid"])
        return terms

    def _step_refine(self) -> dict[str, torch.Tensor]:
        cfg, model = self.cfg, self.model
        w = cfg.losses  # the weights (`losses` is the module of the terms)
        n = cfg.schedule.batch_size
        b = self._sample(n)
        r = self._sample_reference(max(n // 4, 2))
        xyt = self._xyt(b["x"], b["y"], b["t"])
        with torch.no_grad():
            uv = model.mapping(xyt)
            shown = model.illumination(uv, xyt[:, 2:3]) * model.atlas(uv)
            error = (shown - b["rgb"]).abs().mean(-1)
            target = (self._lookup_potential(uv) & (error < self.tau)).float()
        parts = [xyt, self._xyt(r["x"], r["y"], r["t"])]
        if self.num_frames > 1:
            parts.append(self._xyt(b["adj_x"], b["adj_y"], b["adj_t"]))
        logits = model.mask_logit(torch.cat(parts))
        logit = logits[:n]
        alpha = torch.sigmoid(logit)
        a = alpha[:, None]
        pred = a * shown + (1.0 - a) * b["rgb"]
        terms = {
            "recon": w.reconstruction * losses.reconstruction(pred, b["rgb"]),
            "no": w.refine * losses.non_occluded(alpha, target),
            "ref_mask": w.ref_mask * losses.mask_bce(logits[n:n + r["x"].shape[0]], r["roi"]),
        }
        if self.num_frames > 1:
            alpha_a = torch.sigmoid(logits[n + r["x"].shape[0]:])
            terms["flow_alpha"] = w.refine_flow_alpha * losses.alpha_consistency(alpha, alpha_a, b["adj_valid"])
        return terms

    def _step_inverse(self) -> dict[str, torch.Tensor]:
        b = self._sample(self.cfg.schedule.batch_size)
        xyt = self._xyt(b["x"], b["y"], b["t"])
        with torch.no_grad():
            uv = self.model.mapping(xyt)
            # B is trained where T is meaningful: visible ROI pixels and the atlas footprint around it
            weight = ((torch.sigmoid(self.model.mask_logit(xyt)) > 0.5) | self._lookup_potential(uv)).float()
        return {"inverse": inverse_loss(self.model, uv, xyt[:, 2:3], xyt[:, :2], 0.05 + weight)}

    # ---------------------------------------------------------------- helpers
    def _reference_roi_xyt(self) -> torch.Tensor:
        """Normalized xyt of the reference frame's ROI pixel centres."""
        xy = self.roi_pixels.float() + 0.5
        t = torch.full((xy.shape[0],), self.data.ref_frame, device=self.device)
        return self._xyt(xy[:, 0], xy[:, 1], t)

    def _reference_roi_fit(self) -> tuple[torch.Tensor, torch.Tensor]:
        """L*A(T(p)) and the input colour at the reference frame's ROI pixels."""
        xyt = self._reference_roi_xyt()
        uv = self.model.mapping(xyt)
        shown = self.model.illumination(uv, xyt[:, 2:3]) * self.model.atlas(uv)
        rgb = self.frames[self.data.ref_frame, self.roi_pixels[:, 1], self.roi_pixels[:, 0]].float() / 255.0
        return shown, rgb

    @torch.no_grad()
    def reconstruction(self, frame: int, max_side: int = PREVIEW_SIDE) -> np.ndarray:
        """RNA eq. 1 on frame `frame`, M*L*A(T(p)) + (1 - M)*c, on a grid of at most max_side pixels a side
        (working-size pixels sampled at their centres): a (h, w, 3) uint8 preview of how the fit is doing."""
        step = max(1.0, max(self.width, self.height) / max_side)
        xs = torch.arange(0, self.width, step, device=self.device)
        ys = torch.arange(0, self.height, step, device=self.device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        px, py = gx.reshape(-1).long(), gy.reshape(-1).long()
        xyt = self._xyt(px.float() + 0.5, py.float() + 0.5, torch.full_like(px, frame, dtype=torch.float32))
        uv = self.model.mapping(xyt)
        shown = (self.model.illumination(uv, xyt[:, 2:3]) * self.model.atlas(uv)).clamp(0, 1)
        m = self.model.mask(xyt).reshape(-1, 1)
        c = self.frames[frame, py, px].float() / 255.0
        out = m * shown + (1 - m) * c
        return (out.reshape(len(ys), len(xs), 3) * 255).round().byte().cpu().numpy()

    @torch.no_grad()
    def _evaluate_best(self) -> None:
        """ROI PSNR of L*A(T(p)) on the reference frame; keep the best weights (as RNA does)."""
        shown, rgb = self._reference_roi_fit()
        mse = ((shown.clamp(0, 1) - rgb) ** 2).mean().item()
        psnr = 10 * math.log10(1.0 / max(mse, 1e-12))
        if psnr > self.best_psnr:
            self.best_psnr = psnr
            self.best_state = copy.deepcopy(self.model.state_dict())

    @torch.no_grad()
    def _reference_error_median(self) -> float:
        """Median mean-abs error of L*A(T(p)) on the reference ROI: the fit's own noise floor.

        tau is raised to twice this when the fit is less exact than RNA's 0.025 (short schedules, noisy
        real footage); otherwise almost no pixel would qualify as non-occluded and refinement would do nothing.
        """
        shown, rgb = self._reference_roi_fit()
        return float((shown - rgb).abs().mean(-1).median().item())

    @torch.no_grad()
    def _potential_mask(self) -> torch.Tensor:
        """RNA's potential mask: reference ROI pixels splatted (2x2) into an atlas-space mask via T."""
        size = POTENTIAL_MASK_SIZE
        uv = self.model.mapping(self._reference_roi_xyt())
        pix = ((uv + 1.0) * 0.5 * size - 0.5).clamp(0, size - 1)
        mask = torch.zeros(size, size, device=self.device)
        for ox in (0, 1):
            for oy in (0, 1):
                ix = (pix[:, 0].floor().long() + ox).clamp(max=size - 1)
                iy = (pix[:, 1].floor().long() + oy).clamp(max=size - 1)
                mask[iy, ix] = 1.0
        # close pinholes left where the ROI's pixels are sparser than the mask's texels
        mask = torch.nn.functional.max_pool2d(mask[None, None], 3, 1, 1)
        mask = -torch.nn.functional.max_pool2d(-mask, 3, 1, 1)
        return mask[0, 0] > 0.5

    def _lookup_potential(self, uv: torch.Tensor) -> torch.Tensor:
        assert self.potential is not None
        size = self.potential.shape[0]
        ij = ((uv + 1.0) * 0.5 * size).floor().long().clamp(0, size - 1)
        return self.potential[ij[:, 1], ij[:, 0]]

    def bake(self, cfg: FitConfig | None = None) -> Bundle:
        """Bake the fitted model again (after run), e.g. with other bake settings (cfg.bake.visibility)."""
        if cfg is not None:
            self.cfg = cfg
        return self._stage_bake()

    def _stage_bake(self) -> Bundle:
        assert self.corr is not None
        if self.potential is None:
            self.potential = self._potential_mask()
        # the bake gate tolerates ~2 px of uv error at the ROI border (M itself decides there); refinement
        # keeps the strict footprint
        radius = math.ceil(2.0 * POTENTIAL_MASK_SIZE / self.span)
        gate = torch.nn.functional.max_pool2d(self.potential.float()[None, None], 2 * radius + 1, 1, radius)[0, 0]
        args = (self.model, self.data, self.cfg, (gate > 0.5).cpu().numpy(), self.corr)
        if self.progress is None or not self.progress.enabled:
            return bake_bundle(*args, show_progress=self.show_progress, best_psnr=self.best_psnr)
        with _frames_counted_by(self.progress):
            return bake_bundle(*args, show_progress=False, best_psnr=self.best_psnr)


@contextmanager
def _frames_counted_by(progress: FitProgress) -> Iterator[None]:
    """Routes models/bake.py's per-frame tqdm loop (in this thread only) into the overall bar."""
    original = getattr(bake_module, "tqdm", None)
    if original is None:  # the bake no longer loops through tqdm: the heartbeat still moves the bar
        yield
        return
    owner = threading.get_ident()

    def counted(iterable: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != owner:
            return original(iterable, *args, **kwargs)
        return progress.count_frames(iterable)

    bake_module.tqdm = counted
    try:
        yield
    finally:
        bake_module.tqdm = original


def fit(frames: np.ndarray, roi: Roi, *, config: FitConfig | None = None, fps: float = 30.0,
        device: str = "auto", out: Path | str | None = None, resume: bool = False, show_progress: bool = True,
        source: dict[str, Any] | None = None, callback: Callable[[str, int], None] | None = None,
        log: Callable[[str], None] | None = None, source_frames: np.ndarray | None = None,
        source_roi: Roi | None = None, verbose: bool = False,
        progress_sink: Callable[[dict[str, Any]], None] | None = None,
        preview: Callable[[np.ndarray, int], None] | None = None,
        preview_seconds: float = 3.0) -> tuple[Bundle, dict[str, Any]]:
    """Fit (T, H, W, 3) uint8 frames with an ROI at the same resolution; returns the bundle and its metrics.

    With `source_frames` (T, Hs, Ws, 3) and `source_roi` (the same ROI in their pixels) the fit still runs on
    `frames`, and the bundle is baked at the source's size over the source frames.

    With `out`, the bundle is written there and Ctrl-C leaves a checkpoint `<out>.ckpt` for `resume=True`.
    `log` receives one-line status messages (default: printed above the progress bar, silent without it).
    One bar shows the whole fit with an ETA and a short loss readout (`verbose`: every loss term).
    `callback(stage, iteration)` runs after every training step (progress hooks; raising KeyboardInterrupt
    there behaves like Ctrl-C). `progress_sink(dict)` gets the bar's state (stage, stage_number, stage_count,
    fraction, eta_seconds, elapsed_seconds, readout) at most every SINK_S and at least every HEARTBEAT_S, with
    or without a shown bar; `preview(rgb, frame)` gets `Fitter.reconstruction` of the reference frame every
    `preview_seconds` while training.
    """
    return run_fit(FitData(frames, roi, float(fps), dict(source or {}), source_frames, source_roi), config,
                   device=device, out=out, resume=resume, show_progress=show_progress, callback=callback, log=log,
                   verbose=verbose, progress_sink=progress_sink, preview=preview, preview_seconds=preview_seconds)


def checked(data: FitData) -> FitData:
    """The FitData with its arrays contiguous, once its frames, ROI and source frames fit together (raises
    FitError, RoiError)."""
    frames = np.ascontiguousarray(data.frames_np)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise FitError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    t, h, w = frames.shape[:3]
    roi, source_frames, source_roi = data.roi, data.source_frames, data.source_roi
    roi.validate(w, h, t)
    if (source_frames is None) != (source_roi is None):
        raise FitError("source_frames and source_roi go together")
    if source_frames is not None and source_roi is not None:
        source_frames = np.ascontiguousarray(source_frames)
        if source_frames.ndim != 4 or source_frames.shape[0] != t or source_frames.shape[3] != 3 or \
                source_frames.dtype != np.uint8:
            raise FitError(f"source frames must be ({t}, H, W, 3) uint8, got {source_frames.shape} "
                           f"{source_frames.dtype}")
        if source_roi.ref_frame != roi.ref_frame:
            raise FitError("source_roi and roi must share the reference frame")
        source_roi.validate(source_frames.shape[2], source_frames.shape[1], t)
    return FitData(frames, roi, float(data.fps), dict(data.source), source_frames, source_roi)


def run_fit(data: FitData, config: FitConfig | None = None, *, device: str = "auto", out: Path | str | None = None,
            resume: bool = False, show_progress: bool = True, callback: Callable[[str, int], None] | None = None,
            log: Callable[[str], None] | None = None, verbose: bool = False,
            progress_sink: Callable[[dict[str, Any]], None] | None = None,
            preview: Callable[[np.ndarray, int], None] | None = None,
            preview_seconds: float = 3.0) -> tuple[Bundle, dict[str, Any]]:
    """`fit` on a FitData (the clip at the working size and, when it is not the source's size, at the source's):
    checked (`checked`), fitted and baked; the keywords are `fit`'s."""
    data = checked(data)
    cfg = config or FitConfig()
    fitter = Fitter(data, cfg, resolve_device(device), show_progress=show_progress, callback=callback, log=log,
                    verbose=verbose, progress_sink=progress_sink, preview=preview, preview_seconds=preview_seconds)
    return fitter.run(Path(out) if out is not None else None, resume=resume)
