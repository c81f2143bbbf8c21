"""`vatlas bench hash` runs end to end on CPU with a tiny batch (smoke; speed is not asserted)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

from vatlas.bench import encoding as bench_hash

torch.set_num_threads(2)

TINY = ["--device", "cpu", "--batch", "256", "--steps", "2", "--reps", "2", "--warmup", "1",
        "--levels", "4", "--log2-hashmap-size", "10", "--mlp-width", "16"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_hash.add_arguments(parser)
    return parser.parse_args(argv)


def test_run_returns_rows_for_both_dims() -> None:
    result = bench_hash.run(parse(TINY))
    rows = result["rows"]
    assert [(r["backend"], r["dims"]) for r in rows] == [("torch", 2), ("torch", 3)]
    for row in rows:
        assert row["ms_per_step"] > 0 and row["msamples_per_s"] > 0
        assert row["ms_min"] <= row["ms_per_step"] <= row["ms_max"]
        assert row["peak_mem_gib"] is None  # CPU
        assert row["loss_last"] < row["loss_first"]  # the step really trains
    assert result["meta"]["torch"] == torch.__version__
    json.dumps(result)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot run"):
        bench_hash.run(parse([*TINY, "--backends", "triton"]))
    with pytest.raises(ValueError, match="--dims"):
        bench_hash.run(parse([*TINY, "--dims", "4"]))


def test_cli_entry_point(tmp_path) -> None:
    out = tmp_path / "hash.json"
    proc = subprocess.run([sys.executable, "-m", "vatlas.cli", "bench", "hash", *TINY, "--dims", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "2", "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "msamples_per_s" in proc.stdout
    assert json.loads(out.read_text())["rows"][0]["dims"] == 2
