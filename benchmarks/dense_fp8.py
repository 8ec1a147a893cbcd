"""Dense block-FP8 GEMMs at decode sizes: vLLM's cutlass kernel against its Triton kernel.

In the engine's decode step (sef10 profile, docs/benchmarks.md "sef11") the dense FP8 GEMMs,
attention's projections and the first three layers' MLPs, run vLLM's CutlassFp8BlockScaledMMKernel
at 3.3-5.2x their HBM floor and take 27-29% of the GPU's busy time at 1-4 tokens, alike in stock
vLLM and the series. vLLM also ships ``w8a8_triton_block_scaled_mm`` with H200-tuned configs for
these shapes (``--linear-backend triton``). Per shape (DeepSeek-V3 per-rank TP8 widths) and batch
size M, each kernel's time in a CUDA graph of back-to-back calls over weight copies that together
exceed the L2 cache (as a step's 61 layers do), its floor (weight bytes / the measured copy
bandwidth), and the Triton output's mean relative difference from cutlass's (the same inputs; not
bit-equal: different accumulation). Per M, the sum over a decode step's launches.

    python -m benchmarks.dense_fp8 --out dense_fp8.json [--tokens 1 4 16]
    benchmarks/gpu_host.sh dense-fp8
"""

from __future__ import annotations

import argparse
import json
import math

# name: (N, K, launches per decode step) for the 61-layer model at per-rank TP8 widths: three
# attention projections per layer, the first three layers' MLPs; the shared expert's GEMMs (58
# MoE layers) run only in stock and with fusion off.
SHAPES = {
    "qkv_a": (2112, 7168, 61),
    "q_b": (3072, 1536, 61),
    "o_proj": (7168, 2048, 61),
    "dense_gate_up": (4608, 7168, 3),
    "dense_down": (7168, 2304, 3),
    "shared_gate_up": (512, 7168, 58),
    "shared_down": (7168, 256, 58),
}
KERNELS = ("cutlass", "triton")
TOKENS = [1, 2, 4, 8, 16, 32, 64]
L2_BYTES = 50 << 20  # H200: 50 MB


def copies_for(n: int, k: int, minimum: int = 4) -> int:
    """Weight copies to rotate through so that their bytes exceed twice the L2 cache."""
    return max(minimum, math.ceil(2 * L2_BYTES / (n * k)))


def step_totals(rows: list[dict]) -> list[dict]:
    """Per kernel and M: µs per decode step over the shapes' launches (the shared expert's apart),
    and the floor's."""
    totals: dict[tuple[str, int, bool], dict] = {}
    for row in rows:
        shared = row["shape"].startswith("shared_")
        key = (row["kernel"], row["m"], shared)
        entry = totals.setdefault(
            key,
            {
                "kernel": row["kernel"],
                "m": row["m"],
                "gemms": "shared expert" if shared else "attention + dense MLPs",
                "step_us": 0.0,
                "floor_us": 0.0,
            },
        )
        launches = SHAPES[row["shape"]][2]
        entry["step_us"] += row["us"] * launches
        entry["floor_us"] += row["floor_us"] * launches
    for entry in totals.values():
        entry["x_floor"] = entry["step_us"] / entry["floor_us"]
    return sorted(totals.values(), key=lambda e: (e["gemms"], e["m"], e["kernel"]))


def measure(args) -> list[dict]:
    import torch
    from vllm import _custom_ops as ops
    from vllm.model_executor.layers.quantization.utils.fp8_utils import (
        per_token_group_quant_fp8,
        w8a8_triton_block_scaled_mm,
    )

    from benchmarks.moe_layer import copy_bandwidth
    from sefkit.graph_timing import capture, replay_us

    bw = copy_bandwidth()  # bytes/s of HBM traffic, as moe_layer.py's floors use it
    fp8 = torch.float8_e4m3fn
    rows = []
    for name in args.shapes:
        n, k, _ = SHAPES[name]
        count = copies_for(n, k)
        gen = torch.Generator(device="cuda").manual_seed(0)
        weights = [
            (torch.randn(n, k, generator=gen, device="cuda") * 0.05).to(fp8) for _ in range(count)
        ]
        scales = [
            torch.rand(math.ceil(n / 128), math.ceil(k / 128), generator=gen, device="cuda") * 0.01
            for _ in range(count)
        ]
        floor_us = n * k / bw * 1e6
        for m in args.tokens:
            x = torch.randn(m, k, generator=gen, device="cuda").to(torch.bfloat16)
            a_col, s_col = per_token_group_quant_fp8(x, 128, column_major_scales=True)
            a_row, s_row = per_token_group_quant_fp8(x, 128, column_major_scales=False)

            def cutlass(b, bs, a=a_col, s=s_col):
                return ops.cutlass_scaled_mm(
                    a, b.T, out_dtype=torch.bfloat16, scale_a=s, scale_b=bs.T
                )

            def triton(b, bs, a=a_row, s=s_row):
                return w8a8_triton_block_scaled_mm(
                    a, b, s, bs, [128, 128], output_dtype=torch.bfloat16
                )

            runs = {"cutlass": cutlass, "triton": triton}
            outs = {kernel: runs[kernel](weights[0], scales[0]) for kernel in KERNELS}
            ref = outs["cutlass"].float()
            pairs = list(zip(weights, scales, strict=True))
            for kernel in KERNELS:

                def all_copies(run=runs[kernel], pairs=pairs):
                    for b, bs in pairs:
                        run(b, bs)

                graphs = capture(all_copies, [()], warmup=2)
                us = replay_us(graphs, args.iters, reps=5) / count
                del graphs
                diff = (outs[kernel].float() - ref).abs().mean() / ref.abs().mean()
                row = {
                    "shape": name,
                    "n": n,
                    "k": k,
                    "m": m,
                    "kernel": kernel,
                    "us": us,
                    "floor_us": floor_us,
                    "x_floor": us / floor_us,
                    "rel_diff_vs_cutlass": float(diff),
                    "copies": count,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--iters", type=int, default=50, help="graph replays per repetition")
    parser.add_argument("--out", default="dense_fp8.json")
    args = parser.parse_args()
    rows = measure(args)
    totals = step_totals(rows)
    for entry in totals:
        print(json.dumps(entry), flush=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "step": totals}, f, indent=1)


if __name__ == "__main__":
    main()
