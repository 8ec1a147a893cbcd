"""Fused vs unfused shared experts, end to end on vLLM's CPU backend.

Every run is a separate engine process (tests/engine_run.py) that reads
VLLM_SHARED_EXPERT_FUSION_REPLICAS at start-up, as users run vLLM, on tiny
checkpoints with random weights loaded through the model's real weight
loader (tests/tiny_deepseek.py). The runs start once per session, two at a
time, and the tests below compare their outputs.

Numerics, per architecture:
- fp32: fusion changes only the order of floating-point additions, so prompt
  logprobs agree to FP32_ATOL and greedy continuations are identical.
- bf16 and fp16: both paths round differently. The unfused run's own
  distance from the fp32 run measures that rounding; the fused run must be
  no farther from the unfused one than that, and no farther from fp32 than
  the unfused run is (compare.within_rounding). Greedy continuations may only
  part where the two runs' top tokens are near-tied (vLLM's
  check_logprobs_close), or no more often than rounding parts the unfused run
  from fp32.
- A negative control (the shared expert's output scaled by 1.25, computed
  unfused) must fail both checks, which shows they can fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from compare import greedy_identical, prompt_logprob_diff, within_rounding
from fusion_harness import Runs, launch_runs
from tiny_deepseek import ARCHS, make_config, write_checkpoint

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV = "VLLM_SHARED_EXPERT_FUSION_REPLICAS"
MAX_TOKENS_ENV = "VLLM_SHARED_EXPERT_FUSION_MAX_TOKENS"
# The engine runs all start in the session fixture, inside the first test's
# setup: give that setup room beyond pytest.ini's per-test timeout (each run
# has its own 900 s limit; all of them take ~8 min on 2 idle cores).
pytestmark = pytest.mark.timeout(3600)

FP32_ATOL = 1e-4

MODELS = ["v3", "v2-lite", "v2", "k2"]
FUSED_REPLICAS = ["1", "2", "4"]
MTP_SPEC = json.dumps({"method": "mtp", "num_speculative_tokens": 1})

# One engine process per entry: (settings, models, engine_run.py arguments).
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "fp32-0": (
        [*MODELS, "v3-perturbed"],
        ["--dtype", "float32", "--replicas", "0"],
    ),
    "fp32-1": (MODELS, ["--dtype", "float32", "--replicas", "1"]),
    "bf16-unset": (MODELS, ["--dtype", "bfloat16", "--replicas", "unset"]),
    "stock-unset": (MODELS, ["--dtype", "bfloat16", "--replicas", "unset"]),
    "bf16-0": (
        [*MODELS, "v3-perturbed", "v3-noshared"],
        ["--dtype", "bfloat16", "--replicas", "0", "--inspect"],
    ),
    "bf16-1": (
        [*MODELS, "v3-noshared", "v3-fp8-per-tensor"],
        ["--dtype", "bfloat16", "--replicas", "1", "--inspect"],
    ),
    "bf16-2": (MODELS, ["--dtype", "bfloat16", "--replicas", "2", "--inspect"]),
    "bf16-4": (MODELS, ["--dtype", "bfloat16", "--replicas", "4", "--inspect"]),
    "fp16-0": (["v3", "v2"], ["--dtype", "float16", "--replicas", "0"]),
    "fp16-1": (["v3", "v2"], ["--dtype", "float16", "--replicas", "1"]),
    "fp32-0-mtp": (["v3-mtp"], ["--dtype", "float32", "--replicas", "0"]),
    "fp32-1-mtp": (["v3-mtp"], ["--dtype", "float32", "--replicas", "1"]),
    # VLLM_SHARED_EXPERT_FUSION_MAX_TOKENS=16: the prefills (over 16 tokens)
    # run the separate shared MLP, the decode steps (8 tokens; 16 with MTP's
    # verification) the fused slots.
    "fp32-1-max16": (["v3", "v2-lite"], ["--dtype", "float32", "--replicas", "1"]),
    "fp32-1-max16-mtp": (["v3-mtp"], ["--dtype", "float32", "--replicas", "1"]),
    "fp32-0-max16": (["v3"], ["--dtype", "float32", "--replicas", "0"]),
    "lora-1": (["v3"], ["--replicas", "1", "--engine-arg", "enable_lora=true"]),
    "negative": (["v3"], ["--replicas", "-1"]),
    "not-an-integer": (["v3"], ["--replicas", "1.5"]),
    "max-tokens-negative": (["v3"], ["--replicas", "1", "--fusion-max-tokens", "-2"]),
}
for _name in ("fp32-1-max16", "fp32-1-max16-mtp", "fp32-0-max16"):
    RUNS[_name][1].extend(["--fusion-max-tokens", "16", "--count-paths", "--inspect"])
for _name in ("fp32-0-mtp", "fp32-1-mtp", "fp32-1-max16-mtp"):
    RUNS[_name][1].extend(
        [
            "--inspect",
            "--engine-arg",
            f"speculative_config={MTP_SPEC}",
            "--engine-arg",
            "disable_log_stats=false",
        ]
    )


def _write_checkpoints(root: Path) -> None:
    for arch in ARCHS:
        write_checkpoint(root / arch, arch)
    write_checkpoint(root / "v3-mtp", "v3", num_nextn_predict_layers=1)
    # Hugging Face's DeepSeek configs take an int: 0 means no shared experts.
    write_checkpoint(root / "v3-noshared", "v3", n_shared_experts=0)
    # Unfused stand-in for a fusion bug: the shared expert's output x1.25.
    perturbed = write_checkpoint(root / "v3-perturbed", "v3")
    _scale_shared_down_proj(perturbed, 1.25)
    # FP8 per-tensor checkpoints carry 0-d scales that can't be split.
    fp8 = write_checkpoint(root / "v3-fp8-per-tensor", "v3")
    config = json.loads((fp8 / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
    }
    (fp8 / "config.json").write_text(json.dumps(config))


def _scale_shared_down_proj(model_dir: Path, factor: float) -> None:
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    for name in tensors:
        if ".shared_experts.down_proj." in name:
            tensors[name] = tensors[name] * factor
    save_file(tensors, str(path), metadata={"format": "pt"})


def _stock_vllm(tmp: Path) -> Path:
    """The unpatched vllm package from the official CPU wheel, for PYTHONPATH."""
    wheel = subprocess.run(
        [str(ROOT / "ci" / "fetch.sh"), "cpu-wheel"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    out = tmp / "stock-site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(out, [n for n in zf.namelist() if n.startswith("vllm/")])
    return out


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("fusion-runs")
    checkpoints = root / "checkpoints"
    _write_checkpoints(checkpoints)
    stock = _stock_vllm(root)
    cores = max(1, os.cpu_count() or 1)

    def env_for(name: str, lane: int) -> dict[str, str]:
        # One core per engine: two engines run side by side.
        env = {"VLLM_CPU_OMP_THREADS_BIND": str(lane % cores)}
        if name.startswith("stock-"):
            env["PYTHONPATH"] = os.pathsep.join([str(stock), str(HERE)])
        return env

    return launch_runs(RUNS, checkpoints, root, lanes=2, env_for=env_for)


def _expected_structure(arch: str, replicas: int) -> tuple[bool, int, int]:
    config = make_config(arch)
    n_routed, n_shared = config["n_routed_experts"], config["n_shared_experts"]
    if replicas == 0:
        return True, n_routed, config["num_experts_per_tok"]
    return (
        False,
        n_routed + replicas * n_shared,
        config["num_experts_per_tok"] + n_shared,
    )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("replicas", ["0", *FUSED_REPLICAS])
def test_structure(runs: Runs, model: str, replicas: str):
    """No shared MLP, n_routed + R * n_shared slots, each an exact copy."""
    layers = runs(f"bf16-{replicas}", model)["layers"]
    config = make_config(model)
    has_mlp, slots, top_k = _expected_structure(model, int(replicas))
    assert len(layers) == config["num_hidden_layers"] - config["first_k_dense_replace"]
    for layer in layers:
        assert layer["has_shared_mlp"] is has_mlp, layer["name"]
        assert layer["num_slots"] == slots, layer["name"]
        assert layer["top_k_per_token"] == top_k, layer["name"]
        if replicas == "0":
            assert layer["fusion"] is None
            continue
        assert layer["fusion"]["replicas"] == int(replicas)
        # CPU and CUDA scale the summed output by routed_scaling_factor.
        assert layer["fusion"]["weight"] == pytest.approx(1.0 / config["routed_scaling_factor"])
        copies = layer["slots_equal_checkpoint"]
        assert len(copies) == int(replicas)
        assert all(len(c) == config["n_shared_experts"] and all(c) for c in copies)


@pytest.mark.parametrize("model", MODELS)
def test_unset_and_zero_are_stock_vllm_bit_for_bit(runs: Runs, model: str):
    stock = runs("stock-unset", model)
    assert runs("bf16-unset", model)["sequences"] == stock["sequences"]
    assert runs("bf16-0", model)["sequences"] == stock["sequences"]


def _fp32_close(fused: dict, unfused: dict) -> tuple[bool, str]:
    diff = prompt_logprob_diff(fused, unfused)
    same = greedy_identical(fused, unfused)
    return diff.max <= FP32_ATOL and same, f"{diff.summary()} greedy equal: {same}"


@pytest.mark.parametrize("model", MODELS)
def test_fp32_equal(runs: Runs, model: str):
    ok, detail = _fp32_close(runs("fp32-1", model), runs("fp32-0", model))
    print(f"{model} fp32 R=1 vs R=0: {detail}")
    assert ok, detail


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("replicas", FUSED_REPLICAS)
def test_bf16_within_rounding(runs: Runs, model: str, replicas: str):
    ok, detail = within_rounding(
        runs(f"bf16-{replicas}", model), runs("bf16-0", model), runs("fp32-0", model)
    )
    print(f"{model} bf16 R={replicas} vs R=0: {detail}")
    assert ok, detail


@pytest.mark.parametrize("model", MODELS)
def test_replicas_compute_identically(runs: Runs, model: str):
    """Copies are identical, so which one a token uses changes no bit."""
    one = runs("bf16-1", model)["sequences"]
    for replicas in FUSED_REPLICAS[1:]:
        assert runs(f"bf16-{replicas}", model)["sequences"] == one


def test_negative_control_fails_both_checks(runs: Runs):
    ok, detail = _fp32_close(runs("fp32-0", "v3-perturbed"), runs("fp32-0", "v3"))
    assert not ok, detail
    ok, detail = within_rounding(
        runs("bf16-0", "v3-perturbed"), runs("bf16-0", "v3"), runs("fp32-0", "v3")
    )
    assert not ok, detail


@pytest.mark.parametrize("model", ["v3", "v2"])
def test_fp16_within_rounding(runs: Runs, model: str):
    """FP16 rescales the residual stream by 1 / routed_scaling_factor."""
    ok, detail = within_rounding(
        runs("fp16-1", model), runs("fp16-0", model), runs("fp32-0", model)
    )
    print(f"{model} fp16 R=1 vs R=0: {detail}")
    assert ok, detail


def test_mtp_layer_is_fused(runs: Runs):
    fused, unfused = runs("fp32-1-mtp", "v3-mtp"), runs("fp32-0-mtp", "v3-mtp")
    config = make_config("v3")
    (layer,) = fused["draft_layers"]
    assert "mtp_block" in layer["name"]
    assert not layer["has_shared_mlp"]
    assert layer["num_slots"] == config["n_routed_experts"] + config["n_shared_experts"]
    assert layer["slots_equal_checkpoint"] == [[True]]
    assert unfused["draft_layers"][0]["has_shared_mlp"]
    # The drafter proposes the same tokens, so as many are accepted.
    assert fused["spec_decode"] == unfused["spec_decode"]
    assert fused["spec_decode"]["vllm:spec_decode_num_draft_tokens"] > 0
    ok, detail = _fp32_close(fused, unfused)
    assert ok, detail


def _prefill_and_decode_sizes(run: dict) -> tuple[set[int], set[int]]:
    prompts = [len(seq["prompt"]) for seq in run["sequences"]]
    return {sum(prompts)}, {len(prompts)}


@pytest.mark.parametrize("model", ["v3", "v2-lite"])
def test_max_tokens_fuses_small_batches_only(runs: Runs, model: str):
    """VLLM_SHARED_EXPERT_FUSION_MAX_TOKENS=16: the layers hold the separate
    shared MLP and the fused slots (both loaded from the checkpoint); the
    prefill runs the MLP, every decode step the slots, and the results equal
    the unfused run's."""
    run, unfused = runs("fp32-1-max16", model), runs("fp32-0", model)
    config = make_config(model)
    n_moe = config["num_hidden_layers"] - config["first_k_dense_replace"]
    assert len(run["layers"]) == n_moe
    for layer in run["layers"]:
        assert layer["has_shared_mlp"]
        assert layer["num_slots"] == config["n_routed_experts"] + config["n_shared_experts"]
        assert layer["fusion"]["max_tokens"] == 16
        assert layer["slots_equal_checkpoint"] == [[True] * config["n_shared_experts"]]
    prefill, decode = _prefill_and_decode_sizes(run)
    paths = {
        path: {int(n): calls for n, calls in sizes.items()} for path, sizes in run["paths"].items()
    }
    steps = len(run["sequences"][0]["tokens"]) - 1
    assert paths["shared_mlp"] == {n: n_moe for n in prefill}
    assert paths["fused"] == {n: n_moe * steps for n in decode}
    # The prefill is stock vLLM's computation; the decode steps are fused.
    assert prompt_logprob_diff(run, unfused).max == 0.0
    ok, detail = _fp32_close(run, unfused)
    assert ok, detail


