"""Tune vLLM's Triton fused-MoE tile configs for the fused expert counts.

Fusion adds R * n_shared expert slots (DeepSeek-V3/R1: E = 256 + 1 = 257, or
264 with 8 copies) and one top-k entry per shared expert, so vLLM finds no
tuned config file and falls back to its default tiles. This script times
candidate tile configs of ``fused_experts`` as CUDA-graph replays, with the
routing the fused layer produces (top_k routed experts drawn at random plus
the shared slot for every token), and writes the fastest per batch size as a
vLLM config file: ``E=..,N=..,device_name=..[,dtype=fp8_w8a8,block_shape=[128,128]].json``.

Candidates: every config of vLLM's own tuned file for the routed-only expert
count (e.g. E=256), which is the natural starting point, plus a small grid;
or, with ``--candidates-from FILE``, the configs of an already tuned file (e.g.
E=257's for E=264 at the same N: the same GEMM shapes with more slots).
With ``--replicas R`` token t uses shared copy t % R, as the fused router does.

    python -m benchmarks.tune_moe --experts 257 --top-k 9 --n 256 --dtype fp8 \\
        --out-dir vllm/vllm/model_executor/layers/fused_moe/configs
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from unittest import mock

import torch

from sefkit.graph_timing import capture, replay_us, replay_us_cold

TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
LARGER = [1024, 1536, 2048, 3072, 4096]  # the keys vLLM's own files have beyond 512


def grid(dtype: str) -> list[dict]:
    small = itertools.product([8, 16], [32, 64, 128], [128], [1], [4], [3, 4, 5])
    large = itertools.product([32, 64], [64, 128], [128], [1, 16], [4], [3, 4])
    keys = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M")
    keys += ("num_warps", "num_stages")
    configs = [dict(zip(keys, values, strict=False)) for values in [*small, *large]]
    if dtype == "bf16":
        configs += [dict(c, BLOCK_SIZE_K=64) for c in configs if c["BLOCK_SIZE_M"] > 16]
    return configs


def unique(configs) -> list[dict]:
    """The distinct configs, in a stable order."""
    return [json.loads(c) for c in sorted({json.dumps(c, sort_keys=True) for c in configs})]


def seed_file(routed_experts: int, n: int, dtype: str) -> dict[int, dict]:
    """vLLM's tuned configs for the routed-only expert count, by batch size."""
    from vllm.model_executor.layers.fused_moe.fused_moe import get_moe_configs

    block = (128, 128) if dtype == "fp8" else (None, None)
    found = get_moe_configs(routed_experts, n, "fp8_w8a8" if dtype == "fp8" else None, *block)
    return dict(found or {})


