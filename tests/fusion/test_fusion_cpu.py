"""Fused vs unfused shared experts, end to end on vLLM's CPU backend.

Every run is a separate engine process (sefkit/engine_run.py) that reads
VLLM_SHARED_EXPERT_FUSION_REPLICAS at start-up, as users run vLLM, on tiny
checkpoints with random weights loaded through the model's real weight
loader (sefkit/tiny_deepseek.py). The runs start once per session, two at a
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

from sefkit.compare import greedy_identical, prompt_logprob_diff, within_rounding
from sefkit.fusion_harness import Runs, launch_runs
from sefkit.tiny_deepseek import ARCHS, make_config, write_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ENV = "VLLM_SHARED_EXPERT_FUSION_REPLICAS"
# The engine runs all start in the session fixture, inside the first test's
# setup: give that setup room beyond pytest.ini's per-test timeout (each run
# has its own 900 s limit; all of them take ~8 min on 2 idle cores).
pytestmark = pytest.mark.timeout(3600)

FP32_ATOL = 1e-4

MODELS = ["v3", "v2-lite", "v2", "k2", "glm4-moe"]
FUSED_REPLICAS = ["1", "2"]
NO_SHARED = ["v3-zero", "v3-null"]
AVX2_MODELS = ["v3", "glm4-moe", "v3-zero"]
AVX2_ENV = {"SEF_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# The drafter picks its own attention backend: pinned like the target's (engine_run.py).
MTP_SPEC = json.dumps(
    {"method": "mtp", "num_speculative_tokens": 1, "attention_backend": "CPU_MLA"}
)

# One engine process per entry: (settings, models, engine_run.py arguments).
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "fp32-0": ([*MODELS, "v3-perturbed"], ["--dtype", "float32", "--replicas", "0"]),
    "fp32-1": (MODELS, ["--dtype", "float32", "--replicas", "1"]),
    "stock-unset": (MODELS, ["--dtype", "bfloat16", "--replicas", "unset"]),
    "bf16-0": (
        [*MODELS, "v3-perturbed", *NO_SHARED],
        ["--dtype", "bfloat16", "--replicas", "0", "--inspect"],
    ),
    "bf16-1": (
        [*MODELS, *NO_SHARED, "v3-fp8-per-tensor"],
        ["--dtype", "bfloat16", "--replicas", "1", "--inspect"],
    ),
    "bf16-2": (MODELS, ["--dtype", "bfloat16", "--replicas", "2", "--inspect"]),
    "fp16-0": (["v3", "v2"], ["--dtype", "float16", "--replicas", "0"]),
    "fp16-1": (["v3", "v2"], ["--dtype", "float16", "--replicas", "1", "--inspect"]),
    "fp32-0-mtp": (["v3-mtp"], ["--dtype", "float32", "--replicas", "0"]),
    "fp32-1-mtp": (["v3-mtp"], ["--dtype", "float32", "--replicas", "1"]),
    # vLLM's AVX2 CPU path (compiled ops, MoE and GEMM kernels) forced on an AVX-512 machine.
    "avx2-bf16-0": (AVX2_MODELS, ["--dtype", "bfloat16", "--replicas", "0"]),
    "avx2-bf16-1": (AVX2_MODELS, ["--dtype", "bfloat16", "--replicas", "1", "--inspect"]),
    "lora-1": (["v3"], ["--replicas", "1", "--engine-arg", "enable_lora=true"]),
}
for _name in ("fp32-0-mtp", "fp32-1-mtp"):
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
    # No shared experts: 0, and null (which Hugging Face's config refuses).
    write_checkpoint(root / "v3-zero", "v3", n_shared_experts=0)
    write_checkpoint(root / "v3-null", "v3", n_shared_experts=None)
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
    """The folder of the unpatched vllm package, for PYTHONPATH: the official CPU wheel's, or
    SEF_STOCK_VLLM's (ci/port-e2e.sh: a newer base's sources without the series)."""
    if os.environ.get("SEF_STOCK_VLLM"):
        stock = Path(os.environ["SEF_STOCK_VLLM"])
        assert (stock / "vllm" / "__init__.py").is_file(), f"SEF_STOCK_VLLM={stock}: no vllm/ there"
        return stock
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
    # SEF_FUSION_RUNS=DIR re-checks the outputs of an earlier session's runs.
    if os.environ.get("SEF_FUSION_RUNS"):
        return Runs(Path(os.environ["SEF_FUSION_RUNS"]))
    root = tmp_path_factory.mktemp("fusion-runs")
    checkpoints = root / "checkpoints"
    _write_checkpoints(checkpoints)
    stock = _stock_vllm(root)
    cores = max(1, os.cpu_count() or 1)

    def env_for(name: str, lane: int) -> dict[str, str]:
        # One core per engine: two engines run side by side.
        env = {"VLLM_CPU_OMP_THREADS_BIND": str(lane % cores)}
        if name.startswith("stock-"):
            # First on the path: it shadows any vllm further on (a hybrid's, ci/port-e2e.sh).
            path = [str(stock), str(ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
            env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        if name.startswith("avx2-"):
            env.update(AVX2_ENV)
        return env

    return launch_runs(RUNS, checkpoints, root, lanes=2, env_for=env_for)


def _check_structure(
    layers: list[dict], arch: str, replicas: int, dtype: str, drafter: bool = False
) -> None:
    """No shared MLP, n_routed + R * n_shared slots, each an exact copy; the
    router scales the routed weights (bf16, fp32) or the runner the output
    with shared entries of weight 1 / rsf (fp16)."""
    config = make_config(arch)
    n_routed, n_shared = config["n_routed_experts"], config["n_shared_experts"]
    rsf = config["routed_scaling_factor"]
    moe_layers = 1 if drafter else config["num_hidden_layers"] - config["first_k_dense_replace"]
    assert len(layers) == moe_layers
    for layer in layers:
        if replicas == 0:
            assert layer["has_shared_mlp"], layer["name"]
            assert layer["num_slots"] == n_routed, layer["name"]
            assert layer["fusion"] is None, layer["name"]
            continue
        assert not layer["has_shared_mlp"], layer["name"]
        assert layer["num_slots"] == n_routed + replicas * n_shared, layer["name"]
        assert layer["num_fused_shared_experts"] == n_shared, layer["name"]
        fusion = layer["fusion"]
        assert fusion["replicas"] == replicas
        expected = (1 / rsf, 1.0, rsf) if dtype == "float16" else (1.0, rsf, 1.0)
        got = (
            fusion["shared_expert_weight"],
            fusion["router_scaling_factor"],
            fusion["runner_scaling_factor"],
        )
        assert got == pytest.approx(expected), (layer["name"], got)
        assert layer["slots_equal_checkpoint"] == [[True] * n_shared] * replicas


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("replicas", ["0", *FUSED_REPLICAS])
def test_structure(runs: Runs, model: str, replicas: str):
    _check_structure(runs(f"bf16-{replicas}", model)["layers"], model, int(replicas), "bf16")


@pytest.mark.parametrize("model", ["v3", "v2"])
def test_structure_fp16(runs: Runs, model: str):
    _check_structure(runs("fp16-1", model)["layers"], model, 1, "float16")


@pytest.mark.parametrize("model", MODELS)
def test_setting_off_is_stock_vllm_bit_for_bit(runs: Runs, model: str):
    """R = 0 (unset parses to 0: tests/test_envs.py in-tree) is the unpatched wheel's output."""
    assert runs("bf16-0", model)["sequences"] == runs("stock-unset", model)["sequences"]


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
    (layer,) = fused["draft_layers"]
    assert "mtp_block" in layer["name"]
    _check_structure([layer], "v3", 1, "float32", drafter=True)
    assert unfused["draft_layers"][0]["has_shared_mlp"]
    # The drafter proposes the same tokens, so as many are accepted.
    assert fused["spec_decode"] == unfused["spec_decode"]
    assert fused["spec_decode"]["vllm:spec_decode_num_draft_tokens"] > 0
    ok, detail = _fp32_close(fused, unfused)
    assert ok, detail


