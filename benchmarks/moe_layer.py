"""The full DeepSeek MoE layer, stock vs fused shared experts, on one GPU.

Builds vLLM's own ``DeepseekV2MoE`` twice from the same random weights, loaded
through vLLM's expert weight loader the way DeepseekV2Model.load_weights does
(the fused layer's shared expert split into its slots by
``maybe_fuse_shared_experts``): stock (separate shared MLP, on the
shared-experts CUDA stream) and fused (VLLM_SHARED_EXPERT_FUSION_REPLICAS=R).

    python -m benchmarks.moe_layer check [--dtype bf16 fp8] [--replicas 1 2]
    python -m benchmarks.moe_layer bench [--dtype bf16 fp8] [--tp 8 1] --out F.json
    python -m benchmarks.moe_layer profile [--dtype fp8] [--tokens 1 16 256] --out F.json
    python -m benchmarks.moe_layer split-k [--tokens 1 16] [--write-configs DIR] --out F.json
    python -m benchmarks.moe_layer naive-fill [--tokens 1 2 4] [--rounds 3] --out F.json
    python -m benchmarks.moe_layer pdl [--tokens 1 16 256] [--rounds 3] --out F.json
    python -m benchmarks.moe_layer shared-stream [--tokens 16 64 256] [--rounds 3] --out F.json
    python -m benchmarks.moe_layer tiles [--gemm w2] [--tokens 1 16] [--write-configs D] --out F
    python -m benchmarks.moe_layer assignment [--tokens 1 2 4 7] [--rounds 3] --out F.json
    python -m benchmarks.moe_layer quantize-align [--tokens 1 2 4 16] [--rounds 3] --out F.json
    python -m benchmarks.moe_layer moe-sum [--tokens 1 4 16 64] [--rounds 3] --out F.json
    python -m benchmarks.moe_layer prefetch-shared [--tokens 1 4] [--rounds 3] --out F.json

``check`` compares both layers with an fp32 reference computed from the same
(dequantized) weights and routing: the fused layer must be as close to it as
the stock layer is. ``bench`` times CUDA-graph replays of the whole layer
(gate GEMM, routing, experts, shared expert) for M tokens and prints the HBM
floor: the bytes of the expert weights the batch actually reads over the
measured device copy bandwidth. ``profile`` prints each variant's per-kernel
table (torch.profiler over eager calls: device time and launches per layer
call) beside its CUDA-graph replay time. ``naive-fill`` times both layers with
and without the fill of a padded token count that stock vLLM launches at small
batches and patch 0008 drops, alternating in one process; ``pdl`` likewise with
programmatic dependent launch of the Triton MoE kernels (patch 0009) off and on,
and ``shared-stream`` with the fused shared experts in the routed GEMMs' launches
and in launches of their own on the auxiliary stream (patch 0010) at every
batch size up to vLLM's stream threshold. ``tiles`` sweeps one GEMM's tile
(``--gemm w2``: the down projection's own tile from a `_down.json` file, patch 0011) in
the whole layer. ``assignment`` times both layers with the naive block assignment that vLLM
takes at few tokens and with the aligned one (moe_align_block_size) at the same sizes,
alternating in one process. ``quantize-align`` likewise with the MoE input quantized and the
expert blocks assigned in launches of their own (as before patch 0013) and in one launch.
``moe-sum`` likewise with the top-k outputs summed by ops.moe_sum and by patch 0014's Triton
launch. ``prefetch-shared`` likewise with vLLM's MoE runner and with the fused shared expert's
weights prefetched into L2 during routing (benchmarks/prototypes.py).

Replays run back to back, so weights that every replay reads (the shared expert's, fused or
not) can stay in L2 between them, which an engine's decode step (more weights than L2 holds
between two reads of a layer) does not allow; ``--cold-l2`` empties L2 before every replay and
subtracts the flush's own time (sefkit.graph_timing.replay_us_cold); rows record ``"l2"``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

from sefkit.graph_timing import capture, replay_us, replay_us_cold
from sefkit.tiny_deepseek import quantize_fp8_block

ENV = "VLLM_SHARED_EXPERT_FUSION_REPLICAS"
DEVICE = "cuda"

# DeepSeek-V3/R1 per-rank MoE shapes: the expert intermediate size is split
# over TP ranks (2048 / tp).
V3 = dict(
    hidden_size=7168,
    n_routed_experts=256,
    n_shared_experts=1,
    num_experts_per_tok=8,
    n_group=8,
    topk_group=4,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    scoring_func="sigmoid",
    topk_method="noaux_tc",
)
MOE_INTERMEDIATE = 2048
# A small layer for a smoke test of this script on CPU (--tiny).
TINY = dict(
    V3,
    hidden_size=256,
    n_routed_experts=16,
    n_group=4,
    topk_group=2,
    num_experts_per_tok=4,
)
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class Setup:
    """vLLM's distributed state and config for building layers outside an engine."""

    def __init__(self, device: str, tiny: bool, cold_l2: bool = False) -> None:
        from vllm.config import VllmConfig, set_current_vllm_config
        from vllm.distributed import (
            init_distributed_environment,
            initialize_model_parallel,
        )

        self.vllm_config = VllmConfig()
        self.vllm_config.model_config = SimpleNamespace(
            dtype=torch.bfloat16,
            max_model_len=4096,
            is_moe=True,
            quantization_config=None,
        )
        self.vllm_config.scheduler_config.max_num_batched_tokens = 8192
        self._ctx = set_current_vllm_config(self.vllm_config)
        self._ctx.__enter__()
        fd, self._store = tempfile.mkstemp()
        os.close(fd)
        init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            distributed_init_method=f"file://{self._store}",
            backend="nccl" if device == "cuda" else "gloo",
        )
        initialize_model_parallel(1, 1)
        if device == "cuda":
            from vllm.v1.worker.workspace import init_workspace_manager

            init_workspace_manager(torch.device("cuda"))
        self._count = 0
        self.device = device
        self.shape = TINY if tiny else V3
        # time_layer empties L2 before every replay (--cold-l2; the engine's regime).
        self.cold_l2 = cold_l2

    def next_prefix(self) -> str:
        self._count += 1
        return f"model.layers.{self._count}.mlp"


