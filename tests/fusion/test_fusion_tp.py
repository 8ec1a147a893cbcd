"""Fused vs unfused shared experts under tensor parallelism (TP=2), on vLLM's CPU backend.

What can go wrong only under TP: each rank must hold its slice of every fused
shared slot exactly as it holds its slice of the routed experts (the
intermediate dimension: rows of gate and up, columns of down, FP8 block scales
alike), also where the shared expert is split into several slots (V2-Lite's
two shared experts: the split into slots and the split over ranks interact),
and the copy that a token uses must not depend on the rank. Each engine runs
as users run TP on CPU: tensor_parallel_size=2, one worker process per rank
(VLLM_CPU_OMP_THREADS_BIND="0|1", one core each), enforce_eager; one engine
process per setting serves several checkpoints in turn (engine_run.py; a
checkpoint whose engine crashes runs again alone, so the failure names it).

Checks, per checkpoint:
- structure, on every rank (engine_run.py --inspect runs on each worker): no
  shared MLP, n_routed + R * n_shared slots, every slot equal to this rank's
  slice of the checkpoint's shared expert and not to the other rank's, and the
  router's shared entries the same on both ranks (token t: copy t % R);
- fp32 (V3, V2-Lite, K2; R=2): prompt logprobs agree with the unfused run to
  FP32_ATOL, greedy continuations are identical. R=2 uses both copies, and
  copy 0 is R=1's, so this checks R=1's slots too;
- bf16 (V3) and FP8 block (V2-Lite shapes, [128, 128] blocks, bf16
  activations), R=1: the fused run is as close to an fp32 reference as the
  unfused run (compare.within_rounding, as at TP=1). The FP8 reference is the
  unfused fp32 run of the same weights dequantized. vllm-cpu runs FP8 block
  linear layers with AMX only: on a CPU without it the FP8 tests skip.

Upstream nondeterminism: stock vLLM-CPU 0.32.0 was once seen to continue one
greedy sequence differently at TP=2 from a decode step (not reproduced here).
Prompt logprobs, one prefill step, are compared once; where a check of greedy
continuations fails, both runs repeat for that checkpoint, and the test passes
if some pairing of runs and repetitions passes, warning TPFlakinessWarning
with every run's tokens. A fusion bug fails every pairing. docs/cpu-tp.md has
the findings, time and settings; tools/cpu_repro.py the reproductions.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pytest
import torch

from sefkit.compare import greedy_identical, prompt_logprob_diff, within_rounding
from sefkit.fusion_harness import Runs, launch_runs
from sefkit.tiny_deepseek import DEEPSEEK_YARN, make_config, write_checkpoint

# The engine runs start in the session fixture, inside the first test's setup.
pytestmark = pytest.mark.timeout(3600)

TP = 2
FP32_ATOL = 1e-4

FP32_MODELS = ["v3", "v2-lite", "k2"]
BF16_MODELS = ["v3", "v2-lite-fp8"]
# vllm-cpu 0.32.0 runs FP8 block-quantized linear layers with AMX kernels only
# (CPUFp8BlockScaledMMKernel, CPUFp8W8A8BlockScaledMMKernel; it asks torch, as here):
# on a CPU without AMX (an AVX512-BF16 one, say) the FP8 checkpoint's engine does
# not start, so its runs are left out and its tests skip, saying why.
FP8_BLOCK_ON_CPU = torch.cpu._is_amx_tile_supported()
NO_FP8_BLOCK = "vllm-cpu 0.32.0 runs FP8 block linear layers with AMX only; this CPU has none"
BF16_RUN_MODELS = [m for m in BF16_MODELS if FP8_BLOCK_ON_CPU or not m.endswith("-fp8")]


def _bf16_param(*values: str):
    """A parameter set of a bf16 model's test: skipped where the model cannot run."""
    model = values[-1]
    runs_here = model in BF16_RUN_MODELS
    return pytest.param(*values, marks=pytest.mark.skipif(not runs_here, reason=NO_FP8_BLOCK))