def test_zero_shared_experts_is_no_shared_experts(runs: Runs):
    """n_shared_experts=0 (patch 0002): no shared MLP, nothing to fuse, and
    the same tokens with the setting on as off."""
    out, stock = runs("bf16-1", "v3-zero"), runs("bf16-0", "v3-zero")
    assert "error" not in out, out.get("error")
    assert "error" not in stock, stock.get("error")
    for layer in (*out["layers"], *stock["layers"]):
        assert not layer["has_shared_mlp"]
        assert layer["fusion"] is None
    assert out["layers"] == stock["layers"]
    assert out["sequences"] == stock["sequences"]


def test_null_shared_experts_is_refused_by_the_config(runs: Runs):
    """n_shared_experts: null fails in Hugging Face's config class, before vLLM
    builds anything, with the setting on as off."""
    for run in ("bf16-0", "bf16-1"):
        error = runs(run, "v3-null").get("error")
        assert error is not None, run
        assert "n_shared_experts" in error, (run, error)


@pytest.mark.parametrize("model", ["v3", "glm4-moe"])
def test_avx2_path(runs: Runs, model: str):
    """The same on vLLM's AVX2 path (AVX2-only CPUs): its own compiled ops and kernels."""
    fused, unfused = runs("avx2-bf16-1", model), runs("avx2-bf16-0", model)
    assert fused["cpu_ops"] == unfused["cpu_ops"] == ["_C_AVX2"], fused["cpu_ops"]
    _check_structure(fused["layers"], model, 1, "bf16")
    ok, detail = within_rounding(fused, unfused, runs("fp32-0", model))
    print(f"{model} AVX2 bf16 R=1 vs R=0: {detail}")
    assert ok, detail


def test_avx2_path_zero_shared_experts(runs: Runs):
    out, stock = runs("avx2-bf16-1", "v3-zero"), runs("avx2-bf16-0", "v3-zero")
    assert "error" not in out, out.get("error")
    assert out["sequences"] == stock["sequences"]


@pytest.mark.parametrize(
    ("run", "model", "message"),
    [
        ("lora-1", "v3", f"{ENV}=1 is not supported for .*: LoRA is not supported"),
        (
            "bf16-1",
            "v3-fp8-per-tensor",
            f"{ENV}=1 is not supported for .*only implemented for block-quantized",
        ),
    ],
)
def test_refusals(runs: Runs, run: str, model: str, message: str):
    error = runs(run, model).get("error")
    assert error is not None, f"{run} started an engine; expected a refusal"
    assert re.search(message, error), error