def make_config(setup: Setup, tp: int):
    from transformers import DeepseekV3Config

    shape = setup.shape
    config = DeepseekV3Config(
        **{k: v for k, v in shape.items() if k not in ("scoring_func", "topk_method")},
        moe_intermediate_size=MOE_INTERMEDIATE // tp,
        intermediate_size=18432,
        hidden_act="silu",
    )
    config.scoring_func = shape["scoring_func"]
    config.topk_method = shape["topk_method"]
    return config


def make_weights(config, dtype: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """One MoE layer's tensors in HF naming relative to the layer."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    h, inter = config.hidden_size, config.moe_intermediate_size
    n_shared = config.n_shared_experts

    def lin(out_dim, in_dim):
        w = torch.randn(out_dim, in_dim, generator=g, device=DEVICE)
        return (w / math.sqrt(in_dim)).to(torch.bfloat16)

    t = {"gate.weight": lin(config.n_routed_experts, h).float() * 1.5}
    t["gate.e_score_correction_bias"] = 0.05 * torch.randn(
        config.n_routed_experts, generator=g, device=DEVICE
    )
    for e in range(config.n_routed_experts):
        for proj, shape in (
            ("gate", (inter, h)),
            ("up", (inter, h)),
            ("down", (h, inter)),
        ):
            t[f"experts.{e}.{proj}_proj.weight"] = lin(*shape)
    t["shared_experts.gate_proj.weight"] = lin(n_shared * inter, h)
    t["shared_experts.up_proj.weight"] = lin(n_shared * inter, h)
    t["shared_experts.down_proj.weight"] = lin(h, n_shared * inter)
    if dtype == "fp8":
        t = quantize_fp8_block(t, quantize_name=lambda n: n.endswith("_proj.weight"))
    return t


def build_layer(setup: Setup, config, dtype: str, replicas: int):
    """A DeepseekV2MoE with the given fusion setting (0 = stock)."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.quantization.fp8 import Fp8Config
    from vllm.model_executor.models.deepseek_v2 import DeepseekV2MoE
    from vllm.utils.torch_utils import set_default_torch_dtype

    os.environ[ENV] = str(replicas)
    quant_config = (
        Fp8Config(
            is_checkpoint_fp8_serialized=True,
            activation_scheme="dynamic",
            weight_block_size=[128, 128],
        )
        if dtype == "fp8"
        else None
    )
    setup.vllm_config.quant_config = quant_config
    with (
        set_current_vllm_config(setup.vllm_config),
        set_default_torch_dtype(torch.bfloat16),
        torch.device(DEVICE),
    ):
        layer = DeepseekV2MoE(
            config,
            setup.vllm_config.parallel_config,
            quant_config,
            prefix=setup.next_prefix(),
            apply_routed_scale_to_output=True,
        )
    assert (layer.shared_experts is None) == (replicas > 0)
    return layer


def load_layer(layer, tensors: dict[str, torch.Tensor]) -> None:
    """Load HF-named tensors the way DeepseekV2Model.load_weights does."""
    from vllm.model_executor.layers.fused_moe import (
        fused_moe_make_expert_params_mapping,
    )
    from vllm.model_executor.layers.quantization.base_config import (
        QuantizeMethodBase,
    )
    from vllm.model_executor.models.utils import maybe_fuse_shared_experts

    fused = layer.is_fused_shared_expert_enabled
    n_shared = layer.n_shared_experts
    # The loaders fill the first copy's slots; the weight loader the others.
    mapping = fused_moe_make_expert_params_mapping(
        layer,
        "gate_proj",
        "down_proj",
        "up_proj",
        num_experts=layer.n_routed_experts + (n_shared if fused else 0),
    )
    params = dict(layer.named_parameters())
    stacked = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
    for name, weight in tensors.items():
        if name.startswith("shared_experts.") and not fused:
            proj = name.split(".")[1]
            if proj in stacked:
                target, shard = stacked[proj]
                pname = name.replace(proj, target)
                params[pname].weight_loader(params[pname], weight, shard)
            else:
                params[name].weight_loader(params[name], weight)
            continue
        if name.startswith("shared_experts."):
            items = [
                (n.removeprefix("mlp."), w)
                for n, w in maybe_fuse_shared_experts(
                    [("mlp." + name, weight)],
                    n_routed_experts=layer.n_routed_experts,
                    n_shared_experts=n_shared,
                    enabled=True,
                )
            ]
        elif name.startswith("experts."):
            items = [(name, weight)]
        else:
            param = params[name]
            getattr(param, "weight_loader", _copy)(param, weight)
            continue
        for slot_name, chunk in items:
            for param_name, weight_name, expert_id, shard_id in mapping:
                if weight_name not in slot_name:
                    continue
                pname = slot_name.replace(weight_name, param_name)
                ok = params[pname].weight_loader(
                    params[pname],
                    chunk,
                    pname,
                    shard_id=shard_id,
                    expert_id=expert_id,
                    return_success=True,
                )
                assert ok, slot_name
                break
            else:
                raise KeyError(slot_name)
    for module in layer.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, QuantizeMethodBase):
            method.process_weights_after_loading(module)