# FP8 block [128, 128] needs every TP-split dimension to be a multiple of 128
# per rank: moe_intermediate_size 256 (128 per rank, each of V2-Lite's two
# shared experts too), the dense MLP, q_proj, kv_b_proj and o_proj.
FP8_SHAPES = dict(
    hidden_size=256,
    moe_intermediate_size=256,
    intermediate_size=512,
    qk_nope_head_dim=128,
    v_head_dim=128,
)
CHECKPOINTS: dict[str, tuple[str, dict]] = {
    "v3": ("v3", {}),
    "v2-lite": ("v2-lite", {}),
    "k2": ("k2", {}),
    "v2-lite-fp8": ("v2-lite", FP8_SHAPES),
}
# The fp32 reference of each bf16 checkpoint: the FP8 one's weights dequantized.
REFERENCE = {"v3": "v3", "v2-lite-fp8": "v2-lite-fp8-dequant"}

_TP_ARGS = ["--engine-arg", f"tensor_parallel_size={TP}"]
# One engine process per entry: (checkpoints, engine_run.py arguments).
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "fp32-0": (
        [*FP32_MODELS, *(["v2-lite-fp8-dequant"] if FP8_BLOCK_ON_CPU else [])],
        ["--dtype", "float32", "--replicas", "0", *_TP_ARGS],
    ),
    "fp32-2": (FP32_MODELS, ["--dtype", "float32", "--replicas", "2", "--inspect", *_TP_ARGS]),
    "bf16-0": (BF16_RUN_MODELS, ["--dtype", "bfloat16", "--replicas", "0", *_TP_ARGS]),
    "bf16-1": (
        BF16_RUN_MODELS,
        ["--dtype", "bfloat16", "--replicas", "1", "--inspect", *_TP_ARGS],
    ),
}
RETRY = "-retry"


class TPFlakinessWarning(UserWarning):
    """A fused and an unfused run parted where a repetition agreed."""


def _write_checkpoints(root: Path) -> None:
    for name, (arch, shapes) in CHECKPOINTS.items():
        write_checkpoint(
            root / name, arch, fp8_block=name.endswith("-fp8"), rope_scaling=DEEPSEEK_YARN, **shapes
        )
    _write_dequantized(root / "v2-lite-fp8", root / "v2-lite-fp8-dequant")


