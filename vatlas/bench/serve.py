"""Serve benchmark: edit->pixels latency, playback fps per client, server memory, with real clients on loopback.

Starts `vatlas serve` as a child process over a synthetic bundle (default 1920x1080, 16 frames, atlas 1024)
and drives it with real gRPC (grpc.aio) and WebSocket clients:

* edit->pixels: a participant sends a stroke on its session stream; when the OpAccepted arrives it asks for the
  frame the stroke is on and stops the clock at the first RenderedFrame whose `seq` includes the stroke (JPEG
  q85, full size). p50/p95 over `--edits` strokes, over gRPC and over WebSocket.
* playback: K clients each stream `Playback` at `--fps` for `--phase-seconds`, all in one session and each in
  its own session; reports frames per second per client (mean and slowest). Clients run in several worker
  processes so the Python client side is not the bottleneck.
* memory: the server's RSS (from /proc) and GPU memory (nvidia-smi, when present) sampled over the whole run;
  a soak phase (4 playback clients plus an editor updating, toggling, undoing and redoing a fixed set of
  strokes and rendering after each op) fills `--duration` seconds; the slope over the soak says whether
  memory stays flat.

Two other modes replace the run above:

* ``--soak SECONDS --clients N``: N clients (half gRPC, half WebSocket, four to a session) edit and render for
  SECONDS, with playback bursts and rejoins; the server's RSS and GPU memory over time, ops and frames per
  second, and the slopes after warm-up. The GPU target: ``--device cuda --soak 600 --clients 16 --data``.
* ``--chaos KILLS``: `run_chaos`, SIGKILL at random moments with two clients streaming ops, every
  acknowledged op checked after every restart; what survived, restart and replay times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

READY_PREFIX = "VATLAS_READY "


class _WsLink:
    """One bench WebSocket connection: requests numbered in order, answers unpacked from msgpack."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.rid = 0

    async def send(self, **call: Any) -> int:
        from vatlas_wire.v1 import mirror, sessions_pb2

        self.rid += 1
        await self.ws.send(mirror.pack(sessions_pb2.WsRequest(request_id=self.rid, **call)))
        return self.rid

    async def recv(self) -> Any:
        from vatlas_wire.v1 import mirror, sessions_pb2

        return mirror.unpack(await self.ws.recv(), sessions_pb2.WsResponse)

    def calls(self) -> tuple[Callable[..., Awaitable[int]], Callable[[], Awaitable[Any]]]:
        return self.send, self.recv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="1920x1080", help="frame size WxH (default 1920x1080)")
    parser.add_argument("--frames", type=int, default=16, help="frames in the synthetic bundle (default 16)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="serve this fitted bundle instead of a synthetic one (its size and frames are its own)")
    parser.add_argument("--atlas", type=int, default=1024, help="atlas size (default 1024)")
    parser.add_argument("--device", default="auto", help="server device: auto, cpu, cuda")
    parser.add_argument("--duration", type=float, default=None,
                        help="whole run in seconds, soak included (default 600 on GPU, 30 on CPU)")
    parser.add_argument("--clients", default="1,4,16", help="playback client counts (default 1,4,16)")
    parser.add_argument("--fps", type=float, default=60.0, help="playback fps each client asks for (default 60)")
    parser.add_argument("--phase-seconds", type=float, default=None,
                        help="seconds per playback measurement (default 10 on GPU, 2 on CPU)")
    parser.add_argument("--edits", type=int, default=None, help="strokes per transport for latency (default 200)")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality (default 85)")
    parser.add_argument("--data", action="store_true", help="persist sessions (fsync per op) during the run")
    parser.add_argument("--workers", type=int, default=None,
                        help="client processes for playback (default: half the CPUs, at most 8; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny CPU run for tests (128x72, short phases)")
    parser.add_argument("--chaos", type=int, default=None, metavar="KILLS",
                        help="instead: SIGKILL the server KILLS times while two clients stream ops, and check "
                             "that every acknowledged op survives (restart and replay times too)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of --chaos (kill moments, damage)")
    parser.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                        help="instead: --clients N clients (the largest count given) edit and render for SECONDS "
                             "(half over gRPC, half over WebSocket, four to a session, rejoining now and then); "
                             "the server's RSS and GPU memory over time and their slope")


# ---------------------------------------------------------------- server process and memory


