"""Routing of a fused DeepSeek MoE layer on one GPU, by variant: the series' one-launch Triton
kernel (patch 0003) at several warp counts, against vLLM's grouped top-k followed by the shared
entries' append (BaseRouter._append_fused_shared_experts), with stock's grouped top-k alone.

    python -m benchmarks.routing [--tokens 1 4 16 64 256] [--warps 1 2 4 8] [--out F.json]
    python -m benchmarks.routing --device cpu --tokens 1 3   # agreement only (Triton interpreted)

Every variant with shared entries must route as the two-step path does (the same experts for
every token, weights within 1e-5), else the script exits 1. On a GPU each variant is timed as
CUDA-graph replays of one call (median over repetitions, round-robin over 8 inputs): what the
layer's graph pays for its routing. The profile of 2026-12-02 (docs/benchmarks.md) put the kernel
at 5.7 us per call at one token against 3.0 us for vLLM's CUDA grouped top-k; this measures which
launch wins at which batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

# experts, groups, groups kept, top-k, routed scaling factor (sigmoid scores with a correction bias,
# renormalized, as the released configs have it)
SHAPES = {
    "deepseek-v3": (256, 8, 4, 8, 2.5),
    "kimi-k2": (384, 1, 1, 8, 2.827),
}


def variants(args, shape, device: str) -> dict:
    """name -> routing(logits, bias) returning (weights, ids), or (weights, ids) of width top-k for
    the stock variant."""
    from vllm.model_executor.layers.fused_moe.router import grouped_topk_router as gt
    from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter

    from sefkit.triton_kernels import fused_routing

    experts, groups, kept, top_k, rsf = shape
    routing = dict(
        topk=top_k,
        renormalize=True,
        num_expert_group=groups,
        topk_group=kept,
        scoring_func="sigmoid",
        routed_scaling_factor=rsf,
    )
    shared = dict(
        num_fused_shared_experts=1,
        replicas=args.replicas,
        first_shared_id=experts,
        shared_expert_weight=1.0,
    )
    router = SimpleNamespace(
        num_fused_shared_experts=1,
        global_num_experts=experts,
        fused_shared_expert_replicas=args.replicas,
        shared_expert_weight=1.0,
    )

    def stock(logits, bias):
        if device == "cuda":  # what stock runs for these configs: vLLM's CUDA kernel
            return gt.fused_grouped_topk(logits, logits, e_score_correction_bias=bias, **routing)
        native = getattr(gt.grouped_topk, "_torchdynamo_orig_callable", gt.grouped_topk)
        return native(logits, logits, e_score_correction_bias=bias, **routing)

    def two_step(logits, bias):
        return BaseRouter._append_fused_shared_experts(router, *stock(logits, bias))

    out = {"stock (no shared entries)": stock, "grouped top-k + append": two_step}
    for warps in args.warps:
        kernel = fused_routing(num_warps=warps)
        out[f"triton, {warps} warp(s)"] = lambda logits, bias, kernel=kernel: kernel(
            logits, logits, e_score_correction_bias=bias, **routing, **shared
        )
    return out


def agree(got, want) -> str | None:
    """Why two routings differ, or None: the same experts per token, weights within 1e-5."""
    import torch

    (gw, gi), (ww, wi) = got, want
    if gi.shape != wi.shape:
        return f"shape {tuple(gi.shape)} != {tuple(wi.shape)}"
    gs, ws = gi.long().sort(1), wi.long().sort(1)
    if not torch.equal(gs.values, ws.values):
        return f"experts differ in {int((gs.values != ws.values).any(1).sum())} token(s)"
    diff = (gw.float().gather(1, gs.indices) - ww.float().gather(1, ws.indices)).abs().max()
    return None if diff <= 1e-5 else f"weights differ by {diff.item():.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", nargs="+", type=int, default=[1, 4, 16, 64, 256])
    parser.add_argument("--warps", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    import torch

    from sefkit.graph_timing import capture, replay_us

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device (--device cpu checks agreement only)")
    torch.manual_seed(0)
    rows, failures = [], []
    for name in args.shapes:
        shape = SHAPES[name]
        experts = shape[0]
        runs = variants(args, shape, args.device)
        bias = 0.05 * torch.randn(experts, device=args.device)
        for m in args.tokens:
            inputs = [(torch.randn(m, experts, device=args.device), bias) for _ in range(8)]
            want = [runs["grouped top-k + append"](*x) for x in inputs]
            for variant, run in runs.items():
                if not variant.startswith("stock"):
                    for x, w in zip(inputs, want, strict=True):
                        why = agree(run(*x), w)
                        if why:
                            failures.append(f"{name} M={m} {variant}: {why}")
                            break
                row = {"scenario": "routing", "model": name, "batch": m, "variant": variant}
                if args.device == "cuda":
                    row["us"] = replay_us(capture(run, inputs), args.iters, args.reps)
                    print(f"{name:12} M={m:4}  {row['us']:7.2f} us  {variant}", flush=True)
                rows.append(row)
    for failure in failures:
        print(f"DISAGREE: {failure}", flush=True)
    if not failures:
        print(f"all variants agree ({len(rows)} rows)", flush=True)
    if args.out:
        info = {
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "torch": torch.__version__,
            "replicas": args.replicas,
        }
        Path(args.out).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