def _write_dequantized(src: Path, dst: Path) -> None:
    """The FP8 block checkpoint's weights times their scales, in fp32: the
    model that the FP8 runs compute, for an fp32 reference."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src / "model.safetensors"))
    out = {}
    for name, t in tensors.items():
        if name.endswith(".weight_scale_inv"):
            continue
        scale = tensors.get(name.replace(".weight", ".weight_scale_inv"))
        if t.dtype == torch.float8_e4m3fn and scale is not None:
            n, k = t.shape
            full = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:n, :k]
            t = t.float() * full
        out[name] = t.float()
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    del config["quantization_config"]
    config["torch_dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _env(name: str, lane: int) -> dict[str, str]:
    return {
        # One core per rank, as vLLM's CPU docs set it up.
        "VLLM_CPU_OMP_THREADS_BIND": "0|1",
        # At TP > 1 the vocab-parallel embedding masks its input in a function
        # compiled by torch inductor, whose CPU ISA probe runs a fresh Python
        # per ISA in every worker (~9 s an engine). This CPU has the ISAs its
        # cpuinfo lists; the compiled code is the same.
        "TORCHINDUCTOR_VEC_ISA_OK": "1",
        # Workers spend seconds in their final garbage collection after the
        # results are written; vLLM waits 5 s before it terminates them.
        "VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS": "1",
    }


def _remove_shared_memory(root: Path) -> None:
    """vLLM's CPU TP communicator leaves its /dev/shm segments (4 MiB a rank)
    behind when a worker is killed at shutdown; remove those of our runs."""
    idents = set()
    for log in root.glob("*.log"):
        idents.update(re.findall(r"file:///tmp/(vllm_dist_[0-9a-f]{32})", log.read_text()))
    for ident in idents:
        for path in [*Path("/dev/shm").glob(f"{ident}-*"), Path("/tmp") / ident]:
            path.unlink(missing_ok=True)


def _fp32_check(fused: dict, unfused: dict, reference: dict) -> tuple[bool, str]:
    same = greedy_identical(fused, unfused)
    return same, f"greedy continuations identical: {same}"


def _bf16_check(fused: dict, unfused: dict, reference: dict) -> tuple[bool, str]:
    return within_rounding(fused, unfused, reference)


# The checks that read greedy continuations: (fused run, unfused run, checkpoints,
# check(fused, unfused, fp32 reference)). Where one fails, both runs repeat.
GREEDY_CHECKS = [
    ("fp32-2", "fp32-0", FP32_MODELS, _fp32_check),
    ("bf16-1", "bf16-0", BF16_RUN_MODELS, _bf16_check),
]


def _reference(runs: Runs, model: str) -> dict:
    return runs("fp32-0", REFERENCE.get(model, model))


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    # SEF_FUSION_TP_RUNS=DIR re-checks the outputs of an earlier session's runs.
    if os.environ.get("SEF_FUSION_TP_RUNS"):
        return Runs(Path(os.environ["SEF_FUSION_TP_RUNS"]))
    if (os.cpu_count() or 1) < TP:
        pytest.skip(f"TP={TP} on CPU needs {TP} cores")
    root = tmp_path_factory.mktemp("fusion-tp-runs")
    checkpoints = root / "checkpoints"
    _write_checkpoints(checkpoints)
    try:
        out = launch_runs(RUNS, checkpoints, root, env_for=_env)
        retry: dict[str, tuple[list[str], list[str]]] = {}
        for fused, unfused, models, check in GREEDY_CHECKS:
            for model in models:
                pair = [out(fused, model), out(unfused, model), _reference(out, model)]
                if any("error" in run for run in pair) or check(*pair)[0]:
                    continue
                for run in (fused, unfused):
                    retry.setdefault(run + RETRY, ([], RUNS[run][1]))[0].append(model)
        if retry:
            launch_runs(retry, checkpoints, root, env_for=_env)
    finally:
        _remove_shared_memory(root)
    return out


def _ok(run: dict) -> dict:
    assert "error" not in run, run.get("error")
    return run


def _attempts(runs: Runs, run: str, model: str) -> list[dict]:
    """The run's output for ``model``, and its repetition's where one ran."""
    attempts = [_ok(runs(run, model))]
    if (runs.root / f"{run}{RETRY}" / f"{model}.json").exists():
        attempts.append(_ok(runs(run + RETRY, model)))
    return attempts


def _check_with_repetitions(runs: Runs, fused: str, unfused: str, model: str, check):
    """check(fused, unfused, reference) on the first runs; where it fails, on
    every pairing of them and their repetitions. Passes if some pairing
    passes (warning TPFlakinessWarning with every run's greedy tokens): a
    fusion bug fails every pairing, upstream nondeterminism one run."""
    reference = _ok(_reference(runs, model))
    fused_runs, unfused_runs = _attempts(runs, fused, model), _attempts(runs, unfused, model)
    first_ok, first_detail = check(fused_runs[0], unfused_runs[0], reference)
    if first_ok:
        return True, first_detail
    agree = [
        (i, j)
        for i, f in enumerate(fused_runs)
        for j, u in enumerate(unfused_runs)
        if check(f, u, reference)[0]
    ]
    if agree:
        tokens = {
            f"{run}[{i}]": [s["tokens"] for s in r["sequences"]]
            for run, attempts in ((fused, fused_runs), (unfused, unfused_runs))
            for i, r in enumerate(attempts)
        }
        warnings.warn(
            f"{model}: {fused} vs {unfused} failed ({first_detail}); repetitions "
            f"{agree} (fused, unfused; 0 = first run) pass: stock vLLM-CPU TP "
            f"nondeterminism, see tools/cpu_repro.py. Greedy tokens: {json.dumps(tokens)}",
            TPFlakinessWarning,
            stacklevel=2,
        )
    return bool(agree), first_detail


def _shared_ids(n_routed: int, n_shared: int, replicas: int, tokens: int) -> list[list[int]]:
    return [
        [n_routed + (t % replicas) * n_shared + j for j in range(n_shared)] for t in range(tokens)
    ]


def _check_rank_structure(out: dict, name: str, replicas: int) -> None:
    arch, shapes = CHECKPOINTS[name]
    config = make_config(arch, **shapes)
    n_routed, n_shared = config["n_routed_experts"], config["n_shared_experts"]
    by_rank = out.get("layers_by_rank")
    assert by_rank is not None, "no per-rank inspection"
    assert len(by_rank) == TP
    n_moe = config["num_hidden_layers"] - config["first_k_dense_replace"]
    for rank, layers in enumerate(by_rank):
        assert len(layers) == n_moe, (rank, [layer["name"] for layer in layers])
        for layer in layers:
            where = f"rank {rank} {layer['name']}"
            assert not layer["has_shared_mlp"], where
            assert layer["num_slots"] == n_routed + replicas * n_shared, where
            assert layer["num_fused_shared_experts"] == n_shared, where
            assert layer["fusion"]["replicas"] == replicas, where
            # Each slot is this rank's slice of its chunk of the shared expert...
            assert layer["slots_equal_checkpoint"] == [[True] * n_shared] * replicas, where
            # ...and not another rank's (so the comparison can fail).
            other = layer["slots_equal_rank_slices"][1 - rank]
            assert other == [[False] * n_shared] * replicas, (where, other)
            # The shared entries depend on the token only, the same on each rank.
            ids = layer["fusion"]["probe_shared_ids"]
            assert ids == _shared_ids(n_routed, n_shared, replicas, len(ids)), (where, ids)


@pytest.mark.parametrize(
    ("run", "model"),
    [("fp32-2", m) for m in FP32_MODELS] + [_bf16_param("bf16-1", m) for m in BF16_MODELS],
)
def test_each_rank_holds_its_slice_of_every_shared_slot(runs: Runs, run: str, model: str):
    out = _ok(runs(run, model))
    _check_rank_structure(out, model, int(run.split("-")[1]))
    # Both ranks report the same layers, slot counts and routing entries.
    strip = ("slots_equal_rank_slices",)
    per_rank = [
        [{k: v for k, v in layer.items() if k not in strip} for layer in layers]
        for layers in out["layers_by_rank"]
    ]
    assert per_rank[0] == per_rank[1]


@pytest.mark.parametrize("model", FP32_MODELS)
def test_fp32_prompt_logprobs_equal(runs: Runs, model: str):
    diff = prompt_logprob_diff(_ok(runs("fp32-2", model)), _ok(runs("fp32-0", model)))
    print(f"{model} TP={TP} fp32 R=2 vs R=0 prompt logprobs: {diff.summary()}")
    assert diff.max <= FP32_ATOL, diff.summary()


@pytest.mark.parametrize("model", FP32_MODELS)
def test_fp32_greedy_identical(runs: Runs, model: str):
    ok, detail = _check_with_repetitions(runs, "fp32-2", "fp32-0", model, _fp32_check)
    assert ok, detail


@pytest.mark.parametrize("model", [_bf16_param(m) for m in BF16_MODELS])
def test_bf16_within_rounding(runs: Runs, model: str):
    ok, detail = _check_with_repetitions(runs, "bf16-1", "bf16-0", model, _bf16_check)
    print(f"{model} TP={TP} bf16 R=1 vs R=0: {detail}")
    assert ok, detail