def test_max_tokens_with_mtp(runs: Runs):
    run, unfused = runs("fp32-1-max16-mtp", "v3-mtp"), runs("fp32-0-mtp", "v3-mtp")
    (layer,) = run["draft_layers"]
    assert layer["has_shared_mlp"]
    assert layer["slots_equal_checkpoint"] == [[True]]
    assert run["paths"]["fused"]
    assert run["paths"]["shared_mlp"]
    assert all(int(n) <= 16 for n in run["paths"]["fused"])
    assert all(int(n) > 16 for n in run["paths"]["shared_mlp"])
    assert run["spec_decode"] == unfused["spec_decode"]
    ok, detail = _fp32_close(run, unfused)
    assert ok, detail


def test_max_tokens_without_replicas_is_stock(runs: Runs):
    run, stock = runs("fp32-0-max16", "v3"), runs("fp32-0", "v3")
    assert all(layer["fusion"] is None for layer in run["layers"])
    assert run["paths"]["fused"] == {}
    assert run["sequences"] == stock["sequences"]
    assert f"{MAX_TOKENS_ENV}=16 has no effect without {ENV} >= 1" in runs.log("fp32-0-max16")


def test_model_without_shared_experts_is_unchanged(runs: Runs):
    out, stock = runs("bf16-1", "v3-noshared"), runs("bf16-0", "v3-noshared")
    assert "error" not in out, out.get("error")
    assert out["layers"] == stock["layers"]
    assert all(layer["fusion"] is None for layer in out["layers"])
    assert out["sequences"] == stock["sequences"]
    assert f"{ENV}=1 has no effect: the model has no shared experts" in runs.log("bf16-1")


@pytest.mark.parametrize(
    ("run", "model", "message"),
    [
        ("lora-1", "v3", f"{ENV}=1 is not supported for .*: LoRA is not supported"),
        (
            "bf16-1",
            "v3-fp8-per-tensor",
            f"{ENV}=1 is not supported for .*only implemented for block-quantized",
        ),
        ("negative", "v3", f"Invalid value '-1' for {ENV}: expected a non-negative"),
        ("not-an-integer", "v3", f"Invalid value '1.5' for {ENV}"),
        (
            "max-tokens-negative",
            "v3",
            f"Invalid value '-2' for {MAX_TOKENS_ENV}: expected a non-negative",
        ),
    ],
)
def test_refusals(runs: Runs, run: str, model: str, message: str):
    error = runs(run, model).get("error")
    assert error is not None, f"{run} started an engine; expected a refusal"
    assert re.search(message, error), error