def _copy(param, weight):
    param.data.copy_(weight)


def dequantized(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp32 weights: FP8 blocks times their scales."""
    out = {}
    for name, w in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        scale = tensors.get(name + "_scale_inv") if name.endswith(".weight") else None
        w = w.float()
        if scale is not None:
            s = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)
            w = w * s[: w.shape[0], : w.shape[1]]
        out[name] = w
    return out


def reference(x, topk_weights, topk_ids, weights, config) -> torch.Tensor:
    """fp32 shared + rsf * sum_k w_k * expert_k(x) for the given routing."""

    def mlp(prefix, v):
        gate = v @ weights[f"{prefix}.gate_proj.weight"].T
        up = v @ weights[f"{prefix}.up_proj.weight"].T
        return (torch.nn.functional.silu(gate) * up) @ weights[f"{prefix}.down_proj.weight"].T

    x = x.float()
    out = mlp("shared_experts", x)
    routed = torch.zeros_like(out)
    for k in range(topk_ids.shape[1]):
        for e in topk_ids[:, k].unique().tolist():
            rows = topk_ids[:, k] == e
            routed[rows] += topk_weights[rows, k, None] * mlp(f"experts.{e}", x[rows])
    return out + config.routed_scaling_factor * routed


def forward(setup: Setup, layer, x: torch.Tensor) -> torch.Tensor:
    from vllm.forward_context import set_forward_context

    with set_forward_context(None, setup.vllm_config, num_tokens=x.shape[0]):
        return layer(x)


def check(args, setup: Setup) -> list[dict]:
    rows = []
    config = make_config(setup, tp=8)
    for dtype in args.dtype:
        tensors = make_weights(config, dtype, seed=1)
        ref_weights = dequantized(tensors)
        stock = build_layer(setup, config, dtype, 0)
        load_layer(stock, tensors)
        fused = {r: build_layer(setup, config, dtype, r) for r in args.replicas}
        for layer in fused.values():
            load_layer(layer, tensors)
        for m in (1, 7, 64, 300):
            x = torch.randn(m, config.hidden_size, device=DEVICE).to(torch.bfloat16)
            logits, _ = stock.gate(x)
            topk_weights, topk_ids = stock.experts.router.select_experts(x, logits)
            ref = reference(x, topk_weights, topk_ids, ref_weights, config)
            out_stock = forward(setup, stock, x).float()
            err_stock = (out_stock - ref).norm() / ref.norm()
            outs = {r: forward(setup, layer, x).float() for r, layer in fused.items()}
            for r, out in outs.items():
                err = (out - ref).norm() / ref.norm()
                row = {
                    "dtype": dtype,
                    "tokens": m,
                    "replicas": r,
                    "rel_err_stock": err_stock.item(),
                    "rel_err_fused": err.item(),
                    "rel_diff_fused_stock": ((out - out_stock).norm() / ref.norm()).item(),
                    "same_as_R1": bool(torch.equal(out, outs[min(outs)])),
                }
                # Copies compute the same function; their bits can differ where
                # another slot count (E = 256 + R) picks other Triton tiles.
                row["ok"] = row["rel_err_fused"] <= 1.5 * row["rel_err_stock"] + 1e-3
                print(json.dumps(row), flush=True)
                rows.append(row)
        del stock, fused
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return rows


def copy_bandwidth() -> float:
    """Device copy bandwidth in bytes/s (read + write counted)."""
    a = torch.empty(2 << 30, dtype=torch.uint8, device=DEVICE)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    for _ in range(10):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    bw = 2 * a.numel() * 10 / (start.elapsed_time(end) / 1e3)
    del a, b
    return bw


def expert_bytes(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    return sum(
        t.numel() * t.element_size() for n, t in tensors.items() if n.startswith(prefix + ".")
    )


def layer_inputs(config, tokens: list[int], graphs: int) -> dict[int, list[torch.Tensor]]:
    """``graphs`` seeded bf16 inputs of M tokens per M, one CUDA graph each (time_layer)."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    return {
        m: [
            torch.randn(m, config.hidden_size, generator=gen, device=DEVICE).to(torch.bfloat16)
            for _ in range(graphs)
        ]
        for m in tokens
    }