class ServerUnderTest:
    """`vatlas serve` in a child process, on free loopback ports."""

    def __init__(self, models: Path, device: str, data: Path | None) -> None:
        cmd = [sys.executable, "-m", "vatlas.cli", "serve", "--models", str(models), "--grpc", "127.0.0.1:0",
               "--http", "127.0.0.1:0", "--device", device, "--log-level", "WARNING",
               "--no-token"]  # loopback only, and the clients here bring no token
        if data is not None:
            cmd += ["--data", str(data)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 300
        info = None
        for line in self.proc.stdout:
            if line.startswith(READY_PREFIX):
                info = json.loads(line[len(READY_PREFIX):])
                break
            if time.monotonic() > deadline:
                break
        if info is None:
            self.stop()
            raise RuntimeError("vatlas serve did not start:\n" + "".join(self.stderr[-20:]))
        self.grpc = info["grpc"]
        self.ws = info["ws"]

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class MemorySampler(threading.Thread):
    """RSS every second and GPU memory every `gpu_every` seconds of one process."""

    def __init__(self, pid: int, gpu_every: int = 5) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.gpu_every = gpu_every
        self.rss: list[tuple[float, float]] = []  # (t, MiB)
        self.gpu: list[tuple[float, float]] = []
        self.marks: dict[str, float] = {}
        self._halt = threading.Event()
        self._nvidia = shutil.which("nvidia-smi")
        self.started = time.monotonic()

    def run(self) -> None:
        start = self.started
        n = 0
        while not self._halt.wait(1.0):
            t = time.monotonic() - start
            rss = _rss_mib(self.pid)
            if rss is not None:
                self.rss.append((t, rss))
            if self._nvidia and n % self.gpu_every == 0:
                gpu = _gpu_mib(self._nvidia, self.pid)
                if gpu is not None:
                    self.gpu.append((t, gpu))
            n += 1

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic() - self.started

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _gpu_mib(nvidia_smi: str, pid: int) -> float | None:
    try:
        out = subprocess.run([nvidia_smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            return float(parts[1])
    # inside a container the process list may be hidden: the server is the only GPU user here, so take the
    # device's total
    try:
        total = subprocess.run([nvidia_smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return float(total.splitlines()[0]) if total else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def _slope_per_min(samples: list[tuple[float, float]]) -> float | None:
    if len(samples) < 3:
        return None
    xs = [t for t, _ in samples]
    ys = [v for _, v in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


# ---------------------------------------------------------------- clients (run in worker processes too)


def _stroke(op_id: str, frame: int, rng: random.Random, width: int, height: int,
            box: Sequence[int] | None = None) -> dict:
    """A random stroke across the middle of the frame, so that it crosses the (central) ROI of the synthetic
    scenes on every frame: one entirely outside the editable region would be refused. With `box` (the frame's
    visible region [x, y, w, h], a fitted bundle) the same stroke across the middle of that box."""
    if box is not None and box[2] > 0 and box[3] > 0:
        bx, by, width, height = box
        x, y = bx + rng.uniform(0.15, 0.25) * width, by + rng.uniform(0.35, 0.55) * height
        return {"id": op_id, "type": "stroke", "space": "frame", "frame": frame,
                "points": [[x, y], [x + 0.3 * width, y + 0.03 * height], [x + 0.6 * width, y]],
                "width": max(2.0, width / 200), "color": [rng.random(), rng.random(), rng.random(), 1.0]}
    x, y = rng.uniform(0.15, 0.25) * width, rng.uniform(0.35, 0.55) * height
    return {"id": op_id, "type": "stroke", "space": "frame", "frame": frame,
            "points": [[x, y], [x + 0.3 * width, y + 0.03 * height], [x + 0.6 * width, y]],
            "width": max(2.0, width / 200), "color": [rng.random(), rng.random(), rng.random(), 1.0]}


async def _queued(outbox: asyncio.Queue) -> Any:
    """A request stream fed from a queue; None ends it."""
    while True:
        item = await outbox.get()
        if item is None:
            return
        yield item


async def _latency_grpc(target: str, info: Any, edits: int, frames: int, size: tuple[int, int],
                        quality: int, boxes: Sequence[Sequence[int]] | None = None) -> list[float]:
    import grpc
    from vatlas_wire.v1 import edits_pb2, mirror, render_pb2, render_pb2_grpc, sessions_pb2, sessions_pb2_grpc

    rng = random.Random(1)
    out: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        sessions = sessions_pb2_grpc.SessionsStub(channel)
        render = render_pb2_grpc.RenderStub(channel)
        outbox: asyncio.Queue = asyncio.Queue()

        call = sessions.Connect(_queued(outbox))
        outbox.put_nowait(sessions_pb2.ClientMessage(join=sessions_pb2.Join(
            session_id=info.session_id, join_token=info.join_token, name="bench-grpc")))
        while (await call.read()).WhichOneof("kind") != "snapshot":
            pass
        for n in range(edits):
            frame = n % frames
            op = mirror.from_mirror(_stroke(f"g{n}", frame, rng, *size, box=boxes[frame] if boxes else None),
                                    edits_pb2.EditOp)
            start = time.perf_counter()
            outbox.put_nowait(sessions_pb2.ClientMessage(op=op))
            while True:
                event = await call.read()
                if event.WhichOneof("kind") == "accepted":
                    seq = event.accepted.seq
                    break
                if event.WhichOneof("kind") == "rejected":
                    raise RuntimeError(f"stroke rejected: {event.rejected.error.message}")
            while True:
                shown = await render.RenderFrame(render_pb2.RenderRequest(
                    session_id=info.session_id, join_token=info.join_token, frame=frame, format="jpeg",
                    quality=quality, request_id=n))
                if shown.seq >= seq:
                    break
            out.append((time.perf_counter() - start) * 1000.0)
        outbox.put_nowait(None)
        call.cancel()
    return out


async def _soak_editor(target: str, info: Any, seconds: float, frames: int, size: tuple[int, int],
                       quality: int) -> None:
    """One participant editing a fixed set of strokes (updates, visibility toggles, undo/redo) at ~20 ops/s
    and rendering after each, so the document stays the same size and memory should stay flat."""
    import grpc
    from vatlas_wire.v1 import edits_pb2, mirror, render_pb2, render_pb2_grpc, sessions_pb2, sessions_pb2_grpc

    rng = random.Random(3)
    async with grpc.aio.insecure_channel(target) as channel:
        render = render_pb2_grpc.RenderStub(channel)
        outbox: asyncio.Queue = asyncio.Queue()

        async def drain() -> None:
            async for _ in call:
                pass

        call = sessions_pb2_grpc.SessionsStub(channel).Connect(_queued(outbox))
        reader = asyncio.create_task(drain())
        outbox.put_nowait(sessions_pb2.ClientMessage(join=sessions_pb2.Join(
            session_id=info.session_id, join_token=info.join_token, name="bench-soak", participant_id="soak")))
        for k in range(8):
            op = _stroke(f"soak{k}", k % frames, rng, *size)
            outbox.put_nowait(sessions_pb2.ClientMessage(op=mirror.from_mirror(op, edits_pb2.EditOp)))
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
            target_id = f"soak{rng.randrange(8)}"
            roll = rng.randrange(4)
            if roll == 0:
                message = sessions_pb2.ClientMessage(op=edits_pb2.EditOp(
                    id=f"su{n}", type="update", target=target_id, set=edits_pb2.EditOp(opacity=rng.uniform(0.2, 1))))
            elif roll == 1:
                message = sessions_pb2.ClientMessage(op=edits_pb2.EditOp(
                    id=f"sv{n}", type="set_visible", target=target_id, visible=bool(n % 2)))
            elif roll == 2:
                message = sessions_pb2.ClientMessage(undo=sessions_pb2.Undo())
            else:
                message = sessions_pb2.ClientMessage(redo=sessions_pb2.Redo())
            outbox.put_nowait(message)
            await render.RenderFrame(render_pb2.RenderRequest(
                session_id=info.session_id, join_token=info.join_token, frame=n % frames, quality=quality))
            await asyncio.sleep(0.05)
        outbox.put_nowait(None)
        call.cancel()
        reader.cancel()


async def _latency_ws(url: str, info: Any, edits: int, frames: int, size: tuple[int, int],
                      quality: int, boxes: Sequence[Sequence[int]] | None = None) -> list[float]:
    from vatlas_wire.v1 import edits_pb2, mirror, render_pb2, sessions_pb2
    from websockets.asyncio.client import connect

    rng = random.Random(2)
    out: list[float] = []
    async with connect(url, max_size=None, compression=None) as ws:
        send, recv = _WsLink(ws).calls()

        await send(hello=sessions_pb2.Hello(protocol_version=1))
        await recv()
        await send(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
            session_id=info.session_id, join_token=info.join_token, name="bench-ws")))
        for n in range(edits):
            frame = n % frames
            op = mirror.from_mirror(_stroke(f"w{n}", frame, rng, *size, box=boxes[frame] if boxes else None),
                                    edits_pb2.EditOp)
            start = time.perf_counter()
            await send(session=sessions_pb2.ClientMessage(op=op))
            seq = None
            while seq is None:
                resp = await recv()
                if resp.WhichOneof("result") == "event":
                    kind = resp.event.WhichOneof("kind")
                    if kind == "accepted" and resp.event.accepted.op_id == f"w{n}":
                        seq = resp.event.accepted.seq
                    elif kind == "rejected":
                        raise RuntimeError(f"stroke rejected: {resp.event.rejected.error.message}")
            while True:
                want = await send(render=render_pb2.RenderRequest(session_id=info.session_id, frame=frame,
                                                                  format="jpeg", quality=quality))
                resp = await recv()
                while resp.request_id != want:
                    resp = await recv()
                if resp.WhichOneof("result") == "frame" and resp.frame.seq >= seq:
                    break
            out.append((time.perf_counter() - start) * 1000.0)
    return out


async def _playback_client(transport: str, grpc_target: str, ws_url: str, session_id: str, token: str,
                           fps: float, seconds: float, quality: int) -> dict[str, float]:
    """Stream playback for `seconds` after the first frame; returns frames/s and bytes/s."""
    from vatlas_wire.v1 import render_pb2

    request = render_pb2.PlaybackRequest(session_id=session_id, join_token=token, fps=fps, loop=True,
                                         format="jpeg", quality=quality)
    count = 0
    size = 0
    t0 = None
    if transport == "grpc":
        import grpc
        from vatlas_wire.v1 import render_pb2_grpc

        async with grpc.aio.insecure_channel(grpc_target) as channel:
            call = render_pb2_grpc.RenderStub(channel).Playback(request)
            async for frame in call:
                now = time.perf_counter()
                if t0 is None:
                    t0 = now
                    continue
                count += 1
                size += len(frame.data)
                if now - t0 >= seconds:
                    break
            call.cancel()
    else:
        from vatlas_wire.v1 import mirror, sessions_pb2
        from websockets.asyncio.client import connect

        async with connect(ws_url, max_size=None, compression=None) as ws:
            await ws.send(mirror.pack(sessions_pb2.WsRequest(request_id=1, hello=sessions_pb2.Hello(
                protocol_version=1))))
            await ws.recv()
            await ws.send(mirror.pack(sessions_pb2.WsRequest(request_id=2, playback=request)))
            while True:
                resp = mirror.unpack(await ws.recv(), sessions_pb2.WsResponse)
                now = time.perf_counter()
                if resp.WhichOneof("result") != "frame":
                    raise RuntimeError(f"playback failed: {resp}")
                if t0 is None:
                    t0 = now
                    continue
                count += 1
                size += len(resp.frame.data)
                if now - t0 >= seconds:
                    break
    elapsed = max(time.perf_counter() - (t0 or time.perf_counter()), 1e-9)
    return {"fps": count / elapsed, "mbps": size / elapsed / 1e6}


def _worker(args: tuple) -> list[dict[str, float]]:
    """One process's share of playback clients (run with asyncio)."""
    transport, grpc_target, ws_url, sessions, fps, seconds, quality = args

    async def main() -> list[dict[str, float]]:
        return list(await asyncio.gather(*(_playback_client(transport, grpc_target, ws_url, sid, token, fps,
                                                            seconds, quality) for sid, token in sessions)))

    return asyncio.run(main())


def _run_playback(pool: Any, transport: str, server: ServerUnderTest, sessions: list[tuple[str, str]],
                  fps: float, seconds: float, quality: int, workers: int) -> list[dict[str, float]]:
    shares = [sessions[i::workers] for i in range(workers)]
    jobs = [(transport, server.grpc, server.ws, share, fps, seconds, quality) for share in shares if share]
    if pool is None:
        return [r for job in jobs for r in _worker(job)]
    return [r for part in pool.map(_worker, jobs) for r in part]


# ---------------------------------------------------------------- the benchmark


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_chaos_bench(args: argparse.Namespace, device: str, width: int, height: int) -> dict[str, Any]:
    """`--chaos KILLS`: the chaos loop over the bench bundle; a table of what survived and how fast."""
    from vatlas.bench.render import synthetic_bundle
    from vatlas.models.bundle import save_bundle

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vatlas-bench-chaos-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        save_bundle(synthetic_bundle(width, height, args.frames, args.atlas, seed=0), models / "bench.vatlas")
        result = run_chaos(models, "bench", Path(tmp) / "data", args.chaos, seed=args.seed, device=device,
                           size=(width, height), frames=args.frames,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    wall = time.monotonic() - started
    restart = [t * 1000.0 for t in result["restart_s"]]
    resume = [t * 1000.0 for t in result["resume_s"]]
    rows = [
        {"measure": "SIGKILLs", "value": result["kills"], "unit": "", "target": ">= 100"},
        {"measure": "acknowledged ops", "value": result["acked"], "unit": "ops", "target": ""},
        {"measure": "acknowledged ops lost", "value": len(result["lost"]), "unit": "ops", "target": "0"},
        {"measure": "answers out of order", "value": len(result["disorder"]), "unit": "", "target": "0"},
        {"measure": "ops rejected", "value": len(result["rejected"]), "unit": "ops", "target": "0"},
        {"measure": "torn tails repaired", "value": result["torn"], "unit": "", "target": ""},
        {"measure": "damaged snapshots recovered", "value": result["flipped"], "unit": "", "target": ""},
        {"measure": "snapshots written", "value": result["snapshots"], "unit": "", "target": ""},
        {"measure": "restart to ready p50", "value": _percentile(restart, 0.5), "unit": "ms", "target": ""},
        {"measure": "restart to ready p95", "value": _percentile(restart, 0.95), "unit": "ms", "target": ""},
        {"measure": "resume (load + replay) p50", "value": _percentile(resume, 0.5), "unit": "ms", "target": ""},
        {"measure": "resume (load + replay) p95", "value": _percentile(resume, 0.95), "unit": "ms", "target": ""},
        {"measure": "wall time", "value": wall, "unit": "s", "target": ""},
    ]
    meta = {"device": device, "size": [width, height], "frames": args.frames, "seed": args.seed,
            "final_seq": result["max_seq"], "lost": result["lost"][:50], "disorder": result["disorder"][:50],
            "rejected": result["rejected"][:50], "full_document_resumes": result["full_document_resumes"],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return {"rows": rows, "meta": meta}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vatlas.bench.render import synthetic_bundle
    from vatlas.commands.synth import parse_size
    from vatlas.models.bundle import save_bundle
    from vatlas.server.compositor import resolve_device

    device = str(resolve_device(args.device))
    on_gpu = device.startswith("cuda")
    if args.quick:
        args.size, args.frames, args.atlas = "128x72", 8, 128
        args.clients = args.clients if args.clients != "1,4,16" else "1,2"
    width, height = parse_size(args.size)
    if args.chaos is not None:
        return run_chaos_bench(args, device, width, height)
    if args.soak is not None:
        return run_soak(args, device, width, height)
    duration = args.duration if args.duration is not None else (600.0 if on_gpu else 30.0)
    if args.quick and args.duration is None:
        duration = 6.0
    phase = args.phase_seconds if args.phase_seconds is not None else (10.0 if on_gpu else (1.0 if args.quick
                                                                                              else 2.0))
    edits = args.edits if args.edits is not None else (10 if args.quick else 200)
    client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vatlas-bench-serve-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        if args.bundle is not None:
            from vatlas.server.session.bundles import BundleRegistry

            if not args.bundle.is_file():
                raise SystemExit(f"vatlas bench serve: error: {args.bundle}: no such bundle")
            (models / "bench.vatlas").symlink_to(args.bundle.resolve())
            served = BundleRegistry(models).info("bench")
            width, height, args.frames = int(served.width), int(served.height), int(served.frames)
        else:
            bundle = synthetic_bundle(width, height, args.frames, args.atlas, seed=0)
            save_bundle(bundle, models / "bench.vatlas")
            del bundle
        server = ServerUnderTest(models, device, Path(tmp) / "data" if args.data else None)
        sampler = MemorySampler(server.proc.pid)
        sampler.start()
        workers = args.workers or (1 if args.quick else max(1, min(max(client_counts), (os.cpu_count() or 2) // 2,
                                                                    8)))
        pool = None if workers == 1 else multiprocessing.get_context("spawn").Pool(workers)
        try:
            info = asyncio.run(_create_session(server.grpc, "bench"))
            boxes = asyncio.run(_visible_boxes(server.grpc)) if args.bundle is not None else None
            for transport, fn, target in (("grpc", _latency_grpc, server.grpc), ("websocket", _latency_ws,
                                                                                   server.ws)):
                latency = asyncio.run(fn(target, info, edits, args.frames, (width, height), args.quality, boxes))
                latency = latency[min(5, len(latency) // 4):]  # warm-up strokes out
                rows.append({"measure": "edit->pixels p50", "setting": f"{transport} {width}x{height}",
                             "value": _percentile(latency, 0.5), "unit": "ms", "target": ""})
                rows.append({"measure": "edit->pixels p95", "setting": f"{transport} {width}x{height}",
                             "value": _percentile(latency, 0.95), "unit": "ms", "target": "<= 15"})
            sampler.mark("playback")
            if not args.quick:  # compiled kernels specialise per batch size: compile them before measuring
                _run_playback(pool, "grpc", server, [(info.session_id, info.join_token)] * max(client_counts),
                              args.fps, min(phase, 5.0), args.quality, min(workers, max(client_counts)))
            for count in client_counts:
                layouts = [("one session", [(info.session_id, info.join_token)] * count)]
                if count > 1:
                    separate = [asyncio.run(_create_session(server.grpc, "bench")) for _ in range(count)]
                    layouts.append(("separate sessions", [(s.session_id, s.join_token) for s in separate]))
                for layout, sessions in layouts:
                    results = _run_playback(pool, "grpc", server, sessions, args.fps, phase, args.quality,
                                            min(workers, count))
                    fps = [r["fps"] for r in results]
                    rows.append({"measure": "playback fps/client mean", "setting": f"grpc {count} x {layout}",
                                 "value": statistics.fmean(fps), "unit": "fps", "target": ""})
                    rows.append({"measure": "playback fps/client min", "setting": f"grpc {count} x {layout}",
                                 "value": min(fps), "unit": "fps",
                                 "target": ">= 60" if count == 16 else ""})
            ws_count = max(client_counts)
            results = _run_playback(pool, "websocket", server, [(info.session_id, info.join_token)] * ws_count,
                                    args.fps, phase, args.quality, min(workers, ws_count))
            rows.append({"measure": "playback fps/client min", "setting": f"websocket {ws_count} x one session",
                         "value": min(r["fps"] for r in results), "unit": "fps", "target": ""})
            # soak: playback clients and a steady editor until the duration is spent
            sampler.mark("soak")
            remaining = duration - (time.monotonic() - started)
            if remaining > 1.0:
                soak_clients = min(4, max(client_counts))

                thread = threading.Thread(target=lambda: asyncio.run(_soak_editor(
                    server.grpc, info, remaining, args.frames, (width, height), args.quality)), daemon=True)
                thread.start()
                _run_playback(pool, "grpc", server, [(info.session_id, info.join_token)] * soak_clients, args.fps,
                              remaining, args.quality, min(workers, soak_clients))
                thread.join(timeout=60)
        finally:
            server.stop()
            sampler.stop()
            if pool is not None:
                pool.close()
                pool.join()
    soak_start = sampler.marks.get("soak", 0.0)
    soak = [s for s in sampler.rss if s[0] >= soak_start]
    if sampler.rss:
        rows.append({"measure": "server RSS start/peak", "setting": "MiB",
                     "value": f"{sampler.rss[0][1]:.0f}/{max(v for _, v in sampler.rss):.0f}", "unit": "MiB",
                     "target": ""})
    slope = _slope_per_min(soak)
    if slope is not None:
        rows.append({"measure": "server RSS slope in soak", "setting": f"{soak[-1][0] - soak[0][0]:.0f} s",
                     "value": slope, "unit": "MiB/min", "target": "flat"})
    if sampler.gpu:
        gpu_soak = [s for s in sampler.gpu if s[0] >= soak_start]
        rows.append({"measure": "server GPU memory start/peak", "setting": "MiB",
                     "value": f"{sampler.gpu[0][1]:.0f}/{max(v for _, v in sampler.gpu):.0f}", "unit": "MiB",
                     "target": ""})
        gslope = _slope_per_min(gpu_soak)
        if gslope is not None:
            rows.append({"measure": "server GPU memory slope in soak", "setting": "", "value": gslope,
                         "unit": "MiB/min", "target": "flat"})
    meta = {
        "device": device, "gpu": torch.cuda.get_device_name(0) if on_gpu else None, "size": [width, height],
        "frames": args.frames, "atlas": args.atlas, "fps_requested": args.fps, "phase_seconds": phase,
        "edits": edits, "duration_s": duration, "persisted": bool(args.data), "client_workers": workers,
        "rss_samples": sampler.rss[:: max(1, len(sampler.rss) // 60)], "gpu_samples": sampler.gpu,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return {"rows": rows, "meta": meta}


# ---------------------------------------------------------------- chaos: SIGKILL at random moments
#
# Many short kill/restart cycles of a real `vatlas serve` process while a gRPC and a WebSocket participant
# stream ops into one session. Starting a Python process that imports torch takes seconds, so a launcher
# process imports the server once and forks one server per cycle; each child runs `vatlas.cli.main(["serve",
# ...])` exactly as the command line does and is killed with SIGKILL. After every kill the files are checked,
# a torn tail or a damaged snapshot is injected now and then, and after every restart a participant resumes
# from the last verified seq: every acknowledged op must come back with its sequence number, in order.

FORK_PREFIX = "VATLAS_FORKED "


def fork_launcher() -> None:
    """Import the server once, then fork a `vatlas serve` per JSON argv line on stdin (its pid on stdout).

    Nothing here may start threads or run torch ops before forking (OpenMP and gRPC do not survive a fork).
    """
    import importlib
    import traceback

    for module in ("torch", "vatlas.cli", "vatlas.server.app", "vatlas.server.edits.engine", "vatlas.server.encoders",
                   "vatlas.models.bundle", "vatlas.commands.serve"):
        importlib.import_module(module)
    from vatlas import cli

    while True:
        line = sys.stdin.readline()
        if not line:
            return
        while True:  # reap earlier children so they do not stay zombies
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = int(cli.main(argv) or 0)
            except SystemExit as exc:
                code = int(exc.code or 0) if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - reported on stderr, the exit code says it failed
                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(f"{FORK_PREFIX}{pid}", flush=True)


class ForkedServers:
    """The launcher process and the server it forked last."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from vatlas.bench.serve import fork_launcher; fork_launcher()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        self.pid: int | None = None

    @staticmethod
    def _read(stream: Any, sink: Any) -> None:
        for line in stream:
            sink(line)

    def start(self, argv: list[str], timeout: float = 120.0) -> dict[str, Any]:
        """Fork a server; returns its READY line (addresses)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        info = None
        while info is None:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("the forked server did not get ready:\n" + "".join(self.stderr[-30:])) from None
            if line.startswith(FORK_PREFIX):
                self.pid = int(line[len(FORK_PREFIX):])
            elif line.startswith(READY_PREFIX):
                info = json.loads(line[len(READY_PREFIX):])
        return info

    def kill(self) -> None:
        """SIGKILL the server and wait until it is gone (its files are quiescent then)."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.005)
        self.pid = None

    def close(self) -> None:
        self.kill()
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class ChaosEditor:
    """One participant streaming ops until its server dies; records what it sent and what was acknowledged.

    Ops: new strokes, the oldest of its own acknowledged strokes deleted once more than six are live, every
    fifth op toggles the shared "base" stroke; at most `window` ops wait for their answer at a time.
    """

    def __init__(self, name: str, rng: random.Random, size: tuple[int, int], frames: int) -> None:
        self.name = name
        self.rng = rng
        self.size = size
        self.frames = frames
        self.n = 0
        self.sent: list[str] = []  # op ids in the order sent
        self.acked: list[tuple[str, int]] = []  # (op id, seq) in the order the answers came
        self.rejected: list[tuple[str, str]] = []
        self.alive_strokes: list[str] = []  # own strokes acknowledged, no delete sent for them
        self.strokes: set[str] = set()  # own strokes acknowledged
        self.pending_deletes: dict[str, str] = {}  # delete op id -> its target, until answered or settled
        self.pending_strokes: set[str] = set()  # strokes sent, until answered or settled
        self.first_ack: asyncio.Event | None = None  # made on each cycle's event loop
        self.reader: asyncio.Task | None = None  # reads answers until the connection ends

    def next_op(self, cycle: int) -> dict[str, Any]:
        self.n += 1
        op_id = f"{self.name}{cycle}-{self.n}"
        if self.n % 5 == 0:
            return {"id": op_id, "type": "set_visible", "target": "base", "visible": bool(self.n % 2)}
        if len(self.alive_strokes) > 6:  # few live objects: replay time is what a restart measures
            target = self.alive_strokes.pop(0)
            self.pending_deletes[op_id] = target
            return {"id": op_id, "type": "delete", "target": target}
        self.pending_strokes.add(op_id)
        return _stroke(op_id, self.n % self.frames, self.rng, *self.size)

    def settle(self, logged: dict[str, str], live: set[str] | None) -> None:
        """After a restart: own ops that were in flight at the kill are resolved from what the server replayed
        (`logged`: op id -> type of the ops after the resume point; `live`: the document's ids instead, when the
        server sent the whole document). A logged stroke is one to delete later; a delete that was not
        logged leaves its stroke alive."""
        for op_id, target in list(self.pending_deletes.items()):
            gone = target not in live if live is not None else op_id in logged
            if not gone:
                self.alive_strokes.insert(0, target)
        self.pending_deletes.clear()
        for op_id in self.pending_strokes:
            if (op_id in live) if live is not None else (logged.get(op_id) == "stroke"):
                self.strokes.add(op_id)
                self.alive_strokes.append(op_id)
        self.pending_strokes.clear()

    def answered(self, op_id: str, seq: int | None, op: dict[str, Any] | None, error: str = "") -> None:
        if seq is None:
            self.rejected.append((op_id, error))
            return
        self.acked.append((op_id, seq))
        self.pending_deletes.pop(op_id, None)
        self.pending_strokes.discard(op_id)
        if op is not None and op["type"] == "stroke":
            self.alive_strokes.append(op_id)
            self.strokes.add(op_id)
        if self.first_ack is not None:
            self.first_ack.set()


def _settle(editor: ChaosEditor, pending: dict[str, dict[str, Any]], room: asyncio.Semaphore, event: Any) -> None:
    """An accepted or rejected answer (either door): record it and free a slot for the next op."""
    kind = event.WhichOneof("kind")
    if kind == "accepted":
        editor.answered(event.accepted.op_id, event.accepted.seq, pending.pop(event.accepted.op_id, None))
        room.release()
    elif kind == "rejected":
        pending.pop(event.rejected.op_id, None)
        editor.answered(event.rejected.op_id, None, None, event.rejected.error.code)
        room.release()


async def _stream_ops(editor: ChaosEditor, pending: dict[str, dict[str, Any]], room: asyncio.Semaphore,
                      cycle: int, reader: asyncio.Task, put: Callable[[Any], Awaitable[None]]) -> None:
    """Send ops, at most `room` unanswered, until the reader stops (the server was killed)."""
    from vatlas_wire.v1 import edits_pb2, mirror, sessions_pb2

    while not reader.done():
        await room.acquire()
        op = editor.next_op(cycle)
        pending[op["id"]] = op
        editor.sent.append(op["id"])
        await put(sessions_pb2.ClientMessage(op=mirror.from_mirror(op, edits_pb2.EditOp)))
        await asyncio.sleep(0.002)
    await reader


async def _chaos_grpc_editor(target: str, token: str, info: Any, editor: ChaosEditor, cycle: int,
                             window: int) -> None:
    import grpc
    from vatlas_wire.v1 import sessions_pb2, sessions_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),)
    pending: dict[str, dict[str, Any]] = {}
    room = asyncio.Semaphore(window)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            outbox: asyncio.Queue = asyncio.Queue()
            call = sessions_pb2_grpc.SessionsStub(channel).Connect(_queued(outbox), metadata=metadata)
            outbox.put_nowait(sessions_pb2.ClientMessage(join=sessions_pb2.Join(
                session_id=info.session_id, join_token=info.join_token, name=editor.name)))

            async def read() -> None:
                with contextlib.suppress(Exception):  # the stream ends when the server is killed
                    await read_events()

            async def read_events() -> None:
                async for event in call:
                    _settle(editor, pending, room, event)

            async def put(message: Any) -> None:
                outbox.put_nowait(message)

            reader = editor.reader = asyncio.create_task(read())
            await _stream_ops(editor, pending, room, cycle, reader, put)
    except Exception:  # noqa: BLE001 - the server was killed under us: that is the point
        return


async def _chaos_ws_editor(url: str, token: str, info: Any, editor: ChaosEditor, cycle: int, window: int) -> None:
    from vatlas_wire.v1 import mirror, sessions_pb2
    from websockets.asyncio.client import connect

    pending: dict[str, dict[str, Any]] = {}
    room = asyncio.Semaphore(window)
    try:
        async with connect(url, max_size=None, compression=None) as ws:
            send, _ = _WsLink(ws).calls()

            await send(hello=sessions_pb2.Hello(protocol_version=1, token=token))
            await send(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
                session_id=info.session_id, join_token=info.join_token, name=editor.name)))

            async def read() -> None:
                with contextlib.suppress(Exception):  # the socket closes when the server is killed
                    await read_frames()

            async def read_frames() -> None:
                async for data in ws:
                    resp = mirror.unpack(data, sessions_pb2.WsResponse)
                    if resp.WhichOneof("result") != "event":
                        continue
                    _settle(editor, pending, room, resp.event)

            async def put(message: Any) -> None:
                await send(session=message)

            reader = editor.reader = asyncio.create_task(read())
            await _stream_ops(editor, pending, room, cycle, reader, put)
    except Exception:  # noqa: BLE001 - the server was killed under us
        return


async def _chaos_resume(target: str, token: str, info: Any, last_seq: int) -> tuple[Any, list[Any], float]:
    """Join from `last_seq`; the snapshot, every applied op up to the session's seq, and seconds to the snapshot."""
    import grpc
    from vatlas_wire.v1 import sessions_pb2, sessions_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),)
    start = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as channel:
        outbox: asyncio.Queue = asyncio.Queue()
        call = sessions_pb2_grpc.SessionsStub(channel).Connect(_queued(outbox), metadata=metadata)
        outbox.put_nowait(sessions_pb2.ClientMessage(join=sessions_pb2.Join(
            session_id=info.session_id, join_token=info.join_token, name="verifier", last_seq=last_seq)))
        snapshot, applied, took = None, [], 0.0
        async for event in call:
            kind = event.WhichOneof("kind")
            if kind == "snapshot":
                snapshot, took = event.snapshot, time.perf_counter() - start
            elif kind == "applied":
                applied.append(event.applied)
            if snapshot is not None and (snapshot.session.seq == last_seq or snapshot.HasField("document")
                                         or (applied and applied[-1].seq >= snapshot.session.seq)):
                break
        outbox.put_nowait(None)
        call.cancel()
    if snapshot is None:
        raise RuntimeError("the restarted server sent no snapshot")
    return snapshot, applied, took


def check_files(session_dir: Path, acked: dict[int, str], strokes: set[str]) -> tuple[list[str], int]:
    """What a session's files lack of the acknowledged ops (seq -> op id; `strokes`: the ids that created
    objects): ([] when they hold every one, the snapshot's seq). Ops the snapshot holds are checked by the
    objects they created; the others are merged into those objects."""
    from vatlas.server.session.oplog import read_records, read_snapshot

    problems: list[str] = []
    snap = read_snapshot(session_dir)
    records, _ = read_records(session_dir / "ops.log")
    state = snap.state or {}
    base = int(state.get("seq", 0))
    by_seq = {r["seq"]: r for r in records}
    created = {item["op"]["id"]: item["seq"] for item in state.get("objects", ())}
    retired = set(state.get("retired", ()))
    for seq, op_id in acked.items():
        if seq > base:
            record = by_seq.get(seq)
            if record is None or record["op"].get("id") != op_id:
                problems.append(f"seq {seq} ({op_id}) is not in the log")
        elif op_id in strokes and created.get(op_id, seq) != seq:
            problems.append(f"{op_id} was created at seq {seq}, the snapshot says {created[op_id]}")
        elif op_id in strokes and op_id not in created and op_id not in retired:
            problems.append(f"{op_id} (seq {seq}) is in neither the snapshot nor the log")
    seqs = [r["seq"] for r in records if r["seq"] > base]
    if seqs != list(range(base + 1, base + 1 + len(seqs))):
        problems.append(f"the log after the snapshot at {base} is not contiguous")
    return problems, base


def _inject_torn_tail(log_path: Path, rng: random.Random) -> int:
    """Append part of a record, as a write cut off by a crash leaves it; returns the bytes added."""
    from vatlas.server.session.oplog import encode_record

    frame = encode_record({"seq": 10**9, "participant_id": "torn", "kind": "op", "time": 0.0,
                           "op": {"id": "torn", "type": "set_visible", "target": "base", "visible": True}})
    cut = rng.randrange(1, len(frame))
    with open(log_path, "ab") as f:
        f.write(frame[:cut])
    return cut


def _flip_snapshot_bit(session_dir: Path, rng: random.Random) -> bool:
    path = session_dir / "snapshot"
    if not path.exists() or not (session_dir / "snapshot.prev").exists():
        return False
    data = bytearray(path.read_bytes())
    pos = rng.randrange(8, len(data))
    data[pos] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return True


def run_chaos(models: Path, bundle: str, data: Path, kills: int, *, seed: int = 0, device: str = "cpu",
              token: str = "chaos-token", compact_every: int = 64, max_alive: float = 0.3,
              torn_every: int = 7, flip_every: int = 23, window: int = 16,
              size: tuple[int, int] = (64, 48), frames: int = 8, log: Any = None) -> dict[str, Any]:
    """`kills` SIGKILL/restart cycles against one session (see the comment above); returns the tallies.

    Tallies: kills, acked (ops acknowledged), lost (acknowledged ops missing after a restart or in the
    files), disorder (answers out of send order or seqs not increasing), rejected, torn tails and flipped
    snapshot bits injected, restart and resume times, snapshots seen.
    """
    rng = random.Random(seed)
    argv = ["serve", "--models", str(models), "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--token", token,
            "--data", str(data), "--device", device, "--log-level", "WARNING",
            "--limit", f"compact_every={compact_every}"]
    servers = ForkedServers({"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    tally: dict[str, Any] = {"kills": 0, "acked": 0, "lost": [], "disorder": [], "rejected": [], "torn": 0,
                             "flipped": 0, "full_document_resumes": 0, "restart_s": [], "resume_s": [],
                             "snapshots": set(), "max_seq": 0}
    acked: dict[int, str] = {}  # every acknowledged op over the run: seq -> op id
    try:
        ready = servers.start(argv)
        info = asyncio.run(_create_session(ready["grpc"], bundle, token))
        session_dir = data / "sessions" / info.session_id
        asyncio.run(_seed_base(ready["grpc"], token, info, acked))
        verified = max(acked)
        editors = [ChaosEditor("g", random.Random(seed + 1), size, frames),
                   ChaosEditor("w", random.Random(seed + 2), size, frames)]
        for cycle in range(kills):
            alive = rng.uniform(0.02, max_alive)

            async def storm(ready: dict[str, Any] = ready, cycle: int = cycle, alive: float = alive) -> None:
                for editor in editors:
                    editor.first_ack, editor.reader = asyncio.Event(), None
                tasks = [asyncio.create_task(_chaos_grpc_editor(ready["grpc"], token, info, editors[0], cycle,
                                                                window)),
                         asyncio.create_task(_chaos_ws_editor(ready["ws"], token, info, editors[1], cycle, window))]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(editors[0].first_ack.wait(), 30)  # type: ignore[union-attr]
                await asyncio.sleep(alive)
                servers.kill()  # SIGKILL at a random moment, ops in flight
                await asyncio.wait([e.reader for e in editors if e.reader is not None], timeout=30)
                for task in tasks:  # a writer may wait for room an answer would have made
                    task.cancel()
                await asyncio.wait(tasks, timeout=30)

            marks = [len(e.acked) for e in editors]
            asyncio.run(storm())
            tally["kills"] += 1
            for editor, mark in zip(editors, marks, strict=True):
                new = editor.acked[mark:]
                for op_id, seq in new:
                    if seq in acked and acked[seq] != op_id:
                        tally["disorder"].append(f"seq {seq} acknowledged for {acked[seq]} and {op_id}")
                    acked[seq] = op_id
                order = [editor.sent.index(op_id) for op_id, _ in new]
                seqs = [seq for _, seq in new]
                if order != sorted(order) or seqs != sorted(seqs) or len(set(seqs)) != len(seqs):
                    tally["disorder"].append(f"cycle {cycle}: {editor.name}'s answers out of order")
            tally["rejected"] += [r for e in editors for r in e.rejected]
            for editor in editors:
                editor.rejected.clear()
            strokes = {op_id for e in editors for op_id in e.strokes} | {"base"}
            problems, base = check_files(session_dir, acked, strokes)
            tally["lost"] += [f"cycle {cycle}: {p}" for p in problems]
            tally["snapshots"].add(base)
            if torn_every and cycle % torn_every == torn_every - 1:
                _inject_torn_tail(session_dir / "ops.log", rng)
                tally["torn"] += 1
            if flip_every and cycle % flip_every == flip_every - 1 and _flip_snapshot_bit(session_dir, rng):
                tally["flipped"] += 1
            t0 = time.perf_counter()
            ready = servers.start(argv)
            tally["restart_s"].append(time.perf_counter() - t0)
            snapshot, applied, took = asyncio.run(_chaos_resume(ready["grpc"], token, info, verified))
            tally["resume_s"].append(took)
            seq = snapshot.session.seq
            if snapshot.HasField("document"):  # the resume point was compacted away: check the document
                tally["full_document_resumes"] += 1
                live = {op.id for op in snapshot.document.ops}
                tally["lost"] += [f"cycle {cycle}: {op_id} is not in the document" for e in editors
                                  for op_id in e.alive_strokes if op_id not in live]
            else:
                got = {a.seq: a.op.id for a in applied}
                if sorted(got) != list(range(verified + 1, seq + 1)):
                    tally["lost"].append(f"cycle {cycle}: resuming from {verified} gave seqs {sorted(got)[:5]}... "
                                         f"up to {seq}")
                for s, op_id in acked.items():
                    if s > verified and got.get(s) != op_id:
                        tally["lost"].append(f"cycle {cycle}: acknowledged {op_id} (seq {s}) came back as "
                                             f"{got.get(s)!r}")
            # ops in flight at the kill: what the log kept of them decides which strokes are still there
            live = {op.id for op in snapshot.document.ops} if snapshot.HasField("document") else None
            logged = {a.op.id: a.op.type for a in applied}
            for editor in editors:
                editor.settle(logged, live)
            if acked and seq < max(acked):
                tally["lost"].append(f"cycle {cycle}: the server is at seq {seq}, {max(acked)} was acknowledged")
            verified = seq
            tally["max_seq"] = seq
            if log is not None:
                log(f"cycle {cycle}: seq {seq}, {sum(len(e.acked) for e in editors)} acked so far")
        tally["acked"] = len(acked)
        tally["session_id"] = info.session_id
        final, _, _ = asyncio.run(_chaos_resume(ready["grpc"], token, info, 0))
        tally["final_live"] = [op.id for op in final.document.ops]
        tally["alive_strokes"] = sorted(op_id for e in editors for op_id in e.alive_strokes)
    finally:
        servers.close()
    tally["snapshots"] = len(tally["snapshots"] - {0})
    tally["server_stderr"] = servers.stderr[-50:]
    return tally


async def _visible_boxes(target: str) -> list[list[int]]:
    """Per frame, the box where the served bundle's region shows (BundleInfo.roi of the loaded bundle)."""
    import grpc
    from vatlas_wire.v1 import bundles_pb2, bundles_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        info = await bundles_pb2_grpc.BundlesStub(channel).LoadBundle(bundles_pb2.LoadBundleRequest(name="bench"))
    return [[r.x, r.y, r.width, r.height] for r in info.roi.visible]


async def _create_session(target: str, bundle: str, token: str | None = None) -> Any:
    import grpc
    from vatlas_wire.v1 import sessions_pb2, sessions_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = sessions_pb2_grpc.SessionsStub(channel)
        return await stub.CreateSession(sessions_pb2.CreateSessionRequest(bundle=bundle), metadata=metadata)


async def _seed_base(target: str, token: str, info: Any, acked: dict[int, str]) -> None:
    """The shared "base" stroke every editor toggles."""
    import grpc
    from vatlas_wire.v1 import edits_pb2, mirror, sessions_pb2, sessions_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        outbox: asyncio.Queue = asyncio.Queue()
        call = sessions_pb2_grpc.SessionsStub(channel).Connect(_queued(outbox), metadata=metadata)
        outbox.put_nowait(sessions_pb2.ClientMessage(join=sessions_pb2.Join(
            session_id=info.session_id, join_token=info.join_token)))
        op = _stroke("base", 0, random.Random(0), 64, 48)
        outbox.put_nowait(sessions_pb2.ClientMessage(op=mirror.from_mirror(op, edits_pb2.EditOp)))
        async for event in call:
            if event.WhichOneof("kind") == "accepted":
                acked[event.accepted.seq] = event.accepted.op_id
                break
        outbox.put_nowait(None)
        call.cancel()


# ---------------------------------------------------------------- soak: many clients editing and rendering


SOAK_GROUP = 4  # clients per session
SOAK_OWN_STROKES = 8  # each client deletes its oldest stroke beyond this: the documents stay the same size


async def _soak_client(transport: str, grpc_target: str, ws_url: str, session_id: str, join_token: str,
                       index: int, seconds: float, t0: float, size: tuple[int, int], frames: int,
                       quality: int) -> dict[str, Any]:
    """One client for `seconds` from t0: an op (stroke, update, delete of its oldest, undo, redo), its answer,
    a render of the frame; now and then a second of playback, and a rejoin on a new connection.

    Returns per-second counts of ops answered and frames received, and the errors seen.
    """
    from vatlas_wire.v1 import edits_pb2, mirror, render_pb2, sessions_pb2

    rng = random.Random(1000 + index)
    slots = int(seconds) + 2
    out: dict[str, Any] = {"ops": [0] * slots, "frames": [0] * slots, "rejected": 0, "errors": [], "rejoins": 0}
    mine: list[str] = []
    end = t0 + seconds
    rejoin_every = max(5.0, seconds / 6)
    n = 0

    def count(kind: str, k: int = 1) -> None:
        out[kind][min(slots - 1, max(0, int(time.monotonic() - t0)))] += k

    def next_message() -> tuple[Any, str]:
        nonlocal n
        n += 1
        if n % 10 == 0:
            return sessions_pb2.ClientMessage(undo=sessions_pb2.Undo()), "undo:"
        if n % 10 == 1 and n > 1:
            return sessions_pb2.ClientMessage(redo=sessions_pb2.Redo()), "redo:"
        op_id = f"c{index}-{n}"
        if len(mine) > SOAK_OWN_STROKES:
            op = {"id": op_id, "type": "delete", "target": mine.pop(0)}
        elif mine and n % 3 == 0:
            op = {"id": op_id, "type": "update", "target": mine[-1], "set": {"opacity": rng.uniform(0.3, 1.0)}}
        else:
            op = _stroke(op_id, n % frames, rng, *size)
            mine.append(op_id)
        return sessions_pb2.ClientMessage(op=mirror.from_mirror(op, edits_pb2.EditOp)), op_id

    def matches(event: Any, want: str) -> bool:
        kind = event.WhichOneof("kind")
        if kind == "accepted":
            return event.accepted.op_id == want or (want.endswith(":") and event.accepted.op_id.startswith(want))
        if kind == "rejected":
            return event.rejected.op_id == want or (want.endswith(":") and event.rejected.op_id == "")
        return False

    playback = render_pb2.PlaybackRequest(session_id=session_id, join_token=join_token, fps=30, loop=True,
                                          format="jpeg", quality=quality)
    while time.monotonic() < end:
        stint = min(end, time.monotonic() + rejoin_every)
        try:
            if transport == "grpc":
                import grpc
                from vatlas_wire.v1 import render_pb2_grpc, sessions_pb2_grpc

                async with grpc.aio.insecure_channel(grpc_target) as channel:
                    outbox: asyncio.Queue = asyncio.Queue()
                    call = sessions_pb2_grpc.SessionsStub(channel).Connect(_queued(outbox))
                    render = render_pb2_grpc.RenderStub(channel)
                    outbox.put_nowait(sessions_pb2.ClientMessage(join=sessions_pb2.Join(
                        session_id=session_id, join_token=join_token, name=f"soak-{index}")))
                    while (await call.read()).WhichOneof("kind") != "snapshot":
                        pass
                    while time.monotonic() < stint:
                        message, want = next_message()
                        outbox.put_nowait(message)
                        while True:
                            event = await call.read()
                            if matches(event, want):
                                out["rejected"] += event.WhichOneof("kind") == "rejected"
                                break
                        count("ops")
                        await render.RenderFrame(render_pb2.RenderRequest(
                            session_id=session_id, join_token=join_token, frame=n % frames, quality=quality))
                        count("frames")
                        if n % 25 == 0:
                            stream = render.Playback(playback)
                            until = time.monotonic() + 1.0
                            async for _ in stream:
                                count("frames")
                                if time.monotonic() > until:
                                    break
                            stream.cancel()
                    outbox.put_nowait(None)
                    call.cancel()
            else:
                from websockets.asyncio.client import connect

                async with connect(ws_url, max_size=None, compression=None) as ws:
                    send, recv = _WsLink(ws).calls()

                    await send(hello=sessions_pb2.Hello(protocol_version=1))
                    await recv()
                    await send(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
                        session_id=session_id, join_token=join_token, name=f"soak-{index}")))
                    while time.monotonic() < stint:
                        message, want = next_message()
                        await send(session=message)
                        while True:
                            resp = await recv()
                            if resp.WhichOneof("result") == "event" and matches(resp.event, want):
                                out["rejected"] += resp.event.WhichOneof("kind") == "rejected"
                                break
                        count("ops")
                        want_rid = await send(render=render_pb2.RenderRequest(
                            session_id=session_id, frame=n % frames, quality=quality))
                        while True:
                            resp = await recv()
                            if resp.request_id == want_rid:
                                if resp.WhichOneof("result") != "frame":
                                    out["errors"].append(str(resp.error))
                                break
                        count("frames")
                        if n % 25 == 0:
                            play = await send(playback=playback)
                            until = time.monotonic() + 1.0
                            while time.monotonic() < until:
                                resp = await recv()
                                if resp.request_id == play and resp.WhichOneof("result") == "frame":
                                    count("frames")
                            await send(stop_playback=sessions_pb2.StopPlayback())
        except Exception as exc:  # noqa: BLE001 - reported in the results; the soak goes on
            out["errors"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
            await asyncio.sleep(0.5)
        out["rejoins"] += 1
    out["rejoins"] -= 1
    return out


def _soak_worker(job: tuple) -> list[dict[str, Any]]:
    """One process's share of soak clients."""
    clients, grpc_target, ws_url, seconds, t0, size, frames, quality = job

    async def main() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(
            _soak_client("grpc" if i % 2 == 0 else "websocket", grpc_target, ws_url, sid, token, i, seconds, t0,
                         size, frames, quality) for i, sid, token in clients)))

    return asyncio.run(main())


def run_soak(args: argparse.Namespace, device: str, width: int, height: int) -> dict[str, Any]:
    """`--soak SECONDS`: --clients N clients edit and render; the server's memory over time, and its slope."""
    import torch

    from vatlas.bench.render import synthetic_bundle
    from vatlas.models.bundle import save_bundle

    clients = max(int(c) for c in args.clients.split(",") if c.strip())
    seconds = float(args.soak)
    workers = args.workers or max(1, min(clients, (os.cpu_count() or 2) // 2, 8))
    with tempfile.TemporaryDirectory(prefix="vatlas-bench-soak-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        save_bundle(synthetic_bundle(width, height, args.frames, args.atlas, seed=0), models / "bench.vatlas")
        server = ServerUnderTest(models, device, Path(tmp) / "data" if args.data else None)
        sampler = MemorySampler(server.proc.pid, gpu_every=1)
        sampler.start()
        try:
            infos = [asyncio.run(_create_session(server.grpc, "bench")) for _ in range(-(-clients // SOAK_GROUP))]
            plan = [(i, infos[i // SOAK_GROUP].session_id, infos[i // SOAK_GROUP].join_token) for i in range(clients)]
            time.sleep(1.0)
            sampler.mark("soak")
            t0 = time.monotonic() + 0.5
            jobs = [(plan[w::workers], server.grpc, server.ws, seconds, t0, (width, height), args.frames,
                     args.quality) for w in range(workers) if plan[w::workers]]
            if len(jobs) == 1:
                results = _soak_worker(jobs[0])
            else:
                with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
                    results = [r for part in pool.map(_soak_worker, jobs) for r in part]
            sampler.mark("end")
        finally:
            server.stop()
            sampler.stop()
    start, stop = sampler.marks.get("soak", 0.0), sampler.marks.get("end", float("inf"))
    rss = [(t - start, v) for t, v in sampler.rss if start <= t <= stop]
    gpu = [(t - start, v) for t, v in sampler.gpu if start <= t <= stop]
    ops = [sum(r["ops"][k] for r in results) for k in range(int(seconds) + 2)]
    frames = [sum(r["frames"][k] for r in results) for k in range(int(seconds) + 2)]
    timeline = _timeline(rss, gpu, ops, frames, seconds)
    warm = seconds * 0.15  # allocator pools and compiled kernels fill up first
    rss_slope = _slope_per_min([s for s in rss if s[0] >= warm])
    gpu_slope = _slope_per_min([s for s in gpu if s[0] >= warm])
    errors = [e for r in results for e in r["errors"]]
    rows: list[dict[str, Any]] = []
    for point in timeline:
        rows.append({"measure": "memory at", "setting": f"t={point['t']:.0f} s ({point['ops_per_s']:.0f} ops/s, "
                                                        f"{point['frames_per_s']:.0f} frames/s)",
                     "value": f"RSS {point['rss_mib']:.0f} / GPU {_fmt_mib(point['gpu_mib'])}", "unit": "MiB",
                     "target": ""})
    rows += [
        {"measure": "clients", "setting": f"{clients} ({-(-clients // SOAK_GROUP)} sessions)", "value": clients,
         "unit": "", "target": ""},
        {"measure": "ops answered", "setting": f"{seconds:.0f} s", "value": sum(ops), "unit": "ops", "target": ""},
        {"measure": "frames received", "setting": f"{seconds:.0f} s", "value": sum(frames), "unit": "frames",
         "target": ""},
        {"measure": "client errors", "setting": "", "value": len(errors), "unit": "", "target": "0"},
        {"measure": "server RSS start/end/peak", "setting": "MiB",
         "value": "/".join(f"{v:.0f}" for v in _start_end_peak(rss)), "unit": "MiB", "target": ""},
        {"measure": "server RSS slope after warm-up", "setting": f"from t={warm:.0f} s", "value": rss_slope,
         "unit": "MiB/min", "target": "flat"},
    ]
    if gpu:
        rows += [
            {"measure": "server GPU memory start/end/peak", "setting": "MiB",
             "value": "/".join(f"{v:.0f}" for v in _start_end_peak(gpu)), "unit": "MiB", "target": ""},
            {"measure": "server GPU memory slope after warm-up", "setting": f"from t={warm:.0f} s",
             "value": gpu_slope, "unit": "MiB/min", "target": "flat"},
        ]
    meta = {"device": device, "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "size": [width, height], "frames": args.frames, "atlas": args.atlas, "clients": clients,
            "soak_seconds": seconds, "persisted": bool(args.data), "client_workers": len(jobs),
            "timeline": timeline, "rss_samples": rss, "gpu_samples": gpu, "errors": errors[:50],
            "rejected": sum(r["rejected"] for r in results), "rejoins": sum(r["rejoins"] for r in results),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return {"rows": rows, "meta": meta}


def _fmt_mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _start_end_peak(samples: list[tuple[float, float]]) -> tuple[float, float, float]:
    if not samples:
        return (float("nan"),) * 3  # type: ignore[return-value]
    return samples[0][1], samples[-1][1], max(v for _, v in samples)


def _timeline(rss: list[tuple[float, float]], gpu: list[tuple[float, float]], ops: list[int], frames: list[int],
              seconds: float, points: int = 12) -> list[dict[str, Any]]:
    """Up to `points` moments over the soak (whole seconds apart at least): the memory last sampled by then,
    ops and frames per second in the stretch before."""
    out = []
    points = max(1, min(points, int(seconds)))
    edges = [round(seconds * k / points) for k in range(points + 1)]
    for a, b in zip(edges, edges[1:], strict=False):
        near = [v for t, v in rss if t <= b]
        g = [v for t, v in gpu if t <= b]
        span = range(a, max(a + 1, b))
        out.append({"t": b, "rss_mib": near[-1] if near else float("nan"), "gpu_mib": g[-1] if g else None,
                    "ops_per_s": sum(ops[k] for k in span if k < len(ops)) / max(b - a, 1e-9),
                    "frames_per_s": sum(frames[k] for k in span if k < len(frames)) / max(b - a, 1e-9)})
    return out
