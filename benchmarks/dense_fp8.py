"""Dense block-FP8 GEMMs at decode sizes: vLLM's cutlass kernel against its Triton kernel.

In the engine's decode step (sef10 profile, docs/benchmarks.md "sef11") the dense FP8 GEMMs,
attention's projections and the first three layers' MLPs, run vLLM's CutlassFp8BlockScaledMMKernel
at 3.3-5.2x their HBM floor and take 27-29% of the GPU's busy time at 1-4 tokens, alike in stock
vLLM and the series. vLLM also ships ``w8a8_triton_block_scaled_mm`` with H200-tuned configs for
these shapes (``--linear-backend triton``). Per shape (DeepSeek-V3 per-rank TP8 widths) and batch
size M, each kernel's time in a CUDA graph of back-to-back calls over weight copies that together
exceed the L2 cache (as a step's 61 layers do), its floor (weight bytes / the measured copy
bandwidth), and the Triton output's mean relative difference from cutlass's (the same inputs; not
bit-equal: different accumulation). Per M, the sum over a decode step's launches. vLLM's Triton
kernel runs twice: with its shipped config file's tile ("triton") and with the fastest of
--triton-sweep ("triton_tuned"; N tiles down to 16); --write-configs writes vLLM's config files
with those tiles (for `gpu_host.sh tuned-site` and an engine A/B with --linear-backend triton).

A third candidate, ``split_k``: patch 0016's ``block_fp8_split_k_mm`` (measured as a prototype
here in sef11, then moved into the series): vLLM's Triton kernel's loop with K split over SPLIT_K
programs per output tile (as patch 0006 does for the MoE gate-up GEMM: at decode sizes a tile
grid of 17-112 programs cannot keep 132 SMs reading), the float32 partials summed in a fixed
order by the tile's last program to finish (a per-tile counter it resets), so one launch and a
deterministic result. Swept over a few tiles per shape and M (--sweep); the patch picks its own
with ``split_k_config``. ``split_k_launch``: the sweep's fastest tile launched with other warp and
pipeline-stage counts (--launch-sweep; the patch launches four warps, four stages).

    python -m benchmarks.dense_fp8 --out dense_fp8.json [--tokens 1 4 16] [--write-configs DIR]
    benchmarks/gpu_host.sh dense-fp8 --write-configs /root/dense-configs

Results are written after each shape (a run cut short keeps what it measured).
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
KERNELS = ("cutlass", "triton", "triton_tuned", "split_k", "split_k_launch")
TOKENS = [1, 4, 16, 64]
L2_BYTES = 50 << 20  # H200: 50 MB


# The split-K kernel's tiles (BLOCK_M 16 where a tile does not name one; four warps, four
# stages, as patch 0016 launches it).
SWEEP = [{"BLOCK_N": bn, "SPLIT_K": sk} for bn in (16, 32, 64, 128) for sk in (1, 2, 4, 8, 16)]
# Warps and pipeline stages tried on the fastest tile ("split_k_launch").
LAUNCH_SWEEP = [{"num_warps": w, "num_stages": st} for w in (2, 4, 8) for st in (3, 4, 5, 6)]
# vLLM's Triton kernel's tiles ("triton_tuned"; "triton" is its shipped config file's choice):
# narrower N tiles than its H200 files hold (32 at one token for N=2112: 66 programs).
TRITON_SWEEP = [
    {
        "BLOCK_SIZE_M": 16,
        "BLOCK_SIZE_N": bn,
        "BLOCK_SIZE_K": 128,
        "GROUP_SIZE_M": 1,
        "num_warps": 4,
        "num_stages": st,
    }
    for bn in (16, 32, 64, 128)
    for st in (3, 4, 5)
]


_SPLIT_K: dict | None = None


def split_k_gemm(a, b, a_scale, b_scale, config: dict, out_dtype=None):
    """Patch 0016's ``block_fp8_split_k_mm`` (the installed vLLM's, compiled from its source by
    sefkit.triton_kernels, so the interpreter can run it on a CPU) with ``config``'s tile:
    C = (A * a_scale) @ (B * b_scale).T, K split over config["SPLIT_K"] programs per tile of
    config["BLOCK_M"] rows (else the patch's 16) x config["BLOCK_N"] columns, launched with
    config's num_warps / num_stages where it has them (else as the patch launches it)."""
    import torch

    from sefkit.triton_kernels import WithLaunch, dense_split_k

    global _SPLIT_K
    if _SPLIT_K is None:
        _SPLIT_K = dense_split_k()
    kernel, block_m = _SPLIT_K["_block_fp8_split_k_kernel"], _SPLIT_K["BLOCK_M"]
    launch = {key: config[key] for key in ("num_warps", "num_stages") if key in config}
    if launch:
        _SPLIT_K["_block_fp8_split_k_kernel"] = WithLaunch(kernel, **launch)
    # The launcher reads its row tile from the module's BLOCK_M.
    _SPLIT_K["BLOCK_M"] = config.get("BLOCK_M", block_m)
    try:
        return _SPLIT_K["block_fp8_split_k_mm"](
            a,
            b,
            a_scale,
            b_scale,
            out_dtype or torch.bfloat16,
            split_k=config["SPLIT_K"],
            block_n=config["BLOCK_N"],
        )
    finally:
        _SPLIT_K["_block_fp8_split_k_kernel"], _SPLIT_K["BLOCK_M"] = kernel, block_m


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


def measure_shape(args, name: str, bw: float) -> list[dict]:
    """The rows of one shape, per M: cutlass, Triton and the split-K sweep's fastest tile."""
    import torch
    from vllm import _custom_ops as ops
    from vllm.model_executor.layers.quantization.utils import fp8_utils
    from vllm.model_executor.layers.quantization.utils.fp8_utils import (
        per_token_group_quant_fp8,
        w8a8_triton_block_scaled_mm,
    )
    from vllm.utils.platform_utils import get_device_name_as_file_name

    from sefkit.graph_timing import capture, replay_us

    device_name = get_device_name_as_file_name()  # as vLLM's config file names spell it
    n, k, _ = SHAPES[name]
    count = copies_for(n, k)
    gen = torch.Generator(device=args.device).manual_seed(0)
    pairs = [
        (
            (torch.randn(n, k, generator=gen, device=args.device) * 0.05).to(torch.float8_e4m3fn),
            torch.rand(math.ceil(n / 128), math.ceil(k / 128), generator=gen, device=args.device)
            * 0.01,
        )
        for _ in range(count)
    ]
    floor_us = n * k / bw * 1e6
    shipped = fp8_utils.get_w8a8_block_fp8_configs
    rows = []

    def timed(run) -> float:
        def all_copies():
            for b, bs in pairs:
                run(b, bs)

        graphs = capture(all_copies, [()], warmup=2)
        us = replay_us(graphs, args.iters, reps=5) / count
        del graphs
        return us

    for m in args.tokens:
        x = torch.randn(m, k, generator=gen, device=args.device).to(torch.bfloat16)
        # cutlass reads the activation scales column-major, vLLM's Triton kernel row-major.
        a_col, s_col = per_token_group_quant_fp8(x, 128, column_major_scales=True)
        a_row, s_row = per_token_group_quant_fp8(x, 128, column_major_scales=False)
        runs = {
            "cutlass": lambda b, bs, a=a_col, s=s_col: ops.cutlass_scaled_mm(
                a, b.T, out_dtype=torch.bfloat16, scale_a=s, scale_b=bs.T
            ),
            "triton": lambda b, bs, a=a_row, s=s_row: w8a8_triton_block_scaled_mm(
                a, b, s, bs, [128, 128], output_dtype=torch.bfloat16
            ),
        }
        times = {kernel: timed(run) for kernel, run in runs.items()}
        extra: dict = {"cutlass": {}, "triton": {}}

        # vLLM's Triton kernel with each tile of TRITON_SWEEP as its config file's entry.
        def with_tile(config, run=runs["triton"], m=m):
            def call(b, bs):
                fp8_utils.get_w8a8_block_fp8_configs = lambda *_: {m: config}
                try:
                    return run(b, bs)
                finally:
                    fp8_utils.get_w8a8_block_fp8_configs = shipped

            return call

        tuned = [(timed(with_tile(config)), config) for config in args.triton_sweep]
        best_tuned_us, best_tuned = min(tuned, key=lambda entry: entry[0])
        runs["triton_tuned"] = with_tile(best_tuned)
        times["triton_tuned"] = best_tuned_us
        extra["triton_tuned"] = {"config": best_tuned, "sweep": [[us, c] for us, c in tuned]}
        # Patch 0016's split-K kernel: the sweep's fastest tile.
        sweep = [
            (timed(lambda b, bs, c=config, a=a_col, s=s_col: split_k_gemm(a, b, s, bs, c)), config)
            for config in args.sweep
            if config["SPLIT_K"] <= math.ceil(k / 128)
        ]
        best_us, best = min(sweep, key=lambda entry: entry[0])
        runs["split_k"] = lambda b, bs, c=best, a=a_col, s=s_col: split_k_gemm(a, b, s, bs, c)
        times["split_k"] = best_us
        extra["split_k"] = {"config": best, "sweep": [[us, c] for us, c in sweep]}
        # The fastest tile with other warp and stage counts.
        launches = [
            (timed(lambda b, bs, c=config, a=a_col, s=s_col: split_k_gemm(a, b, s, bs, c)), config)
            for config in ({**best, **launch} for launch in args.launch_sweep)
        ]
        best_launch_us, best_launch = min(launches, key=lambda entry: entry[0])
        runs["split_k_launch"] = lambda b, bs, c=best_launch, a=a_col, s=s_col: split_k_gemm(
            a, b, s, bs, c
        )
        times["split_k_launch"] = best_launch_us
        extra["split_k_launch"] = {
            "config": best_launch,
            "sweep": [[us, c] for us, c in launches],
        }
        ref = runs["cutlass"](*pairs[0]).float()
        for kernel in KERNELS:
            out = runs[kernel](*pairs[0]).float()
            entry = {
                "device_name": device_name,
                "shape": name,
                "n": n,
                "k": k,
                "m": m,
                "kernel": kernel,
                "us": times[kernel],
                "floor_us": floor_us,
                "x_floor": times[kernel] / floor_us,
                "rel_diff_vs_cutlass": float((out - ref).abs().mean() / ref.abs().mean()),
                "copies": count,
                **extra[kernel],
            }
            rows.append(entry)
            print(json.dumps({key: v for key, v in entry.items() if key != "sweep"}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--iters", type=int, default=50, help="graph replays per repetition")
    parser.add_argument(
        "--sweep",
        type=json.loads,
        default=SWEEP,
        help="split_k: JSON list of tiles ({BLOCK_N, SPLIT_K}, optionally BLOCK_M)",
    )
    parser.add_argument(
        "--launch-sweep",
        type=json.loads,
        default=LAUNCH_SWEEP,
        help="split_k_launch: JSON list of {num_warps, num_stages} for the fastest tile",
    )
    parser.add_argument(
        "--triton-sweep",
        type=json.loads,
        default=TRITON_SWEEP,
        help="triton_tuned: JSON list of configs of vLLM's Triton kernel",
    )
    parser.add_argument(
        "--write-configs",
        help="a folder: per shape, vLLM's config file with the triton_tuned tiles at the "
        "measured batch sizes (its shipped entries kept at the others)",
    )
    parser.add_argument("--out", default="dense_fp8.json")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    from benchmarks.moe_layer import copy_bandwidth

    bw = copy_bandwidth()  # bytes/s of HBM traffic, as moe_layer.py's floors use it
    rows: list[dict] = []
    for name in args.shapes:
        rows += measure_shape(args, name, bw)
        # Written after each shape: a run cut short keeps what it measured.
        with open(args.out, "w") as f:
            json.dump({"bandwidth": bw, "rows": rows, "step": step_totals(rows)}, f, indent=1)
        if args.write_configs:
            write_configs(rows, args.write_configs)
    for entry in step_totals(rows):
        print(json.dumps(entry), flush=True)


def config_files(rows: list[dict], shipped) -> dict[str, dict]:
    """Per shape, vLLM's Triton config file (name: contents) with the triton_tuned tile at each
    measured M; ``shipped(n, k)`` gives the installed file's entries, kept at the other Ms."""
    files: dict[str, dict] = {}
    for row in rows:
        if row["kernel"] != "triton_tuned":
            continue
        n, k = row["n"], row["k"]
        name = (
            f"N={n},K={k},device_name={row['device_name']},dtype=fp8_w8a8,"
            "block_shape=[128,128].json"
        )
        if name not in files:
            files[name] = {str(m): c for m, c in (shipped(n, k) or {}).items()}
        files[name][str(row["m"])] = row["config"]
    return {
        name: dict(sorted(entries.items(), key=lambda e: int(e[0])))
        for name, entries in files.items()
    }


def write_configs(rows: list[dict], folder: str) -> None:
    from pathlib import Path

    from vllm.model_executor.layers.quantization.utils.fp8_utils import (
        get_w8a8_block_fp8_configs,
    )

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, entries in config_files(
        rows, lambda n, k: get_w8a8_block_fp8_configs(n, k, 128, 128)
    ).items():
        (out / name).write_text(json.dumps(entries, indent=4) + "\n")
        print(f"wrote {out / name}", flush=True)


if __name__ == "__main__":
    main()