def time_layer(setup, layer, inputs: list[torch.Tensor], iters: int) -> float:
    """Median microseconds per replay, round-robin over one graph per input; with L2 emptied
    before every replay under ``setup.cold_l2``."""
    graphs = capture(lambda x: forward(setup, layer, x), [(x,) for x in inputs], warmup=2)
    us = (replay_us_cold if setup.cold_l2 else replay_us)(graphs, iters, reps=5)
    del graphs
    return us


def bench(args, setup: Setup) -> list[dict]:
    bw = copy_bandwidth()
    print(f"device copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    rows = []
    for tp in args.tp:
        config = make_config(setup, tp)
        for dtype in args.dtype:
            tensors = make_weights(config, dtype)
            per_expert = expert_bytes(tensors, "experts.0")
            shared = expert_bytes(tensors, "shared_experts")
            gate = expert_bytes(tensors, "gate")
            inputs = layer_inputs(config, args.tokens, args.graphs)
            times: dict[str, dict[int, float]] = {}
            for variant, replicas in (("stock", 0), ("fused", 1)):
                layer = build_layer(setup, config, dtype, replicas)
                load_layer(layer, tensors)
                times[variant] = {
                    m: time_layer(setup, layer, inputs[m], args.iters) for m in args.tokens
                }
                del layer
                torch.cuda.empty_cache()
            ref_layer = build_layer(setup, config, dtype, 0)
            load_layer(ref_layer, tensors)
            for m in args.tokens:
                # Experts the batches actually read, averaged over the inputs.
                unique = statistics.fmean(
                    ref_layer.experts.router.select_experts(x, ref_layer.gate(x)[0])[1]
                    .unique()
                    .numel()
                    for x in inputs[m]
                )
                floor_us = (unique * per_expert + shared + gate) / bw * 1e6
                row = {
                    "scenario": "moe_layer",
                    "dtype": dtype,
                    "tp_equiv": tp,
                    "batch": m,
                    "metric": "moe_us",
                    "stock": times["stock"][m],
                    "fused": times["fused"][m],
                    "ratio": times["fused"][m] / times["stock"][m],
                    "floor_us": floor_us,
                    "fused_over_floor": times["fused"][m] / floor_us,
                    "experts_read": unique + 1,
                    "l2": "cold" if setup.cold_l2 else "warm",
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
            del ref_layer, tensors
            torch.cuda.empty_cache()
    return rows


def _kernel_table(prof, calls: int) -> list[dict]:
    """Per-kernel device time (us per layer call) and launches from a profile."""
    table: dict[str, dict] = {}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = getattr(event, "device_time_total", None)
        if us is None:
            us = event.cuda_time_total
        row = table.setdefault(event.name, {"kernel": event.name[:90], "us": 0.0, "n": 0})
        row["us"] += us / calls
        row["n"] += 1
    for row in table.values():
        row["launches"] = row.pop("n") / calls
    return sorted(table.values(), key=lambda r: -r["us"])


def profile(args, setup: Setup) -> list[dict]:
    """Per-kernel tables of both variants (torch.profiler, eager calls) beside
    the CUDA-graph replay time of the same layer and batch."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    rows = []
    config = make_config(setup, tp=8)
    calls = 20
    for dtype in args.dtype:
        tensors = make_weights(config, dtype)
        for variant, replicas in (("stock", 0), ("fused", 1)):
            layer = build_layer(setup, config, dtype, replicas)
            load_layer(layer, tensors)
            for m in args.tokens:
                x = torch.randn(m, config.hidden_size, device=DEVICE).to(torch.bfloat16)
                graph_us = time_layer(setup, layer, [x], args.iters)
                for _ in range(3):
                    forward(setup, layer, x)
                torch.cuda.synchronize()
                with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(calls):
                        forward(setup, layer, x)
                    torch.cuda.synchronize()
                kernels = _kernel_table(prof, calls)
                row = {
                    "scenario": "moe_layer_profile",
                    "dtype": dtype,
                    "variant": variant,
                    "batch": m,
                    "graph_us": graph_us,
                    "kernel_sum_us": sum(k["us"] for k in kernels),
                    "launches": sum(k["launches"] for k in kernels),
                    "kernels": kernels,
                }
                rows.append(row)
                print(
                    f"{dtype} {variant:5} M={m:4}: graph {graph_us:7.1f} us, kernels "
                    f"{row['kernel_sum_us']:7.1f} us in {row['launches']:.0f} launches",
                    flush=True,
                )
                for k in kernels:
                    print(f"    {k['us']:7.2f} us x{k['launches']:.0f}  {k['kernel']}")
            del layer
            torch.cuda.empty_cache()
    return rows


def alternate(args, setup: Setup, settings: dict, scenario: str) -> list[dict]:
    """Time the unfused and the fused layer (FP8, TP8 rank) at ``args.tokens`` under each of
    the two ``settings`` (name -> context manager factory), alternating ``args.rounds`` times in
    this process; one row per layer and batch with the medians and the ratio second / first."""
    config = make_config(setup, tp=8)
    tensors = make_weights(config, "fp8")
    inputs = layer_inputs(config, args.tokens, args.graphs)
    (first, _), (second, _) = settings.items()
    rows = []
    for variant, replicas in (("off", 0), ("fused", 1)):
        layer = build_layer(setup, config, "fp8", replicas)
        load_layer(layer, tensors)
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for name, setting in settings.items():
                with setting():
                    for m in args.tokens:
                        us = time_layer(setup, layer, inputs[m], args.iters)
                        times.setdefault((name, m), []).append(us)
        for m in args.tokens:
            a, b = times[(first, m)], times[(second, m)]
            row = {
                "scenario": scenario,
                "dtype": "fp8",
                "tp_equiv": 8,
                "variant": variant,
                "batch": m,
                "metric": "moe_us",
                first: statistics.median(a),
                second: statistics.median(b),
                "ratio": statistics.median(b) / statistics.median(a),
                f"{first}_values": a,
                f"{second}_values": b,
                "l2": "cold" if setup.cold_l2 else "warm",
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
        del layer
        torch.cuda.empty_cache()
    return rows


def naive_fill(args, setup: Setup) -> list[dict]:
    """Patch 0008 in one process: the unfused and fused layers timed with the padded-count
    fill that stock vLLM launches on the naive assignment path put back, and without it
    (as the series runs)."""
    from vllm.model_executor.layers.fused_moe.experts import triton_moe

    prepare = triton_moe._prepare_expert_assignment

    def with_fill(topk_ids, config, *rest, **kwargs):
        sorted_ids, expert_ids, padded = prepare(topk_ids, config, *rest, **kwargs)
        if padded is None:  # stock's naive path: a 1-element fill, read by no one
            padded = torch.full(
                (1,),
                topk_ids.numel() * config["BLOCK_SIZE_M"],
                dtype=torch.int32,
                device=topk_ids.device,
            )
        return sorted_ids, expert_ids, padded

    settings = {
        "with_fill": lambda: mock.patch.object(triton_moe, "_prepare_expert_assignment", with_fill),
        "without_fill": contextlib.nullcontext,
    }
    return alternate(args, setup, settings, "moe_layer_naive_fill")


def pdl(args, setup: Setup) -> list[dict]:
    """Patch 0009 in one process: the unfused and fused layers timed with programmatic
    dependent launch of the Triton MoE kernels off (as before the patch) and on (as the
    series runs on Hopper)."""
    from vllm.platforms import current_platform

    if not current_platform.is_arch_support_pdl():
        raise SystemExit("pdl: this GPU does not support programmatic dependent launch")
    off = classmethod(lambda cls: False)
    settings = {
        "pdl_off": lambda: mock.patch.object(type(current_platform), "is_arch_support_pdl", off),
        "pdl_on": contextlib.nullcontext,
    }
    return alternate(args, setup, settings, "moe_layer_pdl")


def shared_stream(args, setup: Setup) -> list[dict]:
    """Patch 0010 in one process: the unfused and fused layers timed with the fused
    shared experts computed in the routed GEMMs' launches (as before the patch) and in
    launches of their own on the auxiliary stream, at every batch size up to
    VLLM_SHARED_EXPERTS_STREAM_TOKEN_THRESHOLD (the patch: from
    FUSED_SHARED_STREAM_MIN_TOKENS). The unfused layer has nothing to move: its ratio
    is the noise of the alternation."""
    from vllm.model_executor.layers.fused_moe.experts import triton_moe

    def min_tokens(m: int):
        return lambda: mock.patch.object(triton_moe, "FUSED_SHARED_STREAM_MIN_TOKENS", m)

    settings = {"one_launch": min_tokens(1 << 30), "aux_stream": min_tokens(1)}
    return alternate(args, setup, settings, "moe_layer_shared_stream")


def prefetch_shared(args, setup: Setup) -> list[dict]:
    """benchmarks/prototypes.py's runner_forward_prefetch_shared in one process: both layers
    timed with vLLM's MoERunner._forward_impl and with the prototype (the fused shared expert's
    weights prefetched into L2 on the auxiliary stream during the router's GEMM and routing),
    alternating, with L2 emptied before every replay (--cold-l2 implied: in warm replays the
    shared expert's weights are in L2 already). The unfused layer has no fused slot and runs
    vLLM's method in both settings: its ratio is the noise of the alternation."""
    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    from benchmarks import prototypes

    setup.cold_l2 = True
    prototype = prototypes.runner_forward_prefetch_shared
    prototype.replaced = MoERunner._forward_impl
    settings = {
        "plain": contextlib.nullcontext,
        "prefetch": lambda: mock.patch.object(MoERunner, "_forward_impl", prototype),
    }
    return alternate(args, setup, settings, "moe_layer_prefetch_shared")


def assignment(args, setup: Setup) -> list[dict]:
    """The unfused and fused layers timed with the naive block assignment (one M block per token
    and top-k slot, no alignment launch: vLLM's choice while num_tokens * top_k * 4 <= experts,
    up to 8 tokens unfused and 7 fused at DeepSeek-V3's shapes) and with moe_align_block_size's
    aligned one (one block run per expert: each expert's weights read once, one launch more, and
    no programmatic dependent launch, which the series uses on the naive path only), alternating
    in one process. Above those sizes both settings take the aligned path."""
    from vllm.model_executor.layers.fused_moe.experts import triton_moe
    from vllm.model_executor.layers.fused_moe.moe_align_block_size import moe_align_block_size

    def aligned(
        topk_ids,
        config,
        _tokens,
        _top_k,
        num_experts,
        expert_map,
        *,
        ignore_invalid_experts=False,
        **_,
    ):
        return moe_align_block_size(
            topk_ids,
            config["BLOCK_SIZE_M"],
            num_experts,
            expert_map,
            ignore_invalid_experts=ignore_invalid_experts,
        )

    settings = {
        "naive": contextlib.nullcontext,
        "aligned": lambda: mock.patch.object(triton_moe, "_prepare_expert_assignment", aligned),
    }
    return alternate(args, setup, settings, "moe_layer_assignment")


def quantize_align(args, setup: Setup) -> list[dict]:
    """Patch 0013 in one process: the unfused and fused layers timed with the MoE input
    quantized by the prepare step and the block assignment of _prepare_expert_assignment (as
    before the patch) and with both in one launch (quantize_and_align_block_size)."""
    from vllm.model_executor.layers.fused_moe.experts import triton_moe

    def separate():
        return mock.patch.object(
            triton_moe.TritonExperts, "_quantizes_block_fp8_input", return_value=False
        )

    settings = {"separate": separate, "one_launch": contextlib.nullcontext}
    return alternate(args, setup, settings, "moe_layer_quantize_align")


def moe_sum(args, setup: Setup) -> list[dict]:
    """Patch 0014 in one process: the unfused and fused layers timed with the top-k outputs
    summed by ops.moe_sum (as before the patch) and by moe_sum_triton up to
    MOE_SUM_TRITON_MAX_TOKENS tokens (as the series runs); above that both take ops.moe_sum."""
    from vllm.model_executor.layers.fused_moe.experts import triton_moe

    def ops_moe_sum():
        return mock.patch.object(triton_moe, "MOE_SUM_TRITON_MAX_TOKENS", 0)

    settings = {"ops_moe_sum": ops_moe_sum, "triton": contextlib.nullcontext}
    return alternate(args, setup, settings, "moe_layer_moe_sum")


def expert_weights(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's stacked routed-expert weights (w13, w2)."""
    params = dict(layer.named_parameters())
    (w13,) = (p for n, p in params.items() if n.endswith("w13_weight"))
    (w2,) = (p for n, p in params.items() if n.endswith("w2_weight"))
    return w13, w2


def layer_config(layer, top_k: int, m: int) -> tuple[str, dict]:
    """The tuned-config file name and the config vLLM picks for M tokens in this layer."""
    from vllm.model_executor.layers.fused_moe.fused_moe import (
        get_config_file_name,
        try_get_optimal_moe_config,
    )

    w13, w2 = expert_weights(layer)
    dtype = "fp8_w8a8" if w13.dtype == torch.float8_e4m3fn else None
    block = [128, 128] if dtype else None
    config = try_get_optimal_moe_config(w13.shape, w2.shape, top_k, dtype, m, block_shape=block)
    return get_config_file_name(w2.shape[0], w2.shape[2], dtype, block), dict(config)


def split_k(args, setup: Setup) -> list[dict]:
    """CUDA-graph replay time of the whole layer per SPLIT_K of the gate-up GEMM
    (patch 0006), with every other tile parameter as vLLM's config file has it,
    for the series with fusion off (E=256) and fused (E=257). With
    --write-configs DIR, writes each config file with SPLIT_K set where a split
    beats the unsplit GEMM by more than --min-gain."""
    from vllm.model_executor.layers.fused_moe import override_config
    from vllm.model_executor.layers.fused_moe.fused_moe import get_moe_configs

    rows = []
    config = make_config(setup, tp=8)
    tensors = make_weights(config, "fp8")
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    files: dict[str, dict] = {}
    for variant, replicas in (("off", 0), ("fused", 1)):
        layer = build_layer(setup, config, "fp8", replicas)
        load_layer(layer, tensors)
        for m in args.tokens:
            inputs = [
                torch.randn(m, config.hidden_size, generator=gen, device=DEVICE).to(torch.bfloat16)
                for _ in range(args.graphs)
            ]
            top_k = config.num_experts_per_tok + (config.n_shared_experts if replicas else 0)
            name, base = layer_config(layer, top_k, m)
            times = {}
            for split in sorted({1, *args.splits}):
                with override_config(dict(base, SPLIT_K=split)):
                    times[split] = time_layer(setup, layer, inputs, args.iters)
            best = min(times, key=times.get)
            row = {
                "scenario": "moe_layer_split_k",
                "dtype": "fp8",
                "variant": variant,
                "batch": m,
                "config_file": name,
                "us_by_split_k": times,
                "best_split_k": best,
                "file_split_k": base.get("SPLIT_K", 1),
                "best_over_unsplit": times[best] / times[1],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            if times[best] < times[1] * (1 - args.min_gain):
                files.setdefault(name, {})[m] = best
        e, _, n = expert_weights(layer)[1].shape
        if args.write_configs and name in files:
            tuned = {
                str(k): dict(v) for k, v in get_moe_configs(e, n, "fp8_w8a8", 128, 128).items()
            }
            for m, split in files[name].items():
                if str(m) in tuned:  # batch sizes the file has no entry for keep theirs
                    tuned[str(m)]["SPLIT_K"] = split
            from benchmarks.tune_moe import write_config_file

            write_config_file(Path(args.write_configs) / name, tuned)
            print(f"wrote {name} in {args.write_configs}: SPLIT_K {files[name]}", flush=True)
        del layer
        torch.cuda.empty_cache()
    return rows


# Tile parameters a sweep varies per GEMM. The down-projection GEMM's K (the
# per-rank intermediate size, 256 at TP8) is two 128-blocks: deeper pipelines
# have nothing to overlap, so its grid is N tiles, warps and two depths.
TILE_GRID = {
    "w2": [
        {"BLOCK_SIZE_N": bn, "num_warps": w, "num_stages": st}
        for bn in (32, 64, 128, 256)
        for w in (4, 8)
        for st in (2, 3)
    ],
    "w13": [
        {"BLOCK_SIZE_N": bn, "num_warps": 4, "num_stages": st, "SPLIT_K": sk}
        for bn in (32, 64, 128)
        for st in (3, 4, 5, 6)
        for sk in (1, 2, 4)
    ],
}


def tile_of(entry: dict, down: dict, gemm: str) -> dict:
    """The tile parameters of ``gemm`` ("w13" or "w2") as a tuned file's entry and its
    `_down.json` entry give them (the down GEMM: the down entry's over the entry's)."""
    config = dict(entry, **down) if gemm == "w2" else entry
    return {k: config.get(k, 1) for k in TILE_GRID[gemm][0]}  # SPLIT_K absent = 1


def with_tile(entry: dict, down: dict, gemm: str, tile: dict) -> tuple[dict, dict]:
    """The (entry, down entry) pair with ``gemm``'s tile replaced and the other GEMM's
    tile unchanged; a down entry only where the down tile differs from the entry's."""
    if gemm == "w2":
        down = {k: v for k, v in tile.items() if entry.get(k) != v}
        return entry, (tile if down else {})
    kept = tile_of(entry, down, "w2")
    new = {k: v for k, v in entry.items() if k != "SPLIT_K"}
    new.update((k, v) for k, v in tile.items() if k != "SPLIT_K")
    if tile.get("SPLIT_K", 1) > 1:
        new["SPLIT_K"] = tile["SPLIT_K"]
    return with_tile(new, {}, "w2", kept)


def write_tuned(folder: Path, name: str, table: dict, down: dict) -> None:
    """A tuned config file and its `_down.json` (vLLM's naming) in ``folder``."""
    from benchmarks.tune_moe import write_config_file

    write_config_file(folder / name, {str(k): v for k, v in table.items()})
    write_config_file(
        folder / name.replace(".json", "_down.json"), {str(k): v for k, v in down.items()}
    )


@contextlib.contextmanager
def tuned_folder(name: str, table: dict, down: dict):
    """vLLM reading ``table`` and ``down`` as the tuned files ``name`` (a temporary
    VLLM_TUNED_CONFIG_FOLDER)."""
    from vllm.model_executor.layers.fused_moe.fused_moe import get_moe_configs

    with tempfile.TemporaryDirectory() as folder:
        write_tuned(Path(folder), name, table, down)
        with mock.patch.dict(os.environ, {"VLLM_TUNED_CONFIG_FOLDER": folder}):
            get_moe_configs.cache_clear()
            try:
                yield
            finally:
                get_moe_configs.cache_clear()


def time_with_tile(setup, layer, xs, name, table, down, key, gemm, tile, iters) -> float:
    """The layer's time with ``gemm``'s tile at the tuned files' entry ``key`` replaced."""
    entry, down_entry = with_tile(table[key], down[key], gemm, tile)
    with tuned_folder(name, {**table, key: entry}, {**down, key: down_entry}):
        return time_layer(setup, layer, xs, iters)


def tiles(args, setup: Setup) -> list[dict]:
    """One GEMM's tile swept in the whole layer (CUDA-graph replays, FP8 block, TP8
    rank, realistic routing) with the other GEMM's tile as the tuned files have it:
    ``--gemm w2`` the down projection (its own tile from the `_down.json` file, patch
    0011), ``--gemm w13`` the gate-up GEMM (with SPLIT_K). Per batch size the fastest
    candidate is then timed against the files' tile, alternating ``--rounds`` times;
    with --write-configs DIR, both files are written with the new tile where it won
    by more than --min-gain there. The files are read as vLLM reads them (so a
    VLLM_TUNED_CONFIG_FOLDER of an earlier sweep is the starting point)."""
    from vllm.model_executor.layers.fused_moe.fused_moe import get_moe_configs

    rows = []
    config = make_config(setup, tp=8)
    tensors = make_weights(config, "fp8")
    inputs = layer_inputs(config, args.tokens, args.graphs)
    for variant, replicas in (("off", 0), ("fused", 1)):
        if variant not in args.variants:
            continue
        layer = build_layer(setup, config, "fp8", replicas)
        load_layer(layer, tensors)
        top_k = config.num_experts_per_tok + (config.n_shared_experts if replicas else 0)
        name, _ = layer_config(layer, top_k, 1)
        e, _, n = expert_weights(layer)[1].shape
        table = dict(get_moe_configs(e, n, "fp8_w8a8", 128, 128) or {})
        if not table:
            raise SystemExit(f"tiles: no tuned config file {name} to start from")
        down = dict(get_moe_configs(e, n, "fp8_w8a8", 128, 128, down_moe=True) or {})
        down = {k: down.get(k, {}) for k in table}
        won: dict[int, tuple[dict, dict]] = {}
        for m in args.tokens:
            key = min(table, key=lambda k: abs(k - m))
            current = tile_of(table[key], down[key], args.gemm)
            candidates = [current] + [c for c in TILE_GRID[args.gemm] if c != current]

            timed = functools.partial(
                time_with_tile, setup, layer, inputs[m], name, table, down, key, args.gemm
            )
            sweep = []
            for tile in candidates:
                try:
                    sweep.append((timed(tile, args.sweep_iters), tile))
                except Exception as exc:  # a tile the kernel can't run (resources)
                    print(f"skip {tile} at M={m}: {type(exc).__name__}: {exc}", flush=True)
            best = min(sweep, key=lambda t: t[0])[1]
            confirm: dict[str, list[float]] = {"file": [], "best": []}
            if best != current:
                for _ in range(args.rounds):
                    confirm["file"].append(timed(current, args.iters))
                    confirm["best"].append(timed(best, args.iters))
            else:
                confirm["file"] = confirm["best"] = [timed(current, args.iters)]
            ratio = statistics.median(confirm["best"]) / statistics.median(confirm["file"])
            row = {
                "scenario": f"moe_layer_tiles_{args.gemm}",
                "dtype": "fp8",
                "tp_equiv": 8,
                "variant": variant,
                "batch": m,
                "metric": "moe_us",
                "config_file": name,
                "file_key": key,
                "file_tile": current,
                "best_tile": best,
                "file": statistics.median(confirm["file"]),
                "best": statistics.median(confirm["best"]),
                "ratio": ratio,
                "file_values": confirm["file"],
                "best_values": confirm["best"],
                "sweep": [{"us": us, **tile} for us, tile in sweep],
            }
            print(json.dumps({k: v for k, v in row.items() if k != "sweep"}), flush=True)
            rows.append(row)
            if key == m and ratio < 1 - args.min_gain:
                won[m] = with_tile(table[key], down[key], args.gemm, best)
        if args.write_configs:
            for m, (entry, down_entry) in won.items():
                table[m], down[m] = entry, down_entry
            write_tuned(Path(args.write_configs), name, table, down)
            print(f"wrote {name} (+ _down) in {args.write_configs}: {args.gemm} {won}", flush=True)
        del layer
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode",
        choices=[
            "check",
            "bench",
            "profile",
            "split-k",
            "naive-fill",
            "pdl",
            "shared-stream",
            "tiles",
            "assignment",
            "quantize-align",
            "moe-sum",
            "prefetch-shared",
        ],
    )
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp8"])
    parser.add_argument("--tp", nargs="+", type=int, default=[8, 1])
    parser.add_argument("--replicas", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--graphs", type=int, default=8)
    parser.add_argument("--splits", nargs="+", type=int, default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--min-gain", type=float, default=0.02, help="split-k, tiles: to write")
    parser.add_argument("--write-configs", help="split-k, tiles: config files written here")
    parser.add_argument("--gemm", choices=["w2", "w13"], default="w2", help="tiles: which GEMM")
    parser.add_argument("--variants", nargs="+", default=["fused"], help="tiles: off, fused")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--sweep-iters", type=int, default=60, help="tiles: per candidate")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="naive-fill, pdl, shared-stream, tiles, assignment, quantize-align, moe-sum, "
        "prefetch-shared: alternations",
    )
    parser.add_argument(
        "--cold-l2",
        action="store_true",
        help="empty L2 before every timed replay (the engine's regime; prefetch-shared: implied)",
    )
    parser.add_argument("--out")
    parser.add_argument("--tiny", action="store_true", help="small shapes")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.manual_seed(0)
    setup = Setup(args.device, args.tiny, args.cold_l2)
    modes = {
        "check": check,
        "bench": bench,
        "profile": profile,
        "split-k": split_k,
        "naive-fill": naive_fill,
        "pdl": pdl,
        "shared-stream": shared_stream,
        "tiles": tiles,
        "assignment": assignment,
        "quantize-align": quantize_align,
        "moe-sum": moe_sum,
        "prefetch-shared": prefetch_shared,
    }
    rows = modes[args.mode](args, setup)
    info = {
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    if args.mode == "check" and not all(r["ok"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
