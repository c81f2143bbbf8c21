"""Hash-grid field training step: ms/step and M samples/s per encoding backend, 2D and 3D.

One step = draw a batch of random points and their targets, hash encoding -> MLP -> MSE, backward,
Adam (fused on CUDA). Backends: ``torch`` (eager built-in), ``torch-compile`` (the same module under
torch.compile), ``triton`` (Triton hash kernels + fused Triton MLP), ``triton-enc`` (Triton hash kernels,
torch MLP), ``tcnn`` (tinycudann encoding + torch MLP, when installed).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vatlas.models.encoding import (
    HashGridConfig,
    HashGridEncoding,
    make_hash_encoding,
    make_mlp,
    tcnn_available,
    triton_available,
)

ALL_BACKENDS = ("torch", "torch-compile", "triton", "triton-enc", "tcnn")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: cuda when available)")
    parser.add_argument("--batch", type=int, default=1 << 18, help="points per step (default 2^18)")
    parser.add_argument("--dims", default="2,3", help="comma list of input dims (2, 3)")
    parser.add_argument("--backends", default="auto",
                        help=f"comma list from {', '.join(ALL_BACKENDS)}; auto = every one that can run here")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repetition")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--features", type=int, default=2)
    parser.add_argument("--log2-hashmap-size", type=int, default=19)
    parser.add_argument("--base-resolution", type=int, default=16)
    parser.add_argument("--per-level-scale", type=float, default=1.5)
    parser.add_argument("--mlp-width", type=int, default=64)
    parser.add_argument("--mlp-hidden", type=int, default=2)
    parser.add_argument("--mlp-precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                        help="torch MLP math on CUDA: fp32, tf32 matmuls, or bf16 autocast (encoding stays fp32; "
                             "the fused Triton MLP always uses tf32 dots and does not run under autocast)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="capture the whole step in a CUDA graph (removes per-step Python/launch cost; "
                             "not for torch-compile)")
    parser.add_argument("--seed", type=int, default=0)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {name!r}")
    return device


def available_backends(device: torch.device) -> list[str]:
    """Backends that can run on ``device``."""
    if device.type != "cuda":
        return ["torch"]
    names = ["torch", "torch-compile"]
    if triton_available():
        names += ["triton", "triton-enc"]
    if tcnn_available():
        names.append("tcnn")
    return names


def _target(x: torch.Tensor, out_dim: int) -> torch.Tensor:
    """A smooth synthetic field to fit (cheap to draw every step)."""
    phase = torch.arange(1, out_dim + 1, device=x.device, dtype=x.dtype)
    return torch.sin(x.sum(dim=1, keepdim=True) * (3.0 * phase) + x[:, :1] * phase)


class Field(nn.Module):
    """Hash encoding followed by a bias-free ReLU MLP (the benchmark's model)."""

    def __init__(self, cfg: HashGridConfig, out_dim: int, width: int, hidden: int, seed: int,
                 fused_mlp: bool = False) -> None:
        super().__init__()
        self.encoding = make_hash_encoding(cfg, seed=seed)
        self.mlp = make_mlp(cfg.n_output_dims, out_dim, width, hidden, "relu", bias=False, fused=fused_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encoding(x))


def _build(backend: str, dims: int, args: argparse.Namespace, device: torch.device) -> Field:
    enc_backend = {"torch": "torch", "torch-compile": "torch", "triton": "triton", "triton-enc": "triton",
                   "tcnn": "tcnn"}[backend]
    cfg = HashGridConfig(n_input_dims=dims, n_levels=args.levels, n_features_per_level=args.features,
                         log2_hashmap_size=args.log2_hashmap_size, base_resolution=args.base_resolution,
                         per_level_scale=args.per_level_scale, backend=enc_backend)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        field = Field(cfg, out_dim=dims + 1, width=args.mlp_width, hidden=args.mlp_hidden, seed=args.seed,
                      fused_mlp=backend == "triton")
    return field.to(device)


def _make_step(field: Field, backend: str, args: argparse.Namespace, device: torch.device, dims: int
               ) -> tuple[Callable[[], torch.Tensor], torch.optim.Optimizer]:
    fused = device.type == "cuda"
    graph = fused and args.cuda_graph and backend != "torch-compile"
    opt = torch.optim.Adam(field.parameters(), lr=1e-2, fused=fused, foreach=None if fused else False,
                           capturable=graph)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and args.mlp_precision == "bf16"
                else contextlib.nullcontext())

    def loss_fn(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        features = field.encoding(x)
        with autocast:
            pred = field.mlp(features)
        return (pred.float() - target).square().mean()

    compiled = torch.compile(loss_fn) if backend == "torch-compile" else loss_fn
    generator = torch.Generator(device=device).manual_seed(args.seed)

    def step() -> torch.Tensor:
        # a graph replays the default generator's Philox stream; eager steps use their own generator
        x = torch.rand(args.batch, dims, device=device, generator=None if graph else generator)
        loss = compiled(x, _target(x, dims + 1))
        opt.zero_grad(set_to_none=not graph)
        loss.backward()
        opt.step()
        return loss.detach()

    if not graph:
        return step, opt
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside the graph: compiles kernels, allocates grads and Adam state
            step()
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        static_loss = step()

    def replay() -> torch.Tensor:
        cuda_graph.replay()
        return static_loss

    return replay, opt


def _time_steps(step: Callable[[], torch.Tensor], n: int, device: torch.device) -> float:
    """Milliseconds per step over n back-to-back steps."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) * 1e3 / n


def bench_one(backend: str, dims: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        # reset before building so a CUDA graph's capture-time allocations count too
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    field = _build(backend, dims, args, device)
    step, _ = _make_step(field, backend, args, device, dims)
    t0 = time.perf_counter()
    first_loss = float(step())
    warm_s = time.perf_counter() - t0
    for _ in range(max(args.warmup - 1, 0)):
        step()
    times = [_time_steps(step, args.steps, device) for _ in range(args.reps)]
    last_loss = float(step())
    ms = statistics.median(times)
    graphed = device.type == "cuda" and args.cuda_graph and backend != "torch-compile"
    row: dict[str, Any] = {
        "backend": backend + ("+graph" if graphed else ""),
        "dims": dims,
        "batch": args.batch,
        "ms_per_step": ms,
        "ms_min": min(times),
        "ms_max": max(times),
        "msamples_per_s": args.batch / ms / 1e3,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "params_m": sum(p.numel() for p in field.parameters()) / 1e6,
        "first_step_s": warm_s,
        "loss_first": first_loss,
        "loss_last": last_loss,
    }
    if isinstance(field.encoding, HashGridEncoding):
        row["dense_levels"] = sum(field.encoding.layout.dense)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = _resolve_device(args.device)
    if args.batch < 1 or args.steps < 1 or args.reps < 1:
        raise ValueError("--batch, --steps and --reps must be >= 1")
    dims_list = [int(d) for d in str(args.dims).split(",") if d.strip()]
    if any(d not in (2, 3) for d in dims_list):
        raise ValueError(f"--dims must be a comma list of 2 and 3, got {args.dims!r}")
    can_run = available_backends(device)
    if args.backends == "auto":
        backends = can_run
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        bad = [b for b in backends if b not in can_run]
        if bad:
            raise ValueError(f"backends {bad} cannot run on {device.type} here; available: {can_run}")
    if device.type == "cuda" and args.mlp_precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = [bench_one(b, d, args, device) for d in dims_list for b in backends]
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "config": {k: getattr(args, k) for k in ("batch", "levels", "features", "log2_hashmap_size",
                                                 "base_resolution", "per_level_scale", "mlp_width",
                                                 "mlp_hidden", "mlp_precision", "cuda_graph", "steps", "reps",
                                                 "warmup")},
    }
    with contextlib.suppress(ImportError):
        import triton

        meta["triton"] = triton.__version__
    return {"rows": rows, "meta": meta}
