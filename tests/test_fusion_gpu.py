"""Fused vs unfused shared experts end to end on a CUDA GPU (bf16, FP8 block).

Skipped without CUDA, so not part of CI; run on a GPU host with the patched
vLLM installed:

    pytest tests/test_fusion_gpu.py

Tiny checkpoints at shapes the GPU kernels accept (FP8 block [128, 128]
tiles, FlashMLA's 512 + 64 latent dims), real random weights loaded through
the model's weight loader, one engine process per setting. Checks: structure
(no shared MLP, R * n_shared extra slots, each an exact copy of the
checkpoint's shared expert, FP8 block scales included), every copy count
computes the same bits, and greedy continuations agree with the unfused run
the way vLLM's check_logprobs_close compares them. The layer-level numeric
comparison against an fp32 reference is benchmarks/moe_layer.py check.
"""

from __future__ import annotations

import json

import pytest
import torch
from compare import greedy_mismatches, prompt_logprob_diff
from fusion_harness import Runs, launch_runs
from tiny_deepseek import make_config, write_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

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


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("fusion-gpu-runs")
    checkpoints = root / "checkpoints"
    for name, (arch, dtype, shapes) in MODELS.items():
        fp8 = dtype == "fp8"
        write_checkpoint(
            checkpoints / name,
            arch,
            "bfloat16" if fp8 else dtype,
            fp8_block=fp8,
            **shapes,
        )
    specs = {
        f"r{r}": (list(MODELS), ["--replicas", r, "--inspect", "--dtype", "bfloat16"])
        for r in REPLICAS
    }
    return launch_runs(specs, checkpoints, root)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("replicas", REPLICAS[1:])
def test_structure(runs: Runs, model: str, replicas: str):
    arch, _, shapes = MODELS[model]
    config = make_config(arch, **shapes)
    out = runs(f"r{replicas}", model)
    assert "error" not in out, out.get("error")
    slots = config["n_routed_experts"] + int(replicas) * config["n_shared_experts"]
    for layer in out["layers"]:
        assert not layer["has_shared_mlp"]
        assert layer["num_slots"] == slots
        assert all(all(c) for c in layer["slots_equal_checkpoint"])


@pytest.mark.parametrize("model", list(MODELS))
def test_copies_compute_identically(runs: Runs, model: str):
    assert runs("r2", model)["sequences"] == runs("r1", model)["sequences"]


@pytest.mark.parametrize("model", list(MODELS))
def test_greedy_and_logprobs(runs: Runs, model: str):
    fused, stock = runs("r1", model), runs("r0", model)
    diff = prompt_logprob_diff(fused, stock)
    print(f"{model} R=1 vs R=0 prompt logprobs: {json.dumps(diff.summary())}")
    assert not greedy_mismatches(fused, stock)
