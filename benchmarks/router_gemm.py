"""The MoE router's bf16 GEMM at decode sizes: cuBLAS (what the engine runs) against a split-K
Triton prototype.

DeepSeek-V3's gate (``GateLinear``, no ``moe_router_dtype`` in its config) runs ``F.linear`` in
bf16: cuBLAS picks a split-K GEMM plus a reduce kernel, 4.6 + 2.0 us at one token on an H100 for a
3.7 MB weight (the engine profile of the twenty-third session; ~5x the weight's read time), 58
launches of each per decode step of the 61-layer model. vLLM's faster tiers (cuteDSL ``ll_bf16``,
cuBLAS with a float32 epilogue) need float32 router logits, which changes what the routing sees.

The prototype keeps bf16 logits: patch 0016's split-K loop for bf16 operands (no scales), each
output tile's K range over SPLIT_K programs writing float32 partials, the tile's last program
summing them in split order and rounding once to bf16, as cuBLAS rounds its float32 sum. It is
not bit-identical to cuBLAS (another summation order): each row reports the fraction of logits
one or more bf16 steps apart and the fraction of tokens whose top-k experts (sigmoid + a
correction bias, as DeepSeek-V3 routes) differ.

Variants per shape and token count (us per pair in CUDA graphs of back-to-back pairs over weight
copies that together exceed twice the L2 cache; a pair is the kernel before the GEMM, an
elementwise op on its input standing in for the engine's norm, then the GEMM):
  producer          the elementwise op alone (subtract it from a plainly launched pair)
  linear            F.linear, bf16 out (the engine's path)
  mm_fp32           torch.mm with out_dtype float32 (vLLM's cuBLAS tier for float32 logits)
  split_k_N_S       the prototype with BLOCK_N N and SPLIT_K S (every pair of --block-n, --splits)
  split_k_N_S_pdl   the same launched as a programmatic dependent (Hopper), waiting before it
                    reads the activations, after prefetching two K blocks of its weights

    python -m benchmarks.router_gemm --out router_gemm.json [--tokens 1 4 16]
    benchmarks/gpu_host.sh router-gemm

Results are written after each row (a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from benchmarks.dense_fp8 import copies_for
from benchmarks.dense_pdl import _installed, prefetch_l2, split_k_program, split_k_store

# name: (experts N, hidden K, top-k, router launches per decode step)
SHAPES = {
    "deepseek_v3": (256, 7168, 8, 58),
    "kimi_k2": (384, 7168, 8, 60),
    "deepseek_v2": (160, 5120, 6, 59),
}
TOKENS = [1, 2, 4, 8, 16]
BLOCK_M = 16
BLOCK_K = 128


@triton.jit
def _split_k_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    partial_ptr,
    counter_ptr,
    M,
    N,
    K,
    stride_am,
    stride_bn,
    stride_cm,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    launch_pdl: tl.constexpr = False,
    PREFETCH: tl.constexpr = 0,
):
    """C[M, N] = A @ B.T for bf16 A [M, K] and B [N, K] (K-contiguous rows), float32 sums in
    split order, rounded once to C's dtype (patch 0016's loop and epilogue without scales; the
    prefetch and epilogue are benchmarks/dense_pdl.py's)."""
    pid_n, pid_m, pid_k, _, k_begin, k_end, rows, cols, offs_m, offs_n, offs_k = split_k_program(
        M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K
    )
    if launch_pdl:
        if PREFETCH > 0:
            # One 128-byte line of bf16 is 64 values: the first PREFETCH lines of each row's range.
            last = tl.maximum(tl.minimum(k_end * BLOCK_K, K) - 1, 0)
            first = tl.minimum(k_begin * BLOCK_K + tl.arange(0, PREFETCH) * 64, last)
            ptrs = b_ptr + (offs_n[:, None] * stride_bn + first[None, :].to(tl.int64))
            prefetch_l2(ptrs)
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(k_begin, k_end):
        k = kb * BLOCK_K + offs_k
        a = tl.load(
            a_ptr + offs_m[:, None] * stride_am + k[None, :], mask=k[None, :] < K, other=0.0
        )
        b = tl.load(
            b_ptr + offs_n[None, :] * stride_bn + k[:, None], mask=k[:, None] < K, other=0.0
        )
        acc += tl.dot(a, b)
    split_k_store(
        acc, c_ptr, partial_ptr, counter_ptr, rows, cols, M, N, stride_cm, pid_m, pid_n, pid_k,
        BLOCK_M, BLOCK_N, SPLIT_K,
    )  # fmt: skip