class Problem:
    def __init__(self, experts, routed, top_k, n, hidden, dtype, graphs, replicas, cold_l2=False):
        from vllm.model_executor.layers.fused_moe.config import FusedMoEQuantConfig

        self.experts, self.routed, self.top_k = experts, routed, top_k
        self.replicas = replicas
        if (experts - routed) % replicas:
            raise SystemExit(f"--experts - --routed ({experts - routed}) % --replicas != 0")
        w_dtype = torch.bfloat16
        self.w1 = torch.randn(experts, 2 * n, hidden, device="cuda").to(w_dtype) * 0.02
        self.w2 = torch.randn(experts, hidden, n, device="cuda").to(w_dtype) * 0.02
        scales = {}
        if dtype == "fp8":
            self.w1 = self.w1.to(torch.float8_e4m3fn)
            self.w2 = self.w2.to(torch.float8_e4m3fn)
            scales = dict(
                w1_scale=torch.rand(experts, 2 * n // 128, hidden // 128, device="cuda") * 1e-2,
                w2_scale=torch.rand(experts, hidden // 128, n // 128, device="cuda") * 1e-2,
            )
        self.quant_config = FusedMoEQuantConfig.make(
            quant_dtype=torch.float8_e4m3fn if dtype == "fp8" else None,
            block_shape=[128, 128] if dtype == "fp8" else None,
            **scales,
        )
        self.hidden = hidden
        self.graphs = graphs
        self.cold_l2 = cold_l2

    def routing(self, m: int, gen: torch.Generator):
        """top_k - n_shared routed experts at random, then token t's copy
        (t % replicas) of the shared slots."""
        n_shared = (self.experts - self.routed) // self.replicas
        scores = torch.rand(m, self.routed, generator=gen, device="cuda")
        ids = scores.topk(self.top_k - n_shared, dim=-1).indices.to(torch.int32)
        copy = torch.arange(m, device="cuda", dtype=torch.int32) % self.replicas
        first = self.routed + copy * n_shared
        shared = first[:, None] + torch.arange(n_shared, device="cuda", dtype=torch.int32)
        ids = torch.cat([ids, shared], dim=1)
        weights = torch.rand(m, self.top_k, generator=gen, device="cuda")
        return weights, ids

    def time(self, config: dict, m: int, iters: int) -> float:
        from vllm.model_executor.layers.fused_moe import fused_experts

        gen = torch.Generator(device="cuda").manual_seed(m)
        inputs = []
        for _ in range(self.graphs):
            x = torch.randn(m, self.hidden, device="cuda", generator=gen).to(torch.bfloat16)
            inputs.append((x, *self.routing(m, gen)))

        def run(x, w, ids):
            with gate_up_config(config):
                return fused_experts(x, self.w1, self.w2, w, ids, quant_config=self.quant_config)

        timing = replay_us_cold if self.cold_l2 else replay_us
        return timing(capture(run, inputs), iters, reps=3)


def gate_up_config(config: dict):
    """``config`` as the tuned file's entry while the block runs: the gate-up
    GEMM takes it, and the down GEMM takes its own tile over it from the
    shape's ``_down.json`` file where one is installed (patches 0011-0012), as
    in the engine. vLLM's ``override_config`` would hand ``config`` to both
    GEMMs and skip the ``_down.json`` lookup, timing a layer the engine never
    runs."""
    from vllm.model_executor.layers.fused_moe import fused_moe

    return mock.patch.object(
        fused_moe, "try_get_optimal_moe_config", side_effect=lambda *a, **k: dict(config)
    )


def with_untuned_sizes(tuned: dict[int, dict], seeded: dict[int, dict], shape) -> dict:
    """The tuned configs plus batch sizes beyond them (prefill chunks): the
    routed-only file's choice where vLLM has one, else the default tiles vLLM
    uses without any file, so that untuned sizes run as they did before."""
    from vllm.model_executor.layers.fused_moe.fused_moe import get_default_config

    experts, n, hidden, top_k, dtype, block = shape
    largest = max(tuned, default=0)
    complete = dict(tuned)
    if seeded:
        complete |= {m: config for m, config in seeded.items() if m > largest}
    else:
        for m in (m for m in LARGER if m > largest):
            default = get_default_config(m, experts, n, hidden, top_k, dtype, block)
            default.pop("SPLIT_K", None)  # not a config file key: the kernel sets it
            complete[m] = default
    return {str(m): complete[m] for m in sorted(complete)}


def write_config_file(path: Path, table: dict[str, dict]) -> None:
    """A vLLM Triton MoE config file: the Triton version, then a config per batch size."""
    import triton

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"triton_version": triton.__version__, **table}, indent=4) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, required=True, help="slots, e.g. 257")
    parser.add_argument("--routed", type=int, default=256)
    parser.add_argument("--replicas", type=int, default=1, help="shared copies")
    parser.add_argument("--candidates-from", help="a tuned config file: its configs only")
    parser.add_argument("--top-k", type=int, required=True, help="incl. shared")
    parser.add_argument("--n", type=int, required=True, help="intermediate/rank")
    parser.add_argument("--hidden", type=int, default=7168)
    parser.add_argument("--dtype", choices=["bf16", "fp8"], default="fp8")
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--graphs", type=int, default=4)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--budget-s", type=float, default=1e9, help="stop early")
    parser.add_argument(
        "--cold-l2",
        action="store_true",
        help="empty L2 before every replay (an engine's decode step: the shared slot's weights, "
        "read by every token, are not in L2 when the layer starts)",
    )
    parser.add_argument("--out-dir", default=".")
    parser.add_argument("--report", help="also write timings here (JSON)")
    args = parser.parse_args()

    from vllm.model_executor.layers.fused_moe.fused_moe import get_config_file_name

    began = time.time()
    problem = Problem(
        args.experts,
        args.routed,
        args.top_k,
        args.n,
        args.hidden,
        args.dtype,
        args.graphs,
        args.replicas,
        args.cold_l2,
    )
    seeded = seed_file(args.routed, args.n, args.dtype)
    seeds = unique(seeded.values())
    if args.candidates_from:
        with open(args.candidates_from) as f:
            more = unique(c for k, c in json.load(f).items() if k != "triton_version")
    else:
        more = grid(args.dtype)
    candidates = seeds + [c for c in more if c not in seeds]
    print(f"{len(seeds)} seed configs, {len(candidates)} candidates", flush=True)
    best: dict[int, tuple[float, dict]] = {}
    timings: dict[int, list] = {m: [] for m in args.tokens}
    for i, config in enumerate(candidates):
        if time.time() - began > args.budget_s:
            print(f"budget reached after {i} candidates", flush=True)
            break
        for m in args.tokens:
            try:
                us = problem.time(config, m, args.iters)
            except Exception as exc:  # a tile the kernel can't run
                print(f"skip {config} at M={m}: {type(exc).__name__}", flush=True)
                break
            timings[m].append((us, config))
            if m not in best or us < best[m][0]:
                best[m] = (us, config)
    dtype_str = "fp8_w8a8" if args.dtype == "fp8" else None
    block = [128, 128] if args.dtype == "fp8" else None
    shape = (args.experts, args.n, args.hidden, args.top_k, dtype_str, block)
    tuned = with_untuned_sizes({m: best[m][1] for m in best}, seeded, shape)
    name = get_config_file_name(args.experts, args.n, dtype_str, block)
    write_config_file(Path(args.out_dir) / name, tuned)
    seed_best = {
        m: min((us for us, c in timings[m] if c in seeds), default=None) for m in sorted(best)
    }
    report = {
        "file": name,
        "gpu": torch.cuda.get_device_name(),
        "candidates_timed": len(timings[args.tokens[0]]),
        "l2": "cold" if args.cold_l2 else "warm",
        "seconds": round(time.time() - began),
        "best_us": {m: best[m][0] for m in sorted(best)},
        "best_seed_us": seed_best,
        "from_seed_file": [m for m in seeded if m > max(best, default=0)],
    }
    print(json.dumps(report), flush=True)
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