def split_k_mm(a, b, block_n: int, split_k: int, pdl: bool = False) -> torch.Tensor:
    """a @ b.T in a's dtype (bf16; float32 sums) with the prototype kernel; ``pdl``: launched as a
    programmatic dependent of the previous kernel, prefetching each weight row's first two K
    blocks."""
    m, k = a.shape
    n = b.shape[0]
    if b.shape[1] != k or a.stride(1) != 1 or b.stride(1) != 1:
        raise ValueError(f"a {tuple(a.shape)}, b {tuple(b.shape)}: need [M, K], [N, K] rows")
    out = torch.empty((m, n), device=a.device, dtype=a.dtype)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, BLOCK_M), split_k)
    partial = counters = out
    if split_k > 1:
        partial = torch.empty((split_k, m, n), device=a.device, dtype=torch.float32)
        counters = _installed()["_tile_counters"](a.device, grid[0] * grid[1])
    _split_k_kernel[grid](
        a,
        b,
        out,
        partial,
        counters,
        m,
        n,
        k,
        a.stride(0),
        b.stride(0),
        out.stride(0),
        BLOCK_M=BLOCK_M,
        BLOCK_N=block_n,
        BLOCK_K=BLOCK_K,
        SPLIT_K=split_k,
        launch_pdl=pdl,
        PREFETCH=4 if pdl else 0,  # lines: two K blocks
        num_warps=4,
        num_stages=4,
    )
    return out


def topk_differing(
    logits: torch.Tensor, ref: torch.Tensor, bias: torch.Tensor, top_k: int
) -> float:
    """The fraction of tokens whose top-k experts (sigmoid + correction bias, DeepSeek-V3's
    selection scores; the groups left out) differ between two sets of logits."""

    def chosen(x):
        return (x.float().sigmoid() + bias).topk(top_k, dim=-1).indices.sort(dim=-1).values

    return (chosen(logits) != chosen(ref)).any(dim=-1).float().mean().item()


def variants(args, has_pdl: bool) -> list[tuple[str, dict]]:
    """(name, split_k_mm config or the cuBLAS path's name) per variant."""
    out = [("producer", {"producer": True}), ("linear", {"cublas": "linear"})]
    out.append(("mm_fp32", {"cublas": "mm_fp32"}))
    for block_n in args.block_n:
        for splits in args.splits:
            config = {"block_n": block_n, "split_k": splits}
            out.append((f"split_k_{block_n}_{splits}", config))
            if has_pdl:
                out.append((f"split_k_{block_n}_{splits}_pdl", dict(config, pdl=True)))
    return out


def run_variant(config: dict, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The GEMM as ``config`` says (for the producer alone: the reference's)."""
    if config.get("cublas") == "linear" or config.get("producer"):
        return torch.nn.functional.linear(x, w)
    if config.get("cublas") == "mm_fp32":
        return torch.mm(x, w.t(), out_dtype=torch.float32)
    return split_k_mm(x, w, **config)


def measure(args, device: str = "cuda") -> list[dict]:
    from sefkit.graph_timing import capture, record, replay_us

    has_pdl = device == "cuda" and torch.cuda.get_device_capability()[0] >= 9
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for name in args.shapes:
        n, k, top_k, per_step = SHAPES[name]
        count = copies_for(n, 2 * k)  # bf16: two bytes a value
        # A trained router's scale: logits of a unit-RMS input with std ~1.5 (benchmarks/e2e.py).
        weights = [
            (torch.randn(n, k, generator=gen, device=device) * 1.5 / k**0.5).bfloat16()
            for _ in range(count)
        ]
        bias = torch.randn(n, generator=gen, device=device) * 0.05
        for m in args.tokens:
            x = torch.randn(m, k, generator=gen, device=device).bfloat16()
            ref = torch.nn.functional.linear(x, weights[0])
            for variant, config in variants(args, has_pdl):
                try:
                    logits = run_variant(config, x, weights[0])
                except (RuntimeError, TypeError) as exc:  # e.g. torch.mm without out_dtype
                    why = str(exc).splitlines()[0] if str(exc) else ""
                    print(f"skip {variant}: {type(exc).__name__}: {why}", flush=True)
                    continue

                def chain(config=config, x=x, weights=weights):
                    for w in weights:
                        # The kernel before each GEMM (the engine's is the norm), so that a
                        # programmatic dependent has a producer to overlap.
                        y = x.mul(1)
                        if not config.get("producer"):
                            run_variant(config, y, w)

                graphs = capture(chain, [()], warmup=2)
                us = replay_us(graphs, args.iters, reps=5) / count
                del graphs
                as_bf16 = logits.bfloat16()
                row = {
                    "scenario": "router_gemm",
                    "shape": name,
                    "n": n,
                    "k": k,
                    "tokens": m,
                    "variant": variant,
                    "us": us,
                    "launches_per_step": per_step,
                    "copies": count,
                    "logits_differing": (as_bf16 != ref).float().mean().item(),
                    "max_rel_diff": (
                        (logits.float() - ref.float()).abs().max() / ref.float().abs().max()
                    ).item(),
                    "topk_differing": topk_differing(as_bf16, ref, bias, top_k),
                }
                record(rows, row, args.out, device)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--block-n", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--splits", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--iters", type=int, default=50, help="graph replays per repetition")
    parser.add_argument("--out")
    args = parser.parse_args()
    for value in (*args.block_n, *args.splits):
        if value < 1 or value & (value - 1):
            parser.error(f"--block-n / --splits {value}: a power of two")
    if min(args.block_n) < 16:
        parser.error("--block-n: at least 16 (tl.dot's smallest tile)")
    measure(args)


if __name__ == "__main__":
    main()
